//! AUTH beyond the basics in `smtp.rs`: `graph-relay passwd` hashes that real clients
//! (swaks, Python smtplib over STARTTLS) log in with; the per-address delay after repeated
//! failures, shared across connections and decaying (on tokio's paused clock: no real waiting,
//! exact delays); and users restricted to one mailbox (`mailbox = "..."`: MAIL FROM → 553 5.7.1,
//! From header → 550 5.7.1), end to end with the fake Graph showing the mailbox used.

use graph_relay_testkit as common;
use graph_relay_testkit::front_door_support as support;

use support::smtp_support;

use std::sync::Arc;
use std::time::Duration;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay};
use graph_relay::config::SmtpUser;
use graph_relay::smtp::{self, SmtpSettings};
use smtp_support::{Raw, RecordingSink, b64};
use support::{DELIVERY, make_cert, swaks, tls_lines, transcript};
use tokio_util::sync::CancellationToken;

async fn passwd(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"));
    cmd.arg("passwd").args(args);
    support::run(cmd, Some(stdin)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_hashes_work_with_swaks_and_smtplib_over_starttls() {
    // --password-stdin: everything, minus one trailing newline (spaces are kept).
    let out = passwd(&["--password-stdin"], b"correct horse battery staple \n").await;
    assert!(out.status.success(), "{}", transcript(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hash = stdout.trim_end_matches('\n');
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the hash on stdout: {stdout}"
    );
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "argon2id with the default cost: {hash}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("NAME = {{ password_hash = \"{hash}\" }}")),
        "{stderr}"
    );
    // Without the flag: the first line of stdin.
    let second = passwd(&[], b"other password\r\nignored\n").await;
    assert!(second.status.success(), "{}", transcript(&second));
    let second_hash = String::from_utf8_lossy(&second.stdout).trim().to_string();
    // Nothing to hash: exit 1, no output.
    let empty = passwd(&[], b"\n").await;
    assert_eq!(empty.status.code(), Some(1), "{}", transcript(&empty));
    assert!(empty.stdout.is_empty());

    let ms = FakeMicrosoft::start().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let c = make_cert(certs.path(), "relay");
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: format!(
                "{}require_auth = true\n[smtp.users]\nwp = {{ password_hash = \"{hash}\" }}\n\
                 py = {{ password_hash = \"{second_hash}\" }}\n",
                tls_lines(&c, false)
            ),
            ..RelayOptions::default()
        },
    )
    .await;

    if common::tools::require_tool("swaks", "the swaks part") {
        let ok = swaks(
            relay.smtp,
            &[
                "--auth",
                "LOGIN",
                "--auth-user",
                "wp",
                "--auth-password",
                "correct horse battery staple ",
                "--from",
                "app@contoso.test",
                "--to",
                "someone@example.com",
                "--header",
                "Subject: hashed swaks",
            ],
        )
        .await;
        assert!(ok.status.success(), "{}", transcript(&ok));
        let wrong = swaks(
            relay.smtp,
            &[
                "--auth",
                "PLAIN",
                "--auth-user",
                "wp",
                "--auth-password",
                "correct horse battery staple",
                "--from",
                "app@contoso.test",
                "--to",
                "someone@example.com",
            ],
        )
        .await;
        assert_eq!(wrong.status.code(), Some(28), "{}", transcript(&wrong));
    }

    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("py.test")
try:
    s.sendmail("app@contoso.test", ["someone@example.com"], b"Subject: no\r\n\r\nx\r\n")
except smtplib.SMTPSenderRefused as e:
    print("unauthenticated", e.smtp_code)
s.starttls(context=ctx)
s.ehlo("py.test")
print("auth", s.esmtp_features.get("auth", "").strip())
print("login", s.login("py", "other password")[0])
s.sendmail("app@contoso.test", ["someone@example.com"],
           "Subject: hashed smtplib\r\nFrom: app@contoso.test\r\n\r\nvia STARTTLS\r\n".encode())
print("quit", s.quit()[0])
"#;
    let out = smtp_support::python(script, &[relay.smtp.port().to_string()]).await;
    assert!(out.contains("unauthenticated 530"), "{out}");
    assert!(out.contains("auth PLAIN LOGIN"), "{out}");
    assert!(out.contains("login 235"), "{out}");
    assert!(out.contains("quit 221"), "{out}");

    let expected = if support::have("swaks") { 2 } else { 1 };
    let sent = ms.wait_for_sent(expected, DELIVERY).await;
    let mut subjects: Vec<String> = sent.iter().filter_map(|m| m.subject()).collect();
    subjects.sort();
    assert!(
        subjects.contains(&"hashed smtplib".to_string()),
        "{subjects:?}"
    );
    relay.shutdown().await;
}

