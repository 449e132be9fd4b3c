//! The fake Microsoft identity platform: `/{tenant}/oauth2/v2.0/token` (client credentials with a
//! secret or a JWT assertion, refresh token, device code) and `/{tenant}/oauth2/v2.0/devicecode`.
//! Error bodies follow Entra's v2.0 shape; it must never issue a token Entra would refuse.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An Entra v2.0 token endpoint error.
fn token_error(
    base: &str,
    status: u16,
    error: &str,
    code: u32,
    desc: &str,
    suberror: Option<&str>,
) -> Reply {
    let trace = util::guid();
    let corr = util::guid();
    let ts = util::aad_timestamp(SystemTime::now());
    let full = format!(
        "AADSTS{code}: {desc} Trace ID: {trace} Correlation ID: {corr} Timestamp: {}",
        ts.trim_end_matches('Z').to_string() + ".0000000Z"
    );
    let mut body = json!({
        "error": error,
        "error_description": full,
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("{base}/error?code={code}"),
    });
    if let Some(s) = suberror {
        body["suberror"] = json!(s);
    }
    let mut r = Reply::json(status, &body);
    r.headers
        .push(("cache-control".into(), "no-store, no-cache".into()));
    r.error_code = Some(error.to_string());
    r.error_message = Some(format!("AADSTS{code}: {desc}"));
    r
}

fn missing_param(base: &str, name: &str) -> Reply {
    token_error(
        base,
        400,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
        None,
    )
}

fn failure_reply(base: &str, f: &TokenFailure, client_id: &str) -> Reply {
    match f {
        TokenFailure::InvalidSecret => invalid_secret(base, client_id),
        TokenFailure::SecretExpired => token_error(
            base,
            401,
            "invalid_client",
            7000222,
            &format!(
                "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
            ),
            None,
        ),
        TokenFailure::ConsentRevoked => token_error(
            base,
            400,
            "invalid_grant",
            65001,
            &format!(
                "The user or administrator has not consented to use the application with ID '{client_id}' named 'graph-relay'. Send an interactive authorization request for this user and resource."
            ),
            Some("consent_required"),
        ),
        TokenFailure::RefreshTokenRevoked => token_error(
            base,
            400,
            "invalid_grant",
            700082,
            "The refresh token has expired due to inactivity. The token was issued on 2025-01-01T00:00:00.0000000Z and was inactive for 90.00:00:00.",
            None,
        ),
        TokenFailure::GrantRevoked => token_error(
            base,
            400,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
            None,
        ),
        TokenFailure::InteractionRequired => token_error(
            base,
            400,
            "interaction_required",
            50076,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.",
            Some("basic_action"),
        ),
        TokenFailure::TemporarilyUnavailable => token_error(
            base,
            503,
            "temporarily_unavailable",
            90024,
            "RequestBudgetExceededError: A transient error has occurred. Try again.",
            None,
        ),
        TokenFailure::ServerError(status) => token_error(
            base,
            *status,
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
            None,
        ),
        TokenFailure::Throttled { retry_after } => token_error(
            base,
            429,
            "temporarily_unavailable",
            90055,
            "TenantThrottlingError: There are too many incoming requests. Please retry later.",
            None,
        )
        .header("retry-after", &retry_after.to_string()),
        TokenFailure::Custom {
            status,
            error,
            code,
            description,
            suberror,
        } => token_error(
            base,
            *status,
            error,
            *code,
            description,
            suberror.as_deref(),
        ),
    }
}

fn invalid_secret(base: &str, client_id: &str) -> Reply {
    token_error(
        base,
        401,
        "invalid_client",
        7000215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
        None,
    )
}

/// Checks the `{tenant}` path segment. `multi`: `common`/`organizations` are allowed (user flows).
fn check_tenant(base: &str, st: &St, tenant: &str, multi: bool) -> Result<(), Reply> {
    if tenant.eq_ignore_ascii_case(&st.cfg.tenant) {
        return Ok(());
    }
    let lower = tenant.to_ascii_lowercase();
    if matches!(lower.as_str(), "common" | "organizations" | "consumers") {
        if multi && lower != "consumers" {
            return Ok(());
        }
        return Err(token_error(
            base,
            400,
            "invalid_request",
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
            None,
        ));
    }
    Err(token_error(
        base,
        400,
        "invalid_request",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
        None,
    ))
}

