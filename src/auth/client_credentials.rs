//! App-only tokens (client credentials grant) with a client secret or a secret file. Caches the
//! token in memory, refreshes ahead of expiry, and lets only one refresh run at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tracing::{info, warn};

use super::assertion::CertificateCredential;
use super::entra::request_token;
use super::{
    AccessToken, StatusCell, TokenError, TokenSource, TokenState, TokenStatus, refresh_margin,
};
use crate::clock::Clock;
use crate::config::Secret;

/// How the app proves who it is.
#[derive(Debug, Clone)]
pub enum AppCredential {
    Secret(Secret),
    /// Re-read at every token request, so a rotated secret takes effect without a restart.
    SecretFile(PathBuf),
    /// A certificate: each request carries a freshly signed JWT client assertion.
    Certificate(Arc<CertificateCredential>),
}

/// `client_assertion_type` for a JWT client assertion.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl AppCredential {
    /// The form fields that authenticate the app to the token endpoint.
    fn form_fields(
        &self,
        client_id: &str,
        token_url: &str,
        now: SystemTime,
    ) -> Result<Vec<(&'static str, Secret)>, TokenError> {
        match self {
            AppCredential::Secret(secret) => Ok(vec![("client_secret", secret.clone())]),
            AppCredential::SecretFile(path) => std::fs::read_to_string(path)
                .map(|text| vec![("client_secret", Secret::new(text.trim()))])
                .map_err(|e| {
                    TokenError::Reauth(format!(
                        "cannot read client_secret_file {}: {e}",
                        path.display()
                    ))
                }),
            AppCredential::Certificate(certificate) => {
                let jwt = certificate
                    .assertion(client_id, token_url, now)
                    .map_err(|e| TokenError::Reauth(e.to_string()))?;
                Ok(vec![
                    ("client_assertion_type", Secret::new(ASSERTION_TYPE)),
                    ("client_assertion", Secret::new(jwt)),
                ])
            }
        }
    }
}

pub struct ClientCredentials {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: AppCredential,
    clock: Arc<dyn Clock>,
    cached: Mutex<Option<Cached>>,
    /// Held while a refresh runs, so concurrent callers wait for it instead of each asking.
    refreshing: tokio::sync::Mutex<()>,
    status: StatusCell,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: SystemTime,
}

impl ClientCredentials {
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        scope: String,
        credential: AppCredential,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ClientCredentials {
            http,
            token_url,
            client_id,
            scope,
            credential,
            clock,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            status: StatusCell::new(TokenStatus {
                state: TokenState::Valid,
                reason: "no token fetched yet".into(),
                expires_at: None,
            }),
        }
    }

    fn fresh_cached(&self) -> Option<AccessToken> {
        let cached = self.cached.lock().expect("token cache lock");
        cached
            .as_ref()
            .filter(|c| self.clock.now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let credential =
            self.credential
                .form_fields(&self.client_id, &self.token_url, self.clock.now())?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        form.extend(credential.iter().map(|(k, v)| (*k, v.expose())));
        let response = request_token(&self.http, &self.token_url, &form).await?;
        let now = self.clock.now();
        let lifetime = Duration::from_secs(response.expires_in.max(1));
        let token = AccessToken {
            value: response.access_token,
            expires_at: now + lifetime,
        };
        *self.cached.lock().expect("token cache lock") = Some(Cached {
            token: token.clone(),
            refresh_at: now + lifetime - refresh_margin(lifetime),
        });
        Ok(token)
    }
}

#[async_trait]
impl TokenSource for ClientCredentials {
    async fn token(&self) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.fresh_cached() {
            return Ok(token);
        }
        let _guard = self.refreshing.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(token) = self.fresh_cached() {
            return Ok(token);
        }
        let outcome = self.fetch().await;
        let before = self.status.get().state;
        self.status.record(&outcome);
        match &outcome {
            Ok(token) => info!(
                expires_at = %humantime::format_rfc3339_seconds(token.expires_at),
                "got an app-only access token"
            ),
            Err(e) => warn!(error = %e, was = before.as_str(), "token request failed"),
        }
        outcome
    }

    fn invalidate(&self, token: &AccessToken) {
        let mut cached = self.cached.lock().expect("token cache lock");
        if cached.as_ref().is_some_and(|c| c.token == *token) {
            *cached = None;
        }
    }

    fn status_cell(&self) -> &StatusCell {
        &self.status
    }

    fn rejected(&self, reason: &str) {
        *self.cached.lock().expect("token cache lock") = None;
        self.status
            .record(&Err(TokenError::Reauth(reason.to_string())));
    }
}
