//! The seam between the SMTP session and what happens to a message: at MAIL the session asks
//! `check_space` whether there is room for it, once DATA ends it calls `accept`, and it answers
//! with what they return. Owns no I/O itself.

use async_trait::async_trait;

use crate::envelope::{Envelope, QueueId};

/// Why a message was not accepted; each maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The spool could not make the message durable (`451 4.3.0`). Try again later.
    #[error("spool unavailable: {0}")]
    Unavailable(String),
    /// The disk is full (`452 4.3.1`).
    #[error("insufficient storage: {0}")]
    NoSpace(String),
    /// The message can never be converted (`554 5.6.0`).
    #[error("message rejected: {0}")]
    Rejected(String),
}

/// Receives each complete message. `Ok` means the message is durable: only then may the session
/// answer 250.
#[async_trait]
pub trait MessageSink: Send + Sync + 'static {
    async fn accept(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError>;

    /// Asked at MAIL FROM, before the client sends any data: is there room for a message of
    /// `declared` bytes (the `SIZE=` parameter; `None` when the client gave none)? `NoSpace`
    /// makes the session answer `452 4.3.1` right away. The default has no limit.
    async fn check_space(&self, declared: Option<u64>) -> Result<(), AcceptError> {
        let _ = declared;
        Ok(())
    }
}
