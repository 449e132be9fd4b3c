//! Big mail against the fake Graph: the size switch (one sendMail below 4 MB, a draft with
//! upload sessions above), attachments reassembled at the fake and compared by sha256, inline
//! images on the draft path, a chunk answered 500, an upload URL that expires, an answer to
//! `/send` that got lost, a kill -9 in the middle of an upload, signed mail over the MIME cap, and
//! a message over the mailbox's size limit.

use graph_relay_testkit as common;

use std::time::Duration;

use base64::Engine as _;
use common::binary::RelayProcess;
use common::fake_graph::*;
use common::mail::{Part, multipart, random_bytes};
use common::relay::*;
use lettre::AsyncTransport as _;

const WAIT: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// A message from the relay's own mailbox.
fn message(subject: &str, parts: &[Part<'_>]) -> Vec<u8> {
    multipart("relay@contoso.test", subject, parts)
}

/// A relay whose SMTP side takes 50 MiB messages (the default is 35 MiB, Exchange's default).
fn big_options() -> RelayOptions {
    RelayOptions {
        smtp_extra: format!("max_message_bytes = {}\n", 50 * MIB),
        ..RelayOptions::default()
    }
}

async fn send(relay_smtp: std::net::SocketAddr, message: &[u8]) {
    send_ok(
        relay_smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        message,
    )
    .await;
}

/// The one message the fake sent, after the queue drained, with nothing left in Drafts.
async fn the_sent_message(ms: &FakeMicrosoft, relay: &TestRelay) -> SentMessage {
    let sent = ms.wait_for_sent(1, WAIT).await;
    relay.wait_queue_empty(WAIT).await;
    assert_eq!(ms.sent().len(), 1, "sent once:\n{}", ms.request_log());
    assert_eq!(ms.unsent_drafts(), 0, "no draft left behind");
    sent[0].clone()
}

/// Each attachment arrived byte for byte: (name, sha256) at the fake equals what was sent.
fn assert_same_attachments(got: &SentMessage, parts: &[Part<'_>]) {
    let mut got: Vec<(String, String)> = got
        .attachments()
        .iter()
        .map(|a| (a.name.clone(), util::sha256_hex(&a.bytes)))
        .collect();
    let mut want: Vec<(String, String)> = parts
        .iter()
        .map(|p| (p.name.to_string(), util::sha256_hex(p.bytes)))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Every upload PUT was in order, at most 4 MiB, without an Authorization header.
fn assert_clean_uploads(ms: &FakeMicrosoft) {
    assert!(
        ms.upload_chunks()
            .iter()
            .all(|c| c.len <= MAX_UPLOAD_CHUNK_BYTES)
    );
    assert!(
        ms.requests()
            .iter()
            .filter(|r| r.route == Route::UploadChunk)
            .all(|r| r.authorization.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_5_mb_attachment_goes_in_one_send_mail() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(2_500_000, 1);
    let parts = [Part::file("scan.pdf", &data)];
    send(relay.smtp, &message("2.5 MB", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_eq!(m.path, SendPath::SendMailJson);
    assert_same_attachments(&m, &parts);
    assert_eq!(ms.request_count(Route::CreateMessage), 0, "no draft needed");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_2_mb_attachment_goes_through_an_upload_session() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(3_200_000, 2);
    let parts = [Part::file("invoice.pdf", &data)];
    send(relay.smtp, &message("3.2 MB", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_eq!(m.path, SendPath::Draft, "{}", ms.request_log());
    assert_same_attachments(&m, &parts);
    assert_eq!(ms.request_count(Route::CreateUploadSession), 1);
    assert_eq!(
        ms.upload_chunks().len(),
        1,
        "3.2 MB is one chunk of 3,276,800"
    );
    assert_clean_uploads(&ms);
    assert!(ms.rejected().is_empty(), "{}", ms.request_log());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_mib_attachment_is_streamed_and_reassembled_byte_exact() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, big_options()).await;
    let data = random_bytes(30 * MIB, 3);
    let parts = [Part::file("scanner.pdf", &data)];
    send(relay.smtp, &message("30 MiB", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_eq!(m.path, SendPath::Draft);
    assert_same_attachments(&m, &parts);
    assert_eq!(ms.upload_chunks().len(), (30 * MIB).div_ceil(3_276_800));
    assert_clean_uploads(&ms);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_images_keep_is_inline_and_content_id_on_the_draft_path() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let banner = random_bytes(3_500_000, 4);
    let logo = random_bytes(20_000, 5);
    let report = random_bytes(1_500_000, 6);
    let parts = [
        Part {
            name: "banner.png",
            content_type: "image/png",
            bytes: &banner,
            cid: Some("banner@contoso"),
        },
        Part {
            name: "logo.png",
            content_type: "image/png",
            bytes: &logo,
            cid: Some("logo@contoso"),
        },
        Part::file("report.pdf", &report),
    ];
    send(relay.smtp, &message("inline", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_eq!(m.path, SendPath::Draft);
    assert_eq!(
        ms.request_count(Route::CreateUploadSession),
        1,
        "the banner"
    );
    assert_same_attachments(&m, &parts);
    let attachments = m.attachments();
    for (name, cid) in [
        ("banner.png", "banner@contoso"),
        ("logo.png", "logo@contoso"),
    ] {
        let a = attachments.iter().find(|a| a.name == name).expect(name);
        assert!(a.is_inline, "{name} is inline");
        assert_eq!(a.content_id.as_deref(), Some(cid), "{name}");
    }
    let report = attachments.iter().find(|a| a.name == "report.pdf");
    assert!(report.is_some_and(|a| !a.is_inline));
    let (kind, html) = m.body().expect("body");
    assert_eq!(kind, "html");
    assert!(html.contains("cid:banner@contoso"), "{html}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_answered_500_is_sent_again_in_the_same_session() {
    let ms = FakeMicrosoft::start().await;
    ms.push_response(
        Route::UploadChunk,
        ScriptedResponse::graph_error(500, "InternalServerError", "Something went wrong."),
    );
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(8 * MIB, 7);
    let parts = [Part::file("big.pdf", &data)];
    send(relay.smtp, &message("chunk 500", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_same_attachments(&m, &parts);
    let chunks = ms.upload_chunks().len();
    assert_eq!(chunks, (8 * MIB).div_ceil(3_276_800));
    assert_eq!(
        ms.request_count(Route::UploadChunk),
        chunks + 1,
        "only the refused chunk was sent again:\n{}",
        ms.request_log()
    );
    assert_eq!(
        ms.request_count(Route::CreateUploadSession),
        1,
        "same session"
    );
    assert_eq!(ms.request_count(Route::CreateMessage), 1, "same draft");
    relay
        .assert_metrics(&[
            &format!("graph_relay_upload_bytes_total {}", 8 * MIB),
            "graph_relay_upload_retries_total{kind=\"chunk\"} 1",
            "graph_relay_upload_retries_total{kind=\"session\"} 0",
        ])
        .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_taken_only_in_part_goes_on_from_next_expected_ranges() {
    let ms = FakeMicrosoft::start().await;
    ms.keep_half_of_next_chunk();
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(8 * MIB, 13);
    let parts = [Part::file("big.pdf", &data)];
    send(relay.smtp, &message("partial chunk", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_same_attachments(&m, &parts);
    let chunks = ms.upload_chunks();
    assert_eq!(
        chunks[0].len,
        3_276_800 / 2,
        "the fake kept half the first PUT"
    );
    assert_eq!(
        chunks[1].start,
        3_276_800 / 2,
        "the next PUT starts where the session said"
    );
    assert!(chunks.windows(2).all(|w| w[1].start == w[0].end + 1));
    assert_eq!(
        ms.request_count(Route::CreateUploadSession),
        1,
        "same session"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_url_that_expires_is_replaced_by_a_new_session() {
    let ms = FakeMicrosoft::start().await;
    // The first session's URL dies after its first chunk (404, as an expired one).
    ms.expire_upload_sessions(1, 1);
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(8 * MIB, 8);
    let parts = [Part::file("big.pdf", &data)];
    send(relay.smtp, &message("expired URL", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_same_attachments(&m, &parts);
    assert_eq!(
        m.attachments().len(),
        1,
        "the dead session left no attachment"
    );
    assert_eq!(
        ms.request_count(Route::CreateUploadSession),
        2,
        "{}",
        ms.request_log()
    );
    assert_eq!(ms.request_count(Route::CreateMessage), 1, "same draft");
    relay
        .assert_metrics(&["graph_relay_upload_retries_total{kind=\"session\"} 1"])
        .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_draft_whose_answer_was_lost_is_not_sent_again() {
    let ms = FakeMicrosoft::start().await;
    // Graph sends the draft, but the relay sees a 504: it must find out, not send a copy.
    ms.lose_next_reply(Route::SendDraft);
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            queue_extra: "retry_min = \"1s\"\nretry_max = \"2s\"\n".into(),
            ..RelayOptions::default()
        },
    )
    .await;
    let data = random_bytes(5 * MIB, 9);
    send(
        relay.smtp,
        &message("lost answer", &[Part::file("a.pdf", &data)]),
    )
    .await;
    relay.wait_queue_empty(WAIT).await;
    assert_eq!(
        ms.sent().len(),
        1,
        "sent exactly once:\n{}",
        ms.request_log()
    );
    assert_eq!(ms.request_count(Route::SendDraft), 1);
    assert_eq!(
        ms.request_count(Route::GetMessage),
        1,
        "the retry asked whether the draft went"
    );
    let get = ms
        .requests()
        .into_iter()
        .find(|r| r.route == Route::GetMessage)
        .expect("a GET");
    assert!(
        get.path.contains(ms.sent()[0].draft_id.as_deref().unwrap()),
        "{}",
        get.path
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_send_starts_over_with_a_new_token_and_sends_once() {
    let ms = FakeMicrosoft::start().await;
    ms.push_response(Route::SendDraft, ScriptedResponse::unauthorized());
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(5 * MIB, 14);
    let parts = [Part::file("a.pdf", &data)];
    send(relay.smtp, &message("401 on send", &parts)).await;
    let m = the_sent_message(&ms, &relay).await;
    assert_same_attachments(&m, &parts);
    assert_eq!(ms.token_requests(), 2, "a new token after the 401");
    assert_eq!(ms.request_count(Route::SendDraft), 2);
    assert_eq!(
        ms.request_count(Route::CreateMessage),
        2,
        "the refused draft was replaced:\n{}",
        ms.request_log()
    );
    assert_eq!(ms.request_count(Route::DeleteMessage), 1);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_an_upload_deletes_the_orphan_draft_and_sends_once() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        relay_toml(&ms, &dir.path().join("spool"), &RelayOptions::default()),
    )
    .unwrap();
    ms.set_response_delay(Duration::from_millis(500));
    let serve = RelayProcess::start(&config, &[]).await;
    let data = random_bytes(12 * MIB, 10);
    let parts = [Part::file("crash.pdf", &data)];
    send(serve.smtp, &message("crash", &parts)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ms.request_count(Route::UploadChunk) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.kill9().await;
    assert_eq!(ms.unsent_drafts(), 1, "the crash left a draft");

    ms.set_response_delay(Duration::ZERO);
    let serve = RelayProcess::start(&config, &[]).await;
    let m = ms.wait_for_sent(1, WAIT).await[0].clone();
    assert_same_attachments(&m, &parts);
    let queue = dir.path().join("spool").join("queue");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !files_in(&queue).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ms.sent().len(), 1, "sent once");
    assert_eq!(ms.unsent_drafts(), 0, "the orphan draft was deleted");
    assert_eq!(ms.request_count(Route::DeleteMessage), 1);
    assert_eq!(ms.request_count(Route::CreateMessage), 2, "started again");
    serve.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mail_over_the_mime_cap_is_refused_with_the_reason() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let payload = base64::engine::general_purpose::STANDARD.encode(random_bytes(3_200_000, 11));
    let signed = format!(
        "From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: signed\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"s\"\r\n\r\n\
         --s\r\nContent-Type: application/pdf; name=big.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload}\r\n\
         --s\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQE=\r\n--s--\r\n"
    );
    let envelope = lettre::address::Envelope::new(
        Some("relay@contoso.test".parse().unwrap()),
        vec!["alice@example.org".parse().unwrap()],
    )
    .unwrap();
    let refusal = smtp_client(relay.smtp)
        .send_raw(&envelope, signed.as_bytes())
        .await
        .expect_err("refused at the end of DATA");
    let text = refusal.to_string();
    assert!(refusal.is_permanent(), "{text}");
    assert!(
        text.contains("signed or encrypted message too large"),
        "the reason is given: {text}"
    );
    assert!(ms.requests().iter().all(|r| !r.route.is_graph()));
    assert!(relay.files_in("queue").is_empty(), "nothing queued");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_mailbox_limit_fails_with_graphs_reason() {
    let ms = FakeMicrosoft::start_with(FakeConfig {
        max_message_bytes: 6 * MIB,
        ..Default::default()
    })
    .await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let data = random_bytes(8 * MIB, 12);
    send(
        relay.smtp,
        &message("too big", &[Part::file("big.pdf", &data)]),
    )
    .await;
    let record = relay.wait_failed(WAIT).await;
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["last_error"]["status"], 400, "{record}");
    assert_eq!(
        record["last_error"]["code"], "ErrorMessageSizeExceeded",
        "{record}"
    );
    assert_eq!(
        record["last_error"]["message"],
        "The message exceeds the maximum supported size."
    );
    assert_eq!(ms.request_count(Route::SendDraft), 1, "not retried");
    assert!(ms.sent().is_empty());
    assert_eq!(ms.unsent_drafts(), 0, "the refused draft was deleted");
    relay.shutdown().await;
}
