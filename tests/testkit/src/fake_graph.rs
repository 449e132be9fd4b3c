//! A fake Microsoft identity platform (v2.0 token + device code endpoints) and Microsoft Graph
//! mail API (sendMail, drafts, attachments, upload sessions) on 127.0.0.1, for integration tests.
//! It must reject what the real services reject, with their status codes and error bodies, so a
//! relay bug fails a test; it must never accept something Graph would refuse.
//!
//! ```ignore
//! let ms = FakeMicrosoft::start().await;
//! // relay config: authority = ms.authority(), graph_url = ms.graph_url(),
//! //               tenant = ms.tenant(), client_id = ms.client_id(), client_secret = ms.client_secret()
//! let sent = ms.wait_for_sent(1, Duration::from_secs(10)).await;
//! assert_eq!(sent[0].subject().as_deref(), Some("hello"));
//! ```
//!
//! Everything the fake does is recorded ([`FakeMicrosoft::requests`]) and a timed-out wait panics
//! with that log, so a failing test shows what the relay actually sent.

#![allow(clippy::result_large_err)]

mod graph;
mod identity;
pub mod util;
mod validate;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, oneshot};

/// Graph's request body cap: 4 MB, taken as 4 × 2^20 bytes.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Attachments of this size or more must go through an upload session (and smaller ones must not).
/// Microsoft says "3 MB". Read as 3 MiB it would leave a gap no request can cross: an attachment
/// just under 3 MiB is refused by the session and, base64-encoded, does not fit a 4 MiB POST.
/// The only reading under which Microsoft's two rules fit together is 3,000,000 bytes.
pub const UPLOAD_SESSION_MIN_BYTES: u64 = 3_000_000;
/// Largest attachment an upload session accepts.
pub const UPLOAD_SESSION_MAX_BYTES: u64 = 150 * 1024 * 1024;
/// Largest PUT chunk to an upload URL.
pub const MAX_UPLOAD_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Graph's per-mailbox concurrency limit.
pub const MAILBOX_CONCURRENCY: usize = 4;
/// Exchange Online's recipients-per-message limit.
pub const MAX_RECIPIENTS: usize = 500;

pub const DEFAULT_TENANT: &str = "7f3c1a9e-4b2d-4e8f-9a61-0c5d2b8e4f10";
pub const DEFAULT_CLIENT_ID: &str = "3fa2b9c1-6d4e-4a7b-8c21-9e0f5d6a7b38";
pub const DEFAULT_CLIENT_SECRET: &str = "Fq8Q~fake.Secret_Value-0123456789abcdefABCD";
pub const DEFAULT_SENDER: &str = "relay@contoso.test";
pub const DEFAULT_DELEGATED_USER: &str = "relay@contoso.test";
pub const DEVICE_VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";

/// How the fake identity platform and Graph are set up. `Default` is a working tenant with one
/// confidential app that has `Mail.Send` and `Mail.ReadWrite` application permissions.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of issued access tokens (whole seconds are reported; real: 3599).
    pub token_lifetime: Duration,
    /// The signed-in user of delegated (device code) tokens; `/me` is this mailbox.
    pub delegated_user: String,
    /// When set, only these mailboxes exist (others → 404 ErrorInvalidUser).
    pub mailboxes: Option<Vec<String>>,
    /// Application permissions granted to the app (client credentials tokens).
    pub app_roles: Vec<String>,
    /// `interval` returned by the device code endpoint (real: 5).
    pub device_code_interval: u64,
    /// `expires_in` of device codes (real: 900 s).
    pub device_code_lifetime: Duration,
    /// A 5th concurrent request to one mailbox gets `429 ApplicationThrottled`, as Graph does.
    pub enforce_mailbox_concurrency: bool,
    /// `message.from` / `message.sender` must be the mailbox (or allowed via `allow_send_as`),
    /// else `403 ErrorSendAsDenied`.
    pub check_send_as: bool,
    /// Delegated permissions the user consents to when asked (device code login).
    pub delegated_consentable: Vec<String>,
    /// Upload URLs expire after this long.
    pub upload_session_lifetime: Duration,
    /// Smallest attachment `createUploadSession` accepts, and the size from which a single POST
    /// of an attachment is refused (see [`UPLOAD_SESSION_MIN_BYTES`] for why 3,000,000).
    pub upload_session_min_bytes: u64,
    /// Largest total message (draft path) Exchange accepts (tenant default 35 MB).
    pub max_message_bytes: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            tenant: DEFAULT_TENANT.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            token_lifetime: Duration::from_secs(3599),
            delegated_user: DEFAULT_DELEGATED_USER.into(),
            mailboxes: None,
            app_roles: vec!["Mail.Send".into(), "Mail.ReadWrite".into()],
            device_code_interval: 1,
            device_code_lifetime: Duration::from_secs(900),
            enforce_mailbox_concurrency: true,
            check_send_as: true,
            delegated_consentable: vec![
                "Mail.Send".into(),
                "Mail.ReadWrite".into(),
                "Mail.Send.Shared".into(),
                "User.Read".into(),
            ],
            upload_session_lifetime: Duration::from_secs(2 * 3600),
            upload_session_min_bytes: UPLOAD_SESSION_MIN_BYTES,
            max_message_bytes: 35 * 1024 * 1024,
        }
    }
}

