//! The spool's edges, on the real binary: `serve --dry-run` never consumes real mail; one
//! `serve` per spool (a second one exits 1 before touching anything, even when its port is
//! taken; a kill -9'd one never blocks the restart); a read-only `queue.dir` is a clear error;
//! spool files are 0600 and folders 0700 whatever the umask, and old 0755 folders are tightened.

use graph_relay_testkit as common;
use graph_relay_testkit::tools::Tmpfs;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::binary::{RelayProcess, relay_cli};
use common::fake_graph::{FakeMicrosoft, TokenFailure};
use common::relay::{RelayOptions, files_in, relay_toml, send_ok};
use graph_relay::envelope::Envelope;
use graph_relay::spool::{Area, LastError, Spool, State};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    spool: PathBuf,
}

fn setup(ms: &FakeMicrosoft) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, relay_toml(ms, &spool, &RelayOptions::default())).unwrap();
    Setup { dir, config, spool }
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: wp@contoso.test\r\nTo: customer@example.com\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n")
        .into_bytes()
}

async fn send(serve: &RelayProcess, subject: &str) {
    send_ok(
        serve.smtp,
        "wp@contoso.test",
        &["customer@example.com"],
        &message(subject),
    )
    .await;
}

/// Every file under `dir` (relative path → bytes): what "untouched" is checked against.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (path, meta) in walk(dir) {
        if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
        }
    }
    files
}

/// Every path under `dir` (not `dir` itself), with its metadata.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(walk(&path));
        }
        found.push((path, meta));
    }
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Waits until `n` lines of `queue list` contain `needle`.
async fn wait_listed(config: &Path, needle: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, listing) = relay_cli(config, &["queue", "list"]);
        assert_eq!(code, 0, "queue list works beside serve");
        if listing.lines().filter(|l| l.contains(needle)).count() == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listing}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `serve` that must refuse to start: its exit code and its log. Panics if it is still
