//! Bad input: every message type at wrong lengths, wrong type bytes, bad
//! mac1, unknown receiver indices, garbage. Everything is dropped with a
//! reason counter, nothing is sent back, nothing panics.

mod common;

use std::net::SocketAddr;

use common::*;
use netman_proto::crypto;
use netman_proto::*;
use proptest::prelude::*;

fn src() -> SocketAddr {
    "198.51.100.200:9999".parse().unwrap()
}

/// Deterministic filler bytes.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Feeds one datagram and checks: the result, that exactly one drop was
/// counted for that reason, and that nothing was sent back.
#[track_caller]
fn expect_drop(dev: &mut Device, data: &[u8], reason: DropReason) {
    while dev.poll_event().is_some() {}
    let before = dev.drop_counters().clone();
    let mut buf = data.to_vec();
    let now = std::time::Instant::now();
    let r = dev.handle_datagram(src(), &mut buf, data.len(), now);
    assert_eq!(
        r,
        NetResult::Drop(reason),
        "len {} type {:?}",
        data.len(),
        data.first()
    );
    let after = dev.drop_counters();
    assert_eq!(after.get(reason), before.get(reason) + 1);
    assert_eq!(after.total(), before.total() + 1);
    assert_eq!(dev.pending_transmits(), 0, "nothing is sent back");
    assert!(dev.poll_event().is_none());
}

fn mac1_for(pk: &PublicKey, msg: &mut [u8], off: usize) {
    let key = crypto::hash(&[crypto::LABEL_MAC1, pk.as_bytes()]);
    let m = crypto::mac(&key, &[&msg[..off]]).unwrap();
    msg[off..off + 16].copy_from_slice(&m);
}

#[test]
fn every_type_at_every_wrong_length() {
    let mut sim = Sim::pair();
    let dev = &mut sim.nodes[1].dev;
    let exact = [(1u8, 148usize), (2, 92), (3, 64)];
    for len in (0..=300).chain([1000, 1500, 9000, 65535]) {
        for ty in 1u8..=4 {
            let mut d = filler(len, len as u64 * 7 + u64::from(ty));
            if len >= 1 {
                d[0] = ty;
            }
            if len >= 4 {
                d[1..4].fill(0);
            }
            let reason = if len < 4 {
                DropReason::Malformed
            } else if ty == 4 {
                if len < 32 {
                    DropReason::Malformed
                } else {
                    DropReason::UnknownIndex
                }
            } else if exact.iter().any(|(t, l)| *t == ty && *l == len) {
                if ty == 3 {
                    DropReason::UnknownIndex
                } else {
                    DropReason::BadMac1
                }
            } else {
                DropReason::Malformed
            };
            expect_drop(dev, &d, reason);
        }
    }
}

#[test]
fn wrong_type_bytes_and_reserved_bytes() {
    let mut sim = Sim::pair();
    sim.send(0, 1, b"x");
    let init = sim.in_flight.pop_front().unwrap().data;
    let dev = &mut sim.nodes[1].dev;
    for ty in (0u8..=255).filter(|t| !(1..=4).contains(t)) {
        let mut d = init.clone();
        d[0] = ty;
        expect_drop(dev, &d, DropReason::UnknownMessageType);
    }
    for pos in 1..4 {
        let mut d = init.clone();
        d[pos] = 0x01;
        expect_drop(dev, &d, DropReason::UnknownMessageType);
    }
    // A valid initiation relabelled as another type is the wrong length for it.
    for ty in [2u8, 3] {
        let mut d = init.clone();
        d[0] = ty;
        expect_drop(dev, &d, DropReason::Malformed);
    }
}

#[test]
fn bad_mac1_on_handshake_messages() {
    let mut sim = Sim::pair();
    sim.send(0, 1, b"x");
    let init = sim.in_flight.pop_front().unwrap().data;
    let dev = &mut sim.nodes[1].dev;
    // Any bit flipped in the covered part or in mac1 itself.
    for bit in (32..132 * 8).step_by(37) {
        let mut d = init.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        expect_drop(dev, &d, DropReason::BadMac1);
    }
    // mac2 is not covered by mac1: the untouched original is still accepted.
    let mut buf = init.clone();
    let r = dev.handle_datagram(src(), &mut buf, init.len(), std::time::Instant::now());
    assert!(matches!(r, NetResult::Reply { len: 92, .. }));
}

#[test]
fn unknown_receiver_indices() {
    let mut sim = Sim::pair();
    let b_pub = sim.nodes[1].private.public_key();
    let dev = &mut sim.nodes[1].dev;
    let mut data = filler(80, 1);
    data[..4].copy_from_slice(&[4, 0, 0, 0]);
    expect_drop(dev, &data, DropReason::UnknownIndex);
    let mut cookie = filler(64, 2);
    cookie[..4].copy_from_slice(&[3, 0, 0, 0]);
    expect_drop(dev, &cookie, DropReason::UnknownIndex);
    // A response with a valid mac1 for B but an index B never issued.
    let mut resp = filler(92, 3);
    resp[..4].copy_from_slice(&[2, 0, 0, 0]);
    mac1_for(&b_pub, &mut resp, 60);
    expect_drop(dev, &resp, DropReason::UnknownIndex);
}

