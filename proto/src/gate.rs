//! The front half of handshake processing, split off so that a caller can
//! run it away from the transport path (issue 11, item 6: a handshake flood
//! must not starve established sessions).
//!
//! A [`HandshakeGate`] does, for each handshake initiation or response, the
//! checks that come before any peer state is touched, cheapest first: mac1;
//! the load decision (handshake rate, or the caller's queue depth); under
//! load, mac2 or else a cookie reply; under load, the per-source rate limit;
//! and for an initiation the first Diffie-Hellman (the responder's static
//! key with the initiator's ephemeral) that recovers the initiator's static
//! key. It needs only the device's private key, so it can live on a thread
//! of its own; what passes ([`GatedHandshake`]) goes to
//! [`crate::Device::handle_gated`] on the thread that owns the device, which
//! finishes the message against the peer's state (timestamp decryption with
//! the precomputed static-static DH, replay and per-peer rate checks, and
//! only for an authenticated initiation the DH work of the response).
//! [`crate::Device::handle_datagram`] runs the same gate inline.
//!
//! Sans-IO like the rest of the crate: time, randomness and the queue depth
//! are parameters.

use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::api::{DropCounters, DropReason};
use crate::consts::{
    DEFAULT_UNDER_LOAD_THRESHOLD, HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN,
    MAX_HANDSHAKE_LEN, RATE_LIMIT_BURST, RATE_LIMIT_PACKETS_PER_SECOND,
};
use crate::cookie::CookieChecker;
use crate::hash::SeededState;
use crate::keys::PrivateKey;
use crate::noise::{self, HandshakeError, InitiationPartial};
use crate::ratelimit::{LoadDetector, RateLimiter};
use crate::wire::{HandshakeInitiation, HandshakeResponse, MessageType, field};

/// Whether `data` is a whole handshake initiation (type 1, 148 bytes) or
/// response (type 2, 92 bytes): the messages a [`HandshakeGate`] takes.
/// Looks at the first four bytes and the length only, so a receive loop can
/// classify every datagram before doing anything else with it.
pub fn is_handshake(data: &[u8]) -> bool {
    match MessageType::from_header(data) {
        Ok(MessageType::HandshakeInitiation) => data.len() == HANDSHAKE_INITIATION_LEN,
        Ok(MessageType::HandshakeResponse) => data.len() == HANDSHAKE_RESPONSE_LEN,
        _ => false,
    }
}

/// A handshake message that passed a [`HandshakeGate`], for
/// [`crate::Device::handle_gated`]. Fixed size (no heap); `Send`.
pub struct GatedHandshake {
    pub(crate) src: SocketAddr,
    pub(crate) msg: Gated,
}

pub(crate) enum Gated {
    /// An initiation whose static key was recovered (one DH done).
    Initiation(InitiationPartial),
    /// A response, verbatim.
    Response([u8; HANDSHAKE_RESPONSE_LEN]),
}

impl GatedHandshake {
    /// Where the message came from (the reply goes there).
    pub fn source(&self) -> SocketAddr {
        self.src
    }

    /// Whether it is an initiation (else a response).
    pub fn is_initiation(&self) -> bool {
        matches!(self.msg, Gated::Initiation(_))
    }
}

/// Outcome of [`HandshakeGate::process`].
pub enum GateResult {
    /// Passed: hand it to [`crate::Device::handle_gated`].
    Pass(GatedHandshake),
    /// Under load without a valid mac2: a cookie reply was written to
    /// `buf[..len]` (64 bytes, never more than the message it answers);
    /// send it to `dst`. Counted as [`DropReason::CookieRequired`].
    Reply {
        /// The message's source.
        dst: SocketAddr,
        /// Reply length.
        len: usize,
    },
    /// Dropped and counted; nothing is sent back.
    Drop(DropReason),
}

/// Cheap triage and the pre-authentication DH of handshake messages. One
/// per device identity; see the module documentation.
#[derive(Clone)]
pub struct HandshakeGate {
    pub(crate) triage: Triage,
    rng: ChaCha20Rng,
    drops: DropCounters,
}

/// The gate without its RNG and counters (a device running it inline
/// passes its own).
#[derive(Clone)]
pub(crate) struct Triage {
    private_key: PrivateKey,
    public: [u8; 32],
    checker: CookieChecker,
    load: LoadDetector,
    limiter: RateLimiter,
}

impl HandshakeGate {
    /// A gate for the device with `private_key`; `seed` seeds the cookie
    /// secrets, cookie-reply nonces and the rate limiter's hashing (32 bytes
    /// of OS randomness in production).
    pub fn new(private_key: PrivateKey, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let state = {
            use rand_core::RngCore;
            SeededState::new(rng.next_u64(), rng.next_u64())
        };
        let public = private_key.public_key().to_bytes();
        Self {
            triage: Triage {
                checker: CookieChecker::new(&public),
                private_key,
                public,
                load: LoadDetector::new(DEFAULT_UNDER_LOAD_THRESHOLD),
                limiter: RateLimiter::new(RATE_LIMIT_PACKETS_PER_SECOND, RATE_LIMIT_BURST, state),
            },
            rng,
            drops: DropCounters::default(),
        }
    }

