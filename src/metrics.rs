//! What `/metrics` counts: messages received, delivered and failed, and the Graph transport's
//! request latency and big-mail uploads. Atomic counters only; the parts that bump them (ingest,
//! delivery, the Graph transport) and the one that reads them (status) meet here, so no part
//! depends on another for its numbers. Never does I/O and uses no other module of the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Message counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    /// (received, delivered, failed)
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// What the Graph transport reports to `/metrics`: request latency (a Prometheus histogram
/// with fixed buckets) and how big-mail uploads went.
#[derive(Debug, Default)]
pub struct GraphStats {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    uploaded_bytes: AtomicU64,
    chunk_retries: AtomicU64,
    session_renewals: AtomicU64,
}

/// Upload counters: bytes upload sessions took, chunks sent again, sessions started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadCounts {
    pub bytes: u64,
    pub chunk_retries: u64,
    pub session_renewals: u64,
}

/// Upper bounds in seconds.
pub const LATENCY_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl GraphStats {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// (cumulative bucket counts, count, sum in seconds)
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }

    pub fn uploaded(&self, bytes: usize) {
        self.uploaded_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn chunk_retried(&self) {
        self.chunk_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_renewed(&self) {
        self.session_renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn uploads(&self) -> UploadCounts {
        UploadCounts {
            bytes: self.uploaded_bytes.load(Ordering::Relaxed),
            chunk_retries: self.chunk_retries.load(Ordering::Relaxed),
            session_renewals: self.session_renewals.load(Ordering::Relaxed),
        }
    }
}
