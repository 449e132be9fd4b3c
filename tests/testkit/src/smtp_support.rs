//! Shared by the `smtp_*` integration tests: a recording `MessageSink`, a server on 127.0.0.1:0,
//! and a raw line-level SMTP client that returns replies exactly as sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use graph_relay::envelope::{Envelope, QueueId};
use graph_relay::smtp::{self, AcceptError, MessageSink, SmtpSettings};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait in a test; only reached when the code under test is broken.
pub const WAIT: Duration = Duration::from_secs(10);

/// Self-signed certificate for `localhost` (test use only).
pub const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBwDCCAWWgAwIBAgIUBwCL4LZe8isJ4lqt/8EtWLjt4e8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNzA4MzIwNVoYDzIxMjYxMTAz
MDgzMjA1WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARRltZPyzRdz0Zrcyp9reG0ypYeSDl7mBf29P+LZEgiJRXb8+i6W2Ar
mYWRSWQOzPwshm0gyzbPv55/54/31LGHo4GSMIGPMB0GA1UdDgQWBBTvAlpt19YE
rYU7Mf29i+N4Q1cqnDAfBgNVHSMEGDAWgBTvAlpt19YErYU7Mf29i+N4Q1cqnDAa
BgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwDAYDVR0TAQH/BAIwADAOBgNVHQ8B
Af8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwCgYIKoZIzj0EAwIDSQAwRgIh
ALcbpZszIRCcQjhVg0I7zFa5TctyYRMKYwtpmEeXjeglAiEAt3tpW4rDYnTYR58K
OcDURVTn8tVJwfXZ4BJGQc/JSTw=
-----END CERTIFICATE-----
";

pub const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJwfLYQ+3mD25h0L0
7ixGKLY8gZgxSnnJdvzKJQyunVOhRANCAARRltZPyzRdz0Zrcyp9reG0ypYeSDl7
mBf29P+LZEgiJRXb8+i6W2ArmYWRSWQOzPwshm0gyzbPv55/54/31LGH
-----END PRIVATE KEY-----
";

/// Stores what it accepts; can be told to fail the next calls.
#[derive(Default)]
pub struct RecordingSink {
    accepted: Mutex<Vec<(Envelope, Vec<u8>, QueueId)>>,
    failures: Mutex<VecDeque<AcceptError>>,
}

impl RecordingSink {
    pub fn fail_next(&self, error: AcceptError) {
        self.failures.lock().expect("lock").push_back(error);
    }

    pub fn messages(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.accepted
            .lock()
            .expect("lock")
            .iter()
            .map(|(e, m, _)| (e.clone(), m.clone()))
            .collect()
    }

    pub fn queue_ids(&self) -> Vec<String> {
        self.accepted
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, _, id)| id.to_string())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }
}

#[async_trait]
impl MessageSink for RecordingSink {
    async fn accept(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError> {
        if let Some(error) = self.failures.lock().expect("lock").pop_front() {
            return Err(error);
        }
        let id = QueueId::generate();
        self.accepted
            .lock()
            .expect("lock")
            .push((envelope, message, id.clone()));
        Ok(id)
    }
}

/// Settings for tests: host name `relay.test`, otherwise the defaults.
pub fn settings() -> SmtpSettings {
    SmtpSettings::new("relay.test")
}

pub fn tls_settings() -> SmtpSettings {
    let mut s = settings();
    s.tls = Some(
        smtp::server_config_from_pem(TEST_CERT.as_bytes(), TEST_KEY.as_bytes())
            .expect("test certificate"),
    );
    s
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub sink: Arc<RecordingSink>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestServer {
    /// A client connected to this server; the greeting is still unread.
    pub async fn connect(&self) -> Raw<TcpStream> {
        Raw::new(TcpStream::connect(self.addr).await.expect("connect"))
    }

    /// A client connected to this server, greeted and past EHLO.
    pub async fn client(&self) -> Raw<TcpStream> {
        Raw::ready(TcpStream::connect(self.addr).await.expect("connect")).await
    }

    /// Cancels and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task");
    }
}

pub async fn start(settings: SmtpSettings) -> TestServer {
    start_mode(settings, false).await
}

pub async fn start_implicit_tls(settings: SmtpSettings) -> TestServer {
    start_mode(settings, true).await
}

async fn start_mode(settings: SmtpSettings, implicit_tls: bool) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sink = Arc::new(RecordingSink::default());
    let shutdown = CancellationToken::new();
    let settings = Arc::new(settings);
    let dyn_sink: Arc<dyn MessageSink> = sink.clone();
    let task = if implicit_tls {
        tokio::spawn(smtp::serve_implicit_tls(
            listener,
            settings,
            dyn_sink,
            shutdown.clone(),
        ))
    } else {
        tokio::spawn(smtp::serve(listener, settings, dyn_sink, shutdown.clone()))
    };
    TestServer {
        addr,
        sink,
        shutdown,
        task,
    }
}

/// A line-level SMTP client over any stream. Replies come back exactly as sent (lines joined
/// with `\n`, CRLFs removed).
pub struct Raw<S> {
    stream: BufReader<S>,
}

impl Raw<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw::new(stream)
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream.into_inner()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(stream: S) -> Self {
        Raw {
            stream: BufReader::new(stream),
        }
    }

    /// Connects, reads the greeting and sends EHLO.
    pub async fn ready(stream: S) -> Self {
        let mut raw = Raw::new(stream);
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        let ehlo = raw.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("send");
        self.stream.get_mut().flush().await.expect("flush");
    }

    /// One complete (possibly multi-line) reply.
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(WAIT, self.reply_inner())
            .await
            .expect("reply in time")
    }

    async fn reply_inner(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).await.expect("read reply");
            assert!(n > 0, "connection closed; reply so far: {lines:?}");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Whether the server has said something (or closed) within `wait`. Reads nothing, so a
    /// `reply` can follow.
    pub async fn answered_within(&mut self, wait: Duration) -> bool {
        // fill_buf is cancel-safe: what arrived stays buffered for `reply`.
        tokio::time::timeout(wait, self.stream.fill_buf())
            .await
            .is_ok()
    }

    /// Sends one command line and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True when the server has closed the connection (after any unread replies: pass them in
    /// `expect_first`).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await;
        match read {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true, // reset counts as closed
            Err(_) => false,
        }
    }

    /// MAIL, RCPTs, DATA, body (dot-stuffing is the caller's), `.`; returns the final reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250 2.1.0"), "{r}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250 2.1.5"), "{r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354 "), "{r}");
        self.send(body.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Runs `python3 -c script args...` and returns stdout; fails the test with stderr otherwise.
pub async fn python(script: &str, args: &[String]) -> String {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output(),
    )
    .await
    .expect("python in time")
    .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// TLS client side for tests: accepts the test certificate without checking names or dates (the
/// signature over the handshake is still verified).
pub async fn tls_connect<S>(stream: S) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// base64 of `text`, for SASL exchanges.
pub fn b64(text: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Serves one connection through the `serve_connection` seam as if it came from `peer`, and
/// returns a connected client stream.
pub async fn via_seam(
    peer: &str,
    settings: Arc<SmtpSettings>,
    sink: Arc<RecordingSink>,
) -> (TcpStream, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer: SocketAddr = peer.parse().expect("peer");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let token = CancellationToken::new();
        smtp::serve_connection(stream, peer, &settings, sink.as_ref(), &token).await;
    });
    let client = TcpStream::connect(addr).await.expect("connect");
    (client, task)
}