/// A scripted failure of the token endpoint. Applies to every grant type while active.
#[derive(Clone, Debug)]
pub enum TokenFailure {
    /// 401 `invalid_client`, AADSTS7000215 (wrong secret).
    InvalidSecret,
    /// 401 `invalid_client`, AADSTS7000222 (client secret expired).
    SecretExpired,
    /// 400 `invalid_grant` + suberror `consent_required`, AADSTS65001.
    ConsentRevoked,
    /// 400 `invalid_grant`, AADSTS700082 (refresh token expired/revoked).
    RefreshTokenRevoked,
    /// 400 `invalid_grant`, AADSTS50173 (grant revoked, e.g. password reset).
    GrantRevoked,
    /// 400 `interaction_required`, AADSTS50076 (MFA now required).
    InteractionRequired,
    /// 503 `temporarily_unavailable`, AADSTS90024.
    TemporarilyUnavailable,
    /// That status with a `server_error` body, AADSTS50000.
    ServerError(u16),
    /// 429 with `Retry-After` (seconds).
    Throttled { retry_after: u64 },
    /// Anything else.
    Custom {
        status: u16,
        error: String,
        code: u32,
        description: String,
        suberror: Option<String>,
    },
}

/// Which endpoint a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Token,
    DeviceCode,
    SendMail,
    CreateMessage,
    AddAttachment,
    CreateUploadSession,
    UploadChunk,
    CancelUpload,
    /// `DELETE .../messages/{id}` (discarding an unsent draft).
    DeleteMessage,
    /// `GET .../messages/{id}` (is a draft still a draft?).
    GetMessage,
    SendDraft,
    Other,
}

impl Route {
    /// Routes on graph.microsoft.com (upload PUTs go to outlook.office.com in reality).
    pub fn is_graph(self) -> bool {
        matches!(
            self,
            Route::SendMail
                | Route::CreateMessage
                | Route::AddAttachment
                | Route::CreateUploadSession
                | Route::SendDraft
                | Route::DeleteMessage
                | Route::GetMessage
        )
    }
}

/// Selects which requests a scripted response answers.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub route: Option<Route>,
    /// Case-insensitive mailbox (from the URL, or the delegated user for `/me`).
    pub mailbox: Option<String>,
}

impl Matcher {
    pub fn any() -> Self {
        Matcher {
            route: None,
            mailbox: None,
        }
    }
    pub fn route(route: Route) -> Self {
        Matcher {
            route: Some(route),
            mailbox: None,
        }
    }
    pub fn mailbox(mut self, mailbox: &str) -> Self {
        self.mailbox = Some(mailbox.to_string());
        self
    }
    fn matches(&self, route: Route, mailbox: Option<&str>) -> bool {
        self.route.is_none_or(|r| r == route)
            && self
                .mailbox
                .as_deref()
                .is_none_or(|m| mailbox.is_some_and(|mb| mb.eq_ignore_ascii_case(m)))
    }
}

impl From<Route> for Matcher {
    fn from(route: Route) -> Self {
        Matcher::route(route)
    }
}

/// A canned HTTP response. On Graph routes it is served after the bearer token was accepted
/// (as Graph authenticates first) and before the body is validated.
#[derive(Clone, Debug)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ScriptedResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> Self {
        ScriptedResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }
    /// A Graph error body `{"error":{"code","message","innerError"}}`.
    pub fn graph_error(status: u16, code: &str, message: &str) -> Self {
        let body = graph_error_body(code, message, &util::guid()).to_string();
        ScriptedResponse::new(status, &[("content-type", "application/json")], body)
    }
    /// 429 TooManyRequests with `Retry-After` (may be fractional, e.g. "2.128").
    pub fn throttled(retry_after: &str) -> Self {
        let mut r =
            ScriptedResponse::graph_error(429, "TooManyRequests", "Please retry again later.");
        r.headers.push(("retry-after".into(), retry_after.into()));
        r
    }
    /// 503 serviceNotAvailable, with `Retry-After` when given.
    pub fn unavailable(retry_after: Option<&str>) -> Self {
        let mut r = ScriptedResponse::graph_error(
            503,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Please retry after a delay.",
        );
        if let Some(ra) = retry_after {
            r.headers.push(("retry-after".into(), ra.into()));
        }
        r
    }
    /// 400 ErrorInvalidRecipients, as Graph says it for an unresolvable recipient.
    pub fn invalid_recipients(address: &str) -> Self {
        ScriptedResponse::graph_error(
            400,
            "ErrorInvalidRecipients",
            &format!(
                "At least one recipient isn't valid., Recipient '{address}' isn't resolved. All recipients must be resolved before a message can be submitted."
            ),
        )
    }
    /// 403 ErrorSendAsDenied with Graph's message.
    pub fn send_as_denied() -> Self {
        ScriptedResponse::graph_error(403, "ErrorSendAsDenied", SEND_AS_DENIED_MESSAGE)
    }
    /// 401 InvalidAuthenticationToken with the `WWW-Authenticate` header, as for an expired token.
    pub fn unauthorized() -> Self {
        let mut r =
            ScriptedResponse::graph_error(401, "InvalidAuthenticationToken", TOKEN_EXPIRED_MESSAGE);
        r.headers
            .push(("www-authenticate".into(), WWW_AUTHENTICATE.into()));
        r
    }
}

