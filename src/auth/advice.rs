//! What a person should do about the sign-in, fitted to the cause: nothing configured, a wrong or
//! expired secret, a dead delegated sign-in, missing consent, a wrong tenant or app id, or a
//! network/TLS problem between the relay and Microsoft. The one source of the notice's `action`,
//! the status page's "What to do" lines and `auth status`'s `fix:` line. Never repeats a secret.

use super::{TokenError, TokenState, TokenStatus};
use crate::config::{Config, Flow};

/// Where the README explains the app registration.
const SETUP: &str = "README § Microsoft 365 setup";
/// How to make a running relay reread relay.toml.
const RELOAD: &str = "reload the running relay (`systemctl reload graph-relay`, or send it SIGHUP)";

/// The advice for a token state; `None` while the state is valid.
pub fn for_status(config: &Config, status: &TokenStatus) -> Option<String> {
    match status.state {
        TokenState::Valid => None,
        TokenState::Missing => Some(for_error(
            config,
            &TokenError::Missing(status.reason.clone()),
        )),
        TokenState::ReauthRequired => Some(for_error(
            config,
            &TokenError::Reauth(status.reason.clone()),
        )),
    }
}

/// The advice for a failed token request.
pub fn for_error(config: &Config, error: &TokenError) -> String {
    match error {
        TokenError::Missing(_) => not_configured(config),
        TokenError::Reauth(reason) => refused(config, reason),
        TokenError::Transient { message, .. } => for_unreachable(config, message),
    }
}

/// The advice when Microsoft (the token endpoint or Graph) could not be reached or read, from
/// the error `message`: a network, proxy or TLS matter, or an outage the relay rides out.
pub fn for_unreachable(config: &Config, message: &str) -> String {
    not_reached(config, message)
}

