//! The queue manager: wakes on new mail, on the next due time, or on a periodic rescan (which
//! also picks up `queue retry`/`delete` from the CLI); sends due messages with at most
//! `PER_MAILBOX` requests in flight per mailbox; and writes each outcome back to the spool.
//! Holds mail while the token state is not `valid`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::backoff::{Backoff, jitter};
use super::{Delivery, DeliveryError, DraftLog, Transport};
use crate::auth::{TokenSource, TokenState};
use crate::clock::Clock;
use crate::convert::{ConvertOptions, GraphPlan, convert};
use crate::envelope::QueueId;
use crate::memory::{MemoryBudget, Reservation};
use crate::metrics::Counters;
use crate::spool::{Area, DraftNote, LastError, Record, Spool, SpoolError, State};

/// Graph allows four concurrent requests per mailbox.
pub const PER_MAILBOX: usize = 4;
/// Messages being worked on at once, across all mailboxes.
const WORKERS: usize = 16;
/// Memory a conversion may take for a message of `size` bytes: the spooled bytes read back, then
/// mail-parser's parse, the decoded parts, the body as UTF-8 text and JSON, and the plan. Measured
/// with `examples/convert_peak.rs` (README, "Memory"): at most 4.9 times the size over the shapes
/// the structure limits let through (many parts, quoted-printable HTML, nested messages), plus
/// up to ~40 bytes per header byte for a top-level header section of tiny fields or addresses,
/// which `convert` bounds to 1 MiB.
pub fn convert_memory(size: usize) -> usize {
    const HEADER_WORST: usize = 64 * 1024 * 1024;
    size.saturating_mul(6)
        .saturating_add(size.saturating_mul(64).min(HEADER_WORST))
        .saturating_add(1024 * 1024)
}
/// What one delivery holds beyond its plan while it sends: one request body serialized (< 4 MB)
/// and one upload chunk (≤ 4 MiB).
const SEND_MEMORY: usize = 8 * 1024 * 1024;
/// The disk is the truth: rescan at least this often, whatever the in-memory hints say.
const RESCAN: Duration = Duration::from_secs(5);
/// While mail is held, ask the token endpoint again on this slow backoff (1 min doubling to
/// 10 min), so a transient outage that was misread as fatal heals by itself.
const HOLD_PROBE: Backoff = Backoff {
    min: Duration::from_secs(60),
    max: Duration::from_secs(600),
};

/// The queue as the manager last knew it: read from disk at each rescan, kept current in
/// between from `submit` and from the outcome of each delivery.
#[derive(Default)]
struct Schedule {
    records: BTreeMap<QueueId, Record>,
    scanned_at: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub max_age: Duration,
}

pub struct QueueManager {
    spool: Spool,
    transport: Arc<dyn Transport>,
    tokens: Arc<dyn TokenSource>,
    options: RwLock<ConvertOptions>,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    /// Dry run sends to the outbox, which needs no token.
    needs_token: bool,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<QueueId>>,
    /// Records handed in by `submit` since the last pass.
    inbox: Mutex<Vec<Record>>,
    schedule: Mutex<Schedule>,
    mailboxes: Mutex<HashMap<String, Arc<Semaphore>>>,
    workers: Arc<Semaphore>,
    /// Shared with SMTP reception: conversion and the plans being sent reserve from it.
    memory: MemoryBudget,
    /// When the token endpoint was last asked while mail was held, and how many such probes
    /// in a row failed.
    last_probe: Mutex<Option<(SystemTime, u32)>>,
}

