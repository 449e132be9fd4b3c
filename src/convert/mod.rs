//! convert: the pure step "raw MIME + envelope → Graph request plan(s)". Owns recipients, the
//! From policy, body/attachment mapping, header mapping and the size switch; never does I/O,
//! never panics on any input (NUL bytes, 8-bit headers, broken MIME, bare LF).
//!
//! One message becomes one [`GraphPlan`] per group of at most 500 envelope recipients:
//! - [`PlanRequest::SendMail`]: one JSON `POST {mailbox}/sendMail`, body < 4,000,000 bytes;
//! - [`PlanRequest::Mime`]: signed or encrypted mail, `POST {mailbox}/sendMail` with
//!   `Content-Type: text/plain` and the base64 MIME as body (header edits: see `mime.rs`);
//! - [`PlanRequest::Draft`]: larger mail: `POST {mailbox}/messages` with `message` (small
//!   attachments inline while it stays < 4,000,000 bytes), then add each of `uploads` (POST
//!   `/attachments` below 3 MB, `createUploadSession` from 3 MB), then `POST .../send`.
//!   Graph has no `saveToSentItems` for a sent draft.

pub mod base64_stream;
pub mod graph_json;

mod body;
mod headers;
mod html;
mod mime;
mod nesting;
mod recipients;
mod sender;
mod text;

use std::io;
use std::ops::Range;

use base64::Engine as _;
use bytes::Bytes;
use mail_parser::MessageParser;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::envelope::Envelope;
use crate::memory::MimeShape;
use graph_json::{FileAttachment, Message, Recipient, SendMail};

pub use headers::{MAX_HEADER_VALUE_BYTES, MAX_INTERNET_MESSAGE_HEADERS};
pub use nesting::{MAX_MIME_NESTING, MAX_MIME_PARTS, MAX_PART_HEADER_BYTES};
pub use recipients::{MAX_RECIPIENTS_PER_MESSAGE, plans_for};
/// Where a message's header section ends: the one rule every reader of spooled mail follows.
pub(crate) use text::{fields as header_fields, header_section};

/// A Graph request body must stay below this many bytes (Graph's "4 MB"; the decimal reading
/// leaves a margin against the binary one).
pub const MAX_REQUEST_BYTES: usize = 4_000_000;

/// Attachments of this size or larger never go inline in JSON; they are `uploads`.
pub const MAX_INLINE_ATTACHMENT_BYTES: usize = 3_000_000;

/// What the operator configured (`microsoft.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// `microsoft.sender`: the default mailbox.
    pub sender: Option<String>,
    /// `microsoft.allowed_senders`: addresses or `*@domain` that send as themselves.
    pub allowed_senders: Vec<String>,
    pub save_to_sent_items: bool,
    /// Delegated flow: the mailbox is always `/me`.
    pub delegated: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            sender: None,
            allowed_senders: Vec::new(),
            save_to_sent_items: true,
            delegated: false,
        }
    }
}

/// The mailbox a plan is posted to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mailbox {
    Me,
    User(String),
}

impl Mailbox {
    /// URL path prefix below the Graph base URL: `/me` or `/users/{upn}` (percent-encoded, so
    /// an address can never add path segments or a query).
    pub fn path(&self) -> String {
        match self {
            Mailbox::Me => "/me".to_string(),
            Mailbox::User(u) => format!("/users/{}", text::encode_path_segment(u.trim())),
        }
    }
}

/// One Graph message to send: where, what, and to how many recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPlan {
    pub mailbox: Mailbox,
    pub request: PlanRequest,
    /// Recipients named by this plan (To + Cc + Bcc), at most 500.
    pub recipients: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanRequest {
    /// `POST {mailbox}/sendMail`, JSON; serialized body < [`MAX_REQUEST_BYTES`].
    SendMail(SendMail),
    /// `POST {mailbox}/sendMail`, `Content-Type: text/plain`, body = `base64` (no line breaks).
    Mime { base64: String },
    /// `POST {mailbox}/messages` with `message`, then add `uploads` in order, then
    /// `POST {mailbox}/messages/{id}/send`.
    Draft {
        message: Message,
        uploads: Vec<LargeAttachment>,
    },
}

