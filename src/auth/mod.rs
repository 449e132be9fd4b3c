//! Where delivery gets its access tokens, and the token state the relay shows to people
//! (`valid` / `reauth_required` / `missing`). Never logs a token or a secret.
//!
//! Why not the `oauth2` crate (it was the requested choice): oauth2 5.0 drops the HTTP status and
//! headers of every token-endpoint error (`endpoint.rs`, `check_response_status` keeps only the
//! body), so a 429's `Retry-After` and a 5xx-vs-4xx distinction are lost, and the relay's whole
//! job here is to tell "retry later" from "a person must re-authorize". Its device-code poller
//! also fixes the error type to the standard fields (AADSTS `error_codes` gone), and it has no
//! `private_key_jwt`. Each Entra flow is one form POST, so `entra.rs` does it on reqwest directly.

pub mod advice;
mod assertion;
mod client_credentials;
mod delegated;
pub mod device_code;
pub mod entra;
pub mod store;
pub mod upkeep;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::{Config, Flow};
use tokio::sync::watch;

pub use assertion::{AssertionError, CertificateCredential};
pub use client_credentials::{AppCredential, ClientCredentials};
pub use delegated::Delegated;

/// An access token and when it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub value: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"***")
            .field(
                "expires_at",
                &humantime::format_rfc3339_seconds(self.expires_at),
            )
            .finish()
    }
}

/// Why no token could be had, by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No credentials are configured at all.
    #[error("no Microsoft credentials configured: {0}")]
    Missing(String),
    /// The grant or the credential is dead: hold mail and ask a person to re-authorize.
    #[error("re-authorization required: {0}")]
    Reauth(String),
    /// The token endpoint is down, slow or throttling: retry later.
    #[error("token endpoint unavailable: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl TokenError {
    /// Whether a person must act (as opposed to waiting).
    pub fn needs_person(&self) -> bool {
        matches!(self, TokenError::Missing(_) | TokenError::Reauth(_))
    }

    pub fn transient(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        TokenError::Transient {
            message: message.into(),
            retry_after,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Valid,
    ReauthRequired,
    Missing,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::ReauthRequired => "reauth_required",
            TokenState::Missing => "missing",
        }
    }
}

/// What `/status` and `auth status` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    pub state: TokenState,
    pub reason: String,
    pub expires_at: Option<SystemTime>,
}

/// The seam between delivery and the identity platform.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token that stays valid for a while yet; refreshes when needed, one refresh at a time.
    async fn token(&self) -> Result<AccessToken, TokenError>;
    /// Graph refused `token` (401): forget it so the next `token()` fetches a new one.
    fn invalidate(&self, token: &AccessToken);
    /// Where this source keeps its state.
    fn status_cell(&self) -> &StatusCell;
    fn status(&self) -> TokenStatus {
        self.status_cell().get()
    }
    /// Every change of `status()`.
    fn subscribe(&self) -> watch::Receiver<TokenStatus> {
        self.status_cell().subscribe()
    }
    /// Graph refused even a freshly issued token: the grant is dead although the token
    /// endpoint still answers. Moves the state to `reauth_required` with `reason`.
    fn rejected(&self, reason: &str);
    /// True once after the credential inputs (token cache, secret file, certificate) changed,
    /// so held mail can be retried at once instead of at the next slow probe.
    fn inputs_changed(&self) -> bool {
        false
    }
}

/// The source used when no credentials are configured: mail is accepted and held.
pub struct NoCredentials {
    reason: String,
    status: StatusCell,
}

impl NoCredentials {
    pub fn new(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let status = StatusCell::new(TokenStatus {
            state: TokenState::Missing,
            reason: reason.clone(),
            expires_at: None,
        });
        NoCredentials { reason, status }
    }
}

#[async_trait]
impl TokenSource for NoCredentials {
    async fn token(&self) -> Result<AccessToken, TokenError> {
        Err(TokenError::Missing(self.reason.clone()))
    }
    fn invalidate(&self, _token: &AccessToken) {}
    fn status_cell(&self) -> &StatusCell {
        &self.status
    }
    fn rejected(&self, _reason: &str) {}
}

/// The state a token source reports, updated as tokens are fetched or refused. A watch channel,
/// so the status page reads it and the notifier hears every change.
#[derive(Debug, Clone)]
pub struct StatusCell(Arc<watch::Sender<TokenStatus>>);