fn check_client(base: &str, st: &St, client_id: &str, tenant: &str) -> Result<(), Reply> {
    if client_id == st.cfg.client_id {
        return Ok(());
    }
    Err(token_error(
        base,
        400,
        "unauthorized_client",
        700016,
        &format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
        ),
        None,
    ))
}

/// Issues an access token (JWT-shaped, unsigned) and remembers it.
pub(super) fn issue_access(
    st: &mut St,
    base: &str,
    delegated: bool,
    permissions: Vec<String>,
) -> String {
    let now = util::unix_now();
    let lifetime = st.cfg.token_lifetime;
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake-graph-relay-key"});
    let mut claims = json!({
        "aud": base,
        "iss": format!("https://sts.windows.net/{}/", st.cfg.tenant),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs(),
        "appid": st.cfg.client_id,
        "tid": st.cfg.tenant,
        "uti": util::random_b64url(16),
        "ver": "1.0",
    });
    if delegated {
        claims["scp"] = json!(permissions.join(" "));
        claims["upn"] = json!(st.cfg.delegated_user);
    } else {
        claims["roles"] = json!(permissions);
    }
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        util::random_b64url(64)
    );
    st.access_tokens.insert(
        token.clone(),
        AccessToken {
            delegated,
            permissions,
            expires_at: Instant::now() + lifetime,
            revoked: false,
        },
    );
    token
}

fn token_success(
    st: &mut St,
    base: &str,
    delegated: bool,
    perms: Vec<String>,
    refresh: bool,
    openid: bool,
) -> Reply {
    let access = issue_access(st, base, delegated, perms.clone());
    let secs = st.cfg.token_lifetime.as_secs();
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": access,
    });
    if delegated {
        body["scope"] = json!(perms.join(" "));
        if refresh {
            let rt = format!("1.AXoA{}", util::random_b64url(96));
            st.refresh_tokens.insert(
                rt.clone(),
                RefreshToken {
                    client_id: st.cfg.client_id.clone(),
                    scopes: perms.clone(),
                    revoked: false,
                    superseded: false,
                },
            );
            body["refresh_token"] = json!(rt);
        }
        if openid {
            let claims = json!({"aud": st.cfg.client_id, "tid": st.cfg.tenant,
                "preferred_username": st.cfg.delegated_user, "iat": util::unix_now()});
            body["id_token"] = json!(format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"RS256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                util::random_b64url(32)
            ));
        }
    }
    let mut r = Reply::json(200, &body);
    r.headers
        .push(("cache-control".into(), "no-store, no-cache".into()));
    r
}

/// Parses delegated scopes: bare names or `{graph origin}/Name` are Graph permissions; other
/// resources are unknown here. Returns (granted Graph permissions, offline_access, openid).
fn delegated_scopes(base: &str, st: &St, scope: &str) -> Result<(Vec<String>, bool, bool), Reply> {
    let mut perms = Vec::new();
    let (mut offline, mut openid) = (false, false);
    let mut any_graph = false;
    for item in scope.split(' ').filter(|s| !s.is_empty()) {
        match item {
            "offline_access" => offline = true,
            "openid" | "profile" | "email" => openid = true,
            _ => {
                let name = if let Some(idx) = item.rfind('/').filter(|_| item.contains("://")) {
                    let resource = &item[..idx];
                    if !resource.trim_end_matches('/').eq_ignore_ascii_case(base) {
                        return Err(unknown_resource(base, st, resource));
                    }
                    &item[idx + 1..]
                } else {
                    item
                };
                any_graph = true;
                if name == ".default" {
                    for p in &st.cfg.delegated_consentable {
                        if !perms.contains(p) {
                            perms.push(p.clone());
                        }
                    }
                } else if let Some(p) = st
                    .cfg
                    .delegated_consentable
                    .iter()
                    .find(|p| p.eq_ignore_ascii_case(name))
                    && !perms.contains(p)
                {
                    perms.push(p.clone());
                }
            }
        }
    }
    if !any_graph {
        return Err(token_error(
            base,
            400,
            "invalid_scope",
            70011,
            &format!(
                "The provided request must include a 'scope' input parameter for a resource. The provided value for the input parameter 'scope' ('{scope}') is not valid."
            ),
            None,
        ));
    }
    Ok((perms, offline, openid))
}

