//! The per-message record (`<id>.json`): envelope, state, attempts, next attempt, last error.
//! Plain data with its JSON form; reading and writing files is `store`'s job.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, QueueId};
use crate::memory::MimeShape;

/// Where a message is in its life. Pending and held live in `queue/`, failed in `failed/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its next attempt.
    Pending,
    /// Waiting for re-authorization; never expires while held.
    Held,
    /// Given up; sits in `failed/` until `queue retry` or `queue delete`.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Held => "held",
            State::Failed => "failed",
        }
    }
}

/// The last thing that went wrong, as Graph (or the network) said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// HTTP status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Graph's `error.code` (e.g. `ErrorInvalidRecipients`), or our own short code.
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for LastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "{status} {}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: QueueId,
    pub envelope: Envelope,
    #[serde(with = "rfc3339")]
    pub received_at: SystemTime,
    pub state: State,
    #[serde(default)]
    pub attempts: u32,
    #[serde(with = "rfc3339")]
    pub next_attempt: SystemTime,
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Size of the `.eml` in bytes.
    #[serde(default)]
    pub size: u64,
    /// Indexes of the Graph messages already accepted, for mail split above 500 recipients:
    /// a retry sends only the rest, so nobody gets the mail twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts_done: Vec<usize>,
    /// Drafts the big-mail path has in the mailbox, so the next attempt (after a failure or a
    /// crash) deletes an unsent one or finds out whether a sent one went, instead of sending a
    /// second copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drafts: Vec<DraftNote>,
    /// The message's MIME shape as measured at DATA, which sizes its conversion's share of the
    /// memory budget. Absent in records written before it was kept (and by `commit` without
    /// one): such mail reserves the worst case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<MimeShape>,
}

/// One Graph draft of part `part` of a message. Written to the spool right after Graph created
/// it, and again (`send_tried`) right before its `/send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftNote {
    #[serde(default)]
    pub part: usize,
    /// The draft's immutable id.
    pub id: String,
    /// `/send` was (or was about to be) requested: the draft may have been sent.
    #[serde(default)]
    pub send_tried: bool,
}

impl Record {
    /// The draft recorded for `part`, if any.
    pub fn draft(&self, part: usize) -> Option<&DraftNote> {
        self.drafts.iter().find(|d| d.part == part)
    }

    /// Records `note` as the draft of `part` (`None`: it has none).
    pub fn set_draft(&mut self, part: usize, note: Option<DraftNote>) {
        self.drafts.retain(|d| d.part != part);
        self.drafts.extend(note);
    }
}

impl Record {
    pub fn new(id: QueueId, envelope: Envelope, size: u64, now: SystemTime) -> Self {
        let now = whole_millis(now);
        Record {
            id,
            envelope,
            received_at: now,
            state: State::Pending,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            size,
            parts_done: Vec::new(),
            drafts: Vec::new(),
            shape: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a record always serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Times are stored to the millisecond; rounding here keeps a record equal to its re-read self.
pub fn whole_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_millis(d.as_millis() as u64),
        Err(_) => t,
    }
}

/// RFC 3339 timestamps, so a person reading the spool sees dates, not epoch numbers.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn record_round_trips_through_json() -> TestResult {
        let now = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let mut record = Record::new(
            QueueId::generate(),
            Envelope::new("a@example.com", vec!["b@example.com".into()]),
            42,
            now,
        );
        record.last_error = Some(LastError {
            status: Some(429),
            code: "TooManyRequests".into(),
            message: "Please retry again later.".into(),
        });
        let json = record.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains("\"received_at\": \"2026-"), "{text}");
        assert!(text.contains("\"state\": \"pending\""), "{text}");
        assert_eq!(Record::from_json(&json)?, record);
        Ok(())
    }

    /// Records written before shapes were kept read as `None` (the worst case); a shape is
    /// written and read back.
    #[test]
    fn a_record_without_a_shape_still_reads() -> TestResult {
        let mut record = Record::new(
            QueueId::generate(),
            Envelope::new("a@example.com", vec!["b@example.com".into()]),
            42,
            UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        );
        let old = record.to_json();
        assert!(!String::from_utf8_lossy(&old).contains("shape"));
        assert_eq!(Record::from_json(&old)?.shape, None);
        record.shape = Some(MimeShape {
            parts: 3,
            streamed_bytes: 40,
            ..MimeShape::default()
        });
        assert_eq!(Record::from_json(&record.to_json())?, record);
        Ok(())
    }
}
