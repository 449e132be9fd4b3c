//! The status listener: `GET /status` (JSON, design section 4), `GET /metrics` (Prometheus
//! text) and `GET /` (a page for people). Bound to loopback by default.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Counters;
use crate::auth::{TokenSource, TokenState};
use crate::deliver::{LATENCY_BUCKETS, Latency};
use crate::spool::{QueueCounts, Spool, list_line};

/// What the handlers read.
pub struct StatusContext {
    pub spool: Spool,
    pub tokens: Arc<dyn TokenSource>,
    pub counters: Arc<Counters>,
    pub latency: Arc<Latency>,
}

type Ctx = Arc<StatusContext>;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Ctx,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn counts(ctx: &Ctx) -> Result<QueueCounts, Response> {
    let spool = ctx.spool.clone();
    match tokio::task::spawn_blocking(move || spool.counts(SystemTime::now())).await {
        Ok(Ok(counts)) => Ok(counts),
        Ok(Err(e)) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the spool: {e}"),
        )
            .into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
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
    let states = [
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
    .collect::<Vec<_>>();
    metric(
        "graph_relay_token_state",
        "gauge",
        "1 for the current token state.",
        &states,
    );
    let (buckets, count, sum) = ctx.latency.snapshot();
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

async fn page(State(ctx): State<Ctx>) -> Response {
    let counts = match counts(&ctx).await {
        Ok(counts) => counts,
        Err(response) => return response,
    };
    let spool = ctx.spool.clone();
    let records = tokio::task::spawn_blocking(move || spool.list_all())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let token = ctx.tokens.status();
    let mut rows = String::new();
    for record in records.iter().take(500) {
        let _ = writeln!(rows, "<li><code>{}</code></li>", escape(&list_line(record)));
    }
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>graph-relay</title></head><body>\
         <h1>graph-relay</h1><p id=\"state\">Token state: <strong>{}</strong></p><p id=\"reason\">{}</p>\
         <p>Queue: {} pending ({} held), {} failed</p><ul id=\"queue\">{rows}</ul></body></html>",
        token.state.as_str(),
        escape(&token.reason),
        counts.pending,
        counts.held,
        counts.failed,
    );
    Html(body).into_response()
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
