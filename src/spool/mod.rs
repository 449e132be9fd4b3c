//! The durable queue on disk: a message is committed (tmp → fsync → rename → fsync dir) before
//! SMTP answers 250, and only removed once Graph accepted it. The spool is the truth; everything
//! in memory is a hint. Layout: `tmp/` (being written), `queue/` (pending and held),
//! `failed/`, `corrupt/` (unreadable, never deleted automatically), `outbox/` (dry run),
//! `serve.lock` (one serve per spool), `commit.lock` (the start-up scan waits for commits in
//! progress). Folders 0700, files 0600.

mod group_sync;
mod lock;
mod offload;
mod perms;
mod record;
mod store;
mod admin;

pub use admin::{QueueCounts, list_line};
pub use lock::{LockError, SpoolLock};
pub use offload::offload;
pub use perms::{create_private_dir, private_dir, private_file};
pub use record::{DraftNote, LastError, Record, State};
pub use store::{Area, ScanReport, Spool, SpoolError, WriteHook};
