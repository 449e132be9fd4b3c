//! Peak memory and wall time of the real `graph-relay` binary relaying one big message (1, 10 and
//! 30 MiB: a short text body plus one attachment of pseudo-random bytes) to the fake Microsoft
//! Graph of tests/testkit, against a null SMTP sink in this process fed by the same client code.
//!
//!     cargo bench --bench big_mail
//!
//! Each round starts a fresh relay (fresh spool, fresh fake), reads its idle VmRSS once it is
//! ready, sends the message, and reads VmHWM (its peak RSS) once the spool is empty. `relay s`
//! runs from connect until the fake accepted the message, `accept s` until the relay's 250 after
//! DATA, `sink s` from connect to the null sink's 250: moving the bytes over loopback, the floor.
//! Times are medians of the rounds; peak is the worst round. The target is `peak/size` < 2.5;
//! `(peak-idle)/size` is what the message itself costs. The attachment must reach the fake byte
//! for byte; any failed round is printed with the relay's log and the bench exits 1.

use graph_relay_testkit as common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::binary::RelayProcess;
use common::fake_graph::{DEFAULT_SENDER, FakeMicrosoft};
use common::relay::{RelayOptions, files_in, relay_toml};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SIZES_MIB: [usize; 3] = [1, 10, 30];
const ROUNDS: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;
const WAIT: Duration = Duration::from_secs(180);
const RCPT: &str = "alice@example.org";
const ATTACHMENT: &str = "payload.bin";

struct Round {
    idle_kb: u64,
    peak_kb: u64,
    accept: f64,
    relay: f64,
    sink: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let started = Instant::now();
    let sink = null_sink().await;
    let mut summary = Vec::new();
    let mut failed = false;
    println!("graph-relay: {}", env!("CARGO_BIN_EXE_graph-relay"));
    println!(
        "{:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  graph path / notes",
        "size MiB", "round", "idle MiB", "peak MiB", "accept s", "relay s", "sink s"
    );
    for mib in SIZES_MIB {
        let (msg, payload) = message(mib << 20, mib as u64);
        let size = msg.len() as f64 / MIB;
        let mut rounds = Vec::new();
        for round in 1..=ROUNDS {
            match relay_round(&msg, &payload).await {
                Ok((mut r, notes)) => {
                    r.sink = send(sink, &msg)
                        .await
                        .unwrap_or_else(|e| panic!("null sink: {e}"));
                    println!(
                        "{size:>8.2} {round:>5} {:>9.1} {:>9.1} {:>9.3} {:>9.3} {:>9.3}  {notes}",
                        r.idle_kb as f64 / 1024.0,
                        r.peak_kb as f64 / 1024.0,
                        r.accept,
                        r.relay,
                        r.sink
                    );
                    rounds.push(r);
                }
                Err(e) => {
                    // Later rounds of this size would fail the same way; the next size may not.
                    println!("{size:>8.2} {round:>5} FAILED\n{e}");
                    failed = true;
                    break;
                }
            }
        }
        summary.push((size, rounds));
    }

