//! The device code flow (RFC 8628, as Entra does it): ask for a code, show the person the link
//! and the code, poll until they sign in, and return the tokens. `login` is the whole sign-in,
//! shared by `graph-relay auth login` and the status page's Re-authorize button; they differ
//! only in how the code is shown and whether the waiting runs in the foreground.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::entra::{EntraError, TokenResponse};
use crate::config::Config;
use crate::outbound::describe;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCode {
    #[serde(skip_serializing)]
    pub device_code: String,
    pub user_code: String,
    /// Entra calls it `verification_uri`; RFC 8628 drafts called it `verification_url`.
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
    #[serde(default)]
    pub message: Option<String>,
}

fn default_expires_in() -> u64 {
    900
}

fn default_interval() -> u64 {
    5
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("the sign-in was declined")]
    Declined,
    #[error("the code expired before anyone signed in; start again")]
    Expired,
    #[error("the identity platform did not recognise the device code")]
    BadCode,
    #[error("sign-in failed: {0}")]
    Failed(String),
    #[error("cannot reach the identity platform: {0}")]
    Unreachable(String),
}

/// Why a sign-in that got a code ended without tokens in the cache.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("cannot write the token cache: {0}")]
    Store(std::io::Error),
}

/// One sign-in: asks for a device code and hands it to `show` (printed by the CLI, put on the
/// page by the button). What is left — waiting for the person, then storing the tokens where a
/// running `serve` picks them up — comes back as a `PendingLogin`, so the CLI can wait for it
/// in the foreground and the page in a background task.
pub async fn login(
    device: DeviceLogin,
    config: &Config,
    show: impl FnOnce(&DeviceCode),
) -> Result<PendingLogin, LoginError> {
    let code = device.start().await?;
    show(&code);
    Ok(PendingLogin {
        device,
        code,
        config: config.clone(),
    })
}

/// A device code that is out: the rest of a `login`.
#[derive(Debug)]
pub struct PendingLogin {
    device: DeviceLogin,
    code: DeviceCode,
    config: Config,
}

impl PendingLogin {
    /// Polls until the person signs in (or declines, or the code expires) and stores the tokens.
    pub async fn signed_in(self) -> Result<(), SignInError> {
        let response = self.device.poll(&self.code, tokio::time::sleep).await?;
        super::store_login(&self.config, response, SystemTime::now()).map_err(SignInError::Store)
    }
}

/// Endpoints and client for one login.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    pub http: reqwest::Client,
    pub device_code_url: String,
    pub token_url: String,
    pub client_id: String,
    pub scope: String,
}

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl DeviceLogin {
    /// Asks for a device code.
    pub async fn start(&self) -> Result<DeviceCode, LoginError> {
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let response = self
            .http
            .post(&self.device_code_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| LoginError::Unreachable(describe(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| LoginError::Unreachable(describe(&e)))?;
        if !status.is_success() {
            let error: EntraError = serde_json::from_slice(&body).unwrap_or_default();
            return Err(LoginError::Failed(if error.error.is_empty() {
                format!("HTTP {status}")
            } else {
                error.summary()
            }));
        }
        serde_json::from_slice(&body)
            .map_err(|e| LoginError::Failed(format!("unreadable device code response: {e}")))
    }

    /// Polls until the person signs in, declines, or the code expires. `sleep` is injected so
    /// tests need not wait for real.
    pub async fn poll<S, F>(&self, code: &DeviceCode, sleep: S) -> Result<TokenResponse, LoginError>
    where
        S: Fn(Duration) -> F,
        F: std::future::Future<Output = ()>,
    {
        let mut interval = Duration::from_secs(code.interval.max(1));
        let mut waited = Duration::ZERO;
        let deadline = Duration::from_secs(code.expires_in);
        loop {
            sleep(interval).await;
            waited += interval;
            match self.poll_once(code).await? {
                Poll::Done(tokens) => return Ok(tokens),
                Poll::Pending => {}
                Poll::SlowDown => interval += Duration::from_secs(5),
            }
            if waited >= deadline {
                return Err(LoginError::Expired);
            }
        }
    }

    async fn poll_once(&self, code: &DeviceCode) -> Result<Poll, LoginError> {
        let form = [
            ("grant_type", DEVICE_GRANT),
            ("client_id", self.client_id.as_str()),
            ("device_code", code.device_code.as_str()),
        ];
        let response = match self.http.post(&self.token_url).form(&form).send().await {
            Ok(response) => response,
            // A network blip while polling is not the end of the login.
            Err(_) => return Ok(Poll::Pending),
        };
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(Poll::Done)
                .map_err(|e| LoginError::Failed(format!("unreadable token response: {e}")));
        }
        let error: EntraError = serde_json::from_slice(&body).unwrap_or_default();
        match error.error.as_str() {
            "authorization_pending" => Ok(Poll::Pending),
            "slow_down" => Ok(Poll::SlowDown),
            "authorization_declined" | "access_denied" => Err(LoginError::Declined),
            "expired_token" | "code_expired" => Err(LoginError::Expired),
            "bad_verification_code" => Err(LoginError::BadCode),
            _ if status.is_server_error() || status.as_u16() == 429 => Ok(Poll::SlowDown),
            _ if error.error_codes.contains(&70016) => Ok(Poll::Pending),
            _ => Err(LoginError::Failed(error.summary())),
        }
    }
}

enum Poll {
    Done(TokenResponse),
    Pending,
    SlowDown,
}
