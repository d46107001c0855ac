//! Checked views and reprs: round trips, wrong lengths and types, garbage.

use netman_proto::wire::*;
use proptest::prelude::*;

fn arr<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    proptest::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap())
}

fn init_repr() -> impl Strategy<Value = HandshakeInitiationRepr> {
    (
        any::<u32>(),
        arr::<32>(),
        arr::<48>(),
        arr::<28>(),
        arr::<16>(),
        arr::<16>(),
    )
        .prop_map(
            |(sender_index, ephemeral, encrypted_static, encrypted_timestamp, mac1, mac2)| {
                HandshakeInitiationRepr {
                    sender_index,
                    ephemeral,
                    encrypted_static,
                    encrypted_timestamp,
                    mac1,
                    mac2,
                }
            },
        )
}

fn resp_repr() -> impl Strategy<Value = HandshakeResponseRepr> {
    (
        any::<u32>(),
        any::<u32>(),
        arr::<32>(),
        arr::<16>(),
        arr::<16>(),
        arr::<16>(),
    )
        .prop_map(
            |(sender_index, receiver_index, ephemeral, encrypted_nothing, mac1, mac2)| {
                HandshakeResponseRepr {
                    sender_index,
                    receiver_index,
                    ephemeral,
                    encrypted_nothing,
                    mac1,
                    mac2,
                }
            },
        )
}

fn cookie_repr() -> impl Strategy<Value = CookieReplyRepr> {
    (any::<u32>(), arr::<24>(), arr::<32>()).prop_map(
        |(receiver_index, nonce, encrypted_cookie)| CookieReplyRepr {
            receiver_index,
            nonce,
            encrypted_cookie,
        },
    )
}

proptest! {
    #[test]
    fn initiation_round_trip(r in init_repr()) {
        let mut buf = [0u8; 148];
        prop_assert_eq!(r.emit(&mut buf), Ok(148));
        prop_assert_eq!(&buf[..4], &[1, 0, 0, 0]);
        let v = HandshakeInitiation::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(HandshakeInitiationRepr::parse(&v).unwrap(), r.clone());
        match Message::parse(&buf).unwrap() {
            Message::HandshakeInitiation(p) => prop_assert_eq!(p.sender_index(), r.sender_index),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn response_round_trip(r in resp_repr()) {
        let mut buf = [0u8; 92];
        prop_assert_eq!(r.emit(&mut buf), Ok(92));
        let v = HandshakeResponse::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(HandshakeResponseRepr::parse(&v).unwrap(), r);
    }

    #[test]
    fn cookie_round_trip(r in cookie_repr()) {
        let mut buf = [0u8; 64];
        prop_assert_eq!(r.emit(&mut buf), Ok(64));
        let v = CookieReply::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(CookieReplyRepr::parse(&v).unwrap(), r);
    }

    #[test]
    fn transport_round_trip(receiver_index: u32, counter: u64, payload in proptest::collection::vec(any::<u8>(), 16..200)) {
        let r = TransportDataRepr { receiver_index, counter, encrypted_len: payload.len() };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit_header(&mut buf).unwrap();
        buf[16..].copy_from_slice(&payload);
        let v = TransportData::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(TransportDataRepr::parse(&v).unwrap(), r);
        prop_assert_eq!(v.encrypted_payload(), &payload[..]);
    }

    /// Any bytes: parsing never panics, and whatever parses re-emits identically.
    #[test]
    fn parse_emit_is_identity_on_valid_messages(mut data in proptest::collection::vec(any::<u8>(), 0..200), ty in 0u8..6) {
        if data.len() >= 4 {
            data[0] = ty;
            data[1..4].fill(0);
        }
        netman_proto::fuzzing::datagram(&data);
    }

    #[test]
    fn unchecked_views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..160)) {
        let mut d = data.clone();
        let mut i = HandshakeInitiation::new_unchecked(&mut d[..]);
        i.set_mac2(&[1; 16]);
        let _ = i.mac2();
        let mut t = TransportData::new_unchecked(&mut d[..]);
        t.set_counter(7);
        let _ = t.encrypted_payload_mut();
    }
}

