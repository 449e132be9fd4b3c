//! End to end: real SMTP clients (lettre, Python smtplib, swaks) → the relay (in-process) → the
//! fake Graph. Every test asserts on what the fake received, and that the spool drains.

use graph_relay_testkit as common;

use common::fake_graph::*;
use common::relay::*;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn attachment_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A message with To, Cc, no Bcc header, a text body and one attachment, built by lettre.
fn lettre_message(subject: &str, attachment: &[u8]) -> Vec<u8> {
    let m = lettre::Message::builder()
        .from("Site <relay@contoso.test>".parse::<Mailbox>().unwrap())
        .to("Alice <alice@example.org>".parse().unwrap())
        .cc("bob@example.org".parse().unwrap())
        .subject(subject)
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(
                    "Hello from lettre.\nSecond line.".to_string(),
                ))
                .singlepart(Attachment::new("report.bin".into()).body(
                    attachment.to_vec(),
                    ContentType::parse("application/octet-stream").unwrap(),
                )),
        )
        .unwrap();
    m.formatted()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_message_arrives_as_graph_json_with_envelope_only_bcc() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = attachment_bytes(20_000);
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org", "bob@example.org", "hidden@example.net"],
        &lettre_message("Quarterly report", &data),
    )
    .await;

    let sent = ms.wait_for_sent(1, WAIT).await;
    let m = &sent[0];
    assert_eq!(m.mailbox, DEFAULT_SENDER);
    assert_eq!(m.path, SendPath::SendMailJson);
    assert_eq!(m.subject().as_deref(), Some("Quarterly report"));
    assert_eq!(m.to(), vec!["alice@example.org"]);
    assert_eq!(m.cc(), vec!["bob@example.org"]);
    assert_eq!(
        m.bcc(),
        vec!["hidden@example.net"],
        "envelope-only recipient becomes Bcc"
    );
    let to_name = m.message()["toRecipients"][0]["emailAddress"]["name"].as_str();
    assert_eq!(to_name, Some("Alice"), "display name kept");
    let (kind, content) = m.body().expect("body");
    assert_eq!(kind, "text");
    assert!(
        content.contains("Hello from lettre.") && content.contains("Second line."),
        "{content}"
    );
    let atts = m.attachments();
    assert_eq!(atts.len(), 1, "{atts:?}");
    assert_eq!(atts[0].name, "report.bin");
    assert_eq!(atts[0].bytes, data);
    assert!(
        m.save_to_sent_items().unwrap_or(true),
        "saveToSentItems defaults to true"
    );

    relay.wait_queue_empty(WAIT).await;
    assert!(relay.files_in("failed").is_empty());
    assert_eq!(ms.sent().len(), 1, "delivered exactly once");
    assert_eq!(ms.token_requests_for("client_credentials"), 1);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_message_arrives() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "WordPress <relay@contoso.test>"
