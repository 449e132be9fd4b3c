//! The HTTP requests one Graph plan takes, in order, as data: one sendMail POST, or the draft
//! path (create → attachments / upload sessions → send). The Graph transport executes them; the
//! dry-run outbox writes them down. Pure: no I/O.

use std::ops::Range;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::convert::{GraphPlan, LargeAttachment, MAX_INLINE_ATTACHMENT_BYTES, PlanRequest};

/// Upload chunk size: a multiple of 320 KiB and under 4 MiB, which satisfies both the Outlook
/// attachment rule (≤ 4 MB per PUT) and the driveItem rule (multiples of 320 KiB).
pub const UPLOAD_CHUNK: usize = 10 * 320 * 1024;

/// Stands for the draft's id in paths until the create call returns it.
pub const MESSAGE_ID: &str = "{message-id}";

/// A JSON request body, serialized once: the transport sends these bytes (again, on a retry)
/// without another copy of a message that can be close to 4 MB.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody(Bytes);

impl JsonBody {
    pub fn of<T: Serialize>(value: &T) -> Self {
        JsonBody(
            serde_json::to_vec(value)
                .expect("Graph JSON always serializes")
                .into(),
        )
    }

    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// For the dry-run outbox, which shows bodies as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }
}

/// One request. Paths are relative to `microsoft.graph_url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    /// POST a JSON body; success is `expect`.
    PostJson {
        path: String,
        body: JsonBody,
        expect: u16,
    },
    /// POST base64 MIME as `text/plain` (signed or encrypted mail).
    PostMime { path: String, base64: &'a str },
    /// POST the draft message; 201 carries the id that replaces [`MESSAGE_ID`] in later paths.
    CreateDraft { path: String, body: JsonBody },
    /// POST `createUploadSession` for one large attachment, then PUT its bytes in [`chunks`] to
    /// the upload URL it returns, without an Authorization header.
    Upload {
        path: String,
        body: JsonBody,
        attachment: &'a LargeAttachment,
    },
    /// POST the draft's `/send` (empty body); 202.
    SendDraft { path: String },
}

/// The requests for `plan`, in the order they must run.
pub fn steps(plan: &GraphPlan) -> Vec<Step<'_>> {
    let mailbox = plan.mailbox.path();
    match &plan.request {
        PlanRequest::SendMail(send_mail) => vec![Step::PostJson {
            path: format!("{mailbox}/sendMail"),
            body: JsonBody::of(send_mail),
            expect: 202,
        }],
        PlanRequest::Mime { base64 } => vec![Step::PostMime {
            path: format!("{mailbox}/sendMail"),
            base64,
        }],
        PlanRequest::Draft { message, uploads } => {
            let draft = format!("{mailbox}/messages/{MESSAGE_ID}");
            let mut steps = vec![Step::CreateDraft {
                path: format!("{mailbox}/messages"),
                body: JsonBody::of(message),
            }];
            for attachment in uploads {
                // Upload sessions refuse files under 3 MB; those are posted whole.
                let small = attachment.size < MAX_INLINE_ATTACHMENT_BYTES;
                if small && let Some(inline) = attachment.to_file_attachment() {
                    steps.push(Step::PostJson {
                        path: format!("{draft}/attachments"),
                        body: JsonBody::of(&inline),
                        expect: 201,
                    });
                    continue;
                }
                steps.push(Step::Upload {
                    path: format!("{draft}/attachments/createUploadSession"),
                    body: JsonBody::of(&upload_session_body(attachment)),
                    attachment,
                });
            }
            steps.push(Step::SendDraft {
                path: format!("{draft}/send"),
            });
            steps
        }
    }
}

fn upload_session_body(attachment: &LargeAttachment) -> Value {
    let mut item = json!({
        "attachmentType": "file",
        "name": attachment.name,
        "size": attachment.size,
        "contentType": attachment.content_type,
    });
    if attachment.is_inline {
        item["isInline"] = json!(true);
    }
    if let Some(cid) = &attachment.content_id {
        item["contentId"] = json!(cid);
    }
    json!({ "AttachmentItem": item })
}

/// The byte range of the PUT that starts at `start`: one [`UPLOAD_CHUNK`], or the rest.
pub fn chunk_at(start: usize, total: usize) -> Range<usize> {
    start..(start + UPLOAD_CHUNK).min(total)
}

/// Every PUT of an upload that goes well, in order.
pub fn chunks(total: usize) -> impl Iterator<Item = Range<usize>> {
    (0..total)
        .step_by(UPLOAD_CHUNK)
        .map(move |start| chunk_at(start, total))
}

/// `Content-Range` of a PUT: `bytes start-last/total` (inclusive end).
pub fn content_range(range: &Range<usize>, total: usize) -> String {
    format!("bytes {}-{}/{total}", range.start, range.end - 1)
}

/// How the dry-run outbox shows a step: full JSON bodies; an upload as its session request and
/// its PUTs by range, each with `hash(range)` (the chunk's sha256, read from the spool).
pub fn describe(
    step: &Step<'_>,
    graph_url: &str,
    mut hash: impl FnMut(&LargeAttachment, Range<usize>) -> Value,
) -> Vec<Value> {
    let url = |path: &str| format!("{}{path}", graph_url.trim_end_matches('/'));
    match step {
        Step::PostJson { path, body, .. } | Step::CreateDraft { path, body } => {
            vec![json!({"method": "POST", "url": url(path), "body": body.to_value()})]
        }
        Step::PostMime { path, base64 } => vec![json!({
            "method": "POST", "url": url(path), "content_type": "text/plain", "body": base64,
        })],
        Step::Upload {
            path,
            body,
            attachment,
        } => {
            let session = json!({"method": "POST", "url": url(path), "body": body.to_value()});
            let puts = chunks(attachment.size).map(|range| {
                json!({
                    "method": "PUT",
                    "url": "{uploadUrl}",
                    "content_range": content_range(&range, attachment.size),
                    "size": range.len(),
                    "sha256": hash(attachment, range),
                })
            });
            std::iter::once(session).chain(puts).collect()
        }
        Step::SendDraft { path } => vec![json!({"method": "POST", "url": url(path)})],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(
            content_range(&chunk_at(0, 5_000_000), 5_000_000),
            "bytes 0-3276799/5000000"
        );
        assert_eq!(
            content_range(&chunk_at(UPLOAD_CHUNK, 5_000_000), 5_000_000),
            "bytes 3276800-4999999/5000000"
        );
    }

    #[test]
    fn chunks_cover_every_byte_once() {
        for total in [
            1,
            UPLOAD_CHUNK - 1,
            UPLOAD_CHUNK,
            UPLOAD_CHUNK + 1,
            31_457_280,
        ] {
            let ranges: Vec<_> = chunks(total).collect();
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(total));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(
                ranges
                    .iter()
                    .all(|r| !r.is_empty() && r.len() <= UPLOAD_CHUNK)
            );
        }
    }

    // Outlook takes PUTs of at most 4 MiB; driveItem-style sessions want 320 KiB multiples.
    const _: () =
        assert!(UPLOAD_CHUNK.is_multiple_of(320 * 1024) && UPLOAD_CHUNK <= 4 * 1024 * 1024);
}
