//! The device: peers, cryptokey routing, handshake and transport processing,
//! and timers. Sans-IO: every input carries `now`; outputs are return values
//! and poll queues.
//!
//! Split by concern, as wireguard-go's `device/` is; each file holds one
//! `impl Device` block and the free functions of its concern:
//!
//! * this file: the [`Device`] and the state its parts share (the peer
//!   record and its timers, staged packets, the transmit queue, `Core`:
//!   everything but the peer table, so a peer and the core can be borrowed
//!   mutably at once), construction, settings, drop counters and events;
//! * `peers`: adding, re-applying, removing and looking up peers, cryptokey
//!   routing, per-peer status;
//! * `timers`: the timer hooks and what runs when a peer timer is due
//!   (retransmission, keepalives, rekey, zeroing of key material, expiry);
//! * `send`: initiations, staging, encapsulation of TUN packets, keepalives,
//!   the transmit queue;
//! * `receive`: incoming datagrams: transport data, handshake messages and
//!   cookie replies.

mod peers;
mod receive;
mod send;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::allowed_ips::AllowedIps;
use crate::api::{DropCounters, DropReason, Event, PeerConfig, PeerId};
use crate::consts::*;
use crate::cookie::CookieGenerator;
use crate::gate::HandshakeGate;
use crate::hash::{IndexState, SeededState};
use crate::keys::{PrivateKey, PublicKey};
use crate::noise::{Handshake, PeerKeys};
use crate::session::Keypairs;

/// Errors of peer management calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The `PeerId` does not name a live peer.
    #[error("no such peer")]
    UnknownPeer,
    /// Another peer already has this public key.
    #[error("a peer with public key {0} already exists")]
    DuplicatePublicKey(PublicKey),
    /// The peer's public key is the device's own.
    #[error("peer public key equals the device's own public key")]
    OwnPublicKey,
    /// The public key is a low-order point (DH with it would be all zero).
    #[error("public key {0} is a low-order point")]
    InvalidPublicKey(PublicKey),
    /// The peer has no endpoint to send to.
    #[error("peer has no endpoint")]
    NoEndpoint,
    /// Too many peers.
    #[error("too many peers")]
    TooManyPeers,
}

/// A packet waiting for a session: payload at `TUN_HEADROOM`, room for
/// padding and tag behind it.
#[derive(Clone)]
struct Staged {
    buf: Vec<u8>,
    len: usize,
}

/// A datagram waiting in the transmit queue.
#[derive(Clone)]
struct Transmit {
    slot: u32,
    dst: SocketAddr,
    data: Vec<u8>,
}

#[derive(Default, Clone)]
struct Timers {
    retransmit_handshake: Option<Instant>,
    send_keepalive: Option<Instant>,
    new_handshake: Option<Instant>,
    zero_key_material: Option<Instant>,
    persistent_keepalive: Option<Instant>,
    /// Send a keepalive at the next `handle_timeout` (peer added or
    /// persistent keepalive enabled).
    kick: bool,
    need_another_keepalive: bool,
    handshake_attempts: u32,
    sent_last_minute_handshake: bool,
}

#[derive(Default, Clone)]
struct Counters {
    rx_bytes: u64,
    tx_bytes: u64,
    last_handshake: Option<SystemTime>,
    handshake_attempts: u64,
    handshakes_completed: u64,
}

#[derive(Clone)]
struct Peer {
    id: PeerId,
    config: PeerConfig,
    keys: PeerKeys,
    endpoint: Option<SocketAddr>,
    handshake: Handshake,
    cookie: CookieGenerator,
    keypairs: Keypairs,
    staged: VecDeque<Staged>,
    timers: Timers,
    stats: Counters,
}

/// Device state other than the peer table (split out so peer and core can
/// be borrowed mutably at the same time).
#[derive(Clone)]
struct Core {
    private_key: PrivateKey,
    public: [u8; 32],
    rng: ChaCha20Rng,
    index: HashMap<u32, u32, IndexState>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    drops: DropCounters,
    next_deadline: Option<Instant>,
    now_hint: Instant,
    wall_anchor: (Instant, SystemTime),
    mtu: Option<usize>,
}

impl Core {
    fn drop_packet(&mut self, reason: DropReason) -> DropReason {
        self.drops.bump(reason);
        reason
    }

    fn observe(&mut self, now: Instant) {
        if now > self.now_hint {
            self.now_hint = now;
        }
    }

    fn arm(&mut self, at: Option<Instant>) {
        if let Some(at) = at
            && self.next_deadline.is_none_or(|d| at < d)
        {
            self.next_deadline = Some(at);
        }
    }

    fn wall(&self, now: Instant) -> SystemTime {
        let (i, w) = self.wall_anchor;
        if now >= i {
            w.checked_add(now - i).unwrap_or(w)
        } else {
            w.checked_sub(i - now).unwrap_or(w)
        }
    }

