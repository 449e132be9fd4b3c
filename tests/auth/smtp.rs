//! SMTP AUTH PLAIN and LOGIN against `smtp.users`: offered on loopback or under TLS only,
//! `require_auth`, failures and their limit, and real clients (lettre, Python smtplib).

use graph_relay_testkit::smtp_support as support;

use std::sync::Arc;

use graph_relay::config::SmtpUser;
use graph_relay::smtp::SmtpSettings;
use support::{Raw, RecordingSink, b64, settings, start, via_seam};

fn with_users() -> SmtpSettings {
    let mut s = settings();
    s.users
        .insert("wp".to_string(), SmtpUser::Password("s3cret".to_string()));
    s.users.insert(
        "hashed".to_string(),
        SmtpUser::Hashed {
            // argon2id of "s3cret" (cheap parameters; real hashes come from `graph-relay passwd`).
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$Z3JhcGgtcmVsYXktdGVzdA$RbBwOb4T0heR6KjJpbjbMGujHz7H1rYC2FMHsTXIaU4".to_string(),
            mailbox: None,
        },
    );
    s
}

#[tokio::test]
async fn auth_plain_on_loopback_and_the_user_is_recorded() {
    let server = start(with_users()).await;
    let mut c = server.connect().await;
    c.reply().await;
    let ehlo = c.cmd("EHLO c").await;
    assert!(ehlo.contains("\n250-AUTH PLAIN LOGIN\n"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"))).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"))).await,
        "503 5.5.1 Already authenticated"
    );
    let r = c.send_mail("a@x.test", &["r@y.test"], "\r\nx\r\n").await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(server.sink.messages()[0].0.auth_user.as_deref(), Some("wp"));
    server.stop().await;
}

#[tokio::test]
async fn auth_plain_with_a_challenge_and_auth_login() {
    let server = start(with_users()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        c.cmd(&b64(b"wp\0wp\0s3cret")).await,
        "235 2.7.0 Authentication successful"
    );
    let mut c = server.client().await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64(b"wp")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64(b"s3cret")).await,
        "235 2.7.0 Authentication successful"
    );
    let mut c = server.client().await;
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64(b"wp"))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&b64(b"s3cret")).await,
        "235 2.7.0 Authentication successful"
    );
    server.stop().await;
}

#[tokio::test]
async fn auth_failures_cancel_and_the_failure_limit() {
    let server = start(with_users()).await;
    let mut c = server.client().await;
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("*").await, "501 5.7.0 Authentication cancelled");
    assert_eq!(
        c.cmd("AUTH PLAIN !!!").await,
        "501 5.5.2 Invalid base64 data"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"))).await,
        "503 5.5.1 AUTH not allowed during a mail transaction"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    // Wrong password, unknown user, a hashed user with a wrong password: 535 each.
    for creds in [&b"\0wp\0wrong"[..], b"\0nobody\0s3cret"] {
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", b64(creds))).await,
            "535 5.7.8 Authentication credentials invalid"
        );
    }
    // The third failure also closes the connection.
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0hashed\0hash")))
            .await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.reply().await,
        "421 4.7.0 relay.test Too many errors, closing connection"
    );
    assert!(c.closed().await);
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn require_auth_refuses_mail_until_authenticated() {
    let mut s = with_users();
    s.require_auth = true;
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "530 5.7.0 Authentication required"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"))).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    server.stop().await;
}

/// Plaintext AUTH from a non-loopback client is neither offered nor accepted.
#[tokio::test]
async fn no_plaintext_auth_from_other_hosts() {
    let mut s = with_users();
    s.allowed_networks = vec!["192.0.2.0/24".parse().expect("net")];
    s.require_auth = true;
    let sink = Arc::new(RecordingSink::default());
    let (stream, task) = via_seam("192.0.2.7:1234", Arc::new(s), sink.clone()).await;
    let mut c = Raw::new(stream);
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.cmd("EHLO c").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0wp\0s3cret"))).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "530 5.7.0 Authentication required"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    task.await.expect("session");
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn lettre_authenticates_with_login_and_plain() {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let mut s = with_users();
    s.require_auth = true;
    let server = start(s).await;
    for mechanism in [Mechanism::Login, Mechanism::Plain] {
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            server.addr,
            Some(support::WAIT),
            &ClientId::Domain("lettre.test".into()),
            None,
            None,
        )
        .await
        .expect("connect");
        let creds = Credentials::new("wp".into(), "s3cret".into());
        let r = conn.auth(&[mechanism], &creds).await.expect("auth");
        assert_eq!(r.code().to_string(), "235");
        let envelope = Envelope::new(
            Some("a@x.test".parse().expect("from")),
            vec!["r@y.test".parse().expect("to")],
        )
        .expect("envelope");
        let r = conn
            .send(&envelope, b"Subject: s\r\n\r\nx\r\n")
            .await
            .expect("send");
        assert!(r.is_positive());
        conn.quit().await.expect("quit");
    }
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 2);
    assert!(
        msgs.iter()
            .all(|(e, _)| e.auth_user.as_deref() == Some("wp"))
    );
    server.stop().await;
}

#[tokio::test]
async fn python_smtplib_login() {
    let mut s = with_users();
    s.require_auth = true;
    let server = start(s).await;
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("py.test")
print("auth", s.esmtp_features.get("auth", "").strip())
try:
    s.login("wp", "wrong")
except smtplib.SMTPAuthenticationError as e:
    print("bad", e.smtp_code)
print("login", s.login("wp", "s3cret")[0])
s.sendmail("a@x.test", ["r@y.test"], b"Subject: s\r\n\r\nx\r\n")
print("quit", s.quit()[0])
"#;
    let out = support::python(script, &[server.addr.port().to_string()]).await;
    assert!(out.contains("auth PLAIN LOGIN"), "{out}");
    assert!(out.contains("bad 535"), "{out}");
    assert!(out.contains("login 235"), "{out}");
    assert!(out.contains("quit 221"), "{out}");
    assert_eq!(server.sink.messages()[0].0.auth_user.as_deref(), Some("wp"));
    server.stop().await;
}
