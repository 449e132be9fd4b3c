//! `GET /status`: the JSON document of design section 4 (token state, queue counts, version).
//! Its field names and shapes are a contract with monitoring; add fields, never rename them.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::http::{Ctx, StatusContext, counts};
use crate::spool::QueueCounts;

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

pub(super) async fn status_json(State(ctx): State<Ctx>) -> Response {
    match counts(&ctx).await {
        Ok(counts) => Json(status_document(&ctx, &counts)).into_response(),
        Err(response) => response,
    }
}
