//! The status listener against DNS rebinding and cross-site forms, on the real binary over raw
//! HTTP/1 sockets: a request whose `Host` is a name that merely resolves to 127.0.0.1 (an
//! attacker's page after rebinding) is refused with 421 before it can read the queue or press a
//! button, and the refusal is logged; the listener's own IP, `localhost` and the names in
//! `status.allowed_hosts` work; a POST from another site's page is refused even with a good
//! `Host`; every action taken from the page is logged with the queue id and the client.

use graph_relay_testkit as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::binary::RelayProcess;
use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, relay_toml, send_ok};
use graph_relay::spool::Spool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FROM: &str = "wp@contoso.test";
const TO: &str = "alice@example.org";

/// One request on its own connection; returns the status code and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request
            .push_str("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_string())
}

struct Relay {
    process: RelayProcess,
    status: SocketAddr,
    queue_dir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _ms: FakeMicrosoft,
}

impl Relay {
    /// The binary with no Microsoft credentials (mail is held, never sent), `relay.test` in
    /// `status.allowed_hosts`, its log at INFO in a file, and one message in the queue.
    async fn start_with_one_message() -> (Relay, String) {
        let ms = FakeMicrosoft::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let queue_dir = dir.path().join("spool");
        let options = RelayOptions {
            credentials: false,
            ..RelayOptions::default()
        };
        let mut toml = relay_toml(&ms, &queue_dir, &options);
        toml.push_str("allowed_hosts = [\"relay.test\"]\n");
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("relay.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let process =
            RelayProcess::start_logging(&config, &[], "graph_relay=info", Stdio::from(log_file))
                .await;
        let status = process.status.expect("status listener");
        send_ok(
            process.smtp,
            FROM,
            &[TO],
            format!("From: {FROM}\r\nTo: {TO}\r\nSubject: held\r\n\r\nbody\r\n").as_bytes(),
        )
        .await;
        let relay = Relay {
            process,
            status,
            queue_dir,
            log,
            _dir: dir,
            _ms: ms,
        };
        relay.wait_held().await;
        let ids = relay.queued();
        assert_eq!(ids.len(), 1, "{ids:?}");
        (relay, ids[0].clone())
    }

    /// Waits until delivery has looked at the message and holds it (no credentials), so the
    /// page's buttons do not race delivery's own rewrite of the record.
    async fn wait_held(&self) {
        let host = format!("127.0.0.1:{}", self.status.port());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (code, body) = http(self.status, "GET", "/status", &[("Host", &host)]).await;
            assert_eq!(code, 200, "{body}");
            if body.contains("\"held\":1") {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never held: {body}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn queued(&self) -> Vec<String> {
        queued_ids(&self.queue_dir)
    }

    /// Log lines holding every one of `parts`.
    fn log_lines_with(&self, parts: &[&str]) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .expect("read log")
            .lines()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .map(String::from)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read log")
    }

    async fn stop(self) {
        let status = self.process.terminate().await;
        assert!(status.success(), "exit status {status:?}");
    }
}

fn queued_ids(queue_dir: &Path) -> Vec<String> {
    Spool::open(queue_dir)
        .expect("open spool")
        .list_all()
        .expect("list spool")
        .iter()
        .map(|r| r.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_and_the_listeners_own_names_work() {
    let (relay, id) = Relay::start_with_one_message().await;
    let port = relay.status.port();
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://{evil}");

    // The attack: a page on evil.example, its name rebound to 127.0.0.1, posts to delete.
    let (code, body) = http(
        relay.status,
        "POST",
        &format!("/queue/{id}/delete"),
        &[("Host", &evil), ("Origin", &evil_origin)],
    )
    .await;
    assert_eq!(code, 421, "{body}");
    assert_eq!(
        relay.queued(),
        [id.as_str()],
        "the message must still be queued"
    );
    let refusals = relay.log_lines_with(&["WARN", &format!("host=\"{evil}\""), "/delete"]);
    assert_eq!(
        refusals.len(),
        1,
        "no WARN naming the Host:\n{}",
        relay.log()
    );
    assert!(
        relay.log_lines_with(&["delete done"]).is_empty(),
        "{}",
        relay.log()
    );

    // ... and reads the page, /status and /metrics.
    for path in ["/", "/status", "/metrics"] {
        let (code, body) = http(relay.status, "GET", path, &[("Host", &evil)]).await;
        assert_eq!(code, 421, "GET {path}: {body}");
        assert!(
            !body.contains(FROM) && !body.contains(TO),
            "GET {path}: {body}"
        );
    }
    assert_eq!(
        relay
            .log_lines_with(&["WARN", &format!("host=\"{evil}\"")])
            .len(),
        4,
        "{}",
        relay.log()
    );

    // The listener's own names: its IP, localhost, and what status.allowed_hosts lists.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        format!("relay.test:{port}"),
    ] {
        let (code, body) = http(relay.status, "GET", "/", &[("Host", &host)]).await;
        assert_eq!(code, 200, "Host {host}: {body}");
        assert!(
            body.contains(FROM) && body.contains(TO),
            "Host {host}: {body}"
        );
        let (code, body) = http(relay.status, "GET", "/status", &[("Host", &host)]).await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }

    // A good Host does not excuse a form posted from another site's page.
    let own = format!("127.0.0.1:{port}");
    let (code, body) = http(
        relay.status,
        "POST",
        &format!("/queue/{id}/delete"),
        &[("Host", &own), ("Origin", &evil_origin)],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(relay.queued(), [id.as_str()]);
    assert_eq!(
        relay
            .log_lines_with(&["WARN", "action refused", "action=\"delete\""])
            .len(),
        1,
        "{}",
        relay.log()
    );

    // From the page itself: retry, then delete, each logged with the id and the client.
    for (action, host) in [
        ("retry", format!("localhost:{port}")),
        ("delete", format!("relay.test:{port}")),
    ] {
        let origin = format!("http://{host}");
        let (code, body) = http(
            relay.status,
            "POST",
            &format!("/queue/{id}/{action}"),
            &[("Host", &host), ("Origin", &origin)],
        )
        .await;
        assert_eq!(code, 303, "{action}: {body}");
        let logged = relay.log_lines_with(&[
            "INFO",
            &format!("{action} done"),
            &format!("id={id}"),
            "client=127.0.0.1:",
        ]);
        assert_eq!(logged.len(), 1, "{action} not logged:\n{}", relay.log());
    }
    assert!(relay.queued().is_empty(), "{:?}", relay.queued());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_is_refused() {
    let (relay, _id) = Relay::start_with_one_message().await;
    // HTTP/1.0 may leave Host out; nothing then says the client meant this listener.
    let mut stream = tokio::net::TcpStream::connect(relay.status)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.0 421 "), "{answer}");
    assert!(!answer.contains(TO), "{answer}");
    assert_eq!(
        relay.log_lines_with(&["WARN", "host=\"(none)\""]).len(),
        1,
        "{}",
        relay.log()
    );
    relay.stop().await;
}
