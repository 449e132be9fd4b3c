//! One SMTP connection, from the network check to QUIT: the command state machine over
//! smtp-proto's parser, DATA with the strict `<CRLF>.<CRLF>` end and BDAT with checked chunk
//! sizes (both framed by `data`), the size cap, the deadlines for a command line and for a
//! message, the spool space check at MAIL, AUTH (with the per-address failure delay and the
//! user → mailbox restriction), STARTTLS and implicit TLS. Generic over the byte stream. Hands
//! complete messages to the `MessageSink` and answers 250 only on its `Ok`; never logs message
//! bodies or credentials.

use std::borrow::Cow;
use std::net::SocketAddr;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8,
};
use smtp_proto::{MailFrom, RcptTo, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::conn::{Conn, Line, ReadError, Wait};
use super::data::{Bdat, DataReader};
use super::reply::{self, Reply};
use super::sasl;
use super::settings::{DATA_MEMORY_UNIT, SmtpSettings};
use super::sink::{AcceptError, MessageSink};
use crate::envelope::Envelope;

/// How long a client may keep sending after our last reply before the connection is dropped
/// (a refused client after its 554, a BDAT whose chunk cannot be skipped after its 421).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Shutdown as a session sees it: `soft` ends idle sessions at once; `hard` (the grace period is
/// over) ends the rest, mid-transaction or not.
#[derive(Clone, Default)]
pub(crate) struct Stop {
    pub(crate) soft: CancellationToken,
    pub(crate) hard: CancellationToken,
}

/// What a session works with.
pub(crate) struct Ctx<'a> {
    pub(crate) settings: &'a SmtpSettings,
    pub(crate) sink: &'a dyn MessageSink,
    pub(crate) peer: SocketAddr,
    pub(crate) stop: &'a Stop,
}

/// Runs one connection to the end: network check, optional implicit TLS, the dialogue, and the
/// STARTTLS upgrade. Never panics on client input; returns when the connection is done.
pub(crate) async fn run<S>(stream: S, ctx: &Ctx<'_>, implicit_tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let settings = ctx.settings;
    if !settings.allows(ctx.peer.ip()) {
        info!("client not in smtp.allowed_networks; refused");
        if !implicit_tls {
            // A TLS client could not read a plaintext reply; it just sees the close.
            let mut conn = Conn::new(stream, settings.idle_timeout);
            conn.reply(&reply::access_denied(&settings.hostname));
            // A client that pipelined commands without waiting would otherwise get a reset
            // (unread input at close) that can swallow the 554 before it reads it.
            conn.lingering_close(LINGER).await;
        }
        return;
    }
    let mut state = State::default();
    if implicit_tls {
        let Some(tls) = handshake(stream, ctx).await else {
            return;
        };
        state.tls = true;
        dialogue(Conn::new(tls, settings.idle_timeout), &mut state, ctx, true).await;
        return;
    }
    let conn = Conn::new(stream, settings.idle_timeout);
    if let Outcome::StartTls(stream) = dialogue(conn, &mut state, ctx, true).await {
        let Some(tls) = handshake(stream, ctx).await else {
            return;
        };
        // RFC 3207: forget everything learned before the handshake.
        state = State {
            tls: true,
            ..State::default()
        };
        // The upgraded dialogue cannot ask for STARTTLS again (`state.tls`), so its outcome is
        // always Done.
        let _ = dialogue(
            Conn::new(tls, settings.idle_timeout),
            &mut state,
            ctx,
            false,
        )
        .await;
    }
}

async fn handshake<S>(stream: S, ctx: &Ctx<'_>) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = ctx.settings.tls.as_ref()?.config();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(ctx.settings.idle_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            debug!("TLS established");
            Some(tls)
        }
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!("TLS handshake timed out");
            None
        }
    }
}

/// Per-connection state that survives between transactions.
#[derive(Default)]
struct State {
    helo: Option<String>,
    tls: bool,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: usize,
    /// NOOP, RSET, VRFY and HELP since the last accepted message.
    junk: usize,
    auth_failures: usize,
}

