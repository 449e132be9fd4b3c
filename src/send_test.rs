//! `graph-relay send-test`: a minimal SMTP client that sends one test message to the running
//! relay, like WP Mail SMTP's "Email Test". Returns the server's final reply; never retries.

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

const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends the test message; returns the reply to the end of DATA (`250 ...` when queued).
pub async fn send(server: &str, helo: &str, from: &str, to: &str) -> Result<String, SendTestError> {
    tokio::time::timeout(TIMEOUT, exchange(server, helo, from, to))
        .await
        .map_err(|_| SendTestError::Timeout(TIMEOUT))?
}

async fn exchange(server: &str, helo: &str, from: &str, to: &str) -> Result<String, SendTestError> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|source| SendTestError::Connect {
            server: server.to_string(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    expect(&mut read, "greeting", '2').await?;
    let mut step = async |line: String, stage: &'static str, class: char| {
        write.write_all(line.as_bytes()).await?;
        expect(&mut read, stage, class).await
    };
    step(format!("EHLO {helo}\r\n"), "EHLO", '2').await?;
    step(format!("MAIL FROM:<{from}>\r\n"), "MAIL FROM", '2').await?;
    step(format!("RCPT TO:<{to}>\r\n"), "RCPT TO", '2').await?;
    step("DATA\r\n".to_string(), "DATA", '3').await?;
    let reply = step(message(from, to), "end of DATA", '2').await?;
    let _ = step("QUIT\r\n".to_string(), "QUIT", '2').await;
    Ok(reply)
}

fn message(from: &str, to: &str) -> String {
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    format!(
        "From: graph-relay test <{from}>\r\nTo: <{to}>\r\nSubject: graph-relay test message\r\n\
         Date: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message sent by `graph-relay send-test` at {date}.\r\n\
         If you can read it, SMTP -> graph-relay -> Microsoft Graph works.\r\n.\r\n"
    )
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
