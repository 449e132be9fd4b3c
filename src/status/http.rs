//! The status listener: `GET /status` (JSON, design section 4), `GET /metrics` (Prometheus
//! text), `GET /` (a page for people) and its actions — Re-authorize, retry, delete — which are
//! POSTs accepted from loopback only and never from another site's page. Every request must name
//! this listener in `Host` (DNS rebinding), and every action is logged with the client address.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::device_code::{DeviceCode, DeviceLogin};
use crate::auth::{TokenSource, TokenState, advice};
use crate::config::{Config, is_host_name};
use crate::envelope::QueueId;
use crate::metrics::{Counters, GraphStats, LATENCY_BUCKETS};
use crate::spool::{QueueCounts, Record, Spool, SpoolError, State as MailState};

/// What the handlers read and act on.
pub struct StatusContext {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub tokens: Arc<dyn TokenSource>,
    pub counters: Arc<Counters>,
    pub graph_stats: Arc<GraphStats>,
    /// The device code login (delegated flow), when configured.
    pub device: Option<DeviceLogin>,
    /// Wakes delivery after a retry.
    pub waker: Arc<Notify>,
    pub login: Mutex<LoginView>,
}

/// The Re-authorize button's progress, shown on the page.
#[derive(Debug, Clone, Default)]
pub enum LoginView {
    #[default]
    Idle,
    /// A code is out; it stops working at the instant given.
    Waiting(DeviceCode, std::time::Instant),
    Failed(String),
    Done,
}

type Ctx = Arc<StatusContext>;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/reauthorize", post(reauthorize))
        .route("/queue/{id}/retry", post(retry))
        .route("/queue/{id}/delete", post(delete))
        .layer(middleware::from_fn_with_state(ctx.clone(), host_guard))
        .with_state(ctx)
}

/// Both ends of a status connection: the client, and the address it reached (the listener's
/// own IP, which matters when it is bound to a wildcard address).
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Conn {
            peer: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Ctx,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(ctx).into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// The host part of a `Host` value (`name`, `name:port`, `IPv4:port`, `[IPv6]:port`),
/// lower-cased and without a trailing dot; `None` when it is not of that shape.
fn host_name(host: &str) -> Option<String> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (inner, after) = rest.split_once(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            let port = if after.is_empty() {
                ""
            } else {
                after.strip_prefix(':')?
            };
            (inner, port)
        }
        None => host.split_once(':').unwrap_or((host, "")),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (port.chars().all(|c| c.is_ascii_digit()) && is_host_name(name))
        .then(|| name.to_ascii_lowercase())
}

/// True when `host` names this listener: its own IP address (`local`), `localhost` or
/// `NAME.localhost` (browsers resolve those to loopback themselves, so no DNS answer can point
/// them elsewhere), or one of `status.allowed_hosts`. Any other name reached us through a DNS
/// answer we did not give: a page on that name must not read or act here (DNS rebinding).
pub fn host_allowed(host: &str, local: Option<IpAddr>, allowed: &[String]) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let ip = name.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    let same_ip = |other: IpAddr| ip == Some(other.to_canonical());
    if local.is_some_and(same_ip) {
        return true;
    }
    allowed.iter().any(|entry| {
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        bare.parse().is_ok_and(same_ip) || entry.trim_end_matches('.').eq_ignore_ascii_case(&name)
    })
}

/// Refuses, with 421, a request whose `Host` (or absolute-form target) does not name this
/// listener, before any handler reads the spool.
async fn host_guard(
    State(ctx): State<Ctx>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let target = request.uri().authority().map(|a| a.as_str().to_string());
    let named: Vec<&String> = header.iter().chain(target.iter()).collect();
    let allowed = &ctx.config.status.allowed_hosts;
    let local = conn.local.map(|a| a.ip());
    if !named.is_empty() && named.iter().all(|h| host_allowed(h, local, allowed)) {
        return next.run(request).await;
    }
    warn!(
        host = ?header.as_deref().unwrap_or("(none)"),
        client = %conn.peer,
        method = %request.method(),
        path = %request.uri().path(),
        "status listener: refused a request whose Host does not name this listener \
         (add the name to status.allowed_hosts if it is yours)"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this listener does not answer to that Host name (see status.allowed_hosts)\n",
    )
        .into_response()
}

/// True when `url` (an `Origin` or `Referer`) is a page of `host` itself.
fn same_site(url: &str, host: &str) -> bool {
    url.parse::<Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri
                .authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(host))
    })
}

