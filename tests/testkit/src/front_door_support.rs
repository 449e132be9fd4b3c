//! Shared by the `front_door_*` tests: certificates made at test time with rcgen, running real
//! client programs (swaks, php, python3) with a time limit, a relay with TLS and users on top of
//! `common::relay`, and reading the certificate a STARTTLS handshake presents. Test-only.

// The front-door tests reach these as `support::smtp_support` and `support::have`.
pub use crate::smtp_support;
pub use crate::tools::have;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Upper bound for one client program run; reached only when something is broken.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for the fake Graph to receive mail.
pub const DELIVERY: Duration = Duration::from_secs(20);

/// A self-signed certificate and its key as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DER of the certificate, to compare with what a handshake presents.
    pub der: Vec<u8>,
}

/// Writes `<name>.crt` and `<name>.key` into `dir`: an ECDSA P-256 certificate for localhost
/// and 127.0.0.1 (rcgen, ring).
pub fn make_cert(dir: &Path, name: &str) -> CertFiles {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen certificate");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    CertFiles {
        cert,
        key,
        der: generated.cert.der().to_vec(),
    }
}

/// `[smtp]` lines for a certificate (STARTTLS) and, optionally, an implicit TLS listener.
pub fn tls_lines(c: &CertFiles, implicit: bool) -> String {
    let mut t = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    );
    if implicit {
        t.push_str("implicit_tls_listen = \"127.0.0.1:0\"\n");
    }
    t
}

/// Runs a command with stdin from `input`, within `RUN_LIMIT`.
pub async fn run(mut cmd: tokio::process::Command, input: Option<&[u8]>) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).await.expect("write stdin");
        drop(stdin);
    }
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {RUN_LIMIT:?}"))
        .expect("wait for child")
}

/// stdout + stderr, for assertion messages.
pub fn transcript(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs swaks against `server` with the given extra arguments (always with a time limit and
/// without the DATA transcript, which can be large).
pub async fn swaks(server: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("swaks");
    cmd.arg("--server")
        .arg(server.ip().to_string())
        .arg("--port")
        .arg(server.port().to_string())
        .args(["--timeout", "30", "--helo", "client.test"])
        .args(args);
    run(cmd, None).await
}

/// The certificate the relay presents after STARTTLS on `addr` (DER).
pub async fn starttls_certificate(addr: SocketAddr) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut stream = BufReader::new(stream);
    expect_reply(&mut stream, "220").await;
    stream
        .get_mut()
        .write_all(b"EHLO c\r\n")
        .await
        .expect("write");
    expect_reply(&mut stream, "250").await;
    stream
        .get_mut()
        .write_all(b"STARTTLS\r\n")
        .await
        .expect("write");
    expect_reply(&mut stream, "220").await;
    peer_certificate(stream.into_inner()).await
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect_reply(stream: &mut BufReader<TcpStream>, code: &str) {
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("read");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

/// The certificate presented on an implicit TLS port (DER).
pub async fn implicit_tls_certificate(addr: SocketAddr) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    peer_certificate(stream).await
}

async fn peer_certificate(stream: TcpStream) -> Vec<u8> {
    let tls = smtp_support::tls_connect(stream).await;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a server certificate")
}

/// argon2id of "s3cret" with cheap parameters (m=64 KiB, t=1) for tests that do not care about
/// the cost; `graph-relay passwd` makes the real ones.
pub const CHEAP_HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$Z3JhcGgtcmVsYXktdGVzdA$RbBwOb4T0heR6KjJpbjbMGujHz7H1rYC2FMHsTXIaU4";