#[test]
fn initiations_with_valid_mac1_but_bad_contents() {
    let mut sim = Sim::pair();
    let b_pub = sim.nodes[1].private.public_key();
    sim.send(0, 1, b"x");
    let init = sim.in_flight.pop_front().unwrap().data;

    // Garbage encrypted static.
    let mut d = init.clone();
    d[40..88].copy_from_slice(&filler(48, 9));
    mac1_for(&b_pub, &mut d, 116);
    expect_drop(&mut sim.nodes[1].dev, &d, DropReason::DecryptFailed);

    // Garbage encrypted timestamp (static decrypts, timestamp does not).
    let mut d = init.clone();
    d[88..116].copy_from_slice(&filler(28, 10));
    mac1_for(&b_pub, &mut d, 116);
    expect_drop(&mut sim.nodes[1].dev, &d, DropReason::DecryptFailed);

    // Low-order ephemerals: rejected at the first Diffie-Hellman.
    for e in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let mut d = init.clone();
        d[8..40].copy_from_slice(&e);
        mac1_for(&b_pub, &mut d, 116);
        expect_drop(&mut sim.nodes[1].dev, &d, DropReason::LowOrderPoint);
    }

    // A well-formed initiation from a key B does not know.
    let c = sim.add_node(3, "192.0.2.3:51820", std::net::Ipv4Addr::new(10, 0, 0, 3));
    sim.connect(c, 1, None, None, true);
    let id = sim.pid(c, 1);
    let now = sim.now;
    sim.nodes[c].dev.initiate_handshake(id, now).unwrap();
    let mut buf = vec![0u8; 2048];
    let (_, len) = sim.nodes[c].dev.poll_transmit(&mut buf).unwrap();
    expect_drop(&mut sim.nodes[1].dev, &buf[..len], DropReason::UnknownPeer);

    // After all that, the genuine initiation still works.
    let mut buf = init.clone();
    let r = sim.nodes[1]
        .dev
        .handle_datagram(src(), &mut buf, init.len(), sim.now);
    assert!(matches!(r, NetResult::Reply { len: 92, .. }));
}

#[test]
fn tampered_transport_and_cookie_messages() {
    let mut sim = Sim::pair();
    sim.send(0, 1, b"x");
    sim.run();
    assert!(matches!(sim.send(0, 1, b"data"), TunResult::Send { .. }));
    let data = sim.in_flight.pop_front().unwrap().data;
    for bit in (16 * 8..data.len() * 8).step_by(13) {
        let mut d = data.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        expect_drop(&mut sim.nodes[1].dev, &d, DropReason::DecryptFailed);
    }
    // Counter changed: authenticates against a different nonce -> fails.
    let mut d = data.clone();
    d[8] ^= 0x40;
    expect_drop(&mut sim.nodes[1].dev, &d, DropReason::DecryptFailed);
    // Truncated: tag gone.
    expect_drop(
        &mut sim.nodes[1].dev,
        &data[..data.len() - 1],
        DropReason::DecryptFailed,
    );
    // The genuine packet still decrypts (the failures did not touch the window).
    let mut buf = data.clone();
    let r = sim.nodes[1]
        .dev
        .handle_datagram(src(), &mut buf, data.len(), sim.now);
    assert!(matches!(r, NetResult::ToTun { .. }));

    // A cookie reply for a live index that does not decrypt (B's last mac1
    // is that of its handshake response).
    let idx = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let mut cookie = filler(64, 77);
    cookie[..4].copy_from_slice(&[3, 0, 0, 0]);
    cookie[4..8].copy_from_slice(&idx.to_le_bytes());
    expect_drop(&mut sim.nodes[1].dev, &cookie, DropReason::DecryptFailed);
}

#[test]
fn length_beyond_buffer_is_rejected() {
    let mut sim = Sim::pair();
    let mut buf = vec![4u8, 0, 0, 0];
    let r = sim.nodes[1]
        .dev
        .handle_datagram(src(), &mut buf, 100, sim.now);
    assert_eq!(r, NetResult::Drop(DropReason::BufferTooSmall));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Garbage into a device with an established session: never panics,
    /// always a counted drop, never a reply.
    #[test]
    fn garbage_is_dropped_and_counted(msgs in proptest::collection::vec(
        (0u8..6, proptest::collection::vec(any::<u8>(), 0..300)), 1..20)) {
        let mut sim = Sim::pair();
        sim.send(0, 1, b"x");
        sim.run();
        let base_total = sim.nodes[1].dev.drop_counters().total();
        let n = msgs.len() as u64;
        for (ty, mut d) in msgs {
            if d.len() >= 4 && ty < 5 {
                d[0] = ty;
                d[1..4].fill(0);
            }
            let mut buf = d.clone();
            let r = sim.nodes[1].dev.handle_datagram(src(), &mut buf, d.len(), sim.now);
            prop_assert!(matches!(r, NetResult::Drop(_)), "{:?}", r);
            prop_assert_eq!(sim.nodes[1].dev.pending_transmits(), 0);
        }
        prop_assert_eq!(sim.nodes[1].dev.drop_counters().total(), base_total + n);
        // And the session still works.
        let sent = matches!(sim.send(0, 1, b"still fine"), TunResult::Send { .. });
        prop_assert!(sent);
        sim.run();
        let last = sim.payloads(1).pop();
        prop_assert_eq!(last, Some(b"still fine".to_vec()));
    }
}