/// An attachment: inline in the message JSON when small, else added to a draft after it is
/// created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LargeAttachment {
    pub name: String,
    pub content_type: String,
    pub is_inline: bool,
    /// Without angle brackets.
    pub content_id: Option<String>,
    /// Decoded size in bytes.
    pub size: usize,
    pub data: AttachmentData,
}

/// Where an attachment's decoded bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentData {
    /// Decoded, in memory.
    Bytes(Bytes),
    /// Base64 text at this byte range of the spooled message, decoded a chunk at a time while
    /// it is uploaded (see [`base64_stream`]) so a big attachment is never held whole. Only parts of
    /// at least [`MAX_INLINE_ATTACHMENT_BYTES`], which always go through an upload session.
    /// When the plan was made, the range was decoded and compared with mail-parser's copy;
    /// `sha256` is that copy's digest, checked again before the last byte is uploaded.
    Base64 {
        encoded: Range<usize>,
        sha256: [u8; 32],
    },
}

impl LargeAttachment {
    /// The same attachment as an inline JSON `fileAttachment`; `None` when its bytes are not in
    /// memory (then it is too big to go inline anyway).
    pub fn to_file_attachment(&self) -> Option<FileAttachment> {
        let AttachmentData::Bytes(bytes) = &self.data else {
            return None;
        };
        Some(FileAttachment::new(
            self.name.clone(),
            self.content_type.clone(),
            bytes,
            self.is_inline,
            self.content_id.clone(),
        ))
    }

    /// All decoded bytes. `raw` is the spooled message the plan was made from; `None` when a
    /// base64 range does not decode (the message is not the one the plan was made from).
    pub fn decoded(&self, raw: &[u8]) -> Option<Bytes> {
        match &self.data {
            AttachmentData::Bytes(bytes) => Some(bytes.clone()),
            AttachmentData::Base64 { encoded, .. } => {
                let mut out = Vec::with_capacity(self.size);
                base64_stream::Base64Decoder::default()
                    .feed(raw.get(encoded.clone())?, &mut out)
                    .ok()?;
                (out.len() == self.size).then(|| out.into())
            }
        }
    }
}

/// Why a message cannot be converted. See [`ConvertError::is_permanent`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// Permanent: zero bytes or only whitespace.
    #[error("message is empty")]
    Empty,
    /// Permanent: the MIME parser gave up on it (a bug there, caught).
    #[error("message cannot be parsed as MIME")]
    Unparseable,
    /// Permanent: multiparts or attached messages nest deeper than [`MAX_MIME_NESTING`].
    #[error("MIME structure nested too deeply (limit {MAX_MIME_NESTING})")]
    TooDeep,
    /// Permanent: more MIME parts than [`MAX_MIME_PARTS`].
    #[error("too many MIME parts (limit {MAX_MIME_PARTS})")]
    TooManyParts,
    /// Permanent: the parts' header sections hold more than [`MAX_PART_HEADER_BYTES`].
    #[error("MIME part headers too large (limit {MAX_PART_HEADER_BYTES} bytes)")]
    PartHeadersTooLarge,
    /// Permanent: the envelope names no recipient.
    #[error("no recipients: the envelope has no RCPT TO address")]
    NoRecipients,
    /// Configuration: From is not in `microsoft.allowed_senders` and `microsoft.sender` is not
    /// set. Converts once the configuration changes, so not permanent.
    #[error(
        "no mailbox to send from: From <{from}> is not in microsoft.allowed_senders and microsoft.sender is not set"
    )]
    NoMailbox { from: String },
    /// Permanent: signed/encrypted mail must go as MIME, and Graph takes at most 4 MB.
    #[error(
        "signed or encrypted message too large for Graph MIME sending: {size} bytes as base64, limit {MAX_REQUEST_BYTES}"
    )]
    MimeTooLarge { size: usize },
    /// Permanent: even without attachments the message JSON is over the request limit.
    #[error(
        "message body too large for Graph: {size} bytes of JSON without attachments, limit {MAX_REQUEST_BYTES}"
    )]
    TooLarge { size: usize },
}

