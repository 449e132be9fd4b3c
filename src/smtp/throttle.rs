//! Slows down password guessing: failed AUTH attempts are counted per client IP address across
//! all connections, and past a few free ones each `535` waits an increasing, capped delay.
//! Failures from one address are answered one after another (parallel connections queue behind
//! each other), and the count decays while the address stays quiet. Pure bookkeeping on a
//! `tokio::time::Instant` (so tests can use the paused clock); never sleeps and never touches
//! credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How failures turn into delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures per address answered without delay (typos).
    pub free_failures: u32,
    /// Delay for the first failure past the free ones; doubles with each further failure.
    pub base_delay: Duration,
    /// Largest delay for one failure.
    pub max_delay: Duration,
    /// The failure count drops by one for each `decay` without a new failure.
    pub decay: Duration,
    /// Longest a client is made to wait for its `535`, queued failures included (well under
    /// the idle timeouts of real clients).
    pub max_wait: Duration,
    /// Addresses remembered; beyond this, forgotten addresses make room (oldest first).
    pub max_tracked: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            free_failures: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            decay: Duration::from_secs(60),
            max_wait: Duration::from_secs(60),
            max_tracked: 10_000,
        }
    }
}

impl ThrottlePolicy {
    /// The delay for the `n`th recent failure from one address (1-based).
    pub fn delay_for(&self, n: u32) -> Duration {
        if n <= self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (n - self.free_failures - 1).min(30);
        self.base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// When `failures` was last brought up to date (decay counts from here).
    updated: Instant,
    /// When the last delayed `535` for this address goes out; the next one queues behind it.
    busy_until: Instant,
}

impl Entry {
    fn decay(&mut self, now: Instant, decay: Duration) {
        if decay.is_zero() {
            return;
        }
        let elapsed = now.saturating_duration_since(self.updated);
        let steps = elapsed.as_nanos() / decay.as_nanos().max(1);
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        if steps == 0 {
            return;
        }
        self.failures = self.failures.saturating_sub(steps);
        self.updated = match decay.checked_mul(steps) {
            Some(step) if self.failures > 0 => self.updated + step,
            _ => now,
        };
    }
}

/// Failed AUTH attempts per client address, shared by every connection of one listener set.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    policy: ThrottlePolicy,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        AuthThrottle {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// Records a failed attempt from `ip` at `now`; returns how long to wait before answering
    /// it with `535`.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> Duration {
        let ip = ip.to_canonical();
        let policy = &self.policy;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(&ip) && entries.len() >= policy.max_tracked {
            prune(&mut entries, now, policy);
        }
        let entry = entries.entry(ip).or_insert(Entry {
            failures: 0,
            updated: now,
            busy_until: now,
        });
        entry.decay(now, policy.decay);
        entry.failures = entry.failures.saturating_add(1);
        entry.updated = now;
        let delay = policy.delay_for(entry.failures);
        if delay.is_zero() {
            return Duration::ZERO;
        }
        let answer_at = entry.busy_until.max(now) + delay;
        let wait = answer_at
            .saturating_duration_since(now)
            .min(policy.max_wait);
        entry.busy_until = now + wait;
        wait
    }

    /// Recent failures from `ip` (after decay), for logs and tests.
    pub fn failures(&self, ip: IpAddr, now: Instant) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&ip.to_canonical()).map_or(0, |e| {
            let mut e = *e;
            e.decay(now, self.policy.decay);
            e.failures
        })
    }
}

/// Drops fully decayed addresses; if that frees nothing, the least recently failed one.
fn prune(entries: &mut HashMap<IpAddr, Entry>, now: Instant, policy: &ThrottlePolicy) {
    entries.retain(|_, e| {
        let mut e = *e;
        e.decay(now, policy.decay);
        e.failures > 0 || e.busy_until > now
    });
    if entries.len() >= policy.max_tracked
        && let Some(oldest) = entries
            .iter()
            .min_by_key(|(_, e)| e.updated)
            .map(|(ip, _)| *ip)
    {
        entries.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn delays_grow_after_the_free_failures_and_are_capped() {
        let p = ThrottlePolicy::default();
        let delays: Vec<u64> = (1..=9).map(|n| p.delay_for(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 15, 15]);
        assert_eq!(p.delay_for(u32::MAX), p.max_delay);
    }

    #[test]
    fn failures_are_counted_per_address_and_queue_behind_each_other() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("127.0.0.1");
        for _ in 0..3 {
            assert_eq!(t.failure(a, now), Duration::ZERO);
        }
        // The 4th failure at the same instant (say, from a parallel connection) waits 1 s, the
        // 5th queues behind it: 1 + 2 s.
        assert_eq!(t.failure(a, now), Duration::from_secs(1));
        assert_eq!(t.failure(a, now), Duration::from_secs(3));
        // Another address is not affected; an IPv4-mapped IPv6 address is the same client.
        assert_eq!(t.failure(ip("10.0.0.7"), now), Duration::ZERO);
        assert_eq!(t.failures(ip("::ffff:127.0.0.1"), now), 5);
        // After the queue has drained, only the failure's own delay applies.
        let later = now + Duration::from_secs(10);
        assert_eq!(t.failure(a, later), Duration::from_secs(4));
    }

    #[test]
    fn the_count_decays_while_the_address_is_quiet() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("::1");
        for _ in 0..6 {
            t.failure(a, now);
        }
        assert_eq!(t.failures(a, now), 6);
        assert_eq!(t.failures(a, now + Duration::from_secs(59)), 6);
        assert_eq!(t.failures(a, now + Duration::from_secs(60)), 5);
        assert_eq!(t.failures(a, now + Duration::from_secs(150)), 4);
        // Three quiet minutes later the next failure is the 4th: 1 s.
        let later = now + Duration::from_secs(180);
        assert_eq!(t.failure(a, later), Duration::from_secs(1));
        // Long quiet: back to free attempts.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(t.failures(a, much_later), 0);
        assert_eq!(t.failure(a, much_later), Duration::ZERO);
    }

    #[test]
    fn the_wait_is_capped_even_for_a_long_queue() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("127.0.0.2");
        let waits: Vec<Duration> = (0..20).map(|_| t.failure(a, now)).collect();
        assert!(waits.iter().all(|w| *w <= t.policy().max_wait), "{waits:?}");
        assert_eq!(waits[19], t.policy().max_wait);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = AuthThrottle::new(ThrottlePolicy {
            max_tracked: 4,
            ..ThrottlePolicy::default()
        });
        let now = Instant::now();
        for i in 0..10u8 {
            t.failure(
                IpAddr::from([10, 0, 0, i]),
                now + Duration::from_millis(u64::from(i)),
            );
        }
        let len = t.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX);
        assert!(len <= 4, "{len}");
        assert_eq!(t.failures(IpAddr::from([10, 0, 0, 9]), now), 1);
    }
}
