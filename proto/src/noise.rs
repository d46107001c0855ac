//! The Noise_IKpsk2 handshake as used by WireGuard (whitepaper §5.4.2-5.4.5).
//! Pure functions over explicit state; indices, timestamps and ephemeral
//! randomness are supplied by the caller.

use std::time::Instant;

use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::consts::{HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN};
use crate::crypto::{self, CryptoError};
use crate::tai64n::Tai64N;
use crate::wire::{HandshakeInitiation, HandshakeResponse};

/// `C0 = HASH("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")`.
pub const INITIAL_CHAINING_KEY: [u8; 32] = [
    0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25, 0xd2, 0xd0,
    0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98, 0x8b, 0x78, 0xcd, 0x36,
];
/// `H0 = HASH(C0 || "WireGuard v1 zx2c4 Jason@zx2c4.com")`.
pub const INITIAL_HASH: [u8; 32] = [
    0x22, 0x11, 0xb3, 0x61, 0x08, 0x1a, 0xc5, 0x66, 0x69, 0x12, 0x43, 0xdb, 0x45, 0x8a, 0xd5, 0x32,
    0x2d, 0x9c, 0x6c, 0x66, 0x22, 0x93, 0xe8, 0xb7, 0x0e, 0xe1, 0x9c, 0x65, 0xba, 0x07, 0x9e, 0xf3,
];

/// Why a handshake message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("Diffie-Hellman result is all zero")]
    LowOrderPoint,
    #[error("AEAD decryption failed")]
    Decrypt,
    #[error("internal crypto error")]
    Crypto,
    #[error("message arrived in the wrong handshake state")]
    WrongState,
}

impl From<CryptoError> for HandshakeError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::LowOrderPoint => HandshakeError::LowOrderPoint,
            CryptoError::Aead => HandshakeError::Decrypt,
            CryptoError::Length | CryptoError::KeyLength => HandshakeError::Crypto,
        }
    }
}

/// Per-peer static material: the peer's public key, the preshared key (zero
/// if none) and the precomputed static-static DH.
#[derive(Clone)]
pub(crate) struct PeerKeys {
    pub(crate) remote_static: [u8; 32],
    psk: Zeroizing<[u8; 32]>,
    static_static: Zeroizing<[u8; 32]>,
}

impl PeerKeys {
    pub(crate) fn new(
        our_secret: &StaticSecret,
        remote_static: [u8; 32],
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, CryptoError> {
        let static_static = crypto::dh(our_secret, &remote_static)?;
        Ok(Self {
            remote_static,
            psk: Zeroizing::new(psk.copied().unwrap_or([0; 32])),
            static_static,
        })
    }

    pub(crate) fn set_psk(&mut self, psk: Option<&[u8; 32]>) {
        *self.psk = psk.copied().unwrap_or([0; 32]);
    }
}

/// Handshake progress for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Zeroed,
    InitiationCreated,
    InitiationConsumed,
}

/// One peer's handshake state (wireguard-go's `Handshake`).
#[derive(Clone)]
pub(crate) struct Handshake {
    pub(crate) stage: Stage,
    /// Our index for the handshake in flight (owned until a keypair takes it).
    pub(crate) local_index: Option<u32>,
    pub(crate) remote_index: u32,
    ephemeral: Option<StaticSecret>,
    remote_ephemeral: [u8; 32],
    chaining_key: [u8; 32],
    hash: [u8; 32],
    /// Greatest timestamp seen in an accepted initiation from this peer.
    pub(crate) latest_timestamp: Tai64N,
    pub(crate) last_initiation_consumed: Option<Instant>,
    /// No new initiation before this (REKEY_TIMEOUT plus jitter after the last).
    pub(crate) next_initiation_allowed: Option<Instant>,
}

impl Handshake {
    pub(crate) fn new() -> Self {
        Self {
            stage: Stage::Zeroed,
            local_index: None,
            remote_index: 0,
            ephemeral: None,
            remote_ephemeral: [0; 32],
            chaining_key: [0; 32],
            hash: [0; 32],
            latest_timestamp: Tai64N::ZERO,
            last_initiation_consumed: None,
            next_initiation_allowed: None,
        }
    }

