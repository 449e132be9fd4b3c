//! The status listener's door: the router, the state every handler reads, and the guards in
//! front of it. Every request must name this listener in `Host` (DNS rebinding), and actions are
//! POSTs accepted from loopback only and never from another site's page. What each route shows
//! or does lives beside this file: `json` (`GET /status`, design section 4), `metrics`
//! (`GET /metrics`), `page` (`GET /`) and `actions` (Re-authorize, retry, delete).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use super::actions::LoginView;
use super::{actions, json, metrics, page};
use crate::auth::TokenSource;
use crate::auth::device_code::DeviceLogin;
use crate::config::{Config, is_host_name};
use crate::metrics::{Counters, GraphStats};
use crate::spool::{QueueCounts, Spool, SpoolError};

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

pub(super) type Ctx = Arc<StatusContext>;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route("/status", get(json::status_json))
        .route("/metrics", get(metrics::metrics))
        .route("/reauthorize", post(actions::reauthorize))
        .route("/queue/{id}/retry", post(actions::retry))
        .route("/queue/{id}/delete", post(actions::delete))
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

pub(super) fn forbidden(what: &str, peer: SocketAddr, headers: &HeaderMap) -> Response {
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

/// A spool job for a handler, its error as the handler's answer.
pub(super) async fn spool_job<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, Response> {
    ctx.spool.run(f).await.map_err(|e| match e {
        SpoolError::NotFound(id) => {
            (StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response()
        }
        SpoolError::Worker(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        e => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("spool error: {e}\n"),
        )
            .into_response(),
    })
}

pub(super) async fn counts(ctx: &Ctx) -> Result<QueueCounts, Response> {
    spool_job(ctx, |spool| spool.counts(SystemTime::now())).await
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
}
