//! The queue manager: the one owner of the schedule. It wakes on new mail, on a worker's report,
//! on the next due time, or on a periodic rescan of the disk (which also picks up `queue retry`
//! and `delete` from the CLI and the status page); holds mail while the token state is not
//! `valid`; and hands due messages to at most `WORKERS` delivery tasks.
//!
//! Nothing here is shared: the schedule, what is in flight and the token probe live in the
//! manager's task alone. Other parts talk to it through a [`QueueHandle`] (new mail, a reloaded
//! sender policy, a wake-up), and each worker reports over the same channel when it is done,
//! with the record that stays queued. So what is in flight and what is scheduled can never
//! disagree: a record is the manager's or one worker's, never both.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use super::Transport;
use super::backoff::Backoff;
use super::retry::{RetryPolicy, expire, expired, hold, release};
use super::worker::{Mailboxes, Worker};
use crate::auth::{TokenSource, TokenState};
use crate::clock::Clock;
use crate::convert::ConvertOptions;
use crate::envelope::QueueId;
use crate::memory::MemoryBudget;
use crate::metrics::Counters;
use crate::spool::{Area, Record, Spool, SpoolError, State};

/// Messages being worked on at once, across all mailboxes.
const WORKERS: usize = 16;
/// The disk is the truth: rescan at least this often, whatever the in-memory hints say.
const RESCAN: Duration = Duration::from_secs(5);
/// While mail is held, ask the token endpoint again on this slow backoff (1 min doubling to
/// 10 min), so a transient outage that was misread as fatal heals by itself.
const HOLD_PROBE: Backoff = Backoff {
    min: Duration::from_secs(60),
    max: Duration::from_secs(600),
};

/// What the queue manager is built from.
pub struct QueueParts {
    pub spool: Spool,
    pub transport: Arc<dyn Transport>,
    /// Where sends get their token; `None` in dry run, whose outbox needs none.
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// The sender policy (`microsoft.sender`, `from_rewrite`); [`QueueHandle::set_options`]
    /// replaces it on reload.
    pub options: ConvertOptions,
    pub policy: RetryPolicy,
    pub clock: Arc<dyn Clock>,
    pub counters: Arc<Counters>,
    /// Shared with SMTP reception (`smtp.data_memory_bytes`).
    pub memory: MemoryBudget,
}

/// What a pass does to one record.
enum Step {
    /// Hand it to a worker (a free one is counted for it).
    Dispatch(Record),
    /// Write it back held or expired.
    Rewrite(Record),
}

/// What reaches the manager over its channel.
enum Event {
    /// A freshly committed record, so the manager need not read the queue back to find it.
    Submitted(Record),
    /// A worker is done with `id`; `next` is its record when it stays queued (retry or hold).
    Finished { id: QueueId, next: Option<Record> },
}

/// How the rest of the relay talks to the queue manager. Cheap to clone.
#[derive(Clone)]
pub struct QueueHandle {
    events: mpsc::UnboundedSender<Event>,
    options: watch::Sender<ConvertOptions>,
    wake: Arc<Notify>,
}

impl QueueHandle {
    /// Hands in a record just committed to the spool. After shutdown nobody listens, and the
    /// record waits on disk for the next start.
    pub fn submit(&self, record: Record) {
        let _ = self.events.send(Event::Submitted(record));
    }

    /// Takes the sender policy of a reloaded configuration; the next conversion uses it.
    pub fn set_options(&self, options: ConvertOptions) {
        self.options.send_replace(options);
        self.wake();
    }

    /// Makes the manager look at the queue now (a token change, a retry asked for).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The wake-up, for parts that may not depend on delivery (status page, notices).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// The queue as the manager knows it: read from disk at each rescan, kept current in between
/// from submitted records and from workers' reports. Holds no record that is in flight.
#[derive(Default)]
struct Schedule {
    records: BTreeMap<QueueId, Record>,
    /// Tokio's clock, so tests with a paused clock see rescans.
    scanned_at: Option<Instant>,
}

impl Schedule {
    fn rescan_due(&self) -> bool {
        self.scanned_at.is_none_or(|at| at.elapsed() >= RESCAN)
    }

