//! The TLS certificate while the relay runs: a reload (SIGHUP → `Running::reload`) makes new
//! handshakes (STARTTLS and implicit TLS) present the new certificate; a bad new certificate or a
//! key that does not match keeps the old one; turning TLS on or off needs a restart. The real
//! binary reloads on SIGHUP. And the self-signed pair `certs/README.md` tells people to make
//! still works. Certificates come from rcgen.

use graph_relay_testkit as common;
use graph_relay_testkit::front_door_support as support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay, read_line_starting_with, relay_toml};
use graph_relay::config::Config;
use graph_relay::smtp::{SmtpSettings, TlsReload};
use support::{
    CertFiles, implicit_tls_certificate, make_cert, starttls_certificate, tls_lines, transcript,
};
use tokio::io::AsyncBufReadExt;

fn copy_pair(from: &CertFiles, to: &CertFiles) {
    std::fs::copy(&from.cert, &to.cert).expect("copy cert");
    std::fs::copy(&from.key, &to.key).expect("copy key");
}

fn tls_options(c: &CertFiles) -> RelayOptions {
    RelayOptions {
        smtp_extra: tls_lines(c, true),
        ..RelayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_cert(dir.path(), "live");
    let first_der = live.der.clone();
    let renewed = make_cert(dir.path(), "renewed");
    let other = make_cert(dir.path(), "other");
    let opts = tls_options(&live);
    let relay = TestRelay::start(&ms, opts.clone()).await;
    let running = relay.running.as_ref().expect("running");
    let implicit = running.implicit_tls_addrs()[0];
    let config = Config::from_layers(Some(&relay_toml(&ms, &relay.queue_dir(), &opts)), &[])
        .expect("config");

    assert_eq!(starttls_certificate(relay.smtp).await, first_der);
    assert_eq!(implicit_tls_certificate(implicit).await, first_der);

    // A renewal writes new files at the same paths; SIGHUP reloads them.
    copy_pair(&renewed, &live);
    assert_eq!(
        starttls_certificate(relay.smtp).await,
        first_der,
        "nothing changes before the reload"
    );
    running.reload(&config);
    assert_eq!(starttls_certificate(relay.smtp).await, renewed.der);
    assert_eq!(implicit_tls_certificate(implicit).await, renewed.der);

    // A half-written or broken certificate: the one in use stays.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    running.reload(&config);
    assert_eq!(starttls_certificate(relay.smtp).await, renewed.der);
    // A certificate with somebody else's key: refused too.
    std::fs::copy(&other.cert, &live.cert).expect("copy");
    running.reload(&config);
    assert_eq!(starttls_certificate(relay.smtp).await, renewed.der);
    // Missing files: same.
    std::fs::remove_file(&live.key).expect("remove");
    running.reload(&config);
    assert_eq!(implicit_tls_certificate(implicit).await, renewed.der);

    // Mail still flows over the reloaded certificate (lettre, STARTTLS required).
    copy_pair(&other, &live);
    running.reload(&config);
    assert_eq!(starttls_certificate(relay.smtp).await, other.der);
    let tls = lettre::transport::smtp::client::TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .expect("tls parameters");
    let transport =
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(relay.smtp.port())
            .tls(lettre::transport::smtp::client::Tls::Required(tls))
            .build();
    let message = lettre::Message::builder()
        .from("app@contoso.test".parse().expect("from"))
        .to("someone@example.com".parse().expect("to"))
        .subject("after the reload")
        .body("still here".to_string())
        .expect("message");
    lettre::AsyncTransport::send(&transport, message)
        .await
        .expect("sent over STARTTLS");
    let sent = ms.wait_for_sent(1, support::DELIVERY).await;
    assert_eq!(sent[0].subject().as_deref(), Some("after the reload"));
    relay.shutdown().await;
}

#[test]
fn reload_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = make_cert(dir.path(), "a");
    let b = make_cert(dir.path(), "b");
    let with_tls = |c: &CertFiles| {
        let toml = format!("[smtp]\n{}", tls_lines(c, false));
        Config::from_layers(Some(&toml), &[]).expect("config")
    };
    let without_tls = Config::from_layers(None, &[]).expect("config");

    let plain = SmtpSettings::try_from_config(&without_tls).expect("settings");
    assert_eq!(plain.reload_tls(&without_tls), TlsReload::NotConfigured);
    assert_eq!(plain.reload_tls(&with_tls(&a)), TlsReload::NeedsRestart);
    assert!(
        plain.tls.is_none(),
        "STARTTLS is not switched on by a reload"
    );

    let settings = SmtpSettings::try_from_config(&with_tls(&a)).expect("settings");
    let current = |s: &SmtpSettings| {
        s.tls
            .as_ref()
            .and_then(|t| t.current_certificate())
            .map(|c| c.to_vec())
    };
    assert_eq!(current(&settings), Some(a.der.clone()));
    assert_eq!(settings.reload_tls(&with_tls(&b)), TlsReload::Reloaded);
    assert_eq!(current(&settings), Some(b.der.clone()));
    assert_eq!(settings.reload_tls(&without_tls), TlsReload::NeedsRestart);
    assert_eq!(current(&settings), Some(b.der.clone()), "TLS stays on");
    let mismatched = CertFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
        der: Vec::new(),
    };
    let outcome = settings.reload_tls(&with_tls(&mismatched));
    assert!(
        matches!(&outcome, TlsReload::Failed(why) if why.contains("key")),
        "{outcome:?}"
    );
    assert_eq!(current(&settings), Some(b.der.clone()));
}