pub const SEND_AS_DENIED_MESSAGE: &str = "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.";
pub const TOKEN_EXPIRED_MESSAGE: &str = "Access token has expired or is not yet valid.";
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";
pub const HEADER_COLLECTION_MESSAGE: &str =
    "Maximum number of headers in one message should be less than or equal to 5.";

/// How an accepted message reached the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendPath {
    /// `POST .../sendMail` with `application/json`.
    SendMailJson,
    /// `POST .../sendMail` with `text/plain` base64 MIME.
    SendMailMime,
    /// `POST .../messages` (+ attachments / upload sessions) + `POST .../messages/{id}/send`.
    Draft,
}

/// One message Graph accepted (202) for sending.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The mailbox it was sent from: the `{upn}` in the URL, or the delegated user for `/me`.
    pub mailbox: String,
    pub path: SendPath,
    /// JSON modes: the request body (`{"message":{...},"saveToSentItems":..}`); for the draft path
    /// `{"message":{...}}` with every attachment (inline, POSTed, uploaded) in
    /// `message.attachments`, with `contentBytes`.
    pub json: Option<Value>,
    /// MIME modes: the decoded RFC 5322 bytes.
    pub mime: Option<Vec<u8>>,
    /// Draft path: the Graph id of the draft.
    pub draft_id: Option<String>,
    /// `true` when a delegated (`/me` or device code) token was used.
    pub delegated: bool,
    pub at: SystemTime,
}

/// An attachment of a sent message, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentAttachment {
    pub name: String,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
    pub is_inline: bool,
    pub content_id: Option<String>,
}

impl SentMessage {
    /// `json.message` (panics for MIME sends).
    pub fn message(&self) -> &Value {
        &self
            .json
            .as_ref()
            .unwrap_or_else(|| panic!("message was sent as MIME, not JSON: {self:?}"))["message"]
    }

