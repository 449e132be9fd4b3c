//! Peak memory of the real `graph-relay` binary under a burst of big mail with delivery on: N
//! clients (48) each send one 31.5 MB message (a short text and one base64 attachment) at once
//! to a relay on the default memory budget (`smtp.data_memory_bytes`, 512 MiB) delivering to
//! the fake Microsoft Graph of tests/common. A client answered 452 (budget spent) tries again a
//! second later, as an MTA would. Reports the relay's VmHWM once every message was delivered,
//! as MiB and as a ratio of the budget: reception and conversion share that budget, so the ratio
//! stays near 1 plus the process's fixed costs (buffers, allocator slack).
//!
//!     cargo bench --bench memory_load            # N=48 SIZE_MB=31.5 by default
//!
//! Every attachment must reach the fake; a message that failed or a timeout exits 1.

use graph_relay_testkit as common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::RelayProcess;
use common::fake_graph::{DEFAULT_SENDER, FakeMicrosoft};
use common::mail::{Part, multipart, random_bytes};
use common::relay::{RelayOptions, files_in, relay_toml};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The recipient `multipart` writes in To.
const RCPT: &str = "alice@example.org";
const WAIT: Duration = Duration::from_secs(900);
const BUDGET_MIB: f64 = 512.0;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let n: usize = env_or("N", 48.0) as usize;
    let size = (env_or("SIZE_MB", 31.5) * 1e6) as usize;
    let msg = Arc::new(message(size));
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    let toml = relay_toml(&ms, &dir.path().join("spool"), &RelayOptions::default());
    std::fs::write(&config, toml).expect("write relay.toml");
    let log = std::fs::File::create(dir.path().join("relay.log")).expect("relay.log");
    let relay = RelayProcess::start_logging(&config, &[], "graph_relay=warn", log).await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..n {
        let (msg, addr) = (msg.clone(), relay.smtp);
        clients.push(tokio::spawn(async move {
            send_until_accepted(addr, &msg).await
        }));
    }
    let mut tempfails = 0;
    for c in clients {
        match c.await.expect("client task") {
            Ok(t) => tempfails += t,
            Err(e) => {
                println!("FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let accepted = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + WAIT;
    while ms.sent().len() < n {
        let failed = files_in(&dir.path().join("spool").join("failed"));
        if !failed.is_empty() || Instant::now() > deadline {
            println!(
                "FAILED: {} of {n} delivered, failed/: {failed:?}",
                ms.sent().len()
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = vm_kib(relay.pid(), "VmHWM") as f64 / 1024.0;
    println!(
        "{n} x {:.1} MB: all accepted in {accepted:.1} s ({tempfails} answers 452), delivered in {:.1} s; \
         peak RSS {peak:.0} MiB = {:.2} x the {BUDGET_MIB:.0} MiB budget",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        peak / BUDGET_MIB
    );
    relay.terminate().await;
    ExitCode::SUCCESS
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A message of about `size` bytes to alice@example.org (`RCPT`): a text part and one base64
/// attachment of pseudo-random bytes, as a mail client writes it.
fn message(size: usize) -> Vec<u8> {
    let data = random_bytes(size / 78 * 57, 1);
    multipart(DEFAULT_SENDER, "load", &[Part::file("load.pdf", &data)])
}

/// One SMTP transaction, again after a second for as long as the relay answers 452 at the end of
/// DATA; returns how many 452s it took.
async fn send_until_accepted(addr: std::net::SocketAddr, msg: &[u8]) -> Result<usize, String> {
    let mut tempfails = 0;
    loop {
        match send(addr, msg).await? {
            250 => return Ok(tempfails),
            452 | 451 | 421 => {
                tempfails += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            code => return Err(format!("end of DATA answered {code}")),
        }
    }
}

async fn send(addr: std::net::SocketAddr, msg: &[u8]) -> Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut reply = async |r: &mut BufReader<_>| -> Result<u16, String> {
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line[..3].parse().map_err(|_| line.clone());
            }
        }
    };
    reply(&mut r).await?;
    for (cmd, want) in [
        ("EHLO load.test".to_string(), 250),
        (format!("MAIL FROM:<{DEFAULT_SENDER}>"), 250),
        (format!("RCPT TO:<{RCPT}>"), 250),
        ("DATA".to_string(), 354),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let code = reply(&mut r).await?;
        if code != want {
            return Ok(code);
        }
    }
    w.write_all(msg).await.map_err(|e| e.to_string())?;
    w.write_all(b".\r\n").await.map_err(|e| e.to_string())?;
    let code = reply(&mut r).await?;
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(code)
}
