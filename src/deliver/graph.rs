//! The Graph transport: runs a plan's requests against `microsoft.graph_url` with a bearer
//! token, and turns Graph's answers into delivery outcomes. A 401 drops the token, refreshes
//! once and retries once. Never logs a token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE};
use serde::Deserialize;
use tracing::{debug, warn};

use super::steps::{MESSAGE_ID, Step, content_range, steps};
use super::{DeliveryError, Transport};
use crate::auth::{AccessToken, TokenError, TokenSource, entra::retry_after};
use crate::convert::GraphPlan;
use crate::spool::{LastError, QueueId};

/// Per-request timeout: a stuck connection becomes a transient failure, not a stuck queue.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub struct GraphTransport {
    http: reqwest::Client,
    graph_url: String,
    tokens: Arc<dyn TokenSource>,
    latency: Arc<super::Latency>,
}

impl GraphTransport {
    pub fn new(
        http: reqwest::Client,
        graph_url: &str,
        tokens: Arc<dyn TokenSource>,
        latency: Arc<super::Latency>,
    ) -> Self {
        GraphTransport {
            http,
            graph_url: graph_url.trim_end_matches('/').to_string(),
            tokens,
            latency,
        }
    }

    async fn token(&self) -> Result<AccessToken, DeliveryError> {
        self.tokens.token().await.map_err(|e| match e {
            TokenError::Missing(reason) => DeliveryError::Missing(reason),
            TokenError::Reauth(reason) => DeliveryError::Reauth(reason),
            TokenError::Transient {
                message,
                retry_after,
            } => DeliveryError::Transient {
                error: LastError {
                    status: None,
                    code: "TokenEndpointUnavailable".into(),
                    message,
                },
                retry_after,
            },
        })
    }

    /// Runs every step of the plan, sharing one token; on a 401 the whole plan restarts once
    /// with a new token (a draft left behind by the first try is harmless: it was never sent).
    async fn run(&self, plan: &GraphPlan) -> Result<(), DeliveryError> {
        let token = self.token().await?;
        let outcome = match self.run_steps(plan, &token).await {
            Err(Failure::Unauthorized(first)) => {
                warn!(%first, "Graph refused the access token; fetching a new one and retrying once");
                self.tokens.invalidate(&token);
                let token = self.token().await?;
                match self.run_steps(plan, &token).await {
                    Err(Failure::Unauthorized(second)) => Err(DeliveryError::Reauth(format!(
                        "Graph refused a freshly issued token: {second}"
                    ))),
                    other => other.map_err(Failure::into_delivery),
                }
            }
            other => other.map_err(Failure::into_delivery),
        };
        if let Err(DeliveryError::Reauth(reason)) = &outcome {
            // The token endpoint may still hand out tokens Graph refuses: the state must say so.
            self.tokens.rejected(reason);
        }
        outcome
    }

    /// Runs the plan's steps. A draft left by a failure before `/send` is deleted, so a retry
    /// does not pile drafts up in the mailbox; after `/send` was tried it is left alone (it may
    /// have been sent, and deleting it would delete the sent copy).
    async fn run_steps(&self, plan: &GraphPlan, token: &AccessToken) -> Result<(), Failure> {
        let mut draft = Draft::default();
        let result = self.run_steps_tracking(plan, token, &mut draft).await;
        if result.is_err() && !draft.id.is_empty() && !draft.send_tried {
            self.discard_draft(plan, &draft.id, token).await;
        }
        result
    }

