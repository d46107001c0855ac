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

/// Why a string is not a key. Never contains the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 44 characters of standard base64 with padding.
    #[error(
        "not valid base64 (expected 44 characters of standard base64 with `=` padding, as printed by `wg pubkey`)"
    )]
    NotBase64,
    /// Decoded to this many bytes instead of 32.
    #[error("decodes to {0} bytes (expected 32)")]
    WrongLength(usize),
}

fn decode_key(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let s = s.trim();
    if s.len() != KEY_BASE64_LEN {
        return Err(KeyError::NotBase64);
    }
    // 44 base64 characters decode to at most 33 bytes.
    let mut buf = Zeroizing::new([0u8; 33]);
    let n = STANDARD
        .decode_slice(s.as_bytes(), &mut buf[..])
        .map_err(|_| KeyError::NotBase64)?;
    if n != KEY_LEN {
        return Err(KeyError::WrongLength(n));
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
    /// Whether this is a point of small order (its order divides 8 on the
    /// curve or 4 on its twist), in any encoding: X25519 with it gives all
    /// zeros whatever the private key, so no handshake with it can work,
    /// and [`Device::add_peer`](crate::Device::add_peer) refuses it. Lets a
    /// configuration be checked before anything is changed.
    pub fn is_low_order(&self) -> bool {
        let mut u = self.0;
        // X25519 ignores the top bit (RFC 7748, section 5).
        u[31] &= 0x7f;
        LOW_ORDER.contains(&u)
    }
}

/// The u-coordinates of the points of small order, as X25519 reads them
/// (little endian, top bit clear), including the non-canonical encodings
/// below 2^255 (u + p). Every clamped scalar is a multiple of 8 and smaller
/// than 8 times either large prime order, so a scalar multiple is zero for
/// exactly these (the same list as libsodium's).
const LOW_ORDER: [[u8; 32]; 7] = [
    // 0: order 2
    [0; 32],
    // 1: order 4
    [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    // order 8
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    // order 8
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    // p - 1: order 4 on the twist
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p: 0 again
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p + 1: 1 again
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

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

/// As base64 (`wg pubkey`), in manifests, engine configs and status.
#[cfg(feature = "serde")]
impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::{Device, DeviceError, PeerConfig};

    /// Every encoding of a low-order point: the list, and each with the
    /// (ignored) top bit set.
    fn low_order_encodings() -> Vec<[u8; 32]> {
        let mut v = Vec::new();
        for u in LOW_ORDER {
            let mut high = u;
            high[31] |= 0x80;
            v.push(u);
            v.push(high);
        }
        v
    }

    /// What the check stands for: X25519 gives all zeros.
    fn dh_is_zero(secret: &StaticSecret, u: [u8; 32]) -> bool {
        !secret
            .diffie_hellman(&DalekPublic::from(u))
            .was_contributory()
    }

    /// Deterministic "random" bytes (xorshift64*).
    fn bytes(seed: &mut u64) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            chunk.copy_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()[..]);
        }
        out
    }

    #[test]
    fn every_encoding_of_a_low_order_point_is_recognised() {
        let encodings = low_order_encodings();
        assert_eq!(encodings.len(), 14);
        let secrets = [
            StaticSecret::from([7u8; 32]),
            StaticSecret::from([0xa5u8; 32]),
        ];
        for u in encodings {
            assert!(PublicKey::from_bytes(u).is_low_order(), "{u:02x?}");
            for s in &secrets {
                assert!(dh_is_zero(s, u), "X25519 with {u:02x?} is not zero");
            }
        }
    }

    #[test]
    fn is_low_order_agrees_with_x25519_and_the_protocol_core() {
        let private = PrivateKey::from_seed([1; 32]);
        let secret = StaticSecret::from(*private.to_bytes());
        let mut dev = Device::new(private, [2; 32], Instant::now(), SystemTime::now());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut keys: Vec<[u8; 32]> = low_order_encodings();
        // Next to each low-order point (one bit off), real keys, and
        // arbitrary bytes.
        for u in LOW_ORDER {
            for bit in [8, 100, 254] {
                let mut n = u;
                n[bit / 8] ^= 1 << (bit % 8);
                keys.push(n);
            }
        }
        for i in 2..34u8 {
            keys.push(PrivateKey::from_seed([i; 32]).public_key().to_bytes());
            keys.push(bytes(&mut seed));
        }
        for u in keys {
            let k = PublicKey::from_bytes(u);
            let low = k.is_low_order();
            assert_eq!(low, dh_is_zero(&secret, u), "{u:02x?}");
            match dev.add_peer(PeerConfig::new(k)) {
                Err(DeviceError::InvalidPublicKey(_)) => assert!(low, "refused {u:02x?}"),
                Ok(id) => {
                    assert!(!low, "accepted the low-order {u:02x?}");
                    dev.remove_peer(id).expect("remove");
                }
                Err(e) => panic!("{u:02x?}: {e}"),
            }
        }
    }
}
