//! Protocol constants (WireGuard whitepaper §6, kernel `messages.h`,
//! wireguard-go `device/constants.go`) and buffer-layout constants for the
//! caller-owned hot-path buffers.

use std::time::Duration;

/// Initiate a new handshake after this many messages were sent with one keypair.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Number of counters tracked behind the highest one seen (RFC 6479 window,
/// 8192 bits minus one 64-bit block, as in the kernel and wireguard-go).
pub const COUNTER_WINDOW_SIZE: u64 = 8192 - 64;
/// Never send or accept a counter at or above this value (kernel definition).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - COUNTER_WINDOW_SIZE - 1;
/// The initiator of a keypair rekeys once the keypair is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair is unusable once it is this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake attempts are given up after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this long (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum random jitter added to handshake retransmissions (kernel: HZ / 3).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(334);
/// Send a keepalive if data was received and nothing was sent for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of retransmissions before a handshake attempt is abandoned.
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// Cookie secrets (responder) rotate after this long.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Slack subtracted from the cookie age on the initiator side (kernel).
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// At most one initiation per peer is consumed per this interval
/// (kernel `INITIATIONS_PER_SECOND` = 50).
pub const HANDSHAKE_INITIATION_RATE: Duration = Duration::from_millis(20);
/// Packets staged per peer while no session exists (kernel `MAX_STAGED_PACKETS`).
pub const MAX_STAGED_PACKETS: usize = 128;
/// Plaintext is padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// Handshake messages per second (with a valid mac1) above which the device
/// considers itself under load (default; see `Device::set_load_threshold`).
pub const DEFAULT_UNDER_LOAD_THRESHOLD: u32 = 128;
/// The device stays under load this long after the threshold was last exceeded.
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);
/// Per-source handshake rate limit under load: sustained packets per second.
pub const RATE_LIMIT_PACKETS_PER_SECOND: u64 = 20;
/// Per-source handshake rate limit under load: burst size.
pub const RATE_LIMIT_BURST: u64 = 5;
/// Maximum number of sources tracked by the rate limiter.
pub const RATE_LIMIT_MAX_ENTRIES: usize = 8192;
/// Maximum number of undelivered events kept (oldest dropped first).
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// Length of a handshake initiation (type 1).
pub const HANDSHAKE_INITIATION_LEN: usize = 148;
/// Length of a handshake response (type 2).
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// Length of a cookie reply (type 3).
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the transport data header (type, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Poly1305 authentication tag length.
pub const AEAD_TAG_LEN: usize = 16;
/// Minimum length of a transport data message (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Fixed per-packet overhead of a transport message (header + tag), excluding padding.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Headroom the caller must leave in front of a TUN payload for in-place encryption.
pub const TUN_HEADROOM: usize = TRANSPORT_HEADER_LEN;
/// Worst-case tailroom needed behind a TUN payload (padding + tag).
pub const TUN_TAILROOM: usize = PADDING_MULTIPLE - 1 + AEAD_TAG_LEN;
/// Largest handshake message; a `handle_datagram` buffer is always large enough
/// for the reply it may write (replies are never longer than the message).
pub const MAX_HANDSHAKE_LEN: usize = HANDSHAKE_INITIATION_LEN;

/// Buffer length `handle_tun_packet` needs for a payload of `payload_len` bytes
/// (headroom + payload + worst-case padding + tag).
pub const fn tun_buffer_len(payload_len: usize) -> usize {
    TUN_HEADROOM + payload_len + TUN_TAILROOM
}
