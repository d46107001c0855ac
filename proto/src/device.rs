//! The device: peers, cryptokey routing, handshake and transport processing,
//! and timers. Sans-IO: every input carries `now`; outputs are return values
//! and poll queues.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::allowed_ips::{AllowedIps, IpPrefix};
use crate::api::{
    DropCounters, DropReason, Event, NetResult, PeerConfig, PeerId, PeerStats, TunResult,
};
use crate::consts::*;
use crate::cookie::{CookieError, CookieGenerator};
use crate::gate::{GateResult, Gated, GatedHandshake, HandshakeGate, handshake_drop};
use crate::hash::{IndexState, SeededState};
use crate::ip;
use crate::keys::{PrivateKey, PublicKey};
use crate::noise::{self, Handshake, InitiationPartial, PeerKeys, Stage};
use crate::session::{Keypair, Keypairs, SealError};
use crate::tai64n::Tai64N;
use crate::wire::{CookieReply, HandshakeResponse, MessageType, TransportData, WireError, field};

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

impl Peer {
    fn next_deadline(&self, now_hint: Instant) -> Option<Instant> {
        let t = &self.timers;
        let expiry = self
            .keypairs
            .current
            .as_ref()
            .filter(|k| !k.expiry_reported)
            .map(|k| k.created + REJECT_AFTER_TIME);
        [
            t.retransmit_handshake,
            t.send_keepalive,
            t.new_handshake,
            t.zero_key_material,
            t.persistent_keepalive,
            t.kick.then_some(now_hint),
            expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }
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

// ---------------------------------------------------------------------------
// Timer hooks (wireguard-go `timers.go`)

fn timers_any_authenticated_packet_traversal(peer: &mut Peer, now: Instant) {
    if let Some(secs) = peer.config.keepalive_interval() {
        peer.timers.persistent_keepalive = Some(now + Duration::from_secs(u64::from(secs)));
    }
}

fn timers_any_authenticated_packet_sent(peer: &mut Peer) {
    peer.timers.send_keepalive = None;
}

fn timers_any_authenticated_packet_received(peer: &mut Peer) {
    peer.timers.new_handshake = None;
}

fn timers_data_sent(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.timers.new_handshake.is_none() {
        peer.timers.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + core.jitter());
    }
}

fn timers_data_received(peer: &mut Peer, now: Instant) {
    if peer.timers.send_keepalive.is_none() {
        peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
    } else {
        peer.timers.need_another_keepalive = true;
    }
}

fn timers_handshake_complete(core: &Core, peer: &mut Peer, now: Instant) {
    peer.timers.retransmit_handshake = None;
    peer.timers.handshake_attempts = 0;
    peer.timers.sent_last_minute_handshake = false;
    peer.stats.last_handshake = Some(core.wall(now));
    peer.stats.handshakes_completed += 1;
}

fn timers_session_derived(peer: &mut Peer, now: Instant) {
    peer.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
}

fn after_packet_sent(core: &mut Core, peer: &mut Peer, now: Instant, is_data: bool) {
    timers_any_authenticated_packet_traversal(peer, now);
    timers_any_authenticated_packet_sent(peer);
    if is_data {
        timers_data_sent(core, peer, now);
    }
}

// ---------------------------------------------------------------------------
// Peer actions

fn set_endpoint(core: &mut Core, peer: &mut Peer, src: SocketAddr) {
    if peer.endpoint != Some(src) {
        peer.endpoint = Some(src);
        core.push_event(Event::EndpointChanged {
            peer: peer.id,
            endpoint: src,
        });
    }
}

fn release_handshake_index(core: &mut Core, peer: &mut Peer) {
    if let Some(old) = peer.handshake.local_index.take() {
        core.release_index(old);
    }
}

fn send_initiation(core: &mut Core, peer: &mut Peer, now: Instant, is_retry: bool) {
    if !is_retry {
        peer.timers.handshake_attempts = 0;
    }
    // At most one initiation per REKEY_TIMEOUT. Unlike wireguard-go, the
    // interval includes the same random jitter as the retransmission timer:
    // otherwise two peers with synchronized traffic re-initiate at exactly
    // the same instant after a crossed handshake and collide again forever.
    if peer
        .handshake
        .next_initiation_allowed
        .is_some_and(|t| now < t)
    {
        return;
    }
    let Some(dst) = peer.endpoint else {
        return;
    };
    let retry_at = now + REKEY_TIMEOUT + core.jitter();
    peer.handshake.next_initiation_allowed = Some(retry_at);
    release_handshake_index(core, peer);
    let idx = core.new_index(peer.id.slot);
    let seed = Zeroizing::new(core.random32());
    let ts = Tai64N::from_system_time(core.wall(now));
    let mut msg = vec![0u8; HANDSHAKE_INITIATION_LEN];
    let created = noise::create_initiation(
        &core.public,
        &peer.keys,
        &mut peer.handshake,
        *seed,
        idx,
        ts,
        &mut msg,
    );
    if created.is_err() {
        core.release_index(idx);
        peer.handshake.clear();
        return;
    }
    peer.handshake.local_index = Some(idx);
    peer.cookie.add_macs(&mut msg, field::INIT_MAC1, now);
    peer.stats.tx_bytes += msg.len() as u64;
    peer.stats.handshake_attempts += 1;
    core.transmits.push_back(Transmit {
        slot: peer.id.slot,
        dst,
        data: msg,
    });
    timers_any_authenticated_packet_traversal(peer, now);
    timers_any_authenticated_packet_sent(peer);
    peer.timers.retransmit_handshake = Some(retry_at);
}

fn keep_key_fresh_sending(core: &mut Core, peer: &mut Peer, now: Instant) {
    let Some(kp) = peer.keypairs.current.as_ref() else {
        return;
    };
    if kp.send_counter > REKEY_AFTER_MESSAGES
        || (kp.is_initiator && now.saturating_duration_since(kp.created) > REKEY_AFTER_TIME)
    {
        send_initiation(core, peer, now, false);
    }
}

fn keep_key_fresh_receiving(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.timers.sent_last_minute_handshake {
        return;
    }
    let Some(kp) = peer.keypairs.current.as_ref() else {
        return;
    };
    if kp.is_initiator
        && now.saturating_duration_since(kp.created)
            > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    {
        peer.timers.sent_last_minute_handshake = true;
        send_initiation(core, peer, now, false);
    }
}

fn stage_packet(core: &mut Core, peer: &mut Peer, payload: &[u8]) {
    if peer.staged.len() >= MAX_STAGED_PACKETS {
        peer.staged.pop_front();
        core.drop_packet(DropReason::QueueFull);
    }
    let mut buf = vec![0u8; TUN_HEADROOM + core.padded_len(payload.len()) + AEAD_TAG_LEN];
    if let Some(dst) = buf.get_mut(TUN_HEADROOM..TUN_HEADROOM + payload.len()) {
        dst.copy_from_slice(payload);
    }
    peer.staged.push_back(Staged {
        buf,
        len: payload.len(),
    });
}

/// Encrypts staged packets into the transmit queue if a session can send,
/// otherwise starts a handshake (wireguard-go `SendStagedPackets`).
fn flush_staged(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.staged.is_empty() {
        return;
    }
    let usable = peer
        .keypairs
        .current
        .as_ref()
        .is_some_and(|k| k.can_send(now));
    if !usable {
        send_initiation(core, peer, now, false);
        return;
    }
    let Some(dst) = peer.endpoint else {
        return;
    };
    while let Some(mut st) = peer.staged.pop_front() {
        let Some(kp) = peer.keypairs.current.as_mut() else {
            peer.staged.push_front(st);
            break;
        };
        let padded = core.padded_len(st.len);
        match kp.seal(&mut st.buf, st.len, padded) {
            Ok(n) => {
                st.buf.truncate(n);
                peer.stats.tx_bytes += n as u64;
                core.transmits.push_back(Transmit {
                    slot: peer.id.slot,
                    dst,
                    data: st.buf,
                });
                after_packet_sent(core, peer, now, st.len > 0);
            }
            Err(SealError::Exhausted) => {
                peer.staged.push_front(st);
                send_initiation(core, peer, now, false);
                return;
            }
            Err(SealError::BufferTooSmall) => {
                core.drop_packet(DropReason::BufferTooSmall);
            }
        }
    }
    keep_key_fresh_sending(core, peer, now);
}

/// wireguard-go `SendKeepalive`: an empty packet unless data is staged.
fn send_keepalive(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.staged.is_empty() {
        stage_packet(core, peer, &[]);
    }
    flush_staged(core, peer, now);
}

fn zero_key_material(core: &mut Core, peer: &mut Peer) {
    for idx in peer.keypairs.clear() {
        core.release_index(idx);
    }
    release_handshake_index(core, peer);
    peer.handshake.clear();
    peer.staged.clear();
}

fn run_timers(core: &mut Core, peer: &mut Peer, now: Instant) {
    let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);