    fn random32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        b
    }

    fn jitter(&mut self) -> Duration {
        let max = REKEY_TIMEOUT_JITTER_MAX.as_micros() as u32;
        Duration::from_micros(u64::from(self.rng.next_u32() % max))
    }

    fn new_index(&mut self, slot: u32) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.index.contains_key(&i) {
                self.index.insert(i, slot);
                return i;
            }
        }
    }

    fn release_index(&mut self, idx: u32) {
        self.index.remove(&idx);
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn padded_len(&self, len: usize) -> usize {
        let round = |x: usize| x.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
        match self.mtu.filter(|m| *m > 0) {
            None => round(len),
            Some(mtu) => {
                let last = if len > mtu { len % mtu } else { len };
                len + round(last).min(mtu).saturating_sub(last)
            }
        }
    }
}

/// A WireGuard device: one static identity and its peers.
///
/// See the crate documentation for the calling conventions.
pub struct Device {
    core: Core,
    /// mac1/mac2/cookies/load/rate limiting and the first DH of handshake
    /// messages, when `handle_datagram` takes them inline.
    gate: HandshakeGate,
    peers: Vec<Option<Peer>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    by_key: HashMap<[u8; 32], u32, SeededState>,
    allowed_ips: AllowedIps<u32>,
}

impl Device {
    /// Creates a device.
    ///
    /// * `seed` seeds the device's CSPRNG (ChaCha20): ephemeral keys,
    ///   indices, jitter and cookie secrets all come from it. Pass 32 bytes
    ///   of OS randomness in production.
    /// * `(now, wall)` anchors simulated/monotonic time to wall-clock time
    ///   for TAI64N timestamps and `last_handshake`; the core never reads a
    ///   clock.
    pub fn new(private_key: PrivateKey, seed: [u8; 32], now: Instant, wall: SystemTime) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let public = private_key.public_key().to_bytes();
        // Two draws, as many as the rate limiter's hasher took before the
        // gate existed, and cookies come from this RNG as before: the
        // stream (indices, ephemeral keys, cookie secrets) stays as it was,
        // and with it the committed fuzz seeds.
        let mut gate_seed = Zeroizing::new([0u8; 32]);
        gate_seed[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        gate_seed[8..16].copy_from_slice(&rng.next_u64().to_le_bytes());
        let gate = HandshakeGate::new(private_key.clone(), *gate_seed);
        let map_state = SeededState::new(rng.next_u64(), rng.next_u64());
        let index_state = IndexState::new(rng.next_u64());
        Self {
            gate,
            core: Core {
                private_key,
                public,
                rng,
                index: HashMap::with_hasher(index_state),
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                drops: DropCounters::default(),
                next_deadline: None,
                now_hint: now,
                wall_anchor: (now, wall),
                mtu: None,
            },
            peers: Vec::new(),
            generations: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::with_hasher(map_state),
            allowed_ips: AllowedIps::new(),
        }
    }

    /// An exact copy, RNG state and send counters included. Crate-private on
    /// purpose: two live copies would reuse nonces. Only the fuzz harness
    /// uses it, to start every input from the same established session.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn fork(&self) -> Device {
        Device {
            gate: self.gate.clone(),
            core: self.core.clone(),
            peers: self.peers.clone(),
            generations: self.generations.clone(),
            free_slots: self.free_slots.clone(),
            by_key: self.by_key.clone(),
            allowed_ips: self.allowed_ips.clone(),
        }
    }

    /// The device's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.core.public)
    }

    /// Re-anchors wall-clock time (e.g. after the engine noticed a clock
    /// step). TAI64N timestamps are derived as `wall + (now - anchor)`.
    pub fn set_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        self.core.wall_anchor = (now, wall);
    }

    /// Sets the tunnel MTU used to cap padding (as wireguard-go does);
    /// `None` pads every packet to a multiple of 16.
    pub fn set_mtu(&mut self, mtu: Option<usize>) {
        self.core.mtu = mtu;
    }

    /// Forces the "under load" state (`Some(true)`: every handshake needs a
    /// valid mac2; `Some(false)`: never) or returns to automatic detection (`None`).
    pub fn set_under_load(&mut self, forced: Option<bool>) {
        self.gate.set_under_load(forced);
    }

    /// Handshake messages per second above which the device considers
    /// itself under load (default `DEFAULT_UNDER_LOAD_THRESHOLD`).
    pub fn set_load_threshold(&mut self, per_second: u32) {
        self.gate.set_load_threshold(per_second);
    }

    /// Whether the device currently considers itself under load.
    pub fn is_under_load(&self, now: Instant) -> bool {
        self.gate.is_under_load(now)
    }

    /// Device-wide drop counters.
    pub fn drop_counters(&self) -> &DropCounters {
        &self.core.drops
    }

    /// One drop counter.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.core.drops.get(reason)
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }
}
