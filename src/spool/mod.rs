//! The durable queue on disk: a message is committed (tmp → fsync → rename → fsync dir) before
//! SMTP answers 250, and only removed once Graph accepted it. The spool is the truth; everything
//! in memory is a hint.

mod envelope;

pub use envelope::{Envelope, QueueId};
