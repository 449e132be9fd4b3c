//! PHP's PHPMailer (Debian's libphp-phpmailer) set up exactly as WordPress' WP Mail SMTP plugin
//! sets it up for its "Other SMTP" mailer: `isSMTP()`, Host 127.0.0.1, the port, `SMTPSecure`
//! '' ("Encryption: None") or 'ssl', `SMTPAutoTLS` ("Auto TLS") on or off, `SMTPAuth` with user
//! and password or off, `CharSet` UTF-8, and a contact-form message: From the site, Reply-To the
//! visitor, HTML body with a text alternative and an attachment. Each case checks what reached
//! the fake Graph.
//!
//! What a WordPress admin sees (also in the README):
//! - no certificate configured: STARTTLS is never offered, so Auto TLS on or off both work;
//! - a certificate configured and Auto TLS on: PHPMailer upgrades. With a self-signed
//!   certificate that only works when PHPMailer is told not to verify it (`SMTPOptions`
//!   verify_peer false, e.g. from a `phpmailer_init` hook); otherwise the send fails with
//!   "SMTP Error: Could not connect to SMTP host." and nothing is queued. Turning Auto TLS off
//!   avoids the upgrade;
//! - Authentication on in WordPress needs `smtp.users` in the relay: without users no AUTH is
//!   offered and PHPMailer gives up with "Could not authenticate".
//!
//! `.ci/run` installs php-cli, php-mbstring and libphp-phpmailer; without them the tests say so
//! and pass (or fail when `CI` is set).

use graph_relay_testkit as common;
use graph_relay_testkit::front_door_support as support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay};
use serde_json::json;
use support::{CHEAP_HASH, DELIVERY, make_cert, tls_lines, transcript};

const PHPMAILER: &str = "/usr/share/php/libphp-phpmailer/autoload.php";

/// The PHP side: WP Mail SMTP's "Other SMTP" mailer, configured from a JSON argument.
const SCRIPT: &str = r#"<?php
require getenv('PHPMAILER_AUTOLOAD');
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\Exception;

$cfg = json_decode($argv[1], true);
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = '127.0.0.1';
$mail->Port = $cfg['port'];
$mail->SMTPSecure = $cfg['secure'];          // '' = "Encryption: None", 'ssl' = "SSL"
$mail->SMTPAutoTLS = $cfg['autotls'];        // WP Mail SMTP "Auto TLS"
$mail->SMTPAuth = $cfg['auth'];
if ($cfg['auth']) {
    $mail->Username = $cfg['user'];
    $mail->Password = $cfg['pass'];
}
if (!$cfg['verify_peer']) {
    $mail->SMTPOptions = ['ssl' => [
        'verify_peer' => false,
        'verify_peer_name' => false,
        'allow_self_signed' => true,
    ]];
}
$mail->CharSet = 'UTF-8';                    // WordPress: get_bloginfo('charset')
$mail->Timeout = 20;
$mail->SMTPDebug = 3;                        // the SMTP dialogue on stdout, for the test
$mail->Debugoutput = 'echo';

$mail->setFrom('wordpress@contoso.test', 'Bäckerei Müller');
$mail->addReplyTo('visitor@example.org', 'Jane Visitor');
$mail->addAddress('owner@example.com', 'Site Owner');
$mail->Subject = $cfg['subject'];
$mail->isHTML(true);
$mail->Body = '<html><body><p>Neue Nachricht von <b>Jane</b>: Grüße — 你好</p></body></html>';
$mail->AltBody = 'Neue Nachricht von Jane: Grüße — 你好';
$mail->addAttachment($cfg['attachment'], 'Anfrage März.pdf', PHPMailer::ENCODING_BASE64, 'application/pdf');

try {
    $mail->send();
    echo "\nRESULT: sent\n";
} catch (Exception $e) {
    echo "\nRESULT: failed: " . $mail->ErrorInfo . "\n";
    exit(3);
}
"#;

fn no_php() -> bool {
    !(common::tools::require_tool("php", ".ci/run installs php-cli")
        && common::tools::require(
            Path::new(PHPMAILER).exists(),
            &format!(
                "PHPMailer ({PHPMAILER}) is not installed (.ci/run installs libphp-phpmailer)"
            ),
        ))
}

