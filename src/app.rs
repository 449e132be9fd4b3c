//! Wires the parts together for `serve`: opens and recovers the spool, picks the token source
//! and transport, binds the listeners (tests bind port 0 and read the addresses back), and owns
//! shutdown. Holds no business logic of its own.
//!
//! `serve` first takes the spool lock ([`SpoolLock`]): a second serve on the same `queue.dir`
//! exits before it has scanned, cleaned or bound anything.
//!
//! Dry run has a spool of its own, `<queue.dir>/dry-run/`: it "delivers" (to
//! `<queue.dir>/outbox/`) only mail it received itself, and never reads, recovers or removes
//! anything in the real `queue/` and `failed/`, which stay byte for byte as they were for the
//! next real serve. The alternatives were worse: delivering the real queue to the outbox
//! consumes mail that was promised to Graph; refusing to start on a non-empty queue still lets
//! `sendmail` drop real mail into `queue/` during the run, and leaves what a killed dry run had
//! accepted in the real queue, to be sent for real later. A dry run still takes the lock of
//! `queue.dir`, so it never runs beside a real serve of the same spool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{TokenSource, Tokens};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Flow};
use crate::convert::ConvertOptions;
use crate::deliver::backoff::Backoff;
use crate::deliver::{GraphTransport, Outbox, QueueManager, RetryPolicy, Transport};
use crate::ingest::Ingest;
use crate::metrics::{Counters, GraphStats};
use crate::notify::{Notice, Notifier};
use crate::smtp::{self, MessageSink, SmtpSettings};
use crate::spool::{LockError, Spool, SpoolError, SpoolLock, WriteHook, private_dir};
use crate::status::http::{self as status_http, StatusContext};

/// How often the relay renews its sign-in even when no mail flows.
const KEEP_SIGNED_IN: Duration = Duration::from_secs(12 * 3600);

/// How long shutdown waits for SMTP sessions and in-flight deliveries.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct StartOptions {
    /// Write requests to `<queue.dir>/outbox/` instead of calling Graph.
    pub dry_run: bool,
    pub clock: Arc<dyn Clock>,
    /// Test seam: runs before every spool file write (e.g. to fail with ENOSPC).
    pub spool_write_hook: Option<WriteHook>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            dry_run: false,
            clock: Arc::new(SystemClock),
            spool_write_hook: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot open the spool at {path}: {source}")]
    Spool { path: String, source: SpoolError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] crate::outbound::OutboundError),
    #[error("cannot set up SMTP TLS: {0}")]
    Tls(String),
}

/// A running relay.
pub struct Running {
    smtp_addrs: Vec<SocketAddr>,
    implicit_tls_addrs: Vec<SocketAddr>,
    tokens: Arc<Tokens>,
    manager: Arc<QueueManager>,
    smtp: Arc<SmtpSettings>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    status_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    waker: Arc<Notify>,
    /// Held until the relay is dropped (after shutdown), or the process dies.
    _lock: SpoolLock,
}

impl Running {
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    pub fn implicit_tls_addrs(&self) -> &[SocketAddr] {
        &self.implicit_tls_addrs
    }

    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// SIGHUP: takes the Microsoft credentials and the sender policy from a reloaded
    /// configuration, reloads the SMTP TLS certificate, and tries held mail again. (Listeners
    /// and SMTP limits need a restart.)
    pub fn reload(&self, config: &Config) {
        self.tokens
            .replace(config, self.http.clone(), self.clock.clone());
        self.manager.set_options(convert_options(config));
        self.smtp.reload_tls(config);
        info!(
            token_state = self.tokens.status().state.as_str(),
            "configuration reloaded"
        );
        self.waker.notify_one();
    }

    /// Wakes the queue manager now (tests, and the status page's actions).
    pub fn wake_delivery(&self) {
        self.waker.notify_one();
    }

    /// Stops accepting, lets in-flight work finish within the grace period, and returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let deadline = SHUTDOWN_GRACE + Duration::from_secs(2);
        if tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("shutdown grace period over; abandoning what is left (it stays in the spool)");
            self.tasks.abort_all();
        }
    }
}

