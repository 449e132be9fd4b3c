//! The accept loop: one task per connection, the connection limit, and graceful shutdown (stop
//! accepting, let transactions in progress finish within the grace period, then 421 the rest).
//! Never binds sockets itself: listeners arrive bound, so tests can use port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::conn::Conn;
use super::reply;
use super::session::{self, Ctx, Stop};
use super::settings::SmtpSettings;
use super::sink::MessageSink;

/// How long sessions still running after the `421 4.3.2` at the end of the grace period get to
/// write it before they are aborted.
const AFTER_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (EMFILE and friends) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    ImplicitTls,
}

/// Runs the accept loop on an already-bound listener until `shutdown` is cancelled; then stops
/// accepting, lets sessions finish their current transaction for up to
/// `settings.shutdown_grace`, answers `421 4.3.2` to the rest, and returns.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<SmtpSettings>,
    sink: Arc<dyn MessageSink>,
    shutdown: CancellationToken,
) {
    accept_loop(listener, settings, sink, shutdown, Mode::Plain).await
}

/// As `serve`, for a port where TLS starts with the first byte (port-465 style). Returns at once,
/// logging an error, when `settings.tls` is not set.
pub async fn serve_implicit_tls(
    listener: TcpListener,
    settings: Arc<SmtpSettings>,
    sink: Arc<dyn MessageSink>,
    shutdown: CancellationToken,
) {
    if settings.tls.is_none() {
        error!("implicit TLS listener without a TLS certificate; not serving it");
        return;
    }
    accept_loop(listener, settings, sink, shutdown, Mode::ImplicitTls).await
}

/// Serves one already-accepted connection as the accept loop would (minus the connection limit),
/// with `peer` as the client address the policy checks see. `shutdown` closes it with
/// `421 4.3.2` when it is idle or, mid-transaction, when the transaction ends. The seam for
/// tests that need a client address other than loopback.
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    settings: &SmtpSettings,
    sink: &dyn MessageSink,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let stop = Stop {
        soft: shutdown.clone(),
        hard: CancellationToken::new(),
    };
    let ctx = Ctx {
        settings,
        sink,
        peer,
        stop: &stop,
    };
    session::run(stream, &ctx, false)
        .instrument(info_span!("smtp", %peer))
        .await
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<SmtpSettings>,
    sink: Arc<dyn MessageSink>,
    shutdown: CancellationToken,
    mode: Mode,
) {
    let local = listener.local_addr().ok();
    info!(listen = ?local, tls = (mode == Mode::ImplicitTls), "SMTP listening");
    let stop = Stop {
        soft: shutdown.clone(),
        hard: CancellationToken::new(),
    };
    let limiter = settings.limiter();
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let span = info_span!("smtp", %peer);
        match limiter.clone().try_acquire_owned() {
            Ok(permit) => {
                let settings = settings.clone();
                let sink = sink.clone();
                let stop = stop.clone();
                sessions.spawn(
                    async move {
                        debug!("connected");
                        let ctx = Ctx {
                            settings: &settings,
                            sink: sink.as_ref(),
                            peer,
                            stop: &stop,
                        };
                        session::run(stream, &ctx, mode == Mode::ImplicitTls).await;
                        debug!("disconnected");
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                let settings = settings.clone();
                sessions.spawn(
                    async move {
                        info!(
                            limit = settings.max_connections,
                            "too many connections; refused"
                        );
                        refuse_busy(stream, &settings, mode).await;
                    }
                    .instrument(span),
                );
            }
        }
    }
    // Refuse new connections from now on.
    drop(listener);
    info!(sessions = sessions.len(), "SMTP shutting down");
    let drained = tokio::time::timeout(settings.shutdown_grace, drain(&mut sessions)).await;
    if drained.is_err() {
        info!(
            sessions = sessions.len(),
            "grace period over; closing remaining sessions"
        );
        stop.hard.cancel();
        if tokio::time::timeout(AFTER_GRACE, drain(&mut sessions))
            .await
            .is_err()
        {
            warn!(sessions = sessions.len(), "aborting stuck sessions");
            sessions.abort_all();
            drain(&mut sessions).await;
        }
    }
    info!(listen = ?local, "SMTP stopped");
}

async fn drain(sessions: &mut JoinSet<()>) {
    while sessions.join_next().await.is_some() {}
}

async fn refuse_busy(stream: TcpStream, settings: &SmtpSettings, mode: Mode) {
    if mode == Mode::ImplicitTls {
        // A TLS client cannot read a plaintext 421; closing is the only answer.
        return;
    }
    let mut conn = Conn::new(stream, settings.idle_timeout.min(Duration::from_secs(10)));
    conn.reply(&reply::too_many_connections(&settings.hostname));
    let _ = conn.flush().await;
}
