//! A full or broken spool disk: SMTP answers 452 (no space) or 451 (other I/O errors), never
//! 250; the relay keeps serving and accepts again once the disk recovers. The failures come
//! from the spool's write hook (CI runs as root, so permissions cannot make writes fail).

use graph_relay_testkit as common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, relay_toml};
use graph_relay::app::{self, StartOptions};
use graph_relay::config::Config;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends one message; returns the reply code, error or not.
async fn send(addr: std::net::SocketAddr, subject: &str) -> u16 {
    let message = Message::builder()
        .from("app@contoso.test".parse::<Mailbox>().unwrap())
        .to("someone@example.com".parse::<Mailbox>().unwrap())
        .subject(subject)
        .body("body\n".to_string())
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    match transport.send(message).await {
        Ok(response) => u16::from(response.code()),
        Err(e) => e
            .status()
            .map(u16::from)
            .unwrap_or_else(|| panic!("no SMTP code in {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_gets_452_broken_disk_451_and_both_recover() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_layers(
        Some(&relay_toml(
            &ms,
            &dir.path().join("spool"),
            &RelayOptions::default(),
        )),
        &[],
    )
    .unwrap();
    // 0 = healthy, otherwise the errno every spool write fails with.
    let errno = Arc::new(AtomicI32::new(0));
    let hook_errno = errno.clone();
    let opts = StartOptions {
        spool_write_hook: Some(Arc::new(move |_: &Path| {
            match hook_errno.load(Ordering::SeqCst) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        })),
        ..StartOptions::default()
    };
    let running = app::start(config, opts).await.unwrap();
    let smtp = running.smtp_addrs()[0];

    errno.store(libc::ENOSPC, Ordering::SeqCst);
    assert_eq!(send(smtp, "disk full").await, 452);
    errno.store(libc::EIO, Ordering::SeqCst);
    assert_eq!(send(smtp, "disk broken").await, 451);
    let queue = dir.path().join("spool/queue");
    assert_eq!(
        std::fs::read_dir(&queue).unwrap().count(),
        0,
        "nothing half-written is kept"
    );

    errno.store(0, Ordering::SeqCst);
    assert_eq!(send(smtp, "disk back").await, 250);
    let sent = ms.wait_for_sent(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0].subject().as_deref(), Some("disk back"));
    assert_eq!(ms.sent().len(), 1, "the refused messages were never sent");
    running.shutdown().await;
}

/// The same on a real, tiny tmpfs (where the machine lets root mount one; CI does): a message
/// larger than the free space gets 452 from the real ENOSPC, a small one still gets 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_enospc_on_a_tiny_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("spool");
    std::fs::create_dir(&mount_point).unwrap();
    // Without it, the write-hook test above still covers ENOSPC.
    let Some(_tmpfs) = common::tools::Tmpfs::mount(&mount_point, "size=256k") else {
        return;
    };
    let toml = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\n[queue]\ndir = \"{}\"\n[status]\nlisten = \"\"\n",
        mount_point.display()
    );
    let running = app::start(
        Config::from_layers(Some(&toml), &[]).unwrap(),
        StartOptions {
            dry_run: true,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let smtp = running.smtp_addrs()[0];
    let big = "x".repeat(400 * 1024);
    let message = Message::builder()
        .from("app@contoso.test".parse::<Mailbox>().unwrap())
        .to("someone@example.com".parse::<Mailbox>().unwrap())
        .subject("too big for the disk")
        .body(big)
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtp.port())
        .build();
    let err = transport
        .send(message)
        .await
        .expect_err("no room for 400 KB on a 256 KB disk");
    assert_eq!(err.status().map(u16::from), Some(452), "{err}");
    assert_eq!(send(smtp, "small").await, 250);
    running.shutdown().await;
}