/// One mail transaction, MAIL FROM to end of DATA (or the last BDAT chunk).
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
    smtputf8: bool,
    /// The message so far, once a BDAT chunk arrived.
    chunks: Option<Body>,
    /// Set when the message data starts (DATA, or the first BDAT): it must all arrive by then.
    message_wait: Option<Wait>,
}

/// A message being received, with its share of the DATA memory budget.
#[derive(Default)]
struct Body {
    bytes: Vec<u8>,
    reserved: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Why the rest is being drained instead of kept.
    refused: Option<Refusal>,
}

#[derive(Clone, Copy)]
enum Refusal {
    TooBig,
    OutOfMemory,
}

impl Body {
    /// Checks the size limit and the memory budget after bytes were added; once refused, the
    /// bytes are dropped and the caller drains the rest.
    fn check(&mut self, settings: &SmtpSettings) {
        if self.refused.is_some() {
            return;
        }
        if self.bytes.len() > settings.max_message_bytes {
            self.refuse(Refusal::TooBig);
        } else if !reserve_memory(
            &settings.data_memory(),
            &mut self.reserved,
            self.bytes.len(),
        ) {
            self.refuse(Refusal::OutOfMemory);
        }
    }

    fn refuse(&mut self, why: Refusal) {
        self.refused = Some(why);
        self.bytes = Vec::new();
        self.reserved = None;
    }
}

enum Outcome<S> {
    Done,
    StartTls(S),
}

/// What to do after a command.
enum Flow {
    Continue,
    Close,
    /// Close, reading and dropping what the client still sends for a moment: it has sent bytes
    /// we will not read, and closing on unread input resets the connection, which can destroy
    /// our last replies before the client reads them.
    CloseLingering,
    StartTls,
}

async fn dialogue<S>(mut conn: Conn<S>, state: &mut State, ctx: &Ctx<'_>, greet: bool) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = Session { state, ctx };
    if greet {
        conn.reply_raw(&format!(
            "220 {} ESMTP graph-relay ready\r\n",
            ctx.settings.hostname
        ));
    }
    loop {
        if ctx.stop.soft.is_cancelled() && session.state.tx.is_none() {
            session
                .close_with(&mut conn, reply::shutting_down(&ctx.settings.hostname))
                .await;
            return Outcome::Done;
        }
        let line = match conn
            .next_line(session.line_wait(), session.stop_token())
            .await
        {
            Ok(line) => line,
            Err(e) => {
                session.read_ended(&mut conn, e).await;
                return Outcome::Done;
            }
        };
        let flow = match line {
            Line::TooLong => session.protocol_error(&mut conn, reply::line_too_long()),
            Line::Complete(line) => session.command(&mut conn, &line).await,
        };
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                let _ = conn.flush().await;
                return Outcome::Done;
            }
            Flow::CloseLingering => {
                conn.lingering_close(LINGER).await;
                return Outcome::Done;
            }
            Flow::StartTls => {
                if conn.flush().await.is_err() {
                    return Outcome::Done;
                }
                return Outcome::StartTls(conn.into_inner());
            }
        }
        if let Err(e) = conn.flush_if_large().await {
            session.read_ended(&mut conn, e).await;
            return Outcome::Done;
        }
    }
}

struct Session<'s, 'c> {
    state: &'s mut State,
    ctx: &'s Ctx<'c>,
}

impl Session<'_, '_> {
    fn host(&self) -> &str {
        &self.ctx.settings.hostname
    }

    /// Idle sessions stop at shutdown; sessions inside a transaction only when the grace period
    /// is over.
    fn stop_token(&self) -> &CancellationToken {
        if self.state.tx.is_some() {
            &self.ctx.stop.hard
        } else {
            &self.ctx.stop.soft
        }
    }

    /// How long the next command line may take: `command_timeout` from now, and within the
    /// message deadline while a BDAT message is in progress (so a stream of tiny chunks cannot
    /// stretch it).
    fn line_wait(&self) -> Wait {
        let settings = self.ctx.settings;
        let line = Wait::within(settings.idle_timeout, settings.command_timeout);
        match self.state.tx.as_ref().and_then(|tx| tx.message_wait) {
            Some(message) => line.and(message),
            None => line,
        }
    }

