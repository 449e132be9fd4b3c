//! One delivery, start to end: converts the spooled message once its share of the memory budget
//! is free, sends each Graph plan with at most `PER_MAILBOX` requests in flight per mailbox,
//! and writes the outcome to the spool (removed when delivered, rescheduled, held or failed).
//! A worker owns nothing of the schedule: it returns the record that stays queued, and the
//! queue manager takes it from there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

use super::backoff::jitter;
use super::retry::{RetryPolicy, apply_failure};
use super::{Delivery, DeliveryError, DraftLog, Transport};
use crate::clock::Clock;
use crate::convert::{ConvertOptions, GraphPlan, convert, plans_for};
use crate::memory::{MemoryBudget, Reservation, conversion_bytes};
use crate::metrics::Counters;
use crate::spool::{Area, DraftNote, LastError, Record, Spool, SpoolError, State};

/// Graph allows four concurrent requests per mailbox.
const PER_MAILBOX: usize = 4;
/// What one delivery holds beyond its plan while it sends: one request body serialized (< 4 MB)
/// and one upload chunk (≤ 4 MiB).
const SEND_MEMORY: usize = 8 * 1024 * 1024;

/// What every delivery shares: where mail is, how it is sent, and the limits it keeps to.
pub(super) struct Worker {
    pub spool: Spool,
    pub transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
    pub counters: Arc<Counters>,
    pub policy: RetryPolicy,
    /// Shared with SMTP reception: conversion and the plans being sent reserve from it.
    pub memory: MemoryBudget,
    /// The sender policy; a reload replaces it, and the next conversion reads the new one.
    pub options: watch::Receiver<ConvertOptions>,
    pub mailboxes: Mailboxes,
}

impl Worker {
    /// Delivers one message; returns its record when it stays queued (retry or hold).
    pub async fn deliver(&self, record: Record) -> Option<Record> {
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
            let _permit = self.mailboxes.acquire(&plan.mailbox.path()).await;
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
                    log.replace(record);
                }
                Err(e) => return self.finish(record, Err(e)).await,
            }
        }
        self.finish(log.snapshot(), Ok(())).await
    }

    /// Reads and converts the message, off the runtime (a 30 MiB parse takes tens of ms), once
    /// its share of the memory budget (by the shape its record keeps: `conversion_bytes`) is
    /// free; then keeps only what the plans hold.
    /// The raw bytes are dropped before anything is sent: big attachments are read from the
    /// spool again, a chunk at a time. `Err(None)`: nothing to do now (deleted meanwhile, or
    /// unreadable until the next rescan).
    async fn plans(
        &self,
        record: &Record,
    ) -> Result<(Vec<GraphPlan>, Reservation), Option<DeliveryError>> {
        let size = usize::try_from(record.size).unwrap_or(usize::MAX);
        let plans = plans_for(record.envelope.rcpt_to.len());
        let needed = conversion_bytes(size, record.shape.as_ref(), plans);
        let mut reservation = self.memory.reserve(needed).await;
        let (id, envelope) = (record.id.clone(), record.envelope.clone());
        let options = self.options.borrow().clone();
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
                self.delivered(record).await;
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

    /// Graph accepted it: that is what "delivered" counts, whatever the clean-up does.
    async fn delivered(&self, record: Record) {
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
    }

    /// Writes `record` to the spool, moving it to `failed/` when it failed.
    pub async fn persist(&self, record: Record) {
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
}

/// The `PER_MAILBOX` limit: one semaphore per mailbox (by its Graph path, case-insensitive),
/// made the first time a delivery sends from it.
#[derive(Default)]
pub(super) struct Mailboxes(Mutex<HashMap<String, Arc<Semaphore>>>);

impl Mailboxes {
    async fn acquire(&self, mailbox: &str) -> tokio::sync::OwnedSemaphorePermit {
        let semaphore = self
            .0
            .lock()
            .expect("mailbox lock")
            .entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_MAILBOX)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("mailbox semaphores are never closed")
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

    fn replace(&self, record: Record) {
        *self.record.lock().expect("record lock") = record;
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