#[test]
fn exact_lengths_are_enforced() {
    let cases: [(u8, usize); 3] = [(1, 148), (2, 92), (3, 64)];
    for (ty, len) in cases {
        for l in [0, 1, 3, 4, len - 1, len + 1, len + 16, 2000] {
            let mut buf = vec![0u8; l];
            if l >= 1 {
                buf[0] = ty;
            }
            let r = Message::parse(&buf);
            assert!(r.is_err(), "type {ty} length {l} accepted");
            if l >= 4 {
                assert!(
                    matches!(r, Err(WireError::WrongLength { expected, actual, .. }) if expected == len && actual == l),
                    "{r:?}"
                );
            } else {
                assert_eq!(r.unwrap_err(), WireError::Truncated(l));
            }
        }
        let mut ok = vec![0u8; len];
        ok[0] = ty;
        assert!(Message::parse(&ok).is_ok());
    }
    for l in [4, 16, 31] {
        let mut buf = vec![0u8; l];
        buf[0] = 4;
        assert_eq!(
            Message::parse(&buf).unwrap_err(),
            WireError::TransportTooShort(l)
        );
    }
    let mut buf = vec![0u8; 32];
    buf[0] = 4;
    assert!(matches!(
        Message::parse(&buf),
        Ok(Message::TransportData(_))
    ));
}

#[test]
fn type_and_reserved_bytes_are_checked() {
    for ty in [0u8, 5, 0x80, 0xff] {
        let mut buf = vec![0u8; 148];
        buf[0] = ty;
        assert_eq!(
            Message::parse(&buf).unwrap_err(),
            WireError::UnknownType(u32::from(ty))
        );
    }
    for pos in 1..4 {
        let mut buf = vec![0u8; 148];
        buf[0] = 1;
        buf[pos] = 1;
        assert!(matches!(
            Message::parse(&buf),
            Err(WireError::UnknownType(_))
        ));
    }
    // A view checks that the header names its own type.
    let mut buf = [0u8; 148];
    buf[0] = 2;
    assert_eq!(
        HandshakeInitiation::new_checked(&buf[..]).unwrap_err(),
        WireError::WrongType {
            expected: MessageType::HandshakeInitiation,
            actual: MessageType::HandshakeResponse
        }
    );
}

#[test]
fn emit_into_short_buffer_fails_cleanly() {
    let r = CookieReplyRepr {
        receiver_index: 1,
        nonce: [0; 24],
        encrypted_cookie: [0; 32],
    };
    let mut small = [0u8; 63];
    assert_eq!(
        r.emit(&mut small),
        Err(WireError::BufferTooSmall {
            needed: 64,
            available: 63
        })
    );
}

#[test]
fn field_layout_matches_the_whitepaper() {
    let r = HandshakeResponseRepr {
        sender_index: 0x0403_0201,
        receiver_index: 0x0807_0605,
        ephemeral: [0xee; 32],
        encrypted_nothing: [0xaa; 16],
        mac1: [0x11; 16],
        mac2: [0x22; 16],
    };
    let mut b = [0u8; 92];
    r.emit(&mut b).unwrap();
    assert_eq!(&b[..12], &[2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&b[12..44], &[0xee; 32]);
    assert_eq!(&b[44..60], &[0xaa; 16]);
    assert_eq!(&b[60..76], &[0x11; 16]);
    assert_eq!(&b[76..92], &[0x22; 16]);
    let t = TransportDataRepr {
        receiver_index: 0x0403_0201,
        counter: 0x0c0b_0a09_0807_0605,
        encrypted_len: 16,
    };
    let mut b = [0u8; 32];
    t.emit_header(&mut b).unwrap();
    assert_eq!(
        &b[..16],
        &[4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    );
}
