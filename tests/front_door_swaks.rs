//! swaks (Debian's) against the whole relay and the fake Microsoft Graph: plain SMTP, STARTTLS
//! (`--tls`), implicit TLS (`--tlsc`), AUTH PLAIN and LOGIN (plain and argon2 users),
//! `--pipeline`, an 8-bit body and attachments. Each test checks what Graph received, not just
//! swaks' exit code. Certificates are made at test time (rcgen). `.ci/run` installs swaks and
//! its TLS modules; without swaks the tests say so and pass (or fail when `CI` is set).

use graph_relay_testkit as common;
use graph_relay_testkit::front_door_support as support;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay};
use support::{CHEAP_HASH, DELIVERY, make_cert, swaks, tls_lines, transcript};

fn no_swaks() -> bool {
    !common::tools::require_tool("swaks", ".ci/run installs it")
}

/// A relay with a certificate (STARTTLS + an implicit TLS port) and two users: `wp` with a
/// plain password and `hashed` with an argon2 hash, both "s3cret".
async fn tls_relay(ms: &FakeMicrosoft, certs: &tempfile::TempDir) -> TestRelay {
    let c = make_cert(certs.path(), "relay");
    let smtp_extra = format!(
        "{}[smtp.users]\nwp = \"s3cret\"\nhashed = {{ password_hash = \"{CHEAP_HASH}\" }}\n",
        tls_lines(&c, true)
    );
    TestRelay::start(
        ms,
        RelayOptions {
            smtp_extra,
            ..RelayOptions::default()
        },
    )
    .await
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_smtp_without_a_certificate_never_offers_starttls() {
    if no_swaks() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let out = swaks(
        relay.smtp,
        &[
            "--from",
            "app@contoso.test",
            "--to",
            "someone@example.com",
            "--header",
            "Subject: plain swaks",
            "--body",
            "It works.",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));
    let t = stdout(&out);
    assert!(!t.contains("STARTTLS"), "{t}");
    assert!(!t.contains("AUTH"), "no users, no AUTH: {t}");
    assert!(
        t.contains("250-8BITMIME") && t.contains("250-PIPELINING"),
        "{t}"
    );
    assert!(t.contains("250 2.0.0 Ok: queued as "), "{t}");
    // --tls against it fails cleanly: nothing to upgrade to.
    let tls = swaks(
        relay.smtp,
        &[
            "--from",
            "app@contoso.test",
            "--to",
            "x@example.com",
            "--tls",
        ],
    )
    .await;
    assert_eq!(tls.status.code(), Some(29), "{}", transcript(&tls));
    assert!(
        String::from_utf8_lossy(&tls.stderr).contains("Host did not advertise STARTTLS"),
        "{}",
        transcript(&tls)
    );

    let sent = ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].subject().as_deref(), Some("plain swaks"));
    assert_eq!(sent[0].to(), ["someone@example.com"]);
    assert_eq!(
        sent[0].reply_to(),
        ["app@contoso.test"],
        "From moved to Reply-To"
    );
    let (kind, body) = sent[0].body().expect("body");
    assert_eq!(kind, "text");
    assert!(body.contains("It works."), "{body}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls() {
    if no_swaks() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let relay = tls_relay(&ms, &certs).await;
    let implicit = relay
        .running
        .as_ref()
        .expect("running")
        .implicit_tls_addrs()[0];

    let out = swaks(
        relay.smtp,
        &[
            "--tls",
            "--from",
            "app@contoso.test",
            "--to",
            "one@example.com",
            "--header",
            "Subject: over STARTTLS",
            "--body",
            "encrypted hop",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));
    let t = stdout(&out);
    assert!(t.contains("250-STARTTLS"), "{t}");
    assert!(t.contains("TLS started"), "{t}");
    // After the upgrade the EHLO reply no longer offers STARTTLS; AUTH is offered (users set).
    let after = &t[t.find("TLS started").unwrap_or(0)..];
    assert!(!after.contains("250-STARTTLS"), "{t}");
    assert!(after.contains("AUTH PLAIN LOGIN"), "{t}");

    let out = swaks(
        implicit,
        &[
            "--tlsc",
            "--from",
            "app@contoso.test",
            "--to",
            "two@example.com",
            "--header",
            "Subject: implicit TLS",
            "--body",
            "port 465 style",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(stdout(&out).contains("TLS started"), "{}", transcript(&out));

    let sent = ms.wait_for_sent(2, DELIVERY).await;
    let mut subjects: Vec<String> = sent.iter().filter_map(|m| m.subject()).collect();
    subjects.sort();
    assert_eq!(subjects, ["implicit TLS", "over STARTTLS"]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_and_login_with_plain_and_hashed_passwords() {
    if no_swaks() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let relay = tls_relay(&ms, &certs).await;
    let cases = [
        ("PLAIN", "wp", &[][..]),
        ("LOGIN", "hashed", &[][..]),
        ("PLAIN", "hashed", &["--tls"][..]),
        ("LOGIN", "wp", &["--tls"][..]),
    ];
    for (i, (mechanism, user, extra)) in cases.iter().enumerate() {
        let subject = format!("Subject: auth {i} {mechanism} {user}");
        let mut args = vec![
            "--auth",
            mechanism,
            "--auth-user",
            user,
            "--auth-password",
            "s3cret",
            "--from",
            "app@contoso.test",
            "--to",
            "someone@example.com",
            "--header",
            &subject,
        ];
        args.extend_from_slice(extra);
        let out = swaks(relay.smtp, &args).await;
        assert!(out.status.success(), "{}", transcript(&out));
        assert!(
            stdout(&out).contains("235 2.7.0 Authentication successful"),
            "{}",
            transcript(&out)
        );
    }
    // A wrong password: swaks stops at AUTH (exit 28) and nothing is sent.
    let out = swaks(
        relay.smtp,
        &[
            "--auth",
            "LOGIN",
            "--auth-user",
            "hashed",
            "--auth-password",
            "wrong",
            "--from",
            "app@contoso.test",
            "--to",
            "someone@example.com",
            "--header",
            "Subject: must not arrive",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(28), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("535 5.7.8 Authentication credentials invalid"),
        "{}",
        transcript(&out)
    );

    let sent = ms.wait_for_sent(cases.len(), DELIVERY).await;
    let mut subjects: Vec<String> = sent.iter().filter_map(|m| m.subject()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "auth 0 PLAIN wp",
            "auth 1 LOGIN hashed",
            "auth 2 PLAIN hashed",
            "auth 3 LOGIN wp"
        ]
    );
    relay.wait_queue_empty(DELIVERY).await;
    assert_eq!(
        ms.sent().len(),
        cases.len(),
        "the refused one never went out"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_with_several_recipients() {
    if no_swaks() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let out = swaks(
        relay.smtp,
        &[
            "--pipeline",
            "--from",
            "app@contoso.test",
            "--to",
            "a@example.com,b@example.com,c@example.com",
            "--header",
            "To: a@example.com",
            "--header",
            "Subject: pipelined",
            "--body",
            "three recipients, one round trip",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));
    let t = stdout(&out);
    // swaks shows the pipelined commands sent together, then the replies in order.
    let mail = t
        .find("-> MAIL FROM:<app@contoso.test>")
        .expect("MAIL sent");
    let first_reply = t.find("<-  250 2.1.0 Sender OK").expect("MAIL answered");
    let last_rcpt = t.find("-> RCPT TO:<c@example.com>").expect("RCPT sent");
    assert!(
        mail < last_rcpt && last_rcpt < first_reply,
        "commands were not pipelined:\n{t}"
    );
    let sent = ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(
        sent[0].all_recipients(),
        ["a@example.com", "b@example.com", "c@example.com"]
    );
    assert_eq!(sent[0].to(), ["a@example.com"]);
    assert_eq!(sent[0].bcc(), ["b@example.com", "c@example.com"]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_body_and_attachments() {
    if no_swaks() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    // 8-bit UTF-8 body, no BODY=8BITMIME declared (swaks does not), charset in the header.
    let out = swaks(
        relay.smtp,
        &[
            "--from",
            "app@contoso.test",
            "--to",
            "someone@example.com",
            "--header",
            "Subject: eight bit",
            "--add-header",
            "MIME-Version: 1.0",
            "--add-header",
            "Content-Type: text/plain; charset=utf-8",
            "--add-header",
            "Content-Transfer-Encoding: 8bit",
            "--body",
            "Grüße aus Köln — 日本語 ✓",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));

    let dir = tempfile::tempdir().expect("tempdir");
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let pdf = dir.path().join("report.pdf");
    std::fs::write(&pdf, &binary).expect("write attachment");
    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, "a,b\n1,2\n").expect("write attachment");
    let pdf_arg = format!("@{}", pdf.display());
    let csv_arg = format!("@{}", csv.display());
    let out = swaks(
        relay.smtp,
        &[
            "--from",
            "app@contoso.test",
            "--to",
            "someone@example.com",
            "--header",
            "Subject: with attachments",
            "--body",
            "see attached",
            "--attach-type",
            "application/pdf",
            "--attach",
            &pdf_arg,
            "--attach-type",
            "text/csv",
            "--attach",
            &csv_arg,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));

    let sent = ms.wait_for_sent(2, DELIVERY).await;
    let eight = sent
        .iter()
        .find(|m| m.subject().as_deref() == Some("eight bit"))
        .expect("8-bit message");
    let (_, body) = eight.body().expect("body");
    assert!(body.contains("Grüße aus Köln — 日本語 ✓"), "{body:?}");

    let attached = sent
        .iter()
        .find(|m| m.subject().as_deref() == Some("with attachments"))
        .expect("message with attachments");
    let (_, body) = attached.body().expect("body");
    assert!(body.contains("see attached"), "{body:?}");
    let mut atts = attached.attachments();
    atts.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = atts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["data.csv", "report.pdf"]);
    assert_eq!(atts[0].bytes, b"a,b\n1,2\n");
    assert_eq!(
        atts[1].bytes, binary,
        "binary attachment arrives byte for byte"
    );
    assert_eq!(atts[1].content_type.as_deref(), Some("application/pdf"));
    relay.shutdown().await;
}