    async fn run_steps_tracking(
        &self,
        plan: &GraphPlan,
        token: &AccessToken,
        draft: &mut Draft,
    ) -> Result<(), Failure> {
        let mut upload_url = String::new();
        for step in steps(plan) {
            match step {
                Step::PostJson { path, body, expect } => {
                    let request = self.http.post(self.url(&path, &draft.id)).json(&body);
                    let response = self
                        .send(request, Some(token), expect)
                        .await
                        .map_err(Failure::on_draft)?;
                    if draft.id.is_empty() && expect == 201 {
                        // The first 201 is the draft's creation.
                        draft.id = read_field(response, "id").await?;
                    }
                }
                Step::PostMime { path, base64 } => {
                    let request = self
                        .http
                        .post(self.url(&path, &draft.id))
                        .header(CONTENT_TYPE, "text/plain")
                        .body(base64.to_string());
                    self.send(request, Some(token), 202).await?;
                }
                Step::CreateUpload { path, body } => {
                    let request = self.http.post(self.url(&path, &draft.id)).json(&body);
                    let response = self
                        .send(request, Some(token), 201)
                        .await
                        .map_err(Failure::on_draft)?;
                    upload_url = read_field(response, "uploadUrl").await?;
                }
                Step::PutRange {
                    attachment,
                    start,
                    end,
                } => {
                    // The upload URL is pre-authenticated: Graph rejects an Authorization header.
                    let request = self
                        .http
                        .put(&upload_url)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(
                            CONTENT_RANGE,
                            content_range(start, end, attachment.bytes.len()),
                        )
                        .body(attachment.bytes[start..end].to_vec());
                    let expect = if end == attachment.bytes.len() {
                        201
                    } else {
                        200
                    };
                    self.send(request, None, expect).await?;
                }
                Step::PostEmpty { path, expect } => {
                    draft.send_tried = true;
                    let request = self.http.post(self.url(&path, &draft.id)).body(Vec::new());
                    self.send(request, Some(token), expect).await?;
                }
            }
        }
        Ok(())
    }

    async fn discard_draft(&self, plan: &GraphPlan, id: &str, token: &AccessToken) {
        let url = format!("{}{}/messages/{id}", self.graph_url, plan.mailbox.path());
        let request = self
            .http
            .delete(url)
            .header(AUTHORIZATION, format!("Bearer {}", token.value));
        match request.timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => debug!("deleted the unsent draft"),
            Ok(response) => warn!(status = %response.status(), "could not delete the unsent draft"),
            Err(e) => warn!(error = %e, "could not delete the unsent draft"),
        }
    }

    fn url(&self, path: &str, message_id: &str) -> String {
        format!("{}{}", self.graph_url, path.replace(MESSAGE_ID, message_id))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: Option<&AccessToken>,
        expect: u16,
    ) -> Result<reqwest::Response, Failure> {
        let request = match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {}", token.value)),
            None => request,
        };
        let started = Instant::now();
        let result = request.timeout(REQUEST_TIMEOUT).send().await;
        self.latency.observe(started.elapsed());
        // Without the URL: an upload URL carries its own access token.
        let response = result.map_err(|e| Failure::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        // 200 where 202 was promised has been seen for oversized MIME: treat it as a failure.
        if status == expect || (expect == 200 && status == 201) {
            debug!(status, "Graph accepted the request");
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let error = graph_error(status, &body);
        Err(match status {
            401 => Failure::Unauthorized(error),
            _ => Failure::Status { error, retry_after },
        })
    }
}

#[async_trait]
impl Transport for GraphTransport {
    async fn send(
        &self,
        _id: &QueueId,
        _part: usize,
        plan: &GraphPlan,
    ) -> Result<(), DeliveryError> {
        self.run(plan).await
    }
}

/// What went wrong with one request, before deciding what it means for the message.
enum Failure {
    Network(String),
    Unauthorized(LastError),
    Status {
        error: LastError,
        retry_after: Option<Duration>,
    },
    /// Creating a draft or an upload session was refused: the permission for big mail
    /// (Mail.ReadWrite) is missing. Only this message is affected; small mail still goes.
    DraftDenied(LastError),
}

/// The draft of the big-mail path, as far as it got.
#[derive(Default)]
struct Draft {
    id: String,
    send_tried: bool,
}

