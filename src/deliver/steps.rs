//! The HTTP requests one Graph plan takes, in order, as data: one sendMail POST, or the draft
//! path (create → upload sessions → PUT ranges → send). The Graph transport executes them; the
//! dry-run outbox writes them down. Pure: no I/O.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::convert::{GraphPlan, LargeAttachment, MAX_INLINE_ATTACHMENT_BYTES, PlanRequest};

/// Upload chunk size: a multiple of 320 KiB and under 4 MiB, which satisfies both the Outlook
/// attachment rule (≤ 4 MB per PUT) and the driveItem rule (multiples of 320 KiB).
pub const UPLOAD_CHUNK: usize = 10 * 320 * 1024;

/// Stands for the draft's id in paths until the create call returns it.
pub const MESSAGE_ID: &str = "{message-id}";

/// One request. Paths are relative to `microsoft.graph_url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    /// POST a JSON body; success is `expect`.
    PostJson {
        path: String,
        body: Value,
        expect: u16,
    },
    /// POST base64 MIME as `text/plain` (signed or encrypted mail).
    PostMime { path: String, base64: &'a str },
    /// POST `createUploadSession` for one large attachment; the answer carries its upload URL.
    CreateUpload { path: String, body: Value },
    /// PUT one byte range to the last upload URL, without an Authorization header.
    PutRange {
        attachment: &'a LargeAttachment,
        start: usize,
        end: usize,
    },
    /// POST with an empty body (`/send`).
    PostEmpty { path: String, expect: u16 },
}

/// The requests for `plan`, in the order they must run.
pub fn steps(plan: &GraphPlan) -> Vec<Step<'_>> {
    let mailbox = plan.mailbox.path();
    match &plan.request {
        PlanRequest::SendMail(send_mail) => vec![Step::PostJson {
            path: format!("{mailbox}/sendMail"),
            body: serde_json::to_value(send_mail).expect("Graph JSON always serializes"),
            expect: 202,
        }],
        PlanRequest::Mime { base64 } => vec![Step::PostMime {
            path: format!("{mailbox}/sendMail"),
            base64,
        }],
        PlanRequest::Draft { message, uploads } => {
            let draft = format!("{mailbox}/messages/{MESSAGE_ID}");
            let mut steps = vec![Step::PostJson {
                path: format!("{mailbox}/messages"),
                body: serde_json::to_value(message).expect("Graph JSON always serializes"),
                expect: 201,
            }];
            for attachment in uploads {
                if attachment.bytes.len() < MAX_INLINE_ATTACHMENT_BYTES {
                    // Upload sessions refuse files under 3 MB; those are posted whole.
                    steps.push(Step::PostJson {
                        path: format!("{draft}/attachments"),
                        body: serde_json::to_value(attachment.to_file_attachment())
                            .expect("Graph JSON always serializes"),
                        expect: 201,
                    });
                    continue;
                }
                steps.push(Step::CreateUpload {
                    path: format!("{draft}/attachments/createUploadSession"),
                    body: upload_session_body(attachment),
                });
                let size = attachment.bytes.len();
                let mut start = 0;
                while start < size {
                    let end = (start + UPLOAD_CHUNK).min(size);
                    steps.push(Step::PutRange {
                        attachment,
                        start,
                        end,
                    });
                    start = end;
                }
            }
            steps.push(Step::PostEmpty {
                path: format!("{draft}/send"),
                expect: 202,
            });
            steps
        }
    }
}

fn upload_session_body(attachment: &LargeAttachment) -> Value {
    let mut item = json!({
        "attachmentType": "file",
        "name": attachment.name,
        "size": attachment.bytes.len(),
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

/// `Content-Range` of a PUT: `bytes start-last/total` (inclusive end).
pub fn content_range(start: usize, end: usize, total: usize) -> String {
    format!("bytes {start}-{}/{total}", end - 1)
}

/// How the dry-run outbox shows a step: full JSON bodies, upload PUTs by range, size and sha256.
pub fn describe(step: &Step<'_>, graph_url: &str) -> Value {
    let url = |path: &str| format!("{}{path}", graph_url.trim_end_matches('/'));
    match step {
        Step::PostJson { path, body, .. } => {
            json!({"method": "POST", "url": url(path), "body": body})
        }
        Step::PostMime { path, base64 } => json!({
            "method": "POST", "url": url(path), "content_type": "text/plain", "body": base64,
        }),
        Step::CreateUpload { path, body } => {
            json!({"method": "POST", "url": url(path), "body": body})
        }
        Step::PutRange {
            attachment,
            start,
            end,
        } => {
            let bytes = &attachment.bytes[*start..*end];
            json!({
                "method": "PUT",
                "url": "{uploadUrl}",
                "content_range": content_range(*start, *end, attachment.bytes.len()),
                "size": bytes.len(),
                "sha256": hex(&Sha256::digest(bytes)),
            })
        }
        Step::PostEmpty { path, .. } => json!({"method": "POST", "url": url(path)}),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(
            content_range(0, UPLOAD_CHUNK, 5_000_000),
            "bytes 0-3276799/5000000"
        );
    }

    // Outlook takes PUTs of at most 4 MiB; driveItem-style sessions want 320 KiB multiples.
    const _: () =
        assert!(UPLOAD_CHUNK.is_multiple_of(320 * 1024) && UPLOAD_CHUNK <= 4 * 1024 * 1024);
}
