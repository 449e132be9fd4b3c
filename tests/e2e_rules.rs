//! End to end: design section 5's rules as the fake Graph sees them — From policy (send-as),
//! at most 5 x- headers, inline images, more than 500 recipients split, signed mail as MIME.

use graph_relay_testkit as common;

use common::fake_graph::*;
use common::relay::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_from_is_sent_from_the_sender_with_reply_to() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let msg = b"From: WordPress <wordpress@example.org>\r\nTo: alice@example.org\r\nSubject: contact form\r\n\r\nhi\r\n";
    send_ok(
        relay.smtp,
        "wordpress@example.org",
        &["alice@example.org"],
        msg,
    )
    .await;
    // The fake refuses (403 ErrorSendAsDenied) a `from` the mailbox may not send as.
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.mailbox, DEFAULT_SENDER);
    assert!(
        m.from()
            .is_none_or(|f| f.eq_ignore_ascii_case(DEFAULT_SENDER)),
        "{:?}",
        m.from()
    );
    assert_eq!(m.reply_to(), vec!["wordpress@example.org"]);
    relay.wait_queue_empty(WAIT).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_five_x_headers_and_only_x_headers() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let mut msg =
        String::from("From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: headers\r\n");
    for i in 0..7 {
        msg.push_str(&format!("X-Custom-{i}: value {i}\r\n"));
    }
    msg.push_str("List-Unsubscribe: <mailto:unsub@example.org>\r\nAuto-Submitted: auto-generated\r\n\r\nbody\r\n");
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        msg.as_bytes(),
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    let headers = m.headers();
    assert!(headers.len() <= 5, "{headers:?}");
    assert!(
        headers
            .iter()
            .all(|(n, _)| n.to_ascii_lowercase().starts_with("x-"))
    );
    assert!(ms.rejected().is_empty(), "{}", ms.request_log());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_image_becomes_an_inline_attachment_with_content_id() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let png: Vec<u8> = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0, 0, 13, 1, 2, 3];
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&png)
    };
    let msg = format!(
        "From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: logo\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/related; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p><img src=\"cid:logo@site\"></p>\r\n\
         --r\r\nContent-Type: image/png\r\nContent-ID: <logo@site>\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--r--\r\n"
    );
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        msg.as_bytes(),
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    let (kind, html) = m.body().unwrap();
    assert_eq!(kind, "html");
    assert!(html.contains("cid:logo@site"), "{html}");
    let atts = m.attachments();
    assert_eq!(atts.len(), 1, "{atts:?}");
    assert!(atts[0].is_inline);
    assert_eq!(atts[0].content_id.as_deref(), Some("logo@site"));
    assert_eq!(atts[0].bytes, png);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_500_recipients_are_split_and_each_gets_it_once() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let rcpts: Vec<String> = (0..620).map(|i| format!("r{i:03}@example.org")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = b"From: relay@contoso.test\r\nTo: r000@example.org, r001@example.org\r\nSubject: many\r\n\r\nhi all\r\n";
    assert_eq!(
        send_raw(relay.smtp, "relay@contoso.test", &refs, msg).await,
        250
    );
    relay.wait_queue_empty(WAIT).await;
    let sent = ms.sent();
    assert!(sent.len() >= 2, "{}", ms.request_log());
    let mut all: Vec<String> = Vec::new();
    for m in &sent {
        let n = m.all_recipients().len();
        assert!(n <= MAX_RECIPIENTS, "{n} recipients in one Graph message");
        assert_eq!(m.subject().as_deref(), Some("many"));
        all.extend(m.all_recipients());
    }
    all.sort();
    assert_eq!(all, rcpts, "every envelope recipient exactly once");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mail_goes_as_mime_with_envelope_only_recipients_in_bcc() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let msg = "From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: signed\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"s\"\r\n\r\n\
         --s\r\nContent-Type: text/plain\r\n\r\nsigned body\r\n\
         --s\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQE=\r\n--s--\r\n";
    send_ok(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org", "hidden@example.net"],
        msg.as_bytes(),
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.path, SendPath::SendMailMime, "{}", ms.request_log());
    let mime = String::from_utf8_lossy(m.mime.as_deref().unwrap()).into_owned();
    assert!(
        mime.contains("--s\r\nContent-Type: text/plain\r\n\r\nsigned body\r\n"),
        "signed part intact:\n{mime}"
    );
    assert_eq!(
        m.all_recipients(),
        vec!["alice@example.org", "hidden@example.net"]
    );
    relay.shutdown().await;
}