impl Failure {
    fn on_draft(self) -> Failure {
        match self {
            Failure::Status { error, .. } if error.status == Some(403) => {
                Failure::DraftDenied(error)
            }
            other => other,
        }
    }

    fn into_delivery(self) -> DeliveryError {
        match self {
            Failure::Network(message) => DeliveryError::Transient {
                error: LastError {
                    status: None,
                    code: "NetworkError".into(),
                    message,
                },
                retry_after: None,
            },
            Failure::Unauthorized(error) => DeliveryError::Permanent(error),
            Failure::Status { error, retry_after } => classify(error, retry_after),
            Failure::DraftDenied(mut error) => {
                error.message.push_str(" (mail over 4 MB goes through a draft, which needs the Mail.ReadWrite permission)");
                DeliveryError::Permanent(error)
            }
        }
    }
}

/// Design section 5: 429/5xx wait and retry; 403 ErrorAccessDenied means the app lacks the
/// permission (a person must fix it); other 4xx are permanent for this message.
fn classify(error: LastError, retry_after: Option<Duration>) -> DeliveryError {
    let status = error.status.unwrap_or(0);
    if status == 429 || status == 408 || status >= 500 {
        DeliveryError::Transient { error, retry_after }
    } else if status == 403 && error.code == "ErrorAccessDenied" {
        DeliveryError::Reauth(format!(
            "{error} (grant the Mail.Send application permission and admin consent)"
        ))
    } else {
        DeliveryError::Permanent(error)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn graph_error(status: u16, body: &[u8]) -> LastError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => LastError {
            status: Some(status),
            code: error.code,
            message: error.message,
        },
        Err(_) => LastError {
            status: Some(status),
            code: format!("HTTP{status}"),
            message: String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string(),
        },
    }
}

async fn read_field(response: reqwest::Response, field: &str) -> Result<String, Failure> {
    let status = response.status().as_u16();
    let value: serde_json::Value = response
        .json()
        .await
        .map_err(|e| Failure::Network(format!("unreadable Graph response: {}", e.without_url())))?;
    match value.get(field).and_then(|v| v.as_str()) {
        Some(text) => Ok(text.to_string()),
        None => Err(Failure::Status {
            error: LastError {
                status: Some(status),
                code: "UnexpectedResponse".into(),
                message: format!("Graph's answer has no {field:?}"),
            },
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, code: &str) -> LastError {
        LastError {
            status: Some(status),
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn graph_answers_map_to_what_happens_next() {
        assert!(matches!(
            classify(error(429, "TooManyRequests"), None),
            DeliveryError::Transient { .. }
        ));
        assert!(matches!(
            classify(error(503, "serviceNotAvailable"), None),
            DeliveryError::Transient { .. }
        ));
        assert!(matches!(
            classify(error(504, "x"), None),
            DeliveryError::Transient { .. }
        ));
        assert!(matches!(
            classify(error(400, "ErrorInvalidRecipients"), None),
            DeliveryError::Permanent(_)
        ));
        assert!(matches!(
            classify(error(403, "ErrorSendAsDenied"), None),
            DeliveryError::Permanent(_)
        ));
        assert!(matches!(
            classify(error(413, "x"), None),
            DeliveryError::Permanent(_)
        ));
        assert!(matches!(
            classify(error(403, "ErrorAccessDenied"), None),
            DeliveryError::Reauth(_)
        ));
    }

    #[test]
    fn error_bodies_are_read_or_summarised() {
        let body = br#"{"error":{"code":"ErrorSendAsDenied","message":"no","innerError":{}}}"#;
        assert_eq!(
            graph_error(403, body),
            LastError {
                status: Some(403),
                code: "ErrorSendAsDenied".into(),
                message: "no".into()
            }
        );
        let html = graph_error(502, b"<html>Bad Gateway</html>");
        assert_eq!(html.code, "HTTP502");
        assert!(html.message.contains("Bad Gateway"));
    }
}
