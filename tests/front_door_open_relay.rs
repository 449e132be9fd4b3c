//! Open-relay checks with a client that really is somewhere else: a network namespace joined to
//! this one by a veth pair (CI runs as root; where `ip netns` is not allowed these parts say so
//! and pass, or fail when `CI` is set), plus the `serve_connection` seam with a made-up peer address.
//!
//! - outside `allowed_networks`: `554 5.7.1` at connect and nothing gets through, even from a
//!   client that pipelines a whole transaction without waiting;
//! - inside, with `require_auth`: no MAIL without AUTH (`530 5.7.0`);
//! - AUTH is not offered, and refused (`538 5.7.11`), over plain text from a non-loopback peer;
//!   after STARTTLS it works and the mail reaches Graph.

use graph_relay_testkit as common;
use graph_relay_testkit::front_door_support as support;

use support::smtp_support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, relay_toml};
use graph_relay::app::{self, StartOptions};
use graph_relay::config::Config;
use smtp_support::{RecordingSink, via_seam};
use support::{DELIVERY, make_cert, tls_lines, transcript};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn outside_allowed_networks_nothing_gets_through_even_pipelined() {
    let settings = Arc::new(smtp_support::settings());
    let sink = Arc::new(RecordingSink::default());
    let (mut client, task) = via_seam("203.0.113.9:40000", settings, sink.clone()).await;
    // A bulk sender that does not wait for the greeting.
    client
        .write_all(
            b"EHLO spam.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<victim@example.com>\r\n\
              DATA\r\nSubject: buy\r\n\r\nnow\r\n.\r\nQUIT\r\n",
        )
        .await
        .expect("write");
    client.shutdown().await.expect("shutdown");
    let mut all = String::new();
    tokio::time::timeout(smtp_support::WAIT, client.read_to_string(&mut all))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(all, "554 5.7.1 relay.test Access denied\r\n");
    task.await.expect("session");
    assert_eq!(sink.count(), 0);
}

/// A network namespace with a veth pair: `host` in this namespace, `client` inside it.
struct NetNs {
    name: String,
    veth: String,
    host: IpAddr,
    client: IpAddr,
}