    println!(
        "\nsummary: median of {ROUNDS} rounds (times), worst round (peak); target peak/size < 2.5"
    );
    println!(
        "{:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>16}",
        "size MiB",
        "relay s",
        "sink s",
        "relay/sink",
        "accept s",
        "idle MiB",
        "peak MiB",
        "peak/size",
        "(peak-idle)/size"
    );
    for (size, rounds) in &summary {
        if rounds.len() < ROUNDS {
            println!("{size:>8.2} FAILED (see above)");
            continue;
        }
        let med = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let (relay, sink) = (med(|r| r.relay), med(|r| r.sink));
        let peak = rounds.iter().map(|r| r.peak_kb).max().unwrap_or(0) as f64 / 1024.0;
        let idle = med(|r| r.idle_kb as f64) / 1024.0;
        println!(
            "{size:>8.2} {relay:>8.3} {sink:>8.3} {:>10.1} {:>8.3} {idle:>8.1} {peak:>8.1} {:>9.2} {:>16.2}",
            relay / sink,
            med(|r| r.accept),
            peak / size,
            (peak - idle) / size
        );
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A multipart message of exactly `total` bytes, give or take 5, and its attachment's bytes.
fn message(total: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "From: <{DEFAULT_SENDER}>\r\nTo: <{RCPT}>\r\nSubject: big_mail {total}\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <big-{total}@bench.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0und\"\r\n\r\n\
         --b0und\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
         --b0und\r\nContent-Type: application/octet-stream; name=\"{ATTACHMENT}\"\r\n\
         Content-Disposition: attachment; filename=\"{ATTACHMENT}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
        "The attachment is pseudo-random bytes, so nothing along the way can compress it.\r\n"
            .repeat(40)
    );
    let tail = "--b0und--\r\n";
    // 57 bytes are one 76-character line + CRLF; a last line of c characters (c a multiple of 4,
    // so no padding) holds 3c/4 bytes.
    let avail = total - head.len() - tail.len();
    let n = avail / 78 * 57 + (avail % 78).saturating_sub(2) / 4 * 3;
    // splitmix64: fixed seed, no dependency.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut payload = Vec::with_capacity(n + 8);
    while payload.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        payload.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    payload.truncate(n);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(head.as_bytes());
    for line in STANDARD.encode(&payload).as_bytes().chunks(76) {
        msg.extend_from_slice(line);
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(tail.as_bytes());
    (msg, payload)
}

/// One message over plain SMTP, no pipelining; returns seconds from connect to the 250 after DATA.
async fn send(addr: SocketAddr, msg: &[u8]) -> Result<f64, String> {
    let t0 = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // Else Nagle holds back the small ".\r\n" until the delayed ACK: +40 ms, now and then.
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    reply(&mut r, "greeting", 220).await?;
    let commands = [
        ("EHLO bench.test".to_string(), 250),
        (
            format!("MAIL FROM:<{DEFAULT_SENDER}> SIZE={}", msg.len()),
            250,
        ),
        (format!("RCPT TO:<{RCPT}>"), 250),
        ("DATA".to_string(), 354),
    ];
    for (cmd, code) in commands {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .map_err(|e| format!("{cmd}: {e}"))?;
        reply(&mut r, &cmd, code).await?;
    }
    // No line of `message` starts with '.', so it goes unstuffed.
    w.write_all(msg).await.map_err(|e| format!("DATA: {e}"))?;
    w.write_all(b".\r\n")
        .await
        .map_err(|e| format!("DATA: {e}"))?;
    reply(&mut r, "end of DATA", 250).await?;
    let accepted = t0.elapsed().as_secs_f64();
    let _ = w.write_all(b"QUIT\r\n").await;
    let _ = reply(&mut r, "QUIT", 221).await;
    Ok(accepted)
}

async fn reply(
    r: &mut (impl AsyncBufReadExt + Unpin),
    what: &str,
    code: u16,
) -> Result<(), String> {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) => return Err(format!("{what}: connection closed")),
            Err(e) => return Err(format!("{what}: {e}")),
            Ok(_) => {}
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    if line.get(..3) == Some(code.to_string().as_str()) {
        Ok(())
    } else {
        Err(format!("{what}: expected {code}, got {}", line.trim_end()))
    }
}

/// An SMTP server that answers everything with success and throws the message away.
async fn null_sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(sink_session(s));
        }
    });
    addr
}

async fn sink_session(s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(256 * 1024, r);
    w.write_all(b"220 sink\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        match line.get(..4).map(<[u8]>::to_ascii_uppercase).as_deref() {
            Some(b"EHLO") => w.write_all(b"250-sink\r\n250 SIZE 0\r\n").await?,
            Some(b"DATA") => {
                w.write_all(b"354 go\r\n").await?;
                swallow_data(&mut r).await?;
                w.write_all(b"250 gone\r\n").await?
            }
            Some(b"QUIT") => return w.write_all(b"221 bye\r\n").await,
            _ => w.write_all(b"250 ok\r\n").await?,
        }
    }
}

/// Reads until CRLF.CRLF. A client without PIPELINING sends nothing after it until our reply, so
/// the terminator always ends a read: checking the last 5 bytes keeps the floor free of per-byte
/// work the sink would not need.
async fn swallow_data(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<()> {
    let mut buf = vec![0; 256 * 1024];
    let mut last = Vec::with_capacity(5 + buf.len());
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        last.extend_from_slice(&buf[n.saturating_sub(5)..n]);
        last.drain(..last.len().saturating_sub(5));
        if last == b"\r\n.\r\n" {
            return Ok(());
        }
    }
}

/// The real relay on a fresh spool, its log in a file for when a round fails.
struct Relay {
    process: RelayProcess,
    dir: tempfile::TempDir,
}

