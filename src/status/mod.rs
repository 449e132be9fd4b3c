//! The status surface: counters every part bumps, and the status listener: `http` (router and
//! guards), `json` (`/status`), `metrics` (`/metrics`), `page` (the HTML page) and `actions`
//! (its buttons). Reads the spool and the token state; changes nothing except through the same
//! spool operations and sign-in the CLI uses.

use std::sync::atomic::{AtomicU64, Ordering};

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

pub mod actions;
pub mod http;
pub mod json;
pub mod metrics;
pub mod page;
