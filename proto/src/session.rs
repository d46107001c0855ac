//! Transport keypairs (ring ChaCha20-Poly1305) and the current/previous/next
//! rotation (wireguard-go `keypair.go`, `noise-protocol.go`).

use std::hint::black_box;
use std::time::Instant;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::consts::{AEAD_TAG_LEN, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, TRANSPORT_HEADER_LEN};
use crate::noise::TransportKeys;
use crate::replay::ReplayFilter;
use crate::wire::TransportDataRepr;

fn ring_key(bytes: &[u8; 32]) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, bytes)
        .ok()
        .map(LessSafeKey::new)
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Failure to encrypt with a keypair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealError {
    /// The send counter reached REJECT_AFTER_MESSAGES.
    Exhausted,
    /// The buffer cannot hold header + padded payload + tag.
    BufferTooSmall,
}

/// One direction-pair of transport keys.
#[derive(Clone)]
pub(crate) struct Keypair {
    send: LessSafeKey,
    recv: LessSafeKey,
    pub(crate) send_counter: u64,
    pub(crate) replay: ReplayFilter,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) created: Instant,
    pub(crate) is_initiator: bool,
    pub(crate) expiry_reported: bool,
}

impl Keypair {
    pub(crate) fn new(
        keys: &TransportKeys,
        local_index: u32,
        created: Instant,
        is_initiator: bool,
    ) -> Option<Box<Self>> {
        // Boxed so that rotating between slots moves a pointer, not the key
        // material (moved-from memory would not be wiped).
        Some(Box::new(Self {
            send: ring_key(&keys.send)?,
            recv: ring_key(&keys.recv)?,
            send_counter: 0,
            replay: ReplayFilter::new(),
            local_index,
            remote_index: keys.remote_index,
            created,
            is_initiator,
            expiry_reported: false,
        }))
    }

    /// Whether this keypair may still send at `now`.
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES
            && now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    /// Whether this keypair may still receive at `now`.
    pub(crate) fn can_receive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
            && self.replay.next_expected() < REJECT_AFTER_MESSAGES
    }

    /// Encrypts `buf[16..16 + payload_len]` in place: zero padding up to
    /// `padded_len`, header in `buf[..16]`, tag after the padded payload.
    /// Returns the message length.
    pub(crate) fn seal(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
        padded_len: usize,
    ) -> Result<usize, SealError> {
        let total = TRANSPORT_HEADER_LEN + padded_len + AEAD_TAG_LEN;
        let msg = buf.get_mut(..total).ok_or(SealError::BufferTooSmall)?;
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::Exhausted);
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        let (header, rest) = msg.split_at_mut(TRANSPORT_HEADER_LEN);
        let (body, tag_space) = rest.split_at_mut(padded_len);
        if let Some(pad) = body.get_mut(payload_len..) {
            pad.fill(0);
        }
        let _ = TransportDataRepr {
            receiver_index: self.remote_index,
            counter,
            encrypted_len: padded_len + AEAD_TAG_LEN,
        }
        .emit_header(header);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
            .map_err(|_| SealError::BufferTooSmall)?;
        tag_space.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Authenticates and decrypts `ciphertext` (payload + tag) in place;
    /// returns the plaintext length. Does not touch the replay window.
    pub(crate) fn open(&self, counter: u64, ciphertext: &mut [u8]) -> Option<usize> {
        self.recv
            .open_in_place(nonce(counter), Aad::empty(), ciphertext)
            .ok()
            .map(|p| p.len())
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        // ring does not zeroize its key objects; overwrite the key material in
        // place with an all-zero key before the memory is released.
        if let Some(z) = ring_key(&[0u8; 32]) {
            self.send = z.clone();
            self.recv = z;
            black_box(&self.send);
            black_box(&self.recv);
        }
        self.replay.reset();
        self.send_counter = 0;
    }
}

/// The three keypair slots of a peer.
#[derive(Default, Clone)]
pub(crate) struct Keypairs {
    pub(crate) current: Option<Box<Keypair>>,
    pub(crate) previous: Option<Box<Keypair>>,
    pub(crate) next: Option<Box<Keypair>>,
}