    fn replace(&mut self, listed: Vec<Record>) {
        self.records = listed.into_iter().map(|r| (r.id.clone(), r)).collect();
        self.scanned_at = Some(Instant::now());
    }

    fn put(&mut self, record: Record) {
        self.records.insert(record.id.clone(), record);
    }
}

pub struct QueueManager {
    worker: Arc<Worker>,
    tokens: Option<Arc<dyn TokenSource>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Handed to each worker to report back on.
    reports: mpsc::UnboundedSender<Event>,
    wake: Arc<Notify>,
    schedule: Schedule,
    in_flight: HashSet<QueueId>,
    /// When the token endpoint was last asked while mail was held, and how many such probes
    /// in a row failed.
    last_probe: Option<(SystemTime, u32)>,
}

impl QueueManager {
    /// The manager (to `run` in a task of its own) and the handle the rest of the relay keeps.
    pub fn new(parts: QueueParts) -> (QueueManager, QueueHandle) {
        let (reports, events) = mpsc::unbounded_channel();
        let (options_tx, options) = watch::channel(parts.options);
        let wake = Arc::new(Notify::new());
        let worker = Arc::new(Worker {
            spool: parts.spool,
            transport: parts.transport,
            clock: parts.clock,
            counters: parts.counters,
            policy: parts.policy,
            memory: parts.memory,
            options,
            mailboxes: Mailboxes::default(),
        });
        let handle = QueueHandle {
            events: reports.clone(),
            options: options_tx,
            wake: wake.clone(),
        };
        let manager = QueueManager {
            worker,
            tokens: parts.tokens,
            events,
            reports,
            wake,
            schedule: Schedule::default(),
            in_flight: HashSet::new(),
            last_probe: None,
        };
        (manager, handle)
    }

