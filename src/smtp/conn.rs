//! The byte stream under one SMTP session: our own read buffer (so STARTTLS can drop pipelined
//! plaintext and DATA can take the bytes after the command), line framing with a length cap,
//! queued replies flushed only before the session would block on a read (RFC 2920), and on every
//! wait a shutdown signal, a per-read timeout and a deadline for the whole line or message being
//! read ([`Wait`]). Knows nothing of SMTP commands.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reply::Reply;

/// Longest command or SASL line, CRLF included (smtp-proto's own cap).
pub(crate) const MAX_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// Replies queued beyond this are written out even while more input is buffered, so a client
/// that pipelines without reading cannot grow our buffer without bound.
const MAX_QUEUED_OUTPUT: usize = 16 * 1024;

const READ_CHUNK: usize = 16 * 1024;

/// Most input discarded by `lingering_close`.
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// How long reads may wait: each one at most `idle`, and none past `deadline`. A per-read timeout
/// alone lets a client that sends a byte every few seconds hold the connection forever; the
/// deadline, fixed when the line or message starts, does not move with each byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    idle: Duration,
    /// `None` when too far in the future to represent: no deadline.
    deadline: Option<Instant>,
}

impl Wait {
    /// Reads of at most `idle` each, all done within `total` from now.
    pub(crate) fn within(idle: Duration, total: Duration) -> Self {
        Wait {
            idle,
            deadline: Instant::now().checked_add(total),
        }
    }

    /// This wait, ending no later than `other`'s deadline either.
    pub(crate) fn and(self, other: Wait) -> Self {
        Wait {
            idle: self.idle.min(other.idle),
            deadline: earliest(self.deadline, other.deadline),
        }
    }

    /// When the read starting now gives up.
    fn read_ends(&self) -> Option<Instant> {
        earliest(Instant::now().checked_add(self.idle), self.deadline)
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why no more input is coming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The client closed the connection, or the socket failed.
    Closed,
    /// Nothing arrived within the per-read timeout, the line or message was not complete by
    /// its deadline, or our replies could not be written in time.
    TimedOut,
    /// The stop token fired.
    Shutdown,
}

/// One framed line.
#[derive(Debug)]
pub(crate) enum Line {
    /// A line up to and including its LF.
    Complete(Vec<u8>),
    /// A line longer than `MAX_LINE`; the rest of it, up to its LF, is discarded as it arrives.
    TooLong,
}

pub(crate) struct Conn<S> {
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    write_timeout: Duration,
    /// Inside an over-long line: skip input up to the next LF.
    skipping: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(stream: S, write_timeout: Duration) -> Self {
        Conn {
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            write_timeout,
            skipping: false,
        }
    }

    /// Gives the stream back, dropping buffered input (RFC 3207: nothing the client sent before
    /// the TLS handshake may be acted on after it) and any unflushed output.
    pub(crate) fn into_inner(self) -> S {
        self.stream
    }

    /// Queues a reply.
    pub(crate) fn reply(&mut self, reply: &Reply) {
        self.wbuf.extend_from_slice(reply.to_wire().as_bytes());
    }

    /// Queues raw reply text (multi-line replies, 334 challenges); `text` ends with CRLF.
    pub(crate) fn reply_raw(&mut self, text: &str) {
        self.wbuf.extend_from_slice(text.as_bytes());
    }