/// One WordPress site: the script and an attachment in a temp dir.
struct Site {
    dir: tempfile::TempDir,
    script: PathBuf,
    attachment: PathBuf,
    pdf: Vec<u8>,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("wp_mail.php");
        std::fs::write(&script, SCRIPT).expect("write script");
        let attachment = dir.path().join("upload.pdf");
        let mut pdf = b"%PDF-1.4\n".to_vec();
        pdf.extend((0..=255u8).cycle().take(20_000));
        std::fs::write(&attachment, &pdf).expect("write attachment");
        Site {
            dir,
            script,
            attachment,
            pdf,
        }
    }

    /// Runs wp_mail(); returns (sent?, transcript).
    async fn send(&self, addr: SocketAddr, case: Case<'_>) -> (bool, String) {
        let cfg = json!({
            "port": addr.port(),
            "secure": case.secure,
            "autotls": case.autotls,
            "auth": case.auth.is_some(),
            "user": case.auth.map(|a| a.0).unwrap_or_default(),
            "pass": case.auth.map(|a| a.1).unwrap_or_default(),
            "verify_peer": case.verify_peer,
            "subject": case.subject,
            "attachment": self.attachment,
        });
        let mut cmd = tokio::process::Command::new("php");
        cmd.arg(&self.script)
            .arg(cfg.to_string())
            .env("PHPMAILER_AUTOLOAD", PHPMAILER)
            .current_dir(self.dir.path());
        let out = support::run(cmd, None).await;
        let text = transcript(&out);
        let sent = out.status.success() && text.contains("RESULT: sent");
        (sent, text)
    }
}

#[derive(Clone, Copy)]
struct Case<'a> {
    subject: &'a str,
    secure: &'a str,
    autotls: bool,
    auth: Option<(&'a str, &'a str)>,
    verify_peer: bool,
}

fn case(subject: &str) -> Case<'_> {
    Case {
        subject,
        secure: "",
        autotls: true,
        auth: None,
        verify_peer: true,
    }
}

