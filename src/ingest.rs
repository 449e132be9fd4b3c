//! Taking mail in: the `MessageSink` that refuses mail which can never be converted, checks the
//! spool's free space, commits the rest to the spool (fsynced before it answers) and wakes
//! delivery. Never delivers or converts anything itself.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::{error, warn};

use crate::clock::Clock;
use crate::convert::{ConvertError, precheck};
use crate::deliver::QueueHandle;
use crate::envelope::{Envelope, QueueId};
use crate::metrics::Counters;
use crate::smtp::{AcceptError, MessageSink};
use crate::spool::{Spool, SpoolError};

/// The SMTP sink of `serve`: refuses mail that can never be converted, commits the rest to the
/// spool, and wakes delivery.
pub struct Ingest {
    spool: Spool,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    /// Woken with each new message; `None` in a process without delivery (the sendmail
    /// command), whose mail the running serve finds at its next rescan of the spool.
    queue: Option<QueueHandle>,
}

impl Ingest {
    pub fn new(
        spool: Spool,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
        queue: QueueHandle,
    ) -> Ingest {
        Ingest {
            spool,
            clock,
            counters,
            queue: Some(queue),
        }
    }

    /// An ingest that only commits: for the sendmail command, which writes the spool beside a
    /// running serve (never taking its lock), as Postfix's postdrop writes the maildrop.
    pub fn without_delivery(spool: Spool, clock: Arc<dyn Clock>) -> Ingest {
        Ingest {
            spool,
            clock,
            counters: Arc::default(),
            queue: None,
        }
    }
}

/// Free space the spool keeps in reserve: MAIL gets `452 4.3.1` when less than this (plus the
/// declared SIZE) is left, so a nearly full disk refuses mail before DATA, not after it.
const SPOOL_MIN_FREE: u64 = 64 * 1024;

/// Bytes available to an unprivileged process on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value, and the call only writes it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is a valid, writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[async_trait]
impl MessageSink for Ingest {
    /// Room for the declared size plus `SPOOL_MIN_FREE`, by `statvfs` on the spool directory.
    /// When the check itself fails, the mail is let through: the commit reports real errors.
    async fn check_space(&self, declared: Option<u64>) -> Result<(), AcceptError> {
        let free = match self.spool.with(|spool| free_bytes(spool.root())).await {
            Ok(Ok(free)) => free,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot tell the spool's free space");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let needed = declared.unwrap_or(0).saturating_add(SPOOL_MIN_FREE);
        if free < needed {
            error!(
                free,
                needed, "spool disk nearly full: answering 452 at MAIL until space returns"
            );
            return Err(AcceptError::NoSpace(format!(
                "{free} bytes free in the spool, {needed} needed"
            )));
        }
        Ok(())
    }

    async fn accept(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError> {
        let now = self.clock.now();
        // Off the runtime: the precheck walks the whole message (tens of ms for 30 MB).
        let committed = self
            .spool
            .with(move |spool| {
                let shape = precheck(&message)?;
                Ok(spool.commit_shaped(&envelope, &message, Some(shape), now))
            })
            .await
            .map_err(|e| AcceptError::Unavailable(e.to_string()))?
            .map_err(|e: ConvertError| AcceptError::Rejected(e.to_string()))?;
        match committed {
            Ok(record) => {
                self.counters.received();
                let id = record.id.clone();
                if let Some(queue) = &self.queue {
                    queue.submit(record);
                }
                Ok(id)
            }
            Err(SpoolError::NoSpace(e)) => {
                error!(error = %e, "spool disk full: answering 452 until space returns");
                Err(AcceptError::NoSpace(e.to_string()))
            }
            Err(e) => {
                error!(error = %e, "cannot commit to the spool: answering 451");
                Err(AcceptError::Unavailable(e.to_string()))
            }
        }
    }
}