/// Actions change the queue or start a sign-in: only a local client may, and only from this
/// page. A browser names the page a POST comes from in `Origin` (or, failing that, `Referer`);
/// it must be this very host. Without either, the client is not a browser on another site.
pub fn action_allowed(peer: IpAddr, headers: &HeaderMap) -> bool {
    if !peer.to_canonical().is_loopback() {
        return false;
    }
    let value = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let host = value(header::HOST);
    match (
        value(header::ORIGIN).or_else(|| value(header::REFERER)),
        host,
    ) {
        (None, _) => true,
        (Some(page), Some(host)) => same_site(page, host),
        (Some(_), None) => false,
    }
}

fn forbidden(what: &str, peer: SocketAddr, headers: &HeaderMap) -> Response {
    warn!(
        action = what,
        client = %peer,
        origin = ?headers.get(header::ORIGIN),
        referer = ?headers.get(header::REFERER),
        "status page: action refused (only from this host's own status page)"
    );
    (
        StatusCode::FORBIDDEN,
        "actions are accepted from this host's own status page only\n",
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(SpoolError::NotFound(id))) => {
            Err((StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response())
        }
        Ok(Err(e)) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("spool error: {e}\n"),
        )
            .into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
}

async fn counts(ctx: &Ctx) -> Result<QueueCounts, Response> {
    let spool = ctx.spool.clone();
    blocking(move || spool.counts(SystemTime::now())).await
}

/// The `/status` document.
pub fn status_document(ctx: &StatusContext, counts: &QueueCounts) -> serde_json::Value {
    let token = ctx.tokens.status();
    json!({
        "token": {
            "state": token.state.as_str(),
            "reason": token.reason,
            "expires_at": token.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        },
        "queue": {
            "pending": counts.pending,
            "held": counts.held,
            "failed": counts.failed,
            "oldest_age_s": counts.oldest_age.map_or(0, |d| d.as_secs()),
        },
        "version": env!("CARGO_PKG_VERSION"),
    })
}

