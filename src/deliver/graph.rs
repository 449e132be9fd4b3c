//! The Graph transport: runs a plan's requests against `microsoft.graph_url` with a bearer
//! token, and turns Graph's answers into delivery outcomes. A 401 drops the token, refreshes
//! once and retries once. Never logs a token (nor an upload URL, which carries one).
//!
//! Big mail goes through a draft, and the draft is what makes it safe to retry: its id is
//! recorded in the spool as soon as Graph creates it, and marked right before `/send`. The next
//! attempt after any failure or crash starts from that note: an unsent draft is deleted and the
//! message starts again (we restart rather than resume half-done uploads: upload URLs expire
//! and carry their own token, so they are not worth keeping); a draft whose `/send` may have
//! gone is looked up by its immutable id, and sent only if it is still a draft. So a message
//! is sent twice only if Graph reported a sent message as still a draft.
//!
//! Inside one attempt an upload session survives a bad chunk: a PUT answered 5xx/429/408 or
//! lost on the network is sent again (up to [`CHUNK_RETRIES`] times, after Retry-After or a
//! short backoff), and an upload URL that expired or stopped answering for the session is
//! replaced by a new session that starts over (up to [`SESSION_RENEWALS`] times).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::source::{AttachmentReader, SourceError};
use super::steps::{JsonBody, MESSAGE_ID, Step, chunk_at, content_range, steps};
use super::{Delivery, DeliveryError, Transport};
use crate::auth::{AccessToken, TokenError, TokenSource, entra::retry_after};
use crate::convert::LargeAttachment;
use crate::metrics::GraphStats;
use crate::outbound::describe;
use crate::spool::{DraftNote, LastError};

/// Per-request timeout: a stuck connection becomes a transient failure, not a stuck queue.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Times one upload chunk is sent again after a 5xx/429/408 or a network error.
pub const CHUNK_RETRIES: u32 = 3;

/// Times an attachment gets a new upload session after its upload URL stopped working.
pub const SESSION_RENEWALS: u32 = 2;

/// Longest wait before a chunk is sent again, whatever Retry-After says (the rest of the
/// message waits with it; longer waits are the queue's job).
const MAX_CHUNK_WAIT: Duration = Duration::from_secs(30);

/// Asks Graph for ids that survive the move from Drafts to Sent Items, so a sent draft can be
/// found again by the id recorded before its `/send`. Graph applies it per request, so every
/// request carries it.
const IMMUTABLE_ID: (&str, &str) = ("Prefer", "IdType=\"ImmutableId\"");

pub struct GraphTransport {
    http: reqwest::Client,
    graph_url: String,
    tokens: Arc<dyn TokenSource>,
    stats: Arc<GraphStats>,
}

