//! The spool directories and every change made to them. Each change is ordered so that a crash
//! at any point leaves either the old state or the new one, never a half-written message taken
//! for a committed one. Synchronous: async callers run it on the blocking pool.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tracing::{error, warn};

use super::group_sync::GroupSync;
use super::perms;
use super::record::{Record, State};
use crate::envelope::{Envelope, QueueId};
use crate::memory::MimeShape;

/// The spool areas a message can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Queue,
    Failed,
}

impl Area {
    fn dir_name(self) -> &'static str {
        match self {
            Area::Queue => "queue",
            Area::Failed => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool's disk is full: {0}")]
    NoSpace(#[source] io::Error),
    #[error("spool I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no message {0} in the spool")]
    NotFound(QueueId),
    /// The blocking job running a spool call died (it panicked); the text is the join error's.
    #[error("{0}")]
    Worker(String),
}

impl SpoolError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        if is_no_space(&source) {
            SpoolError::NoSpace(source)
        } else {
            SpoolError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// A test seam: called before every file the spool writes, so a test can make writes fail (e.g.
/// with ENOSPC) without root tricks.
pub type WriteHook = Arc<dyn Fn(&Path) -> io::Result<()> + Send + Sync>;

/// What the start-up scan found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub tmp_removed: usize,
    pub orphans_removed: usize,
    pub moves_finished: usize,
    pub corrupt: usize,
}

#[derive(Clone)]
pub struct Spool {
    root: PathBuf,
    write_hook: Option<WriteHook>,
    /// Commits share fsyncs of `queue/` (group commit).
    queue_sync: Arc<GroupSync>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("root", &self.root).finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`; its folders are made (or tightened to)
    /// 0700.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let root: PathBuf = root.into();
        let spool = Spool {
            queue_sync: Arc::new(GroupSync::new(root.join(Area::Queue.dir_name()))),
            root,
            write_hook: None,
        };
        perms::create_private_dir(&spool.root).map_err(|e| SpoolError::io(&spool.root, e))?;
        for dir in ["tmp", "queue", "failed", "corrupt"] {
            let path = spool.root.join(dir);
            perms::private_dir(&path).map_err(|e| SpoolError::io(&path, e))?;
        }
        // Made by the dry run on first use; an older version made it 0755.
        let outbox = spool.root.join("outbox");
        if outbox.is_dir() {
            perms::private_dir(&outbox).map_err(|e| SpoolError::io(&outbox, e))?;
        }
        Ok(spool)
    }

    pub fn with_write_hook(mut self, hook: WriteHook) -> Self {
        self.write_hook = Some(hook);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn area_dir(&self, area: Area) -> PathBuf {
        self.dir(area.dir_name())
    }

    /// The `.eml` of a message (streamed attachments are read from it while it is delivered).
    pub fn message_path(&self, area: Area, id: &QueueId) -> PathBuf {
        self.area_dir(area).join(format!("{id}.eml"))
    }

    fn json_path(&self, area: Area, id: &QueueId) -> PathBuf {
        self.area_dir(area).join(format!("{id}.json"))
    }

    /// Makes a new message durable in `queue/`. When this returns `Ok`, the message and its
    /// record are on disk and survive a power cut: only then may SMTP answer 250. Its shape is
    /// not known, so its conversion reserves the worst case: see [`Spool::commit_shaped`].
    pub fn commit(
        &self,
        envelope: &Envelope,
        message: &[u8],
        now: SystemTime,
    ) -> Result<Record, SpoolError> {
        self.commit_shaped(envelope, message, None, now)
    }

    /// [`Spool::commit`], keeping the message's MIME shape (measured at DATA) in its record.
    pub fn commit_shaped(
        &self,
        envelope: &Envelope,
        message: &[u8],
        shape: Option<MimeShape>,
        now: SystemTime,
    ) -> Result<Record, SpoolError> {
        let id = QueueId::generate();
        let record = Record {
            shape,
            ..Record::new(id.clone(), envelope.clone(), message.len() as u64, now)
        };
        let tmp_eml = self.dir("tmp").join(format!("{id}.eml"));
        let tmp_json = self.dir("tmp").join(format!("{id}.json"));
        let write = || {
            let _writing = self.commit_lock(CommitLock::Shared)?;
            self.write_synced(&tmp_eml, message)?;
            self.write_synced(&tmp_json, &record.to_json())?;
            rename(&tmp_eml, &self.message_path(Area::Queue, &id))?;
            // The record's rename is the commit point.
            rename(&tmp_json, &self.json_path(Area::Queue, &id))
        };
        let result = write().and_then(|()| self.sync_area(Area::Queue));
        if result.is_err() {
            let _ = fs::remove_file(&tmp_eml);
            let _ = fs::remove_file(&tmp_json);
            let _ = fs::remove_file(self.message_path(Area::Queue, &id));
            let _ = fs::remove_file(self.json_path(Area::Queue, &id));
        }
        result.map(|()| record)
    }

    /// Rewrites a record where it lives (write to tmp, fsync, rename over, fsync dir).
    pub fn update(&self, record: &Record) -> Result<(), SpoolError> {
        let area = area_of(record.state);
        let target = self.json_path(area, &record.id);
        if !target.exists() {
            return Err(SpoolError::NotFound(record.id.clone()));
        }
        self.replace_json(record, &target)
    }

    fn replace_json(&self, record: &Record, target: &Path) -> Result<(), SpoolError> {
        // Unique per write, not only per process: the status page and a delivery worker may
        // rewrite the same record at once, and a shared name made the second one fail (EEXIST).
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir("tmp")
            .join(format!("{}.json.{}.{n}", record.id, std::process::id()));
        self.write_synced(&tmp, &record.to_json())
            .and_then(|()| rename(&tmp, target))
            .and_then(|()| sync_dir(target.parent().unwrap_or(&self.root)))
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
    }

    /// Moves a message between `queue/` and `failed/` to match `record.state`. Ordered so that a
    /// crash leaves a state `scan` can finish: new record, then the `.eml`, then the old record.
    pub fn relocate(&self, record: &Record, from: Area) -> Result<(), SpoolError> {
        let to = area_of(record.state);
        if to == from {
            return self.update(record);
        }
        let id = &record.id;
        let from_eml = self.message_path(from, id);
        if !from_eml.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        self.replace_json(record, &self.json_path(to, id))?;
        rename(&from_eml, &self.message_path(to, id))?;
        remove(&self.json_path(from, id))?;
        self.sync_area(from)
    }

    /// fsyncs an area's directory; `queue/` is shared among concurrent callers (group commit).
    fn sync_area(&self, area: Area) -> Result<(), SpoolError> {
        match area {
            Area::Queue => self
                .queue_sync
                .sync()
                .map_err(|e| SpoolError::io(self.queue_sync.dir(), e)),
            Area::Failed => sync_dir(&self.area_dir(area)),
        }
    }

    /// Deletes a message from whichever area holds it. The record goes first, so a crash leaves
    /// an uncommitted `.eml` that `scan` removes, never a record without its message.
    pub fn remove(&self, id: &QueueId) -> Result<Area, SpoolError> {
        for area in [Area::Queue, Area::Failed] {
            let json = self.json_path(area, id);
            if json.exists() {
                remove(&json)?;
                remove(&self.message_path(area, id))?;
                self.sync_area(area)?;
                return Ok(area);
            }
        }
        Err(SpoolError::NotFound(id.clone()))
    }

    /// Reads one record, looking in `queue/` then `failed/`.
    pub fn load(&self, id: &QueueId) -> Result<(Record, Area), SpoolError> {
        for area in [Area::Queue, Area::Failed] {
            let path = self.json_path(area, id);
            match fs::read(&path) {
                Ok(bytes) => {
                    return Record::from_json(&bytes).map(|r| (r, area)).map_err(|e| {
                        SpoolError::io(&path, io::Error::new(io::ErrorKind::InvalidData, e))
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io(&path, e)),
            }
        }
        Err(SpoolError::NotFound(id.clone()))
    }

    /// The raw message as received.
    pub fn read_message(&self, id: &QueueId, area: Area) -> Result<Vec<u8>, SpoolError> {
        let path = self.message_path(area, id);
        fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound(id.clone()),
            _ => SpoolError::io(&path, e),
        })
    }

    /// Every readable record in an area, oldest first. Unreadable records are moved to
    /// `corrupt/` with an ERROR line, never deleted.
    pub fn list(&self, area: Area) -> Result<Vec<Record>, SpoolError> {
        let dir = self.area_dir(area);
        let mut records = Vec::new();
        for id in self.ids_with(&dir, "json")? {
            let path = self.json_path(area, &id);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Removed between listing and reading (delivered, or `queue delete`).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io(&path, e)),
            };
            match Record::from_json(&bytes) {
                Ok(record) if record.id == id => records.push(record),
                Ok(_) => self.quarantine(area, &id, "record names another id"),
                Err(e) => self.quarantine(area, &id, &e.to_string()),
            }
        }
        records.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
        Ok(records)
    }

    /// Start-up recovery: clears `tmp/`, removes uncommitted messages, finishes interrupted
    /// moves and quarantines records whose message is gone.
    pub fn scan(&self) -> Result<ScanReport, SpoolError> {
        let _recovering = self.commit_lock(CommitLock::Exclusive)?;
        let mut report = ScanReport::default();
        let tmp = self.dir("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| SpoolError::io(&tmp, e))? {
            let entry = entry.map_err(|e| SpoolError::io(&tmp, e))?;
            remove(&entry.path())?;
            report.tmp_removed += 1;
        }
        for area in [Area::Queue, Area::Failed] {
            let other = match area {
                Area::Queue => Area::Failed,
                Area::Failed => Area::Queue,
            };
            let dir = self.area_dir(area);
            for id in self.ids_with(&dir, "json")? {
                if self.message_path(area, &id).exists() {
                    continue;
                }
                if self.message_path(other, &id).exists() {
                    // A move was cut short after its new record was written: finish it.
                    rename(
                        &self.message_path(other, &id),
                        &self.message_path(area, &id),
                    )?;
                    remove(&self.json_path(other, &id))?;
                    report.moves_finished += 1;
                } else if !self.json_path(other, &id).exists() {
                    self.quarantine(area, &id, "its message file is missing");
                    report.corrupt += 1;
                }
            }
        }
        for area in [Area::Queue, Area::Failed] {
            let dir = self.area_dir(area);
            for id in self.ids_with(&dir, "eml")? {
                let committed = [Area::Queue, Area::Failed]
                    .iter()
                    .any(|a| self.json_path(*a, &id).exists());
                if !committed {
                    // Never committed, so never answered 250: nobody expects it delivered.
                    remove(&self.message_path(area, &id))?;
                    report.orphans_removed += 1;
                }
            }
            sync_dir(&dir)?;
        }
        Ok(report)
    }

    /// A `flock` on `commit.lock`. A commit holds it shared from its first tmp write to its
    /// record's rename; `scan` holds it exclusive. So the start-up scan never takes a commit
    /// that another process (`sendmail`) has in progress for a crash's leftovers: without it,
    /// the scan could delete that commit's `.eml` between its two renames, and mail already
    /// reported as taken would be lost. Uncontended in `serve`, whose commits all come after its
    /// scan. A file rather than the `tmp/` folder itself: NFS only locks what is open for
    /// writing.
    fn commit_lock(&self, kind: CommitLock) -> Result<File, SpoolError> {
        let path = self.root.join("commit.lock");
        let file = perms::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        match kind {
            CommitLock::Shared => file.lock_shared(),
            CommitLock::Exclusive => file.lock(),
        }
        .map_err(|e| SpoolError::io(&path, e))?;
        Ok(file)
    }

    /// Moves a message's files to `corrupt/`, keeping them for a person to look at.
    fn quarantine(&self, area: Area, id: &QueueId, why: &str) {
        error!(queue_id = %id, reason = why, "unreadable spool record; moved to corrupt/");
        let corrupt = self.dir("corrupt");
        for ext in ["json", "eml"] {
            let from = self.area_dir(area).join(format!("{id}.{ext}"));
            if from.exists()
                && let Err(e) = fs::rename(&from, corrupt.join(format!("{id}.{ext}")))
            {
                warn!(queue_id = %id, error = %e, "could not move to corrupt/");
            }
        }
    }

    /// Queue ids of the files in `dir` with extension `ext`; other names are ignored.
    fn ids_with(&self, dir: &Path, ext: &str) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(ext).and_then(|s| s.strip_suffix('.'))
                && let Some(id) = QueueId::parse(stem)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
        if let Some(hook) = &self.write_hook {
            hook(path).map_err(|e| SpoolError::io(path, e))?;
        }
        let write = || -> io::Result<()> {
            let mut file = perms::private_file()
                .write(true)
                .create_new(true)
                .open(path)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write().map_err(|e| SpoolError::io(path, e))
    }
}

#[derive(Clone, Copy)]
enum CommitLock {
    Shared,
    Exclusive,
}

fn area_of(state: State) -> Area {
    match state {
        State::Pending | State::Held => Area::Queue,
        State::Failed => Area::Failed,
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), SpoolError> {
    fs::rename(from, to).map_err(|e| SpoolError::io(from, e))
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::io(path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use crate::spool::record::LastError;
    use std::time::Duration;

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let spool = Spool::open(dir.path()).expect("a spool in a fresh temp dir");
        (dir, spool)
    }

    fn envelope() -> Envelope {
        Envelope::new("a@example.com", vec!["b@example.com".into()])
    }

    #[test]
    fn commit_then_list_load_and_remove() -> TestResult {
        let (_dir, spool) = spool();
        let record = spool.commit(
            &envelope(),
            b"Subject: hi\r\n\r\nbody\r\n",
            SystemTime::now(),
        )?;
        assert_eq!(record.size, 21);
        assert_eq!(spool.list(Area::Queue)?, vec![record.clone()]);
        assert_eq!(
            spool.read_message(&record.id, Area::Queue)?,
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(spool.load(&record.id)?.1, Area::Queue);
        assert_eq!(spool.remove(&record.id)?, Area::Queue);
        assert!(spool.list(Area::Queue)?.is_empty());
        assert!(matches!(
            spool.remove(&record.id),
            Err(SpoolError::NotFound(_))
        ));
        assert_eq!(fs::read_dir(spool.dir("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn two_rewrites_of_one_record_at_once_both_succeed() -> TestResult {
        let (_dir, spool) = spool();
        let record = spool.commit(&envelope(), b"x", SystemTime::now())?;
        // Both writers reach the temp file's creation together (the status page's retry and a
        // delivery worker's update, say).
        let together = Arc::new(std::sync::Barrier::new(2));
        let spool = spool.with_write_hook(Arc::new(move |_: &Path| {
            together.wait();
            Ok(())
        }));
        let results = std::thread::scope(|s| {
            let writers: Vec<_> = (0..2).map(|_| s.spawn(|| spool.update(&record))).collect();
            writers
                .into_iter()
                .map(|w| w.join().expect("writer thread"))
                .collect::<Vec<_>>()
        });
        for result in results {
            result?;
        }
        assert_eq!(fs::read_dir(spool.dir("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind_and_says_no_space() -> TestResult {
        let (_dir, spool) = spool();
        let spool = spool.with_write_hook(Arc::new(|path: &Path| {
            if path.extension().is_some_and(|e| e == "json") {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(())
            }
        }));
        let err = spool
            .commit(&envelope(), b"x", SystemTime::now())
            .unwrap_err();
        assert!(matches!(err, SpoolError::NoSpace(_)), "{err}");
        for dir in ["tmp", "queue"] {
            assert_eq!(fs::read_dir(spool.dir(dir))?.count(), 0, "{dir} not empty");
        }
        Ok(())
    }

    #[test]
    fn relocate_to_failed_and_back() -> TestResult {
        let (_dir, spool) = spool();
        let mut record = spool.commit(&envelope(), b"m", SystemTime::now())?;
        record.state = State::Failed;
        record.last_error = Some(LastError {
            status: Some(400),
            code: "ErrorInvalidRecipients".into(),
            message: "bad".into(),
        });
        spool.relocate(&record, Area::Queue)?;
        assert!(spool.list(Area::Queue)?.is_empty());
        assert_eq!(spool.list(Area::Failed)?, vec![record.clone()]);
        record.state = State::Pending;
        spool.relocate(&record, Area::Failed)?;
        assert_eq!(spool.list(Area::Queue)?, vec![record.clone()]);
        assert_eq!(spool.read_message(&record.id, Area::Queue)?, b"m");
        Ok(())
    }

    #[test]
    fn scan_waits_for_a_commit_in_progress_instead_of_deleting_it() -> TestResult {
        let (_dir, spool) = spool();
        let (paused_tx, paused) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = std::sync::Mutex::new(go_rx);
        // Another process's commit (a `sendmail`), stopped after its message reached tmp/.
        let writer = spool.clone().with_write_hook(Arc::new(move |path: &Path| {
            if path.extension().is_some_and(|e| e == "json") {
                paused_tx.send(()).expect("test listening");
                go_rx.lock().expect("go lock").recv().expect("test says go");
            }
            Ok(())
        }));
        let commit =
            std::thread::spawn(move || writer.commit(&envelope(), b"in flight", SystemTime::now()));
        paused.recv()?;
        let scanner = spool.clone();
        let (scanned_tx, scanned) = std::sync::mpsc::channel();
        let scan = std::thread::spawn(move || {
            let report = scanner.scan();
            scanned_tx.send(()).expect("test listening");
            report
        });
        // While the commit is under way, the scan waits. (Without the lock it finishes at once,
        // having deleted the commit's message; the timeout only bounds how long it may take.)
        assert!(scanned.recv_timeout(Duration::from_millis(300)).is_err());
        go.send(())?;
        let record = commit.join().expect("commit thread")?;
        let report = scan.join().expect("scan thread")?;
        assert_eq!(
            report,
            ScanReport::default(),
            "nothing taken for a leftover"
        );
        assert_eq!(spool.read_message(&record.id, Area::Queue)?, b"in flight");
        assert_eq!(spool.list(Area::Queue)?, vec![record]);
        Ok(())
    }

    #[test]
    fn scan_recovers_every_crash_point() -> TestResult {
        let (_dir, spool) = spool();
        // A commit cut short before its record was renamed: never answered 250.
        fs::write(spool.dir("tmp").join("ABC.eml"), b"partial")?;
        let orphan = QueueId::generate();
        fs::write(spool.message_path(Area::Queue, &orphan), b"uncommitted")?;
        // A move to failed/ cut short after the new record was written.
        let mut moving = spool.commit(&envelope(), b"moving", SystemTime::now())?;
        moving.state = State::Failed;
        spool.replace_json(&moving, &spool.json_path(Area::Failed, &moving.id))?;
        // A record whose message vanished, and one that is not JSON.
        let lost = spool.commit(&envelope(), b"lost", SystemTime::now())?;
        fs::remove_file(spool.message_path(Area::Queue, &lost.id))?;
        let garbled = spool.commit(&envelope(), b"garbled", SystemTime::now())?;
        fs::write(spool.json_path(Area::Queue, &garbled.id), b"{not json")?;
        let good = spool.commit(&envelope(), b"good", SystemTime::now())?;

        let report = spool.scan()?;
        assert_eq!(report.tmp_removed, 1);
        assert_eq!(report.orphans_removed, 1);
        assert_eq!(report.corrupt, 1);

        let queued = spool.list(Area::Queue)?;
        assert_eq!(queued, vec![good]);
        let failed = spool.list(Area::Failed)?;
        assert_eq!(failed.len(), 1);
        assert_eq!(spool.read_message(&moving.id, Area::Failed)?, b"moving");
        let corrupt: Vec<_> = fs::read_dir(spool.dir("corrupt"))?.collect();
        assert_eq!(
            corrupt.len(),
            3,
            "lost.json, garbled.json and garbled.eml are kept"
        );
        Ok(())
    }
}
