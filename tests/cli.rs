//! The command line as users run it: the real binary, its output and exit codes.
//! `check` lists every bad key; `queue list/retry/delete` work on a spool (also while `serve`
//! runs, which `e2e` tests cover); `--config` is accepted by every subcommand.

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use graph_relay::spool::{Area, Envelope, LastError, Spool, State};

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("relay.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn check_lists_every_bad_key_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[smtp]\nlisten = \"not-an-address\"\nmax_recipients = -3\n[microsoft]\nflow = \"magic\"\nproxy = \"proxy.corp:3128\"\n[queue]\nmax_age = \"forever\"\n[typo]\nx = 1\n",
    );
    let out = relay(&["--config", &config, "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    for key in [
        "smtp.listen: ",
        "smtp.max_recipients: ",
        "microsoft.flow: expected one of",
        "microsoft.proxy: ",
        "queue.max_age: ",
        "typo: ",
    ] {
        assert!(stdout.contains(key), "{key:?} not in:\n{stdout}");
    }
}

#[test]
fn check_accepts_the_shipped_relay_toml_and_a_missing_explicit_file_fails() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml");
    let out = relay(&["--config", shipped.to_str().unwrap(), "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "configuration OK");

    let out = relay(&["--config", "/nonexistent/relay.toml", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("/nonexistent/relay.toml"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn environment_overrides_reach_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .args(["--config", &config, "check"])
        .env("GRAPH_RELAY__SMTP__MAX_MESSAGE_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("smtp.max_message_bytes: "),
        "{}",
        text(&out.stdout)
    );
}

/// A spool with one pending and one failed message, and a config pointing at it.
fn spool_with_mail(dir: &Path) -> (String, String, String) {
    let spool = Spool::open(dir.join("spool")).unwrap();
    let env = Envelope::new(
        "wp@contoso.test",
        vec!["a@example.com".into(), "b@example.com".into()],
    );
    let pending = spool
        .commit(&env, b"Subject: one\r\n\r\nbody\r\n", SystemTime::now())
        .unwrap();
    let mut failed = spool
        .commit(&env, b"Subject: two\r\n\r\nbody\r\n", SystemTime::now())
        .unwrap();
    failed.state = State::Failed;
    failed.attempts = 1;
    failed.last_error = Some(LastError {
        status: Some(400),
        code: "ErrorInvalidRecipients".into(),
        message: "At least one recipient isn't valid.".into(),
    });
    spool.relocate(&failed, Area::Queue).unwrap();
    let config = write_config(
        dir,
        &format!("[queue]\ndir = \"{}\"\n", dir.join("spool").display()),
    );
    (config, pending.id.to_string(), failed.id.to_string())
}

#[test]
fn queue_list_retry_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (config, pending, failed) = spool_with_mail(dir.path());

    let out = relay(&["--config", &config, "queue", "list"]);
    assert_eq!(out.status.code(), Some(0));
    let listing = text(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    let failed_line = lines
        .iter()
        .find(|l| l.starts_with(&failed))
        .expect("failed message listed");
    assert!(failed_line.contains("\tfailed\t"), "{failed_line}");
    assert!(
        failed_line.contains("400 ErrorInvalidRecipients: At least one recipient isn't valid."),
        "{failed_line}"
    );
    assert!(
        failed_line.contains("from=wp@contoso.test"),
        "{failed_line}"
    );
    assert!(
        failed_line.contains("to=a@example.com,b@example.com"),
        "{failed_line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&pending) && l.contains("\tpending\t")),
        "{listing}"
    );

    let out = relay(&["--config", &config, "queue", "retry", &failed]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&relay(&["--config", &config, "queue", "list"]).stdout);
    assert!(!listing.contains("\tfailed\t"), "{listing}");

    let out = relay(&["--config", &config, "queue", "delete", &pending]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with(&format!("deleted: {pending}")),
        "{}",
        text(&out.stdout)
    );
    let listing = text(&relay(&["--config", &config, "queue", "list"]).stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
}

#[test]
fn queue_list_on_an_empty_queue_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[queue]\ndir = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    );
    let out = relay(&["--config", &config, "queue", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "queue is empty\n");
}

#[test]
fn unknown_ids_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = spool_with_mail(dir.path());
    for args in [
        ["queue", "retry", "0123456789ABCDEF"],
        ["queue", "delete", "0123456789ABCDEF"],
    ] {
        let mut full = vec!["--config", config.as_str()];
        full.extend(args);
        let out = relay(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("no message 0123456789ABCDEF"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = relay(&["--config", &config, "queue", "delete", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a queue id"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn retry_all_moves_every_failed_message_back() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = spool_with_mail(dir.path());
    let out = relay(&["--config", &config, "queue", "retry", "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("1 failed message(s)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn auth_status_without_credentials_says_missing_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = relay(&["--config", &config, "auth", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("state: missing"), "{stdout}");
    assert!(
        stdout.contains("microsoft.tenant and microsoft.client_id are not set"),
        "{stdout}"
    );
}

#[test]
fn every_subcommand_accepts_config() {
    for args in [
        vec!["serve", "--help"],
        vec!["check", "--help"],
        vec!["auth", "login", "--help"],
        vec!["auth", "status", "--help"],
        vec!["queue", "list", "--help"],
        vec!["queue", "retry", "--help"],
        vec!["queue", "delete", "--help"],
        vec!["send-test", "--help"],
    ] {
        let mut full = vec!["--config", "x.toml"];
        full.extend(args.iter().copied());
        let out = relay(&full);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("--config"),
            "{args:?} help lacks --config"
        );
    }
}