impl GraphTransport {
    pub fn new(
        http: reqwest::Client,
        graph_url: &str,
        tokens: Arc<dyn TokenSource>,
        stats: Arc<GraphStats>,
    ) -> Self {
        GraphTransport {
            http,
            graph_url: graph_url.trim_end_matches('/').to_string(),
            tokens,
            stats,
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

    /// One attempt, sharing one token; on a 401 it starts over once with a new token.
    async fn run(&self, d: &Delivery<'_>) -> Result<(), DeliveryError> {
        let token = self.token().await?;
        let outcome = match self.attempt(d, &token).await {
            Err(Failure::Unauthorized(first)) => {
                warn!(%first, "Graph refused the access token; fetching a new one and retrying once");
                self.tokens.invalidate(&token);
                let token = self.token().await?;
                match self.attempt(d, &token).await {
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

    /// Settles what an earlier attempt left behind, then runs the plan's steps.
    async fn attempt(&self, d: &Delivery<'_>, token: &AccessToken) -> Result<(), Failure> {
        if let Some(note) = d.drafts.previous(d.part)
            && self.settle(d, &note, token).await? == Settled::Sent
        {
            return Ok(());
        }
        let mut draft = None;
        let result = self.run_steps(d, token, &mut draft).await;
        if let (Err(failure), Some(note)) = (&result, draft)
            && (!note.send_tried || failure.proves_unsent())
        {
            // Never sent: delete it, so retries do not pile drafts up in the mailbox.
            self.discard_draft(d, &note.id, token).await;
        }
        result
    }

    /// The previous attempt's draft: an unsent one is deleted; one whose `/send` may have gone
    /// is looked up, and sent only if it is still a draft.
    async fn settle(
        &self,
        d: &Delivery<'_>,
        note: &DraftNote,
        token: &AccessToken,
    ) -> Result<Settled, Failure> {
        if !note.send_tried {
            info!("deleting the unsent draft of an earlier attempt");
            self.delete_draft(d, &note.id, token).await?;
            return Ok(Settled::Gone);
        }
        let url = self.draft_url(d, &note.id, "?$select=isDraft");
        let request = self.http.get(url);
        match self.send(request, token, 200).await {
            Ok(response) => {
                let value: Value = response.json().await.map_err(unreadable)?;
                if value.get("isDraft").and_then(Value::as_bool) == Some(false) {
                    info!("an earlier attempt's draft was sent; not sending it again");
                    return Ok(Settled::Sent);
                }
                info!("an earlier attempt's draft was not sent; sending it now");
                let request = self.http.post(self.draft_url(d, &note.id, "/send"));
                match self.send(request.body(Vec::new()), token, 202).await {
                    Ok(_) => Ok(Settled::Sent),
                    Err(failure) => {
                        if failure.proves_unsent() {
                            self.discard_draft(d, &note.id, token).await;
                        }
                        Err(failure)
                    }
                }
            }
            Err(Failure::Status { error, .. }) if error.status == Some(404) => {
                // Sending moves it to Sent Items; only a person deleting it also removes it.
                warn!("an earlier attempt's draft is gone; taking it as sent");
                Ok(Settled::Sent)
            }
            Err(other) => Err(other),
        }
    }

    /// Runs the plan's steps; `draft` is the draft as far as it got, written to the spool at
    /// each change before the next request.
    async fn run_steps(
        &self,
        d: &Delivery<'_>,
        token: &AccessToken,
        draft: &mut Option<DraftNote>,
    ) -> Result<(), Failure> {
        let draft_id =
            |draft: &Option<DraftNote>| draft.as_ref().map_or("", |n| n.id.as_str()).to_string();
        for step in steps(d.plan) {
            match step {
                Step::PostJson { path, body, expect } => {
                    let request = self.post_json(self.url(&path, &draft_id(draft)), &body);
                    self.send(request, token, expect)
                        .await
                        .map_err(Failure::on_draft)?;
                }
                Step::PostMime { path, base64 } => {
                    let request = self
                        .http
                        .post(self.url(&path, ""))
                        .header(CONTENT_TYPE, "text/plain")
                        .body(base64.to_string());
                    self.send(request, token, 202).await?;
                }
                Step::CreateDraft { path, body } => {
                    let request = self.post_json(self.url(&path, ""), &body);
                    let response = self
                        .send(request, token, 201)
                        .await
                        .map_err(Failure::on_draft)?;
                    let note = DraftNote {
                        part: d.part,
                        id: read_field(response, "id").await?,
                        send_tried: false,
                    };
                    *draft = Some(note.clone());
                    self.note(d, Some(note)).await?;
                }
                Step::Upload {
                    path,
                    body,
                    attachment,
                } => {
                    let path = self.url(&path, &draft_id(draft));
                    self.upload(d, &path, &body, attachment, token).await?;
                }
                Step::SendDraft { path } => {
                    let note = draft.as_mut().expect("a draft is created before its send");
                    note.send_tried = true;
                    let note = note.clone();
                    self.note(d, Some(note)).await?;
                    let request = self.http.post(self.url(&path, &draft_id(draft)));
                    self.send(request.body(Vec::new()), token, 202).await?;
                }
            }
        }
        Ok(())
    }

    async fn note(&self, d: &Delivery<'_>, note: Option<DraftNote>) -> Result<(), Failure> {
        d.drafts
            .record(d.part, note)
            .await
            .map_err(|e| Failure::Local {
                code: "SpoolWriteFailed",
                message: format!("cannot record the draft in the spool: {e}"),
                permanent: false,
            })
    }

    /// One attachment through upload sessions: see the module comment for what is retried.
    async fn upload(
        &self,
        d: &Delivery<'_>,
        session_path: &str,
        body: &JsonBody,
        attachment: &LargeAttachment,
        token: &AccessToken,
    ) -> Result<(), Failure> {
        let mut reader = Some(AttachmentReader::new(attachment, d.message));
        let mut renewals = 0;
        loop {
            let request = self.post_json(session_path.to_string(), body);
            let response = self
                .send(request, token, 201)
                .await
                .map_err(Failure::on_draft)?;
            let upload_url = read_field(response, "uploadUrl").await?;
            match self
                .upload_to(&upload_url, &mut reader, attachment.size)
                .await
            {
                Err(PutFailure::SessionGone(error)) if renewals < SESSION_RENEWALS => {
                    renewals += 1;
                    self.stats.session_renewed();
                    warn!(%error, "the upload URL stopped working; starting a new upload session");
                }
                other => return other.map_err(PutFailure::into_failure),
            }
        }
    }

    /// PUTs the attachment to one upload URL, from wherever the session says it wants next.
    async fn upload_to(
        &self,
        upload_url: &str,
        reader: &mut Option<AttachmentReader>,
        size: usize,
    ) -> Result<(), PutFailure> {
        let mut offset = 0;
        while offset < size {
            let range = chunk_at(offset, size);
            let chunk = read_chunk(reader, range.clone())
                .await
                .map_err(PutFailure::Fatal)?;
            match self
                .put_with_retries(upload_url, &range, size, chunk)
                .await?
            {
                Put::Done => {
                    self.stats.uploaded(size - offset);
                    return Ok(());
                }
                Put::Next(next) if next > offset && next <= size => {
                    self.stats.uploaded(next - offset);
                    offset = next;
                }
                Put::Next(next) => {
                    return Err(PutFailure::Fatal(unexpected(format!(
                        "the upload session asked for byte {next} after the range {}-{} of {size}",
                        range.start, range.end
                    ))));
                }
            }
        }
        Err(PutFailure::Fatal(unexpected(format!(
            "all {size} bytes were uploaded but the session never answered 201"
        ))))
    }

    /// One chunk, sent again after a retryable failure, at most [`CHUNK_RETRIES`] times.
    async fn put_with_retries(
        &self,
        upload_url: &str,
        range: &std::ops::Range<usize>,
        size: usize,
        chunk: Bytes,
    ) -> Result<Put, PutFailure> {
        let mut failures = 0;
        loop {
            match self.put(upload_url, range, size, chunk.clone()).await {
                Err(PutFailure::Retry { error, wait }) if failures < CHUNK_RETRIES => {
                    failures += 1;
                    self.stats.chunk_retried();
                    let wait = wait
                        .unwrap_or(Duration::from_secs(1 << (failures - 1)))
                        .min(MAX_CHUNK_WAIT);
                    warn!(%error, ?wait, start = range.start, "upload chunk failed; sending it again");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// PUTs one chunk to a pre-authenticated upload URL (an Authorization header is refused).
    async fn put(
        &self,
        upload_url: &str,
        range: &std::ops::Range<usize>,
        size: usize,
        chunk: Bytes,
    ) -> Result<Put, PutFailure> {
        let request = self
            .http
            .put(upload_url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, content_range(range, size))
            .body(chunk)
            .timeout(REQUEST_TIMEOUT);
        let started = Instant::now();
        let result = request.send().await;
        self.stats.observe(started.elapsed());
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                // Without the URL: it carries the session's own access token.
                let message = describe(&e.without_url());
                return Err(PutFailure::Retry {
                    error: LastError {
                        status: None,
                        code: "NetworkError".into(),
                        message,
                    },
                    wait: None,
                });
            }
        };
        let status = response.status().as_u16();
        match status {
            201 => return Ok(Put::Done),
            200 => {
                let value: Value = response.json().await.unwrap_or_default();
                return Ok(Put::Next(next_expected(&value).unwrap_or(range.end)));
            }
            _ => {}
        }
        let wait = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let error = graph_error(status, &body);
        Err(if status == 429 || status == 408 || status >= 500 {
            PutFailure::Retry { error, wait }
        } else {
            // 404/401: the session expired or its URL token did; anything else (a range the
            // session no longer expects after a lost answer) is also settled by a new session.
            PutFailure::SessionGone(error)
        })
    }

    /// Deletes a draft after a failure; a failure to do so is logged, and the draft stays
    /// recorded, so the next attempt deletes it.
    async fn discard_draft(&self, d: &Delivery<'_>, id: &str, token: &AccessToken) {
        match self.delete_draft(d, id, token).await {
            Ok(()) => debug!("deleted the unsent draft"),
            Err(e) => {
                warn!(error = %e.into_delivery(), "could not delete the unsent draft; the next attempt will")
            }
        }
    }

    /// DELETE the draft (404: already gone) and forget it.
    async fn delete_draft(
        &self,
        d: &Delivery<'_>,
        id: &str,
        token: &AccessToken,
    ) -> Result<(), Failure> {
        let request = self.http.delete(self.draft_url(d, id, ""));
        match self.send(request, token, 204).await {
            Ok(_) => {}
            Err(Failure::Status { error, .. }) if error.status == Some(404) => {}
            Err(e) => return Err(e),
        }
        self.note(d, None).await
    }

    fn post_json(&self, url: String, body: &JsonBody) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.bytes())
    }

    fn draft_url(&self, d: &Delivery<'_>, id: &str, rest: &str) -> String {
        format!(
            "{}{}/messages/{id}{rest}",
            self.graph_url,
            d.plan.mailbox.path()
        )
    }

    fn url(&self, path: &str, message_id: &str) -> String {
        let path = path.replace(MESSAGE_ID, message_id);
        if path.starts_with("http") {
            path
        } else {
            format!("{}{path}", self.graph_url)
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: &AccessToken,
        expect: u16,
    ) -> Result<reqwest::Response, Failure> {
        let request = request
            .header(AUTHORIZATION, format!("Bearer {}", token.value))
            .header(IMMUTABLE_ID.0, IMMUTABLE_ID.1);
        let started = Instant::now();
        let result = request.timeout(REQUEST_TIMEOUT).send().await;
        self.stats.observe(started.elapsed());
        let response = result.map_err(|e| Failure::Network(describe(&e.without_url())))?;
        let status = response.status().as_u16();
        // 200 where 202 was promised has been seen for oversized MIME: treat it as a failure.
        if status == expect {
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
    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        self.run(delivery).await
    }
}

/// What an earlier attempt's draft turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Sent (before, or just now): the part is delivered.
    Sent,
    /// Deleted unsent: start again.
    Gone,
}

/// A PUT the session took.
enum Put {
    /// More to come, from this byte (`nextExpectedRanges`).
    Next(usize),
    /// The last byte arrived: the attachment is on the draft.
    Done,
}

enum PutFailure {
    /// Worth sending the same chunk again.
    Retry {
        error: LastError,
        wait: Option<Duration>,
    },
    /// The upload URL no longer takes this session's chunks.
    SessionGone(LastError),
    /// Neither: the attempt fails.
    Fatal(Failure),
}

impl PutFailure {
    /// What is left once retries and new sessions did not help.
    fn into_failure(self) -> Failure {
        match self {
            PutFailure::Retry { error, .. } if error.status.is_none() => {
                Failure::Network(error.message)
            }
            PutFailure::Retry { error, wait } => Failure::Status {
                error,
                retry_after: wait,
            },
            PutFailure::SessionGone(error) => Failure::Status {
                error,
                retry_after: None,
            },
            PutFailure::Fatal(failure) => failure,
        }
    }
}

/// Reads one chunk off the runtime; the reader is handed to the blocking task and back.
async fn read_chunk(
    reader: &mut Option<AttachmentReader>,
    range: std::ops::Range<usize>,
) -> Result<Bytes, Failure> {
    let mut owned = reader.take().expect("the reader is always handed back");
    let (owned, result) = tokio::task::spawn_blocking(move || {
        let result = owned.read(range);
        (owned, result)
    })
    .await
    .map_err(|e| Failure::Network(format!("reading the spool failed: {e}")))?;
    *reader = Some(owned);
    result.map_err(|e| match e {
        SourceError::Io { .. } => Failure::Local {
            code: "SpoolReadFailed",
            message: e.to_string(),
            permanent: false,
        },
        SourceError::Corrupt { .. } => Failure::Local {
            code: "SpoolCorrupt",
            message: e.to_string(),
            permanent: true,
        },
    })
}

/// The first number of `nextExpectedRanges` ("3276800", or "3276800-" elsewhere in Graph).
fn next_expected(value: &Value) -> Option<usize> {
    let ranges = value
        .get("nextExpectedRanges")
        .or_else(|| value.get("NextExpectedRanges"))?;
    let first = ranges.as_array()?.first()?.as_str()?;
    first.split('-').next()?.trim().parse().ok()
}

fn unexpected(message: String) -> Failure {
    Failure::Status {
        error: LastError {
            status: None,
            code: "UnexpectedResponse".into(),
            message,
        },
        retry_after: None,
    }
}

fn unreadable(e: reqwest::Error) -> Failure {
    Failure::Network(format!(
        "unreadable Graph response: {}",
        describe(&e.without_url())
    ))
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
    /// Our side: the spool could not be read or written.
    Local {
        code: &'static str,
        message: String,
        permanent: bool,
    },
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

    /// Graph answered, and its answer means the request was not carried out.
    fn proves_unsent(&self) -> bool {
        match self {
            Failure::Unauthorized(_) | Failure::DraftDenied(_) => true,
            Failure::Status { error, .. } => {
                matches!(error.status, Some(s) if (400..500).contains(&s) && s != 408 && s != 429)
            }
            Failure::Network(_) | Failure::Local { .. } => false,
        }
    }

    fn into_delivery(self) -> DeliveryError {
        match self {
            Failure::Local {
                code,
                message,
                permanent,
            } => {
                let error = LastError {
                    status: None,
                    code: code.into(),
                    message,
                };
                if permanent {
                    DeliveryError::Permanent(error)
                } else {
                    DeliveryError::Transient {
                        error,
                        retry_after: None,
                    }
                }
            }
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
    let value: Value = response.json().await.map_err(unreadable)?;
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
        let next = |status, code| match classify(error(status, code), None) {
            DeliveryError::Transient { .. } => "retry",
            DeliveryError::Permanent(_) => "fail",
            DeliveryError::Reauth(_) => "hold",
            DeliveryError::Missing(_) => "missing",
        };
        for (status, code, want) in [
            (429, "TooManyRequests", "retry"),
            (503, "serviceNotAvailable", "retry"),
            (504, "x", "retry"),
            (400, "ErrorInvalidRecipients", "fail"),
            (403, "ErrorSendAsDenied", "fail"),
            (413, "x", "fail"),
            (403, "ErrorAccessDenied", "hold"),
        ] {
            assert_eq!(next(status, code), want, "{status} {code}");
        }
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