/// Starts every part of `serve`.
pub async fn start(config: Config, opts: StartOptions) -> Result<Running, AppError> {
    let config = Arc::new(config);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (lock, mut spool) = open_spool(&config, opts.dry_run).await?;
    if let Some(hook) = opts.spool_write_hook.clone() {
        spool = spool.with_write_hook(hook);
    }
    let http = crate::outbound::client(&config)?;
    let tokens = Arc::new(Tokens::new(&config, http.clone(), opts.clock.clone()));
    let counters = Arc::new(Counters::default());
    let graph_stats = Arc::new(GraphStats::default());
    let transport: Arc<dyn Transport> = if opts.dry_run {
        Arc::new(Outbox::new(
            outbox_dir(&config.queue.dir),
            &config.microsoft.graph_url,
        ))
    } else {
        Arc::new(GraphTransport::new(
            http.clone(),
            &config.microsoft.graph_url,
            tokens.clone(),
            graph_stats.clone(),
        ))
    };
    let manager = QueueManager::new(
        spool.clone(),
        transport,
        tokens.clone(),
        convert_options(&config),
        RetryPolicy {
            backoff: Backoff {
                min: config.queue.retry_min,
                max: config.queue.retry_max,
            },
            max_age: config.queue.max_age,
        },
        opts.clock.clone(),
        counters.clone(),
        !opts.dry_run,
    );
    let waker = manager.waker();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let sink: Arc<dyn MessageSink> = Arc::new(Ingest::new(
        spool.clone(),
        opts.clock.clone(),
        counters.clone(),
        manager.clone(),
    ));
    let settings =
        Arc::new(SmtpSettings::try_from_config(&config).map_err(|e| AppError::Tls(e.to_string()))?);
    let mut smtp_addrs = Vec::new();
    for addr in &config.smtp.listen {
        let (listener, bound) = bind(*addr).await?;
        smtp_addrs.push(bound);
        tasks.spawn(smtp::serve(
            listener,
            settings.clone(),
            sink.clone(),
            shutdown.clone(),
        ));
    }
    let mut implicit_tls_addrs = Vec::new();
    for addr in &config.smtp.implicit_tls_listen {
        let (listener, bound) = bind(*addr).await?;
        implicit_tls_addrs.push(bound);
        tasks.spawn(smtp::serve_implicit_tls(
            listener,
            settings.clone(),
            sink.clone(),
            shutdown.clone(),
        ));
    }

    let status_addr = match config.status.listen {
        Some(addr) => {
            let (listener, bound) = bind(addr).await?;
            let ctx = Arc::new(StatusContext {
                config: config.clone(),
                spool: spool.clone(),
                tokens: tokens.clone(),
                counters: counters.clone(),
                graph_stats,
                device: crate::auth::device_login(&config, http.clone()),
                waker: waker.clone(),
                login: Default::default(),
            });
            let stop = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = status_http::serve(listener, ctx, stop).await {
                    error!(error = %e, "status listener failed");
                }
            });
            Some(bound)
        }
        None => None,
    };

    tasks.spawn(manager.clone().run(shutdown.clone(), SHUTDOWN_GRACE));
    let notifier = Notifier::new(
        http.clone(),
        config.notify.webhook_url.clone(),
        config.notify.command.clone(),
    );
    tasks.spawn(watch_token_state(
        tokens.clone(),
        notifier,
        spool.clone(),
        waker.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    if !opts.dry_run {
        tasks.spawn(keep_signed_in(
            tokens.clone(),
            KEEP_SIGNED_IN,
            shutdown.clone(),
        ));
    }
    let status = tokens.status();
    info!(
        smtp = ?smtp_addrs,
        status = ?status_addr,
        dry_run = opts.dry_run,
        token_state = status.state.as_str(),
        "graph-relay started"
    );
    if !opts.dry_run && status.state != crate::auth::TokenState::Valid {
        error!(reason = %status.reason, "no usable Microsoft credentials: mail is accepted and held until they are configured");
    }
    Ok(Running {
        smtp_addrs,
        implicit_tls_addrs,
        tokens: tokens.clone(),
        manager: manager.clone(),
        smtp: settings,
        http,
        clock: opts.clock.clone(),
        status_addr,
        shutdown,
        tasks,
        waker,
        _lock: lock,
    })
}

/// Asks for a token at start-up, so a wrong or expired credential shows on /status and raises
/// its notice before the first message, and again every `every`: a delegated sign-in is then
/// refreshed (rotating its refresh token) even on a relay that sends nothing for months, so
/// Entra's 90-day inactivity limit never ends it, and an expiring app secret is noticed early.
async fn keep_signed_in(
    tokens: Arc<dyn TokenSource>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let _ = tokens.token().await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Sends a notice on every token state change that deserves one, and wakes delivery so held
/// mail drains as soon as the state is valid again.
async fn watch_token_state(
    tokens: Arc<Tokens>,
    notifier: Notifier,
    spool: Spool,
    waker: Arc<Notify>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let host = config.hostname();
    let mut changes = tokens.subscribe();
    let mut before = changes.borrow_and_update().state;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let after = changes.borrow_and_update().clone();
        waker.notify_one();
        let spool = spool.clone();
        let pending =
            tokio::task::spawn_blocking(move || spool.counts(SystemTime::now()).map(|c| c.pending))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
        // The advice follows the reason: an expired secret and a revoked consent differ.
        let action = crate::auth::advice::for_status(&config, &after).unwrap_or_default();
        if let Some(notice) =
            Notice::for_change(before, &after, &action, pending, &host, SystemTime::now())
        {
            // Notices run beside delivery; a slow webhook never holds mail up.
            let notifier = notifier.clone();
            tokio::spawn(async move { notifier.send(&notice).await });
        }
        before = after.state;
    }
}

/// Takes the lock of `queue.dir`, then opens and recovers the spool (the dry run's own, in
/// `<queue.dir>/dry-run/`, for a dry run).
async fn open_spool(config: &Config, dry_run: bool) -> Result<(SpoolLock, Spool), AppError> {
    let queue_dir = config.queue.dir.clone();
    let dir = if dry_run {
        queue_dir.join("dry-run")
    } else {
        queue_dir.clone()
    };
    let path = dir.display().to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let lock = SpoolLock::acquire(&queue_dir)?;
        let open = || {
            if dry_run {
                // An older version made it 0755.
                let outbox = outbox_dir(&queue_dir);
                private_dir(&outbox).map_err(|e| SpoolError::io(&outbox, e))?;
            }
            let spool = Spool::open(dir)?;
            Ok((spool.scan()?, spool))
        };
        Ok::<_, LockError>((lock, open()))
    })
    .await
    .map_err(|e| AppError::Spool {
        path: path.clone(),
        source: SpoolError::Io {
            path: path.clone().into(),
            source: std::io::Error::other(e),
        },
    })?;
    let (lock, opened) = opened?;
    let (report, spool) = opened.map_err(|source| AppError::Spool { path, source })?;
    if report != Default::default() {
        info!(?report, "spool recovered at start-up");
    }
    Ok((lock, spool))
}