async fn status_json(State(ctx): State<Ctx>) -> Response {
    match counts(&ctx).await {
        Ok(counts) => Json(status_document(&ctx, &counts)).into_response(),
        Err(response) => response,
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let counts = match counts(&ctx).await {
        Ok(counts) => counts,
        Err(response) => return response,
    };
    let (received, delivered, failed) = ctx.counters.snapshot();
    let state = ctx.tokens.status().state;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "graph_relay_messages_received_total",
        "counter",
        "Messages accepted over SMTP (250 sent).",
        &one(received),
    );
    metric(
        "graph_relay_messages_delivered_total",
        "counter",
        "Messages Graph accepted.",
        &one(delivered),
    );
    metric(
        "graph_relay_messages_failed_total",
        "counter",
        "Messages moved to failed/.",
        &one(failed),
    );
    metric(
        "graph_relay_queue_pending",
        "gauge",
        "Messages still to deliver, held ones included.",
        &one(counts.pending as u64),
    );
    metric(
        "graph_relay_queue_held",
        "gauge",
        "Messages held for re-authorization.",
        &one(counts.held as u64),
    );
    metric(
        "graph_relay_queue_failed",
        "gauge",
        "Messages in failed/.",
        &one(counts.failed as u64),
    );
    let states: Vec<_> = [
        TokenState::Valid,
        TokenState::ReauthRequired,
        TokenState::Missing,
    ]
    .iter()
    .map(|s| {
        (
            format!("{{state=\"{}\"}}", s.as_str()),
            u64::from(*s == state).to_string(),
        )
    })
    .collect();
    metric(
        "graph_relay_token_state",
        "gauge",
        "1 for the current token state.",
        &states,
    );
    let uploads = ctx.graph_stats.uploads();
    metric(
        "graph_relay_upload_bytes_total",
        "counter",
        "Attachment bytes upload sessions took (big mail).",
        &one(uploads.bytes),
    );
    metric(
        "graph_relay_upload_retries_total",
        "counter",
        "Upload chunks sent again, and upload sessions started again.",
        &[
            ("{kind=\"chunk\"}".into(), uploads.chunk_retries.to_string()),
            (
                "{kind=\"session\"}".into(),
                uploads.session_renewals.to_string(),
            ),
        ],
    );
    let (buckets, count, sum) = ctx.graph_stats.snapshot();
    let mut lines: Vec<(String, String)> = LATENCY_BUCKETS
        .iter()
        .zip(buckets)
        .map(|(bound, n)| (format!("_bucket{{le=\"{bound}\"}}"), n.to_string()))
        .collect();
    lines.push(("_bucket{le=\"+Inf\"}".into(), count.to_string()));
    lines.push(("_sum".into(), format!("{sum:.6}")));
    lines.push(("_count".into(), count.to_string()));
    metric(
        "graph_relay_graph_request_seconds",
        "histogram",
        "Graph request latency.",
        &lines,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The Re-authorize button: starts the device code flow (delegated), or asks the token
/// endpoint again now (client credentials).
async fn reauthorize(
    State(ctx): State<Ctx>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
) -> Response {
    let peer = conn.peer;
    if !action_allowed(peer.ip(), &headers) {
        return forbidden("reauthorize", peer, &headers);
    }
    let Some(device) = ctx.device.clone() else {
        let tokens = ctx.tokens.clone();
        let outcome = tokens.token().await;
        info!(
            client = %peer,
            ok = outcome.is_ok(),
            "status page: re-authorize pressed: asked the token endpoint again"
        );
        ctx.waker.notify_one();
        return Redirect::to("/").into_response();
    };
    if let LoginView::Waiting(_, until) = &*ctx.login.lock().expect("login lock")
        && std::time::Instant::now() < *until
    {
        // A code is already out: pressing again must not start a second login.
        info!(client = %peer, "status page: re-authorize pressed: a device code is already out");
        return Redirect::to("/").into_response();
    }
    match device.start().await {
        Ok(code) => {
            info!(client = %peer, verification_uri = %code.verification_uri, "status page: re-authorize pressed: device code login started");
            let until = std::time::Instant::now() + std::time::Duration::from_secs(code.expires_in);
            *ctx.login.lock().expect("login lock") = LoginView::Waiting(code.clone(), until);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let outcome = device.poll(&code, tokio::time::sleep).await;
                let view = match outcome {
                    Ok(response) => {
                        match crate::auth::store_login(&ctx.config, response, SystemTime::now()) {
                            Ok(()) => {
                                // The token source reads the new cache; the state turns valid and
                                // the held mail drains.
                                let _ = ctx.tokens.token().await;
                                ctx.waker.notify_one();
                                LoginView::Done
                            }
                            Err(e) => {
                                LoginView::Failed(format!("cannot write the token cache: {e}"))
                            }
                        }
                    }
                    Err(e) => LoginView::Failed(e.to_string()),
                };
                if let LoginView::Failed(why) = &view {
                    warn!(reason = %why, "device code login failed");
                }
                *ctx.login.lock().expect("login lock") = view;
            });
        }
        Err(e) => {
            warn!(client = %peer, error = %e, "status page: re-authorize pressed: device code login did not start");
            *ctx.login.lock().expect("login lock") = LoginView::Failed(e.to_string());
        }
    }
    Redirect::to("/").into_response()
}

async fn retry(
    State(ctx): State<Ctx>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    queue_action(ctx, conn.peer, headers, id, "retry", |spool, id| {
        spool.retry(&id, SystemTime::now()).map(drop)
    })
    .await
}

async fn delete(
    State(ctx): State<Ctx>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    queue_action(ctx, conn.peer, headers, id, "delete", |spool, id| {
        spool.delete(&id).map(drop)
    })
    .await
}

/// Runs a queue button's action; each one pressed is logged, with what became of it, so the
/// log says who changed the queue from the page.
async fn queue_action(
    ctx: Ctx,
    peer: SocketAddr,
    headers: HeaderMap,
    id: String,
    what: &'static str,
    action: fn(&Spool, QueueId) -> Result<(), SpoolError>,
) -> Response {
    if !action_allowed(peer.ip(), &headers) {
        return forbidden(what, peer, &headers);
    }
    let Some(queue_id) = QueueId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "not a queue id\n").into_response();
    };
    let spool = ctx.spool.clone();
    match blocking(move || action(&spool, queue_id)).await {
        Ok(()) => {
            info!(action = what, id = %id, client = %peer, "status page: {what} done");
            ctx.waker.notify_one();
            Redirect::to("/").into_response()
        }
        Err(response) => {
            warn!(action = what, id = %id, client = %peer, status = %response.status(), "status page: {what} failed");
            response
        }
    }
}

