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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::upkeep::{KEEP_SIGNED_IN, keep_signed_in};
use crate::auth::{TokenSource, TokenState, Tokens};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Flow};
use crate::convert::ConvertOptions;
use crate::deliver::backoff::Backoff;
use crate::deliver::{
    GraphTransport, Outbox, QueueHandle, QueueManager, QueueParts, RetryPolicy, Transport,
};
use crate::ingest::Ingest;
use crate::metrics::{Counters, GraphStats};
use crate::notify::{Notifier, watch_token_state};
use crate::smtp::{self, MessageSink, SmtpSettings};
use crate::spool::{LockError, Spool, SpoolError, SpoolLock, WriteHook, offload, private_dir};
use crate::status::http::{self as status_http, StatusContext};

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
    queue: QueueHandle,
    smtp: Arc<SmtpSettings>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    status_addr: Option<SocketAddr>,
    tasks: Tasks,
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
        self.queue.set_options(convert_options(config));
        self.smtp.reload_tls(config);
        info!(
            token_state = self.tokens.status().state.as_str(),
            "configuration reloaded"
        );
        self.queue.wake();
    }

    /// Wakes the queue manager now (tests, and the status page's actions).
    pub fn wake_delivery(&self) {
        self.queue.wake();
    }

    /// Stops accepting, lets in-flight work finish within the grace period, and returns.
    pub async fn shutdown(self) {
        // A little longer than the tasks' own grace, so they end on their own first.
        self.tasks
            .stop(SHUTDOWN_GRACE + Duration::from_secs(2))
            .await;
    }
}

/// Starts every part of `serve`: the shared parts first, then the listeners, then the
/// background tasks.
pub async fn start(config: Config, opts: StartOptions) -> Result<Running, AppError> {
    let config = Arc::new(config);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (lock, spool) = open_spool(&config, &opts).await?;
    let http = crate::outbound::client(&config)?;
    let tokens = Arc::new(Tokens::new(&config, http.clone(), opts.clock.clone()));
    let counters = Arc::new(Counters::default());
    let graph_stats = Arc::new(GraphStats::default());
    let settings =
        Arc::new(SmtpSettings::try_from_config(&config).map_err(|e| AppError::Tls(e.to_string()))?);
    let (manager, queue) = QueueManager::new(QueueParts {
        spool: spool.clone(),
        transport: transport(&config, opts.dry_run, &http, &tokens, &graph_stats),
        tokens: (!opts.dry_run).then(|| tokens.clone() as Arc<dyn TokenSource>),
        options: convert_options(&config),
        policy: retry_policy(&config),
        clock: opts.clock.clone(),
        counters: counters.clone(),
        // One budget for reception and conversion (`smtp.data_memory_bytes`).
        memory: settings.shared_memory(),
    });
    let waker = queue.waker();
    let mut tasks = Tasks::default();

    let sink: Arc<dyn MessageSink> = Arc::new(Ingest::new(
        spool.clone(),
        opts.clock.clone(),
        counters.clone(),
        queue.clone(),
    ));
    let smtp_addrs = tasks
        .listen(&config.smtp.listen, |listener, stop| {
            smtp::serve(listener, settings.clone(), sink.clone(), stop)
        })
        .await?;
    let implicit_tls_addrs = tasks
        .listen(&config.smtp.implicit_tls_listen, |listener, stop| {
            smtp::serve_implicit_tls(listener, settings.clone(), sink.clone(), stop)
        })
        .await?;
    let status = Arc::new(StatusContext {
        config: config.clone(),
        spool: spool.clone(),
        tokens: tokens.clone(),
        counters,
        graph_stats,
        device: crate::auth::device_login(&config, http.clone()),
        waker: waker.clone(),
        login: Default::default(),
    });
    let status_addr = tasks
        .listen(config.status.listen.as_slice(), |listener, stop| {
            serve_status(listener, status.clone(), stop)
        })
        .await?
        .first()
        .copied();

    tasks.spawn(|stop| manager.run(stop, SHUTDOWN_GRACE));
    let notifier = Notifier::for_config(&config, http.clone());
    tasks.spawn(|stop| {
        watch_token_state(tokens.clone(), notifier, spool, waker.clone(), config, stop)
    });
    if !opts.dry_run {
        tasks.spawn(|stop| keep_signed_in(tokens.clone(), KEEP_SIGNED_IN, stop));
    }
    log_started(&tokens, &smtp_addrs, status_addr, opts.dry_run);
    Ok(Running {
        smtp_addrs,
        implicit_tls_addrs,
        tokens,
        queue,
        smtp: settings,
        http,
        clock: opts.clock,
        status_addr,
        tasks,
        _lock: lock,
    })
}

