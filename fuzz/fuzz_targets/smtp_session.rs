//! Fuzz target: one SMTP session (`smtp::serve_connection`) over an in-memory stream, the
//! client's bytes from the fuzzer, on a current-thread runtime with a paused clock (timeouts
//! and AUTH delays pass at once). Never a panic, and every message the sink is handed is what
//! the client sent: the bytes after a `DATA` line up to the first `<CRLF>.<CRLF>`, with the
//! leading dot of each line removed, or the chunks of `BDAT` commands, in order.
//!
//! Input: byte 0 picks the settings (AUTH users, require_auth, a small size limit, the sink's
//! answer), the rest is what the client writes.

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use graph_relay::config::SmtpUser;
use graph_relay::smtp::{AcceptError, MessageSink, SmtpSettings, serve_connection};
use graph_relay::envelope::{Envelope, QueueId};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Keeps what it is handed; answers as told.
struct Sink {
    accepted: Mutex<Vec<Vec<u8>>>,
    answer: Option<AcceptError>,
}

#[async_trait]
impl MessageSink for Sink {
    async fn accept(&self, _: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError> {
        self.accepted.lock().expect("not poisoned").push(message);
        match &self.answer {
            None => Ok(QueueId::generate()),
            Some(e) => Err(e.clone()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, client)) = data.split_first() else {
        return;
    };
    let mut settings = SmtpSettings::new("relay.test");
    if mode & 1 != 0 {
        settings
            .users
            .insert("u".into(), SmtpUser::Password("pw".into()));
        settings.users.insert(
            "m".into(),
            SmtpUser::Plain {
                password: "pw".into(),
                mailbox: Some("m@contoso.com".into()),
            },
        );
    }
    settings.require_auth = mode & 2 != 0;
    if mode & 4 != 0 {
        settings.max_message_bytes = 64;
    }
    if mode & 8 != 0 {
        settings.max_recipients = 2;
    }
    let sink = Sink {
        accepted: Mutex::new(Vec::new()),
        answer: (mode & 16 != 0).then(|| AcceptError::Rejected("no".into())),
    };
    let peer: SocketAddr = ([127, 0, 0, 1], 2525).into();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client_end);
        let shutdown = CancellationToken::new();
        let write = async {
            // The server may close first (too many errors): then the rest is not read.
            let _ = to_server.write_all(client).await;
            let _ = to_server.shutdown().await;
        };
        let read = async {
            let mut replies = Vec::new();
            let _ = from_server.read_to_end(&mut replies).await;
        };
        let serve = async {
            serve_connection(server_end, peer, &settings, &sink, &shutdown).await;
        };
        tokio::join!(write, read, serve);
    });

    for message in sink.accepted.lock().expect("not poisoned").iter() {
        assert!(
            sent_by_data(client, message) || sent_by_bdat(client, message),
            "accepted {:?}, which the client never sent as one message",
            String::from_utf8_lossy(message)
        );
    }
});

/// Whether `message` is what follows some `DATA` command line, up to a line of `.`,
/// unstuffed. Lines of DATA content end in CRLF only: a `.` followed by bare CRs does not end
/// it (finding 1, fixed in the relay's own DATA receiver).
fn sent_by_data(client: &[u8], message: &[u8]) -> bool {
    (0..client.len())
        .filter_map(|at| command_at(client, at, b"DATA"))
        .any(|(_, end)| unstuffed(&client[end..]).as_deref() == Some(message))
}

/// The message text of DATA content starting at `text` (at the start of a line), or `None` when
/// no line of a single `.` ends it.
fn unstuffed(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        if line == b"." {
            return Some(out);
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
        rest = &rest[end + 2..];
    }
}

/// Whether `message` is the chunks of `BDAT n` commands, in order. Other commands may come
/// between them (a refused command does not end the transaction), so any later BDAT command may
/// carry the next chunk; which one was `LAST` is not checked.
fn sent_by_bdat(client: &[u8], message: &[u8]) -> bool {
    let chunks: Vec<Range<usize>> = (0..client.len())
        .flat_map(|at| bdat_at(client, at))
        .filter(|c| c.end <= client.len())
        .collect();
    let mut dead = HashSet::new();
    (0..chunks.len()).any(|i| continues(client, &chunks, i, message, 0, &mut dead))
}

/// Whether chunk `i` and chunks after it can make up `message[done..]`. `dead` remembers the
/// (chunk, offset) pairs that cannot, so the search stays polynomial.
fn continues(
    client: &[u8],
    chunks: &[Range<usize>],
    i: usize,
    message: &[u8],
    done: usize,
    dead: &mut HashSet<(usize, usize)>,
) -> bool {
    let bytes = &client[chunks[i].clone()];
    if !message[done..].starts_with(bytes) || dead.contains(&(i, done)) {
        return false;
    }
    let next = done + bytes.len();
    // A chunk's command starts after the chunk before it ends, so it is a later one.
    let found = next == message.len()
        || (i + 1..chunks.len())
            .filter(|&j| chunks[j].start > chunks[i].end)
            .any(|j| continues(client, chunks, j, message, next, dead));
    if !found {
        dead.insert((i, done));
    }
    found
}

/// The chunk of the `BDAT <size> ...` command starting at `at`, if there is one, of `size`
/// bytes. A size that does not fit is refused, never read modulo anything (finding 4, fixed:
/// `552 5.3.4` and the connection closes; fuzz/regressions/smtp_session/bdat-size-wraps).
fn bdat_at(client: &[u8], at: usize) -> Option<Range<usize>> {
    let (line, end) = command_at(client, at, b"BDAT")?;
    let arg = line[4..].trim_ascii_start();
    let digits: Vec<u8> = arg.iter().copied().take_while(u8::is_ascii_digit).collect();
    let size: usize = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    Some(end..end.checked_add(size)?)
}

/// The command line starting at `at` when its verb is `verb`: the line read the way the
/// command parser (smtp-proto) reads it, and where the next line starts. That parser is lax
/// about bare CR and trailing bytes, and so is this: CRs before the LF are dropped (`D<CR>ATA`
/// is DATA there, fuzz/regressions/smtp_session/cr-inside-command-word), and anything may follow
/// the verb after a blank (`BDAT 2 LAST<NUL>junk` is BDAT 2 LAST). The oracle checks message
/// bytes, not command syntax.
fn command_at(client: &[u8], at: usize, verb: &[u8]) -> Option<(Vec<u8>, usize)> {
    let rest = &client[at..];
    let eol = rest.iter().position(|&b| b == b'\n')?;
    let line: Vec<u8> = rest[..eol]
        .iter()
        .copied()
        .filter(|&b| b != b'\r')
        .collect();
    let line = line.trim_ascii_start().to_vec();
    let is_verb = line.get(..verb.len())?.eq_ignore_ascii_case(verb)
        && line.get(verb.len()).is_none_or(u8::is_ascii_whitespace);
    is_verb.then_some((line, at + eol + 1))
}
