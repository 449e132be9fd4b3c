//! Rules across keys that types alone cannot express, run once the shapes are right: each
//! finding is a `KeyError` naming the key's full dotted path. `check` prints these messages as
//! they are (tests/cli.rs), so their wording is part of the command-line contract. Never reads
//! files or the network (`check::files` does the file checks).

use std::fmt;
use std::net::IpAddr;

use super::{Config, SmtpUser};

/// One bad key: its full dotted path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Config {
    /// Cross-key rules that types alone cannot express.
    pub fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        let mut bad = |path: &str, message: String| {
            errors.push(KeyError {
                path: path.to_string(),
                message,
            })
        };
        let smtp = &self.smtp;
        if smtp.listen.is_empty() {
            bad("smtp.listen", "at least one address is needed".into());
        }
        if smtp.max_message_bytes == 0 {
            bad("smtp.max_message_bytes", "must be greater than 0".into());
        }
        if smtp.max_recipients == 0 {
            bad("smtp.max_recipients", "must be greater than 0".into());
        }
        if smtp.max_connections == 0 {
            bad("smtp.max_connections", "must be greater than 0".into());
        }
        if smtp.data_memory_bytes < smtp.max_message_bytes {
            bad(
                "smtp.data_memory_bytes",
                "must be at least smtp.max_message_bytes, or no message of the largest size could ever be received".into(),
            );
        }
        for (key, secs) in [
            ("smtp.idle_timeout_secs", smtp.idle_timeout_secs),
            ("smtp.command_timeout_secs", smtp.command_timeout_secs),
            ("smtp.data_timeout_secs", smtp.data_timeout_secs),
        ] {
            if secs == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if smtp.tls_cert.is_some() != smtp.tls_key.is_some() {
            bad(
                "smtp.tls_cert",
                "tls_cert and tls_key must be set together".into(),
            );
        }
        if !smtp.implicit_tls_listen.is_empty() && smtp.tls_cert.is_none() {
            bad(
                "smtp.implicit_tls_listen",
                "needs smtp.tls_cert and smtp.tls_key".into(),
            );
        }
        for (name, user) in &smtp.users {
            let path = format!("smtp.users.{name}");
            match user {
                SmtpUser::Password(p) | SmtpUser::Plain { password: p, .. } if p.is_empty() => bad(
                    &path,
                    "needs a non-empty password or an argon2 password_hash".into(),
                ),
                SmtpUser::Hashed { password_hash, .. } => {
                    if let Err(why) = check_password_hash(password_hash) {
                        bad(&format!("{path}.password_hash"), why);
                    }
                }
                _ => {}
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                bad(
                    &path,
                    "a user name must be non-empty, without spaces".into(),
                );
            }
            if let Some(mailbox) = user.mailbox()
                && !is_plain_address(mailbox)
            {
                bad(
                    &format!("{path}.mailbox"),
                    format!("{mailbox:?} is not a mailbox address (name@domain)"),
                );
            }
        }

        let ms = &self.microsoft;
        for (key, url) in [
            ("microsoft.authority", &ms.authority),
            ("microsoft.graph_url", &ms.graph_url),
        ] {
            if let Err(e) = reqwest::Url::parse(url) {
                bad(key, format!("not a URL ({e})"));
            }
        }
        if let Some(proxy) = self.proxy()
            && let Err(why) = check_proxy_url(proxy)
        {
            bad("microsoft.proxy", why);
        }
        let secrets = [
            ms.client_secret.is_some(),
            ms.client_secret_file.is_some(),
            ms.client_certificate.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if secrets > 1 {
            bad(
                "microsoft.client_secret",
                "set only one of client_secret, client_secret_file, client_certificate".into(),
            );
        }
        if ms.client_certificate.is_some() != ms.client_key.is_some() {
            bad(
                "microsoft.client_certificate",
                "client_certificate and client_key must be set together".into(),
            );
        }
        for pattern in &ms.allowed_senders {
            if !pattern.contains('@') {
                bad(
                    "microsoft.allowed_senders",
                    format!("{pattern:?} is neither an address nor *@domain"),
                );
            }
        }
        if let Some(sender) = &ms.sender
            && !sender.contains('@')
        {
            bad(
                "microsoft.sender",
                format!("{sender:?} is not a mailbox address"),
            );
        }

        let q = &self.queue;
        if q.retry_min.is_zero() {
            bad("queue.retry_min", "must be greater than 0".into());
        }
        if q.retry_max < q.retry_min {
            bad(
                "queue.retry_max",
                "must not be smaller than queue.retry_min".into(),
            );
        }
        for host in &self.status.allowed_hosts {
            if !is_host_name(host) {
                bad(
                    "status.allowed_hosts",
                    format!("{host:?} is not a host name or IP address (no scheme, port or path)"),
                );
            }
        }
        if let Some(url) = &self.notify.webhook_url
            && reqwest::Url::parse(url).is_err()
        {
            bad("notify.webhook_url", format!("{url:?} is not a URL"));
        }
        errors
    }
}

/// An `http://` or `https://` proxy URL with a host. The message never repeats the URL: it may
/// hold the proxy password.
fn check_proxy_url(proxy: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(proxy).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported: use http://host:port (or https://)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) the relay can verify.
fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|e| {
        format!("not an argon2 PHC string ({e}); make one with `graph-relay passwd`")
    })?;
    let algorithm = parsed.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "algorithm {algorithm:?} is not argon2; make one with `graph-relay passwd`"
        ));
    }
    argon2::Params::try_from(&parsed)
        .map(|_| ())
        .map_err(|e| format!("argon2 parameters not usable ({e})"))
}

/// `name@domain`, one address, no display name or spaces.
fn is_plain_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

/// A bare host name or IP address as `Host` would carry it, without a port: what
/// `status.allowed_hosts` lists.
pub fn is_host_name(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}
