//! What people do to the queue by hand (`graph-relay queue ...` and the status page): list,
//! retry, delete, count. Shared by the CLI and the HTTP actions so both behave the same; a
//! running `serve` sees the result at its next rescan.

use std::time::{Duration, SystemTime};

use super::record::{Record, State};
use super::store::{Area, Spool, SpoolError};
use crate::envelope::QueueId;

/// Counts for `/status`: `pending` includes held mail; `held` is the part waiting for
/// re-authorization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub pending: usize,
    pub held: usize,
    pub failed: usize,
    pub oldest_age: Option<Duration>,
}

impl QueueCounts {
    /// The counts of a listing (`list_all`), so a caller that has one need not read again.
    pub fn of(records: &[Record], now: SystemTime) -> QueueCounts {
        let queued = || records.iter().filter(|r| r.state != State::Failed);
        QueueCounts {
            pending: queued().count(),
            held: queued().filter(|r| r.state == State::Held).count(),
            failed: records.len() - queued().count(),
            oldest_age: queued()
                .map(|r| r.received_at)
                .min()
                .map(|t| now.duration_since(t).unwrap_or_default()),
        }
    }
}

impl Spool {
    /// Every message, queued first, then failed.
    pub fn list_all(&self) -> Result<Vec<Record>, SpoolError> {
        let mut records = self.list(Area::Queue)?;
        records.extend(self.list(Area::Failed)?);
        Ok(records)
    }

    pub fn counts(&self, now: SystemTime) -> Result<QueueCounts, SpoolError> {
        Ok(QueueCounts::of(&self.list_all()?, now))
    }

    /// Makes a message due now: a failed one goes back to `queue/` as pending; a pending one
    /// skips its wait. Held mail stays held (it waits for a token, not for time).
    pub fn retry(&self, id: &QueueId, now: SystemTime) -> Result<Record, SpoolError> {
        let (mut record, area) = self.load(id)?;
        if record.state == State::Held {
            return Ok(record);
        }
        record.state = State::Pending;
        record.next_attempt = super::record::whole_millis(now);
        self.relocate(&record, area)?;
        Ok(record)
    }

    /// Retries every failed message; returns the ids moved back.
    pub fn retry_all_failed(&self, now: SystemTime) -> Result<Vec<QueueId>, SpoolError> {
        let mut moved = Vec::new();
        for record in self.list(Area::Failed)? {
            self.retry(&record.id, now)?;
            moved.push(record.id);
        }
        Ok(moved)
    }

    /// Deletes a message and returns its record, so the caller can say what was removed.
    pub fn delete(&self, id: &QueueId) -> Result<Record, SpoolError> {
        let (record, _) = self.load(id)?;
        self.remove(id)?;
        Ok(record)
    }
}

/// One `queue list` line: id, state, attempts, next attempt, last error, from, recipients.
pub fn list_line(record: &Record) -> String {
    let next = match record.state {
        State::Pending => humantime::format_rfc3339_seconds(record.next_attempt).to_string(),
        State::Held => "after re-authorization".to_string(),
        State::Failed => "-".to_string(),
    };
    let error = record
        .last_error
        .as_ref()
        .map(|e| e.to_string().replace(['\r', '\n', '\t'], " "))
        .unwrap_or_else(|| "-".to_string());
    let from = if record.envelope.mail_from.is_empty() {
        "<>"
    } else {
        &record.envelope.mail_from
    };
    format!(
        "{}\t{}\tattempts={}\tnext={}\terror={}\tfrom={}\tto={}",
        record.id,
        record.state.as_str(),
        record.attempts,
        next,
        error,
        from,
        record.envelope.rcpt_to.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use crate::envelope::Envelope;
    use crate::spool::LastError;

    #[test]
    fn retry_brings_failed_mail_back_and_delete_removes_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path())?;
        let now = SystemTime::now();
        let env = Envelope::new("a@x.org", vec!["b@y.org".into(), "c@y.org".into()]);
        let mut record = spool.commit(&env, b"m", now)?;
        record.state = State::Failed;
        record.last_error = Some(LastError {
            status: Some(400),
            code: "ErrorInvalidRecipients".into(),
            message: "no".into(),
        });
        spool.relocate(&record, Area::Queue)?;
        let line = list_line(&record);
        assert!(line.contains("\tfailed\t"), "{line}");
        assert!(
            line.contains("error=400 ErrorInvalidRecipients: no"),
            "{line}"
        );
        assert!(line.ends_with("to=b@y.org,c@y.org"), "{line}");
        assert_eq!(
            spool.counts(now)?,
            QueueCounts {
                pending: 0,
                held: 0,
                failed: 1,
                oldest_age: None
            }
        );

        assert_eq!(spool.retry_all_failed(now)?, vec![record.id.clone()]);
        let counts = spool.counts(now)?;
        assert_eq!((counts.pending, counts.failed), (1, 0));
        assert_eq!(spool.load(&record.id)?.0.state, State::Pending);

        let deleted = spool.delete(&record.id)?;
        assert_eq!(deleted.id, record.id);
        assert!(matches!(
            spool.delete(&record.id),
            Err(SpoolError::NotFound(_))
        ));
        Ok(())
    }
}