    /// Runs until `shutdown`; then waits up to `grace` for in-flight deliveries. An abandoned
    /// delivery stays in the spool and is retried at the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        loop {
            let next = self.pass().await;
            let sleep = next
                .and_then(|at| at.duration_since(self.worker.clock.now()).ok())
                .unwrap_or(RESCAN)
                .min(RESCAN);
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.events.recv() => event,
                _ = self.wake.notified() => None,
                _ = tokio::time::sleep(sleep) => None,
            };
            if let Some(event) = event {
                self.take(event);
            }
            // One pass for everything that arrived meanwhile.
            while let Ok(event) = self.events.try_recv() {
                self.take(event);
            }
        }
        self.wait_for_workers(grace).await;
    }

    fn take(&mut self, event: Event) {
        match event {
            Event::Submitted(record) => self.schedule.put(record),
            Event::Finished { id, next } => {
                self.in_flight.remove(&id);
                if let Some(record) = next {
                    self.schedule.put(record);
                }
            }
        }
    }

    async fn wait_for_workers(&mut self, grace: Duration) {
        let finished = tokio::time::timeout(grace, async {
            while !self.in_flight.is_empty() {
                match self.events.recv().await {
                    Some(event) => self.take(event),
                    None => break,
                }
            }
        });
        if finished.await.is_err() {
            warn!(
                "shutdown: abandoning in-flight deliveries; they stay queued and are retried at the next start"
            );
        }
    }

    /// Brings the schedule up to date: the disk every `RESCAN` (the truth: it also sees
    /// `queue retry` and `queue delete`), and in between what events brought; without what is
    /// in flight. `None` when the disk could not be read.
    async fn refresh(&mut self) -> Option<()> {
        if self.schedule.rescan_due() {
            // A worker may rewrite its record while we read; its report brings the new one.
            match self.worker.spool.run(|spool| spool.list(Area::Queue)).await {
                Ok(listed) => self.schedule.replace(listed),
                Err(e @ SpoolError::Worker(_)) => {
                    error!(error = %e, "queue scan task failed");
                    return None;
                }
                Err(e) => {
                    error!(error = %e, "cannot read the queue");
                    return None;
                }
            }
        }
        let in_flight = &self.in_flight;
        self.schedule
            .records
            .retain(|id, _| !in_flight.contains(id));
        Some(())
    }

    /// One look at the queue: dispatches what is due, returns when the next message falls due.
    async fn pass(&mut self) -> Option<SystemTime> {
        self.refresh().await?;
        let held_for = self.hold_reason(!self.schedule.records.is_empty()).await;
        let (steps, next_due) = self.plan_pass(held_for.as_deref());
        for step in steps {
            match step {
                Step::Dispatch(record) => self.dispatch(record),
                Step::Rewrite(record) => self.reschedule(record).await,
            }
        }
        next_due
    }

    /// What this pass does, read from the schedule without copying it: only the records that
    /// change are cloned (a queue of thousands is looked at on every event), and no more are
    /// dispatched than there are free workers: the next to finish reports back, and the pass
    /// after its report goes on.
    fn plan_pass(&self, held_for: Option<&str>) -> (Vec<Step>, Option<SystemTime>) {
        let now = self.worker.clock.now();
        let max_age = self.worker.policy.max_age;
        let mut free = WORKERS.saturating_sub(self.in_flight.len());
        let mut steps = Vec::new();
        let mut next_due: Option<SystemTime> = None;
        let mut dispatch = |record: Record, steps: &mut Vec<Step>| {
            if free > 0 {
                free -= 1;
                steps.push(Step::Dispatch(record));
            }
        };
        for record in self.schedule.records.values() {
            match (record.state, held_for) {
                (State::Held, None) => dispatch(release(record.clone(), now), &mut steps),
                (State::Held, Some(_)) | (State::Failed, _) => {}
                (State::Pending, Some(reason)) => {
                    steps.push(Step::Rewrite(hold(record.clone(), reason)))
                }
                (State::Pending, None) if expired(record, now, max_age) => {
                    steps.push(Step::Rewrite(expire(record.clone(), now)))
                }
                (State::Pending, None) if record.next_attempt <= now => {
                    dispatch(record.clone(), &mut steps)
                }
                (State::Pending, None) => {
                    next_due =
                        Some(next_due.map_or(record.next_attempt, |n| n.min(record.next_attempt)))
                }
            }
        }
        (steps, next_due)
    }

    /// Writes a changed record and keeps the schedule in step with it.
    async fn reschedule(&mut self, record: Record) {
        let keep = record.state != State::Failed;
        self.worker.persist(record.clone()).await;
        if keep {
            self.schedule.put(record);
        } else {
            self.schedule.records.remove(&record.id);
        }
    }

    /// Why mail must be held now, or `None` when sends may go out. While the state is not
    /// `valid` and mail waits, the token endpoint is asked again on the `HOLD_PROBE` backoff,
    /// or at once when the credential files changed.
    async fn hold_reason(&mut self, mail_waits: bool) -> Option<String> {
        let tokens = self.tokens.as_ref()?;
        let status = tokens.status();
        if status.state == TokenState::Valid {
            self.last_probe = None;
            return None;
        }
        if !mail_waits {
            return Some(status.reason);
        }
        let now = self.worker.clock.now();
        let changed = tokens.inputs_changed();
        let failures = match self.last_probe {
            Some((at, failures)) if !changed => {
                let wait = HOLD_PROBE.delay(failures, None, 0.5);
                if now.duration_since(at).unwrap_or_default() < wait {
                    return Some(status.reason);
                }
                failures
            }
            _ => 0,
        };
        let usable = tokens.token().await.is_ok();
        self.last_probe = (!usable).then_some((now, failures + 1));
        (!usable).then(|| tokens.status().reason)
    }

    /// Hands `record` to a delivery task; `plan_pass` saw to it that a worker is free.
    fn dispatch(&mut self, record: Record) {
        let id = record.id.clone();
        self.in_flight.insert(id.clone());
        self.schedule.records.remove(&id);
        let worker = self.worker.clone();
        let report = Report {
            id: Some(id.clone()),
            to: self.reports.clone(),
        };
        tokio::spawn(
            async move { report.finished(worker.deliver(record).await) }
                .instrument(info_span!("deliver", queue_id = %id)),
        );
    }
}

/// A worker's report to the manager. Sent even when the delivery panicked (dropped without
/// `finished`): the message then waits on disk for the next rescan instead of staying in
/// flight for ever.
struct Report {
    id: Option<QueueId>,
    to: mpsc::UnboundedSender<Event>,
}