/// The first `AADSTSnnnn` in a reason (`entra::classify` keeps Entra's own code in it).
fn aadsts_code(reason: &str) -> Option<u64> {
    let digits = &reason[reason.find("AADSTS")? + "AADSTS".len()..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn not_configured(config: &Config) -> String {
    let ms = &config.microsoft;
    if ms.tenant.is_none() || ms.client_id.is_none() {
        return format!(
            "register an app in Microsoft Entra ({SETUP}), put its tenant and client id into \
             microsoft.tenant and microsoft.client_id{}, check with `graph-relay check`, then restart \
             the relay or {RELOAD}",
            match ms.flow {
                Flow::Delegated => " and run `graph-relay auth login`",
                Flow::ClientCredentials => " with a client secret (microsoft.client_secret_file)",
            }
        );
    }
    format!(
        "give the app a credential: a client secret in the file named by \
         microsoft.client_secret_file (preferred), or microsoft.client_certificate + client_key \
         ({SETUP}); check with `graph-relay check`, then {RELOAD}"
    )
}

/// Entra refused the credential or the grant: the fix depends on which it refused.
fn refused(config: &Config, reason: &str) -> String {
    let ms = &config.microsoft;
    let secret_home = match &ms.client_secret_file {
        Some(path) => format!(
            "write its Value into {} (the relay notices the change by itself)",
            path.display()
        ),
        None => format!("put its Value into microsoft.client_secret_file, then {RELOAD}"),
    };
    match aadsts_code(reason) {
        Some(7000222) => format!(
            "the client secret has expired: create a new one in Microsoft Entra (App registrations → \
             the app → Certificates & secrets → New client secret) and {secret_home}"
        ),
        Some(7000215 | 70002) => format!(
            "the client secret is wrong: copy the secret's Value (not its Secret ID) from Microsoft \
             Entra (App registrations → the app → Certificates & secrets), or create a new one, and \
             {secret_home}"
        ),
        Some(65001 | 65004) => format!(
            "consent is missing: in Microsoft Entra (App registrations → the app → API permissions) \
             grant admin consent for Mail.Send{}",
            match ms.flow {
                Flow::Delegated => ", then run `graph-relay auth login`",
                Flow::ClientCredentials => ", then run `graph-relay auth login` to retry at once",
            }
        ),
        Some(700016 | 700011 | 90002) => format!(
            "Microsoft does not know this tenant or app: compare microsoft.tenant and \
             microsoft.client_id with the app registration's Overview page in Microsoft Entra, fix \
             relay.toml, check with `graph-relay check`, then {RELOAD}"
        ),
        Some(700027 | 50012) => format!(
            "the certificate was refused: upload the certificate in microsoft.client_certificate to \
             the app registration (Certificates & secrets), or point client_certificate and \
             client_key at the pair that is uploaded, then {RELOAD}"
        ),
        Some(70001 | 7000112) => {
            "the app registration is disabled: an Entra administrator must enable it (Enterprise \
             applications → the app → Properties → Enabled for users to sign-in)"
                .into()
        }
        Some(50057 | 50055 | 53003) => format!(
            "the mailbox account cannot sign in (disabled, password expired or blocked by \
             Conditional Access): ask an Entra administrator to fix the account, then {}",
            sign_in_again(config)
        ),
        _ => sign_in_again(config),
    }
}

/// The default way back: sign in again (delegated) or re-check the app registration.
fn sign_in_again(config: &Config) -> String {
    match config.microsoft.flow {
        Flow::Delegated => {
            "run `graph-relay auth login` on the relay host, or press Re-authorize on \
            the status page"
                .into()
        }
        Flow::ClientCredentials => format!(
            "check the app registration (client secret or certificate not expired, Mail.Send \
             granted with admin consent), update the credential (e.g. the client_secret_file), then \
             run `graph-relay auth login` or {RELOAD}"
        ),
    }
}

/// The token endpoint could not be reached or read: a network, proxy or TLS matter, or an
/// outage the relay rides out by itself.
fn not_reached(config: &Config, message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    let hosts = [&config.microsoft.authority, &config.microsoft.graph_url]
        .iter()
        .filter_map(|url| {
            reqwest::Url::parse(url)
                .ok()?
                .host_str()
                .map(str::to_string)
        })
        .collect::<Vec<_>>()
        .join(" and ");
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return "the server's TLS certificate is not trusted. Behind a TLS-inspecting proxy, install \
            the proxy's CA in the system store (e.g. copy it to /usr/local/share/ca-certificates/ and \
            run update-ca-certificates) or point SSL_CERT_FILE at it, then restart the relay"
            .into();
    }
    if lower.contains("proxy") || lower.contains("tunnel") {
        return "the proxy refused or could not be reached: check microsoft.proxy in relay.toml, or \
            HTTPS_PROXY / NO_PROXY in the relay's environment (restart after changing them)"
            .into();
    }
    if lower.contains("dns") || lower.contains("connect") || lower.contains("timed out") {
        return format!(
            "check that this host can reach {hosts} over HTTPS; if outbound traffic \
             must go through a proxy, set microsoft.proxy or HTTPS_PROXY. Mail is kept and retried"
        );
    }
    "probably none: Microsoft's token endpoint is unavailable or throttling right now; the relay \
     retries by itself and keeps the mail meanwhile"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_layers(Some(toml), &[]).expect("test config")
    }

    const APP: &str = "[microsoft]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_file = \"/etc/graph-relay/secret\"\n";

    #[test]
    fn codes_are_read_from_the_reason() {
        assert_eq!(
            aadsts_code("The app's client secret has expired (invalid_client: AADSTS7000222: x)"),
            Some(7000222)
        );
        assert_eq!(aadsts_code("invalid_grant"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
    }

    #[test]
    fn each_cause_gets_its_own_fix() {
        let app = config(APP);
        let reauth = |code: u64| {
            for_error(
                &app,
                &TokenError::Reauth(format!("x (invalid_client: AADSTS{code}: y)")),
            )
        };
        assert!(reauth(7000222).contains("create a new one"));
        assert!(reauth(7000222).contains("/etc/graph-relay/secret"));
        assert!(reauth(7000215).contains("not its Secret ID"));
        assert!(reauth(65001).contains("grant admin consent"));
        assert!(reauth(90002).contains("microsoft.tenant"));
        let nothing = for_error(&config(""), &TokenError::Missing("unset".into()));
        assert!(nothing.contains("register an app"), "{nothing}");
        let tls = for_error(
            &app,
            &TokenError::transient("invalid peer certificate: UnknownIssuer", None),
        );
        assert!(tls.contains("SSL_CERT_FILE"), "{tls}");
        let dns = for_error(
            &app,
            &TokenError::transient("dns error: no such host", None),
        );
        assert!(
            dns.contains("login.microsoftonline.com and graph.microsoft.com"),
            "{dns}"
        );
    }
}
