//! TAI64N timestamps as carried (encrypted) in handshake initiations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Offset of TAI64 labels: 2^62 plus the 10 s TAI-UTC difference WireGuard uses.
const TAI64_BASE: u64 = (1u64 << 62) + 10;
/// Nanoseconds are rounded down to this granularity (kernel: the largest power
/// of two below 1e9 / INITIATIONS_PER_SECOND), so a timestamp does not leak
/// precise clock readings.
const WHITENER_MASK_NS: u32 = 1 << 24;

/// A 12-byte TAI64N label: 8 bytes big-endian seconds, 4 bytes big-endian
/// nanoseconds. Byte-wise order equals chronological order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// The zero label (older than any real timestamp).
    pub const ZERO: Tai64N = Tai64N([0; 12]);

    /// Label for a wall-clock time, with nanoseconds whitened.
    pub fn from_system_time(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = TAI64_BASE.saturating_add(since.as_secs());
        let nanos = since.subsec_nanos() - since.subsec_nanos() % WHITENER_MASK_NS;
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&secs.to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64N(b)
    }

    /// Whether `self` is strictly later than `other`.
    pub fn is_after(&self, other: &Tai64N) -> bool {
        self > other
    }
}