    if due(peer.timers.retransmit_handshake) {
        peer.timers.retransmit_handshake = None;
        if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
            peer.timers.send_keepalive = None;
            for _ in 0..peer.staged.len() {
                core.drop_packet(DropReason::HandshakeTimeout);
            }
            peer.staged.clear();
            if peer.timers.zero_key_material.is_none() {
                peer.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
            }
            core.push_event(Event::HandshakeFailed { peer: peer.id });
        } else {
            peer.timers.handshake_attempts += 1;
            send_initiation(core, peer, now, true);
        }
    }
    if due(peer.timers.send_keepalive) {
        peer.timers.send_keepalive = None;
        send_keepalive(core, peer, now);
        if peer.timers.need_another_keepalive {
            peer.timers.need_another_keepalive = false;
            peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
    }
    if due(peer.timers.new_handshake) {
        peer.timers.new_handshake = None;
        send_initiation(core, peer, now, false);
    }
    if due(peer.timers.zero_key_material) {
        peer.timers.zero_key_material = None;
        zero_key_material(core, peer);
        core.push_event(Event::KeysZeroed { peer: peer.id });
    }
    if due(peer.timers.persistent_keepalive) {
        peer.timers.persistent_keepalive = None;
        if peer.config.keepalive_interval().is_some() {
            send_keepalive(core, peer, now);
        }
    }
    if peer.timers.kick {
        peer.timers.kick = false;
        if peer.config.keepalive_interval().is_some() && peer.endpoint.is_some() {
            send_keepalive(core, peer, now);
        }
    }
    if let Some(kp) = peer.keypairs.current.as_mut()
        && !kp.expiry_reported
        && now.saturating_duration_since(kp.created) >= REJECT_AFTER_TIME
    {
        kp.expiry_reported = true;
        core.push_event(Event::SessionExpired { peer: peer.id });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
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

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers
            .get(id.slot as usize)
            .and_then(Option::as_ref)
            .filter(|p| p.id == id)
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers
            .get_mut(id.slot as usize)
            .and_then(Option::as_mut)
            .filter(|p| p.id == id)
    }

    fn validate_key(&self, key: &PublicKey, except: Option<u32>) -> Result<PeerKeys, DeviceError> {
        if key.as_bytes() == &self.core.public {
            return Err(DeviceError::OwnPublicKey);
        }
        if let Some(&slot) = self.by_key.get(key.as_bytes())
            && Some(slot) != except
        {
            return Err(DeviceError::DuplicatePublicKey(*key));
        }
        PeerKeys::new(self.core.private_key.secret(), key.to_bytes(), None)
            .map_err(|_| DeviceError::InvalidPublicKey(*key))
    }

    fn set_allowed_ips(&mut self, slot: u32, prefixes: &[IpPrefix]) {
        self.allowed_ips.retain(|v| *v != slot);
        for p in prefixes {
            self.allowed_ips.insert(*p, slot);
        }
    }

    /// Adds a peer. If it has a persistent keepalive and an endpoint, a
    /// keepalive (and so a handshake) is sent at the next `handle_timeout`.
    pub fn add_peer(&mut self, config: PeerConfig) -> Result<PeerId, DeviceError> {
        let mut keys = self.validate_key(&config.public_key, None)?;
        keys.set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.peers.len()).map_err(|_| DeviceError::TooManyPeers)?;
                if s == u32::MAX {
                    return Err(DeviceError::TooManyPeers);
                }
                self.peers.push(None);
                self.generations.push(0);
                s
            }
        };
        let generation = self
            .generations
            .get(slot as usize)
            .copied()
            .unwrap_or_default();
        let id = PeerId { slot, generation };
        let mut peer = Peer {
            id,
            cookie: CookieGenerator::new(config.public_key.as_bytes()),
            keys,
            endpoint: config.endpoint,
            handshake: Handshake::new(),
            keypairs: Keypairs::default(),
            staged: VecDeque::new(),
            timers: Timers::default(),
            stats: Counters::default(),
            config,
        };
        peer.timers.kick = peer.config.keepalive_interval().is_some();
        self.by_key.insert(peer.config.public_key.to_bytes(), slot);
        let prefixes = peer.config.allowed_ips.clone();
        self.core.arm(peer.next_deadline(self.core.now_hint));
        if let Some(entry) = self.peers.get_mut(slot as usize) {
            *entry = Some(peer);
        }
        self.set_allowed_ips(slot, &prefixes);
        Ok(id)
    }

    /// Re-applies a peer's configuration. With an unchanged public key the
    /// sessions, handshake state, staged packets and statistics are kept (no
    /// new handshake is caused); the endpoint is only replaced if the
    /// configured endpoint changed (so a roamed endpoint survives a re-apply).
    /// A different public key makes it a new identity: all state is reset.
    pub fn update_peer(&mut self, id: PeerId, config: PeerConfig) -> Result<(), DeviceError> {
        let old_key = self
            .peer(id)
            .ok_or(DeviceError::UnknownPeer)?
            .config
            .public_key;
        let slot = id.slot;
        if old_key != config.public_key {
            let mut keys = self.validate_key(&config.public_key, Some(slot))?;
            keys.set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
            let now_hint = self.core.now_hint;
            let new_key = config.public_key.to_bytes();
            let peer = self.peer_mut(id).ok_or(DeviceError::UnknownPeer)?;
            let mut released: Vec<u32> = peer.keypairs.clear();
            released.extend(peer.handshake.local_index.take());
            peer.handshake = Handshake::new();
            peer.keys = keys;
            peer.cookie = CookieGenerator::new(config.public_key.as_bytes());
            peer.staged.clear();
            peer.timers = Timers::default();
            peer.stats = Counters::default();
            peer.endpoint = config.endpoint;
            peer.timers.kick = config.keepalive_interval().is_some();
            peer.config = config;
            let deadline = peer.next_deadline(now_hint);
            let prefixes = peer.config.allowed_ips.clone();
            for idx in released {
                self.core.release_index(idx);
            }
            self.core.transmits.retain(|t| t.slot != slot);
            self.by_key.remove(old_key.as_bytes());
            self.by_key.insert(new_key, slot);
            self.core.arm(deadline);
            self.set_allowed_ips(slot, &prefixes);
            return Ok(());
        }
        let now_hint = self.core.now_hint;
        let peer = self.peer_mut(id).ok_or(DeviceError::UnknownPeer)?;
        peer.keys
            .set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
        if config.endpoint != peer.config.endpoint && config.endpoint.is_some() {
            peer.endpoint = config.endpoint;
        }
        let old_ka = peer.config.keepalive_interval();
        let new_ka = config.keepalive_interval();
        if old_ka != new_ka {
            match new_ka {
                None => peer.timers.persistent_keepalive = None,
                Some(_) if old_ka.is_none() => peer.timers.kick = true,
                Some(secs) => {
                    peer.timers.persistent_keepalive =
                        Some(now_hint + Duration::from_secs(u64::from(secs)));
                }
            }
        }
        let prefixes_changed = peer.config.allowed_ips != config.allowed_ips;
        peer.config = config;
        let deadline = peer.next_deadline(now_hint);
        let prefixes = peer.config.allowed_ips.clone();
        self.core.arm(deadline);
        if prefixes_changed {
            self.set_allowed_ips(slot, &prefixes);
        }
        Ok(())
    }

    /// Removes a peer, zeroizing its keys and dropping its queued packets.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<PeerConfig, DeviceError> {
        self.peer(id).ok_or(DeviceError::UnknownPeer)?;
        let slot = id.slot;
        let Some(mut peer) = self.peers.get_mut(slot as usize).and_then(Option::take) else {
            return Err(DeviceError::UnknownPeer);
        };
        for idx in peer.keypairs.clear() {
            self.core.release_index(idx);
        }
        if let Some(idx) = peer.handshake.local_index.take() {
            self.core.release_index(idx);
        }
        self.core.transmits.retain(|t| t.slot != slot);
        self.by_key.remove(peer.config.public_key.as_bytes());
        self.allowed_ips.retain(|v| *v != slot);
        if let Some(g) = self.generations.get_mut(slot as usize) {
            *g = g.wrapping_add(1);
        }
        self.free_slots.push(slot);
        Ok(peer.config.clone())
    }

    /// Looks a peer up by public key.
    pub fn peer_by_public_key(&self, key: &PublicKey) -> Option<PeerId> {
        let slot = *self.by_key.get(key.as_bytes())?;
        self.peers
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|p| p.id)
    }

    /// All peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.iter().flatten().map(|p| p.id)
    }

    /// A peer's configuration as last applied.
    pub fn peer_config(&self, id: PeerId) -> Option<&PeerConfig> {
        self.peer(id).map(|p| &p.config)
    }

    /// The prefixes currently routed to a peer (a prefix re-assigned to
    /// another peer no longer shows here).
    pub fn allowed_ips_of(&self, id: PeerId) -> Vec<IpPrefix> {
        if self.peer(id).is_none() {
            return Vec::new();
        }
        self.allowed_ips
            .entries()
            .into_iter()
            .filter(|(_, s)| *s == id.slot)
            .map(|(p, _)| p)
            .collect()
    }

    /// The peer an inner destination address routes to.
    pub fn route(&self, addr: std::net::IpAddr) -> Option<PeerId> {
        let slot = self.allowed_ips.lookup(addr)?;
        self.peers
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|p| p.id)
    }

    /// Per-peer status.
    pub fn peer_stats(&self, id: PeerId) -> Option<PeerStats> {
        let p = self.peer(id)?;
        Some(PeerStats {
            public_key: p.config.public_key,
            endpoint: p.endpoint,
            rx_bytes: p.stats.rx_bytes,
            tx_bytes: p.stats.tx_bytes,
            last_handshake: p.stats.last_handshake,
            handshake_attempts: p.stats.handshake_attempts,
            handshakes_completed: p.stats.handshakes_completed,
            persistent_keepalive: p.config.keepalive_interval(),
            session_established: p
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(self.core.now_hint)),
            keypairs: p.keypairs.count(),
            staged_packets: p.staged.len(),
        })
    }

    /// Device-wide drop counters.
    pub fn drop_counters(&self) -> &DropCounters {
        &self.core.drops
    }

    /// One drop counter.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.core.drops.get(reason)
    }

    /// Starts a handshake with a peer now (rate limited to one per
    /// REKEY_TIMEOUT, like every initiation). The initiation comes out of
    /// `poll_transmit`.
    pub fn initiate_handshake(&mut self, id: PeerId, now: Instant) -> Result<(), DeviceError> {
        self.core.observe(now);
        let peer = self
            .peers
            .get_mut(id.slot as usize)
            .and_then(Option::as_mut)
            .filter(|p| p.id == id)
            .ok_or(DeviceError::UnknownPeer)?;
        if peer.endpoint.is_none() {
            return Err(DeviceError::NoEndpoint);
        }
        send_initiation(&mut self.core, peer, now, false);
        let d = peer.next_deadline(self.core.now_hint);
        self.core.arm(d);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Hot path: TUN -> network

    /// Encrypts one packet read from the TUN device, in place.
    ///
    /// `buf[TUN_HEADROOM..TUN_HEADROOM + payload_len]` holds the IP packet;
    /// `buf` must extend at least `TUN_TAILROOM` bytes past it (see
    /// [`tun_buffer_len`]). On `Send { dst, len }` the datagram is `buf[..len]`.
    /// Allocates only when the packet has to be staged.
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> TunResult {
        let core = &mut self.core;
        core.observe(now);
        let Some(payload) = buf.get(TUN_HEADROOM..TUN_HEADROOM.saturating_add(payload_len)) else {
            return TunResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let Some(dst_ip) = ip::destination(payload) else {
            return TunResult::Drop(core.drop_packet(DropReason::InvalidInnerPacket));
        };
        let Some(slot) = self.allowed_ips.lookup(dst_ip) else {
            return TunResult::Drop(core.drop_packet(DropReason::NoRoute));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return TunResult::Drop(core.drop_packet(DropReason::NoRoute));
        };
        let Some(dst) = peer.endpoint else {
            return TunResult::Drop(core.drop_packet(DropReason::NoEndpoint));
        };
        let padded = core.padded_len(payload_len);
        if buf.len() < TUN_HEADROOM + padded + AEAD_TAG_LEN {
            return TunResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        }
        let usable = peer.staged.is_empty()
            && peer
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(now));
        if usable
            && let Some(kp) = peer.keypairs.current.as_mut()
            && let Ok(len) = kp.seal(buf, payload_len, padded)
        {
            peer.stats.tx_bytes += len as u64;
            after_packet_sent(core, peer, now, true);
            keep_key_fresh_sending(core, peer, now);
            core.arm(peer.next_deadline(core.now_hint));
            return TunResult::Send { dst, len };
        }
        let payload = buf
            .get(TUN_HEADROOM..TUN_HEADROOM + payload_len)
            .unwrap_or_default();
        stage_packet(core, peer, payload);
        flush_staged(core, peer, now);
        core.arm(peer.next_deadline(core.now_hint));
        TunResult::Queued { peer: peer.id }
    }

    // -----------------------------------------------------------------------
    // Hot path: network -> TUN

    /// Processes one received datagram `buf[..len]` from `src`.
    ///
    /// Transport data is decrypted in place (`ToTun`); a handshake response
    /// or cookie reply to an initiation is written into `buf` (`Reply`).
    /// Bad input is dropped and counted, never answered and never panics.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> NetResult {
        self.core.observe(now);
        let Some(data) = buf.get(..len) else {
            return NetResult::Drop(self.core.drop_packet(DropReason::BufferTooSmall));
        };
        let ty = match MessageType::from_header(data) {
            Ok(t) => t,
            Err(WireError::UnknownType(_)) => {
                return NetResult::Drop(self.core.drop_packet(DropReason::UnknownMessageType));
            }
            Err(_) => return NetResult::Drop(self.core.drop_packet(DropReason::Malformed)),
        };
        match ty {
            MessageType::TransportData => self.handle_transport(src, buf, len, now),
            MessageType::HandshakeInitiation | MessageType::HandshakeResponse => {
                let core = &mut self.core;
                match self
                    .gate
                    .triage
                    .process(&mut core.drops, &mut core.rng, src, buf, len, now)
                {
                    GateResult::Pass(msg) => self.finish_gated(msg, buf, now),
                    GateResult::Reply { dst, len } => NetResult::Reply { dst, len },
                    GateResult::Drop(r) => NetResult::Drop(r),
                }
            }
            MessageType::CookieReply => self.handle_cookie_reply(buf, len, now),
        }
    }

    fn handle_transport(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> NetResult {
        let core = &mut self.core;
        let Some(msg) = buf.get_mut(..len) else {
            return NetResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let (receiver, counter) = match TransportData::new_checked(&*msg) {
            Ok(v) => (v.receiver_index(), v.counter()),
            Err(_) => return NetResult::Drop(core.drop_packet(DropReason::Malformed)),
        };
        let Some(&slot) = core.index.get(&receiver) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let kps = &mut peer.keypairs;
        let which = if kps
            .current
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            Slot::Current
        } else if kps
            .previous
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            Slot::Previous
        } else if kps.next.as_ref().is_some_and(|k| k.local_index == receiver) {
            Slot::Next
        } else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let kp = match which {
            Slot::Current => kps.current.as_mut(),
            Slot::Previous => kps.previous.as_mut(),
            Slot::Next => kps.next.as_mut(),
        };
        let Some(kp) = kp else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        if !kp.can_receive(now) {
            return NetResult::Drop(core.drop_packet(DropReason::KeyExpired));
        }
        if !kp.replay.would_accept(counter) {
            return NetResult::Drop(core.drop_packet(DropReason::Replay));
        }
        let Some(ciphertext) = msg.get_mut(TRANSPORT_HEADER_LEN..) else {
            return NetResult::Drop(core.drop_packet(DropReason::Malformed));
        };
        let Some(plain_len) = kp.open(counter, ciphertext) else {
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        if !kp.replay.validate(counter) {
            return NetResult::Drop(core.drop_packet(DropReason::Replay));
        }

        // Authenticated.
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        if which == Slot::Next {
            if let Some(old) = peer.keypairs.promote_next() {
                core.release_index(old);
            }
            timers_handshake_complete(core, peer, now);
            core.push_event(Event::HandshakeCompleted {
                peer: peer.id,
                initiator: false,
            });
            flush_staged(core, peer, now);
        }
        keep_key_fresh_receiving(core, peer, now);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);
        if plain_len == 0 {
            core.arm(peer.next_deadline(core.now_hint));
            return NetResult::Done;
        }
        timers_data_received(peer, now);
        core.arm(peer.next_deadline(core.now_hint));

        let plain = msg
            .get(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plain_len)
            .unwrap_or_default();
        let Some((src_ip, ip_len)) = ip::source_and_len(plain) else {
            return NetResult::Drop(core.drop_packet(DropReason::InvalidInnerPacket));
        };
        if self.allowed_ips.lookup(src_ip) != Some(slot) {
            return NetResult::Drop(core.drop_packet(DropReason::SourceCheck));
        }
        NetResult::ToTun {
            offset: TRANSPORT_HEADER_LEN,
            len: ip_len,
            peer: peer.id,
        }
    }

    /// Finishes a handshake message that passed a [`HandshakeGate`] (see
    /// [`crate::gate`]): for an initiation, the peer lookup, timestamp
    /// decryption, replay and per-peer rate checks, then the response
    /// (written to `buf[..HANDSHAKE_RESPONSE_LEN]`, `Reply`); for a response,
    /// the index lookup and its DH (`Done`, staged packets come out of
    /// `poll_transmit`). Only authenticated messages cost more than a hash
    /// here. `buf` must hold at least `MAX_HANDSHAKE_LEN` bytes.
    pub fn handle_gated(&mut self, msg: GatedHandshake, buf: &mut [u8], now: Instant) -> NetResult {
        self.core.observe(now);
        self.finish_gated(msg, buf, now)
    }

    fn finish_gated(&mut self, msg: GatedHandshake, buf: &mut [u8], now: Instant) -> NetResult {
        let src = msg.src;
        match msg.msg {
            Gated::Initiation(partial) => self.handle_initiation(src, partial, buf, now),
            Gated::Response(bytes) => self.handle_response(src, &bytes, now),
        }
    }

    fn handle_initiation(
        &mut self,
        src: SocketAddr,
        mut partial: InitiationPartial,
        buf: &mut [u8],
        now: Instant,
    ) -> NetResult {
        let len = HANDSHAKE_INITIATION_LEN;
        let core = &mut self.core;
        let Some(&slot) = self.by_key.get(&partial.remote_static) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownPeer));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownPeer));
        };
        let ts = match noise::consume_initiation_timestamp(&mut partial, &peer.keys) {
            Ok(ts) => ts,
            Err(e) => return NetResult::Drop(core.drop_packet(handshake_drop(e))),
        };
        if !ts.is_after(&peer.handshake.latest_timestamp) {
            return NetResult::Drop(core.drop_packet(DropReason::ReplayedInitiation));
        }
        if peer
            .handshake
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) < HANDSHAKE_INITIATION_RATE)
        {
            return NetResult::Drop(core.drop_packet(DropReason::HandshakeFlood));
        }

        // Authenticated initiation: it supersedes any handshake of ours in flight.
        release_handshake_index(core, peer);
        noise::commit_initiation(&mut peer.handshake, &partial, ts, now);
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);

        let idx = core.new_index(slot);
        let seed = Zeroizing::new(core.random32());
        let keys = match noise::create_response(&peer.keys, &mut peer.handshake, *seed, idx, buf) {
            Ok(k) => k,
            Err(e) => {
                core.release_index(idx);
                core.arm(peer.next_deadline(core.now_hint));
                return NetResult::Drop(core.drop_packet(handshake_drop(e)));
            }
        };
        if let Some(resp) = buf.get_mut(..HANDSHAKE_RESPONSE_LEN) {
            peer.cookie.add_macs(resp, field::RESP_MAC1, now);
        }
        let Some(kp) = Keypair::new(&keys, idx, now, false) else {
            core.release_index(idx);
            core.arm(peer.next_deadline(core.now_hint));
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        for old in peer.keypairs.install(kp).into_iter().flatten() {
            core.release_index(old);
        }
        timers_session_derived(peer, now);
        after_packet_sent(core, peer, now, false);
        peer.stats.tx_bytes += HANDSHAKE_RESPONSE_LEN as u64;
        core.arm(peer.next_deadline(core.now_hint));
        NetResult::Reply {
            dst: src,
            len: HANDSHAKE_RESPONSE_LEN,
        }
    }

    fn handle_response(
        &mut self,
        src: SocketAddr,
        bytes: &[u8; HANDSHAKE_RESPONSE_LEN],
        now: Instant,
    ) -> NetResult {
        let len = HANDSHAKE_RESPONSE_LEN;
        let view = HandshakeResponse::new_unchecked(&bytes[..]);
        let core = &mut self.core;
        let receiver = view.receiver_index();
        let Some(&slot) = core.index.get(&receiver) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        if peer.handshake.local_index != Some(receiver)
            || peer.handshake.stage != Stage::InitiationCreated
        {
            return NetResult::Drop(core.drop_packet(DropReason::UnexpectedHandshake));
        }
        let keys = match noise::consume_response(
            core.private_key.secret(),
            &peer.keys,
            &mut peer.handshake,
            &view,
        ) {
            Ok(k) => k,
            Err(e) => return NetResult::Drop(core.drop_packet(handshake_drop(e))),
        };
        let Some(idx) = peer.handshake.local_index.take() else {
            return NetResult::Drop(core.drop_packet(DropReason::UnexpectedHandshake));
        };
        let Some(kp) = Keypair::new(&keys, idx, now, true) else {
            core.release_index(idx);
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        for old in peer.keypairs.install(kp).into_iter().flatten() {
            core.release_index(old);
        }
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);
        timers_session_derived(peer, now);
        timers_handshake_complete(core, peer, now);
        core.push_event(Event::HandshakeCompleted {
            peer: peer.id,
            initiator: true,
        });
        send_keepalive(core, peer, now);
        core.arm(peer.next_deadline(core.now_hint));
        NetResult::Done
    }

    fn handle_cookie_reply(&mut self, buf: &mut [u8], len: usize, now: Instant) -> NetResult {
        let core = &mut self.core;
        let Some(data) = buf.get(..len) else {
            return NetResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let view = match CookieReply::new_checked(data) {
            Ok(v) => v,
            Err(_) => return NetResult::Drop(core.drop_packet(DropReason::Malformed)),
        };
        let Some(&slot) = core.index.get(&view.receiver_index()) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        match peer.cookie.consume_reply(&view, now) {
            Ok(()) => NetResult::Done,
            Err(CookieError::NoPendingMac1) => {
                NetResult::Drop(core.drop_packet(DropReason::UnexpectedCookie))
            }
            Err(CookieError::Decrypt) => {
                NetResult::Drop(core.drop_packet(DropReason::DecryptFailed))
            }
        }
    }

    // -----------------------------------------------------------------------
    // Timers and polling

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.observe(now);
        // Every change to a peer timer lowers `next_deadline` (`Core::arm`),
        // so nothing can be due before it; with nothing armed, nothing is due.
        match self.core.next_deadline {
            Some(d) if now >= d => {}
            _ => return,
        }
        self.core.next_deadline = None;
        let core = &mut self.core;
        for peer in self.peers.iter_mut().flatten() {
            run_timers(core, peer, now);
            let d = peer.next_deadline(core.now_hint);
            core.arm(d);
        }
    }

    /// When `handle_timeout` should next be called (`None`: no timer armed).
    /// May be early (a timer was cancelled); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.next_deadline
    }

    /// Copies the next queued datagram (handshake initiation, keepalive or
    /// flushed staged packet) into `buf`, returning its destination and
    /// length. A datagram that does not fit is dropped (`BufferTooSmall`);
    /// `buf` of `MAX_HANDSHAKE_LEN.max(mtu + TUN_HEADROOM + TUN_TAILROOM)`
    /// bytes always suffices.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(t) = self.core.transmits.pop_front() {
            match buf.get_mut(..t.data.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&t.data);
                    return Some((t.dst, t.data.len()));
                }
                None => {
                    self.core.drop_packet(DropReason::BufferTooSmall);
                }
            }
        }
        None
    }

    /// Number of datagrams waiting for `poll_transmit`.
    pub fn pending_transmits(&self) -> usize {
        self.core.transmits.len()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }
}