fn unknown_resource(base: &str, st: &St, resource: &str) -> Reply {
    token_error(
        base,
        400,
        "invalid_resource",
        500011,
        &format!(
            "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            st.cfg.tenant
        ),
        None,
    )
}

/// The `client_id` of a grant only a public client makes (refresh token, device code): present,
/// known in `tenant`, and sent without a secret or assertion.
fn public_client<'f>(
    base: &str,
    st: &St,
    form: &'f [(String, String)],
    tenant: &str,
) -> Result<&'f str, Reply> {
    let client_id =
        util::form_get(form, "client_id").ok_or_else(|| missing_param(base, "client_id"))?;
    check_client(base, st, client_id, tenant)?;
    reject_public_client_secret(base, form)?;
    Ok(client_id)
}

fn reject_public_client_secret(base: &str, form: &[(String, String)]) -> Result<(), Reply> {
    if util::form_get(form, "client_secret").is_some()
        || util::form_get(form, "client_assertion").is_some()
    {
        return Err(token_error(
            base,
            401,
            "invalid_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            None,
        ));
    }
    Ok(())
}

fn method_and_form(base: &str, req: &Req) -> Result<(), Reply> {
    if req.method != Method::POST {
        return Err(token_error(
            base,
            400,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                req.method
            ),
            None,
        ));
    }
    if req.media_type().as_deref() != Some("application/x-www-form-urlencoded") {
        // Entra reads only form bodies: anything else looks like an empty form.
        return Err(missing_param(base, "grant_type"));
    }
    Ok(())
}

fn take_scripted(st: &mut St, route: Route) -> Option<Reply> {
    let i = st
        .scripted
        .iter()
        .position(|(m, _)| m.matches(route, None))?;
    let (_, resp) = st.scripted.remove(i);
    Some(Reply::scripted(&resp))
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) fn token(shared: &Shared, req: &Req, form: &[(String, String)]) -> Reply {
    let base = shared.base_url.as_str();
    let mut st = shared.lock();
    if let Some(r) = take_scripted(&mut st, Route::Token) {
        return r;
    }
    let client_hint = util::form_get(form, "client_id").unwrap_or("").to_string();
    if let Some(f) = st.token_failures_once.pop_front() {
        return failure_reply(base, &f, &client_hint);
    }
    if let Some(f) = st.token_failure.clone() {
        return failure_reply(base, &f, &client_hint);
    }
    if let Err(r) = method_and_form(base, req) {
        return r;
    }
    let tenant = req.segments[0].clone();
    let Some(grant) = util::form_get(form, "grant_type") else {
        return missing_param(base, "grant_type");
    };
    let multi = grant != "client_credentials";
    if let Err(r) = check_tenant(base, &st, &tenant, multi) {
        return r;
    }
    match grant {
        "client_credentials" => client_credentials(base, &mut st, req, form, &tenant),
        "refresh_token" => refresh(base, &mut st, form, &tenant),
        DEVICE_CODE_GRANT => device_code_grant(base, &mut st, form, &tenant),
        other => token_error(
            base,
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
            None,
        ),
    }
}