/// The page lists senders and recipients, so it is shown to local clients only; `/status` and
/// `/metrics` carry counts alone and may be scraped from elsewhere.
async fn page(State(ctx): State<Ctx>, ConnectInfo(conn): ConnectInfo<Conn>) -> Response {
    if !conn.peer.ip().to_canonical().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the status page is shown on this host only; /status and /metrics are open\n",
        )
            .into_response();
    }
    let spool = ctx.spool.clone();
    let (counts, records) = match blocking(move || {
        spool
            .list_all()
            .map(|r| (QueueCounts::of(&r, SystemTime::now()), r))
    })
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let login = ctx.login.lock().expect("login lock").clone();
    Html(render_page(&ctx, &counts, &records, &login)).into_response()
}

fn render_page(
    ctx: &StatusContext,
    counts: &QueueCounts,
    records: &[Record],
    login: &LoginView,
) -> String {
    let token = ctx.tokens.status();
    let (headline, class) = match token.state {
        TokenState::Valid => ("Microsoft sign-in works. Mail is being delivered.", "ok"),
        TokenState::ReauthRequired => (
            "Microsoft sign-in needs attention. Mail is accepted and held, not lost.",
            "bad",
        ),
        TokenState::Missing => (
            "No Microsoft credentials are configured. Mail is accepted and held.",
            "bad",
        ),
    };
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>graph-relay</title><style>\
         body{font-family:sans-serif;max-width:70em;margin:2em auto}.ok{color:#070}.bad{color:#a00}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;font-size:90%}\
         #login{background:#ffd;padding:1em}</style></head><body><h1>graph-relay</h1>",
    );
    let _ = write!(
        html,
        "<p id=\"state\" class=\"{class}\" data-state=\"{}\"><strong>{}</strong></p>",
        token.state.as_str(),
        escape(headline)
    );
    if token.state != TokenState::Valid {
        let _ = write!(
            html,
            "<p id=\"reason\">Reason: {}</p><p id=\"action\">What to do: {}</p>",
            escape(&token.reason),
            escape(&advice::for_status(&ctx.config, &token).unwrap_or_default())
        );
    } else if let Some(expires) = token.expires_at {
        let _ = write!(
            html,
            "<p>Token valid until {}.</p>",
            humantime::format_rfc3339_seconds(expires)
        );
    }
    let _ = write!(
        html,
        "<form method=\"post\" action=\"/reauthorize\"><button id=\"reauthorize\" type=\"submit\">Re-authorize</button></form>"
    );
    // A finished login's message only makes sense while its outcome still holds.
    let login = match login {
        LoginView::Done if token.state != TokenState::Valid => &LoginView::Idle,
        LoginView::Failed(_) if token.state == TokenState::Valid => &LoginView::Idle,
        LoginView::Waiting(_, until) if std::time::Instant::now() >= *until => &LoginView::Idle,
        other => other,
    };
    match login {
        LoginView::Idle => {}
        LoginView::Waiting(code, _) => {
            let uri = escape(&code.verification_uri);
            // Only an https link is made clickable; anything else is shown as text.
            let link = if code.verification_uri.starts_with("https://") {
                format!(
                    "<a id=\"verification-uri\" href=\"{uri}\" target=\"_blank\" rel=\"noopener\">{uri}</a>"
                )
            } else {
                format!("<code id=\"verification-uri\">{uri}</code>")
            };
            let _ = write!(
                html,
                "<div id=\"login\" role=\"status\"><p>Open {link} and enter the code <strong id=\"user-code\">{}</strong>. \
                 This page refreshes itself until you have signed in.</p></div>",
                escape(&code.user_code)
            );
        }
        LoginView::Failed(why) => {
            let _ = write!(
                html,
                "<div id=\"login\" role=\"alert\"><p class=\"bad\">Sign-in failed: {}</p></div>",
                escape(why)
            );
        }
        LoginView::Done => {
            html.push_str("<div id=\"login\" role=\"status\"><p class=\"ok\">Signed in. Held mail is being delivered.</p></div>");
        }
    }
    if matches!(login, LoginView::Waiting(..)) {
        html = html.replacen(
            "<title>",
            "<meta http-equiv=\"refresh\" content=\"5\"><title>",
            1,
        );
    }
    let _ = write!(
        html,
        "<h2>Queue</h2><p id=\"counts\">{} pending ({} held for re-authorization), {} failed</p>",
        counts.pending, counts.held, counts.failed
    );
    if !records.is_empty() {
        html.push_str(
            "<table><caption>Messages in the spool</caption><thead><tr><th>id</th><th>state</th><th>attempts</th>\
             <th>from</th><th>to</th><th>last error</th><th>actions</th></tr></thead><tbody>",
        );
        for record in records.iter().take(500) {
            let _ = write!(
                html,
                "<tr><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>\
                 <form method=\"post\" action=\"/queue/{id}/retry\" style=\"display:inline\">\
                 <button aria-label=\"retry message {id}\">retry</button></form> \
                 <form method=\"post\" action=\"/queue/{id}/delete\" style=\"display:inline\" \
                 onsubmit=\"return confirm('Delete message {id} for good?')\">\
                 <button aria-label=\"delete message {id}\">delete</button></form></td></tr>",
                record.state.as_str(),
                record.attempts,
                escape(&record.envelope.mail_from),
                escape(&record.envelope.rcpt_to.join(", ")),
                escape(
                    &record
                        .last_error
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
                id = record.id,
            );
        }
        html.push_str("</tbody></table>");
        if records.len() > 500 {
            let _ = write!(
                html,
                "<p>… and {} more (see <code>graph-relay queue list</code>).</p>",
                records.len() - 500
            );
        }
    }
    let held = records
        .iter()
        .filter(|r| r.state == MailState::Held)
        .count();
    let _ = write!(html, "<!-- held={held} --></body></html>");
    html
}

/// HTML-escapes text from mail and from error messages.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn actions_only_from_loopback_and_this_page() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(action_allowed(local, &headers(&[])));
        assert!(action_allowed("::1".parse().unwrap(), &headers(&[])));
        assert!(!action_allowed(remote, &headers(&[])));
        assert!(action_allowed(
            local,
            &headers(&[
                ("host", "127.0.0.1:8025"),
                ("origin", "http://127.0.0.1:8025")
            ])
        ));
        assert!(!action_allowed(
            local,
            &headers(&[
                ("host", "127.0.0.1:8025"),
                ("origin", "https://evil.example")
            ])
        ));
        assert!(!action_allowed(
            local,
            &headers(&[("origin", "http://127.0.0.1:8025")])
        ));
    }

    #[test]
    fn origin_or_referer_must_be_this_host() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let host = ("host", "localhost:8025");
        for (page, ok) in [
            ("http://localhost:8025", true),
            ("http://LOCALHOST:8025", true),
            ("https://localhost:8025", true),
            ("http://localhost:8026", false),
            ("http://evil.example:8025", false),
            ("null", false),
            ("file:///tmp/x.html", false),
        ] {
            assert_eq!(
                action_allowed(local, &headers(&[host, ("origin", page)])),
                ok,
                "Origin {page}"
            );
        }
        assert!(action_allowed(
            local,
            &headers(&[host, ("referer", "http://localhost:8025/?x=1")])
        ));
        assert!(!action_allowed(
            local,
            &headers(&[host, ("referer", "http://evil.example:8025/attack.html")])
        ));
        // Origin wins over Referer: a cross-site Origin is not excused by a local Referer.
        assert!(!action_allowed(
            local,
            &headers(&[
                host,
                ("origin", "http://evil.example:8025"),
                ("referer", "http://localhost:8025/")
            ])
        ));
    }

    #[test]
    fn host_must_name_this_listener() {
        let v4: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let v6: Option<IpAddr> = Some("::1".parse().unwrap());
        let lan: Option<IpAddr> = Some("192.0.2.10".parse().unwrap());
        let allowed = ["relay.lan".to_string(), "203.0.113.7".to_string()];
        for (host, local, ok) in [
            ("127.0.0.1:8025", v4, true),
            ("127.0.0.1", v4, true),
            ("[::1]:8025", v6, true),
            ("[::1]", v6, true),
            ("[::ffff:127.0.0.1]:8025", v4, true),
            ("localhost:8025", v4, true),
            ("LocalHost.", v4, true),
            ("app.localhost:8025", v4, true),
            ("192.0.2.10:8025", lan, true),
            ("relay.lan:8025", lan, true),
            ("RELAY.LAN.", lan, true),
            ("203.0.113.7:80", lan, true),
            // DNS rebinding: a name that merely resolves here.
            ("evil.example:8025", v4, false),
            ("evil.example", v4, false),
            ("localhost.evil.example", v4, false),
            ("relay.lan.evil.example", lan, false),
            // Another IP than the one the client reached.
            ("127.0.0.2:8025", v4, false),
            ("192.0.2.11", lan, false),
            // Not a Host value at all.
            ("", v4, false),
            ("::1", v6, false),
            ("[::1]x", v6, false),
            ("[evil.example]:80", v4, false),
            ("localhost:80x", v4, false),
            ("user@localhost", v4, false),
            ("localhost/x", v4, false),
        ] {
            assert_eq!(host_allowed(host, local, &allowed), ok, "Host {host:?}");
        }
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
