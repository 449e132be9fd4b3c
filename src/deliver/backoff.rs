//! When to try again: doubling from `retry_min` to `retry_max` with jitter, unless Graph said
//! `Retry-After`, which wins. Pure arithmetic; the caller supplies the clock and the randomness.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before attempt `attempts + 1`, given `attempts` failures so far (≥ 1). `jitter` is
    /// in [0, 1): it spreads retries over ±20% so a burst of failures does not retry in lockstep.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(wait) = retry_after {
            // Graph's `Retry-After: 0` still deserves a short pause.
            return wait.max(Duration::from_millis(100));
        }
        let doublings = attempts.saturating_sub(1).min(30);
        let base = self.min.saturating_mul(1 << doublings).min(self.max);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor).clamp(self.min.min(self.max), self.max)
    }
}

/// A cheap jitter source; retries need spread, not cryptographic randomness.
pub fn jitter() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        min: Duration::from_secs(30),
        max: Duration::from_secs(3600),
    };

    #[test]
    fn doubles_from_min_and_stops_at_max() {
        assert_eq!(B.delay(1, None, 0.5), Duration::from_secs(30));
        assert_eq!(B.delay(2, None, 0.5), Duration::from_secs(60));
        assert_eq!(B.delay(3, None, 0.5), Duration::from_secs(120));
        assert_eq!(B.delay(20, None, 0.5), Duration::from_secs(3600));
        assert_eq!(B.delay(u32::MAX, None, 0.5), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        assert_eq!(B.delay(3, None, 0.0), Duration::from_secs(96));
        assert_eq!(B.delay(3, None, 0.999_999).as_secs(), 143);
        assert_eq!(
            B.delay(1, None, 0.0),
            Duration::from_secs(30),
            "never below retry_min"
        );
        assert_eq!(
            B.delay(30, None, 0.99),
            Duration::from_secs(3600),
            "never above retry_max"
        );
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn retry_after_wins() {
        assert_eq!(
            B.delay(5, Some(Duration::from_millis(2128)), 0.5),
            Duration::from_millis(2128)
        );
        assert_eq!(
            B.delay(1, Some(Duration::ZERO), 0.5),
            Duration::from_millis(100)
        );
    }
}