/// The real binary: `serve` reloads the certificate on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_the_certificate_on_sighup() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_cert(dir.path(), "live");
    let first_der = live.der.clone();
    let renewed = make_cert(dir.path(), "renewed");
    let mut opts = tls_options(&live);
    opts.smtp_extra = tls_lines(&live, false);
    let config_path = dir.path().join("relay.toml");
    std::fs::write(
        &config_path,
        relay_toml(&ms, &dir.path().join("spool"), &opts),
    )
    .expect("write config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start graph-relay");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready =
        read_line_starting_with(&mut lines, "graph-relay ready", Duration::from_secs(30)).await;
    let smtp: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("smtp="))
        .and_then(|a| a.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no smtp address in {ready:?}"));
    assert_eq!(starttls_certificate(smtp).await, first_der);

    copy_pair(&renewed, &live);
    let pid = i32::try_from(child.id().expect("pid")).expect("pid fits");
    // `serve` prints its ready line before it installs the SIGHUP handler, and SIGHUP's default
    // action ends the process: wait until the handler is there (Linux: SigCgt in /proc).
    wait_for_sighup_handler(pid).await;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // The reload happens on the relay's signal task; poll the handshake until it shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if starttls_certificate(smtp).await == renewed.der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still the old certificate 10 s after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Waits until process `pid` catches SIGHUP (bit 1 of the SigCgt mask in /proc/PID/status).
async fn wait_for_sighup_handler(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0);
        if caught {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "graph-relay never installed a SIGHUP handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `certs/README.md`'s openssl command (run as written, in a temp dir) makes a pair the relay
/// loads and serves STARTTLS with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certs_readme_recipe_still_works() {
    if !common::tools::require_tool("openssl", "the recipe runs it") {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/README.md"))
            .expect("certs/README.md");
    let section = &readme[readme.find("## SMTP TLS").expect("SMTP TLS section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the SMTP TLS section");
    assert!(block.contains("openssl req"), "{block}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
    let out = support::run(
        {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-euc").arg(block).current_dir(dir.path());
            cmd
        },
        None,
    )
    .await;
    assert!(out.status.success(), "{}", transcript(&out));
    let files = CertFiles {
        cert: dir.path().join("certs/relay.crt"),
        key: dir.path().join("certs/relay.key"),
        der: Vec::new(),
    };
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, tls_options(&files)).await;
    let der = starttls_certificate(relay.smtp).await;
    let pem = std::fs::read_to_string(&files.cert).expect("read cert");
    let expected = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .expect("PEM certificate");
    assert_eq!(der, expected);
    relay.shutdown().await;
}