impl ConvertError {
    /// `true`: retrying can never help, fail the message. `false` (only [`ConvertError::NoMailbox`]):
    /// a configuration problem; keep retrying with backoff so a fixed config delivers it.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ConvertError::NoMailbox { .. })
    }
}

/// Cheap check at the end of SMTP DATA: `Err` only for mail that can never convert (empty,
/// nested too deeply, signed/encrypted mail too big for MIME sending). Reads the structure, never
/// decodes a part. A message without a header section passes: it is delivered as its body, from
/// the envelope sender, as Postfix would. `Ok` holds the shape that sizes its conversion's share
/// of the memory budget.
pub fn precheck(raw: &[u8]) -> Result<MimeShape, ConvertError> {
    let (prepared, shape) = prepare(raw)?;
    let signed = parse(&prepared.bytes, true).is_some_and(|msg| mime::is_signed_or_encrypted(&msg));
    let size = base64_len(raw.len());
    if signed && size >= MAX_REQUEST_BYTES {
        return Err(ConvertError::MimeTooLarge { size });
    }
    Ok(shape)
}

/// The message as mail-parser may get it ([`text::prepare`]), once its structure is within the
/// limits that bound mail-parser's memory (both `precheck` and `convert` refuse the rest), and
/// its shape.
fn prepare(raw: &[u8]) -> Result<(text::Prepared<'_>, MimeShape), ConvertError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ConvertError::Empty);
    }
    let prepared = text::prepare(raw);
    // The walk uses mail-parser's own part-end search, which can panic on odd input in builds
    // with overflow checks (as `parse` does, and is guarded the same way): never a crash.
    let checked = std::panic::catch_unwind(|| nesting::check(&prepared.bytes))
        .map_err(|_| ConvertError::Unparseable)?;
    let shape = checked.map_err(|excess| match excess {
        nesting::Excess::Depth => ConvertError::TooDeep,
        nesting::Excess::Parts => ConvertError::TooManyParts,
        nesting::Excess::HeaderBytes => ConvertError::PartHeadersTooLarge,
    })?;
    let copied = matches!(prepared.bytes, std::borrow::Cow::Owned(_));
    Ok((prepared, MimeShape { copied, ..shape }))
}

