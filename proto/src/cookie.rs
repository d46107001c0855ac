//! mac1/mac2 and cookie replies (WireGuard whitepaper §5.4.4, §5.4.7).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand_core::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::consts::{COOKIE_REPLY_LEN, COOKIE_SECRET_LATENCY, COOKIE_SECRET_MAX_AGE};
use crate::crypto::{self, LABEL_COOKIE, LABEL_MAC1};
use crate::wire::{CookieReply, CookieReplyRepr};

/// Failure to consume a cookie reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CookieError {
    #[error("no handshake message with a mac1 is outstanding")]
    NoPendingMac1,
    #[error("cookie reply failed to decrypt")]
    Decrypt,
}

fn mac_over(key: &[u8], msg: &[u8], end: usize) -> Option<[u8; 16]> {
    let covered = msg.get(..end)?;
    crypto::mac(key, &[covered]).ok()
}

fn stored_mac(msg: &[u8], off: usize) -> Option<[u8; 16]> {
    msg.get(off..off + 16).and_then(|s| s.try_into().ok())
}

fn verify_mac(key: &[u8], msg: &[u8], off: usize) -> bool {
    match (mac_over(key, msg, off), stored_mac(msg, off)) {
        (Some(computed), Some(stored)) => crypto::ct_eq(&computed, &stored),
        _ => false,
    }
}

/// Responder side: verifies mac1/mac2 of incoming handshake messages and
/// produces cookie replies. One per device.
#[derive(Clone)]
pub(crate) struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: Zeroizing<[u8; 32]>,
    secret_set: Option<Instant>,
}

impl CookieChecker {
    pub(crate) fn new(our_public: &[u8; 32]) -> Self {
        Self {
            mac1_key: crypto::hash(&[LABEL_MAC1, our_public]),
            cookie_key: crypto::hash(&[LABEL_COOKIE, our_public]),
            secret: Zeroizing::new([0; 32]),
            secret_set: None,
        }
    }

    /// Checks mac1 at `mac1_off` (covering `msg[..mac1_off]`), in constant time.
    pub(crate) fn check_mac1(&self, msg: &[u8], mac1_off: usize) -> bool {
        verify_mac(&self.mac1_key, msg, mac1_off)
    }

    fn secret_valid(&self, now: Instant) -> bool {
        self.secret_set
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_SECRET_MAX_AGE)
    }

    fn cookie_for(&self, src: SocketAddr) -> Option<Zeroizing<[u8; 16]>> {
        let port = src.port().to_be_bytes();
        let m = match src.ip() {
            IpAddr::V4(a) => crypto::mac(&self.secret[..], &[&a.octets(), &port]),
            IpAddr::V6(a) => crypto::mac(&self.secret[..], &[&a.octets(), &port]),
        };
        m.ok().map(Zeroizing::new)
    }

    /// Checks mac2 (a MAC keyed with the cookie for `src`), in constant time.
    pub(crate) fn check_mac2(
        &self,
        msg: &[u8],
        mac2_off: usize,
        src: SocketAddr,
        now: Instant,
    ) -> bool {
        if !self.secret_valid(now) {
            return false;
        }
        match self.cookie_for(src) {
            Some(tau) => verify_mac(&tau[..], msg, mac2_off),
            None => false,
        }
    }

    /// Writes a cookie reply to `msg` (whose mac1 is at `mac1_off` and whose
    /// sender index is `sender_index`) into `out[..64]`, rotating the secret
    /// if it is older than two minutes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_reply<R: RngCore>(
        &mut self,
        msg: &[u8],
        mac1_off: usize,
        sender_index: u32,
        src: SocketAddr,
        now: Instant,
        rng: &mut R,
        out: &mut [u8],
    ) -> Option<usize> {
        let mac1 = stored_mac(msg, mac1_off)?;
        if !self.secret_valid(now) {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_set = Some(now);
        }
        let tau = self.cookie_for(src)?;
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut encrypted_cookie = [0u8; 32];
        crypto::xaead_seal(
            &self.cookie_key,
            &nonce,
            &tau[..],
            &mac1,
            &mut encrypted_cookie,
        )
        .ok()?;
        let repr = CookieReplyRepr {
            receiver_index: sender_index,
            nonce,
            encrypted_cookie,
        };
        let n = repr.emit(out).ok()?;
        debug_assert_eq!(n, COOKIE_REPLY_LEN);
        Some(n)
    }
}

impl Drop for CookieChecker {
    fn drop(&mut self) {
        self.mac1_key.zeroize();
        self.cookie_key.zeroize();
    }
}

/// Initiator side (one per peer): adds mac1/mac2 to outgoing handshake
/// messages and consumes cookie replies.
#[derive(Clone)]
pub(crate) struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    last_mac1: Option<[u8; 16]>,
    cookie: Option<(Zeroizing<[u8; 16]>, Instant)>,
}

impl CookieGenerator {
    pub(crate) fn new(peer_public: &[u8; 32]) -> Self {
        Self {
            mac1_key: crypto::hash(&[LABEL_MAC1, peer_public]),
            cookie_key: crypto::hash(&[LABEL_COOKIE, peer_public]),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills in mac1 (at `mac1_off`) and, with a fresh cookie, mac2 (at
    /// `mac1_off + 16`); otherwise mac2 is zero.
    pub(crate) fn add_macs(&mut self, msg: &mut [u8], mac1_off: usize, now: Instant) {
        let mac2_off = mac1_off + 16;
        let mac1 = mac_over(&self.mac1_key, msg, mac1_off).unwrap_or([0; 16]);
        if let Some(dst) = msg.get_mut(mac1_off..mac2_off) {
            dst.copy_from_slice(&mac1);
        }
        self.last_mac1 = Some(mac1);
        let fresh = self.cookie.as_ref().filter(|(_, set)| {
            now.saturating_duration_since(*set) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        });
        let mac2 = match fresh {
            Some((tau, _)) => mac_over(&tau[..], msg, mac2_off).unwrap_or([0; 16]),
            None => [0; 16],
        };
        if let Some(dst) = msg.get_mut(mac2_off..mac2_off + 16) {
            dst.copy_from_slice(&mac2);
        }
    }

    /// Decrypts a cookie reply to our last message and stores the cookie.
    pub(crate) fn consume_reply(
        &mut self,
        reply: &CookieReply<&[u8]>,
        now: Instant,
    ) -> Result<(), CookieError> {
        let mac1 = self.last_mac1.ok_or(CookieError::NoPendingMac1)?;
        let mut tau = Zeroizing::new([0u8; 16]);
        crypto::xaead_open(
            &self.cookie_key,
            &reply.nonce(),
            &reply.encrypted_cookie(),
            &mac1,
            &mut tau[..],
        )
        .map_err(|_| CookieError::Decrypt)?;
        self.cookie = Some((tau, now));
        self.last_mac1 = None;
        Ok(())
    }
}

impl Drop for CookieGenerator {
    fn drop(&mut self) {
        self.mac1_key.zeroize();
        self.cookie_key.zeroize();
    }
}
