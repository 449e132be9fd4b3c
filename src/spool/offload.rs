//! The spool's async face: every spool call made from async code goes off the runtime here,
//! with one meaning for a blocking job that died (`SpoolError::Worker`). It only moves work to
//! a blocking thread; it must never change what a spool call does or in which order.

use super::store::{Spool, SpoolError};

/// Runs `f` on tokio's blocking pool. A panic (or a runtime shutting down) comes back as
/// [`SpoolError::Worker`] carrying the join error's text, so callers that print it say what
/// they said before there was one place for this.
pub async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Worker(e.to_string()))
}

impl Spool {
    /// One spool job off the runtime; several calls in `f` run as one job (the record match of
    /// a delivery outcome, a read followed by work on what was read).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        self.with(f).await?
    }

    /// Like [`Spool::run`] for a job whose own errors are not the spool's (ingest's precheck,
    /// a statvfs): its result comes back as is, a dead job as [`SpoolError::Worker`].
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = self.clone();
        offload(move || f(&spool)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_comes_back_as_a_worker_error_with_the_join_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = Spool::open(dir.path()).expect("spool opens");
        let died = spool
            .run(|_| -> Result<(), SpoolError> { panic!("disk on fire") })
            .await;
        match died {
            Err(SpoolError::Worker(text)) => assert!(text.contains("disk on fire"), "{text}"),
            other => panic!("expected a worker error, got {other:?}"),
        }
        // The job's own result passes through untouched, errors included.
        let listed = spool
            .run(|spool| spool.list(crate::spool::Area::Queue))
            .await;
        assert!(listed.expect("listing an empty queue").is_empty());
        let own = spool.with(|_| Err::<(), &str>("not the spool's")).await;
        assert_eq!(own.expect("the job ran"), Err("not the spool's"));
    }
}