/// One connection through the `serve_connection` seam over an in-memory stream, as if from
/// `peer`: returns the client side.
fn connect(
    peer: &str,
    settings: &Arc<SmtpSettings>,
    sink: &Arc<RecordingSink>,
) -> Raw<tokio::io::DuplexStream> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = peer.parse().expect("peer");
    let settings = settings.clone();
    let sink = sink.clone();
    tokio::spawn(async move {
        let stop = CancellationToken::new();
        smtp::serve_connection(server, peer, &settings, sink.as_ref(), &stop).await;
    });
    Raw::new(client)
}

/// Sends a command and returns the reply and how long (on the paused clock) it took.
async fn timed(c: &mut Raw<tokio::io::DuplexStream>, line: &str) -> (String, Duration) {
    let start = tokio::time::Instant::now();
    let reply = c.cmd(line).await;
    (reply, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_from_one_address_are_delayed_across_connections() {
    let mut s = smtp_support::settings();
    s.users
        .insert("wp".into(), SmtpUser::Password("s3cret".into()));
    let settings = Arc::new(s);
    let sink = Arc::new(RecordingSink::default());
    let wrong = format!("AUTH PLAIN {}", b64(b"\0wp\0wrong"));
    let right = format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"));
    let failed = "535 5.7.8 Authentication credentials invalid";

    // Connection 1: three free failures (typos), then the per-connection limit closes it.
    let mut c = connect("127.0.0.1:40001", &settings, &sink);
    c.reply().await;
    c.cmd("EHLO a").await;
    for _ in 0..3 {
        assert_eq!(
            timed(&mut c, &wrong).await,
            (failed.to_string(), Duration::ZERO)
        );
    }
    assert!(c.reply().await.starts_with("421 4.7.0"));
    assert!(c.closed().await);

    // Two new connections from the same address failing at once: the count carries over, the
    // 4th failure waits 1 s and the 5th queues behind it, 1 + 2 s.
    let mut a = connect("127.0.0.1:40002", &settings, &sink);
    let mut b = connect("127.0.0.1:40003", &settings, &sink);
    for c in [&mut a, &mut b] {
        c.reply().await;
        c.cmd("EHLO a").await;
    }
    let start = tokio::time::Instant::now();
    let (ra, rb) = tokio::join!(
        async {
            let r = a.cmd(&wrong).await;
            (r, start.elapsed())
        },
        async {
            // Let `a`'s failure be counted first.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let r = b.cmd(&wrong).await;
            (r, start.elapsed())
        }
    );
    assert_eq!(ra, (failed.to_string(), Duration::from_secs(1)));
    assert_eq!(rb, (failed.to_string(), Duration::from_secs(3)));
    // The 6th: 4 s. The right password is never held back.
    assert_eq!(
        timed(&mut a, &wrong).await,
        (failed.to_string(), Duration::from_secs(4))
    );
    let (reply, took) = timed(&mut a, &right).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    assert_eq!(took, Duration::ZERO);
    a.cmd("QUIT").await;
    b.cmd("QUIT").await;

    // Another client address is not affected.
    let mut other = connect("127.0.0.2:40004", &settings, &sink);
    other.reply().await;
    other.cmd("EHLO b").await;
    assert_eq!(
        timed(&mut other, &wrong).await,
        (failed.to_string(), Duration::ZERO)
    );
    other.cmd("QUIT").await;

    // Quiet for ten minutes: the count has decayed and failures are free again.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let mut c = connect("127.0.0.1:40006", &settings, &sink);
    c.reply().await;
    c.cmd("EHLO a").await;
    assert_eq!(
        timed(&mut c, &wrong).await,
        (failed.to_string(), Duration::ZERO)
    );
    assert_eq!(sink.count(), 0);
}

fn mapped_settings() -> SmtpSettings {
    let mut s = smtp_support::settings();
    s.users.insert(
        "wp".into(),
        SmtpUser::Plain {
            password: "s3cret".into(),
            mailbox: Some("wp@contoso.com".into()),
        },
    );
    s.users.insert(
        "hashed".into(),
        SmtpUser::Hashed {
            password_hash: support::CHEAP_HASH.into(),
            mailbox: Some("shop@contoso.com".into()),
        },
    );
    s.users
        .insert("free".into(), SmtpUser::Password("s3cret".into()));
    s
}

/// DATA with `headers` and a short body; returns the final reply.
async fn data<S>(c: &mut Raw<S>, headers: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert!(c.cmd("RCPT TO:<r@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(format!("{headers}Subject: s\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await;
    c.reply().await
}

#[tokio::test]
async fn a_user_with_a_mailbox_may_send_only_as_that_mailbox() {
    let server = smtp_support::start(mapped_settings()).await;
    let mut c = server.client().await;
    // Before AUTH nothing is restricted (require_auth is off here).
    assert!(
        c.cmd("MAIL FROM:<anyone@else.test>")
            .await
            .starts_with("250")
    );
    assert!(
        data(&mut c, "From: anyone@else.test\r\n")
            .await
            .starts_with("250")
    );

    let auth = format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"));
    assert!(c.cmd(&auth).await.starts_with("235"));
    assert_eq!(
        c.cmd("MAIL FROM:<other@contoso.com>").await,
        "553 5.7.1 <other@contoso.com>: Sender address rejected: not owned by user wp"
    );
    // The mailbox itself, in any case, with a From header naming it (display name allowed).
    assert!(c.cmd("MAIL FROM:<WP@Contoso.COM>").await.starts_with("250"));
    let ok = data(&mut c, "From: \"WordPress\" <wp@contoso.com>\r\n").await;
    assert!(ok.starts_with("250 2.0.0 Ok: queued as"), "{ok}");
    // Right envelope, wrong From header: refused at the end of DATA.
    assert!(c.cmd("MAIL FROM:<wp@contoso.com>").await.starts_with("250"));
    let refused =
        "550 5.7.1 From header must be <wp@contoso.com>: user wp may send only as that mailbox";
    assert_eq!(data(&mut c, "From: boss@contoso.com\r\n").await, refused);
    // Two From addresses, one of them someone else's: refused.
    assert!(c.cmd("MAIL FROM:<wp@contoso.com>").await.starts_with("250"));
    assert_eq!(
        data(&mut c, "From: wp@contoso.com, boss@contoso.com\r\n").await,
        refused
    );
    // No From header: the envelope sender stands in for it (as in the conversion).
    assert!(c.cmd("MAIL FROM:<wp@contoso.com>").await.starts_with("250"));
    assert!(data(&mut c, "").await.starts_with("250"));
    // A null sender passes MAIL, but then the From header must be the mailbox.
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert_eq!(data(&mut c, "").await, refused);
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(
        data(&mut c, "From: wp@contoso.com\r\n")
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;

    // A hashed user with a mailbox, and an unrestricted user.
    let mut c = server.client().await;
    let auth = format!("AUTH PLAIN {}", b64(b"\0hashed\0s3cret"));
    assert!(c.cmd(&auth).await.starts_with("235"));
    assert!(
        c.cmd("MAIL FROM:<wp@contoso.com>")
            .await
            .starts_with("553 5.7.1")
    );
    assert!(
        c.cmd("MAIL FROM:<shop@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(
        data(&mut c, "From: shop@contoso.com\r\n")
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;
    let mut c = server.client().await;
    let auth = format!("AUTH PLAIN {}", b64(b"\0free\0s3cret"));
    assert!(c.cmd(&auth).await.starts_with("235"));
    assert!(
        c.cmd("MAIL FROM:<anyone@else.test>")
            .await
            .starts_with("250")
    );
    assert!(
        data(&mut c, "From: boss@contoso.com\r\n")
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;

    let messages = server.sink.messages();
    let users: Vec<Option<&str>> = messages
        .iter()
        .map(|(e, _)| e.auth_user.as_deref())
        .collect();
    assert_eq!(
        users,
        [
            None,
            Some("wp"),
            Some("wp"),
            Some("wp"),
            Some("hashed"),
            Some("free")
        ]
    );
    server.stop().await;
}

/// End to end: the mapped mailbox, listed in `allowed_senders`, is the mailbox Graph sends
/// from; lettre's refused message never reaches Graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapped_mailbox_is_the_one_graph_sends_from() {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: "require_auth = true\n[smtp.users]\n\
                         shop = { password = \"s3cret\", mailbox = \"shop@contoso.test\" }\n"
                .into(),
            microsoft_extra: "allowed_senders = [\"shop@contoso.test\"]\n".into(),
            ..RelayOptions::default()
        },
    )
    .await;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(relay.smtp.port())
        .credentials(Credentials::new("shop".into(), "s3cret".into()))
        .build();
    let ok = Message::builder()
        .from("Shop <shop@contoso.test>".parse().expect("from"))
        .reply_to("customer@example.org".parse().expect("reply-to"))
        .to("customer@example.org".parse().expect("to"))
        .subject("your order")
        .body("shipped".to_string())
        .expect("message");
    transport.send(ok).await.expect("accepted");
    let spoofed = Message::builder()
        .from("CEO <ceo@contoso.test>".parse().expect("from"))
        .to("customer@example.org".parse().expect("to"))
        .subject("wire money")
        .body("now".to_string())
        .expect("message");
    let err = transport.send(spoofed).await.expect_err("refused");
    assert_eq!(err.status().map(u16::from), Some(553), "{err}");

    let sent = ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent[0].mailbox, "shop@contoso.test");
    assert_eq!(sent[0].from().as_deref(), Some("shop@contoso.test"));
    relay.wait_queue_empty(DELIVERY).await;
    assert_eq!(ms.sent().len(), 1);
    relay.shutdown().await;
}