fn client_credentials(
    base: &str,
    st: &mut St,
    req: &Req,
    form: &[(String, String)],
    tenant: &str,
) -> Reply {
    // Client authentication: body secret, HTTP Basic, or a JWT assertion.
    let mut client_id = util::form_get(form, "client_id").map(str::to_string);
    let mut secret = util::form_get(form, "client_secret").map(str::to_string);
    if let Some(basic) = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
    {
        let decoded = STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((id, sec)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return token_error(
                base,
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                None,
            );
        };
        let (id, sec) = (
            util::percent_decode(id, true),
            util::percent_decode(sec, true),
        );
        if client_id.as_deref().is_some_and(|c| c != id) {
            return token_error(
                base,
                400,
                "invalid_request",
                900144,
                "The client_id in the request body does not match the one in the Authorization header.",
                None,
            );
        }
        client_id = Some(id);
        secret = Some(sec);
    }
    let Some(client_id) = client_id else {
        return missing_param(base, "client_id");
    };
    if let Err(r) = check_client(base, st, &client_id, tenant) {
        return r;
    }
    let assertion = util::form_get(form, "client_assertion");
    let assertion_type = util::form_get(form, "client_assertion_type");
    match (&secret, assertion) {
        (Some(_), Some(_)) => {
            return token_error(
                base,
                400,
                "invalid_request",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type; only one may be presented.",
                None,
            );
        }
        (None, None) => {
            return token_error(
                base,
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                None,
            );
        }
        (Some(s), None) => {
            if *s != st.cfg.client_secret {
                return invalid_secret(base, &client_id);
            }
        }
        (None, Some(jwt)) => {
            if assertion_type != Some(JWT_BEARER) {
                return token_error(
                    base,
                    400,
                    "invalid_request",
                    7000219,
                    &format!("'client_assertion_type' must be '{JWT_BEARER}'."),
                    None,
                );
            }
            if let Err(r) = check_assertion(base, st, tenant, &client_id, jwt) {
                return r;
            }
        }
    }
    let Some(scope) = util::form_get(form, "scope") else {
        return missing_param(base, "scope");
    };
    let items: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    let [only] = items.as_slice() else {
        return token_error(
            base,
            400,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
            None,
        );
    };
    let Some(resource) = only.strip_suffix("/.default") else {
        return token_error(
            base,
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {only} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
            None,
        );
    };
    if !resource.trim_end_matches('/').eq_ignore_ascii_case(base) {
        return unknown_resource(base, st, resource);
    }
    let roles = st.cfg.app_roles.clone();
    token_success(st, base, false, roles, false, false)
}

