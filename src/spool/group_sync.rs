//! Group commit for directory fsyncs: when many sessions commit at once, one fsync of `queue/`
//! covers every rename that finished before it started, instead of one fsync each. A caller
//! returns only once an fsync that began after its rename has completed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    state: Mutex<Tickets>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Tickets {
    /// Last ticket handed out.
    issued: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    synced: u64,
    /// An fsync is running.
    running: bool,
}

impl GroupSync {
    pub fn new(dir: PathBuf) -> Self {
        GroupSync {
            dir,
            state: Mutex::new(Tickets::default()),
            done: Condvar::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every rename in the directory that finished before this call durable.
    pub fn sync(&self) -> io::Result<()> {
        let mut tickets = self.state.lock().expect("group sync lock");
        tickets.issued += 1;
        let mine = tickets.issued;
        loop {
            if tickets.synced >= mine {
                return Ok(());
            }
            if tickets.running {
                tickets = self.done.wait(tickets).expect("group sync lock");
                continue;
            }
            // Lead a round: it covers every ticket issued so far.
            tickets.running = true;
            let covers = tickets.issued;
            drop(tickets);
            let result = File::open(&self.dir).and_then(|d| d.sync_all());
            tickets = self.state.lock().expect("group sync lock");
            tickets.running = false;
            if result.is_ok() {
                tickets.synced = tickets.synced.max(covers);
            }
            self.done.notify_all();
            // On failure the others try again themselves and get their own error.
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_all_return_and_share_rounds() -> TestResult {
        let dir = tempfile::tempdir()?;
        let sync = Arc::new(GroupSync::new(dir.path().to_path_buf()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let sync = sync.clone();
                std::thread::spawn(move || sync.sync())
            })
            .collect();
        for t in threads {
            t.join().expect("a sync thread panicked")?;
        }
        let tickets = sync.state.lock().expect("group sync lock");
        assert_eq!(tickets.issued, 16);
        assert_eq!(tickets.synced, 16, "every ticket covered");
        assert!(!tickets.running);
        Ok(())
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_hang() -> TestResult {
        let sync = GroupSync::new(PathBuf::from("/nonexistent/graph-relay-spool"));
        assert!(sync.sync().is_err());
        assert!(sync.sync().is_err(), "the next caller tries again");
        Ok(())
    }
}