    /// The deadline of this transaction's message, started now if it has not started yet.
    fn message_wait(&mut self) -> Wait {
        let settings = self.ctx.settings;
        let fresh = Wait::within(settings.idle_timeout, settings.data_timeout);
        match self.state.tx.as_mut() {
            Some(tx) => *tx.message_wait.get_or_insert(fresh),
            None => fresh,
        }
    }

    fn auth_offered(&self) -> bool {
        !self.ctx.settings.users.is_empty()
            && (self.state.tls || self.ctx.peer.ip().to_canonical().is_loopback())
    }

    fn starttls_offered(&self) -> bool {
        self.ctx.settings.tls.is_some() && !self.state.tls
    }

    async fn close_with<S>(&mut self, conn: &mut Conn<S>, reply: Reply)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.reply(&reply);
        let _ = conn.flush().await;
    }

    /// The input ended (EOF, timeout or shutdown): say why where there is someone to tell.
    async fn read_ended<S>(&mut self, conn: &mut Conn<S>, why: ReadError)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let host = self.host().to_string();
        match why {
            ReadError::Closed => debug!("client closed the connection"),
            ReadError::TimedOut => {
                info!("timed out: silent too long, or the line or message took too long");
                self.close_with(conn, reply::timeout(&host)).await;
            }
            ReadError::Shutdown => {
                info!("closing for shutdown");
                self.close_with(conn, reply::shutting_down(&host)).await;
            }
        }
    }

    /// A protocol error: the reply, or 421 and close once the client has made too many.
    fn protocol_error<S>(&mut self, conn: &mut Conn<S>, reply: Reply) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.state.errors += 1;
        if self.state.errors > self.ctx.settings.max_errors {
            info!(errors = self.state.errors, "too many errors; closing");
            conn.reply(&reply::too_many_errors(self.host()));
            return Flow::Close;
        }
        conn.reply(&reply);
        Flow::Continue
    }

    /// A command that moves no mail: answered with `reply`, but past `max_junk_commands` since
    /// the last accepted message each one counts as a protocol error.
    fn junk<S>(&mut self, conn: &mut Conn<S>, reply: Reply) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.state.junk += 1;
        if self.state.junk > self.ctx.settings.max_junk_commands {
            debug!(
                junk = self.state.junk,
                "too many commands that move no mail"
            );
            return self.protocol_error(conn, reply);
        }
        conn.reply(&reply);
        Flow::Continue
    }

    fn help(&self) -> Reply {
        let mut commands = String::from("EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
        if self.starttls_offered() {
            commands.push_str(" STARTTLS");
        }
        if self.auth_offered() {
            commands.push_str(" AUTH");
        }
        Reply::new(214, [2, 0, 0], format!("Supported commands: {commands}"))
    }

    async fn command<S>(&mut self, conn: &mut Conn<S>, line: &[u8]) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // Parsed here, not by smtp-proto, whose chunk-size parser restarts on overflow.
        if let Some(bdat) = super::data::parse_bdat(line) {
            return self.bdat(conn, bdat).await;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => {
                let reply = parse_error_reply(&e);
                debug!(reply = reply.code(), "bad command");
                return self.protocol_error(conn, reply);
            }
        };
        match request {
            Request::Ehlo { host } => self.ehlo(conn, host, true),
            Request::Helo { host } => self.ehlo(conn, host, false),
            Request::Mail { from } => self.mail(conn, from, line).await,
            Request::Rcpt { to } => self.rcpt(conn, to),
            Request::Data => self.data(conn).await,
            Request::Rset => {
                self.state.tx = None;
                self.junk(conn, reply::ok())
            }
            Request::Noop { .. } => self.junk(conn, reply::ok()),
            Request::Vrfy { .. } => self.junk(conn, reply::vrfy()),
            Request::Help { .. } => {
                let help = self.help();
                self.junk(conn, help)
            }
            Request::Quit => {
                conn.reply(&reply::bye(self.host()));
                Flow::Close
            }
            Request::StartTls => self.starttls(conn),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(conn, mechanism, initial_response).await,
            // smtp-proto saw a BDAT that `parse_bdat` did not: where its chunk ends is unknown.
            Request::Bdat { .. } => self.bdat(conn, Bdat::Syntax).await,
            Request::Lhlo { .. } => self.protocol_error(conn, reply::not_implemented("LHLO")),
            Request::Expn { .. } => self.protocol_error(conn, reply::not_implemented("EXPN")),
            Request::Etrn { .. } => self.protocol_error(conn, reply::not_implemented("ETRN")),
            Request::Atrn { .. } => self.protocol_error(conn, reply::not_implemented("ATRN")),
            Request::Burl { .. } => self.protocol_error(conn, reply::not_implemented("BURL")),
        }
    }

    fn ehlo<S>(&mut self, conn: &mut Conn<S>, client: Cow<'_, str>, extended: bool) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.state.helo = Some(client.into_owned());
        self.state.tx = None;
        let host = self.host().to_string();
        if !extended {
            conn.reply_raw(&format!("250 {host}\r\n"));
            return Flow::Continue;
        }
        // Written by hand rather than with smtp_proto::EhloResponse, whose first line carries a
        // fixed joke and whose keyword order we do not control.
        let mut lines = vec![
            host,
            format!("SIZE {}", self.ctx.settings.max_message_bytes),
            "PIPELINING".to_string(),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("ENHANCEDSTATUSCODES".to_string());
        let last = lines.len() - 1;
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            text.push_str(&format!("250{sep}{line}\r\n"));
        }
        conn.reply_raw(&text);
        Flow::Continue
    }

    async fn mail<S>(
        &mut self,
        conn: &mut Conn<S>,
        from: MailFrom<Cow<'_, str>>,
        line: &[u8],
    ) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let settings = self.ctx.settings;
        if self.state.helo.is_none() {
            return self.protocol_error(conn, reply::bad_sequence("Send EHLO or HELO first"));
        }
        if self.state.tx.is_some() {
            return self.protocol_error(conn, reply::bad_sequence("Nested MAIL command"));
        }
        if settings.require_auth && self.state.auth_user.is_none() {
            conn.reply(&reply::auth_required());
            return Flow::Continue;
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.protocol_error(conn, reply::unsupported_parameter("BODY=BINARYMIME"));
        }
        if from.size > settings.max_message_bytes || super::data::declares_oversized_size(line) {
            conn.reply(&reply::too_big());
            return Flow::Continue;
        }
        if !valid_address(&from.address) {
            return self.protocol_error(conn, reply::bad_sender());
        }
        if let Some((user, mailbox)) = self.mapped_mailbox()
            && !from.address.is_empty()
            && !same_address(&from.address, mailbox)
        {
            info!(user = %user, "MAIL FROM is not the AUTH user's mailbox; refused");
            conn.reply(&reply::sender_not_owned(&from.address, user));
            return Flow::Continue;
        }
        let declared = (from.size > 0).then(|| u64::try_from(from.size).unwrap_or(u64::MAX));
        match self.ctx.sink.check_space(declared).await {
            Ok(()) => {}
            Err(AcceptError::NoSpace(why)) => {
                warn!(error = %why, declared, "no room in the spool; answered 452 at MAIL");
                conn.reply(&reply::spool_full());
                return Flow::Continue;
            }
            Err(AcceptError::Unavailable(why) | AcceptError::Rejected(why)) => {
                warn!(error = %why, "spool unavailable at MAIL; answered 451");
                conn.reply(&reply::spool_unavailable());
                return Flow::Continue;
            }
        }
        self.state.tx = Some(Transaction {
            mail_from: from.address.into_owned(),
            rcpt_to: Vec::new(),
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            chunks: None,
            message_wait: None,
        });
        conn.reply(&reply::sender_ok());
        Flow::Continue
    }

    fn rcpt<S>(&mut self, conn: &mut Conn<S>, to: RcptTo<Cow<'_, str>>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max = self.ctx.settings.max_recipients;
        let Some(tx) = self.state.tx.as_mut() else {
            return self.protocol_error(conn, reply::bad_sequence("Need MAIL command"));
        };
        if to.address.is_empty() || !valid_address(&to.address) {
            return self.protocol_error(conn, reply::bad_recipient());
        }
        if tx
            .rcpt_to
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&to.address))
        {
            conn.reply(&reply::recipient_ok());
            return Flow::Continue;
        }
        if tx.rcpt_to.len() >= max {
            conn.reply(&reply::too_many_recipients());
            return Flow::Continue;
        }
        tx.rcpt_to.push(to.address.into_owned());
        conn.reply(&reply::recipient_ok());
        Flow::Continue
    }

    async fn data<S>(&mut self, conn: &mut Conn<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.state.tx {
            None => return self.protocol_error(conn, reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpt_to.is_empty() => {
                return self.protocol_error(conn, reply::bad_sequence("Need RCPT command"));
            }
            Some(_) => {}
        }
        if self.state.tx.as_ref().is_some_and(|tx| tx.chunks.is_some()) {
            return self.protocol_error(conn, reply::bad_sequence("DATA after BDAT"));
        }
        conn.reply(&reply::start_data());
        let settings = self.ctx.settings;
        let wait = self.message_wait();
        let mut reader = DataReader::new();
        let mut body = Body::default();
        // Once the message is refused, the rest is read to its end and kept nowhere.
        let mut dropped = Vec::new();
        loop {
            let out = if body.refused.is_some() {
                dropped.clear();
                &mut dropped
            } else {
                &mut body.bytes
            };
            let fed = reader.feed(conn.buffered(), out);
            conn.consume(fed.consumed);
            body.check(settings);
            if fed.ended {
                break;
            }
            if let Err(e) = conn.fill(wait, &self.ctx.stop.hard).await {
                return self.message_cut_off(conn, e, "DATA").await;
            }
        }
        self.end_of_message(conn, body).await
    }

    /// Reading a message failed part way (timeout, shutdown, or the client left): nothing of it
    /// is accepted and the connection ends.
    async fn message_cut_off<S>(&mut self, conn: &mut Conn<S>, e: ReadError, command: &str) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.state.tx = None;
        if e == ReadError::Closed {
            info!("client went away during {command}; nothing accepted");
        } else {
            self.read_ended(conn, e).await;
        }
        Flow::Close
    }

    /// The message is complete (end of DATA, or the last BDAT chunk): refuse it, or hand it to
    /// the sink and answer with what the sink says.
    async fn end_of_message<S>(&mut self, conn: &mut Conn<S>, body: Body) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(tx) = self.state.tx.take() else {
            return Flow::Continue;
        };
        let settings = self.ctx.settings;
        match body.refused {
            Some(Refusal::OutOfMemory) => {
                warn!(
                    budget = settings.data_memory_bytes,
                    "DATA memory budget exhausted; answered 452"
                );
                conn.reply(&reply::spool_full());
                return Flow::Continue;
            }
            Some(Refusal::TooBig) => {
                info!(
                    limit = settings.max_message_bytes,
                    "message over the size limit; refused"
                );
                conn.reply(&reply::too_big());
                return Flow::Continue;
            }
            None => {}
        }
        let body = body.bytes;
        if let Some((user, mailbox)) = self.mapped_mailbox()
            && !from_header_is(&body, &tx.mail_from, mailbox)
        {
            info!(user = %user, "From header is not the AUTH user's mailbox; refused");
            conn.reply(&reply::from_not_owned(user, mailbox));
            return Flow::Continue;
        }
        let size = body.len();
        let recipients = tx.rcpt_to.len();
        let envelope = Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            helo: self.state.helo.clone().unwrap_or_default(),
            client_ip: Some(self.ctx.peer.ip().to_canonical()),
            auth_user: self.state.auth_user.clone(),
            smtputf8: tx.smtputf8,
        };
        let reply = match self.ctx.sink.accept(envelope, body).await {
            Ok(id) => {
                info!(queue_id = %id, size, recipients, "message accepted");
                self.state.junk = 0;
                reply::queued(id.as_str())
            }
            Err(AcceptError::Unavailable(why)) => {
                warn!(error = %why, "spool unavailable; answered 451");
                reply::spool_unavailable()
            }
            Err(AcceptError::NoSpace(why)) => {
                warn!(error = %why, "spool full; answered 452");
                reply::spool_full()
            }
            Err(AcceptError::Rejected(why)) => {
                info!(reason = %why, "message rejected; answered 554");
                reply::rejected(&why)
            }
        };
        conn.reply(&reply);
        Flow::Continue
    }

    /// BDAT (RFC 3030 CHUNKING): exactly `chunk_size` bytes follow the command, with no
    /// dot-stuffing and no end marker; the chunk is always read (so it is never taken for
    /// commands), even when the transaction is refused. A chunk that cannot be read that way (its
    /// size unreadable, beyond 64 bits or over `max_message_bytes`, so draining it could take
    /// forever) gets its 501/552 and then 421: the connection closes rather than read the chunk's
    /// bytes as commands.
    async fn bdat<S>(&mut self, conn: &mut Conn<S>, bdat: Bdat) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let settings = self.ctx.settings;
        let (chunk_size, is_last) = match bdat {
            Bdat::Chunk { size, last } => match size.and_then(|s| usize::try_from(s).ok()) {
                Some(size) if size <= settings.max_message_bytes => (size, last),
                _ => {
                    info!(size, "BDAT chunk over the size limit; closing");
                    return self.unframed_chunk(conn, reply::too_big());
                }
            },
            Bdat::Syntax => {
                info!("BDAT without a readable size; closing");
                return self.unframed_chunk(conn, reply::syntax("BDAT chunk-size [LAST]"));
            }
        };
        let ready = match &self.state.tx {
            None => Err(reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpt_to.is_empty() => Err(reply::bad_sequence("Need RCPT command")),
            Some(_) => Ok(()),
        };
        let wait = match ready {
            Ok(()) => self.message_wait(),
            Err(_) => Wait::within(settings.idle_timeout, settings.data_timeout),
        };
        let mut body = match (&ready, self.state.tx.as_mut()) {
            (Ok(()), Some(tx)) => tx.chunks.take().unwrap_or_default(),
            // Out of sequence: the chunk is drained (kept nowhere) and refused below.
            _ => Body {
                refused: Some(Refusal::TooBig),
                ..Body::default()
            },
        };
        let mut left = chunk_size;
        loop {
            let avail = conn.buffered();
            let take = avail.len().min(left);
            if body.refused.is_none() {
                body.bytes.extend_from_slice(&avail[..take]);
            }
            conn.consume(take);
            left -= take;
            body.check(settings);
            if left == 0 {
                break;
            }
            if let Err(e) = conn.fill(wait, &self.ctx.stop.hard).await {
                return self.message_cut_off(conn, e, "BDAT").await;
            }
        }
        if let Err(reply) = ready {
            return self.protocol_error(conn, reply);
        }
        if is_last {
            return self.end_of_message(conn, body).await;
        }
        if let Some(tx) = self.state.tx.as_mut() {
            tx.chunks = Some(body);
        }
        conn.reply(&reply::chunk_received(chunk_size));
        Flow::Continue
    }

    /// The answer to a BDAT whose chunk cannot be skipped, then 421 and close.
    fn unframed_chunk<S>(&mut self, conn: &mut Conn<S>, reply: Reply) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.state.tx = None;
        conn.reply(&reply);
        conn.reply(&reply::unframed_chunk(self.host()));
        Flow::CloseLingering
    }

    fn starttls<S>(&mut self, conn: &mut Conn<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.state.tls {
            return self.protocol_error(conn, reply::bad_sequence("TLS already active"));
        }
        if self.ctx.settings.tls.is_none() {
            return self.protocol_error(conn, reply::not_implemented("STARTTLS"));
        }
        conn.reply(&reply::start_tls());
        Flow::StartTls
    }

    async fn auth<S>(&mut self, conn: &mut Conn<S>, mechanism: u64, initial: Cow<'_, str>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.auth_offered() {
            if !self.ctx.settings.users.is_empty() && !self.state.tls {
                conn.reply(&reply::encryption_required());
                return Flow::Continue;
            }
            return self.protocol_error(conn, reply::not_implemented("AUTH"));
        }
        if self.state.auth_user.is_some() {
            return self.protocol_error(conn, reply::bad_sequence("Already authenticated"));
        }
        if self.state.tx.is_some() {
            return self.protocol_error(
                conn,
                reply::bad_sequence("AUTH not allowed during a mail transaction"),
            );
        }
        let initial = (!initial.is_empty()).then(|| initial.as_bytes().to_vec());
        let creds = match mechanism {
            AUTH_PLAIN => {
                let message = match self.sasl_step(conn, initial, sasl::PLAIN_CHALLENGE).await {
                    Ok(m) => m,
                    Err(flow) => return flow,
                };
                sasl::parse_plain(&message)
            }
            AUTH_LOGIN => {
                let user = match self.sasl_step(conn, initial, sasl::LOGIN_USERNAME).await {
                    Ok(m) => m,
                    Err(flow) => return flow,
                };
                let password = match self.sasl_step(conn, None, sasl::LOGIN_PASSWORD).await {
                    Ok(m) => m,
                    Err(flow) => return flow,
                };
                sasl::Credentials::new(user, password)
            }
            _ => return self.protocol_error(conn, reply::auth_mechanism()),
        };
        let verdict = match &creds {
            Some(c) => match sasl::check(&self.ctx.settings.users, c) {
                sasl::Check::Done(verdict) => verdict,
                sasl::Check::Hash {
                    hash,
                    password,
                    real,
                } => match self.verify_hash(hash, password).await {
                    sasl::Verdict::Valid if real => sasl::Verdict::Valid,
                    _ => sasl::Verdict::Invalid,
                },
            },
            None => sasl::Verdict::Invalid,
        };
        match (verdict, creds) {
            (sasl::Verdict::Valid, Some(c)) => {
                info!(user = %c.username, "authenticated");
                self.state.auth_user = Some(c.username);
                conn.reply(&reply::auth_ok());
                Flow::Continue
            }
            _ => {
                let ip = self.ctx.peer.ip();
                let wait = self.ctx.settings.auth_throttle.failure(ip, Instant::now());
                info!(wait_ms = wait.as_millis(), "AUTH failed");
                if !wait.is_zero() {
                    // Flush what is queued so a pipelining client is not kept waiting for it,
                    // then hold the 535 back.
                    let _ = conn.flush().await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.ctx.stop.hard.cancelled() => {}
                    }
                }
                self.state.auth_failures += 1;
                if self.state.auth_failures >= self.ctx.settings.max_auth_failures {
                    conn.reply(&reply::auth_failed());
                    conn.reply(&reply::too_many_errors(self.host()));
                    return Flow::Close;
                }
                conn.reply(&reply::auth_failed());
                Flow::Continue
            }
        }
    }

    /// The AUTH user's mailbox, when the user is restricted to one.
    fn mapped_mailbox(&self) -> Option<(&str, &str)> {
        let user = self.state.auth_user.as_deref()?;
        let mailbox = self.ctx.settings.users.get(user)?.mailbox()?;
        Some((user, mailbox))
    }

    /// Verifies an argon2 hash on the blocking pool, at most `max_hash_verifications` at a time.
    async fn verify_hash(&self, hash: String, password: Vec<u8>) -> sasl::Verdict {
        let Ok(_slot) = self.ctx.settings.hash_slots().acquire().await else {
            return sasl::Verdict::Invalid;
        };
        match tokio::task::spawn_blocking(move || sasl::verify_hash(&hash, &password)).await {
            Ok(verdict) => verdict,
            Err(e) => {
                warn!(error = %e, "password hash verification did not finish; AUTH refused");
                sasl::Verdict::Invalid
            }
        }
    }

    /// One SASL round: the initial response if the client gave one, else the challenge and the
    /// client's next line. `Err` carries what the session does instead (reply already queued).
    async fn sasl_step<S>(
        &mut self,
        conn: &mut Conn<S>,
        initial: Option<Vec<u8>>,
        challenge: &str,
    ) -> Result<Vec<u8>, Flow>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let line = match initial {
            Some(line) => line,
            None => {
                conn.reply_raw(challenge);
                match conn.next_line(self.line_wait(), self.stop_token()).await {
                    Ok(Line::Complete(line)) => line,
                    Ok(Line::TooLong) => {
                        return Err(self.protocol_error(conn, reply::line_too_long()));
                    }
                    Err(e) => {
                        self.read_ended(conn, e).await;
                        return Err(Flow::Close);
                    }
                }
            }
        };
        match sasl::decode(&line) {
            sasl::Response::Data(bytes) => Ok(bytes),
            sasl::Response::Cancel => {
                conn.reply(&reply::auth_cancelled());
                Err(Flow::Continue)
            }
            sasl::Response::BadBase64 => Err(self.protocol_error(conn, reply::auth_bad_base64())),
        }
    }
}

