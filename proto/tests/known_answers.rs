//! Known-answer tests for the primitives and encodings.

use std::time::{Duration, UNIX_EPOCH};

use netman_proto::crypto::{self, CryptoError};
use netman_proto::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
use netman_proto::noise::{INITIAL_CHAINING_KEY, INITIAL_HASH};
use netman_proto::tai64n::Tai64N;

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

#[test]
fn initial_chaining_key_and_hash() {
    let c0 = hex32("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36");
    let h0 = hex32("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3");
    assert_eq!(crypto::initial_chaining_key(), c0);
    assert_eq!(crypto::initial_hash(), h0);
    assert_eq!(INITIAL_CHAINING_KEY, c0);
    assert_eq!(INITIAL_HASH, h0);
    assert_eq!(
        crypto::hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]),
        c0
    );
}

#[test]
fn hkdf_blake2s_vectors() {
    // (key, input, t1, t2, t3) -- the vectors of wireguard-go's kdf_test.go.
    let vectors = [
        (
            "746573742d6b6579",
            "746573742d696e707574",
            "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
            "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
            "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
        ),
        (
            "776972656775617264",
            "776972656775617264",
            "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
            "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
            "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
        ),
        (
            "",
            "",
            "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
            "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
            "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
        ),
    ];
    for (key, input, t1, t2, t3) in vectors {
        let (key, input) = (hex(key), hex(input));
        let (t1, t2, t3) = (hex32(t1), hex32(t2), hex32(t3));
        assert_eq!(crypto::kdf1(&key, &input), t1);
        assert_eq!(crypto::kdf2(&key, &input), (t1, t2));
        assert_eq!(crypto::kdf3(&key, &input), (t1, t2, t3));
    }
}

#[test]
fn hmac_blake2s_long_key_is_hashed_first() {
    // RFC 2104: a key longer than the 64-byte block is replaced by its hash.
    let long = [0x5au8; 100];
    let hashed = crypto::hash(&[&long]);
    assert_eq!(
        crypto::hmac(&long, &[b"data"]),
        crypto::hmac(&hashed, &[b"data"])
    );
    // A short key is zero-padded: trailing zeros do not change the MAC.
    assert_eq!(
        crypto::hmac(b"k", &[b"data"]),
        crypto::hmac(b"k\0\0", &[b"data"])
    );
}

const RFC8439_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
const RFC8439_CIPHERTEXT: &str = concat!(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
    "3ff4def08e4b7a9de576d26586cec64b6116"
);
const RFC8439_TAG: &str = "1ae10b594f09e26a7e902ecbd0600691";

fn rfc8439_key() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}

#[test]
fn rfc8439_aead_vector_chacha20poly1305_crate() {
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let expected = [hex(RFC8439_CIPHERTEXT), hex(RFC8439_TAG)].concat();
    let mut out = vec![0u8; RFC8439_PLAINTEXT.len() + 16];
    crypto::aead_seal_nonce(&rfc8439_key(), &nonce, RFC8439_PLAINTEXT, &aad, &mut out).unwrap();
    assert_eq!(out, expected);
    let mut back = vec![0u8; RFC8439_PLAINTEXT.len()];
    crypto::aead_open_nonce(&rfc8439_key(), &nonce, &out, &aad, &mut back).unwrap();
    assert_eq!(back, RFC8439_PLAINTEXT);
    out[0] ^= 1;
    assert_eq!(
        crypto::aead_open_nonce(&rfc8439_key(), &nonce, &out, &aad, &mut back),
        Err(CryptoError::Aead)
    );
    assert!(back.iter().all(|b| *b == 0), "plaintext wiped on failure");
}

#[test]
fn rfc8439_aead_vector_ring() {
    // The transport path uses ring; check it against the same vector.
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &rfc8439_key()).unwrap());
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let mut buf = RFC8439_PLAINTEXT.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut buf,
        )
        .unwrap();
    assert_eq!(buf, hex(RFC8439_CIPHERTEXT));
    assert_eq!(tag.as_ref(), &hex(RFC8439_TAG)[..]);
}