impl Relay {
    async fn start(ms: &FakeMicrosoft) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("relay.toml");
        let toml = relay_toml(ms, &dir.path().join("spool"), &RelayOptions::default());
        std::fs::write(&config, toml).expect("write relay.toml");
        let log = std::fs::File::create(dir.path().join("relay.log")).expect("relay.log");
        let process = RelayProcess::start_logging(&config, &[], "graph_relay=info", log).await;
        Relay { process, dir }
    }

    fn spool(&self, area: &str) -> Vec<String> {
        files_in(&self.dir.path().join("spool").join(area))
    }

    /// A `Vm*:` line of /proc/PID/status, in kB.
    fn vm_kb(&self, field: &str) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// SIGTERM; a note unless it exits 0.
    async fn terminate(self) -> String {
        let status = self.process.terminate().await;
        if status.success() {
            String::new()
        } else {
            format!("; exit {status}")
        }
    }
}

/// One fresh relay and fake, one message. Err carries everything needed to see why.
async fn relay_round(msg: &[u8], payload: &[u8]) -> Result<(Round, String), String> {
    let ms = FakeMicrosoft::start().await;
    let mut relay = Relay::start(&ms).await;
    let idle_kb = relay.vm_kb("VmRSS").unwrap_or(0);
    let outcome = deliver(&ms, &mut relay, msg, payload).await;
    let peak_kb = relay.vm_kb("VmHWM").unwrap_or(0);
    let log = relay.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    let rejected = ms.rejected().len();
    let exit = relay.terminate().await;
    match outcome {
        Ok((path, accept, relay)) => {
            let mut notes = path;
            if warnings + rejected > 0 {
                notes += &format!("; {warnings} WARN/ERROR log lines, {rejected} Graph rejections");
            }
            let round = Round {
                idle_kb,
                peak_kb,
                accept,
                relay,
                sink: 0.0,
            };
            Ok((round, notes + &exit))
        }
        Err(e) => {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            Err(format!(
                "  {e}\n  idle {:.1} MiB, peak {:.1} MiB{exit}\n  fake Microsoft requests:\n{}  relay log (last {} lines):\n    {}",
                idle_kb as f64 / 1024.0,
                peak_kb as f64 / 1024.0,
                ms.request_log(),
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            ))
        }
    }
}

/// Sends the message and waits for the fake to accept it; (graph path, accept s, relay s).
async fn deliver(
    ms: &FakeMicrosoft,
    relay: &mut Relay,
    msg: &[u8],
    payload: &[u8],
) -> Result<(String, f64, f64), String> {
    let wall0 = SystemTime::now();
    let accept = tokio::time::timeout(WAIT, send(relay.process.smtp, msg))
        .await
        .map_err(|_| format!("SMTP send took over {WAIT:?}"))??;
    let deadline = Instant::now() + WAIT;
    let sent = loop {
        if let Some(s) = ms.sent().into_iter().next() {
            break s;
        }
        if let Some(status) = relay.process.exited() {
            return Err(format!(
                "relay exited ({status}) before Graph got the message"
            ));
        }
        let failed = relay.spool("failed");
        if !failed.is_empty() {
            return Err(format!(
                "relay gave the message up: spool/failed has {failed:?}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("Graph got no message within {WAIT:?} of the 250"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The fake's own timestamp: the wait above adds polling slack and a deep copy of the message.
    let relay_s = sent
        .at
        .duration_since(wall0)
        .unwrap_or_default()
        .as_secs_f64();
    let atts = sent.attachments();
    let got = atts.iter().find(|a| a.name == ATTACHMENT).ok_or_else(|| {
        format!(
            "no attachment {ATTACHMENT:?} reached Graph (got {:?})",
            atts.iter().map(|a| &a.name).collect::<Vec<_>>()
        )
    })?;
    if got.bytes != payload {
        let at = got.bytes.iter().zip(payload).position(|(a, b)| a != b);
        return Err(format!(
            "attachment corrupted: sent {} bytes, Graph got {}, first difference at {at:?}",
            payload.len(),
            got.bytes.len()
        ));
    }
    // Peak RSS is read once the relay has also cleaned up its spool: all its work for this message.
    let until = Instant::now() + Duration::from_secs(20);
    while !relay.spool("queue").is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((format!("{:?}", sent.path), accept, relay_s))
}