/// running after `WAIT` (it is killed then).
async fn serve_refused(config: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"));
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "graph_relay=info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the refused serve exits instead of running")
        .expect("run graph-relay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Puts a pending, a held and a failed message in the spool, as the relay leaves them.
fn spool_with_mail(dir: &Path) -> Vec<String> {
    let spool = Spool::open(dir).unwrap();
    let env = Envelope::new("wp@contoso.test", vec!["customer@example.com".into()]);
    let now = SystemTime::now();
    let pending = spool.commit(&env, &message("old pending"), now).unwrap();
    let mut held = spool.commit(&env, &message("old held"), now).unwrap();
    held.state = State::Held;
    spool.update(&held).unwrap();
    let mut failed = spool.commit(&env, &message("old failed"), now).unwrap();
    failed.state = State::Failed;
    failed.last_error = Some(LastError {
        status: Some(400),
        code: "ErrorInvalidRecipients".into(),
        message: "no".into(),
    });
    spool.relocate(&failed, Area::Queue).unwrap();
    [pending.id, held.id, failed.id]
        .iter()
        .map(ToString::to_string)
        .collect()
}

async fn wait_for_outbox(spool: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let files = files_in(&spool.join("outbox"));
        if files.iter().filter(|f| f.ends_with(".json")).count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox has {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_leaves_queued_held_and_failed_mail_untouched() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    let ids = spool_with_mail(&setup.spool);
    let before = snapshot(&setup.spool);
    let (_, listed_before) = relay_cli(&setup.config, &["queue", "list"]);
    assert_eq!(listed_before.lines().count(), 3, "{listed_before}");

    let dry = RelayProcess::start(&setup.config, &["--dry-run"]).await;
    send(&dry, "fresh").await;
    wait_for_outbox(&setup.spool, 1).await;
    // SIGTERM waits for every delivery already started, so nothing is still on its way.
    assert!(dry.terminate().await.success());

    let outbox = files_in(&setup.spool.join("outbox"));
    assert_eq!(outbox.len(), 1, "only the dry run's own mail: {outbox:?}");
    for id in &ids {
        assert!(
            !outbox.iter().any(|f| f.starts_with(id.as_str())),
            "{id} written to the outbox"
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(setup.spool.join("outbox").join(outbox.first().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["body"]["message"]["subject"], "fresh", "{doc}");

    let after: BTreeMap<_, _> = snapshot(&setup.spool)
        .into_iter()
        .filter(|(p, _)| before.contains_key(p))
        .collect();
    assert_eq!(after, before, "queued, held and failed mail byte-identical");
    let (code, listed_after) = relay_cli(&setup.config, &["queue", "list"]);
    assert_eq!(code, 0);
    assert_eq!(listed_after, listed_before);
    assert!(ms.requests().is_empty(), "a dry run never calls Microsoft");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_spool_exits_1_and_touches_nothing() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    // Mail is held in the first instance until the end, so its files stay still.
    ms.set_token_failure(Some(TokenFailure::InvalidSecret));
    let first = RelayProcess::start(&setup.config, &[]).await;
    send(&first, "before").await;
    wait_listed(&setup.config, "\theld\t", 1).await;
    // A message the first instance is in the middle of writing.
    let live_tmp = setup.spool.join("tmp").join("0123456789ABCDEF.eml");
    std::fs::write(&live_tmp, b"half a message").unwrap();
    let before = snapshot(&setup.spool);

    for (case, env) in [
        ("port 0", vec![]),
        (
            "port taken",
            vec![("GRAPH_RELAY__SMTP__LISTEN", first.smtp.to_string())],
        ),
    ] {
        let (code, log) = serve_refused(&setup.config, &env).await;
        assert_eq!(code, Some(1), "{case}: {log}");
        assert!(
            log.contains("already running")
                && log.contains(&format!("pid {}", first.pid()))
                && log.contains(&setup.spool.display().to_string()),
            "{case}: the message names the spool and the holder: {log}"
        );
        assert!(!log.contains("corrupt"), "{case}: {log}");
        assert_eq!(snapshot(&setup.spool), before, "{case}: spool untouched");
        assert!(files_in(&setup.spool.join("corrupt")).is_empty(), "{case}");
    }
    // An admin "clearing a stale lock" does not let a second serve in either: the spool
    // folder itself is locked too.
    std::fs::remove_file(setup.spool.join("serve.lock")).unwrap();
    let (code, log) = serve_refused(&setup.config, &[]).await;
    assert_eq!(code, Some(1), "lock file deleted: {log}");
    assert!(log.contains("already running"), "lock file deleted: {log}");
    assert!(
        !setup.spool.join("serve.lock").exists(),
        "refused before writing"
    );

    // The first instance is unharmed, and the CLI still works beside it.
    send(&first, "after").await;
    wait_listed(&setup.config, "\theld\t", 2).await;
    std::fs::remove_file(&live_tmp).unwrap();
    ms.set_token_failure(None);
    assert_eq!(relay_cli(&setup.config, &["auth", "login"]).0, 0);
    ms.wait_for_sent(2, WAIT).await;
    let mut subjects: Vec<String> = ms.sent().iter().filter_map(|m| m.subject()).collect();
    subjects.sort();
    assert_eq!(subjects, ["after", "before"], "each once");
    assert!(first.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_leaves_a_lock_file_that_does_not_block_the_restart() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    ms.set_token_failure(Some(TokenFailure::TemporarilyUnavailable));
    let first = RelayProcess::start(&setup.config, &[]).await;
    let old_pid = first.pid();
    send(&first, "survivor").await;
    first.kill9().await;
    let lock = setup.spool.join("serve.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        old_pid.to_string()
    );

    ms.set_token_failure(None);
    let second = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        second.pid().to_string()
    );
    ms.wait_for_sent(1, WAIT).await;
    assert!(second.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_queue_dir_is_a_clear_error() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    let ro = setup.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // Permissions do not stop root, so the read-only spool is a read-only mount.
    let Some(_tmpfs) = Tmpfs::mount(&ro, "ro,size=64k") else {
        return;
    };
    for dir in [ro.clone(), ro.join("spool")] {
        let (code, log) = serve_refused(
            &setup.config,
            &[("GRAPH_RELAY__QUEUE__DIR", dir.display().to_string())],
        )
        .await;
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains(&format!("cannot lock the spool at {}", dir.display()))
                && log.contains("Read-only file system"),
            "{log}"
        );
    }
}

/// Every folder 0700 and every file 0600 under `root`, `root` included.
fn assert_private(root: &Path) {
    assert_eq!(mode(root), 0o700, "{}", root.display());
    for (path, meta) in walk(root) {
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            meta.permissions().mode() & 0o777,
            want,
            "{} is {:o}",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_files_are_0600_and_folders_0700_under_umask_022() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    ms.fail_next_sends(
        1,
        400,
        &[],
        r#"{"error":{"code":"ErrorInvalidRecipients","message":"no"}}"#,
    );
    let serve = RelayProcess::start_with_umask(&setup.config, &[], 0o022).await;
    send(&serve, "bounced").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // The record moves first, then the message.
    while files_in(&setup.spool.join("failed")).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // This one stays queued: Graph is busy for as long as the test runs.
    ms.fail_next_sends(
        1000,
        503,
        &[],
        r#"{"error":{"code":"serviceNotAvailable","message":"busy"}}"#,
    );
    send(&serve, "kept").await;
    assert_eq!(files_in(&setup.spool.join("queue")).len(), 2);
    assert!(serve.terminate().await.success());
    assert_private(&setup.spool);

    let dry = RelayProcess::start_with_umask(&setup.config, &["--dry-run"], 0o022).await;
    send(&dry, "dry").await;
    wait_for_outbox(&setup.spool, 1).await;
    assert!(dry.terminate().await.success());
    assert_private(&setup.spool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_an_older_version_made_0755_are_tightened_at_start() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms);
    spool_with_mail(&setup.spool);
    let subdirs = ["tmp", "queue", "failed", "corrupt", "outbox"];
    for sub in subdirs {
        let dir = setup.spool.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log_path = setup.dir.path().join("serve.log");
    let serve = RelayProcess::start_logging(
        &setup.config,
        &[],
        "graph_relay=info",
        std::fs::File::create(&log_path).unwrap(),
    )
    .await;
    for sub in subdirs {
        assert_eq!(mode(&setup.spool.join(sub)), 0o700, "{sub}");
    }
    assert!(serve.terminate().await.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let tightened = log
        .lines()
        .filter(|l| l.contains("tightened") && l.contains("0755") && l.contains("0700"))
        .count();
    assert_eq!(tightened, subdirs.len(), "{log}");
}