#[test]
fn wireguard_nonce_layout() {
    // Counter 0x0807060504030201 -> nonce 00000000 0102030405060708.
    let key = [7u8; 32];
    let counter = 0x0807_0605_0403_0201u64;
    let nonce: [u8; 12] = hex("000000000102030405060708").try_into().unwrap();
    let mut a = [0u8; 20];
    let mut b = [0u8; 20];
    crypto::aead_seal(&key, counter, b"abcd", b"", &mut a).unwrap();
    crypto::aead_seal_nonce(&key, &nonce, b"abcd", b"", &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn xchacha20poly1305_round_trip_and_binding() {
    let key = [1u8; 32];
    let nonce = [2u8; 24];
    let mut out = [0u8; 32];
    crypto::xaead_seal(&key, &nonce, &[3u8; 16], b"mac1", &mut out).unwrap();
    let mut back = [0u8; 16];
    crypto::xaead_open(&key, &nonce, &out, b"mac1", &mut back).unwrap();
    assert_eq!(back, [3u8; 16]);
    assert_eq!(
        crypto::xaead_open(&key, &nonce, &out, b"mac2", &mut back),
        Err(CryptoError::Aead)
    );
}

#[test]
fn x25519_rfc7748_vector_and_key_encoding() {
    let alice_priv = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let alice_pub = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let bob_priv = hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let bob_pub = hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    let a = PrivateKey::from_bytes(alice_priv);
    let b = PrivateKey::from_bytes(bob_priv);
    assert_eq!(a.public_key().to_bytes(), alice_pub);
    assert_eq!(b.public_key().to_bytes(), bob_pub);
    let secret = x25519_dalek::StaticSecret::from(alice_priv);
    assert_eq!(*crypto::dh(&secret, &bob_pub).unwrap(), shared);

    // wg-compatible base64 (standard alphabet, padded, 44 chars).
    let b64 = a.public_key().to_base64();
    assert_eq!(b64, "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
    assert_eq!(PublicKey::from_base64(&b64).unwrap(), a.public_key());
    assert_eq!(format!("{}", a.public_key()), b64);
    assert_eq!(format!("{:?}", a.public_key()), format!("PublicKey({b64})"));
    assert_eq!(b64.parse::<PublicKey>().unwrap(), a.public_key());
    let priv_b64 = a.to_base64();
    assert_eq!(
        priv_b64.as_str(),
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
    );
    let parsed = PrivateKey::from_base64(&format!("{}\n", priv_b64.as_str())).unwrap();
    assert!(parsed == a);
    assert_eq!(parsed.public_key(), a.public_key());
}

#[test]
fn key_parsing_rejects_bad_input() {
    assert_eq!(PublicKey::from_base64(""), Err(KeyError::NotBase64));
    assert_eq!(
        PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"),
        Err(KeyError::NotBase64)
    );
    assert_eq!(
        PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo="),
        Err(KeyError::NotBase64),
        "URL-safe alphabet is not wg's"
    );
    assert!(PublicKey::from_base64("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=").is_err());
    // 44 chars that decode to 31 bytes.
    assert!(PresharedKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==").is_err());
    assert!(PresharedKey::from_base64(&"A".repeat(43)).is_err());
}

#[test]
fn private_key_from_seed_is_clamped_like_wg_genkey() {
    let k = PrivateKey::from_seed([0xff; 32]);
    let b = k.to_bytes();
    assert_eq!(b[0] & 7, 0);
    assert_eq!(b[31] & 0x80, 0);
    assert_eq!(b[31] & 0x40, 0x40);
    // A generated key depends only on the caller's RNG.
    use rand_core::SeedableRng;
    let mut r1 = rand_chacha::ChaCha20Rng::from_seed([9; 32]);
    let mut r2 = rand_chacha::ChaCha20Rng::from_seed([9; 32]);
    assert!(PrivateKey::generate(&mut r1) == PrivateKey::generate(&mut r2));
}

#[test]
fn low_order_points_are_rejected() {
    let secret = x25519_dalek::StaticSecret::from([0x42; 32]);
    let low_order: [&str; 7] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for p in low_order {
        assert_eq!(
            crypto::dh(&secret, &hex32(p)).map(|_| ()),
            Err(CryptoError::LowOrderPoint),
            "{p}"
        );
    }
    let ok = PrivateKey::from_seed([1; 32]).public_key().to_bytes();
    assert!(crypto::dh(&secret, &ok).is_ok());
}

#[test]
fn constant_time_compare() {
    assert!(crypto::ct_eq(b"abc", b"abc"));
    assert!(!crypto::ct_eq(b"abc", b"abd"));
    assert!(!crypto::ct_eq(b"abc", b"ab"));
}

#[test]
fn tai64n_encoding() {
    // Unix epoch = TAI64 label 2^62 + 10.
    let t = Tai64N::from_system_time(UNIX_EPOCH);
    assert_eq!(&t.0[..8], &hex("400000000000000a")[..]);
    assert_eq!(&t.0[8..], &[0, 0, 0, 0]);
    let t = Tai64N::from_system_time(UNIX_EPOCH + Duration::new(1, 123_456_789));
    assert_eq!(&t.0[..8], &hex("400000000000000b")[..]);
    // Nanoseconds whitened down to a multiple of 2^24.
    let ns = u32::from_be_bytes(t.0[8..].try_into().unwrap());
    assert_eq!(ns, 123_456_789 - 123_456_789 % (1 << 24));
    let later = Tai64N::from_system_time(UNIX_EPOCH + Duration::new(1, 200_000_000));
    assert!(later.is_after(&t));
    assert!(!t.is_after(&t));
    let within_whitening = Tai64N::from_system_time(UNIX_EPOCH + Duration::new(1, 123_456_790));
    assert_eq!(within_whitening, t);
}

#[test]
fn mac_accepts_16_and_32_byte_keys_only_up_to_32() {
    assert!(crypto::mac(&[1; 16], &[b"x"]).is_ok());
    assert!(crypto::mac(&[1; 32], &[b"x"]).is_ok());
    assert_eq!(crypto::mac(&[1; 33], &[b"x"]), Err(CryptoError::KeyLength));
    assert_ne!(
        crypto::mac(&[1; 16], &[b"x"]).unwrap(),
        crypto::mac(&[1; 32], &[b"x"]).unwrap()
    );
}
