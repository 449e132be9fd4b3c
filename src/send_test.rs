//! A minimal SMTP client for the running relay: `graph-relay send-test` sends one test message
//! through it (like WP Mail SMTP's "Email Test"), and the sendmail command submits through it
//! when it cannot write the spool itself. Upgrades to STARTTLS when offered (as PHPMailer's Auto
//! TLS does) and logs in with AUTH PLAIN when asked to, so a relay with `require_auth` can be
//! tested. Returns the server's final reply; never retries, never prints the password.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("connection to the relay failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay refused at {stage}: {reply}")]
    Refused { stage: &'static str, reply: String },
    #[error("the relay did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "STARTTLS failed: {0} (send-test trusts the system CAs and the relay's own smtp.tls_cert; \
         --no-starttls skips TLS)"
    )]
    Tls(String),
    #[error(
        "the relay offers no AUTH PLAIN on this connection ({0}): it offers AUTH once smtp.users \
         has a user, and to other hosts only after STARTTLS"
    )]
    NoAuth(String),
}

impl SendTestError {
    /// The SMTP reply code of a refusal (`530`, `452`, ...); `None` when no reply came.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            SendTestError::Refused { reply, .. } => reply.get(..3)?.parse().ok(),
            _ => None,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the relay.
pub struct SendTest<'a> {
    /// `host:port` of the relay.
    pub server: &'a str,
    pub helo: &'a str,
    /// SMTP AUTH user and password.
    pub login: Option<(&'a str, &'a str)>,
    /// Upgrade to TLS when the relay offers STARTTLS.
    pub starttls: bool,
    /// The relay's own certificate (`smtp.tls_cert`), trusted as is: a self-signed one is fine.
    pub relay_certificate: Option<CertificateDer<'static>>,
}

/// One message and its envelope.
struct Mail<'a> {
    from: &'a str,
    to: &'a [String],
    /// CRLF line endings, not yet dot-stuffed.
    message: &'a [u8],
}

/// Sends the test message; returns the reply to the end of DATA (`250 ...` when queued).
pub async fn send(test: &SendTest<'_>, from: &str, to: &str) -> Result<String, SendTestError> {
    submit(test, from, &[to.to_string()], &message(from, to)).await
}

/// Submits one message (CRLF line endings, not yet dot-stuffed); returns the reply to the end of
/// DATA, which the relay gives only once the message is durable in its spool.
pub async fn submit(
    test: &SendTest<'_>,
    from: &str,
    to: &[String],
    message: &[u8],
) -> Result<String, SendTestError> {
    let mail = Mail { from, to, message };
    tokio::time::timeout(TIMEOUT, exchange(test, &mail))
        .await
        .map_err(|_| SendTestError::Timeout(TIMEOUT))?
}

async fn exchange(test: &SendTest<'_>, mail: &Mail<'_>) -> Result<String, SendTestError> {
    let stream =
        TcpStream::connect(test.server)
            .await
            .map_err(|source| SendTestError::Connect {
                server: test.server.to_string(),
                source,
            })?;
    let mut plain = Smtp(BufReader::new(stream));
    plain.reply("greeting", '2').await?;
    let ehlo = plain.ehlo(test.helo).await?;
    if !(test.starttls && offers(&ehlo, "STARTTLS")) {
        return transaction(&mut plain, &ehlo, test, mail).await;
    }
    plain.command("STARTTLS\r\n", "STARTTLS", '2').await?;
    // Whatever the server sent after its 220 is dropped with the buffer (STARTTLS injection).
    let stream = plain.0.into_inner();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(test)?))
        .connect(server_name(test.server)?, stream)
        .await
        .map_err(|e| SendTestError::Tls(e.to_string()))?;
    let mut secure = Smtp(BufReader::new(tls));
    let ehlo = secure.ehlo(test.helo).await?;
    transaction(&mut secure, &ehlo, test, mail).await
}

/// AUTH (when asked), then one message, then QUIT.
async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &mut Smtp<S>,
    ehlo: &[String],
    test: &SendTest<'_>,
    mail: &Mail<'_>,
) -> Result<String, SendTestError> {
    if let Some((user, password)) = test.login {
        if !auth_mechanisms(ehlo).any(|m| m.eq_ignore_ascii_case("PLAIN")) {
            let offered = auth_mechanisms(ehlo).collect::<Vec<_>>().join(" ");
            return Err(SendTestError::NoAuth(if offered.is_empty() {
                "no AUTH at all".into()
            } else {
                format!("AUTH {offered}")
            }));
        }
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        smtp.command(format!("AUTH PLAIN {credentials}\r\n"), "AUTH", '2')
            .await?;
    }
    let utf8 = std::iter::once(mail.from)
        .chain(mail.to.iter().map(String::as_str))
        .any(|a| !a.is_ascii());
    let utf8 = if utf8 { " SMTPUTF8" } else { "" };
    let from = mail.from;
    smtp.command(format!("MAIL FROM:<{from}>{utf8}\r\n"), "MAIL FROM", '2')
        .await?;
    for to in mail.to {
        smtp.command(format!("RCPT TO:<{to}>\r\n"), "RCPT TO", '2')
            .await?;
    }
    smtp.command("DATA\r\n", "DATA", '3').await?;
    let reply = smtp
        .command(dot_stuffed(mail.message), "end of DATA", '2')
        .await?;
    let _ = smtp.command("QUIT\r\n", "QUIT", '2').await;
    Ok(reply.join(" "))
}