impl QueueManager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spool: Spool,
        transport: Arc<dyn Transport>,
        tokens: Arc<dyn TokenSource>,
        options: ConvertOptions,
        policy: RetryPolicy,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
        needs_token: bool,
        memory: MemoryBudget,
    ) -> Arc<Self> {
        Arc::new(QueueManager {
            spool,
            transport,
            tokens,
            options: RwLock::new(options),
            policy,
            clock,
            counters,
            needs_token,
            wake: Arc::new(Notify::new()),
            in_flight: Mutex::new(HashSet::new()),
            inbox: Mutex::new(Vec::new()),
            schedule: Mutex::new(Schedule::default()),
            mailboxes: Mutex::new(HashMap::new()),
            workers: Arc::new(Semaphore::new(WORKERS)),
            memory,
            last_probe: Mutex::new(None),
        })
    }

    /// Takes the sender policy of a reloaded configuration.
    pub fn set_options(&self, options: ConvertOptions) {
        *self.options.write().expect("options lock") = options;
        self.wake.notify_one();
    }

    /// A handle that wakes the manager (new mail, a retry asked for, a token change).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown`; then waits up to `grace` for in-flight deliveries. An abandoned
    /// delivery stays in the spool and is retried at the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        loop {
            let next = self.pass().await;
            let sleep = next
                .and_then(|at| at.duration_since(self.clock.now()).ok())
                .unwrap_or(RESCAN)
                .min(RESCAN);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        let all = WORKERS as u32;
        if tokio::time::timeout(grace, self.workers.acquire_many(all))
            .await
            .is_err()
        {
            warn!(
                "shutdown: abandoning in-flight deliveries; they stay queued and are retried at the next start"
            );
        }
    }

    /// Hands a freshly committed (or just rescheduled) record to the manager, so it need not
    /// read the whole queue back from disk to find it.
    pub fn submit(&self, record: Record) {
        self.inbox.lock().expect("inbox lock").push(record);
        self.wake.notify_one();
    }

    /// What is queued: the disk every `RESCAN` (the truth: it also sees `queue retry` and
    /// `queue delete`), and in between what `submit` handed in.
    async fn queued(&self) -> Option<Vec<Record>> {
        let fresh: Vec<Record> = std::mem::take(&mut *self.inbox.lock().expect("inbox lock"));
        let rescan = self
            .schedule
            .lock()
            .expect("schedule lock")
            .scanned_at
            .is_none_or(|at| at.elapsed() >= RESCAN);
        let mut schedule = if rescan {
            // Everything submitted so far is on disk already, so the listing includes it. What
            // is in flight now may change on disk while we read: its worker resubmits it.
            let busy: HashSet<QueueId> = self.in_flight.lock().expect("in-flight lock").clone();
            let listed = match self.spool.run(|spool| spool.list(Area::Queue)).await {
                Ok(records) => records,
                Err(e @ SpoolError::Worker(_)) => {
                    error!(error = %e, "queue scan task failed");
                    return None;
                }
                Err(e) => {
                    error!(error = %e, "cannot read the queue");
                    return None;
                }
            };
            let listed: Vec<Record> = listed
                .into_iter()
                .filter(|r| !busy.contains(&r.id))
                .collect();
            let mut schedule = self.schedule.lock().expect("schedule lock");
            schedule.records = listed.into_iter().map(|r| (r.id.clone(), r)).collect();
            schedule.scanned_at = Some(std::time::Instant::now());
            schedule
        } else {
            let mut schedule = self.schedule.lock().expect("schedule lock");
            for record in fresh {
                schedule.records.insert(record.id.clone(), record);
            }
            schedule
        };
        let in_flight = self.in_flight.lock().expect("in-flight lock");
        schedule.records.retain(|id, _| !in_flight.contains(id));
        Some(schedule.records.values().cloned().collect())
    }

    /// One look at the queue: dispatches what is due, returns when the next message falls due.
    async fn pass(self: &Arc<Self>) -> Option<SystemTime> {
        let records = self.queued().await?;
        let token_ok = self.token_usable(&records).await;
        let now = self.clock.now();
        let mut next_due: Option<SystemTime> = None;
        for record in records {
            match record.state {
                State::Held if token_ok => self.dispatch(release(record, now)),
                State::Held => {}
                State::Pending if !token_ok => {
                    self.reschedule(hold(record, &self.token_reason())).await
                }
                State::Pending if expired(&record, now, self.policy.max_age) => {
                    self.reschedule(expire(record, now)).await
                }
                State::Pending if record.next_attempt <= now => self.dispatch(record),
                State::Pending => {
                    next_due =
                        Some(next_due.map_or(record.next_attempt, |n| n.min(record.next_attempt)))
                }
                State::Failed => {}
            }
        }
        next_due
    }

    /// Writes a changed record and keeps the schedule in step with it.
    async fn reschedule(&self, record: Record) {
        let id = record.id.clone();
        let keep = record.state != State::Failed;
        self.persist(record.clone()).await;
        let mut schedule = self.schedule.lock().expect("schedule lock");
        if keep {
            schedule.records.insert(id, record);
        } else {
            schedule.records.remove(&id);
        }
    }

    /// Whether sends may go out now. While the state is not `valid` and mail waits, the token
    /// endpoint is asked again on the `HOLD_PROBE` backoff, or at once when the credential
    /// files changed.
    async fn token_usable(&self, records: &[Record]) -> bool {
        if !self.needs_token || self.tokens.status().state == TokenState::Valid {
            *self.last_probe.lock().expect("probe lock") = None;
            return true;
        }
        if records.is_empty() {
            return false;
        }
        let now = self.clock.now();
        let changed = self.tokens.inputs_changed();
        let failures = {
            let last = self.last_probe.lock().expect("probe lock");
            match *last {
                Some((at, failures)) if !changed => {
                    let wait = HOLD_PROBE.delay(failures, None, 0.5);
                    if now.duration_since(at).unwrap_or_default() < wait {
                        return false;
                    }
                    failures
                }
                _ => 0,
            }
        };
        let usable = self.tokens.token().await.is_ok();
        *self.last_probe.lock().expect("probe lock") = (!usable).then_some((now, failures + 1));
        usable
    }

    fn token_reason(&self) -> String {
        self.tokens.status().reason
    }

    fn dispatch(self: &Arc<Self>, record: Record) {
        let Ok(permit) = self.workers.clone().try_acquire_owned() else {
            return; // all workers busy; a finishing worker wakes the manager
        };
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(record.id.clone());
        self.schedule
            .lock()
            .expect("schedule lock")
            .records
            .remove(&record.id);
        let this = self.clone();
        let span = info_span!("deliver", queue_id = %record.id);
        tokio::spawn(
            async move {
                let id = record.id.clone();
                let again = this.deliver(record).await;
                this.in_flight.lock().expect("in-flight lock").remove(&id);
                drop(permit);
                match again {
                    Some(record) => this.submit(record),
                    None => this.wake.notify_one(),
                }
            }
            .instrument(span),
        );
    }

    /// Delivers one message; returns its record when it stays queued (retry or hold).
    async fn deliver(&self, record: Record) -> Option<Record> {
        // Held until the last part is sent: the plans keep decoded attachments in memory.
        let (plans, _memory) = match self.plans(&record).await {
            Ok(planned) => planned,
            Err(None) => return None,
            Err(Some(failure)) => return self.finish(record, Err(failure)).await,
        };
        let id = record.id.clone();
        let message = self.spool.message_path(Area::Queue, &id);
        let total = plans.len();
        let log = RecordLog {
            record: Mutex::new(record),
            spool: self.spool.clone(),
        };
        for (part, plan) in plans.iter().enumerate() {
            if log.snapshot().parts_done.contains(&part) {
                continue;
            }
            let semaphore = self.mailbox_semaphore(&plan.mailbox.path());
            let _permit = semaphore
                .acquire()
                .await
                .expect("mailbox semaphores are never closed");
            let delivery = Delivery {
                id: &id,
                part,
                plan,
                message: &message,
                drafts: &log,
            };
            let outcome = self.transport.send(&delivery).await;
            let mut record = log.snapshot();
            match outcome {
                Ok(()) => {
                    record.parts_done.push(part);
                    record.set_draft(part, None);
                    if record.parts_done.len() < total {
                        // Remember progress, so a crash or retry never resends a part.
                        self.persist(record.clone()).await;
                    }
                    *log.record.lock().expect("record lock") = record;
                }
                Err(e) => return self.finish(record, Err(e)).await,
            }
        }
        self.finish(log.snapshot(), Ok(())).await
    }

    /// Reads and converts the message, off the runtime (a 30 MiB parse takes tens of ms), once
    /// its estimated share of the memory budget is free; then keeps only what the plans hold.
    /// The raw bytes are dropped before anything is sent: big attachments are read from the
    /// spool again, a chunk at a time. `Err(None)`: nothing to do now (deleted meanwhile, or
    /// unreadable until the next rescan).
    async fn plans(
        &self,
        record: &Record,
    ) -> Result<(Vec<GraphPlan>, Reservation), Option<DeliveryError>> {
        let size = usize::try_from(record.size).unwrap_or(usize::MAX);
        let mut reservation = self.memory.reserve(convert_memory(size)).await;
        let (id, envelope) = (record.id.clone(), record.envelope.clone());
        let options = self.options.read().expect("options lock").clone();
        // The conversion's warnings (a header cut for Graph) carry the queue id.
        let span = tracing::Span::current();
        let converted = self.spool.run(move |spool| {
            let _span = span.enter();
            let raw = spool.read_message(&id, Area::Queue)?;
            Ok(convert(&raw, &envelope, &options))
        });
        let converted = match converted.await {
            Ok(converted) => converted,
            Err(SpoolError::NotFound(_)) => return Err(None), // deleted meanwhile
            Err(e) => {
                error!(error = %e, "cannot read the message; the next rescan retries it");
                return Err(None);
            }
        };
        let plans = converted.map_err(|e| {
            let error = LastError {
                status: None,
                code: "ConversionFailed".into(),
                message: e.to_string(),
            };
            // A missing `microsoft.sender` is fixed in the config, not in the message.
            Some(if e.is_permanent() {
                DeliveryError::Permanent(error)
            } else {
                DeliveryError::Transient {
                    error,
                    retry_after: None,
                }
            })
        })?;
        let held: usize = plans.iter().map(GraphPlan::held_bytes).sum();
        reservation.shrink_to(held.saturating_add(SEND_MEMORY));
        Ok((plans, reservation))
    }

    async fn finish(&self, record: Record, outcome: Result<(), DeliveryError>) -> Option<Record> {
        match outcome {
            Ok(()) => {
                // Graph accepted it: that is what "delivered" counts, whatever the clean-up does.
                self.counters.delivered();
                let id = record.id.clone();
                match self.spool.run(move |spool| spool.remove(&id)).await {
                    Ok(_) | Err(SpoolError::NotFound(_)) => {
                        info!(from = %record.envelope.mail_from, recipients = record.envelope.rcpt_to.len(), "delivered");
                    }
                    // Delivered but still on disk: it will be sent again. Say so loudly.
                    Err(e @ SpoolError::Worker(_)) => {
                        error!(error = %e, "delivered, but the removal task failed")
                    }
                    Err(e) => {
                        error!(error = %e, "delivered, but could not remove it from the spool")
                    }
                }
                None
            }
            Err(failure) => {
                let next =
                    apply_failure(record, &failure, self.clock.now(), &self.policy, jitter());
                match next.state {
                    State::Failed => {
                        self.counters.failed();
                        warn!(error = %failure, "giving up; moved to failed/");
                    }
                    State::Held => warn!(error = %failure, "held until re-authorization"),
                    State::Pending => info!(
                        error = %failure,
                        attempts = next.attempts,
                        next_attempt = %humantime::format_rfc3339_seconds(next.next_attempt),
                        "will retry"
                    ),
                }
                self.persist(next.clone()).await;
                (next.state != State::Failed).then_some(next)
            }
        }
    }

    /// Writes `record` to the spool, moving it to `failed/` when it failed.
    async fn persist(&self, record: Record) {
        let id = record.id.clone();
        let result = self.spool.run(move |spool| match record.state {
            State::Failed => spool.relocate(&record, Area::Queue),
            _ => spool.update(&record),
        });
        match result.await {
            Ok(()) | Err(SpoolError::NotFound(_)) => {}
            Err(e @ SpoolError::Worker(_)) => {
                error!(queue_id = %id, error = %e, "spool update task failed")
            }
            Err(e) => error!(queue_id = %id, error = %e, "cannot update the spool record"),
        }
    }

    fn mailbox_semaphore(&self, mailbox: &str) -> Arc<Semaphore> {
        let mut map = self.mailboxes.lock().expect("mailbox lock");
        map.entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_MAILBOX)))
            .clone()
    }
}

