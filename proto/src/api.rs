//! Public configuration, result, event and statistics types of the device.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::allowed_ips::IpPrefix;
use crate::keys::{PresharedKey, PublicKey};

/// Configuration of one peer.
#[derive(Clone)]
pub struct PeerConfig {
    /// The peer's static public key (its identity).
    pub public_key: PublicKey,
    /// Optional preshared key mixed into the handshake.
    pub preshared_key: Option<PresharedKey>,
    /// Initial endpoint; updated by roaming to the source of the last
    /// authenticated datagram.
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes routed to (and accepted from) this peer.
    pub allowed_ips: Vec<IpPrefix>,
    /// Send a keepalive after this many seconds without authenticated traffic
    /// in either direction (0 or `None` disables).
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A configuration with only the public key set.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }

    pub(crate) fn keepalive_interval(&self) -> Option<u16> {
        self.persistent_keepalive.filter(|s| *s > 0)
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &self.public_key)
            .field(
                "preshared_key",
                &self.preshared_key.as_ref().map(|_| "(hidden)"),
            )
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// Handle of a peer inside one `Device`. Stale handles (of removed peers)
/// are rejected, never aliased to a new peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// Outcome of `Device::handle_tun_packet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunResult {
    /// Encrypted in place: send `buf[..len]` to `dst`.
    Send {
        /// Peer endpoint.
        dst: SocketAddr,
        /// Datagram length.
        len: usize,
    },
    /// Copied to the peer's staging queue (no usable session yet, or older
    /// packets still staged); a handshake was started if needed. Staged
    /// packets come out of `poll_transmit` once a session exists.
    Queued {
        /// The peer the packet is for.
        peer: PeerId,
    },
    /// Dropped (and counted).
    Drop(DropReason),
}

/// Outcome of `Device::handle_datagram`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetResult {
    /// Decrypted in place: write `buf[offset..offset + len]` to the TUN device.
    ToTun {
        /// Start of the inner packet (always `TRANSPORT_HEADER_LEN`).
        offset: usize,
        /// Inner packet length (padding removed).
        len: usize,
        /// Sending peer.
        peer: PeerId,
    },
    /// A handshake response or cookie reply was written to `buf[..len]`:
    /// send it to `dst` (the datagram's source).
    Reply {
        /// Destination.
        dst: SocketAddr,
        /// Reply length.
        len: usize,
    },
    /// Consumed with nothing to deliver (keepalive, handshake response,
    /// cookie reply). Check `poll_transmit` afterwards.
    Done,
    /// Dropped (and counted); nothing is sent back.
    Drop(DropReason),
}

/// Notable state changes, drained with `Device::poll_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A session was established. `initiator` is true when we sent the
    /// initiation (the event fires on the response); a responder reports it
    /// when the first packet on the new session arrives.
    HandshakeCompleted {
        /// Peer.
        peer: PeerId,
        /// Whether we initiated.
        initiator: bool,
    },
    /// The peer's endpoint changed (roaming).
    EndpointChanged {
        /// Peer.
        peer: PeerId,
        /// New endpoint.
        endpoint: SocketAddr,
    },
    /// The current session reached REJECT_AFTER_TIME and can no longer be used.
    SessionExpired {
        /// Peer.
        peer: PeerId,
    },
    /// A handshake was retried MAX_TIMER_HANDSHAKES times without an answer;
    /// staged packets were dropped.
    HandshakeFailed {
        /// Peer.
        peer: PeerId,
    },
    /// All key material of the peer was zeroed after 3 × REJECT_AFTER_TIME
    /// without a new session.
    KeysZeroed {
        /// Peer.
        peer: PeerId,
    },
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why a packet was dropped. Every drop increments a device-wide counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];

            /// Stable snake_case label (for metrics).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Wrong length or truncated message.
    Malformed => "malformed",
    /// Unknown message type (including non-zero reserved bytes).
    UnknownMessageType => "unknown_message_type",
    /// Handshake message with an invalid mac1.
    BadMac1 => "bad_mac1",
    /// Under load without a valid mac2: answered with a cookie reply instead.
    CookieRequired => "cookie_required",
    /// Per-source handshake rate limit exceeded (under load).
    RateLimited => "rate_limited",
    /// Receiver index not known.
    UnknownIndex => "unknown_index",
    /// Initiation from a static key that is not a configured peer.
    UnknownPeer => "unknown_peer",
    /// AEAD authentication failed (bad MAC on transport or handshake data).
    DecryptFailed => "decrypt_failed",
    /// Diffie-Hellman with a low-order / zero point.
    LowOrderPoint => "low_order_point",
    /// Initiation whose timestamp is not newer than the last accepted one.
    ReplayedInitiation => "replayed_initiation",
    /// Initiations from one peer faster than 50 per second.
    HandshakeFlood => "handshake_flood",
    /// Handshake response that matches no initiation in flight.
    UnexpectedHandshake => "unexpected_handshake",
    /// Cookie reply when no handshake message is outstanding.
    UnexpectedCookie => "unexpected_cookie",
    /// Transport counter already seen or behind the window.
    Replay => "replay",
    /// Keypair past REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES.
    KeyExpired => "key_expired",
    /// No peer's allowed IPs contain the inner destination.
    NoRoute => "no_route",
    /// The peer has no known endpoint.
    NoEndpoint => "no_endpoint",
    /// Decrypted packet's inner source is not in the sender's allowed IPs.
    SourceCheck => "source_check",
    /// Inner packet is not a well-formed IPv4/IPv6 packet.
    InvalidInnerPacket => "invalid_inner_packet",
    /// Staging queue full: the oldest staged packet was dropped.
    QueueFull => "queue_full",
    /// Staged packets dropped because the handshake was given up.
    HandshakeTimeout => "handshake_timeout",
    /// Caller buffer too small (or `len` beyond the buffer).
    BufferTooSmall => "buffer_too_small",
}

/// Device-wide drop counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCounters(pub(crate) [u64; DropReason::ALL.len()]);

impl Default for DropCounters {
    fn default() -> Self {
        Self([0; DropReason::ALL.len()])
    }
}

impl DropCounters {
    /// Count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// `(reason, count)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
    pub(crate) fn bump(&mut self, reason: DropReason) {
        if let Some(c) = self.0.get_mut(reason as usize) {
            *c += 1;
        }
    }
}

/// Per-peer status (for `netman status` and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// Public key.
    pub public_key: PublicKey,
    /// Current endpoint (configured or roamed).
    pub endpoint: Option<SocketAddr>,
    /// Authenticated bytes received (whole WireGuard messages, as `wg`).
    pub rx_bytes: u64,
    /// Bytes sent (whole WireGuard messages, as `wg`).
    pub tx_bytes: u64,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Initiations sent.
    pub handshake_attempts: u64,
    /// Handshakes completed (either role).
    pub handshakes_completed: u64,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Whether a current session can send now.
    pub session_established: bool,
    /// Keypairs held (current/previous/next).
    pub keypairs: usize,
    /// Packets waiting in the staging queue.
    pub staged_packets: usize,
}