m["To"] = "carol@example.org"
m["Subject"] = "Grüße aus Python"
m.set_content("Plain body ✓")
m.add_alternative("<p>HTML body &#10003;</p>", subtype="html")
m.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="pdf", filename="doc.pdf")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1])) as s:
    s.send_message(m, to_addrs=["carol@example.org", "audit@example.net"])
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &relay.smtp.port().to_string()])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.subject().as_deref(), Some("Grüße aus Python"));
    assert_eq!(m.to(), vec!["carol@example.org"]);
    assert_eq!(m.bcc(), vec!["audit@example.net"]);
    let (kind, content) = m.body().unwrap();
    assert_eq!(kind, "html", "HTML alternative wins");
    assert!(content.contains("HTML body"), "{content}");
    let atts = m.attachments();
    assert_eq!(atts.len(), 1);
    assert_eq!(atts[0].name, "doc.pdf");
    assert_eq!(atts[0].content_type.as_deref(), Some("application/pdf"));
    let expected: Vec<u8> = (0..40).flat_map(|_| 0u8..=255).collect();
    assert_eq!(atts[0].bytes, expected);
    relay.wait_queue_empty(WAIT).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_message_arrives() {
    if !common::tools::require_tool("swaks", ".ci/run installs it") {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "attached by swaks\n").unwrap();
    let out = tokio::process::Command::new("swaks")
        .args(["--server", &relay.smtp.to_string()])
        .args(["--from", "relay@contoso.test"])
        .args(["--to", "dave@example.org,erin@example.org"])
        .args(["--header", "Subject: swaks test"])
        .args(["--header", "X-Mailer-Test: yes"])
        .args(["--body", "Body from swaks"])
        .args([
            "--attach-type",
            "text/plain",
            "--attach",
            &format!("@{}", file.display()),
        ])
        .output()
        .await
        .expect("swaks runs");
    assert!(
        out.status.success(),
        "swaks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.subject().as_deref(), Some("swaks test"));
    let mut to = m.to();
    to.extend(m.bcc());
    to.sort();
    assert_eq!(to, vec!["dave@example.org", "erin@example.org"]);
    assert!(m.body().unwrap().1.contains("Body from swaks"));
    let atts = m.attachments();
    assert_eq!(atts.len(), 1, "{atts:?}");
    assert_eq!(atts[0].bytes, b"attached by swaks\n");
    assert_eq!(atts[0].name, "notes.txt");
    relay.wait_queue_empty(WAIT).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_after_a_good_one_does_not_stop_a_later_good_one() {
    // Two mailboxes exist; ghost@ does not, so Graph answers 404 ErrorInvalidUser for it.
    let ms = FakeMicrosoft::start_with(FakeConfig {
        mailboxes: Some(vec![DEFAULT_SENDER.into(), "alice@contoso.test".into()]),
        ..FakeConfig::default()
    })
    .await;
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            microsoft_extra: "allowed_senders = [\"*@contoso.test\"]\n".into(),
            ..RelayOptions::default()
        },
    )
    .await;
    let mail = |from: &str, subject: &str| {
        format!(
            "From: {from}\r\nTo: x@example.org\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
        )
        .into_bytes()
    };
    send_ok(
        relay.smtp,
        "alice@contoso.test",
        &["x@example.org"],
        &mail("alice@contoso.test", "first"),
    )
    .await;
    ms.wait_for_sent(1, WAIT).await;
    send_ok(
        relay.smtp,
        "ghost@contoso.test",
        &["x@example.org"],
        &mail("ghost@contoso.test", "second"),
    )
    .await;
    let refused = ms.wait_for_requests(Route::SendMail, 2, WAIT).await;
    assert_eq!(refused[1].status, 404);
    assert_eq!(refused[1].error_code.as_deref(), Some("ErrorInvalidUser"));
    send_ok(
        relay.smtp,
        "alice@contoso.test",
        &["x@example.org"],
        &mail("alice@contoso.test", "third"),
    )
    .await;

    let sent = ms.wait_for_sent(2, WAIT).await;
    let subjects: Vec<_> = sent.iter().map(|m| m.subject().unwrap()).collect();
    assert_eq!(subjects, vec!["first", "third"]);
    assert!(sent.iter().all(|m| m.mailbox == "alice@contoso.test"));
    relay.wait_queue_empty(WAIT).await;
    assert_eq!(
        relay.files_in("failed").len(),
        2,
        "the ghost message is failed (.eml + .json): {:?}",
        relay.files_in("failed")
    );
    assert_eq!(
        ms.request_count_for_path("/v1.0/users/ghost@contoso.test/sendMail"),
        1,
        "a permanent 404 is not retried"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_4_mb_goes_through_draft_and_upload_session() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let big = attachment_bytes(5 * 1024 * 1024 + 123);
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org", "bob@example.org", "hidden@example.net"],
        &lettre_message("Big one", &big),
    )
    .await;

    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(
        m.path,
        SendPath::Draft,
        "request log:\n{}",
        ms.request_log()
    );
    assert_eq!(m.subject().as_deref(), Some("Big one"));
    assert_eq!(m.to(), vec!["alice@example.org"]);
    assert_eq!(m.cc(), vec!["bob@example.org"]);
    assert_eq!(m.bcc(), vec!["hidden@example.net"]);
    let atts = m.attachments();
    assert_eq!(atts.len(), 1);
    assert_eq!(atts[0].name, "report.bin");
    assert!(atts[0].bytes == big, "uploaded bytes differ");

    assert_eq!(ms.request_count(Route::SendMail), 0);
    assert_eq!(ms.request_count(Route::CreateMessage), 1);
    assert_eq!(ms.request_count(Route::CreateUploadSession), 1);
    assert_eq!(ms.request_count(Route::SendDraft), 1);
    let chunks = ms.upload_chunks();
    assert!(chunks.len() >= 2);
    let mut next = 0;
    for c in &chunks {
        assert_eq!(c.start, next, "in order");
        assert!(c.len <= MAX_UPLOAD_CHUNK_BYTES);
        next = c.end + 1;
    }
    assert_eq!(next as usize, big.len());
    assert!(
        ms.requests()
            .iter()
            .filter(|r| r.route == Route::UploadChunk)
            .all(|r| r.authorization.is_none())
    );
    assert!(
        ms.rejected().is_empty(),
        "nothing refused:\n{}",
        ms.request_log()
    );
    relay.wait_queue_empty(WAIT).await;
    assert_eq!(ms.unsent_drafts(), 0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_to_four_requests_in_flight_per_mailbox() {
    let ms = FakeMicrosoft::start().await;
    ms.set_response_delay(Duration::from_millis(150));
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let n = 12;
    for i in 0..n {
        let msg = format!(
            "From: relay@contoso.test\r\nTo: r{i}@example.org\r\nSubject: burst {i}\r\n\r\nbody\r\n"
        );
        send_ok(
            relay.smtp,
            "relay@contoso.test",
            &[&format!("r{i}@example.org")],
            msg.as_bytes(),
        )
        .await;
    }
    let sent = ms.wait_for_sent(n, WAIT).await;
    assert_eq!(sent.len(), n);
    let max = ms.max_in_flight(DEFAULT_SENDER);
    assert!(
        max <= MAILBOX_CONCURRENCY,
        "relay had {max} requests in flight to one mailbox"
    );
    assert!(
        ms.rejected()
            .iter()
            .all(|r| r.error_code.as_deref() != Some("ApplicationThrottled")),
        "{}",
        ms.request_log()
    );
    relay.wait_queue_empty(WAIT).await;
    eprintln!("max in flight: {max}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_between_3_000_000_bytes_and_3_mib_is_delivered() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = attachment_bytes(3_050_000);
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        &lettre_message("edge", &data),
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert!(m.attachments()[0].bytes == data);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_draft_is_deleted_and_small_mail_still_flows_without_mail_readwrite() {
    // The app has Mail.Send only: big mail (draft path) is refused for that message alone.
    let ms = FakeMicrosoft::start_with(common::fake_graph::FakeConfig {
        app_roles: vec!["Mail.Send".into()],
        ..Default::default()
    })
    .await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let big = attachment_bytes(5 * 1024 * 1024);
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        &lettre_message("Big", &big),
    )
    .await;
    let failed = relay.wait_failed(WAIT).await;
    let reason = failed["last_error"]["message"].as_str().unwrap_or("");
    assert!(
        reason.contains("Mail.ReadWrite"),
        "the reason says what to grant: {failed}"
    );
    let status = relay.status_json().await;
    assert_eq!(
        status["token"]["state"], "valid",
        "a missing Mail.ReadWrite must not hold all mail: {status}"
    );
    let small =
        b"From: relay@contoso.test\r\nTo: bob@example.org\r\nSubject: small\r\n\r\nbody\r\n";
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["bob@example.org"],
        small,
    )
    .await;
    let sent = ms.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].subject().as_deref(), Some("small"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_failure_deletes_the_draft_before_the_retry() {
    let ms = FakeMicrosoft::start().await;
    ms.push_response(
        Route::CreateUploadSession,
        common::fake_graph::ScriptedResponse::unavailable(Some("1")),
    );
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let big = attachment_bytes(5 * 1024 * 1024);
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        &lettre_message("Retried big", &big),
    )
    .await;
    let sent = ms.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].subject().as_deref(), Some("Retried big"));
    relay.wait_queue_empty(WAIT).await;
    assert_eq!(
        ms.request_count(Route::CreateMessage),
        2,
        "one draft per attempt"
    );
    assert_eq!(
        ms.unsent_drafts(),
        0,
        "the first attempt's draft was deleted:\n{}",
        ms.request_log()
    );
    relay.shutdown().await;
}

