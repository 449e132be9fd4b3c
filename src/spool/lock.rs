//! One `serve` per spool: `<queue.dir>/serve.lock`, an exclusive `flock` taken before anything
//! on disk is touched and held for the life of the process. Two relays on one spool would each
//! deliver the same mail, and a second one's start-up scan would delete the first's half-written
//! files. Only `serve` (dry run included) takes it: the CLI (`queue ...`, `auth ...`) and
//! `sendmail` work beside a running serve, as they always did.
//!
//! The lock is on the spool folder itself, and on `serve.lock` too: a file can be deleted under
//! its holder (an admin "clearing a stale lock" would let a second serve in), the folder cannot
//! without the spool going with it. The file keeps the holder's pid for the error message, and
//! its lock stops a version that locked only the file from running beside this one.
//!
//! The kernel drops a `flock` when its holder dies, so a kill -9'd relay never blocks the
//! restart; the file and the old pid in it are harmless leftovers. The descriptors are
//! close-on-exec (Rust's default), so a `notify.command` child never inherits the lock.

use std::fs::{File, TryLockError};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use super::perms;

const LOCK_FILE: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another graph-relay serve{} is already running on the spool {} (it holds {}): run one \
         serve per queue.dir; stop that one first, or give this one its own queue.dir",
        holder(*.pid), .dir.display(), .lock.display()
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
    },
    /// `path` is the spool folder or its lock file, whichever could not be made or locked.
    #[error("cannot lock the spool at {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct SpoolLock {
    _dir: File,
    _file: File,
}

impl SpoolLock {
    /// Creates `dir` (0700) if needed and takes both locks without waiting; then writes our pid
    /// into the file for the next one who finds it taken.
    pub fn acquire(dir: &Path) -> Result<SpoolLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |path: &Path, source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Takes `file`'s lock; `at` names it in an I/O error.
        let lock = |file: &File, at: &Path| match file.try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                dir: dir.to_path_buf(),
                lock: path.clone(),
                pid: read_pid(&path),
            }),
            Err(TryLockError::Error(e)) => Err(io_error(at, e)),
        };
        perms::create_private_dir(dir).map_err(|e| io_error(dir, e))?;
        let folder = File::open(dir).map_err(|e| io_error(dir, e))?;
        lock(&folder, dir)?;
        // Not truncated on open: until we hold the lock, the pid in it is the holder's.
        let mut file = perms::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        lock(&file, &path)?;
        let write_pid = |file: &mut File| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        write_pid(&mut file).map_err(|e| io_error(&path, e))?;
        Ok(SpoolLock {
            _dir: folder,
            _file: file,
        })
    }
}

/// The pid the holder wrote into the lock file, if it is there and readable.
fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;

    #[test]
    fn a_second_taker_is_told_who_holds_it_until_it_is_released() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = dir.path().join("spool");
        let held = SpoolLock::acquire(&spool)?;
        let me = std::process::id();
        assert_eq!(
            std::fs::read_to_string(spool.join(LOCK_FILE))?,
            format!("{me}\n")
        );
        match SpoolLock::acquire(&spool) {
            Err(e @ LockError::Held { pid: Some(pid), .. }) if pid == me => {
                let text = e.to_string();
                assert!(text.contains(&format!("(pid {me})")), "{text}");
                assert!(text.contains(&spool.display().to_string()), "{text}");
            }
            other => panic!("expected Held with our pid, got {other:?}"),
        }
        drop(held);
        let _again = SpoolLock::acquire(&spool)?;
        Ok(())
    }

    #[test]
    fn deleting_the_lock_file_does_not_let_a_second_taker_in() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = dir.path().join("spool");
        let held = SpoolLock::acquire(&spool)?;
        std::fs::remove_file(spool.join(LOCK_FILE))?;
        match SpoolLock::acquire(&spool) {
            Err(LockError::Held { pid: None, .. }) => {}
            other => panic!("expected Held (pid unknown: the file is gone), got {other:?}"),
        }
        drop(held);
        let _again = SpoolLock::acquire(&spool)?;
        Ok(())
    }

    #[test]
    fn a_relay_that_locks_only_the_file_keeps_this_one_out() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool)?;
        let older = File::create(spool.join(LOCK_FILE))?;
        older.try_lock()?;
        assert!(matches!(
            SpoolLock::acquire(&spool),
            Err(LockError::Held { .. })
        ));
        drop(older);
        let _now = SpoolLock::acquire(&spool)?;
        Ok(())
    }
}