impl NetNs {
    /// Creates it, or returns None where the machine does not allow it (`tools::unavailable`).
    fn create() -> Option<NetNs> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !common::tools::require_tool("ip", "iproute2, for a client in another netns") {
            return None;
        }
        let n = N.fetch_add(1, Ordering::SeqCst);
        let id = std::process::id() % 10_000;
        let name = format!("grtest-{id}-{n}");
        let veth = format!("grv{id}x{n}");
        let peer = format!("grp{id}x{n}");
        // 10.231.<0..249>.0/24, from the process and the counter.
        let subnet = (id * 7 + n) % 250;
        let host: IpAddr = format!("10.231.{subnet}.1").parse().ok()?;
        let client: IpAddr = format!("10.231.{subnet}.2").parse().ok()?;
        let ns = NetNs {
            name,
            veth,
            host,
            client,
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                ns.veth.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer.clone(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", ns.host),
                "dev".into(),
                ns.veth.clone(),
            ],
            vec!["link".into(), "set".into(), ns.veth.clone(), "up".into()],
            ns.inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", ns.client),
                "dev",
                &peer,
            ]),
            ns.inside(&["ip", "link", "set", &peer, "up"]),
            ns.inside(&["ip", "link", "set", "lo", "up"]),
        ];
        for step in steps {
            let out = Command::new("ip").args(&step).output();
            let ok = out.as_ref().is_ok_and(|o| o.status.success());
            if !ok {
                common::tools::unavailable(&format!(
                    "cannot set up a network namespace (`ip {}`: {})",
                    step.join(" "),
                    out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_else(|e| e.to_string())
                ));
                return None;
            }
        }
        Some(ns)
    }

    /// `ip netns exec NAME args...` as arguments to `ip`.
    fn inside(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec!["netns".to_string(), "exec".to_string(), self.name.clone()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// A command run inside the namespace.
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    async fn swaks(&self, server: SocketAddr, args: &[&str]) -> std::process::Output {
        let mut cmd = self.command("swaks");
        cmd.args(["--server", &server.ip().to_string()])
            .args(["--port", &server.port().to_string()])
            .args(["--timeout", "30", "--helo", "outside.test"])
            .args(args);
        support::run(cmd, None).await
    }

    async fn python(&self, script: &str, args: &[String]) -> String {
        let mut cmd = self.command("python3");
        cmd.arg("-c").arg(script).args(args);
        let out = support::run(cmd, None).await;
        assert!(out.status.success(), "{}", transcript(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Starts the relay listening on the host end of the veth pair, with extra `[smtp]` lines.
async fn relay_on(
    ms: &FakeMicrosoft,
    ns: &NetNs,
    queue: &std::path::Path,
    smtp_extra: String,
    allowed: &[&str],
) -> app::Running {
    let toml = relay_toml(
        ms,
        queue,
        &RelayOptions {
            smtp_extra,
            ..RelayOptions::default()
        },
    );
    let mut config = Config::from_layers(Some(&toml), &[]).expect("config");
    config.smtp.listen = vec![SocketAddr::new(ns.host, 0)];
    config.smtp.allowed_networks = allowed
        .iter()
        .map(|n| n.parse().expect("network"))
        .collect();
    app::start(config, StartOptions::default())
        .await
        .expect("relay starts")
}

const RAW_AUTH: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode().rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "|".join(lines)
def step(name, command):
    try:
        if command:
            s.sendall(command)
        r = reply()
    except OSError as e:
        r = "error " + type(e).__name__
    print(name, r if r else "closed")
step("greeting", None)
step("ehlo", b"EHLO outside.test\r\n")
step("auth", b"AUTH PLAIN AHdwAHMzY3JldA==\r\n")
step("mail", b"MAIL FROM:<a@outside.test>\r\n")
step("quit", b"QUIT\r\n")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_another_network_namespace() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. Default allowed_networks (loopback only): refused at connect.
    let relay = relay_on(
        &ms,
        &ns,
        &dir.path().join("q1"),
        String::new(),
        &["127.0.0.0/8"],
    )
    .await;
    let addr = relay.smtp_addrs()[0];
    let out = ns
        .python(RAW_AUTH, &[addr.ip().to_string(), addr.port().to_string()])
        .await;
    assert!(
        out.starts_with("greeting 554 5.7.1 relay.test Access denied\nehlo closed\n"),
        "{out}"
    );
    if common::tools::require_tool("swaks", "the swaks parts") {
        let out = ns
            .swaks(addr, &["--from", "a@outside.test", "--to", "r@example.com"])
            .await;
        assert!(!out.status.success(), "{}", transcript(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("554 5.7.1"),
            "{}",
            transcript(&out)
        );
    }
    relay.shutdown().await;

    // 2. The namespace's network allowed, require_auth, a user, a certificate.
    let c = make_cert(dir.path(), "relay");
    let subnet = format!("{}/24", ns.client);
    let relay = relay_on(
        &ms,
        &ns,
        &dir.path().join("q2"),
        format!(
            "{}require_auth = true\n[smtp.users]\nwp = \"s3cret\"\n",
            tls_lines(&c, false)
        ),
        &[&subnet],
    )
    .await;
    let addr = relay.smtp_addrs()[0];
    let out = ns
        .python(RAW_AUTH, &[addr.ip().to_string(), addr.port().to_string()])
        .await;
    assert!(out.contains("greeting 220 "), "{out}");
    assert!(out.contains("|250-STARTTLS|"), "{out}");
    assert!(
        !out.contains("AUTH PLAIN"),
        "AUTH not offered in plain text: {out}"
    );
    assert!(
        out.contains("auth 538 5.7.11 Encryption required for requested authentication mechanism"),
        "{out}"
    );
    assert!(
        out.contains("mail 530 5.7.0 Authentication required"),
        "{out}"
    );

    if common::tools::require_tool("swaks", "the swaks parts") {
        // No AUTH: MAIL is refused.
        let out = ns
            .swaks(addr, &["--from", "a@outside.test", "--to", "r@example.com"])
            .await;
        assert_eq!(out.status.code(), Some(23), "{}", transcript(&out));
        // AUTH without TLS: swaks finds no AUTH to use.
        let out = ns
            .swaks(
                addr,
                &[
                    "--auth",
                    "PLAIN",
                    "--auth-user",
                    "wp",
                    "--auth-password",
                    "s3cret",
                    "--from",
                    "a@outside.test",
                    "--to",
                    "r@example.com",
                ],
            )
            .await;
        assert_eq!(out.status.code(), Some(28), "{}", transcript(&out));
        // STARTTLS + AUTH: accepted and delivered.
        let out = ns
            .swaks(
                addr,
                &[
                    "--tls",
                    "--auth",
                    "PLAIN",
                    "--auth-user",
                    "wp",
                    "--auth-password",
                    "s3cret",
                    "--from",
                    "a@outside.test",
                    "--to",
                    "r@example.com",
                    "--header",
                    "Subject: from the other network",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", transcript(&out));
        let sent = ms.wait_for_sent(1, DELIVERY).await;
        assert_eq!(sent[0].subject().as_deref(), Some("from the other network"));
    }
    let delivered = ms.sent().len();
    assert!(
        delivered <= 1,
        "only the authenticated message: {delivered}"
    );
    relay.shutdown().await;
}

/// Python inside the namespace: GET /status, GET /, POST /reauthorize; prints each status code.
const STATUS_PROBE: &str = r#"
import sys, urllib.request, urllib.error
base = "http://%s" % sys.argv[1]
def code(req):
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
print(code(base + "/status"), code(base + "/"), code(urllib.request.Request(base + "/reauthorize", data=b"", method="POST")))
"#;

/// A status listener reachable from another host shows counts (`/status`) but not the page
/// (which lists senders and recipients), and takes no actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_actions_are_for_this_host_only() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = relay_toml(&ms, &dir.path().join("spool"), &RelayOptions::default());
    let mut config = Config::from_layers(Some(&toml), &[]).expect("config");
    config.status.listen = Some(SocketAddr::new(ns.host, 0));
    let relay = app::start(config, StartOptions::default())
        .await
        .expect("relay starts");
    let status = relay.status_addr().expect("status listener");
    let out = ns.python(STATUS_PROBE, &[status.to_string()]).await;
    assert_eq!(
        out.trim(),
        "200 403 403",
        "from another host: /status, /, POST /reauthorize"
    );
    relay.shutdown().await;
}