/// Converts one spooled message into the Graph requests that deliver it: one plan per group of
/// at most 500 envelope recipients, every envelope recipient in exactly one plan.
pub fn convert(
    raw: &[u8],
    envelope: &Envelope,
    opts: &ConvertOptions,
) -> Result<Vec<GraphPlan>, ConvertError> {
    // Checked again here: mail spooled by an older version never went through `precheck`.
    let (prepared, _) = prepare(raw)?;
    if prepared.cut_fields + prepared.dropped_fields > 0 {
        tracing::warn!(
            cut = prepared.cut_fields,
            dropped = prepared.dropped_fields,
            field_limit = text::MAX_HEADER_FIELD_BYTES,
            section_limit = text::MAX_HEADER_SECTION_BYTES,
            "header section too large: fields cut or dropped"
        );
    }
    let as_body;
    let (prepared, msg) = match parse(&prepared.bytes, false) {
        Some(msg) => (&prepared, msg),
        None => {
            as_body = text::prepare_as_body(raw);
            let msg = parse(&as_body.bytes, false).ok_or(ConvertError::Unparseable)?;
            (&as_body, msg)
        }
    };
    let parsed: &[u8] = &prepared.bytes;

    let to = recipients::header_addrs(msg.all_to());
    let cc = recipients::header_addrs(msg.all_cc());
    let rcpts = recipients::classify(&envelope.rcpt_to, &to, &cc);
    if rcpts.is_empty() {
        return Err(ConvertError::NoRecipients);
    }
    let reply_to = recipients::header_addrs(msg.reply_to());
    let from = recipients::header_addrs(msg.from()).into_iter().next();
    let sender = sender::decide(from, &envelope.mail_from, !reply_to.is_empty(), opts)?;
    let groups = recipients::split(&rcpts, MAX_RECIPIENTS_PER_MESSAGE);

    if mime::is_signed_or_encrypted(&msg) {
        let header_to_cc: Vec<_> = to.iter().chain(&cc).cloned().collect();
        return groups
            .iter()
            .map(|g| {
                let bytes = mime::rewrite(raw, g, &header_to_cc, &sender);
                let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                if base64.len() >= MAX_REQUEST_BYTES {
                    return Err(ConvertError::MimeTooLarge { size: base64.len() });
                }
                Ok(GraphPlan {
                    mailbox: sender.mailbox.clone(),
                    request: PlanRequest::Mime { base64 },
                    recipients: g.len(),
                })
            })
            .collect();
    }

    let content = body::extract(&msg, prepared, raw);
    let fields = headers::raw_fields(&msg, parsed);
    let reply_to: Vec<Recipient> = if reply_to.is_empty() {
        sender.reply_to.iter().map(|a| a.recipient()).collect()
    } else {
        reply_to.iter().map(|a| a.recipient()).collect()
    };
    let base = Message {
        subject: headers::subject(&msg),
        body: content.body,
        from: sender.from.as_ref().map(|a| a.recipient()),
        reply_to,
        importance: headers::importance(&fields),
        is_read_receipt_requested: headers::read_receipt(&fields),
        is_delivery_receipt_requested: headers::delivery_receipt(&fields),
        internet_message_headers: headers::x_headers(&fields),
        ..Default::default()
    };

    groups
        .iter()
        .map(|g| {
            let mut message = base.clone();
            message.to_recipients = g.to.iter().map(|a| a.recipient()).collect();
            message.cc_recipients = g.cc.iter().map(|a| a.recipient()).collect();
            message.bcc_recipients = g.bcc.iter().map(|a| a.recipient()).collect();
            Ok(GraphPlan {
                mailbox: sender.mailbox.clone(),
                request: plan_request(message, &content.parts, opts.save_to_sent_items)?,
                recipients: g.len(),
            })
        })
        .collect()
}

/// SendMail while the whole JSON stays below the limit, else Draft.
fn plan_request(
    mut message: Message,
    parts: &[LargeAttachment],
    save_to_sent_items: bool,
) -> Result<PlanRequest, ConvertError> {
    // Sizes first, base64 copies after: a copy is only made for an attachment that can fit
    // (ten 2 MB attachments used to be copied whole, 27 MB, before the sizes said no).
    let total: usize = parts.iter().map(|p| p.size).sum();
    let inline: Option<Vec<FileAttachment>> = if base64_len(total) < MAX_REQUEST_BYTES {
        parts
            .iter()
            .map(LargeAttachment::to_file_attachment)
            .collect()
    } else {
        None
    };
    if let Some(inline) = inline {
        message.attachments = inline;
        let send = SendMail {
            message,
            save_to_sent_items,
        };
        if json_len(&send) < MAX_REQUEST_BYTES {
            return Ok(PlanRequest::SendMail(send));
        }
        message = send.message;
        message.attachments.clear();
    }

    let base_len = json_len(&message);
    // `,"attachments":[` + `]`, and one comma per attachment counted below.
    let mut used = base_len + 17;
    if used >= MAX_REQUEST_BYTES {
        return Err(ConvertError::TooLarge { size: base_len });
    }
    let mut uploads = Vec::new();
    for p in parts {
        // Its JSON is longer than its base64: no copy when even that cannot fit.
        if p.size < MAX_INLINE_ATTACHMENT_BYTES
            && used + base64_len(p.size) < MAX_REQUEST_BYTES
            && let Some(fa) = p.to_file_attachment()
        {
            let len = json_len(&fa) + 1;
            if used + len < MAX_REQUEST_BYTES {
                used += len;
                message.attachments.push(fa);
                continue;
            }
        }
        uploads.push(p.clone());
    }
    Ok(PlanRequest::Draft { message, uploads })
}

