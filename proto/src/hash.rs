//! Deterministic, seeded hashers for the core's maps (no OS randomness).

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hasher};

/// SipHash (std's `DefaultHasher`) keyed by absorbing a secret 16-byte prefix;
/// used where keys may be attacker-influenced (rate limiter).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeededState(u64, u64);

impl SeededState {
    pub(crate) fn new(k0: u64, k1: u64) -> Self {
        Self(k0, k1)
    }
}

impl BuildHasher for SeededState {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h.write_u64(self.1);
        h
    }
}

/// Cheap multiplicative hasher for the receiver-index table: its keys are
/// our own uniformly random indices, so lookups of attacker-chosen indices
/// cannot build collision chains.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexState(u64);

impl IndexState {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
}

impl BuildHasher for IndexState {
    type Hasher = IndexHasher;
    fn build_hasher(&self) -> IndexHasher {
        IndexHasher {
            seed: self.0,
            state: 0,
        }
    }
}

pub(crate) struct IndexHasher {
    seed: u64,
    state: u64,
}

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        let x = (self.state ^ v ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.state = x ^ (x >> 29);
    }
}