    /// Writes out the queued replies.
    pub(crate) async fn flush(&mut self) -> Result<(), ReadError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let written = tokio::time::timeout(self.write_timeout, async {
            stream.write_all(wbuf).await?;
            stream.flush().await
        })
        .await;
        self.wbuf.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                Err(ReadError::Closed)
            }
            Err(_) => Err(ReadError::TimedOut),
        }
    }

    /// Writes out the queued replies, ends our side (FIN) and discards what the client still
    /// sends, for at most `linger` and `MAX_LINGER_BYTES`, so the close does not turn into a
    /// reset that could destroy the replies before the client reads them.
    pub(crate) async fn lingering_close(mut self, linger: Duration) {
        if self.flush().await.is_err() {
            return;
        }
        let stream = &mut self.stream;
        let _ = tokio::time::timeout(linger, async {
            if stream.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            let mut total = 0usize;
            while total < MAX_LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }

    /// Flushes when a pipelining client has let too many replies pile up.
    pub(crate) async fn flush_if_large(&mut self) -> Result<(), ReadError> {
        if self.wbuf.len() > MAX_QUEUED_OUTPUT {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Input received and not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rbuf.len());
    }

    /// Waits for more input. Queued replies are flushed first: the client may be waiting for
    /// them before it sends anything else.
    pub(crate) async fn fill(
        &mut self,
        wait: Wait,
        stop: &CancellationToken,
    ) -> Result<(), ReadError> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let ends = wait.read_ends();
        let read = async move {
            match ends {
                Some(at) => tokio::time::timeout_at(at, stream.read_buf(rbuf)).await,
                None => Ok(stream.read_buf(rbuf).await),
            }
        };
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(ReadError::Shutdown),
            read = read => read,
        };
        match read {
            Err(_) => Err(ReadError::TimedOut),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                Err(ReadError::Closed)
            }
        }
    }

    /// The next line, LF included. A line over `MAX_LINE` is reported as soon as it is known to
    /// be too long (so the client gets its 500 without sending the rest) and its remainder is
    /// skipped.
    pub(crate) async fn next_line(
        &mut self,
        wait: Wait,
        stop: &CancellationToken,
    ) -> Result<Line, ReadError> {
        loop {
            let avail = self.buffered();
            let newline = avail.iter().position(|&b| b == b'\n');
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.consume(i + 1);
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        let n = avail.len();
                        self.consume(n);
                    }
                }
            } else if let Some(i) = newline {
                let line = avail[..=i].to_vec();
                self.consume(i + 1);
                if line.len() > MAX_LINE {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line));
            } else if avail.len() >= MAX_LINE {
                let n = avail.len();
                self.consume(n);
                self.skipping = true;
                return Ok(Line::TooLong);
            }
            self.fill(wait, stop).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(5);

    fn wait() -> Wait {
        Wait::within(T, T)
    }

    #[tokio::test]
    async fn frames_lines_and_reports_overlong_ones_early() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(server, T);
        let stop = CancellationToken::new();
        let mut client = client;
        let mut long = vec![b'x'; MAX_LINE + 10];
        client.write_all(b"NOOP\r\n").await.expect("write");
        client.write_all(&long).await.expect("write");
        let first = conn.next_line(wait(), &stop).await.expect("line");
        assert!(
            matches!(first, Line::Complete(ref l) if l == b"NOOP\r\n"),
            "{first:?}"
        );
        // Reported before any LF arrives.
        let second = conn.next_line(wait(), &stop).await.expect("line");
        assert!(matches!(second, Line::TooLong), "{second:?}");
        long.truncate(100);
        client.write_all(&long).await.expect("write");
        client.write_all(b"\r\nQUIT\r\n").await.expect("write");
        let third = conn.next_line(wait(), &stop).await.expect("line");
        assert!(
            matches!(third, Line::Complete(ref l) if l == b"QUIT\r\n"),
            "{third:?}"
        );
    }

    #[tokio::test]
    async fn stop_and_eof_end_the_wait() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server, T);
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(
            conn.next_line(wait(), &stop).await.err(),
            Some(ReadError::Shutdown)
        );
        drop(client);
        let live = CancellationToken::new();
        assert_eq!(
            conn.next_line(wait(), &live).await.err(),
            Some(ReadError::Closed)
        );
    }

    /// Each byte comes well within the per-read timeout, yet the line is cut off at the deadline
    /// set when the wait began; a line completed in time is returned.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_does_not_move_with_each_byte() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server, T);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let reader = async {
            let line = conn
                .next_line(Wait::within(T, Duration::from_secs(60)), &stop)
                .await;
            (line, started.elapsed())
        };
        let writer = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(b"x").await.is_err() {
                    break;
                }
            }
        };
        let ((line, took), ()) = tokio::join!(reader, writer);
        assert_eq!(line.err(), Some(ReadError::TimedOut));
        assert_eq!(took, Duration::from_secs(60));

        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server, T);
        let started = Instant::now();
        let reader = conn.next_line(Wait::within(T, Duration::from_secs(60)), &stop);
        let writer = async {
            for b in b"NOOP\r\n" {
                tokio::time::sleep(Duration::from_secs(4)).await;
                client.write_all(&[*b]).await.expect("write");
            }
        };
        let (line, ()) = tokio::join!(reader, writer);
        assert!(matches!(line, Ok(Line::Complete(ref l)) if l == b"NOOP\r\n"));
        assert_eq!(started.elapsed(), Duration::from_secs(24));
    }

    #[test]
    fn a_deadline_too_far_away_is_none_and_the_earliest_wins() {
        let far = Wait::within(T, Duration::MAX);
        assert!(far.deadline.is_none());
        let near = Wait::within(Duration::MAX, Duration::from_secs(1));
        let both = far.and(near);
        assert_eq!(both.idle, T);
        assert_eq!(both.deadline, near.deadline);
    }
}