/// mail-parser never panics in release builds, but has `debug_assert!`s on "cannot happen"
/// paths that odd input does reach; a panic there (or any parser bug) means "unparseable", not a
/// dead delivery task.
fn parse(raw: &[u8], headers_only: bool) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| {
        let parser = MessageParser::new();
        if headers_only {
            parser.parse_headers(raw)
        } else {
            parser.parse(raw)
        }
    })
    .ok()
    .flatten()
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// Length of the serialized JSON without building it.
fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, value) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

impl GraphPlan {
    /// Bytes this plan keeps in memory until it is sent: its JSON (inline attachments in it as
    /// base64) and the decoded bytes of uploads held in memory. Streamed uploads hold none.
    pub fn held_bytes(&self) -> usize {
        match &self.request {
            PlanRequest::SendMail(send) => json_len(send),
            PlanRequest::Mime { base64 } => base64.len(),
            PlanRequest::Draft { message, uploads } => uploads
                .iter()
                .map(|u| match &u.data {
                    AttachmentData::Bytes(bytes) => bytes.len(),
                    AttachmentData::Base64 { .. } => 0,
                })
                .fold(json_len(message), usize::saturating_add),
        }
    }

    /// The plan as reviewable JSON (used by `examples/eml2graph.rs` and the corpus goldens):
    /// `{"mailbox", "recipients", "request": "sendMail"|"mime"|"draft", ...}` with the sendMail
    /// body, the decoded MIME text, or the draft message plus uploads (name, type, size, sha256).
    /// `raw` is the message the plan was made from (uploads may point into it).
    pub fn describe(&self, raw: &[u8]) -> serde_json::Value {
        use serde_json::json;
        let mailbox = self.mailbox.path();
        match &self.request {
            PlanRequest::SendMail(body) => json!({
                "mailbox": mailbox,
                "recipients": self.recipients,
                "request": "sendMail",
                "body": body,
            }),
            PlanRequest::Mime { base64 } => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(base64)
                    .unwrap_or_default();
                json!({
                    "mailbox": mailbox,
                    "recipients": self.recipients,
                    "request": "mime",
                    "mime": String::from_utf8_lossy(&decoded),
                })
            }
            PlanRequest::Draft { message, uploads } => json!({
                "mailbox": mailbox,
                "recipients": self.recipients,
                "request": "draft",
                "message": message,
                "uploads": uploads.iter().map(|u| json!({
                    "name": u.name,
                    "contentType": u.content_type,
                    "isInline": u.is_inline,
                    "contentId": u.content_id,
                    "size": u.size,
                    "streamed": matches!(u.data, AttachmentData::Base64 { .. }),
                    "sha256": u.decoded(raw).map(|b| sha256_hex(&b)),
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

/// Lower-case hex SHA-256: how plans and the dry-run outbox name attachment bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Internals the fuzz targets (`fuzz/`) check their oracles against. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// What `convert` hands mail-parser (the header section repaired and bounded), and the map
    /// from an offset in it back to the spooled message, where upload ranges point.
    pub fn prepared(raw: &[u8]) -> (Vec<u8>, impl Fn(usize) -> Option<usize> + '_) {
        let prepared = super::text::prepare(raw);
        let bytes = prepared.bytes.to_vec();
        (bytes, move |parsed| prepared.spooled_offset(parsed))
    }
}

#[cfg(test)]
mod tests;
