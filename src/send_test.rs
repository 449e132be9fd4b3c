//! A minimal SMTP client for the running relay: `graph-relay send-test` sends one test message
//! through it (like WP Mail SMTP's "Email Test"), and the sendmail command submits through it
//! when it cannot write the spool itself. Returns the server's final reply; never retries.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// Sends the test message; returns the reply to the end of DATA (`250 ...` when queued).
pub async fn send(server: &str, helo: &str, from: &str, to: &str) -> Result<String, SendTestError> {
    submit(server, helo, from, &[to.to_string()], &message(from, to)).await
}

/// Submits one message (CRLF line endings, not yet dot-stuffed) to `server`; returns the reply
/// to the end of DATA, which the relay gives only once the message is durable in its spool.
pub async fn submit(
    server: &str,
    helo: &str,
    from: &str,
    to: &[String],
    message: &[u8],
) -> Result<String, SendTestError> {
    let exchange = async {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|source| SendTestError::Connect {
                server: server.to_string(),
                source,
            })?;
        dialogue(stream, helo, from, to, message).await
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| SendTestError::Timeout(TIMEOUT))?
}

async fn dialogue(
    stream: TcpStream,
    helo: &str,
    from: &str,
    to: &[String],
    message: &[u8],
) -> Result<String, SendTestError> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    expect(&mut read, "greeting", '2').await?;
    let mut step = async |bytes: Vec<u8>, stage: &'static str, class: char| {
        write.write_all(&bytes).await?;
        expect(&mut read, stage, class).await
    };
    let utf8 = std::iter::once(from)
        .chain(to.iter().map(String::as_str))
        .any(|a| !a.is_ascii());
    let utf8 = if utf8 { " SMTPUTF8" } else { "" };
    step(format!("EHLO {helo}\r\n").into(), "EHLO", '2').await?;
    step(
        format!("MAIL FROM:<{from}>{utf8}\r\n").into(),
        "MAIL FROM",
        '2',
    )
    .await?;
    for to in to {
        step(format!("RCPT TO:<{to}>\r\n").into(), "RCPT TO", '2').await?;
    }
    step(b"DATA\r\n".to_vec(), "DATA", '3').await?;
    let reply = step(dot_stuffed(message), "end of DATA", '2').await?;
    let _ = step(b"QUIT\r\n".to_vec(), "QUIT", '2').await;
    Ok(reply)
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

/// Reads one (possibly multi-line) reply and checks its class.
async fn expect<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
    stage: &'static str,
    class: char,
) -> Result<String, SendTestError> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Err(SendTestError::Refused {
                stage,
                reply: "connection closed".into(),
            });
        }
        let last = line.as_bytes().get(3) != Some(&b'-');
        reply.push_str(line.trim_end());
        if last {
            break;
        }
        reply.push(' ');
    }
    if reply.starts_with(class) {
        Ok(reply)
    } else {
        Err(SendTestError::Refused { stage, reply })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_are_doubled_and_the_end_is_marked() {
        assert_eq!(
            dot_stuffed(b".a\r\nb\r\n.\r\n..c"),
            b"..a\r\nb\r\n..\r\n...c\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuffed(b""), b".\r\n".to_vec());
    }
}