/// The DATA payload: a leading dot on any line doubled (RFC 5321 4.5.2), then `.` alone.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn message(from: &str, to: &str) -> Vec<u8> {
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    format!(
        "From: graph-relay test <{from}>\r\nTo: <{to}>\r\nSubject: graph-relay test message\r\n\
         Date: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message sent by `graph-relay send-test` at {date}.\r\n\
         If you can read it, SMTP -> graph-relay -> Microsoft Graph works.\r\n"
    )
    .into_bytes()
}

/// Whether an EHLO reply lists `keyword` (its lines after the first are `250-KEYWORD params`).
fn offers(ehlo: &[String], keyword: &str) -> bool {
    ehlo.iter().skip(1).any(|line| {
        line.get(4..)
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
    })
}

/// The mechanisms of the EHLO reply's AUTH line.
fn auth_mechanisms(ehlo: &[String]) -> impl Iterator<Item = &str> {
    ehlo.iter()
        .skip(1)
        .filter_map(|line| line.get(4..))
        .filter(|rest| {
            rest.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("AUTH"))
        })
        .flat_map(|rest| rest.split_whitespace().skip(1))
}

/// One SMTP connection (plain or TLS), reading replies line by line.
struct Smtp<S>(BufReader<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    async fn ehlo(&mut self, helo: &str) -> Result<Vec<String>, SendTestError> {
        self.command(format!("EHLO {helo}\r\n"), "EHLO", '2').await
    }

    async fn command(
        &mut self,
        line: impl AsRef<[u8]>,
        stage: &'static str,
        class: char,
    ) -> Result<Vec<String>, SendTestError> {
        self.0.get_mut().write_all(line.as_ref()).await?;
        self.reply(stage, class).await
    }

    /// Reads one (possibly multi-line) reply and checks its class.
    async fn reply(
        &mut self,
        stage: &'static str,
        class: char,
    ) -> Result<Vec<String>, SendTestError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).await? == 0 {
                return Err(SendTestError::Refused {
                    stage,
                    reply: "connection closed".into(),
                });
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_string());
            if last {
                break;
            }
        }
        if lines[0].starts_with(class) {
            Ok(lines)
        } else {
            Err(SendTestError::Refused {
                stage,
                reply: lines.join(" "),
            })
        }
    }
}

/// The name the relay's certificate is checked against: the host part of `host:port`.
fn server_name(server: &str) -> Result<ServerName<'static>, SendTestError> {
    let host = server
        .rsplit_once(':')
        .map_or(server, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| SendTestError::Tls(format!("{host:?} is not a server name ({e})")))
}

fn client_config(test: &SendTest<'_>) -> Result<rustls::ClientConfig, SendTestError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(crate::outbound::system_roots());
    // With no system CAs at all, only the relay's own certificate can be trusted.
    let system = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .ok();
    let verifier = RelayVerifier {
        relay_certificate: test.relay_certificate.clone(),
        system,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendTestError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Trusts the relay's configured certificate byte for byte (self-signed ones included), and
/// otherwise whatever the system CAs vouch for, with the usual name check.
#[derive(Debug)]
struct RelayVerifier {
    relay_certificate: Option<CertificateDer<'static>>,
    system: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RelayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .relay_certificate
            .as_ref()
            .is_some_and(|own| own.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.system {
            Some(system) => system.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn ehlo_keywords_and_auth_mechanisms() {
        let reply = ehlo(&[
            "250-relay.test",
            "250-SIZE 36700160",
            "250-STARTTLS",
            "250 AUTH PLAIN LOGIN",
        ]);
        assert!(offers(&reply, "starttls"));
        assert!(!offers(&reply, "CHUNKING"));
        assert_eq!(
            auth_mechanisms(&reply).collect::<Vec<_>>(),
            ["PLAIN", "LOGIN"]
        );
        // The greeting line's text is not a keyword.
        assert!(!offers(&ehlo(&["250 STARTTLS"]), "STARTTLS"));
    }

    #[test]
    fn lines_starting_with_a_dot_are_doubled_and_the_end_is_marked() {
        assert_eq!(
            dot_stuffed(b".a\r\nb\r\n.\r\n..c"),
            b"..a\r\nb\r\n..\r\n...c\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuffed(b""), b".\r\n".to_vec());
    }

    #[test]
    fn server_names_from_host_and_port() {
        assert!(matches!(
            server_name("127.0.0.1:2525"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:2525"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("relay.example.com:587"),
            Ok(ServerName::DnsName(_))
        ));
    }
}