impl Report {
    fn finished(mut self, next: Option<Record>) {
        self.send(next);
    }

    fn send(&mut self, next: Option<Record>) {
        if let Some(id) = self.id.take() {
            // Nobody listens only after shutdown; the spool already holds the outcome.
            let _ = self.to.send(Event::Finished { id, next });
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.send(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use crate::clock::ManualClock;
    use crate::deliver::retry::tests::POLICY;
    use crate::deliver::{Delivery, DeliveryError};
    use crate::envelope::Envelope;

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
        let (mut manager, _queue) = QueueManager::new(QueueParts {
            spool,
            transport: Arc::new(NeverCalled),
            tokens: Some(tokens.clone()),
            options: ConvertOptions::default(),
            policy: POLICY,
            clock: clock.clone(),
            counters: Arc::new(Counters::default()),
            memory: MemoryBudget::standalone(1 << 20, 1024),
        });
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

    /// A queue over `spool` that converts within `memory` and reports each message it sends.
    fn recording_queue(
        spool: &Spool,
        clock: Arc<ManualClock>,
        memory: &MemoryBudget,
    ) -> (
        QueueManager,
        QueueHandle,
        tokio::sync::mpsc::UnboundedReceiver<QueueId>,
    ) {
        let (sent, sends) = tokio::sync::mpsc::unbounded_channel();
        let (manager, queue) = QueueManager::new(QueueParts {
            spool: spool.clone(),
            transport: Arc::new(Recording(sent)),
            tokens: None, // dry-run delivery needs no token
            options: ConvertOptions {
                sender: Some("a@x.org".into()),
                ..ConvertOptions::default()
            },
            policy: POLICY,
            clock,
            counters: Arc::new(Counters::default()),
            memory: memory.clone(),
        });
        (manager, queue, sends)
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
        let (mut manager, _queue, mut sends) = recording_queue(&spool, clock, &budget);
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

    /// 200 KB of text reserves about 2 MiB by its shape, but 21 MiB (here: the whole budget)
    /// when its record has no shape: with half the budget held by SMTP sessions, the first
    /// converts at once and the second waits.
    #[tokio::test(start_paused = true)]
    async fn conversion_reserves_by_the_shape_its_record_keeps() -> TestResult {
        let message = format!(
            "From: a@x.org\r\n\r\n{}",
            "a line of text\r\n".repeat(12_500)
        );
        let shape = crate::convert::precheck(message.as_bytes())?;
        let envelope = Envelope::new("a@x.org", vec!["b@y.org".into()]);
        for shape in [Some(shape), None] {
            let dir = tempfile::tempdir()?;
            let spool = Spool::open(dir.path())?;
            let clock = Arc::new(ManualClock::new(SystemTime::now()));
            let record = spool.commit_shaped(&envelope, message.as_bytes(), shape, clock.now())?;
            let budget = MemoryBudget::standalone(8 * 1024 * 1024, 64 * 1024);
            let (mut manager, _queue, mut sends) = recording_queue(&spool, clock, &budget);
            let receiving = budget.reserve(4 * 1024 * 1024).await;
            manager.pass().await;
            let sent = tokio::time::timeout(Duration::from_secs(3600), sends.recv()).await;
            match shape {
                Some(_) => assert_eq!(sent?, Some(record.id), "converted beside reception"),
                None => assert!(sent.is_err(), "waited for the worst case"),
            }
            drop(receiving);
        }
        Ok(())
    }

    /// A transport whose sends wait at a gate, counting how many are inside at once and how
    /// often each message was sent.
    struct Gated {
        gate: tokio::sync::Semaphore,
        inside: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        sent: std::sync::Mutex<Vec<QueueId>>,
        panic_first: std::sync::atomic::AtomicBool,
    }

    impl Gated {
        fn new(open: usize, panic_first: bool) -> Arc<Gated> {
            Arc::new(Gated {
                gate: tokio::sync::Semaphore::new(open),
                inside: Default::default(),
                most: Default::default(),
                sent: Default::default(),
                panic_first: panic_first.into(),
            })
        }
    }

    #[async_trait::async_trait]
    impl Transport for Gated {
        async fn send(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.panic_first.swap(false, SeqCst) {
                panic!("a transport bug");
            }
            let now = self.inside.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            self.inside.fetch_sub(1, SeqCst);
            self.sent.lock().expect("sent").push(delivery.id.clone());
            Ok(())
        }
    }

    /// A running manager over a fresh spool holding one message from each of `senders`
    /// (so each has a mailbox of its own), with the dry-run token policy.
    async fn running(
        senders: usize,
        transport: Arc<Gated>,
    ) -> Result<
        (tempfile::TempDir, Spool, QueueHandle, CancellationToken),
        Box<dyn std::error::Error>,
    > {
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path())?;
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let (manager, queue) = QueueManager::new(QueueParts {
            spool: spool.clone(),
            transport,
            tokens: None,
            options: ConvertOptions {
                allowed_senders: vec!["*@x.org".into()],
                ..ConvertOptions::default()
            },
            policy: POLICY,
            clock: clock.clone(),
            counters: Arc::new(Counters::default()),
            memory: MemoryBudget::standalone(1 << 30, 1 << 20),
        });
        for i in 0..senders {
            let from = format!("u{i}@x.org");
            let message = format!("From: {from}\r\nTo: b@y.org\r\n\r\nhi\r\n");
            let envelope = Envelope::new(&from, vec!["b@y.org".into()]);
            queue.submit(spool.commit(&envelope, message.as_bytes(), clock.now())?);
        }
        let stop = CancellationToken::new();
        tokio::spawn(manager.run(stop.clone(), Duration::from_secs(10)));
        Ok((dir, spool, queue, stop))
    }

    /// Waits (on the paused clock) until `what` holds; fails after an hour of it.
    async fn until(what: impl Fn() -> bool, waiting_for: &str) -> Result<(), String> {
        let wait = async {
            while !what() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .map_err(|_| format!("still waiting for {waiting_for} after an hour"))
    }

    fn sent(transport: &Gated) -> Vec<QueueId> {
        transport.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn queue_empty(spool: &Spool) -> bool {
        spool.list(Area::Queue).is_ok_and(|q| q.is_empty())
    }

    #[tokio::test(start_paused = true)]
    async fn sixteen_deliveries_at_most_and_the_next_starts_when_one_ends() -> TestResult {
        use std::sync::atomic::Ordering::SeqCst;
        let transport = Gated::new(0, false);
        let (_dir, spool, _queue, stop) = running(20, transport.clone()).await?;
        let inside = || transport.inside.load(SeqCst);
        until(|| inside() >= WORKERS, "sixteen sends").await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(inside(), WORKERS, "no seventeenth");
        transport.gate.add_permits(1);
        until(|| sent(&transport).len() == 1, "the first to finish").await?;
        until(|| inside() == WORKERS, "the next one to take its slot").await?;
        transport.gate.add_permits(100);
        until(|| queue_empty(&spool), "an empty queue").await?;
        assert_eq!(sent(&transport).len(), 20);
        assert_eq!(transport.most.load(SeqCst), WORKERS);
        stop.cancel();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_in_flight_is_never_sent_again_by_the_rescans_meanwhile() -> TestResult {
        use std::sync::atomic::Ordering::SeqCst;
        let transport = Gated::new(0, false);
        let (_dir, spool, _queue, stop) = running(2, transport.clone()).await?;
        until(|| transport.inside.load(SeqCst) >= 2, "both sends").await?;
        // A minute of rescans (every 5 s) reading both messages from disk while in flight.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(transport.most.load(SeqCst), 2, "a message was sent twice");
        transport.gate.add_permits(100);
        until(|| queue_empty(&spool), "an empty queue").await?;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sent(&transport).len(), 2, "each message once");
        stop.cancel();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_that_panics_gives_its_message_back_to_the_queue() -> TestResult {
        let transport = Gated::new(10, true);
        let (_dir, spool, _queue, stop) = running(1, transport.clone()).await?;
        until(
            || sent(&transport).len() == 1,
            "the message to leave its panicked delivery and be sent",
        )
        .await?;
        until(|| queue_empty(&spool), "an empty queue").await?;
        stop.cancel();
        Ok(())
    }
}