fn outbox_dir(queue_dir: &std::path::Path) -> std::path::PathBuf {
    queue_dir.join("outbox")
}

/// Binds `addr` and reports the address actually bound (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok((listener, bound))
}

pub fn convert_options(config: &Config) -> ConvertOptions {
    ConvertOptions {
        sender: config.microsoft.sender.clone(),
        allowed_senders: config.microsoft.allowed_senders.clone(),
        save_to_sent_items: config.microsoft.save_to_sent_items,
        delegated: config.microsoft.flow == Flow::Delegated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AccessToken, StatusCell, TokenError, TokenState, TokenStatus};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        asked: AtomicUsize,
        status: StatusCell,
    }

    #[async_trait]
    impl TokenSource for Counting {
        async fn token(&self) -> Result<AccessToken, TokenError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Err(TokenError::transient("test", None))
        }
        fn invalidate(&self, _: &AccessToken) {}
        fn status_cell(&self) -> &StatusCell {
            &self.status
        }
        fn rejected(&self, _: &str) {}
    }

    #[tokio::test(start_paused = true)]
    async fn the_sign_in_is_renewed_at_start_and_every_twelve_hours() {
        let source = Arc::new(Counting {
            asked: AtomicUsize::new(0),
            status: StatusCell::new(TokenStatus {
                state: TokenState::Valid,
                reason: String::new(),
                expires_at: None,
            }),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keep_signed_in(
            source.clone(),
            KEEP_SIGNED_IN,
            shutdown.clone(),
        ));
        let asked = || source.asked.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(asked(), 1, "asked at start-up");
        tokio::time::sleep(KEEP_SIGNED_IN - Duration::from_secs(2)).await;
        assert_eq!(asked(), 1, "not before twelve hours");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(asked(), 2);
        tokio::time::sleep(KEEP_SIGNED_IN * 3).await;
        assert_eq!(asked(), 5);
        shutdown.cancel();
        task.await.unwrap();
    }
}
