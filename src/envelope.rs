//! The SMTP envelope and the queue id: what ingress hands to the spool and what convert and
//! deliver read back. Plain data; no I/O, and no `use` of any other module of the crate: it sits
//! at the bottom so that SMTP and the pure conversion can name a message without depending on
//! storage.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The SMTP transaction: who asked to send to whom. The envelope, not the headers, decides who
/// receives the mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `MAIL FROM` address; empty for the null sender `<>`.
    pub mail_from: String,
    /// `RCPT TO` addresses, in the order given, without duplicates.
    pub rcpt_to: Vec<String>,
    /// The name the client gave in EHLO/HELO.
    #[serde(default)]
    pub helo: String,
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
    /// The AUTH identity, when the client authenticated.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// The client declared SMTPUTF8 on MAIL FROM.
    #[serde(default)]
    pub smtputf8: bool,
}

impl Envelope {
    pub fn new(mail_from: impl Into<String>, rcpt_to: Vec<String>) -> Self {
        Envelope {
            mail_from: mail_from.into(),
            rcpt_to,
            helo: String::new(),
            client_ip: None,
            auth_user: None,
            smtputf8: false,
        }
    }
}

/// A message's name in the spool: time-ordered, unique within this host, and safe as a file name
/// (upper-case hex only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(String);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl QueueId {
    /// A new id: microseconds since the epoch, the process id and a per-process counter.
    pub fn generate() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
        QueueId(format!(
            "{micros:014X}{:05X}{:05X}",
            std::process::id() & 0xF_FFFF,
            seq & 0xF_FFFF
        ))
    }

    /// Accepts only names `generate` could have made, so a user-typed id can never walk out of
    /// the spool directory.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        ok.then(|| QueueId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_ordered_and_parse_back() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(QueueId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn parse_refuses_paths_and_junk() {
        for bad in ["", "../etc", "abc", "12/34", "0123456789ABCDEFG"] {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }
}