/// The record of the message being delivered, as the transport's [`DraftLog`]: each change is
/// written to the spool before the transport goes on.
struct RecordLog {
    record: Mutex<Record>,
    spool: Spool,
}

impl RecordLog {
    fn snapshot(&self) -> Record {
        self.record.lock().expect("record lock").clone()
    }
}

#[async_trait::async_trait]
impl DraftLog for RecordLog {
    fn previous(&self, part: usize) -> Option<DraftNote> {
        self.record
            .lock()
            .expect("record lock")
            .draft(part)
            .cloned()
    }

    async fn record(&self, part: usize, note: Option<DraftNote>) -> Result<(), String> {
        let updated = {
            let mut record = self.record.lock().expect("record lock");
            record.set_draft(part, note);
            record.clone()
        };
        self.spool
            .run(move |spool| spool.update(&updated))
            .await
            .map_err(|e| e.to_string())
    }
}

/// The record after a failed attempt (pure: the state machine of design section 5).
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

fn hold(mut record: Record, reason: &str) -> Record {
    record.state = State::Held;
    record.last_error = Some(LastError {
        status: None,
        code: "HeldForReauthorization".into(),
        message: reason.to_string(),
    });
    record
}

fn release(mut record: Record, now: SystemTime) -> Record {
    record.state = State::Pending;
    record.next_attempt = now;
    record
}

