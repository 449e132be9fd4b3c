//! Delegated tokens: one user signed in with the device code flow; the relay keeps the access
//! token fresh with the rotating refresh token, persisting each new refresh token before using
//! the access token that came with it. Mail goes through `/me/sendMail`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tracing::{info, warn};

use super::entra::{TokenResponse, request_token};
use super::store::{self, CachedTokens, Watched};
use super::{
    AccessToken, StatusCell, TokenError, TokenSource, TokenState, TokenStatus, refresh_margin,
};
use crate::clock::Clock;

pub const NOT_SIGNED_IN: &str = "nobody has signed in yet: run `graph-relay auth login` (or use the status page's Re-authorize button)";

pub struct Delegated {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    cache_path: PathBuf,
    clock: Arc<dyn Clock>,
    /// The cache as last read or written.
    cached: Mutex<Option<CachedTokens>>,
    /// Tells when the file changed under us (a login by another process).
    file: Watched,
    refreshing: tokio::sync::Mutex<()>,
    status: StatusCell,
}

impl Delegated {
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        scope: String,
        cache_path: PathBuf,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let cached = store::load(&cache_path)
            .ok()
            .flatten()
            .filter(|c| c.flow == "delegated");
        let status = StatusCell::new(match &cached {
            Some(c) => TokenStatus {
                state: TokenState::Valid,
                reason: String::new(),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(c.expires_at)),
            },
            None => TokenStatus {
                state: TokenState::ReauthRequired,
                reason: NOT_SIGNED_IN.into(),
                expires_at: None,
            },
        });
        Delegated {
            http,
            token_url,
            client_id,
            scope,
            cache_path: cache_path.clone(),
            clock,
            cached: Mutex::new(cached),
            file: Watched::new(vec![cache_path.clone()]),
            refreshing: tokio::sync::Mutex::new(()),
            status,
        }
    }

    /// Turns a token response into the cache entry (keeping the old refresh token when the
    /// response brings none).
    pub fn cache_entry(
        client_id: &str,
        response: TokenResponse,
        previous_refresh: Option<String>,
        now: SystemTime,
    ) -> CachedTokens {
        let lifetime = response.expires_in.max(1);
        let expires = now + Duration::from_secs(lifetime);
        CachedTokens {
            flow: "delegated".into(),
            client_id: client_id.to_string(),
            access_token: response.access_token,
            expires_at: expires
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            lifetime,
            refresh_token: response.refresh_token.or(previous_refresh),
        }
    }

    /// The cached sign-in, re-read when the file changed since we last read or wrote it
    /// (another process signed in).
    fn current(&self) -> Option<CachedTokens> {
        let mut cached = self.cached.lock().expect("token cache lock");
        if self.file.changed()
            && let Some(on_disk) = store::load(&self.cache_path)
                .ok()
                .flatten()
                .filter(|c| c.flow == "delegated")
        {
            info!("token cache changed on disk; using the new sign-in");
            *cached = Some(on_disk);
        }
        cached.clone()
    }

    fn usable(&self, tokens: &CachedTokens) -> Option<AccessToken> {
        let expires_at = UNIX_EPOCH + Duration::from_secs(tokens.expires_at);
        let left = expires_at.duration_since(self.clock.now()).ok()?;
        (left > refresh_margin(Duration::from_secs(tokens.lifetime))).then(|| AccessToken {
            value: tokens.access_token.clone(),
            expires_at,
        })
    }

    async fn refresh(&self, tokens: &CachedTokens) -> Result<AccessToken, TokenError> {
        let Some(refresh_token) = tokens.refresh_token.clone() else {
            return Err(TokenError::Reauth(
                "the cached sign-in has no refresh token".into(),
            ));
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("refresh_token", refresh_token.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let response = request_token(&self.http, &self.token_url, &form).await?;
        let entry = Self::cache_entry(
            &self.client_id,
            response,
            Some(refresh_token),
            self.clock.now(),
        );
        // The new refresh token is on disk before the new access token is used.
        store::save(&self.cache_path, &entry).map_err(|e| {
            TokenError::transient(format!("cannot write the token cache: {e}"), None)
        })?;
        let token = AccessToken {
            value: entry.access_token.clone(),
            expires_at: UNIX_EPOCH + Duration::from_secs(entry.expires_at),
        };
        *self.cached.lock().expect("token cache lock") = Some(entry);
        Ok(token)
    }
}

#[async_trait]
impl TokenSource for Delegated {
    async fn token(&self) -> Result<AccessToken, TokenError> {
        let _guard = self.refreshing.lock().await;
        let outcome = match self.current() {
            None => Err(TokenError::Reauth(NOT_SIGNED_IN.into())),
            Some(tokens) => match self.usable(&tokens) {
                Some(token) => Ok(token),
                None => self.refresh(&tokens).await,
            },
        };
        if let Err(e) = &outcome {
            warn!(error = %e, "delegated token unavailable");
        }
        self.status.record(&outcome);
        outcome
    }

    fn invalidate(&self, token: &AccessToken) {
        let mut cached = self.cached.lock().expect("token cache lock");
        if let Some(c) = cached.as_mut()
            && c.access_token == token.value
        {
            c.expires_at = 0; // forces a refresh, keeping the refresh token
        }
    }

    fn status_cell(&self) -> &StatusCell {
        &self.status
    }

    fn rejected(&self, reason: &str) {
        self.status
            .record(&Err(TokenError::Reauth(reason.to_string())));
    }
}
