//! The command line as users run it: the real binary, its output and exit codes.
//! `check` lists every bad key; `queue list/retry/delete` work on a spool (also while `serve`
//! runs, which `e2e` tests cover); `--config` is accepted by every subcommand.

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use graph_relay::envelope::Envelope;
use graph_relay::spool::{Area, LastError, Spool, State};

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

/// The shipped relay.toml has no Microsoft settings: valid keys, but nothing could be delivered.
/// `check` says what is missing and that serve would still run; `--allow-incomplete` accepts it.
#[test]
fn check_on_the_shipped_relay_toml_lists_what_it_cannot_deliver_without() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml");
    let shipped = shipped.to_str().unwrap();
    let out = relay(&["--config", shipped, "check"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let gaps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("cannot deliver: "))
        .collect();
    assert_eq!(gaps.len(), 4, "{stdout}");
    for (gap, names) in gaps.iter().zip([
        "microsoft.tenant is not set",
        "microsoft.client_id is not set",
        "microsoft.client_secret_file, client_secret, or client_certificate + client_key",
        "microsoft.sender is not set and microsoft.allowed_senders is empty",
    ]) {
        assert!(gap.contains(names), "{names:?} not in {gap:?}");
        assert!(gap.contains("serve would still start"), "{gap}");
    }
    assert!(!stdout.contains("configuration OK"), "{stdout}");

    let out = relay(&["--config", shipped, "check", "--allow-incomplete"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("warning: cannot deliver: "))
            .count(),
        4,
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("configuration OK, but it cannot deliver yet (see the warnings above)")
    );

    let out = relay(&["--config", "/nonexistent/relay.toml", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("/nonexistent/relay.toml"),
        "{}",
        text(&out.stdout)
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `[microsoft]` lines that can deliver (client credentials), given the credential lines.
fn deliverable(credential: &str) -> String {
    format!(
        "[microsoft]\ntenant = \"contoso.test\"\nclient_id = \"app\"\nsender = \"relay@contoso.test\"\n{credential}"
    )
}

/// Each file key naming a missing, unreadable or wrong file is reported with the key and the
/// path, even with `--allow-incomplete`; exit 1.
#[test]
fn check_reports_each_unusable_file_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = |name: &str| dir.path().join(name).display().to_string();
    let a_directory = dir.path().display().to_string();
    let cases = [
        (
            format!(
                "[smtp]\ntls_cert = {:?}\ntls_key = {a_directory:?}\n{}",
                missing("relay.crt"),
                deliverable(&format!("client_secret_file = {:?}\n", missing("secret")))
            ),
            vec![
                format!(
                    "microsoft.client_secret_file: cannot read {}: No such file or directory",
                    missing("secret")
                ),
                format!(
                    "smtp.tls_cert: cannot read {}: No such file or directory",
                    missing("relay.crt")
                ),
                format!("smtp.tls_key: cannot read {a_directory}: Is a directory"),
            ],
        ),
        (
            // Readable, but a private key where the certificate belongs.
            format!(
                "[smtp]\ntls_cert = {key:?}\ntls_key = {key:?}\n{}",
                deliverable("client_secret = \"s\"\n"),
                key = fixture("app.key")
            ),
            vec![format!(
                "smtp.tls_cert: {} holds no PEM certificate",
                fixture("app.key")
            )],
        ),
        (
            deliverable(&format!(
                "client_certificate = {:?}\nclient_key = {:?}\n",
                missing("app.crt"),
                missing("app.key")
            )),
            vec![
                format!(
                    "microsoft.client_certificate: cannot read {}: No such file or directory",
                    missing("app.crt")
                ),
                format!(
                    "microsoft.client_key: cannot read {}: No such file or directory",
                    missing("app.key")
                ),
            ],
        ),
    ];
    for (body, expected) in cases {
        let config = write_config(dir.path(), &body);
        for extra in [&[][..], &["--allow-incomplete"][..]] {
            let mut args = vec!["--config", config.as_str(), "check"];
            args.extend(extra);
            let out = relay(&args);
            let stdout = text(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{body}\n{stdout}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines, expected, "{body}");
        }
    }
}

/// A configuration that can deliver, with every file it names readable: exit 0.
#[test]
fn check_accepts_a_complete_config_with_readable_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let tls = format!(
        "[smtp]\ntls_cert = {:?}\ntls_key = {:?}\n",
        fixture("app.crt"),
        fixture("app.key")
    );
    for credential in [
        format!("client_secret_file = {:?}\n", secret.display().to_string()),
        format!(
            "client_certificate = {:?}\nclient_key = {:?}\n",
            fixture("app.crt"),
            fixture("app-pkcs1.key")
        ),
    ] {
        let config = write_config(dir.path(), &format!("{tls}{}", deliverable(&credential)));
        let out = relay(&["--config", &config, "check"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "configuration OK\n");
    }
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
