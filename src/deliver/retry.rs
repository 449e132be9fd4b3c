//! What happens to a record after an attempt: the state machine of design section 5 (retry with
//! backoff, fail for good, hold for re-authorization, expire after `queue.max_age`). Pure: the
//! caller supplies the clock and the jitter, and writes the result to the spool.

use std::time::{Duration, SystemTime};

use super::DeliveryError;
use super::backoff::Backoff;
use crate::spool::{LastError, Record, State};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub max_age: Duration,
}

/// The record after a failed attempt.
pub fn apply_failure(
    mut record: Record,
    failure: &DeliveryError,
    now: SystemTime,
    policy: &RetryPolicy,
    jitter: f64,
) -> Record {
    match failure {
        DeliveryError::Transient { error, retry_after } => {
            record.attempts += 1;
            record.last_error = Some(error.clone());
            if expired(&record, now, policy.max_age) {
                return expire(record, now);
            }
            let delay = policy.backoff.delay(record.attempts, *retry_after, jitter);
            record.next_attempt = now + delay;
        }
        DeliveryError::Permanent(error) => {
            record.attempts += 1;
            record.state = State::Failed;
            record.last_error = Some(error.clone());
        }
        DeliveryError::Reauth(reason) | DeliveryError::Missing(reason) => {
            record = hold(record, reason);
        }
    }
    record
}

pub(super) fn hold(mut record: Record, reason: &str) -> Record {
    record.state = State::Held;
    record.last_error = Some(LastError {
        status: None,
        code: "HeldForReauthorization".into(),
        message: reason.to_string(),
    });
    record
}

pub(super) fn release(mut record: Record, now: SystemTime) -> Record {
    record.state = State::Pending;
    record.next_attempt = now;
    record
}

pub(super) fn expired(record: &Record, now: SystemTime, max_age: Duration) -> bool {
    now.duration_since(record.received_at).unwrap_or_default() >= max_age
}

pub(super) fn expire(mut record: Record, now: SystemTime) -> Record {
    let age = now.duration_since(record.received_at).unwrap_or_default();
    let previous = record
        .last_error
        .take()
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default();
    record.state = State::Failed;
    record.last_error = Some(LastError {
        status: None,
        code: "expired".into(),
        message: format!(
            "expired: undelivered after {}{previous}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ),
    });
    record
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::TestResult;
    use crate::clock::{Clock, ManualClock};
    use crate::envelope::{Envelope, QueueId};

    /// 30 s doubling to an hour, five days at most (the defaults of relay.toml).
    pub(in crate::deliver) const POLICY: RetryPolicy = RetryPolicy {
        backoff: Backoff {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        },
        max_age: Duration::from_secs(5 * 86_400),
    };

    fn record(clock: &ManualClock) -> Record {
        Record::new(
            QueueId::generate(),
            Envelope::new("a@x.org", vec!["b@y.org".into()]),
            10,
            clock.now(),
        )
    }

    fn transient(status: u16, retry_after: Option<Duration>) -> DeliveryError {
        DeliveryError::Transient {
            error: LastError {
                status: Some(status),
                code: "TooManyRequests".into(),
                message: "later".into(),
            },
            retry_after,
        }
    }

    #[test]
    fn transient_failures_back_off_doubling_and_retry_after_wins() -> TestResult {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let mut r = record(&clock);
        for expected in [30, 60, 120, 240] {
            r = apply_failure(r, &transient(503, None), clock.now(), &POLICY, 0.5);
            assert_eq!(r.state, State::Pending);
            assert_eq!(
                r.next_attempt.duration_since(clock.now())?,
                Duration::from_secs(expected)
            );
        }
        assert_eq!(r.attempts, 4);
        r = apply_failure(
            r,
            &transient(429, Some(Duration::from_secs(2))),
            clock.now(),
            &POLICY,
            0.5,
        );
        assert_eq!(
            r.next_attempt.duration_since(clock.now())?,
            Duration::from_secs(2)
        );
        assert_eq!(r.last_error.as_ref().map(|e| e.status), Some(Some(429)));
        Ok(())
    }

    #[test]
    fn permanent_failure_fails_with_the_graph_reason() -> TestResult {
        let clock = ManualClock::new(SystemTime::now());
        let error = LastError {
            status: Some(400),
            code: "ErrorInvalidRecipients".into(),
            message: "bad".into(),
        };
        let r = apply_failure(
            record(&clock),
            &DeliveryError::Permanent(error.clone()),
            clock.now(),
            &POLICY,
            0.5,
        );
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.last_error, Some(error));
        assert_eq!(r.attempts, 1);
        Ok(())
    }

    #[test]
    fn mail_expires_after_max_age_but_never_while_held() -> TestResult {
        let clock = ManualClock::new(SystemTime::now());
        let r = record(&clock);
        let held = apply_failure(
            r.clone(),
            &DeliveryError::Reauth("AADSTS700082".into()),
            clock.now(),
            &POLICY,
            0.5,
        );
        assert_eq!(held.state, State::Held);
        assert_eq!(held.attempts, 0, "holding is not an attempt");
        clock.advance(Duration::from_secs(6 * 86_400));
        let held_again = apply_failure(
            held,
            &DeliveryError::Reauth("still".into()),
            clock.now(),
            &POLICY,
            0.5,
        );
        assert_eq!(held_again.state, State::Held);
        let expired = apply_failure(r, &transient(503, None), clock.now(), &POLICY, 0.5);
        assert_eq!(expired.state, State::Failed);
        let message = &expired
            .last_error
            .ok_or("an expired record says why")?
            .message;
        assert!(
            message.starts_with("expired: undelivered after 6days"),
            "{message}"
        );
        assert!(message.contains("TooManyRequests"), "{message}");
        Ok(())
    }

    #[test]
    fn release_makes_held_mail_due_now() -> TestResult {
        let clock = ManualClock::new(SystemTime::now());
        let held = hold(record(&clock), "why");
        clock.advance(Duration::from_secs(3600));
        let released = release(held, clock.now());
        assert_eq!(released.state, State::Pending);
        assert_eq!(released.next_attempt, clock.now());
        Ok(())
    }
}
