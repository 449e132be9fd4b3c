//! Runs the relay (in-process via `graph_relay::app::start`, or the real binary) against the fake
//! Microsoft server, and sends mail to it with lettre. Test-only helpers; they never change what
//! the relay does, only how it is configured.

use super::fake_graph::{DEFAULT_SENDER, FakeMicrosoft};
use graph_relay::app::{self, Running, StartOptions};
use graph_relay::config::Config;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to put in the relay's TOML besides the basics.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Give the relay the fake's tenant, client id and secret.
    pub credentials: bool,
    pub sender: String,
    /// Extra lines for `[microsoft]` (e.g. `allowed_senders = ["*@contoso.test"]`).
    pub microsoft_extra: String,
    /// Extra lines for `[queue]`.
    pub queue_extra: String,
    /// Extra lines for `[smtp]`.
    pub smtp_extra: String,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            credentials: true,
            sender: DEFAULT_SENDER.to_string(),
            microsoft_extra: String::new(),
            queue_extra: "retry_min = \"1s\"\nretry_max = \"2s\"\n".into(),
            smtp_extra: String::new(),
        }
    }
}

/// `[microsoft]` lines for a delegated (device code) relay pointed at `ms`.
pub fn delegated_microsoft(ms: &FakeMicrosoft) -> String {
    format!(
        "flow = \"delegated\"\ntenant = \"{}\"\nclient_id = \"{}\"\n",
        ms.tenant(),
        ms.client_id()
    )
}

impl RelayOptions {
    /// A delegated relay: no app credentials, mail sent as the signed-in user.
    pub fn delegated(ms: &FakeMicrosoft) -> Self {
        RelayOptions {
            credentials: false,
            sender: ms.delegated_user(),
            microsoft_extra: delegated_microsoft(ms),
            ..RelayOptions::default()
        }
    }
}

/// A full relay.toml pointed at `ms`, with ports 0 and the spool in `queue_dir`.
pub fn relay_toml(ms: &FakeMicrosoft, queue_dir: &Path, opts: &RelayOptions) -> String {
    let mut t = String::new();
    t.push_str("[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n");
    t.push_str(&opts.smtp_extra);
    t.push_str("\n[microsoft]\n");
    t.push_str(&format!(
        "authority = \"{}\"\ngraph_url = \"{}\"\nsender = \"{}\"\n",
        ms.authority(),
        ms.graph_url(),
        opts.sender
    ));
    if opts.credentials {
        t.push_str(&format!(
            "tenant = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            ms.tenant(),
            ms.client_id(),
            ms.client_secret()
        ));
    }
    t.push_str(&opts.microsoft_extra);
    t.push_str(&format!("\n[queue]\ndir = \"{}\"\n", queue_dir.display()));
    t.push_str(&opts.queue_extra);
    t.push_str("\n[status]\nlisten = \"127.0.0.1:0\"\n");
    t
}

/// A relay running in this process.
pub struct TestRelay {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub smtp: SocketAddr,
    pub status: Option<SocketAddr>,
}

impl TestRelay {
    pub async fn start(ms: &FakeMicrosoft, opts: RelayOptions) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = relay_toml(ms, &dir.path().join("spool"), &opts);
        let config = Config::from_layers(Some(&toml), &[])
            .unwrap_or_else(|e| panic!("relay config rejected: {e:?}\n{toml}"));
        let running = app::start(config, StartOptions::default())
            .await
            .unwrap_or_else(|e| panic!("relay did not start: {e}"));
        let smtp = running.smtp_addrs()[0];
        let status = running.status_addr();
        TestRelay {
            running: Some(running),
            dir,
            smtp,
            status,
        }
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// File names in `<queue.dir>/<sub>/` (e.g. "queue", "failed", "outbox").
    pub fn files_in(&self, sub: &str) -> Vec<String> {
        files_in(&self.queue_dir().join(sub))
    }

    /// Waits until `<queue.dir>/queue/` is empty (every message delivered or failed).
    pub async fn wait_queue_empty(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.files_in("queue");
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("queue not empty after {timeout:?}: {left:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until one message is in `failed/`; returns its record (`last_error` says why).
    pub async fn wait_failed(&self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let json = self
                .files_in("failed")
                .into_iter()
                .find(|f| f.ends_with(".json"));
            if let Some(name) = json {
                let text = std::fs::read_to_string(self.queue_dir().join("failed").join(name))
                    .expect("read failed record");
                return serde_json::from_str(&text).expect("failed record is JSON");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing failed within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /status` as JSON.
    pub async fn status_json(&self) -> Value {
        let addr = self.status.expect("status listener");
        reqwest::get(format!("http://{addr}/status"))
            .await
            .expect("status request")
            .json()
            .await
            .expect("status JSON")
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let addr = self.status.expect("status listener");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    /// Panics unless every one of `lines` is a line of `/metrics`.
    pub async fn assert_metrics(&self, lines: &[&str]) {
        let text = self.metrics().await;
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "{line:?} missing from /metrics:\n{text}"
            );
        }
    }

    pub fn wake(&self) {
        if let Some(r) = &self.running {
            r.wake_delivery();
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An SMTP client for the relay at `addr` (no TLS, no AUTH).
pub fn smtp_client(addr: SocketAddr) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(Duration::from_secs(30)))
        .build()
}

/// Sends raw bytes with this envelope through lettre; returns the server's reply code.
pub async fn send_raw(addr: SocketAddr, from: &str, to: &[&str], message: &[u8]) -> u16 {
    let envelope = lettre::address::Envelope::new(
        Some(from.parse().expect("from address")),
        to.iter()
            .map(|a| a.parse().expect("rcpt address"))
            .collect(),
    )
    .expect("envelope");
    let response = smtp_client(addr)
        .send_raw(&envelope, message)
        .await
        .unwrap_or_else(|e| panic!("SMTP send failed: {e}"));
    u16::from(response.code())
}

/// Sends like [`send_raw`] and panics unless the relay answered 250.
pub async fn send_ok(addr: SocketAddr, from: &str, to: &[&str], message: &[u8]) {
    assert_eq!(send_raw(addr, from, to, message).await, 250);
}

/// Waits for a line starting with `prefix` on a child's stdout; returns it.
pub async fn read_line_starting_with(
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
    timeout: Duration,
) -> String {
    tokio::time::timeout(timeout, async {
        while let Some(line) = stdout.next_line().await.expect("read child stdout") {
            if line.starts_with(prefix) {
                return line;
            }
        }
        panic!("child stdout closed before a line starting with {prefix:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no line starting with {prefix:?} within {timeout:?}"))
}
