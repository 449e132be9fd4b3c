//! Delivery: takes committed mail from the spool to Graph. The queue manager (`queue`) owns the
//! schedule and hands due messages to workers (`worker`: convert, send, write the outcome);
//! `retry` says what a failed attempt does to a record; the transports are Graph (`graph`) and
//! the dry-run outbox. It never removes a message before Graph accepted it, and never parks
//! one without a readable reason.

pub mod backoff;
mod graph;
mod outbox;
mod queue;
mod retry;
pub mod source;
pub mod steps;
mod worker;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

pub use graph::GraphTransport;
pub use outbox::Outbox;
pub use queue::{QueueHandle, QueueManager, QueueParts};
pub use retry::{RetryPolicy, apply_failure};

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
