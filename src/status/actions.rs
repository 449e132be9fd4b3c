//! The page's buttons: Re-authorize (`POST /reauthorize`), retry and delete
//! (`POST /queue/{id}/...`). Each checks `action_allowed` before anything else, acts only through
//! the spool operations and the sign-in the CLI uses, and logs who pressed it and what became of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use tracing::{info, warn};

use super::http::{Conn, Ctx, action_allowed, forbidden, spool_job};
use crate::auth::device_code::{self, DeviceCode};
use crate::envelope::QueueId;
use crate::spool::{Spool, SpoolError};

/// The Re-authorize button's progress, shown on the page.
#[derive(Debug, Clone, Default)]
pub enum LoginView {
    #[default]
    Idle,
    /// A code is out; it stops working at the instant given.
    Waiting(DeviceCode, Instant),
    Failed(String),
    Done,
}

/// The Re-authorize button: starts the device code flow (delegated), or asks the token
/// endpoint again now (client credentials).
pub(super) async fn reauthorize(
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
        && Instant::now() < *until
    {
        // A code is already out: pressing again must not start a second login.
        info!(client = %peer, "status page: re-authorize pressed: a device code is already out");
        return Redirect::to("/").into_response();
    }
    let show = |code: &DeviceCode| {
        info!(client = %peer, verification_uri = %code.verification_uri, "status page: re-authorize pressed: device code login started");
        let until = Instant::now() + Duration::from_secs(code.expires_in);
        *ctx.login.lock().expect("login lock") = LoginView::Waiting(code.clone(), until);
    };
    match device_code::login(device, &ctx.config, show).await {
        Ok(pending) => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let view = match pending.signed_in().await {
                    Ok(()) => {
                        // The token source reads the new cache; the state turns valid and the
                        // held mail drains.
                        let _ = ctx.tokens.token().await;
                        ctx.waker.notify_one();
                        LoginView::Done
                    }
                    Err(e) => {
                        warn!(reason = %e, "device code login failed");
                        LoginView::Failed(e.to_string())
                    }
                };
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

pub(super) async fn retry(
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

pub(super) async fn delete(
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
    match spool_job(&ctx, move |spool| action(spool, queue_id)).await {
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
