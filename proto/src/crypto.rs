//! Cryptographic primitives of the WireGuard handshake: BLAKE2s hashing,
//! keyed BLAKE2s MACs, HMAC-BLAKE2s based HKDF, ChaCha20-Poly1305 and
//! XChaCha20-Poly1305 AEADs, and X25519 with rejection of non-contributory
//! (low-order / all-zero) results.
//!
//! Transport data does not use these: it goes through `ring` (see the
//! session module). These functions are public so the known-answer tests can
//! check them; the device uses them internally.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, XChaCha20Poly1305};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// Noise protocol name used as the initial chaining key input.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's prologue / identifier.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label for the mac1 key.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label for the cookie encryption key.
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// Errors of the primitives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// AEAD authentication failed (wrong key, nonce, data or tag).
    #[error("AEAD authentication failed")]
    Aead,
    /// An output buffer had the wrong size.
    #[error("buffer has the wrong length")]
    Length,
    /// A key had a length the primitive does not accept.
    #[error("invalid key length")]
    KeyLength,
    /// The Diffie-Hellman result was all zero (low-order or zero public key).
    #[error("Diffie-Hellman result is non-contributory (low-order point)")]
    LowOrderPoint,
}

/// `HASH(a || b || ...)` with BLAKE2s-256.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `MAC(key, a || b || ...)`: keyed BLAKE2s with a 16-byte output.
/// Keys up to 32 bytes are accepted.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 16], CryptoError> {
    let mut m =
        <Blake2sMac<U16> as KeyInit>::new_from_slice(key).map_err(|_| CryptoError::KeyLength)?;
    for p in parts {
        Update::update(&mut m, p);
    }
    Ok(m.finalize_fixed().into())
}

type HmacBlake2s = hmac::SimpleHmac<Blake2s256>;

/// `HMAC(key, a || b || ...)` with BLAKE2s-256 (RFC 2104, 64-byte block).
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC zero-pads keys shorter than the block and hashes longer ones; doing
    // it here lets us use the infallible fixed-size constructor.
    let mut block = Zeroizing::new([0u8; 64]);
    if key.len() > 64 {
        let mut k = hash(&[key]);
        block[..32].copy_from_slice(&k);
        k.zeroize();
    } else if let Some(dst) = block.get_mut(..key.len()) {
        dst.copy_from_slice(key);
    }
    let mut m = <HmacBlake2s as KeyInit>::new((&*block).into());
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// HKDF with one output: `τ1`.
pub fn kdf1(key: &[u8], input: &[u8]) -> [u8; 32] {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[0x1]]);
    t0.zeroize();
    t1
}

/// HKDF with two outputs: `(τ1, τ2)`.
pub fn kdf2(key: &[u8], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[0x1]]);
    let t2 = hmac(&t0, &[&t1, &[0x2]]);
    t0.zeroize();
    (t1, t2)
}

/// HKDF with three outputs: `(τ1, τ2, τ3)`.
pub fn kdf3(key: &[u8], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[0x1]]);
    let t2 = hmac(&t0, &[&t1, &[0x2]]);
    let t3 = hmac(&t0, &[&t2, &[0x3]]);
    t0.zeroize();
    (t1, t2, t3)
}

fn nonce12(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// ChaCha20-Poly1305 seal with WireGuard's nonce (4 zero bytes, 64-bit LE counter).
/// `out` must be exactly `plaintext.len() + 16` bytes.
pub fn aead_seal(
    key: &[u8; 32],
    counter: u64,
    plaintext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    aead_seal_nonce(key, &nonce12(counter), plaintext, ad, out)
}

/// ChaCha20-Poly1305 seal with an explicit 12-byte nonce (RFC 8439).
pub fn aead_seal_nonce(
    key: &[u8; 32],
    nonce: &[u8; 12],
    plaintext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if out.len() != plaintext.len() + 16 {
        return Err(CryptoError::Length);
    }
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let cipher = ChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), ad, body)
        .map_err(|_| CryptoError::Aead)?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// ChaCha20-Poly1305 open with WireGuard's nonce. `out` must be exactly
/// `ciphertext.len() - 16` bytes; it is zeroed on failure.
pub fn aead_open(
    key: &[u8; 32],
    counter: u64,
    ciphertext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    aead_open_nonce(key, &nonce12(counter), ciphertext, ad, out)
}

/// ChaCha20-Poly1305 open with an explicit 12-byte nonce (RFC 8439).
pub fn aead_open_nonce(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ciphertext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let body_len = ciphertext
        .len()
        .checked_sub(16)
        .ok_or(CryptoError::Length)?;
    if out.len() != body_len {
        return Err(CryptoError::Length);
    }
    let (body, tag) = ciphertext.split_at(body_len);
    out.copy_from_slice(body);
    let cipher = ChaCha20Poly1305::new(key.into());
    let res = cipher.decrypt_in_place_detached(nonce.into(), ad, out, tag.into());
    if res.is_err() {
        out.zeroize();
        return Err(CryptoError::Aead);
    }
    Ok(())
}

/// XChaCha20-Poly1305 seal (cookie replies). `out` is `plaintext.len() + 16` bytes.
pub fn xaead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    plaintext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    if out.len() != plaintext.len() + 16 {
        return Err(CryptoError::Length);
    }
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), ad, body)
        .map_err(|_| CryptoError::Aead)?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// XChaCha20-Poly1305 open (cookie replies). `out` is `ciphertext.len() - 16` bytes.
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ciphertext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let body_len = ciphertext
        .len()
        .checked_sub(16)
        .ok_or(CryptoError::Length)?;
    if out.len() != body_len {
        return Err(CryptoError::Length);
    }
    let (body, tag) = ciphertext.split_at(body_len);
    out.copy_from_slice(body);
    let cipher = XChaCha20Poly1305::new(key.into());
    if cipher
        .decrypt_in_place_detached(nonce.into(), ad, out, tag.into())
        .is_err()
    {
        out.zeroize();
        return Err(CryptoError::Aead);
    }
    Ok(())
}

/// X25519 between a secret and a peer's public key; rejects an all-zero
/// result (the peer's point is of low order, or zero).
pub fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let shared = secret.diffie_hellman(&DalekPublic::from(*public));
    if !shared.was_contributory() {
        return Err(CryptoError::LowOrderPoint);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The initial chaining key `C0 = HASH(CONSTRUCTION)`.
pub fn initial_chaining_key() -> [u8; 32] {
    hash(&[CONSTRUCTION])
}

/// The initial hash `H0 = HASH(C0 || IDENTIFIER)`.
pub fn initial_hash() -> [u8; 32] {
    hash(&[&initial_chaining_key(), IDENTIFIER])
}