impl Keypairs {
    /// Indices of all held keypairs.
    pub(crate) fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.local_index)
    }

    pub(crate) fn count(&self) -> usize {
        self.indices().count()
    }

    /// Installs a freshly derived keypair; returns the local indices of
    /// keypairs that were dropped (to be removed from the index table).
    pub(crate) fn install(&mut self, kp: Box<Keypair>) -> [Option<u32>; 3] {
        let mut dropped = [None, None, None];
        if kp.is_initiator {
            if let Some(next) = self.next.take() {
                // The unconfirmed responder keypair is better than the old current.
                dropped[0] = self.previous.replace(next).map(|k| k.local_index);
                dropped[1] = self.current.take().map(|k| k.local_index);
            } else {
                dropped[0] = self.previous.take().map(|k| k.local_index);
                self.previous = self.current.take();
            }
            self.current = Some(kp);
        } else {
            dropped[0] = self.next.replace(kp).map(|k| k.local_index);
            dropped[1] = self.previous.take().map(|k| k.local_index);
        }
        dropped
    }

    /// Called when data arrived on `next`: promotes it to current. Returns the
    /// index of the dropped previous keypair.
    pub(crate) fn promote_next(&mut self) -> Option<u32> {
        let next = self.next.take()?;
        let old_prev = self.previous.take().map(|k| k.local_index);
        self.previous = self.current.take();
        self.current = Some(next);
        old_prev
    }

    /// Drops everything; returns the indices released.
    pub(crate) fn clear(&mut self) -> Vec<u32> {
        let v: Vec<u32> = self.indices().collect();
        self.current = None;
        self.previous = None;
        self.next = None;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn kp(idx: u32, initiator: bool) -> Box<Keypair> {
        let keys = TransportKeys {
            send: Zeroizing::new([idx as u8; 32]),
            recv: Zeroizing::new([idx as u8 ^ 0xff; 32]),
            remote_index: idx + 1000,
        };
        Keypair::new(&keys, idx, Instant::now(), initiator).unwrap()
    }

    fn ids(k: &Keypairs) -> [Option<u32>; 3] {
        [&k.current, &k.previous, &k.next].map(|s| s.as_ref().map(|k| k.local_index))
    }

    #[test]
    fn rotation_follows_wireguard_go() {
        let mut k = Keypairs::default();
        // Initiator: new keypair becomes current, old current becomes previous.
        assert_eq!(k.install(kp(1, true)), [None, None, None]);
        assert_eq!(ids(&k), [Some(1), None, None]);
        assert_eq!(k.install(kp(2, true)), [None, None, None]);
        assert_eq!(ids(&k), [Some(2), Some(1), None]);
        // Responder: new keypair waits in next; previous is dropped.
        assert_eq!(k.install(kp(3, false)), [None, Some(1), None]);
        assert_eq!(ids(&k), [Some(2), None, Some(3)]);
        // A second responder handshake replaces next.
        assert_eq!(k.install(kp(4, false)), [Some(3), None, None]);
        // Data on next promotes it.
        assert_eq!(k.promote_next(), None);
        assert_eq!(ids(&k), [Some(4), Some(2), None]);
        // Initiator while an unconfirmed next exists: next becomes previous,
        // old current is dropped.
        k.install(kp(5, false));
        assert_eq!(ids(&k), [Some(4), None, Some(5)]);
        assert_eq!(k.install(kp(6, true)), [None, Some(4), None]);
        assert_eq!(ids(&k), [Some(6), Some(5), None]);
        assert_eq!(k.clear(), vec![6, 5]);
        assert_eq!(k.count(), 0);
    }

    #[test]
    fn seal_open_round_trip_and_limits() {
        let keys = TransportKeys {
            send: Zeroizing::new([7; 32]),
            recv: Zeroizing::new([7; 32]),
            remote_index: 9,
        };
        let now = Instant::now();
        let mut a = Keypair::new(&keys, 1, now, true).unwrap();
        let mut buf = [0u8; 16 + 16 + 16];
        buf[16..21].copy_from_slice(b"hello");
        assert_eq!(a.seal(&mut buf, 5, 16), Ok(48));
        assert_eq!(&buf[..8], &[4, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(a.open(0, &mut buf[16..]), Some(16));
        assert_eq!(&buf[16..21], b"hello");
        assert_eq!(&buf[21..32], &[0; 11], "padding is zero");
        assert_eq!(a.seal(&mut buf, 5, 32), Err(SealError::BufferTooSmall));
        a.send_counter = REJECT_AFTER_MESSAGES;
        assert_eq!(a.seal(&mut buf, 5, 16), Err(SealError::Exhausted));
        assert!(!a.can_send(now));
        assert!(a.can_receive(now));
        assert!(!a.can_receive(now + REJECT_AFTER_TIME));
    }
}