    fn parsed_mime(&self) -> Option<mail_parser::Message<'_>> {
        self.mime
            .as_deref()
            .and_then(|m| mail_parser::MessageParser::default().parse(m))
    }

    pub fn subject(&self) -> Option<String> {
        if let Some(m) = self.parsed_mime() {
            return m.subject().map(str::to_string);
        }
        validate::get_ci(self.message(), "subject")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn recipients(&self, json_name: &str) -> Vec<String> {
        if let Some(m) = self.parsed_mime() {
            let a = match json_name {
                "toRecipients" => m.to(),
                "ccRecipients" => m.cc(),
                "bccRecipients" => m.bcc(),
                "replyTo" => m.reply_to(),
                _ => None,
            };
            return a
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.address().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
        }
        validate::recipient_addresses(self.message(), json_name)
    }

    /// Addresses in `toRecipients` (or the MIME `To:`), in order.
    pub fn to(&self) -> Vec<String> {
        self.recipients("toRecipients")
    }
    pub fn cc(&self) -> Vec<String> {
        self.recipients("ccRecipients")
    }
    pub fn bcc(&self) -> Vec<String> {
        self.recipients("bccRecipients")
    }
    pub fn reply_to(&self) -> Vec<String> {
        self.recipients("replyTo")
    }
    /// Every recipient (to + cc + bcc), lower-cased and sorted.
    pub fn all_recipients(&self) -> Vec<String> {
        let mut v: Vec<String> = [self.to(), self.cc(), self.bcc()]
            .concat()
            .into_iter()
            .map(|a| a.to_lowercase())
            .collect();
        v.sort();
        v
    }

    /// `message.from.emailAddress.address` (or the MIME `From:`).
    pub fn from(&self) -> Option<String> {
        if let Some(m) = self.parsed_mime() {
            return m
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string);
        }
        validate::get_ci(self.message(), "from")
            .and_then(|f| validate::get_ci(f, "emailAddress"))
            .and_then(|e| validate::get_ci(e, "address"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// (`contentType` lower-cased, `content`) of the JSON body.
    pub fn body(&self) -> Option<(String, String)> {
        if let Some(m) = self.parsed_mime() {
            if let Some(h) = m.body_html(0) {
                return Some(("html".into(), h.into_owned()));
            }
            return m.body_text(0).map(|t| ("text".into(), t.into_owned()));
        }
        let b = validate::get_ci(self.message(), "body")?;
        Some((
            validate::get_ci(b, "contentType")
                .and_then(Value::as_str)
                .unwrap_or("text")
                .to_lowercase(),
            validate::get_ci(b, "content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    }

    /// `internetMessageHeaders` as (name, value).
    pub fn headers(&self) -> Vec<(String, String)> {
        validate::get_ci(self.message(), "internetMessageHeaders")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|h| {
                        let g = |k| {
                            validate::get_ci(h, k)
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string()
                        };
                        (g("name"), g("value"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn save_to_sent_items(&self) -> Option<bool> {
        self.json
            .as_ref()
            .and_then(|j| validate::get_ci(j, "saveToSentItems"))
            .and_then(Value::as_bool)
    }

    /// Decoded attachments (JSON: `message.attachments`; MIME: the parsed attachment parts).
    pub fn attachments(&self) -> Vec<SentAttachment> {
        if let Some(m) = self.parsed_mime() {
            use mail_parser::MimeHeaders;
            return m
                .attachments()
                .map(|p| SentAttachment {
                    name: p.attachment_name().unwrap_or("").to_string(),
                    content_type: p.content_type().map(|c| match c.subtype() {
                        Some(s) => format!("{}/{}", c.ctype(), s),
                        None => c.ctype().to_string(),
                    }),
                    bytes: p.contents().to_vec(),
                    is_inline: p.content_id().is_some(),
                    content_id: p.content_id().map(str::to_string),
                })
                .collect();
        }
        validate::get_ci(self.message(), "attachments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|att| {
                        let s = |k| {
                            validate::get_ci(att, k)
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        };
                        SentAttachment {
                            name: s("name").unwrap_or_default(),
                            content_type: s("contentType"),
                            bytes: STANDARD
                                .decode(s("contentBytes").unwrap_or_default())
                                .expect("contentBytes was validated"),
                            is_inline: validate::get_ci(att, "isInline")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            content_id: s("contentId"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One request the fake received, and what it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub seq: usize,
    pub method: String,
    /// Percent-decoded path, plus `?query` when present.
    pub path: String,
    pub route: Route,
    pub mailbox: Option<String>,
    /// 0 while the request is still being answered.
    pub status: u16,
    /// Graph `error.code` or token endpoint `error` of the answer.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub content_range: Option<String>,
    pub body_len: usize,
    /// Token/devicecode requests: the form fields (secrets included; this is a test fake).
    pub form: Vec<(String, String)>,
    /// Whether a scripted response answered it.
    pub scripted: bool,
    pub at: Instant,
}

impl RecordedRequest {
    pub fn form_value(&self, key: &str) -> Option<&str> {
        util::form_get(&self.form, key)
    }
}

/// A device code the fake handed out.
#[derive(Clone, Debug)]
pub struct DeviceCodeInfo {
    pub device_code: String,
    pub user_code: String,
    pub state: DeviceCodeState,
    pub scope: String,
    /// Times the relay polled the token endpoint with this code.
    pub polls: usize,
    /// Polls that came sooner than `interval` after the previous one (RFC 8628 says wait).
    pub too_fast_polls: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceCodeState {
    Pending,
    Approved,
    Declined,
    Expired,
    Redeemed,
}

/// A chunk PUT to an upload URL, as the session took it: the range it kept (all of the PUT,
/// unless told to keep part).
#[derive(Clone, Debug)]
pub struct UploadChunk {
    pub session: String,
    pub start: u64,
    pub end: u64,
    pub total: u64,
    pub len: usize,
}

// ---------------------------------------------------------------------------------------------
// Internal state

#[derive(Clone, Debug)]
struct AccessToken {
    delegated: bool,
    /// App roles (client credentials) or delegated scopes (short names, e.g. `Mail.Send`).
    permissions: Vec<String>,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Clone, Debug)]
struct RefreshToken {
    client_id: String,
    scopes: Vec<String>,
    revoked: bool,
    /// A newer refresh token was issued from this one (rotation).
    superseded: bool,
}

#[derive(Clone, Debug)]
struct DeviceCode {
    info: DeviceCodeInfo,
    client_id: String,
    scopes: Vec<String>,
    expires_at: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
}

#[derive(Clone, Debug)]
struct StoredAttachment {
    /// The fileAttachment JSON without `contentBytes`.
    meta: Value,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Draft {
    mailbox: String,
    delegated: bool,
    /// The message JSON as created, without `attachments`.
    message: Value,
    mime: Option<Vec<u8>>,
    attachments: Vec<StoredAttachment>,
    /// Created with `Prefer: IdType="ImmutableId"`: the id stays valid once it is sent.
    immutable_id: bool,
}

#[derive(Clone, Debug)]
struct UploadSession {
    mailbox: String,
    message_id: String,
    authtoken: String,
    name: String,
    size: u64,
    content_type: Option<String>,
    is_inline: bool,
    content_id: Option<String>,
    received: Vec<u8>,
    expires_at: SystemTime,
    /// Expires once this many chunks arrived (scripted with `expire_upload_sessions`).
    expires_after_chunks: Option<usize>,
    chunks_received: usize,
}

struct St {
    cfg: FakeConfig,
    access_tokens: HashMap<String, AccessToken>,
    refresh_tokens: HashMap<String, RefreshToken>,
    device_codes: Vec<DeviceCode>,
    device_auto_approve: bool,
    token_failure: Option<TokenFailure>,
    token_failures_once: VecDeque<TokenFailure>,
    stale_refresh_uses: usize,
    client_certificate_pem: Option<String>,
    scripted: Vec<(Matcher, ScriptedResponse)>,
    delay: Duration,
    sent: Vec<SentMessage>,
    drafts: HashMap<String, Draft>,
    /// Immutable ids of sent drafts, with their mailbox: they still answer GET.
    sent_drafts: HashMap<String, String>,
    sessions: HashMap<String, UploadSession>,
    /// For each of the next upload sessions created: the chunk count after which it expires.
    expiring_sessions: VecDeque<usize>,
    /// Routes whose next request is carried out but answered 504 (the answer "got lost").
    lost_replies: Vec<Route>,
    /// Upload chunks still to be kept only in part (the first half), as a server may.
    partial_chunks: usize,
    chunks: Vec<UploadChunk>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
    requests: Vec<RecordedRequest>,
    send_as: Vec<(String, String)>,
}

struct Shared {
    base_url: String,
    st: Mutex<St>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn changed(&self) {
        self.notify.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------
// Public handle

/// The running fake. Dropping it stops the server.
pub struct FakeMicrosoft {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeMicrosoft {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl FakeMicrosoft {
    /// Starts with [`FakeConfig::default`] on 127.0.0.1 and a free port.
    pub async fn start() -> Self {
        Self::start_with(FakeConfig::default()).await
    }

    pub async fn start_with(cfg: FakeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Microsoft server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            st: Mutex::new(St {
                cfg,
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                device_codes: Vec::new(),
                device_auto_approve: false,
                token_failure: None,
                token_failures_once: VecDeque::new(),
                stale_refresh_uses: 0,
                client_certificate_pem: None,
                scripted: Vec::new(),
                delay: Duration::ZERO,
                sent: Vec::new(),
                drafts: HashMap::new(),
                sent_drafts: HashMap::new(),
                sessions: HashMap::new(),
                expiring_sessions: VecDeque::new(),
                lost_replies: Vec::new(),
                partial_chunks: 0,
                chunks: Vec::new(),
                in_flight: HashMap::new(),
                max_in_flight: HashMap::new(),
                requests: Vec::new(),
                send_as: Vec::new(),
            }),
            notify: Notify::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeMicrosoft {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    // --- addresses and credentials -------------------------------------------------------

    /// `http://127.0.0.1:PORT`: the relay's `microsoft.authority`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn authority(&self) -> String {
        self.base_url()
    }
    /// `http://127.0.0.1:PORT/v1.0`: the relay's `microsoft.graph_url`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base_url())
    }
    /// The client credentials scope the fake accepts: `http://127.0.0.1:PORT/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.base_url())
    }
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.base_url(), self.tenant())
    }
    pub fn device_code_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/devicecode",
            self.base_url(),
            self.tenant()
        )
    }
    pub fn tenant(&self) -> String {
        self.shared.lock().cfg.tenant.clone()
    }
    pub fn client_id(&self) -> String {
        self.shared.lock().cfg.client_id.clone()
    }
    pub fn client_secret(&self) -> String {
        self.shared.lock().cfg.client_secret.clone()
    }
    pub fn delegated_user(&self) -> String {
        self.shared.lock().cfg.delegated_user.clone()
    }

    /// A `[microsoft]` TOML section for a client-credentials relay pointed at this fake.
    pub fn relay_toml_client_credentials(&self, sender: &str) -> String {
        format!(
            "[microsoft]\nauthority = \"{}\"\ngraph_url = \"{}\"\ntenant = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nsender = \"{}\"\n",
            self.authority(),
            self.graph_url(),
            self.tenant(),
            self.client_id(),
            self.client_secret(),
            sender
        )
    }

    // --- identity controls ---------------------------------------------------------------

    /// Lifetime of access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().cfg.token_lifetime = lifetime;
    }
    /// Every token request fails this way until cleared with `None`.
    pub fn set_token_failure(&self, failure: Option<TokenFailure>) {
        self.shared.lock().token_failure = failure;
    }
    /// The next `n` token requests fail this way (before any `set_token_failure`).
    pub fn fail_next_token_requests(&self, n: usize, failure: TokenFailure) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.token_failures_once.push_back(failure.clone());
        }
    }
    /// Rotates the app's secret: the old one now gets AADSTS7000215.
    pub fn set_client_secret(&self, secret: &str) {
        self.shared.lock().cfg.client_secret = secret.to_string();
    }
    /// Expects certificate credentials: assertions must carry `x5t#S256` of this certificate and
    /// (when `openssl` is installed) a valid PS256/RS256 signature by its key.
    pub fn set_client_certificate_pem(&self, cert_pem: &str) {
        self.shared.lock().client_certificate_pem = Some(cert_pem.to_string());
    }
    /// Graph answers 401 to every access token issued so far.
    pub fn revoke_all_tokens(&self) {
        for t in self.shared.lock().access_tokens.values_mut() {
            t.revoked = true;
        }
    }
    /// Every refresh token issued so far now gets AADSTS700082.
    pub fn revoke_refresh_tokens(&self) {
        for t in self.shared.lock().refresh_tokens.values_mut() {
            t.revoked = true;
        }
    }
    /// Makes every access token issued so far expired.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for t in self.shared.lock().access_tokens.values_mut() {
            t.expires_at = now;
        }
    }
    /// Issues an application token as if by client credentials (no request recorded).
    pub fn mint_app_token(&self) -> String {
        let mut st = self.shared.lock();
        let roles = st.cfg.app_roles.clone();
        identity::issue_access(&mut st, &self.shared.base_url, false, roles)
    }
    /// Issues a delegated access token for `delegated_user` with these scopes (short names).
    pub fn mint_delegated_token(&self, scopes: &[&str]) -> String {
        let mut st = self.shared.lock();
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        identity::issue_access(&mut st, &self.shared.base_url, true, scopes)
    }
    /// Token endpoint requests so far (any grant, any outcome).
    pub fn token_requests(&self) -> usize {
        self.request_count(Route::Token)
    }
    /// Token endpoint requests with this `grant_type`.
    pub fn token_requests_for(&self, grant_type: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route == Route::Token && r.form_value("grant_type") == Some(grant_type))
            .count()
    }
    /// Access tokens issued so far.
    pub fn issued_tokens(&self) -> usize {
        self.shared.lock().access_tokens.len()
    }
    /// Refresh grants that used a refresh token which had already been rotated away.
    pub fn stale_refresh_token_uses(&self) -> usize {
        self.shared.lock().stale_refresh_uses
    }

    // --- device code ----------------------------------------------------------------------

    pub fn device_codes(&self) -> Vec<DeviceCodeInfo> {
        self.shared
            .lock()
            .device_codes
            .iter()
            .map(|d| d.info.clone())
            .collect()
    }
    /// Approves every pending device code (as if the user signed in); returns how many.
    pub fn approve_device_code(&self) -> usize {
        self.set_pending_device_codes(DeviceCodeState::Approved)
    }
    /// The user declines every pending code.
    pub fn decline_device_code(&self) -> usize {
        self.set_pending_device_codes(DeviceCodeState::Declined)
    }
    /// Every pending code expires now.
    pub fn expire_device_code(&self) -> usize {
        self.set_pending_device_codes(DeviceCodeState::Expired)
    }
    /// Device codes issued from now on are approved as soon as they are polled.
    pub fn set_device_code_auto_approve(&self, on: bool) {
        self.shared.lock().device_auto_approve = on;
    }
    fn set_pending_device_codes(&self, to: DeviceCodeState) -> usize {
        let mut st = self.shared.lock();
        let mut n = 0;
        for d in st.device_codes.iter_mut() {
            if d.info.state == DeviceCodeState::Pending {
                d.info.state = to;
                n += 1;
            }
        }
        n
    }
    /// Waits for a device code to be requested; returns the newest.
    pub async fn wait_for_device_code(&self, timeout: Duration) -> DeviceCodeInfo {
        self.wait_until("a device code request", timeout, |st| {
            st.device_codes.last().map(|d| d.info.clone())
        })
        .await
    }

    // --- Graph controls ---------------------------------------------------------------------

    /// Queues a canned answer for the next request that `matcher` selects (FIFO per match).
    pub fn push_response(&self, matcher: impl Into<Matcher>, response: ScriptedResponse) {
        self.shared.lock().scripted.push((matcher.into(), response));
    }
    /// The next `n` sendMail requests (any mailbox) get this answer.
    pub fn fail_next_sends(&self, n: usize, status: u16, headers: &[(&str, &str)], body: &str) {
        for _ in 0..n {
            self.push_response(
                Route::SendMail,
                ScriptedResponse::new(status, headers, body),
            );
        }
    }
    /// Holds every Graph answer (and upload PUT) this long, while counting it in flight.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }
    /// Lets `mailbox` send with `from`/`sender` = `address` (Send As permission).
    pub fn allow_send_as(&self, mailbox: &str, address: &str) {
        self.shared
            .lock()
            .send_as
            .push((mailbox.to_lowercase(), address.to_lowercase()));
    }
    pub fn set_enforce_mailbox_concurrency(&self, on: bool) {
        self.shared.lock().cfg.enforce_mailbox_concurrency = on;
    }

    // --- observations ----------------------------------------------------------------------

    /// Every message accepted for sending, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.lock().sent.clone()
    }
    /// Waits until at least `n` messages were accepted; returns all of them. Panics on timeout
    /// with the request log.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> Vec<SentMessage> {
        self.wait_until(&format!("{n} sent message(s)"), timeout, |st| {
            (st.sent.len() >= n).then(|| st.sent.clone())
        })
        .await
    }
    /// Waits until at least `n` requests hit `route` and were answered.
    pub async fn wait_for_requests(
        &self,
        route: Route,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        self.wait_until(
            &format!("{n} answered {route:?} request(s)"),
            timeout,
            |st| {
                let v: Vec<_> = st
                    .requests
                    .iter()
                    .filter(|r| r.route == route && r.status != 0)
                    .cloned()
                    .collect();
                (v.len() >= n).then_some(v)
            },
        )
        .await
    }
    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }
    pub fn request_count(&self, route: Route) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }
    /// Requests whose decoded path (without query) equals `path`, e.g. `/v1.0/users/a@b/sendMail`.
    pub fn request_count_for_path(&self, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .count()
    }
    /// Requests the fake answered with 4xx/5xx (scripted ones included).
    pub fn rejected(&self) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.status >= 400)
            .cloned()
            .collect()
    }
    /// Highest number of concurrent requests seen for this mailbox (including any that were
    /// refused for exceeding the limit).
    pub fn max_in_flight(&self, mailbox: &str) -> usize {
        self.shared
            .lock()
            .max_in_flight
            .get(&mailbox.to_lowercase())
            .copied()
            .unwrap_or(0)
    }
    /// Every chunk PUT to an upload URL, in order.
    pub fn upload_chunks(&self) -> Vec<UploadChunk> {
        self.shared.lock().chunks.clone()
    }
    /// Drafts created but never sent.
    pub fn unsent_drafts(&self) -> usize {
        self.shared.lock().drafts.len()
    }
    /// The next request on `route` is carried out, then answered `504 GatewayTimeout`, as when
    /// Graph did the work but its answer never reached the client.
    pub fn lose_next_reply(&self, route: Route) {
        self.shared.lock().lost_replies.push(route);
    }
    /// The next upload chunk is kept only up to half: the session answers 200 with
    /// `nextExpectedRanges` where it stopped, and the client must go on from there.
    pub fn keep_half_of_next_chunk(&self) {
        self.shared.lock().partial_chunks += 1;
    }
    /// The next `sessions` upload sessions created expire after `chunks` chunks: their upload
    /// URL then answers 404, as an expired one does.
    pub fn expire_upload_sessions(&self, sessions: usize, chunks: usize) {
        let mut st = self.shared.lock();
        st.expiring_sessions
            .extend(std::iter::repeat_n(chunks, sessions));
    }
    /// A readable log of every request and answer (used in panic messages).
    pub fn request_log(&self) -> String {
        format_log(&self.shared.lock())
    }

    async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&St) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.shared.lock()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = self.shared.lock();
                if let Some(v) = check(&st) {
                    return v;
                }
                panic!(
                    "fake Microsoft: timed out after {timeout:?} waiting for {what}; {} sent so far.\nRequests:\n{}",
                    st.sent.len(),
                    format_log(&st)
                );
            }
        }
    }
}

