//! The durable queue on disk: a message is committed (tmp → fsync → rename → fsync dir) before
//! SMTP answers 250, and only removed once Graph accepted it. The spool is the truth; everything
//! in memory is a hint. Layout: `tmp/` (being written), `queue/` (pending and held),
//! `failed/`, `corrupt/` (unreadable, never deleted automatically), `outbox/` (dry run).

mod envelope;
mod group_sync;
mod record;
mod store;
mod admin;

pub use admin::{QueueCounts, list_line};
pub use envelope::{Envelope, QueueId};
pub use record::{DraftNote, LastError, Record, State};
pub use store::{Area, ScanReport, Spool, SpoolError, WriteHook};
