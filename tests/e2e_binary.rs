//! End to end with the real `graph-relay` binary: `serve --dry-run` writes the requests it would
//! make to `<queue.dir>/outbox/` and Graph gets nothing; plain `serve` delivers to the fake.
//! The child is started here, stopped by its pid with SIGTERM, and must exit 0.

use graph_relay_testkit as common;

use common::binary::RelayProcess;
use common::fake_graph::*;
use common::mail::{Part, multipart};
use common::relay::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

struct Child {
    process: RelayProcess,
    smtp: SocketAddr,
    _dir: tempfile::TempDir,
    queue_dir: PathBuf,
}

/// Starts `graph-relay --config FILE serve [extra...]` and waits for its ready line.
async fn spawn_relay(ms: &FakeMicrosoft, extra: &[&str]) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("spool");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        relay_toml(ms, &queue_dir, &RelayOptions::default()),
    )
    .unwrap();
    let process = RelayProcess::start(&config, extra).await;
    Child {
        smtp: process.smtp,
        process,
        _dir: dir,
        queue_dir,
    }
}

impl Child {
    /// SIGTERM to this child only; it must exit 0.
    async fn terminate(self) {
        let status = self.process.terminate().await;
        assert!(status.success(), "exit status {status:?}");
    }
}

async fn wait_for_files(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let files: Vec<String> = files_in(dir)
            .into_iter()
            .filter(|f| f.ends_with(".json"))
            .collect();
        if files.len() >= n {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {files:?}, wanted {n} .json",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_the_outbox_and_never_calls_graph() {
    let ms = FakeMicrosoft::start().await;
    let relay = spawn_relay(&ms, &["--dry-run"]).await;
    let msg = b"From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: dry\r\n\r\nnot really sent\r\n";
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org", "bcc@example.net"],
        msg,
    )
    .await;

    let outbox = relay.queue_dir.join("outbox");
    let files = wait_for_files(&outbox, 1).await;
    let doc = read_json(&outbox.join(&files[0]));
    assert_eq!(doc["method"], "POST", "{doc}");
    assert_eq!(
        doc["url"],
        format!("{}/users/{DEFAULT_SENDER}/sendMail", ms.graph_url()),
        "{doc}"
    );
    let message = &doc["body"]["message"];
    assert_eq!(message["subject"], "dry");
    assert_eq!(
        message["toRecipients"][0]["emailAddress"]["address"],
        "alice@example.org"
    );
    assert_eq!(
        message["bccRecipients"][0]["emailAddress"]["address"],
        "bcc@example.net"
    );

    // A message over 4 MB: the draft path, in order, with PUTs shown by range, size and sha256.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let big_msg = multipart(
        "relay@contoso.test",
        "dry big",
        &[Part::file("big.bin", &big)],
    );
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        &big_msg,
    )
    .await;
    let files = wait_for_files(&outbox, 2).await;
    let big_doc = files
        .iter()
        .map(|f| read_json(&outbox.join(f)))
        .find(|d| d.get("requests").is_some())
        .expect("a {\"requests\":[...]} document for the draft path");
    let reqs = big_doc["requests"].as_array().unwrap();
    let methods: Vec<&str> = reqs.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods.first(), Some(&"POST"));
    assert!(
        reqs[0]["url"].as_str().unwrap().ends_with("/messages"),
        "{big_doc}"
    );
    assert!(reqs.iter().any(|r| {
        r["url"]
            .as_str()
            .unwrap_or("")
            .ends_with("/createUploadSession")
    }));
    let puts: Vec<&Value> = reqs.iter().filter(|r| r["method"] == "PUT").collect();
    assert!(puts.len() >= 2, "{big_doc}");
    let total: u64 = puts.iter().map(|p| p["size"].as_u64().unwrap()).sum();
    assert_eq!(total, big.len() as u64);
    // Each PUT's bytes, read back from the spool, are the attachment's bytes at its range.
    for put in &puts {
        let range = put["content_range"].as_str().unwrap();
        let (first, last) = range
            .strip_prefix("bytes ")
            .and_then(|r| r.split('/').next())
            .and_then(|r| r.split_once('-'))
            .unwrap_or_else(|| panic!("bad Content-Range {range}"));
        let (first, last): (usize, usize) = (first.parse().unwrap(), last.parse().unwrap());
        let want = util::sha256_hex(&big[first..=last]);
        assert_eq!(put["sha256"], want.as_str(), "{range}");
    }
    assert!(
        reqs.last().unwrap()["url"]
            .as_str()
            .unwrap()
            .ends_with("/send")
    );

    // Graph was never called.
    let graph_calls: Vec<_> = ms
        .requests()
        .into_iter()
        .filter(|r| r.route.is_graph() || r.route == Route::UploadChunk)
        .collect();
    assert!(
        graph_calls.is_empty(),
        "dry run called Graph:\n{}",
        ms.request_log()
    );
    assert!(ms.sent().is_empty());
    eprintln!("token requests during dry run: {}", ms.token_requests());
    relay.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_delivers_and_stops_on_sigterm() {
    let ms = FakeMicrosoft::start().await;
    let relay = spawn_relay(&ms, &[]).await;
    let msg = b"From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: from the binary\r\n\r\nhello\r\n";
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        msg,
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.subject().as_deref(), Some("from the binary"));
    assert_eq!(m.to(), vec!["alice@example.org"]);
    let queue = relay.queue_dir.join("queue");
    let deadline = Instant::now() + WAIT;
    while !files_in(&queue).is_empty() {
        assert!(
            Instant::now() < deadline,
            "spool not drained: {:?}",
            files_in(&queue)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    relay.terminate().await;
    assert_eq!(ms.sent().len(), 1);
}