/// Every task `serve` runs, and the token that tells them to stop.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it returns; it is handed the shutdown token.
    fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set.spawn(task(self.shutdown.clone()));
    }

    /// Binds every address in `addrs` and serves each with `serve`; returns the addresses
    /// actually bound (tests bind port 0 and read them back). The first address that cannot be
    /// bound fails the start.
    async fn listen<F, Fut>(
        &mut self,
        addrs: &[SocketAddr],
        mut serve: F,
    ) -> Result<Vec<SocketAddr>, AppError>
    where
        F: FnMut(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut bound = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let (listener, local) = bind(*addr).await?;
            bound.push(local);
            self.spawn(|stop| serve(listener, stop));
        }
        Ok(bound)
    }

    /// Cancels every task and waits for them up to `deadline`; what is left is abandoned.
    async fn stop(mut self, deadline: Duration) {
        self.shutdown.cancel();
        if tokio::time::timeout(deadline, async {
            while self.set.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("shutdown grace period over; abandoning what is left (it stays in the spool)");
            self.set.abort_all();
        }
    }
}

/// Graph, or for a dry run the outbox in `<queue.dir>/outbox/`.
fn transport(
    config: &Config,
    dry_run: bool,
    http: &reqwest::Client,
    tokens: &Arc<Tokens>,
    graph_stats: &Arc<GraphStats>,
) -> Arc<dyn Transport> {
    if dry_run {
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
    }
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            min: config.queue.retry_min,
            max: config.queue.retry_max,
        },
        max_age: config.queue.max_age,
    }
}

async fn serve_status(listener: TcpListener, ctx: Arc<StatusContext>, stop: CancellationToken) {
    if let Err(e) = status_http::serve(listener, ctx, stop).await {
        error!(error = %e, "status listener failed");
    }
}

/// The start-up line, and an error when mail will be held for want of credentials.
fn log_started(
    tokens: &Tokens,
    smtp_addrs: &[SocketAddr],
    status_addr: Option<SocketAddr>,
    dry_run: bool,
) {
    let status = tokens.status();
    info!(
        smtp = ?smtp_addrs,
        status = ?status_addr,
        dry_run,
        token_state = status.state.as_str(),
        "graph-relay started"
    );
    if !dry_run && status.state != TokenState::Valid {
        error!(reason = %status.reason, "no usable Microsoft credentials: mail is accepted and held until they are configured");
    }
}

/// Takes the lock of `queue.dir`, then opens and recovers the spool (the dry run's own, in
/// `<queue.dir>/dry-run/`, for a dry run). The test write hook applies from here on, not to the
/// recovery scan.
async fn open_spool(config: &Config, opts: &StartOptions) -> Result<(SpoolLock, Spool), AppError> {
    let dry_run = opts.dry_run;
    let queue_dir = config.queue.dir.clone();
    let dir = if dry_run {
        queue_dir.join("dry-run")
    } else {
        queue_dir.clone()
    };
    let path = dir.display().to_string();
    let opened = offload(move || {
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
    .map_err(|source| AppError::Spool {
        path: path.clone(),
        source,
    })?;
    let (lock, opened) = opened?;
    let (report, spool) = opened.map_err(|source| AppError::Spool { path, source })?;
    if report != Default::default() {
        info!(?report, "spool recovered at start-up");
    }
    let spool = match opts.spool_write_hook.clone() {
        Some(hook) => spool.with_write_hook(hook),
        None => spool,
    };
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