/// `graph-relay send-test` (WP Mail SMTP's "Email Test", from the command line): 250, exit 0,
/// and the test message reaches Graph; a refusal exits 1 with the server's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_sends_through_the_running_relay() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let run = |to: &'static str, server: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
                .args([
                    "send-test",
                    "--to",
                    to,
                    "--from",
                    "relay@contoso.test",
                    "--server",
                    &server,
                ])
                .output()
                .expect("the binary runs")
        })
    };
    let out = run("alice@example.org", relay.smtp.to_string())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("250 2.0.0 Ok: queued as "), "{stdout}");
    let sent = ms.wait_for_sent(1, WAIT).await;
    assert_eq!(
        sent[0].subject().as_deref(),
        Some("graph-relay test message")
    );
    assert_eq!(sent[0].to(), vec!["alice@example.org"]);

    let out = run("alice@example.org", "127.0.0.1:1".to_string())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no relay there");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
    relay.shutdown().await;
}

/// `GET /metrics` in Prometheus text: messages received, delivered, failed, queue gauges, the
/// token state and Graph latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let ms = FakeMicrosoft::start().await;
    ms.fail_next_sends(
        1,
        400,
        &[],
        r#"{"error":{"code":"ErrorInvalidRecipients","message":"no"}}"#,
    );
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let msg = |n: u8| {
        format!("From: relay@contoso.test\r\nTo: a@example.org\r\nSubject: m{n}\r\n\r\nx\r\n")
    };
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["a@example.org"],
        msg(1).as_bytes(),
    )
    .await;
    relay.wait_queue_empty(WAIT).await;
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["a@example.org"],
        msg(2).as_bytes(),
    )
    .await;
    ms.wait_for_sent(1, WAIT).await;
    relay.wait_queue_empty(WAIT).await;
    relay
        .assert_metrics(&[
            "graph_relay_messages_received_total 2",
            "graph_relay_messages_delivered_total 1",
            "graph_relay_messages_failed_total 1",
            "graph_relay_queue_pending 0",
            "graph_relay_queue_failed 1",
            "graph_relay_token_state{state=\"valid\"} 1",
            "graph_relay_token_state{state=\"reauth_required\"} 0",
            "graph_relay_graph_request_seconds_count 2",
            "graph_relay_upload_bytes_total 0",
        ])
        .await;
    let text = relay.metrics().await;
    assert!(
        text.contains("# TYPE graph_relay_graph_request_seconds histogram"),
        "{text}"
    );
    relay.shutdown().await;
}
