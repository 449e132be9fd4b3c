//! The one place outbound HTTPS clients are built (Graph, identity platform, webhook): which CAs
//! are trusted and which proxy carries the traffic. Behind a corporate network both matter: a
//! TLS-inspecting proxy re-signs every site with its own CA, which the admin installs in the
//! system store, never in the web roots built into this binary. Never logs proxy credentials.

use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::config::Config;

/// How long a TCP (or proxy) connect may take before the attempt counts as a transient failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// `microsoft.proxy` was refused by the HTTP library (`check` catches the usual mistakes).
    #[error("microsoft.proxy is not usable: {0}")]
    Proxy(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// The HTTP client for every outbound request. Trusts the system CA store (or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, which replace it, as in OpenSSL) plus the built-in web roots, so a
/// host without a CA bundle still reaches Microsoft. Proxy: `microsoft.proxy` when set, else
/// `HTTPS_PROXY`/`ALL_PROXY` from the environment; `NO_PROXY` names hosts reached directly in
/// both cases. Redirects are never followed: Graph and the token endpoint do not redirect, and
/// a redirect would carry the bearer token elsewhere.
pub fn client(config: &Config) -> Result<reqwest::Client, OutboundError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT);
    let roots = system_roots();
    info!(
        certificates = roots.len(),
        source = %roots_source(),
        "outbound TLS trusts these CAs and the built-in web roots"
    );
    for cert in roots {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_der(&cert)
                .map_err(|e| OutboundError::Build(e.to_string()))?,
        );
    }
    match config.proxy() {
        Some(url) => {
            let proxy = reqwest::Proxy::all(url)
                .map_err(|e| OutboundError::Proxy(e.without_url().to_string()))?
                .no_proxy(reqwest::NoProxy::from_env());
            info!(proxy = %redacted(url), "outbound HTTPS goes through microsoft.proxy");
            builder = builder.proxy(proxy);
        }
        None => {
            if let Some((name, url)) = env_proxy() {
                info!(proxy = %redacted(&url), "outbound HTTPS goes through the proxy in {name}");
            }
        }
    }
    builder
        .build()
        .map_err(|e| OutboundError::Build(e.to_string()))
}

/// The system's CA certificates that rustls can use. Stores often hold a few certificates
/// rustls cannot parse; they are skipped (one unusable entry must not cost every other CA).
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        warn!(error = %error, "reading the system CA certificates");
    }
    loaded
        .certs
        .into_iter()
        .filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok())
        .collect()
}

/// Where [`system_roots`] came from, for the start-up log.
fn roots_source() -> String {
    let set = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>();
    if set.is_empty() {
        "system store".into()
    } else {
        set.join(" ")
    }
}

/// The proxy the HTTP library takes from the environment for https URLs, for the start-up log.
fn env_proxy() -> Option<(&'static str, String)> {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
}

/// An HTTP error with its causes: reqwest's own text ("error sending request") hides the part a
/// person can act on (an untrusted certificate, a refused proxy, an unknown host).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A proxy URL fit for a log line: scheme, host and port, without user or password.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_proxy_urls_keep_no_credentials() {
        assert_eq!(
            redacted("http://alice:s3cret@proxy.corp:3128/"),
            "http://proxy.corp:3128"
        );
        assert_eq!(redacted("https://proxy.corp"), "https://proxy.corp");
        assert!(!redacted("alice:s3cret@proxy").contains("s3cret"));
        assert_eq!(redacted("//alice:s3cret@proxy"), "(not a URL)");
    }
}
