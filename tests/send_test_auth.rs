//! `graph-relay send-test --user U --password-stdin` against a relay with `require_auth`: the
//! right password gets the test message through (exit 0), a wrong one exits 1 with the server's
//! 535, and STARTTLS is used when offered, trusting the relay's own self-signed certificate.

use graph_relay_testkit as common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay};
use tokio::io::AsyncWriteExt;

const USERS: &str = "require_auth = true\n[smtp.users]\nwordpress = \"correct horse\"\n";

/// `graph-relay --config CONFIG send-test --server SERVER ARGS...` with `stdin` piped in.
async fn send_test(config: &Path, server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("--config")
        .arg(config)
        .args([
            "send-test",
            "--to",
            "alice@example.org",
            "--from",
            "relay@contoso.test",
            "--server",
            server,
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().expect("stdin piped");
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("send-test finishes")
        .expect("send-test output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_logs_in_to_a_relay_that_requires_auth() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: USERS.into(),
            ..RelayOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "relay.toml", "");
    let server = relay.smtp.to_string();

    let out = send_test(
        &config,
        &server,
        &["--user", "wordpress", "--password-stdin"],
        "correct horse\n",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("250 "),
        "{}",
        text(&out.stdout)
    );
    let sent = ms.wait_for_sent(1, Duration::from_secs(20)).await;
    assert_eq!(
        sent[0].subject().as_deref(),
        Some("graph-relay test message")
    );

    let out = send_test(
        &config,
        &server,
        &["--user", "wordpress", "--password-stdin"],
        "battery staple",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refused at AUTH: 535 5.7.8"), "{stderr}");
    assert!(
        !stderr.contains("battery"),
        "the password is never printed: {stderr}"
    );

    // Without a login the relay says why.
    let out = send_test(&config, &server, &[], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("530 5.7.0"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ms.sent().len(), 1);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_uses_starttls_and_trusts_the_relays_own_certificate() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = write(dir.path(), "relay.crt", &generated.cert.pem());
    let key = write(
        dir.path(),
        "relay.key",
        &generated.signing_key.serialize_pem(),
    );
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: format!("{tls}{USERS}"),
            ..RelayOptions::default()
        },
    )
    .await;
    let server = relay.smtp.to_string();
    let login = ["--user", "wordpress", "--password-stdin"];

    // The relay's config names its certificate: STARTTLS, then AUTH, then the message.
    let with_cert = write(dir.path(), "with-cert.toml", &format!("[smtp]\n{tls}"));
    let out = send_test(&with_cert, &server, &login, "correct horse").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    ms.wait_for_sent(1, Duration::from_secs(20)).await;

    // Without it the self-signed certificate is not trusted: proof that TLS was attempted.
    let without = write(dir.path(), "without-cert.toml", "");
    let out = send_test(&without, &server, &login, "correct horse").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("STARTTLS failed") && stderr.contains("certificate"),
        "{stderr}"
    );

    // --no-starttls stays in plain text, where loopback may log in.
    let out = send_test(
        &without,
        &server,
        &["--user", "wordpress", "--password-stdin", "--no-starttls"],
        "correct horse",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    ms.wait_for_sent(2, Duration::from_secs(20)).await;
    relay.shutdown().await;
}
