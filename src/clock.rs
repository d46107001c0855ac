//! Wall-clock time as netman records it (state file, status, confirm
//! deadlines): Unix time in seconds or milliseconds. One place, so every
//! record uses the same epoch and the same answer for a clock set before
//! 1970 (0). The planners and the protocol core take time as a parameter
//! and never call this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn now_unix_secs() -> u64 {
    unix_secs(SystemTime::now())
}

/// Seconds since the Unix epoch at `t`.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_and_milliseconds_agree_and_the_past_is_zero() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let (ms, s) = (now_unix_ms(), now_unix_secs());
        assert!(ms / 1000 <= s && s <= ms / 1000 + 1, "{ms} ms vs {s} s");
    }
}
