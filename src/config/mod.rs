//! Typed configuration: the public face of `crate::config`. Built-in defaults (the repo's
//! `relay.toml`, compiled in), then the file, then `GRAPH_RELAY__SECTION__KEY` environment
//! variables; `load` reports every bad key with its full path, not just the first. Split in
//! rooms: `types` (the sections and how each value is read), `load` (layers, one read per key),
//! `validate` (rules across keys). Here: the derived answers callers ask for. This module never
//! touches the network or the spool.

mod load;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use load::{ConfigError, DEFAULTS_TOML, ENV_PREFIX, Source};
pub use types::{
    AssertionAlg, Config, Flow, MicrosoftConfig, NotifyConfig, QueueConfig, Secret, SmtpConfig,
    SmtpUser, StatusConfig,
};
pub use validate::{KeyError, is_host_name};

impl Config {
    /// `microsoft.proxy`, unless unset or empty (an empty environment override unsets it).
    pub fn proxy(&self) -> Option<&str> {
        let proxy = self.microsoft.proxy.as_ref()?.expose().trim();
        (!proxy.is_empty()).then_some(proxy)
    }

    /// Token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> Option<String> {
        self.oauth_endpoint("token")
    }

    /// Device authorization endpoint: `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self) -> Option<String> {
        self.oauth_endpoint("devicecode")
    }

    /// `{authority}/{tenant}/oauth2/v2.0/{name}`; `None` without a tenant.
    fn oauth_endpoint(&self, name: &str) -> Option<String> {
        let tenant = self.microsoft.tenant.as_deref()?;
        Some(format!(
            "{}/{tenant}/oauth2/v2.0/{name}",
            self.microsoft.authority.trim_end_matches('/'),
        ))
    }

    /// `microsoft.scope`, or the origin of `graph_url` + `/.default`.
    pub fn scope(&self) -> String {
        if !self.microsoft.scope.is_empty() {
            return self.microsoft.scope.clone();
        }
        match reqwest::Url::parse(&self.microsoft.graph_url) {
            Ok(url) => format!("{}/.default", url.origin().ascii_serialization()),
            Err(_) => "https://graph.microsoft.com/.default".to_string(),
        }
    }

    /// `microsoft.token_cache`, or `<queue.dir>/token.json`.
    pub fn token_cache_path(&self) -> PathBuf {
        if self.microsoft.token_cache.is_empty() {
            self.queue.dir.join("token.json")
        } else {
            PathBuf::from(&self.microsoft.token_cache)
        }
    }

    /// `smtp.hostname`, or the system hostname.
    pub fn hostname(&self) -> String {
        if !self.smtp.hostname.is_empty() {
            return self.smtp.hostname.clone();
        }
        system_hostname().unwrap_or_else(|| "localhost".to_string())
    }

    /// True when the relay has what it needs to ask for tokens at all.
    pub fn has_credentials(&self) -> bool {
        let ms = &self.microsoft;
        let app_credential = ms.client_secret.is_some()
            || ms.client_secret_file.is_some()
            || ms.client_certificate.is_some();
        ms.tenant.is_some()
            && ms.client_id.is_some()
            && (ms.flow == Flow::Delegated || app_credential)
    }
}
fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}