/// Checks one delivered contact-form message.
fn check_contact_form(ms: &FakeMicrosoft, subject: &str, site: &Site) {
    let sent = ms.sent();
    let m = sent
        .iter()
        .find(|m| m.subject().as_deref() == Some(subject))
        .unwrap_or_else(|| panic!("{subject:?} not received; got {:?}", sent));
    assert_eq!(m.to(), ["owner@example.com"]);
    // The site's own From is not an allowed sender here, so Graph sends from the relay's
    // mailbox; the visitor stays the Reply-To.
    assert_eq!(m.mailbox, "relay@contoso.test");
    assert_eq!(m.reply_to(), ["visitor@example.org"]);
    let (kind, body) = m.body().expect("body");
    assert_eq!(kind, "html", "HTML preferred over AltBody");
    assert!(body.contains("<b>Jane</b>: Grüße — 你好"), "{body}");
    let atts = m.attachments();
    assert_eq!(atts.len(), 1, "{atts:?}");
    assert_eq!(atts[0].name, "Anfrage März.pdf");
    assert_eq!(atts[0].bytes, site.pdf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_auto_tls_on_or_off_with_and_without_auth() {
    if no_php() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: "[smtp.users]\nwordpress = \"wp-pass\"\n".into(),
            ..RelayOptions::default()
        },
    )
    .await;
    let site = Site::new();
    let cases = [
        // WP Mail SMTP's defaults for "Other SMTP": Encryption None, Auto TLS on.
        ("Kontaktformular: Auto TLS an", true, None),
        ("Kontaktformular: Auto TLS aus", false, None),
        (
            "Kontaktformular: mit Anmeldung",
            true,
            Some(("wordpress", "wp-pass")),
        ),
    ];
    for (subject, autotls, auth) in cases {
        let (sent, text) = site
            .send(
                relay.smtp,
                Case {
                    autotls,
                    auth,
                    ..case(subject)
                },
            )
            .await;
        assert!(sent, "{subject}: {text}");
        assert!(
            !text.contains("CLIENT -> SERVER: STARTTLS"),
            "no certificate, no STARTTLS: {text}"
        );
        if auth.is_some() {
            assert!(text.contains("235 2.7.0"), "{text}");
        }
    }
    ms.wait_for_sent(cases.len(), DELIVERY).await;
    for (subject, _, _) in cases {
        check_contact_form(&ms, subject, &site);
    }
    // A wrong password is a clear failure, and nothing is queued.
    let (sent, text) = site
        .send(
            relay.smtp,
            Case {
                auth: Some(("wordpress", "nope")),
                ..case("wrong password")
            },
        )
        .await;
    assert!(!sent, "{text}");
    assert!(text.contains("535 5.7.8"), "{text}");
    assert!(text.contains("Could not authenticate"), "{text}");
    relay.wait_queue_empty(DELIVERY).await;
    assert_eq!(ms.sent().len(), cases.len());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_on_in_wordpress_needs_users_in_the_relay() {
    if no_php() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let site = Site::new();
    let (sent, text) = site
        .send(
            relay.smtp,
            Case {
                auth: Some(("wordpress", "wp-pass")),
                ..case("auth without users")
            },
        )
        .await;
    assert!(!sent, "{text}");
    assert!(text.contains("Could not authenticate"), "{text}");
    assert!(ms.sent().is_empty());
    assert!(relay.files_in("queue").is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_self_signed_certificate_auto_tls_upgrades() {
    if no_php() {
        return;
    }
    let ms = FakeMicrosoft::start().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let c = make_cert(certs.path(), "relay");
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            smtp_extra: format!(
                "{}[smtp.users]\nwordpress = {{ password_hash = \"{CHEAP_HASH}\" }}\n",
                tls_lines(&c, true)
            ),
            ..RelayOptions::default()
        },
    )
    .await;
    let implicit = relay
        .running
        .as_ref()
        .expect("running")
        .implicit_tls_addrs()[0];
    let site = Site::new();

    // Auto TLS on, certificate not verified (what a phpmailer_init hook setting SMTPOptions
    // does): PHPMailer upgrades, authenticates inside TLS and sends.
    let (sent, text) = site
        .send(
            relay.smtp,
            Case {
                verify_peer: false,
                auth: Some(("wordpress", "s3cret")),
                ..case("STARTTLS, not verified")
            },
        )
        .await;
    assert!(sent, "{text}");
    assert!(text.contains("CLIENT -> SERVER: STARTTLS"), "{text}");
    assert!(text.contains("235 2.7.0"), "{text}");

    // Auto TLS on, certificate verified (PHP's default): the self-signed certificate is
    // refused by PHP, PHPMailer does not fall back to plain text, and nothing is sent.
    let (sent, text) = site.send(relay.smtp, case("STARTTLS, verified")).await;
    assert!(!sent, "{text}");
    assert!(text.contains("CLIENT -> SERVER: STARTTLS"), "{text}");
    assert!(
        text.contains("certificate verify failed"),
        "PHP names the cause: {text}"
    );
    assert!(text.contains("Could not connect to SMTP host"), "{text}");

    // Auto TLS off: no upgrade even though STARTTLS is offered; plain text on loopback.
    let (sent, text) = site
        .send(
            relay.smtp,
            Case {
                autotls: false,
                ..case("Auto TLS off, cert offered")
            },
        )
        .await;
    assert!(sent, "{text}");
    assert!(!text.contains("CLIENT -> SERVER: STARTTLS"), "{text}");

    // Encryption "SSL" on the implicit TLS port, not verified.
    let (sent, text) = site
        .send(
            implicit,
            Case {
                secure: "ssl",
                verify_peer: false,
                auth: Some(("wordpress", "s3cret")),
                ..case("implicit TLS")
            },
        )
        .await;
    assert!(sent, "{text}");

    ms.wait_for_sent(3, DELIVERY).await;
    relay.wait_queue_empty(DELIVERY).await;
    for subject in [
        "STARTTLS, not verified",
        "Auto TLS off, cert offered",
        "implicit TLS",
    ] {
        check_contact_form(&ms, subject, &site);
    }
    assert_eq!(ms.sent().len(), 3, "the failed one never went out");
    relay.shutdown().await;
}
