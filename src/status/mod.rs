//! The status surface: counters every part bumps, and (in `http`) the `/status` JSON, the
//! `/metrics` text and the HTML page. Reads the spool and the token state; changes nothing
//! except through the same spool operations the CLI uses.

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

pub mod http;