    /// Forgets the secret state of the handshake in flight (not the replay
    /// timestamp or rate-limit times). The caller releases `local_index`.
    pub(crate) fn clear(&mut self) {
        self.stage = Stage::Zeroed;
        self.ephemeral = None;
        self.remote_ephemeral.zeroize();
        self.chaining_key.zeroize();
        self.hash.zeroize();
        self.remote_index = 0;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Symmetric transport keys derived at the end of a handshake.
pub(crate) struct TransportKeys {
    pub(crate) send: Zeroizing<[u8; 32]>,
    pub(crate) recv: Zeroizing<[u8; 32]>,
    pub(crate) remote_index: u32,
}

fn mix_hash(h: &mut [u8; 32], data: &[u8]) {
    *h = crypto::hash(&[&h[..], data]);
}

/// Builds an initiation into `out[..148]` (macs left zero) and moves `hs` to
/// `InitiationCreated`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_initiation(
    our_public: &[u8; 32],
    peer: &PeerKeys,
    hs: &mut Handshake,
    ephemeral_seed: [u8; 32],
    sender_index: u32,
    timestamp: Tai64N,
    out: &mut [u8],
) -> Result<(), HandshakeError> {
    let msg_buf = out
        .get_mut(..HANDSHAKE_INITIATION_LEN)
        .ok_or(HandshakeError::Crypto)?;
    msg_buf.fill(0);
    let mut msg = HandshakeInitiation::new_unchecked(msg_buf);

    let mut ck = Zeroizing::new(INITIAL_CHAINING_KEY);
    let mut h = INITIAL_HASH;
    mix_hash(&mut h, &peer.remote_static);

    let e = StaticSecret::from(ephemeral_seed);
    let e_pub = DalekPublic::from(&e).to_bytes();
    msg.set_ephemeral(&e_pub);
    *ck = crypto::kdf1(&ck[..], &e_pub);
    mix_hash(&mut h, &e_pub);

    let es = crypto::dh(&e, &peer.remote_static)?;
    let (c, mut k) = crypto::kdf2(&ck[..], &es[..]);
    *ck = c;
    let mut enc_static = [0u8; 48];
    let r = crypto::aead_seal(&k, 0, our_public, &h, &mut enc_static);
    k.zeroize();
    r?;
    msg.set_encrypted_static(&enc_static);
    mix_hash(&mut h, &enc_static);

    let (c, mut k) = crypto::kdf2(&ck[..], &peer.static_static[..]);
    *ck = c;
    let mut enc_ts = [0u8; 28];
    let r = crypto::aead_seal(&k, 0, &timestamp.0, &h, &mut enc_ts);
    k.zeroize();
    r?;
    msg.set_encrypted_timestamp(&enc_ts);
    mix_hash(&mut h, &enc_ts);

    msg.set_sender_index(sender_index);
    msg.set_header();

    hs.clear();
    hs.stage = Stage::InitiationCreated;
    hs.ephemeral = Some(e);
    hs.chaining_key = *ck;
    hs.hash = h;
    Ok(())
}

/// First half of consuming an initiation, before the peer is known:
/// recovers the initiator's static key.
pub(crate) struct InitiationPartial {
    pub(crate) remote_static: [u8; 32],
    pub(crate) sender_index: u32,
    remote_ephemeral: [u8; 32],
    chaining_key: Zeroizing<[u8; 32]>,
    hash: [u8; 32],
    encrypted_timestamp: [u8; 28],
}

pub(crate) fn consume_initiation_static(
    our_secret: &StaticSecret,
    our_public: &[u8; 32],
    msg: &HandshakeInitiation<&[u8]>,
) -> Result<InitiationPartial, HandshakeError> {
    let mut ck = Zeroizing::new(INITIAL_CHAINING_KEY);
    let mut h = INITIAL_HASH;
    mix_hash(&mut h, our_public);

    let e_pub = msg.ephemeral();
    *ck = crypto::kdf1(&ck[..], &e_pub);
    mix_hash(&mut h, &e_pub);

    let es = crypto::dh(our_secret, &e_pub)?;
    let (c, mut k) = crypto::kdf2(&ck[..], &es[..]);
    *ck = c;
    let enc_static = msg.encrypted_static();
    let mut remote_static = [0u8; 32];
    let r = crypto::aead_open(&k, 0, &enc_static, &h, &mut remote_static);
    k.zeroize();
    r?;
    mix_hash(&mut h, &enc_static);

    Ok(InitiationPartial {
        remote_static,
        sender_index: msg.sender_index(),
        remote_ephemeral: e_pub,
        chaining_key: ck,
        hash: h,
        encrypted_timestamp: msg.encrypted_timestamp(),
    })
}

/// Second half: decrypts the timestamp with the peer's precomputed static-static DH.
/// On success returns the timestamp; `commit_initiation` stores the state.
pub(crate) fn consume_initiation_timestamp(
    partial: &mut InitiationPartial,
    peer: &PeerKeys,
) -> Result<Tai64N, HandshakeError> {
    let (c, mut k) = crypto::kdf2(&partial.chaining_key[..], &peer.static_static[..]);
    *partial.chaining_key = c;
    let mut ts = [0u8; 12];
    let r = crypto::aead_open(&k, 0, &partial.encrypted_timestamp, &partial.hash, &mut ts);
    k.zeroize();
    r?;
    let enc = partial.encrypted_timestamp;
    mix_hash(&mut partial.hash, &enc);
    Ok(Tai64N(ts))
}

/// Stores a fully validated initiation into the peer's handshake state.
pub(crate) fn commit_initiation(
    hs: &mut Handshake,
    partial: &InitiationPartial,
    ts: Tai64N,
    now: Instant,
) {
    hs.clear();
    hs.stage = Stage::InitiationConsumed;
    hs.remote_index = partial.sender_index;
    hs.remote_ephemeral = partial.remote_ephemeral;
    hs.chaining_key = *partial.chaining_key;
    hs.hash = partial.hash;
    hs.latest_timestamp = ts;
    hs.last_initiation_consumed = Some(now);
}

impl Drop for InitiationPartial {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.remote_ephemeral.zeroize();
    }
}

