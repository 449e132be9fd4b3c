//! `GET /metrics`: the counters, queue gauges, token state and Graph latency in Prometheus text
//! format 0.0.4. The metric names are a contract with dashboards; the text format itself is
//! written only by `Exposition`, so a metric's `# HELP`, `# TYPE` and samples cannot disagree.

use std::fmt::{Display, Write as _};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::http::{Ctx, counts};
use crate::auth::TokenState;
use crate::metrics::LATENCY_BUCKETS;

/// A Prometheus metric type, as `# TYPE` spells it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metrics page being written, one metric family after another.
#[derive(Debug, Default)]
struct Exposition(String);

/// One metric family: its header is written; samples follow.
struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Exposition {
    /// Starts a family with its `# HELP` and `# TYPE` lines.
    fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        Family {
            out: &mut self.0,
            name,
        }
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help).sample("", None, value);
    }
}

impl Family<'_> {
    /// `{name}{suffix}{label="value"} {sample}`; `suffix` is a histogram's `_bucket`, `_sum` or
    /// `_count`. Label values here are fixed words and numbers, so they need no escaping.
    fn sample(&mut self, suffix: &str, label: Option<(&str, &str)>, value: impl Display) {
        let name = self.name;
        let _ = match label {
            Some((label, text)) => {
                writeln!(self.out, "{name}{suffix}{{{label}=\"{text}\"}} {value}")
            }
            None => writeln!(self.out, "{name}{suffix} {value}"),
        };
    }
}

pub(super) async fn metrics(State(ctx): State<Ctx>) -> Response {
    let counts = match counts(&ctx).await {
        Ok(counts) => counts,
        Err(response) => return response,
    };
    let (received, delivered, failed) = ctx.counters.snapshot();
    let mut out = Exposition::default();
    out.single(
        "graph_relay_messages_received_total",
        Kind::Counter,
        "Messages accepted over SMTP (250 sent).",
        received,
    );
    out.single(
        "graph_relay_messages_delivered_total",
        Kind::Counter,
        "Messages Graph accepted.",
        delivered,
    );
    out.single(
        "graph_relay_messages_failed_total",
        Kind::Counter,
        "Messages moved to failed/.",
        failed,
    );
    out.single(
        "graph_relay_queue_pending",
        Kind::Gauge,
        "Messages still to deliver, held ones included.",
        counts.pending as u64,
    );
    out.single(
        "graph_relay_queue_held",
        Kind::Gauge,
        "Messages held for re-authorization.",
        counts.held as u64,
    );
    out.single(
        "graph_relay_queue_failed",
        Kind::Gauge,
        "Messages in failed/.",
        counts.failed as u64,
    );

    let state = ctx.tokens.status().state;
    let mut states = out.family(
        "graph_relay_token_state",
        Kind::Gauge,
        "1 for the current token state.",
    );
    for s in [
        TokenState::Valid,
        TokenState::ReauthRequired,
        TokenState::Missing,
    ] {
        states.sample("", Some(("state", s.as_str())), u64::from(s == state));
    }

    let uploads = ctx.graph_stats.uploads();
    out.single(
        "graph_relay_upload_bytes_total",
        Kind::Counter,
        "Attachment bytes upload sessions took (big mail).",
        uploads.bytes,
    );
    let mut retries = out.family(
        "graph_relay_upload_retries_total",
        Kind::Counter,
        "Upload chunks sent again, and upload sessions started again.",
    );
    retries.sample("", Some(("kind", "chunk")), uploads.chunk_retries);
    retries.sample("", Some(("kind", "session")), uploads.session_renewals);

    let (buckets, count, sum) = ctx.graph_stats.snapshot();
    let mut latency = out.family(
        "graph_relay_graph_request_seconds",
        Kind::Histogram,
        "Graph request latency.",
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
        latency.sample("_bucket", Some(("le", &bound.to_string())), n);
    }
    latency.sample("_bucket", Some(("le", "+Inf")), count);
    latency.sample("_sum", None, format_args!("{sum:.6}"));
    latency.sample("_count", None, count);

    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.0).into_response()
}