impl StatusCell {
    pub fn new(initial: TokenStatus) -> Self {
        StatusCell(Arc::new(watch::Sender::new(initial)))
    }

    pub fn get(&self) -> TokenStatus {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TokenStatus> {
        self.0.subscribe()
    }

    /// Replaces the status, telling subscribers only when it changed.
    pub fn set(&self, next: TokenStatus) {
        self.0.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    /// Records the outcome of a token request. Transient failures never change the state.
    pub fn record(&self, outcome: &Result<AccessToken, TokenError>) {
        let next = match outcome {
            Ok(token) => TokenStatus {
                state: TokenState::Valid,
                reason: String::new(),
                expires_at: Some(token.expires_at),
            },
            Err(TokenError::Reauth(reason)) => TokenStatus {
                state: TokenState::ReauthRequired,
                reason: reason.clone(),
                expires_at: None,
            },
            Err(TokenError::Missing(reason)) => TokenStatus {
                state: TokenState::Missing,
                reason: reason.clone(),
                expires_at: None,
            },
            Err(TokenError::Transient { .. }) => return,
        };
        self.set(next);
    }
}

/// The token source `serve` uses: the configured one, swappable on SIGHUP, with the credential
/// files watched so a sign-in or a rotated secret is noticed at once.
pub struct Tokens {
    inner: RwLock<Arc<dyn TokenSource>>,
    watched: RwLock<store::Watched>,
    status: StatusCell,
}

impl Tokens {
    pub fn new(config: &Config, http: reqwest::Client, clock: Arc<dyn Clock>) -> Self {
        let inner = from_config(config, http, clock);
        let status = StatusCell::new(inner.status());
        Tokens {
            inner: RwLock::new(inner),
            watched: RwLock::new(store::Watched::new(watched_paths(config))),
            status,
        }
    }

    /// Swaps in the source a reloaded configuration asks for.
    pub fn replace(&self, config: &Config, http: reqwest::Client, clock: Arc<dyn Clock>) {
        let inner = from_config(config, http, clock);
        *self.watched.write().expect("tokens lock") = store::Watched::new(watched_paths(config));
        // Swap and announce under one lock: whoever wakes on the new state gets the new source,
        // and no late answer from the old one can slip in between.
        let mut current = self.inner.write().expect("tokens lock");
        self.status.set(inner.status());
        *current = inner;
    }

    fn current(&self) -> Arc<dyn TokenSource> {
        self.inner.read().expect("tokens lock").clone()
    }

    /// Takes `inner`'s state, unless `inner` was replaced meanwhile: a call that began on the
    /// old source (say, with the old secret) must not undo what the new one says.
    fn follow(&self, inner: &Arc<dyn TokenSource>) {
        let current = self.inner.read().expect("tokens lock");
        if Arc::ptr_eq(inner, &current) {
            self.status.set(inner.status());
        }
    }
}

#[async_trait]
impl TokenSource for Tokens {
    async fn token(&self) -> Result<AccessToken, TokenError> {
        let inner = self.current();
        let outcome = inner.token().await;
        self.follow(&inner);
        outcome
    }
    fn invalidate(&self, token: &AccessToken) {
        self.current().invalidate(token);
    }
    fn status_cell(&self) -> &StatusCell {
        &self.status
    }
    fn rejected(&self, reason: &str) {
        let inner = self.current();
        inner.rejected(reason);
        self.follow(&inner);
    }
    fn inputs_changed(&self) -> bool {
        self.watched.read().expect("tokens lock").changed()
    }
}

fn watched_paths(config: &Config) -> Vec<PathBuf> {
    let ms = &config.microsoft;
    let mut paths = vec![config.token_cache_path()];
    paths.extend(ms.client_secret_file.iter().cloned());
    paths.extend(ms.client_certificate.iter().cloned());
    paths.extend(ms.client_key.iter().cloned());
    paths
}

/// Delegated scope: `offline_access` (for a refresh token), `Mail.Send`, and `Mail.ReadWrite`
/// for mail over 4 MB, which goes through a draft in the user's mailbox.
pub fn delegated_scope(config: &Config) -> String {
    if !config.microsoft.scope.is_empty() {
        return format!("offline_access {}", config.microsoft.scope);
    }
    let origin = config.scope().trim_end_matches("/.default").to_string();
    format!("offline_access {origin}/Mail.Send {origin}/Mail.ReadWrite")
}

/// The token source the configuration asks for.
pub fn from_config(
    config: &Config,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
) -> Arc<dyn TokenSource> {
    let ms = &config.microsoft;
    let (Some(token_url), Some(client_id)) = (config.token_url(), ms.client_id.clone()) else {
        return Arc::new(NoCredentials::new(
            "microsoft.tenant and microsoft.client_id are not set (see README: Microsoft 365 setup)",
        ));
    };
    if ms.flow == Flow::Delegated {
        let scope = delegated_scope(config);
        return Arc::new(Delegated::new(
            http,
            token_url,
            client_id,
            scope,
            config.token_cache_path(),
            clock,
        ));
    }
    let credential = match (
        &ms.client_secret,
        &ms.client_secret_file,
        &ms.client_certificate,
        &ms.client_key,
    ) {
        (Some(secret), _, _, _) => AppCredential::Secret(secret.clone()),
        (None, Some(path), _, _) => AppCredential::SecretFile(path.clone()),
        (None, None, Some(cert), Some(key)) => {
            match CertificateCredential::load(cert, key, ms.assertion_alg) {
                Ok(credential) => AppCredential::Certificate(Arc::new(credential)),
                Err(e) => return Arc::new(NoCredentials::new(e.to_string())),
            }
        }
        _ => {
            return Arc::new(NoCredentials::new(
                "no app credential: set microsoft.client_secret_file, client_secret, or client_certificate + client_key",
            ));
        }
    };
    Arc::new(ClientCredentials::new(
        http,
        token_url,
        client_id,
        config.scope(),
        credential,
        clock,
    ))
}

/// The device code login for this configuration (delegated flow only).
pub fn device_login(config: &Config, http: reqwest::Client) -> Option<device_code::DeviceLogin> {
    if config.microsoft.flow != Flow::Delegated {
        return None;
    }
    Some(device_code::DeviceLogin {
        http,
        device_code_url: config.device_code_url()?,
        token_url: config.token_url()?,
        client_id: config.microsoft.client_id.clone()?,
        scope: delegated_scope(config),
    })
}

/// Stores a completed sign-in in the token cache, where a running `serve` picks it up.
pub fn store_login(
    config: &Config,
    response: entra::TokenResponse,
    now: std::time::SystemTime,
) -> std::io::Result<()> {
    let client_id = config.microsoft.client_id.clone().unwrap_or_default();
    let entry = Delegated::cache_entry(&client_id, response, None, now);
    store::save(&config.token_cache_path(), &entry)
}

/// Records that app credentials were just proven to work (`auth login` for client
/// credentials), so a running `serve` that holds mail tries again at once.
pub fn store_app_token(config: &Config, token: &AccessToken) -> std::io::Result<()> {
    let expires_at = token
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let entry = store::CachedTokens {
        flow: "client_credentials".into(),
        client_id: config.microsoft.client_id.clone().unwrap_or_default(),
        access_token: token.value.clone(),
        expires_at,
        lifetime: 3600,
        refresh_token: None,
    };
    store::save(&config.token_cache_path(), &entry)
}

/// When to refresh a token that expires at `expires_at` and lived `lifetime`: 5 minutes ahead,
/// or a tenth of the lifetime for short-lived tokens.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(300).min(lifetime / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_five_minutes_or_a_tenth() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(1200)),
            Duration::from_secs(120)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(86_400)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn transient_errors_never_change_the_state() {
        let cell = StatusCell::new(TokenStatus {
            state: TokenState::Valid,
            reason: String::new(),
            expires_at: None,
        });
        cell.record(&Err(TokenError::transient("503", None)));
        assert_eq!(cell.get().state, TokenState::Valid);
        cell.record(&Err(TokenError::Reauth(
            "invalid_grant: AADSTS700082".into(),
        )));
        assert_eq!(cell.get().state, TokenState::ReauthRequired);
        cell.record(&Err(TokenError::transient("timeout", None)));
        assert_eq!(cell.get().state, TokenState::ReauthRequired);
    }
}