    /// Forces the "under load" state (`Some(true)`: every handshake needs a
    /// valid mac2; `Some(false)`: never) or returns to automatic detection.
    pub fn set_under_load(&mut self, forced: Option<bool>) {
        self.triage.load.forced = forced;
    }

    /// Handshake messages per second above which the gate considers the
    /// device under load (default [`DEFAULT_UNDER_LOAD_THRESHOLD`]).
    pub fn set_load_threshold(&mut self, per_second: u32) {
        self.triage.load.threshold = per_second;
    }

    /// Tells the gate how many handshake messages wait in the caller's
    /// queue in front of it: at an eighth of `capacity` or more the device
    /// is under load for the next second (wireguard-go's rule).
    pub fn note_backlog(&mut self, queued: usize, capacity: usize, now: Instant) {
        if capacity > 0 && queued >= capacity.div_ceil(8) {
            self.triage.load.mark(now);
        }
    }

    /// Whether the gate currently considers the device under load.
    pub fn is_under_load(&self, now: Instant) -> bool {
        self.triage.load.is_under_load(now)
    }

    /// What this gate dropped (and answered with cookie replies), by reason.
    pub fn drop_counters(&self) -> &DropCounters {
        &self.drops
    }

    /// Triage of one handshake message `buf[..len]` from `src` (anything
    /// else is dropped as malformed). A cookie reply is written into `buf`.
    pub fn process(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> GateResult {
        self.triage
            .process(&mut self.drops, &mut self.rng, src, buf, len, now)
    }
}

impl Triage {
    /// [`HandshakeGate::process`], counting into `drops` and drawing cookie
    /// secrets and nonces from `rng` (the device's own when it runs the
    /// gate inline).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn process(
        &mut self,
        drops: &mut DropCounters,
        rng: &mut ChaCha20Rng,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> GateResult {
        let drop = |drops: &mut DropCounters, r: DropReason| {
            drops.bump(r);
            GateResult::Drop(r)
        };
        let Some(data) = buf.get(..len) else {
            return drop(drops, DropReason::BufferTooSmall);
        };
        // A private copy: the reply may be written over `buf`.
        let mut copy = [0u8; MAX_HANDSHAKE_LEN];
        let (mac1_off, sender_index) = match MessageType::from_header(data) {
            Ok(MessageType::HandshakeInitiation) => match HandshakeInitiation::new_checked(data) {
                Ok(v) => (field::INIT_MAC1, v.sender_index()),
                Err(_) => return drop(drops, DropReason::Malformed),
            },
            Ok(MessageType::HandshakeResponse) => match HandshakeResponse::new_checked(data) {
                Ok(v) => (field::RESP_MAC1, v.sender_index()),
                Err(_) => return drop(drops, DropReason::Malformed),
            },
            Ok(_) | Err(_) => return drop(drops, DropReason::Malformed),
        };
        let Some(msg_copy) = copy.get_mut(..len) else {
            return drop(drops, DropReason::Malformed);
        };
        msg_copy.copy_from_slice(data);
        let msg = &copy[..len];
        if !self.checker.check_mac1(msg, mac1_off) {
            return drop(drops, DropReason::BadMac1);
        }
        if self.load.on_handshake(now) {
            if !self.checker.check_mac2(msg, mac1_off + 16, src, now) {
                drops.bump(DropReason::CookieRequired);
                let reply =
                    self.checker
                        .create_reply(msg, mac1_off, sender_index, src, now, rng, buf);
                return match reply {
                    // Never amplify: the reply is at most as long as the message.
                    Some(n) if n <= len => GateResult::Reply { dst: src, len: n },
                    _ => GateResult::Drop(DropReason::CookieRequired),
                };
            }
            if !self.limiter.allow(src.ip(), now) {
                return drop(drops, DropReason::RateLimited);
            }
        }
        if len == HANDSHAKE_RESPONSE_LEN {
            let mut r = [0u8; HANDSHAKE_RESPONSE_LEN];
            r.copy_from_slice(msg);
            return GateResult::Pass(GatedHandshake {
                src,
                msg: Gated::Response(r),
            });
        }
        let view = HandshakeInitiation::new_unchecked(msg);
        match noise::consume_initiation_static(self.private_key.secret(), &self.public, &view) {
            Ok(p) => GateResult::Pass(GatedHandshake {
                src,
                msg: Gated::Initiation(p),
            }),
            Err(e) => drop(drops, handshake_drop(e)),
        }
    }
}

pub(crate) fn handshake_drop(e: HandshakeError) -> DropReason {
    match e {
        HandshakeError::LowOrderPoint => DropReason::LowOrderPoint,
        HandshakeError::Decrypt | HandshakeError::Crypto => DropReason::DecryptFailed,
        HandshakeError::WrongState => DropReason::UnexpectedHandshake,
    }
}