/// Checks a `private_key_jwt` client assertion as Entra does (structure, claims, time,
/// certificate thumbprint; the signature too when a certificate is registered and openssl exists).
fn check_assertion(
    base: &str,
    st: &St,
    tenant: &str,
    client_id: &str,
    jwt: &str,
) -> Result<(), Reply> {
    let bad = |code: u32, msg: &str| token_error(base, 401, "invalid_client", code, msg, None);
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, p, sig] = parts.as_slice() else {
        return Err(bad(50027, "JWT token is invalid or malformed."));
    };
    let decode = |s: &str| -> Option<Value> {
        URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    };
    let (Some(header), Some(claims)) = (decode(h), decode(p)) else {
        return Err(bad(50027, "JWT token is invalid or malformed."));
    };
    if URL_SAFE_NO_PAD
        .decode(sig)
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        return Err(bad(50027, "JWT token is invalid or malformed (signature)."));
    }
    let alg = header["alg"].as_str().unwrap_or("");
    if !matches!(alg, "PS256" | "RS256") {
        return Err(bad(
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The provided signature algorithm '{alg}' is not supported.]"
            ),
        ));
    }
    let x5t_s256 = header["x5t#S256"].as_str();
    let x5t = header["x5t"].as_str();
    if x5t_s256.is_none() && x5t.is_none() {
        return Err(bad(
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found.]",
        ));
    }
    let aud_expected = format!("{base}/{tenant}/oauth2/v2.0/token");
    let aud_ok = match &claims["aud"] {
        Value::String(a) => {
            a.eq_ignore_ascii_case(&aud_expected)
                || a.eq_ignore_ascii_case(&format!("{base}/{}/oauth2/v2.0/token", st.cfg.tenant))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(bad(
            700212,
            &format!(
                "The audience claim value {} is invalid; expected {aud_expected}.",
                claims["aud"]
            ),
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err(bad(
            700023,
            "Client assertion 'iss' and 'sub' claims must both be the client id.",
        ));
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err(bad(700024, "Client assertion contains no 'jti' claim."));
    }
    let now = util::unix_now() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(now);
    if exp <= now || nbf > now + 300 {
        return Err(bad(
            500133,
            &format!(
                "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion, or request a new token. Current time: {now}, expiry time of assertion {exp}."
            ),
        ));
    }
    if let Some(pem) = &st.client_certificate_pem {
        let der = pem_to_der(pem).expect("registered certificate PEM");
        if let Some(t) = x5t_s256 {
            if t != util::sha256_b64url(&der) {
                return Err(bad(
                    700027,
                    "Client assertion failed signature validation. [Reason - The key was not found. Thumbprint of key used by client: (x5t#S256) does not match a registered certificate.]",
                ));
            }
        } else if let Some(t) = x5t
            && let Some(sha1) = sha1_of_cert(pem)
            && t != URL_SAFE_NO_PAD.encode(sha1)
        {
            return Err(bad(
                700027,
                "Client assertion failed signature validation. [Reason - The key was not found. Thumbprint (x5t) does not match a registered certificate.]",
            ));
        }
        if let Some(false) = openssl_verify(
            pem,
            alg,
            format!("{h}.{p}").as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap_or_default(),
        ) {
            return Err(bad(
                700027,
                "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]",
            ));
        }
    }
    Ok(())
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(b64.trim()).ok()
}

fn sha1_of_cert(pem: &str) -> Option<Vec<u8>> {
    let der = pem_to_der(pem)?;
    Some(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .to_vec(),
    )
}

/// `Some(valid)` when openssl could check the signature, `None` when it is unavailable.
fn openssl_verify(cert_pem: &str, alg: &str, data: &[u8], sig: &[u8]) -> Option<bool> {
    let dir = tempfile::tempdir().ok()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("pub.pem");
    let data_p = dir.path().join("data");
    let sig_p = dir.path().join("sig");
    std::fs::write(&cert, cert_pem).ok()?;
    std::fs::write(&data_p, data).ok()?;
    std::fs::write(&sig_p, sig).ok()?;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&cert)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    std::fs::write(&key, &out.stdout).ok()?;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["dgst", "-sha256", "-verify"]).arg(&key);
    if alg == "PS256" {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    cmd.arg("-signature").arg(&sig_p).arg(&data_p);
    let status = cmd.output().ok()?.status;
    Some(status.success())
}

fn refresh(base: &str, st: &mut St, form: &[(String, String)], tenant: &str) -> Reply {
    let client_id = match public_client(base, st, form, tenant) {
        Ok(client_id) => client_id,
        Err(r) => return r,
    };
    let Some(rt) = util::form_get(form, "refresh_token") else {
        return missing_param(base, "refresh_token");
    };
    let Some(info) = st.refresh_tokens.get(rt).cloned() else {
        return token_error(
            base,
            400,
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
            None,
        );
    };
    if info.client_id != client_id {
        return token_error(
            base,
            400,
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed.",
            None,
        );
    }
    if info.revoked {
        return failure_reply(base, &TokenFailure::RefreshTokenRevoked, client_id);
    }
    if info.superseded {
        st.stale_refresh_uses += 1;
    }
    let (perms, openid) = match util::form_get(form, "scope") {
        Some(scope) => match delegated_scopes(base, st, scope) {
            Ok((p, _, o)) => (
                p.into_iter().filter(|p| info.scopes.contains(p)).collect(),
                o,
            ),
            Err(r) => return r,
        },
        None => (info.scopes.clone(), false),
    };
    if let Some(old) = st.refresh_tokens.get_mut(rt) {
        old.superseded = true;
    }
    token_success(st, base, true, perms, true, openid)
}

fn device_code_grant(base: &str, st: &mut St, form: &[(String, String)], tenant: &str) -> Reply {
    let client_id = match public_client(base, st, form, tenant) {
        Ok(client_id) => client_id,
        Err(r) => return r,
    };
    let Some(code) = util::form_get(form, "device_code") else {
        return missing_param(base, "device_code");
    };
    let auto = st.device_auto_approve;
    let Some(dc) = st
        .device_codes
        .iter_mut()
        .find(|d| d.info.device_code == code)
    else {
        return token_error(
            base,
            400,
            "bad_verification_code",
            70018,
            "Invalid verification code entered.",
            None,
        );
    };
    let now = Instant::now();
    dc.info.polls += 1;
    if let Some(last) = dc.last_poll
        && now.duration_since(last) + Duration::from_millis(150) < dc.interval
    {
        dc.info.too_fast_polls += 1;
    }
    dc.last_poll = Some(now);
    if dc.info.state == DeviceCodeState::Pending && now >= dc.expires_at {
        dc.info.state = DeviceCodeState::Expired;
    }
    if dc.info.state == DeviceCodeState::Pending && auto {
        dc.info.state = DeviceCodeState::Approved;
    }
    if dc.client_id != client_id {
        return token_error(
            base,
            400,
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed.",
            None,
        );
    }
    match dc.info.state {
        DeviceCodeState::Pending => token_error(
            base,
            400,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            None,
        ),
        DeviceCodeState::Declined => token_error(
            base,
            400,
            "authorization_declined",
            70000,
            "The user declined to authorize the request.",
            None,
        ),
        DeviceCodeState::Expired => token_error(
            base,
            400,
            "expired_token",
            70019,
            "Verification code expired.",
            None,
        ),
        DeviceCodeState::Redeemed => token_error(
            base,
            400,
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            None,
        ),
        DeviceCodeState::Approved => {
            dc.info.state = DeviceCodeState::Redeemed;
            let scopes = dc.scopes.clone();
            let offline = dc.info.scope.split(' ').any(|s| s == "offline_access");
            let openid = dc.info.scope.split(' ').any(|s| s == "openid");
            token_success(st, base, true, scopes, offline, openid)
        }
    }
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(super) fn devicecode(shared: &Shared, req: &Req, form: &[(String, String)]) -> Reply {
    let base = shared.base_url.as_str();
    let mut st = shared.lock();
    if let Some(r) = take_scripted(&mut st, Route::DeviceCode) {
        return r;
    }
    if let Err(mut r) = method_and_form(base, req) {
        if req.method == Method::POST {
            // Not a form: Entra sees no parameters at all.
            r = missing_param(base, "client_id");
        }
        return r;
    }
    let tenant = req.segments[0].clone();
    if let Err(r) = check_tenant(base, &st, &tenant, true) {
        return r;
    }
    let Some(client_id) = util::form_get(form, "client_id") else {
        return missing_param(base, "client_id");
    };
    if let Err(r) = check_client(base, &st, client_id, &tenant) {
        return r;
    }
    let Some(scope) = util::form_get(form, "scope") else {
        return missing_param(base, "scope");
    };
    let (perms, _, _) = match delegated_scopes(base, &st, scope) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let interval = st.cfg.device_code_interval;
    let lifetime = st.cfg.device_code_lifetime;
    let info = DeviceCodeInfo {
        device_code: format!("DAQABAAEAAAD{}", util::random_b64url(96)),
        user_code: util::user_code(),
        state: DeviceCodeState::Pending,
        scope: scope.to_string(),
        polls: 0,
        too_fast_polls: 0,
    };
    let body = json!({
        "user_code": info.user_code,
        "device_code": info.device_code,
        "verification_uri": DEVICE_VERIFICATION_URI,
        "expires_in": lifetime.as_secs(),
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {DEVICE_VERIFICATION_URI} and enter the code {} to authenticate.", info.user_code),
    });
    st.device_codes.push(DeviceCode {
        info,
        client_id: client_id.to_string(),
        scopes: perms,
        expires_at: Instant::now() + lifetime,
        interval: Duration::from_secs(interval),
        last_poll: None,
    });
    Reply::json(200, &body)
}