fn format_log(st: &St) -> String {
    let mut s = String::new();
    let start = st.requests.first().map(|r| r.at);
    for r in &st.requests {
        let _ = write!(
            s,
            "  #{} +{:.3}s {} {} -> {}",
            r.seq,
            start
                .map(|t| r.at.duration_since(t).as_secs_f64())
                .unwrap_or(0.0),
            r.method,
            r.path,
            r.status
        );
        if let Some(c) = &r.error_code {
            let _ = write!(s, " {c}");
        }
        if let Some(m) = &r.error_message {
            let _ = write!(s, ": {m}");
        }
        if r.scripted {
            s.push_str(" (scripted)");
        }
        s.push('\n');
    }
    if s.is_empty() {
        s.push_str("  (none)\n");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Request plumbing

/// A request, decoded once.
struct Req {
    method: Method,
    /// Percent-decoded path segments.
    segments: Vec<String>,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The media type of Content-Type, lower-cased, without parameters.
    fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }
}

/// An answer, plus what to record about it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    error_code: Option<String>,
    error_message: Option<String>,
    scripted: bool,
    /// The mailbox the request was for, when only the handler knows it (`/me`, upload URLs).
    mailbox: Option<String>,
}

impl Reply {
    fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            error_code: None,
            error_message: None,
            scripted: false,
            mailbox: None,
        }
    }
    fn json(status: u16, v: &Value) -> Self {
        let mut r = Reply::empty(status);
        r.headers.push((
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ));
        r.body = v.to_string().into_bytes();
        r
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    fn scripted(s: &ScriptedResponse) -> Self {
        let mut r = Reply::empty(s.status);
        r.headers = s.headers.clone();
        r.body = s.body.clone().into_bytes();
        if let Ok(v) = serde_json::from_str::<Value>(&s.body) {
            r.error_code = v["error"]["code"]
                .as_str()
                .or(v["error"].as_str())
                .map(str::to_string);
        }
        r.scripted = true;
        r
    }
}

