//! "Mail that got a 250 is never lost", tested on the real binary against the fake Graph:
//! kill -9 after the 250 and during an in-flight delivery, Retry-After, 503 storms, a
//! permanent failure shown by `queue list` and brought back by `queue retry` while serve runs.

use graph_relay_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::binary::{RelayProcess, relay_cli};
use common::fake_graph::{FakeMicrosoft, Route, TokenFailure};
use common::relay::{RelayOptions, relay_toml, send_raw};

/// The relay process, and a message sent through it.
async fn send(serve: &RelayProcess, subject: &str) -> u16 {
    let message = format!(
        "From: wp@contoso.test\r\nTo: customer@example.com\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    );
    send_raw(
        serve.smtp,
        "wp@contoso.test",
        &["customer@example.com"],
        message.as_bytes(),
    )
    .await
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    spool: PathBuf,
}

fn setup(ms: &FakeMicrosoft, queue_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let opts = RelayOptions {
        queue_extra: format!("retry_min = \"1s\"\nretry_max = \"2s\"\n{queue_extra}"),
        ..RelayOptions::default()
    };
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, relay_toml(ms, &spool, &opts)).unwrap();
    Setup {
        _dir: dir,
        config,
        spool,
    }
}

fn subjects(ms: &FakeMicrosoft) -> Vec<String> {
    let mut subjects: Vec<String> = ms.sent().iter().filter_map(|m| m.subject()).collect();
    subjects.sort();
    subjects
}

fn queue_files(spool: &Path) -> usize {
    std::fs::read_dir(spool.join("queue"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn wait_for_empty_queue(spool: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while queue_files(spool) > 0 {
        assert!(
            Instant::now() < deadline,
            "queue not empty after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_250_then_restart_delivers_each_message_exactly_once() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    // The token endpoint is down, so nothing leaves before the kill.
    ms.set_token_failure(Some(TokenFailure::TemporarilyUnavailable));
    let serve = RelayProcess::start(&setup.config, &[]).await;
    for i in 0..3 {
        assert_eq!(send(&serve, &format!("killed-{i}")).await, 250);
    }
    serve.kill9().await;
    assert!(ms.sent().is_empty(), "nothing was sent before the kill");
    assert_eq!(
        queue_files(&setup.spool),
        6,
        "3 messages, each .eml + .json, survived SIGKILL"
    );

    ms.set_token_failure(None);
    let serve = RelayProcess::start(&setup.config, &[]).await;
    ms.wait_for_sent(3, Duration::from_secs(20)).await;
    wait_for_empty_queue(&setup.spool, Duration::from_secs(10)).await;
    assert_eq!(
        subjects(&ms),
        vec!["killed-0", "killed-1", "killed-2"],
        "each exactly once"
    );
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_in_flight_delivery_repeats_at_most_that_one() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    ms.set_response_delay(Duration::from_secs(3));
    let serve = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(send(&serve, "in-flight").await, 250);
    // Wait until the request is at the fake, then kill the relay before the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ms.request_count(Route::SendMail) == 0 {
        assert!(Instant::now() < deadline, "the relay never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve.kill9().await;
    ms.set_response_delay(Duration::ZERO);
    let serve = RelayProcess::start(&setup.config, &[]).await;
    wait_for_empty_queue(&setup.spool, Duration::from_secs(20)).await;
    let count = subjects(&ms).iter().filter(|s| *s == "in-flight").count();
    assert!(
        (1..=2).contains(&count),
        "delivered {count} times; the in-flight one may repeat once, never be lost"
    );
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_the_message_goes_once() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    ms.fail_next_sends(
        1,
        429,
        &[("Retry-After", "2")],
        r#"{"error":{"code":"TooManyRequests","message":"Please retry again later."}}"#,
    );
    let serve = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(send(&serve, "throttled").await, 250);
    let sent = ms.wait_for_sent(1, Duration::from_secs(20)).await;
    let attempts: Vec<_> = ms
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::SendMail)
        .collect();
    assert_eq!(attempts.len(), 2, "one 429, one success");
    let gap = attempts[1].at.duration_since(attempts[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After: 2"
    );
    wait_for_empty_queue(&setup.spool, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(subjects(&ms), vec!["throttled"]);
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_ends_in_one_delivery() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    ms.fail_next_sends(
        4,
        503,
        &[],
        r#"{"error":{"code":"serviceNotAvailable","message":"busy"}}"#,
    );
    let serve = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(send(&serve, "storm").await, 250);
    ms.wait_for_sent(1, Duration::from_secs(30)).await;
    wait_for_empty_queue(&setup.spool, Duration::from_secs(5)).await;
    assert_eq!(subjects(&ms), vec!["storm"]);
    assert_eq!(ms.request_count(Route::SendMail), 5);
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_400_fails_with_its_reason_and_queue_retry_delivers_it() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    ms.fail_next_sends(
        1,
        400,
        &[],
        r#"{"error":{"code":"ErrorInvalidRecipients","message":"At least one recipient isn't valid."}}"#,
    );
    let serve = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(send(&serve, "bounced").await, 250);
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        let (_, listing) = relay_cli(&setup.config, &["queue", "list"]);
        if let Some(line) = listing.lines().find(|l| l.contains("\tfailed\t")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "never failed: {listing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        line.contains("400 ErrorInvalidRecipients: At least one recipient isn't valid."),
        "{line}"
    );
    assert!(ms.sent().is_empty());

    let id = line.split('\t').next().unwrap().to_string();
    let (code, _) = relay_cli(&setup.config, &["queue", "retry", &id]);
    assert_eq!(code, 0);
    let retried_at = Instant::now();
    ms.wait_for_sent(1, Duration::from_secs(10)).await;
    assert!(
        retried_at.elapsed() <= Duration::from_secs(10),
        "a running serve picks up retry within 10 s"
    );
    wait_for_empty_queue(&setup.spool, Duration::from_secs(5)).await;
    assert_eq!(subjects(&ms), vec!["bounced"]);
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_with_exit_0_and_keeps_queued_mail() {
    let ms = FakeMicrosoft::start().await;
    let setup = setup(&ms, "");
    ms.set_token_failure(Some(TokenFailure::TemporarilyUnavailable));
    let serve = RelayProcess::start(&setup.config, &[]).await;
    assert_eq!(send(&serve, "kept").await, 250);
    let status = serve.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        queue_files(&setup.spool),
        2,
        "the undelivered message stays queued"
    );
}
