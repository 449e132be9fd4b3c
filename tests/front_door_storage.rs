//! Storage at the right stage: at MAIL FROM the session asks the sink whether the spool has room
//! (the declared `SIZE=`, or a minimum margin), and answers `452 4.3.1` before the client sends
//! any data. Checked with a sink that reports no space, and with the relay's own check
//! (`statvfs` on the spool) on a real tiny tmpfs where the machine lets root mount one (CI
//! does), with raw SMTP and Python's smtplib (which sends `SIZE=`).

use graph_relay_testkit::smtp_support;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use graph_relay::app::{self, StartOptions};
use graph_relay::config::Config;
use graph_relay::envelope::{Envelope, QueueId};
use graph_relay::smtp::{AcceptError, MessageSink};
use smtp_support::{Raw, RecordingSink};

/// Says "no space" (or "unavailable") at MAIL while told to, and records what was declared.
#[derive(Default)]
struct FullSink {
    full: AtomicBool,
    broken: AtomicBool,
    declared: Mutex<Vec<Option<u64>>>,
    inner: RecordingSink,
}

#[async_trait]
impl MessageSink for FullSink {
    async fn accept(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError> {
        self.inner.accept(envelope, message).await
    }

    async fn check_space(&self, declared: Option<u64>) -> Result<(), AcceptError> {
        self.declared.lock().expect("lock").push(declared);
        if self.broken.load(Ordering::SeqCst) {
            return Err(AcceptError::Unavailable("EIO".into()));
        }
        if self.full.load(Ordering::SeqCst) {
            return Err(AcceptError::NoSpace("disk full".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn no_space_is_answered_at_mail_before_any_data() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sink = std::sync::Arc::new(FullSink::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(graph_relay::smtp::serve(
        listener,
        std::sync::Arc::new(smtp_support::settings()),
        sink.clone(),
        shutdown.clone(),
    ));
    let mut c = Raw::ready(tokio::net::TcpStream::connect(addr).await.expect("connect")).await;

    sink.full.store(true, Ordering::SeqCst);
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=5000").await,
        "452 4.3.1 Insufficient system storage, try again later"
    );
    // A pipelining client (PIPELINING is advertised) that sent everything at once gets the 452,
    // then 503s, and its data is never taken as a message.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<r@y.test>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("452 4.3.1"));
    assert_eq!(c.reply().await, "503 5.5.1 Need MAIL command");
    assert_eq!(c.reply().await, "503 5.5.1 Need MAIL command");
    sink.broken.store(true, Ordering::SeqCst);
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "451 4.3.0 Queue unavailable, try again later"
    );

    // Space again: the same connection goes on.
    sink.full.store(false, Ordering::SeqCst);
    sink.broken.store(false, Ordering::SeqCst);
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert_eq!(sink.inner.count(), 1);
    assert_eq!(
        *sink.declared.lock().expect("lock"),
        [Some(5000), None, None, None]
    );
    c.cmd("QUIT").await;
    shutdown.cancel();
    task.await.expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_checks_the_spool_filesystem_at_mail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount_point = dir.path().join("spool");
    std::fs::create_dir(&mount_point).expect("mkdir");
    let Some(_tmpfs) = graph_relay_testkit::tools::Tmpfs::mount(&mount_point, "size=256k") else {
        return;
    };
    let toml = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n[queue]\ndir = \"{}\"\n\
         [status]\nlisten = \"\"\n",
        mount_point.display()
    );
    let running = app::start(
        Config::from_layers(Some(&toml), &[]).expect("config"),
        StartOptions {
            dry_run: true,
            ..StartOptions::default()
        },
    )
    .await
    .expect("start");
    let smtp = running.smtp_addrs()[0];
    let mut c = Raw::ready(tokio::net::TcpStream::connect(smtp).await.expect("connect")).await;

    // Declared bigger than the disk: refused before DATA.
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=400000").await,
        "452 4.3.1 Insufficient system storage, try again later"
    );
    // Declared small: fine, and the message is taken.
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=1000").await,
        "250 2.1.0 Sender OK"
    );
    assert!(c.cmd("RCPT TO:<r@y.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: fits\r\n\r\nsmall\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));

    // Fill the disk to under the 64 KiB margin: even MAIL without SIZE is refused now.
    let filler = mount_point.join("filler");
    let free = |p: &Path| {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(p)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .expect("df number")
    };
    let room = free(&mount_point);
    let fill = usize::try_from(room.saturating_sub(32 * 1024)).expect("fits");
    std::fs::write(&filler, vec![0u8; fill]).expect("fill the tmpfs");
    assert!(free(&mount_point) < 64 * 1024, "{}", free(&mount_point));
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "452 4.3.1 Insufficient system storage, try again later"
    );
    // Python's smtplib declares SIZE (the relay advertises it) and sees the 452 at MAIL.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
try:
    s.sendmail("a@x.test", ["r@y.test"], b"Subject: s\r\n\r\n" + b"x" * 100 + b"\r\n")
    print("sent")
except smtplib.SMTPSenderRefused as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
s.quit()
"#;
    let out = smtp_support::python(script, &[smtp.port().to_string()]).await;
    assert!(out.contains("refused 452 4.3.1"), "{out}");

    // Space comes back: mail is taken again, no restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "Subject: back\r\n\r\nok\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let out = smtp_support::python(script, &[smtp.port().to_string()]).await;
    assert!(out.contains("sent"), "{out}");
    c.cmd("QUIT").await;
    running.shutdown().await;
}