fn graph_error_body(code: &str, message: &str, request_id: &str) -> Value {
    json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": util::graph_date(SystemTime::now()),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    })
}

/// A Graph error answer.
#[derive(Debug, Clone)]
struct GraphError {
    status: u16,
    code: String,
    message: String,
}

impl GraphError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
    fn reply(&self) -> Reply {
        let rid = util::guid();
        let mut r = Reply::json(
            self.status,
            &graph_error_body(&self.code, &self.message, &rid),
        );
        r.error_code = Some(self.code.clone());
        r.error_message = Some(self.message.clone());
        r
    }
}

fn classify(method: &Method, segs: &[String]) -> (Route, Option<String>) {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match s.as_slice() {
        [_tenant, o, v, "token"] if *o == "oauth2" && *v == "v2.0" => (Route::Token, None),
        [_tenant, o, v, "devicecode"] if *o == "oauth2" && *v == "v2.0" => {
            (Route::DeviceCode, None)
        }
        ["upload", ..] => {
            if *method == Method::DELETE {
                (Route::CancelUpload, None)
            } else {
                (Route::UploadChunk, None)
            }
        }
        [ver, rest @ ..] if *ver == "v1.0" => {
            let (mailbox, rest) = match rest {
                [u, upn, tail @ ..] if eq(u, "users") => (Some(upn.to_string()), tail),
                [me, tail @ ..] if eq(me, "me") => (None, tail),
                _ => return (Route::Other, None),
            };
            let route = match rest {
                [x] if eq(x, "sendMail") => Route::SendMail,
                [x] if eq(x, "messages") => Route::CreateMessage,
                [m, _id, a] if eq(m, "messages") && eq(a, "attachments") => Route::AddAttachment,
                [m, _id, a, c]
                    if eq(m, "messages")
                        && eq(a, "attachments")
                        && eq(c, "createUploadSession") =>
                {
                    Route::CreateUploadSession
                }
                [m, _id, x] if eq(m, "messages") && eq(x, "send") => Route::SendDraft,
                [m, _id] if eq(m, "messages") && *method == Method::DELETE => Route::DeleteMessage,
                [m, _id] if eq(m, "messages") && *method == Method::GET => Route::GetMessage,
                _ => Route::Other,
            };
            (route, mailbox)
        }
        _ => (Route::Other, None),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_path = uri.path().to_string();
    let segments: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| util::percent_decode(s, false))
        .collect();
    let req = Req {
        method: method.clone(),
        path: util::percent_decode(&raw_path, false),
        query: uri.query().unwrap_or("").to_string(),
        segments,
        headers,
        body,
    };
    let (route, mailbox) = classify(&req.method, &req.segments);
    let form = if matches!(route, Route::Token | Route::DeviceCode) {
        util::parse_form(&req.body)
    } else {
        Vec::new()
    };
    let seq = {
        let mut st = shared.lock();
        let seq = st.requests.len();
        let path = if req.query.is_empty() {
            req.path.clone()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        st.requests.push(RecordedRequest {
            seq,
            method: req.method.to_string(),
            path,
            route,
            mailbox: mailbox.clone(),
            status: 0,
            error_code: None,
            error_message: None,
            authorization: req.header("authorization").map(str::to_string),
            content_type: req.header("content-type").map(str::to_string),
            content_range: req.header("content-range").map(str::to_string),
            body_len: req.body.len(),
            form: form.clone(),
            scripted: false,
            at: Instant::now(),
        });
        seq
    };
    shared.changed();

    let reply = match route {
        Route::Token => identity::token(&shared, &req, &form),
        Route::DeviceCode => identity::devicecode(&shared, &req, &form),
        Route::Other => GraphError::new(
            404,
            "BadRequest",
            format!(
                "fake Microsoft: no endpoint for {} {}",
                req.method, req.path
            ),
        )
        .reply(),
        _ => graph::handle(&shared, &req, route, mailbox.as_deref()).await,
    };

    {
        let mut st = shared.lock();
        let rec = &mut st.requests[seq];
        rec.status = reply.status;
        rec.error_code = reply.error_code.clone();
        rec.error_message = reply.error_message.clone();
        rec.scripted = reply.scripted;
        if rec.mailbox.is_none() {
            rec.mailbox = reply.mailbox.clone();
        }
    }
    shared.changed();

    let mut resp = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            axum::http::HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}
