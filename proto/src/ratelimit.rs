//! Handshake load detection and per-source token-bucket rate limiting
//! (after wireguard-go's `ratelimiter/`), with time as a parameter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::consts::{RATE_LIMIT_MAX_ENTRIES, UNDER_LOAD_AFTER_TIME};
use crate::hash::SeededState;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// Counts handshake messages per one-second window and reports whether the
/// device is under load; can be forced for tests.
#[derive(Debug, Clone)]
pub(crate) struct LoadDetector {
    window_start: Option<Instant>,
    count: u32,
    under_load_until: Option<Instant>,
    pub(crate) threshold: u32,
    pub(crate) forced: Option<bool>,
}

impl LoadDetector {
    pub(crate) fn new(threshold: u32) -> Self {
        Self {
            window_start: None,
            count: 0,
            under_load_until: None,
            threshold,
            forced: None,
        }
    }

    /// Records one handshake message and returns whether we are under load.
    pub(crate) fn on_handshake(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.count = 0;
            }
        }
        self.count = self.count.saturating_add(1);
        if self.count > self.threshold {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER_TIME);
        }
        self.is_under_load(now)
    }

    /// Marks the device under load from `now` on (for UNDER_LOAD_AFTER_TIME),
    /// e.g. because the caller's handshake queue is filling up.
    pub(crate) fn mark(&mut self, now: Instant) {
        let until = now + UNDER_LOAD_AFTER_TIME;
        if self.under_load_until.is_none_or(|u| u < until) {
            self.under_load_until = Some(until);
        }
    }

    pub(crate) fn is_under_load(&self, now: Instant) -> bool {
        if let Some(f) = self.forced {
            return f;
        }
        self.under_load_until.is_some_and(|u| now < u)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

/// Token bucket per source address (IPv4 address, IPv6 /64).
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    table: HashMap<u128, Bucket, SeededState>,
    packet_cost: u64,
    max_tokens: u64,
    last_gc: Option<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(packets_per_second: u64, burst: u64, hasher: SeededState) -> Self {
        let packet_cost = NANOS_PER_SEC / packets_per_second.max(1);
        Self {
            table: HashMap::with_hasher(hasher),
            packet_cost,
            max_tokens: packet_cost.saturating_mul(burst.max(1)),
            last_gc: None,
        }
    }

    fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)) | (0xffff << 32),
            IpAddr::V6(a) => u128::from(a) & (u128::MAX << 64),
        }
    }

    fn gc(&mut self, now: Instant) {
        let due = self
            .last_gc
            .is_none_or(|t| now.saturating_duration_since(t) >= GC_INTERVAL);
        if due {
            self.last_gc = Some(now);
            self.table
                .retain(|_, b| now.saturating_duration_since(b.last) < GC_INTERVAL);
        }
    }

    /// Whether a handshake from `ip` may be processed now.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.gc(now);
        let key = Self::key(ip);
        if let Some(b) = self.table.get_mut(&key) {
            let elapsed = now.saturating_duration_since(b.last).as_nanos();
            let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
            b.last = now;
            b.tokens = b.tokens.saturating_add(elapsed).min(self.max_tokens);
            if b.tokens >= self.packet_cost {
                b.tokens -= self.packet_cost;
                return true;
            }
            return false;
        }
        if self.table.len() >= RATE_LIMIT_MAX_ENTRIES {
            return false;
        }
        self.table.insert(
            key,
            Bucket {
                tokens: self.max_tokens - self.packet_cost,
                last: now,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_burst_and_refill() {
        let mut r = RateLimiter::new(20, 5, SeededState::new(1, 2));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..5).all(|_| r.allow(a, t0)));
        assert!(!r.allow(a, t0));
        assert!(r.allow(b, t0), "other sources are independent");
        assert!(!r.allow(a, t0 + Duration::from_millis(49)));
        assert!(r.allow(a, t0 + Duration::from_millis(100)));
        // Idle sources are forgotten after a second and start with a full burst.
        let t1 = t0 + Duration::from_secs(3);
        assert!((0..5).all(|_| r.allow(a, t1)));
        assert!(!r.allow(a, t1));
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let mut r = RateLimiter::new(20, 1, SeededState::new(1, 2));
        let t0 = Instant::now();
        assert!(r.allow("2001:db8::1".parse().unwrap(), t0));
        assert!(!r.allow("2001:db8::2".parse().unwrap(), t0));
        assert!(r.allow("2001:db8:0:1::1".parse().unwrap(), t0));
    }

    #[test]
    fn load_detector_threshold_and_hold_time() {
        let mut l = LoadDetector::new(3);
        let t0 = Instant::now();
        assert!(!l.on_handshake(t0));
        assert!(!l.on_handshake(t0));
        assert!(!l.on_handshake(t0));
        assert!(l.on_handshake(t0));
        assert!(l.is_under_load(t0 + Duration::from_millis(999)));
        assert!(!l.is_under_load(t0 + Duration::from_millis(1000)));
        l.forced = Some(true);
        assert!(l.is_under_load(t0 + Duration::from_secs(10)));
        l.forced = Some(false);
        assert!(!l.on_handshake(t0));
    }
}