/// Builds the response into `out[..92]` (macs left zero) and derives the
/// responder's transport keys; the handshake state is cleared.
pub(crate) fn create_response(
    peer: &PeerKeys,
    hs: &mut Handshake,
    ephemeral_seed: [u8; 32],
    sender_index: u32,
    out: &mut [u8],
) -> Result<TransportKeys, HandshakeError> {
    if hs.stage != Stage::InitiationConsumed {
        return Err(HandshakeError::WrongState);
    }
    let msg_buf = out
        .get_mut(..HANDSHAKE_RESPONSE_LEN)
        .ok_or(HandshakeError::Crypto)?;
    msg_buf.fill(0);
    let mut msg = HandshakeResponse::new_unchecked(msg_buf);

    let mut ck = Zeroizing::new(hs.chaining_key);
    let mut h = hs.hash;

    let e = StaticSecret::from(ephemeral_seed);
    let e_pub = DalekPublic::from(&e).to_bytes();
    msg.set_ephemeral(&e_pub);
    *ck = crypto::kdf1(&ck[..], &e_pub);
    mix_hash(&mut h, &e_pub);

    let ee = crypto::dh(&e, &hs.remote_ephemeral)?;
    *ck = crypto::kdf1(&ck[..], &ee[..]);
    let se = crypto::dh(&e, &peer.remote_static)?;
    *ck = crypto::kdf1(&ck[..], &se[..]);

    let (c, mut t, mut k) = crypto::kdf3(&ck[..], &peer.psk[..]);
    *ck = c;
    mix_hash(&mut h, &t);
    t.zeroize();
    let mut empty = [0u8; 16];
    let r = crypto::aead_seal(&k, 0, &[], &h, &mut empty);
    k.zeroize();
    r?;
    msg.set_encrypted_nothing(&empty);
    mix_hash(&mut h, &empty);
    h.zeroize();

    msg.set_sender_index(sender_index);
    msg.set_receiver_index(hs.remote_index);
    msg.set_header();

    let (t1, t2) = crypto::kdf2(&ck[..], &[]);
    let keys = TransportKeys {
        send: Zeroizing::new(t2),
        recv: Zeroizing::new(t1),
        remote_index: hs.remote_index,
    };
    hs.clear();
    Ok(keys)
}

/// Consumes a response to our initiation and derives the initiator's
/// transport keys. `hs` is only modified (cleared) on success.
pub(crate) fn consume_response(
    our_secret: &StaticSecret,
    peer: &PeerKeys,
    hs: &mut Handshake,
    msg: &HandshakeResponse<&[u8]>,
) -> Result<TransportKeys, HandshakeError> {
    if hs.stage != Stage::InitiationCreated {
        return Err(HandshakeError::WrongState);
    }
    let e = hs.ephemeral.as_ref().ok_or(HandshakeError::WrongState)?;
    let mut ck = Zeroizing::new(hs.chaining_key);
    let mut h = hs.hash;

    let e_r = msg.ephemeral();
    *ck = crypto::kdf1(&ck[..], &e_r);
    mix_hash(&mut h, &e_r);

    let ee = crypto::dh(e, &e_r)?;
    *ck = crypto::kdf1(&ck[..], &ee[..]);
    let se = crypto::dh(our_secret, &e_r)?;
    *ck = crypto::kdf1(&ck[..], &se[..]);

    let (c, mut t, mut k) = crypto::kdf3(&ck[..], &peer.psk[..]);
    *ck = c;
    mix_hash(&mut h, &t);
    t.zeroize();
    let mut nothing = [0u8; 0];
    let r = crypto::aead_open(&k, 0, &msg.encrypted_nothing(), &h, &mut nothing);
    k.zeroize();
    h.zeroize();
    r?;

    let (t1, t2) = crypto::kdf2(&ck[..], &[]);
    let keys = TransportKeys {
        send: Zeroizing::new(t1),
        recv: Zeroizing::new(t2),
        remote_index: msg.sender_index(),
    };
    hs.clear();
    Ok(keys)
}
