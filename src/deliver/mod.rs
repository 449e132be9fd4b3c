//! Delivery: the queue manager that takes committed mail from the spool to Graph, the
//! transports it uses (Graph, or the dry-run outbox), backoff, and the outcome types. It never
//! removes a message before Graph accepted it, and never parks one without a readable reason.

pub mod backoff;
mod graph;
mod outbox;
mod queue;
pub mod source;
pub mod steps;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

pub use graph::GraphTransport;
pub use outbox::Outbox;
pub use queue::{QueueManager, RetryPolicy, apply_failure};

use crate::convert::GraphPlan;
use crate::envelope::QueueId;
use crate::spool::{DraftNote, LastError};

/// Why a delivery attempt did not succeed, by what happens to the message next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (throttling, outages, network): back off, or wait `retry_after`.
    #[error("temporary failure: {error}")]
    Transient {
        error: LastError,
        retry_after: Option<Duration>,
    },
    /// Graph refused this message for good: move it to `failed/` with the reason.
    #[error("permanent failure: {error}", error = .0)]
    Permanent(LastError),
    /// The credential or grant is dead: hold the message until someone re-authorizes.
    #[error("re-authorization required: {0}")]
    Reauth(String),
    /// No credentials configured: hold the message.
    #[error("no credentials: {0}")]
    Missing(String),
}

/// One Graph message to deliver.
pub struct Delivery<'a> {
    pub id: &'a QueueId,
    /// Numbers the plans of a split message (0 for the first).
    pub part: usize,
    pub plan: &'a GraphPlan,
    /// The spooled `.eml` the plan was made from: streamed attachments are read from it.
    pub message: &'a Path,
    /// Where this part's draft is recorded (the big-mail path).
    pub drafts: &'a dyn DraftLog,
}

/// Sends one Graph plan.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError>;
}

/// The spool record's memory of the drafts a message has in the mailbox.
#[async_trait]
pub trait DraftLog: Send + Sync {
    /// The draft an earlier attempt left for `part`.
    fn previous(&self, part: usize) -> Option<DraftNote>;
    /// Durably records `part`'s draft (`None`: it has none) before the next request is made.
    async fn record(&self, part: usize, note: Option<DraftNote>) -> Result<(), String>;
}

/// What the Graph transport reports to `/metrics`: request latency (a Prometheus histogram
/// with fixed buckets) and how big-mail uploads went.
#[derive(Debug, Default)]
pub struct GraphStats {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    uploaded_bytes: AtomicU64,
    chunk_retries: AtomicU64,
    session_renewals: AtomicU64,
}

/// Upload counters: bytes upload sessions took, chunks sent again, sessions started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadCounts {
    pub bytes: u64,
    pub chunk_retries: u64,
    pub session_renewals: u64,
}

/// Upper bounds in seconds.
pub const LATENCY_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl GraphStats {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// (cumulative bucket counts, count, sum in seconds)
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }

    pub fn uploaded(&self, bytes: usize) {
        self.uploaded_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn chunk_retried(&self) {
        self.chunk_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_renewed(&self) {
        self.session_renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn uploads(&self) -> UploadCounts {
        UploadCounts {
            bytes: self.uploaded_bytes.load(Ordering::Relaxed),
            chunk_retries: self.chunk_retries.load(Ordering::Relaxed),
            session_renewals: self.session_renewals.load(Ordering::Relaxed),
        }
    }
}