/// Grows this session's share of the DATA memory budget to cover `len` bytes. False when the
/// budget is spent (the share already held is kept until the message is dropped).
fn reserve_memory(
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
    reserved: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    len: usize,
) -> bool {
    let held = reserved.as_ref().map_or(0, |p| p.num_permits());
    let needed = len.div_ceil(DATA_MEMORY_UNIT);
    if needed <= held {
        return true;
    }
    let Ok(more) = u32::try_from(needed - held) else {
        return false;
    };
    match budget.clone().try_acquire_many_owned(more) {
        Ok(permit) => {
            match reserved {
                Some(held) => held.merge(permit),
                None => *reserved = Some(permit),
            }
            true
        }
        Err(_) => false,
    }
}

/// Addresses compared as mail systems do in practice: case-insensitively, ignoring spaces around.
fn same_address(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Whether every address in the message's From header(s) is `mailbox`. Without a From address
/// the conversion falls back to MAIL FROM, so then MAIL FROM must be the mailbox.
fn from_header_is(message: &[u8], mail_from: &str, mailbox: &str) -> bool {
    let parsed = mail_parser::MessageParser::default().parse_headers(message);
    let addresses: Vec<&str> = parsed
        .iter()
        .flat_map(|m| m.header_values(mail_parser::HeaderName::From))
        .filter_map(|value| value.as_address())
        .flat_map(|address| address.iter())
        .filter_map(|addr| addr.address())
        .collect();
    if addresses.is_empty() {
        return same_address(mail_from, mailbox);
    }
    addresses.iter().all(|a| same_address(a, mailbox))
}

/// smtp-proto decodes invalid UTF-8 lossily; such an address (or one with control characters)
/// can never be delivered through Graph, so it is refused up front.
fn valid_address(address: &str) -> bool {
    !address.contains('\u{FFFD}') && !address.chars().any(char::is_control)
}

fn parse_error_reply(e: &ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => reply::unknown_command(),
        ParseError::SyntaxError { syntax } => reply::syntax(syntax),
        ParseError::InvalidSenderAddress => reply::bad_sender(),
        ParseError::InvalidRecipientAddress => reply::bad_recipient(),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, [5, 5, 4], format!("Invalid {param} parameter"))
        }
        ParseError::UnsupportedParameter { param } => reply::unsupported_parameter(param),
        ParseError::ResponseTooLong => reply::line_too_long(),
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, [5, 5, 2], "Syntax error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_map_to_enhanced_replies() {
        let cases: [(&[u8], &str); 6] = [
            (b"FOO\r\n", "500 5.5.1 Unknown command"),
            (
                b"MAIL FROM:a@b\r\n",
                "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]",
            ),
            (
                b"MAIL FROM:<a@b> FOO=bar\r\n",
                "555 5.5.4 Unsupported parameter FOO=BAR",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=x\r\n",
                "501 5.5.4 Invalid SIZE parameter",
            ),
            (b"EHLO\r\n", "501 5.5.4 Syntax: EHLO domain"),
            (
                b"MAIL FROM:<\"\"@b>\r\n",
                "501 5.1.7 Bad sender address syntax",
            ),
        ];
        for (line, want) in cases {
            let err = Request::parse(&mut line.iter()).expect_err("must not parse");
            assert_eq!(parse_error_reply(&err).to_string(), want);
        }
    }

    #[test]
    fn lossy_or_control_addresses_are_refused() {
        assert!(valid_address("a@b.example"));
        assert!(valid_address("jö@exämple.de"));
        assert!(!valid_address("a\u{FFFD}@b"));
        assert!(!valid_address("a\u{7}@b"));
    }
}
