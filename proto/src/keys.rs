//! Key types. Secret keys never implement `Debug`/`Display`, are zeroized on
//! drop and compare in constant time; base64 helpers are compatible with
//! `wg genkey` / `wg pubkey` (standard alphabet with padding, 44 characters).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every WireGuard key.
pub const KEY_LEN: usize = 32;
/// Length of a base64-encoded key.
pub const KEY_BASE64_LEN: usize = 44;

/// Errors parsing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 44 characters of standard base64 with padding.
    #[error("key is not 44 characters of standard base64")]
    InvalidBase64,
    /// Decoded to something other than 32 bytes.
    #[error("key does not decode to 32 bytes")]
    WrongLength,
}

fn decode_key(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let s = s.trim();
    if s.len() != KEY_BASE64_LEN {
        return Err(KeyError::InvalidBase64);
    }
    // 44 base64 characters decode to at most 33 bytes.
    let mut buf = Zeroizing::new([0u8; 33]);
    let n = STANDARD
        .decode_slice(s.as_bytes(), &mut buf[..])
        .map_err(|_| KeyError::InvalidBase64)?;
    if n != KEY_LEN {
        return Err(KeyError::WrongLength);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&buf[..32]);
    Ok(out)
}

/// A Curve25519 private key.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// Wraps 32 raw bytes (clamping happens when the key is used, as in `wg`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut b = bytes;
        let k = PrivateKey(StaticSecret::from(b));
        b.zeroize();
        k
    }

    /// Derives a key from 32 random bytes and clamps it, like `wg genkey`.
    /// The caller supplies the randomness (the core never reads OS entropy).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut b = seed;
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Self::from_bytes(b)
    }

    /// Generates a key from a caller-provided CSPRNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed(*seed)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&self.0).to_bytes())
    }

    /// Raw key bytes (zeroized when the returned value is dropped).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Parses `wg genkey` output.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let b = decode_key(s)?;
        Ok(Self::from_bytes(*b))
    }

    /// `wg genkey`-style base64 (zeroized when dropped). There is deliberately
    /// no `Display`: printing a private key must be explicit.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let b = self.to_bytes();
        Zeroizing::new(STANDARD.encode(&b[..]))
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.0
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}
impl Eq for PrivateKey {}

/// A Curve25519 public key. Public, so it may be printed (as base64).
#[derive(Clone, Copy)]
pub struct PublicKey([u8; 32]);

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte-wise order (public keys are public; only equality is constant-time).
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl PublicKey {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
    /// Raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Raw bytes (copy).
    pub const fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// Parses `wg pubkey` output.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let b = decode_key(s)?;
        Ok(PublicKey(*b))
    }
    /// `wg pubkey`-style base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}
impl Eq for PublicKey {}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}
impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// An optional 32-byte symmetric key mixed into the handshake (`wg genpsk`).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PresharedKey(bytes)
    }
    /// Parses `wg genpsk` output.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let b = decode_key(s)?;
        Ok(PresharedKey(*b))
    }
    /// Base64 form (zeroized when dropped). No `Display`, deliberately.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}
impl Eq for PresharedKey {}