fn expired(record: &Record, now: SystemTime, max_age: Duration) -> bool {
    now.duration_since(record.received_at).unwrap_or_default() >= max_age
}

fn expire(mut record: Record, now: SystemTime) -> Record {
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
mod tests {
    use super::*;
    use crate::TestResult;
    use crate::clock::ManualClock;
    use crate::envelope::Envelope;

    const POLICY: RetryPolicy = RetryPolicy {
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

    /// A token source that is dead until told otherwise, counting how often it is asked.
    struct DeadTokens {
        asked: std::sync::atomic::AtomicUsize,
        status: crate::auth::StatusCell,
    }

    #[async_trait::async_trait]
    impl TokenSource for DeadTokens {
        async fn token(&self) -> Result<crate::auth::AccessToken, crate::auth::TokenError> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(crate::auth::TokenError::Reauth("AADSTS700082".into()))
        }
        fn invalidate(&self, _: &crate::auth::AccessToken) {}
        fn status_cell(&self) -> &crate::auth::StatusCell {
            &self.status
        }
        fn rejected(&self, _: &str) {}
    }

    struct NeverCalled;

    #[async_trait::async_trait]
    impl Transport for NeverCalled {
        async fn send(&self, _: &Delivery<'_>) -> Result<(), DeliveryError> {
            panic!("nothing may be sent while the token is dead");
        }
    }

    #[tokio::test]
    async fn held_mail_probes_the_token_endpoint_on_a_slow_doubling_backoff() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path())?;
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let held = hold(
            spool.commit(
                &Envelope::new("a@x.org", vec!["b@y.org".into()]),
                b"m",
                clock.now(),
            )?,
            "dead",
        );
        spool.update(&held)?;
        let tokens = Arc::new(DeadTokens {
            asked: Default::default(),
            status: crate::auth::StatusCell::new(crate::auth::TokenStatus {
                state: TokenState::ReauthRequired,
                reason: "AADSTS700082".into(),
                expires_at: None,
            }),
        });
        let manager = QueueManager::new(
            spool,
            Arc::new(NeverCalled),
            tokens.clone(),
            ConvertOptions::default(),
            POLICY,
            clock.clone(),
            Arc::new(Counters::default()),
            true,
            MemoryBudget::standalone(1 << 20, 1024),
        );
        let asked = || tokens.asked.load(std::sync::atomic::Ordering::SeqCst);
        manager.pass().await;
        assert_eq!(asked(), 1, "the first pass asks at once");
        // Then 1 min, 2 min, 4 min, 8 min, 10 min, 10 min apart; never in between.
        for wait in [60, 120, 240, 480, 600, 600] {
            clock.advance(Duration::from_secs(wait - 1));
            let before = asked();
            manager.pass().await;
            assert_eq!(asked(), before, "asked again before {wait} s");
            clock.advance(Duration::from_secs(1));
            manager.pass().await;
            assert_eq!(asked(), before + 1, "not asked after {wait} s");
        }
        Ok(())
    }

    /// Sends nothing, but says which message it was asked to send.
    struct Recording(tokio::sync::mpsc::UnboundedSender<QueueId>);

    #[async_trait::async_trait]
    impl Transport for Recording {
        async fn send(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
            let _ = self.0.send(delivery.id.clone());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn conversion_waits_for_the_shared_memory_budget_and_never_fails_for_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path())?;
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let envelope = Envelope::new("a@x.org", vec!["b@y.org".into()]);
        let record = spool.commit(&envelope, b"From: a@x.org\r\n\r\nhi\r\n", clock.now())?;
        // Far less than one conversion's estimate: it may only run with all of it.
        let budget = MemoryBudget::standalone(256 * 1024, 64 * 1024);
        let (sent, mut sends) = tokio::sync::mpsc::unbounded_channel();
        let manager = QueueManager::new(
            spool.clone(),
            Arc::new(Recording(sent)),
            Arc::new(NeverAsked),
            ConvertOptions {
                sender: Some("a@x.org".into()),
                ..ConvertOptions::default()
            },
            POLICY,
            clock.clone(),
            Arc::new(Counters::default()),
            false,
            budget.clone(),
        );
        // SMTP sessions hold every byte of it.
        let receiving = budget.reserve(usize::MAX).await;
        manager.pass().await;
        let waited = tokio::time::timeout(Duration::from_secs(3600), sends.recv()).await;
        assert!(
            waited.is_err(),
            "nothing converted while the budget is spent"
        );
        let queued = spool.list(Area::Queue)?;
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].state, queued[0].attempts), (State::Pending, 0));

        drop(receiving);
        assert_eq!(sends.recv().await, Some(record.id));
        // Delivered: the share is given back once the delivery task ends.
        while budget.available_bytes() < budget.total_bytes() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(spool.list(Area::Queue)?.is_empty(), "delivered");
        Ok(())
    }

    /// Dry-run delivery needs no token.
    struct NeverAsked;

    #[async_trait::async_trait]
    impl TokenSource for NeverAsked {
        async fn token(&self) -> Result<crate::auth::AccessToken, crate::auth::TokenError> {
            panic!("no token is needed");
        }
        fn invalidate(&self, _: &crate::auth::AccessToken) {}
        fn status_cell(&self) -> &crate::auth::StatusCell {
            panic!("no token is needed");
        }
        fn rejected(&self, _: &str) {}
    }
}
