//! Odd message shapes over a real SMTP socket to the fake Graph: what the relay accepts with a
//! 250 it delivers, whole. A streamed attachment in a message whose header section ends with a
//! `\r\r\n` line and has 8-bit headers; `Content-Type: text` without a subtype; a body line right
//! after the headers; a message with no header section; a 30 MB `X-` header, a 300-character
//! subject and a huge display name; and MIME nested past the limit, refused at DATA.

use graph_relay_testkit as common;

use std::time::Duration;

use base64::Engine as _;
use common::fake_graph::*;
use common::mail::random_bytes;
use common::relay::*;
use graph_relay::convert::{MAX_HEADER_VALUE_BYTES, MAX_MIME_NESTING};
use lettre::AsyncTransport as _;

const WAIT: Duration = Duration::from_secs(30);
const FROM: &str = "relay@contoso.test";
const RCPT: &str = "alice@example.org";

/// The one message the fake got, once the queue is empty and nothing failed.
async fn delivered(ms: &FakeMicrosoft, relay: &TestRelay) -> SentMessage {
    let sent = ms.wait_for_sent(1, WAIT).await;
    relay.wait_queue_empty(WAIT).await;
    assert!(relay.files_in("failed").is_empty(), "nothing failed");
    assert!(ms.rejected().is_empty(), "{}", ms.request_log());
    assert_eq!(ms.sent().len(), 1, "{}", ms.request_log());
    sent[0].clone()
}

/// The body's type and text without the line ends at its end (lettre adds one of its own).
fn body(m: &SentMessage) -> (String, String) {
    let (kind, text) = m.body().expect("a body");
    (kind, text.trim_end().to_string())
}

async fn relay_and_fake() -> (FakeMicrosoft, TestRelay) {
    let ms = FakeMicrosoft::start().await;
    let options = RelayOptions {
        smtp_extra: format!("max_message_bytes = {}\n", 50 << 20),
        ..RelayOptions::default()
    };
    let relay = TestRelay::start(&ms, options).await;
    (ms, relay)
}

