//! STARTTLS and implicit TLS with rustls (ring): offered only when a certificate is configured,
//! state reset and pipelined plaintext dropped at the upgrade, AUTH unlocked by TLS for
//! non-loopback clients, and real clients (lettre, Python smtplib).

use graph_relay_testkit::smtp_support as support;

use std::sync::Arc;

use graph_relay::config::SmtpUser;
use support::{
    Raw, RecordingSink, b64, start, start_implicit_tls, tls_connect, tls_settings, via_seam,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn starttls_upgrades_and_resets_the_session() {
    let server = start(tls_settings()).await;
    let mut c = server.connect().await;
    c.reply().await;
    let ehlo = c.cmd("EHLO c").await;
    assert!(ehlo.contains("\n250-STARTTLS\n"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<before@x.test>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tls = tls_connect(c.into_inner()).await;
    let mut c = Raw::new(tls);
    // Everything from before the handshake is forgotten: EHLO first, no transaction open.
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "503 5.5.1 Send EHLO or HELO first"
    );
    let ehlo = c.cmd("EHLO c").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active");
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "\r\nover tls\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.mail_from, "a@x.test");
    server.stop().await;
}

/// RFC 3207 / CVE-2011-0411 style injection: plaintext pipelined after STARTTLS must not be
/// executed inside the TLS session.
#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_dropped() {
    let server = start(tls_settings()).await;
    let mut c = server.client().await;
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let mut c = Raw::new(tls_connect(c.into_inner()).await);
    c.cmd("EHLO c").await;
    // Had the injected MAIL run, this would be a nested MAIL.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    server.stop().await;
}

#[tokio::test]
async fn auth_is_offered_to_other_hosts_only_after_starttls() {
    let mut s = tls_settings();
    s.allowed_networks = vec!["192.0.2.0/24".parse().expect("net")];
    s.users
        .insert("wp".to_string(), SmtpUser::Password("s3cret".to_string()));
    s.require_auth = true;
    let sink = Arc::new(RecordingSink::default());
    let (stream, task) = via_seam("192.0.2.7:1234", Arc::new(s), sink.clone()).await;
    let mut c = Raw::new(stream);
    c.reply().await;
    let ehlo = c.cmd("EHLO c").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let plain = format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"));
    assert_eq!(
        c.cmd(&plain).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    let mut c = Raw::new(tls_connect(c.into_inner()).await);
    let ehlo = c.cmd("EHLO c").await;
    assert!(ehlo.contains("\n250-AUTH PLAIN LOGIN\n"), "{ehlo}");
    assert_eq!(c.cmd(&plain).await, "235 2.7.0 Authentication successful");
    let r = c.send_mail("a@x.test", &["r@y.test"], "\r\nx\r\n").await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    task.await.expect("session");
    let msgs = sink.messages();
    assert_eq!(msgs[0].0.auth_user.as_deref(), Some("wp"));
    assert_eq!(msgs[0].0.client_ip, Some("192.0.2.7".parse().expect("ip")));
}

#[tokio::test]
async fn implicit_tls_serves_smtp_inside_tls_from_the_first_byte() {
    let server = start_implicit_tls(tls_settings()).await;
    let tls = tls_connect(
        tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect"),
    )
    .await;
    let mut c = Raw::new(tls);
    assert_eq!(c.reply().await, "220 relay.test ESMTP graph-relay ready");
    let ehlo = c.cmd("EHLO c").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "\r\nimplicit\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(server.sink.messages()[0].1.as_slice(), b"\r\nimplicit\r\n");
    server.stop().await;
}

#[tokio::test]
async fn a_failed_handshake_closes_only_that_connection() {
    let server = start(tls_settings()).await;
    let mut c = server.client().await;
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    let mut stream = c.into_inner();
    stream
        .write_all(b"this is not a TLS client hello\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(support::WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "server should close after a bad handshake");
    // Plaintext on the implicit-TLS port fails the same way.
    let implicit = start_implicit_tls(tls_settings()).await;
    let mut stream = tokio::net::TcpStream::connect(implicit.addr)
        .await
        .expect("connect");
    stream.write_all(b"EHLO c\r\n").await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(support::WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "implicit TLS port should close on plaintext");
    assert!(!String::from_utf8_lossy(&rest).contains("220 relay.test"));
    implicit.stop().await;
    // The server goes on serving.
    let mut c = server.client().await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    server.stop().await;
}

#[tokio::test]
async fn lettre_starttls_and_implicit_tls() {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;

    let tls_params = || {
        TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .build_rustls()
            .expect("tls parameters")
    };
    let id = ClientId::Domain("lettre.test".into());
    let envelope = Envelope::new(
        Some("a@x.test".parse().expect("from")),
        vec!["r@y.test".parse().expect("to")],
    )
    .expect("envelope");

    let server = start(tls_with_user()).await;
    let mut conn =
        AsyncSmtpConnection::connect_tokio1(server.addr, Some(support::WAIT), &id, None, None)
            .await
            .expect("connect");
    assert!(conn.can_starttls());
    conn.starttls(tls_params(), &id).await.expect("starttls");
    assert!(conn.is_encrypted());
    conn.auth(
        &[Mechanism::Plain],
        &Credentials::new("wp".into(), "s3cret".into()),
    )
    .await
    .expect("auth");
    for _ in 0..2 {
        let r = conn
            .send(&envelope, b"Subject: s\r\n\r\nx\r\n")
            .await
            .expect("send");
        assert!(r.is_positive());
    }
    conn.quit().await.expect("quit");
    assert_eq!(server.sink.count(), 2);
    server.stop().await;

    let implicit = start_implicit_tls(tls_with_user()).await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        implicit.addr,
        Some(support::WAIT),
        &id,
        Some(tls_params()),
        None,
    )
    .await
    .expect("connect implicit");
    assert!(conn.is_encrypted());
    let r = conn
        .send(&envelope, b"Subject: s\r\n\r\nx\r\n")
        .await
        .expect("send");
    assert!(r.is_positive());
    conn.quit().await.expect("quit");
    assert_eq!(implicit.sink.count(), 1);
    implicit.stop().await;
}

#[tokio::test]
async fn python_smtplib_starttls_and_smtp_ssl() {
    let plain = start(tls_with_user()).await;
    let implicit = start_implicit_tls(tls_with_user()).await;
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("py.test")
print("starttls", s.starttls(context=ctx)[0])
s.ehlo("py.test")
print("has_starttls", s.has_extn("starttls"))
print("login", s.login("wp", "s3cret")[0])
s.sendmail("a@x.test", ["r@y.test"], b"Subject: starttls\r\n\r\nx\r\n")
s.quit()
s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[2]), timeout=10, context=ctx)
s.ehlo("py.test")
s.sendmail("a@x.test", ["r@y.test"], b"Subject: ssl\r\n\r\nx\r\n")
print("quit", s.quit()[0])
"#;
    let out = support::python(
        script,
        &[
            plain.addr.port().to_string(),
            implicit.addr.port().to_string(),
        ],
    )
    .await;
    assert!(out.contains("starttls 220"), "{out}");
    assert!(out.contains("has_starttls False"), "{out}");
    assert!(out.contains("login 235"), "{out}");
    assert!(out.contains("quit 221"), "{out}");
    assert_eq!(plain.sink.messages()[0].0.auth_user.as_deref(), Some("wp"));
    assert!(implicit.sink.messages()[0].1.starts_with(b"Subject: ssl"));
    plain.stop().await;
    implicit.stop().await;
}

#[tokio::test]
async fn implicit_tls_without_a_certificate_does_not_serve() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink: Arc<dyn graph_relay::smtp::MessageSink> = Arc::new(RecordingSink::default());
    // Returns at once instead of serving plaintext on a TLS port.
    tokio::time::timeout(
        support::WAIT,
        graph_relay::smtp::serve_implicit_tls(
            listener,
            Arc::new(support::settings()),
            sink,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("returns without a certificate");
}

fn tls_with_user() -> graph_relay::smtp::SmtpSettings {
    let mut s = tls_settings();
    s.users
        .insert("wp".to_string(), SmtpUser::Password("s3cret".to_string()));
    s
}