/// Every line ends in `\r\r\n`, as from a PHP script that turned `\n` into `\r\n` once too
/// often: the header section ends at a `\r\r\n` line, as mail-parser reads it. The Subject is
/// windows-1252, and latin-1 text follows the attachment, so repairing the 8-bit lines shifts
/// bytes on both sides of it.
fn cr_cr_lf_message(data: &[u8], trailing_spaces: bool) -> Vec<u8> {
    let mut m = format!("From: {FROM}\r\r\nTo: {RCPT}\r\r\n").into_bytes();
    m.extend_from_slice(b"Subject: Rechnung f\xfcr M\xe4rz\r\r\n");
    m.extend_from_slice(
        b"MIME-Version: 1.0\r\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\r\n\r\r\n\
          --b\r\r\nContent-Type: text/plain\r\r\n\r\r\nSee the attachment.\r\r\n\
          --b\r\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\r\n\
          Content-Transfer-Encoding: base64\r\r\n\r\r\n",
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    for line in b64.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        if trailing_spaces {
            m.extend_from_slice(b"   ");
        }
        m.extend_from_slice(b"\r\r\n");
    }
    m.extend_from_slice(b"--b\r\r\nContent-Type: text/plain; name=\"notes.txt\"\r\r\n\r\r\n");
    m.extend_from_slice(&b"caf\xe9 cr\xe8me br\xfbl\xe9e\r\r\n".repeat(40));
    m.extend_from_slice(b"--b--\r\r\n");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_attachment_after_a_cr_cr_lf_header_end_arrives_byte_exact() {
    for trailing_spaces in [false, true] {
        let (ms, relay) = relay_and_fake().await;
        let data = random_bytes(3_000_003, 11);
        send_ok(
            relay.smtp,
            FROM,
            &[RCPT],
            &cr_cr_lf_message(&data, trailing_spaces),
        )
        .await;
        let m = delivered(&ms, &relay).await;
        assert_eq!(
            m.path,
            SendPath::Draft,
            "3 MB goes through an upload session"
        );
        assert_eq!(ms.request_count(Route::CreateUploadSession), 1);
        let scan = m
            .attachments()
            .into_iter()
            .find(|a| a.name == "scan.pdf")
            .expect("scan.pdf");
        assert_eq!(
            util::sha256_hex(&scan.bytes),
            util::sha256_hex(&data),
            "trailing spaces: {trailing_spaces}"
        );
        assert_eq!(m.subject().as_deref(), Some("Rechnung für März"));
        relay.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_text_without_subtype_is_the_body() {
    let (ms, relay) = relay_and_fake().await;
    let msg = format!(
        "From: {FROM}\r\nTo: {RCPT}\r\nSubject: backup\r\nMIME-Version: 1.0\r\nContent-Type: text; charset=utf-8\r\n\r\nBackup finished: 12 files.\r\n"
    );
    send_ok(relay.smtp, FROM, &[RCPT], msg.as_bytes()).await;
    let m = delivered(&ms, &relay).await;
    assert_eq!(
        body(&m),
        ("text".into(), "Backup finished: 12 files.".into())
    );
    assert!(m.attachments().is_empty(), "no attachment-1.bin");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_line_right_after_the_headers_is_kept() {
    let (ms, relay) = relay_and_fake().await;
    let msg = format!(
        "From: {FROM}\r\nTo: {RCPT}\r\nSubject: disk alert\r\nDisk /var is 91% full.\r\nSecond line: still body.\r\n"
    );
    send_ok(relay.smtp, FROM, &[RCPT], msg.as_bytes()).await;
    let m = delivered(&ms, &relay).await;
    assert_eq!(m.subject().as_deref(), Some("disk alert"));
    assert_eq!(
        body(&m),
        (
            "text".into(),
            "Disk /var is 91% full.\r\nSecond line: still body.".into()
        )
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_without_a_header_section_is_delivered_from_the_envelope_sender() {
    let (ms, relay) = relay_and_fake().await;
    send_ok(
        relay.smtp,
        FROM,
        &[RCPT],
        b"just some text\r\nwith no header section at all\r\n",
    )
    .await;
    let m = delivered(&ms, &relay).await;
    assert_eq!(m.from().as_deref(), Some(FROM));
    assert_eq!(m.all_recipients(), vec![RCPT.to_string()]);
    assert_eq!(
        body(&m),
        (
            "text".into(),
            "just some text\r\nwith no header section at all".into()
        )
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_header_subject_and_display_name_are_cut_not_failed() {
    let (ms, relay) = relay_and_fake().await;
    let big = "v".repeat(30_000_000);
    let subject = "s".repeat(300);
    let name = "N".repeat(200_000);
    let msg = format!(
        "From: {FROM}\r\nTo: \"{name}\" <{RCPT}>\r\nSubject: {subject}\r\nX-Big: {big}\r\nX-Small: kept\r\n\r\nbody\r\n"
    );
    send_ok(relay.smtp, FROM, &[RCPT], msg.as_bytes()).await;
    let m = delivered(&ms, &relay).await;
    assert_eq!(m.subject().map(|s| s.chars().count()), Some(255));
    let headers = m.headers();
    let value = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{n} missing: {headers:?}"))
    };
    assert_eq!(value("X-Big").len(), MAX_HEADER_VALUE_BYTES);
    assert_eq!(value("X-Small"), "kept");
    let to = &m.message()["toRecipients"][0]["emailAddress"];
    assert_eq!(to["address"], RCPT);
    assert_eq!(to["name"].as_str().map(|n| n.chars().count()), Some(255));
    relay.shutdown().await;
}

/// `depth` multiparts, each the only part of the one around it.
fn nested(depth: usize) -> Vec<u8> {
    let mut m = format!("From: {FROM}\r\nTo: {RCPT}\r\nSubject: deep\r\n").into_bytes();
    for i in 0..depth {
        m.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nthe bottom\r\n");
    for i in (0..depth).rev() {
        m.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mime_nested_past_the_limit_is_refused_at_data_and_at_the_limit_delivered() {
    let (ms, relay) = relay_and_fake().await;
    let envelope = lettre::address::Envelope::new(
        Some(FROM.parse().expect("from")),
        vec![RCPT.parse().expect("rcpt")],
    )
    .expect("envelope");
    let refused = smtp_client(relay.smtp)
        .send_raw(&envelope, &nested(MAX_MIME_NESTING + 1))
        .await
        .expect_err("refused");
    let reply = refused.to_string();
    assert!(refused.is_permanent(), "{reply}");
    assert!(
        reply.contains("554") || reply.contains("5.6.0"),
        "a 554 5.6.0: {reply}"
    );
    assert!(
        reply.contains(&format!("nested too deeply (limit {MAX_MIME_NESTING})")),
        "{reply}"
    );
    assert!(relay.files_in("queue").is_empty(), "nothing spooled");

    send_ok(relay.smtp, FROM, &[RCPT], &nested(MAX_MIME_NESTING)).await;
    let m = delivered(&ms, &relay).await;
    assert_eq!(body(&m), ("text".into(), "the bottom".into()));
    relay.shutdown().await;
}
