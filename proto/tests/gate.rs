//! The handshake gate on its own (as the engine runs it, on a worker
//! thread), in simulated time: the classification, handshakes completed
//! through gate + `Device::handle_gated`, a flood triaged by the gate
//! without the device doing any work, the load decision from the caller's
//! queue depth, and cookie replies never larger than what they answer.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use netman_proto::consts::{
    COOKIE_REPLY_LEN, DEFAULT_UNDER_LOAD_THRESHOLD, HANDSHAKE_INITIATION_LEN,
    HANDSHAKE_RESPONSE_LEN,
};
use netman_proto::wire::field;
use netman_proto::*;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

fn flooder() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

/// What the engine does with one datagram for node `to`: handshake
/// messages through `gate` and then `handle_gated`, the rest inline.
fn deliver_gated(sim: &mut Sim, gate: &mut HandshakeGate, d: Datagram) -> NetResult {
    if !is_handshake(&d.data) {
        return sim.deliver(d);
    }
    let mut buf = vec![0u8; BUF];
    buf[..d.data.len()].copy_from_slice(&d.data);
    let now = sim.now;
    let r = match gate.process(d.src, &mut buf, d.data.len(), now) {
        GateResult::Pass(msg) => {
            assert_eq!(msg.source(), d.src);
            sim.nodes[d.to].dev.handle_gated(msg, &mut buf, now)
        }
        GateResult::Reply { dst, len } => NetResult::Reply { dst, len },
        GateResult::Drop(r) => NetResult::Drop(r),
    };
    if let NetResult::Reply { dst, len } = r {
        assert!(len <= d.data.len(), "a reply larger than the message");
        let data = buf[..len].to_vec();
        sim.push(d.to, dst, data);
    }
    sim.collect(d.to);
    r
}

/// Delivers everything in flight; node 1's handshakes go through `gate`.
fn run_gated(sim: &mut Sim, gate: &mut HandshakeGate) -> Vec<NetResult> {
    let mut out = Vec::new();
    while let Some(d) = sim.in_flight.pop_front() {
        out.push(if d.to == 1 {
            deliver_gated(sim, gate, d)
        } else {
            sim.deliver(d)
        });
    }
    out
}

fn gate_for(sim: &Sim, node: usize) -> HandshakeGate {
    HandshakeGate::new(sim.nodes[node].private.clone(), [7; 32])
}

/// An initiation as anyone can make it: valid mac1 for `to`, random rest.
fn junk_initiation(to: &PublicKey, sender: u32) -> Vec<u8> {
    let mut m = vec![0u8; HANDSHAKE_INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    for (i, b) in m[8..field::INIT_MAC1].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(sender) as u8;
    }
    let key = crypto::hash(&[crypto::LABEL_MAC1, to.as_bytes()]);
    let mac = crypto::mac(&key, &[&m[..field::INIT_MAC1]]).unwrap();
    m[field::INIT_MAC1..field::INIT_MAC2].copy_from_slice(&mac);
    m
}

fn gate_process(gate: &mut HandshakeGate, sim: &Sim, msg: &[u8]) -> (GateResult, Vec<u8>) {
    let mut buf = msg.to_vec();
    let r = gate.process(flooder(), &mut buf, msg.len(), sim.now);
    (r, buf)
}

#[test]
fn handshake_messages_are_classified_by_type_and_exact_length() {
    let mut init = vec![0u8; HANDSHAKE_INITIATION_LEN];
    init[0] = 1;
    let mut resp = vec![0u8; HANDSHAKE_RESPONSE_LEN];
    resp[0] = 2;
    assert!(is_handshake(&init));
    assert!(is_handshake(&resp));
    assert!(!is_handshake(&init[..HANDSHAKE_INITIATION_LEN - 1]));
    let mut long = init.clone();
    long.push(0);
    assert!(!is_handshake(&long));
    assert!(!is_handshake(&resp[..HANDSHAKE_RESPONSE_LEN - 1]));
    let mut reserved = init.clone();
    reserved[2] = 1;
    assert!(!is_handshake(&reserved), "reserved bytes must be zero");
    for ty in [0u8, 3, 4, 5, 255] {
        let mut m = init.clone();
        m[0] = ty;
        assert!(!is_handshake(&m), "type {ty}");
    }
    let mut cookie = vec![0u8; COOKIE_REPLY_LEN];
    cookie[0] = 3;
    assert!(!is_handshake(&cookie));
    assert!(!is_handshake(&[]));
    assert!(!is_handshake(&[1]));
}

#[test]
fn handshakes_complete_through_the_gate_in_both_roles() {
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    // A initiates: B answers through gate + handle_gated.
    sim.send(0, 1, b"first");
    let results = run_gated(&mut sim, &mut gate_b);
    assert!(
        results
            .iter()
            .any(|r| matches!(r, NetResult::Reply { len: 92, .. })),
        "{results:?}"
    );
    assert_eq!(sim.payloads(1), vec![b"first".to_vec()]);
    assert_eq!(sim.stats(1, 0).handshakes_completed, 1);
    // B initiates (a fresh pair): A's response reaches B through the gate.
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    sim.send(1, 0, b"from b");
    run_gated(&mut sim, &mut gate_b);
    assert_eq!(sim.payloads(0), vec![b"from b".to_vec()]);
    assert_eq!(sim.stats(1, 0).handshakes_completed, 1);
    sim.send(0, 1, b"back");
    run_gated(&mut sim, &mut gate_b);
    assert_eq!(sim.payloads(1), vec![b"back".to_vec()]);
    assert_eq!(gate_b.drop_counters().total(), 0);
    assert_eq!(sim.nodes[1].dev.drop_counters().total(), 0);
}

#[test]
fn a_flood_is_triaged_by_the_gate_and_costs_the_device_nothing() {
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    sim.send(0, 1, b"up");
    run_gated(&mut sim, &mut gate_b);
    let b_pub = sim.nodes[1].private.public_key();
    let device_drops = sim.nodes[1].dev.drop_counters().clone();

    // One simulated second of flood: 2000 initiations with a valid mac1
    // and junk inside, interleaved with the tunnel's own traffic.
    let flood = 2000u32;
    let mut passed = 0;
    let mut cookies = 0;
    for i in 0..flood {
        sim.now += Duration::from_micros(500);
        let msg = junk_initiation(&b_pub, i);
        match gate_process(&mut gate_b, &sim, &msg) {
            (GateResult::Pass(_), _) => passed += 1,
            (GateResult::Reply { dst, len }, buf) => {
                assert_eq!(dst, flooder());
                assert_eq!(len, COOKIE_REPLY_LEN);
                assert!(len <= msg.len());
                assert_eq!(&buf[..4], &[3, 0, 0, 0]);
                assert_eq!(&buf[4..8], &i.to_le_bytes(), "answers the sender index");
                cookies += 1;
            }
            (GateResult::Drop(r), _) => {
                assert!(
                    matches!(r, DropReason::DecryptFailed | DropReason::LowOrderPoint),
                    "{r:?}"
                );
            }
        }
        if i % 100 == 0 {
            sim.send(0, 1, b"ping");
            run_gated(&mut sim, &mut gate_b);
        }
    }
    // Nothing of the junk passes: its static key does not decrypt.
    assert_eq!(passed, 0);
    let g = gate_b.drop_counters();
    // At most the rate threshold got the one DH before load set in; the
    // rest got a cookie reply instead.
    let dh = g.get(DropReason::DecryptFailed) + g.get(DropReason::LowOrderPoint);
    assert!(dh <= u64::from(DEFAULT_UNDER_LOAD_THRESHOLD) + 1, "{dh}");
    assert_eq!(g.get(DropReason::CookieRequired), cookies);
    assert_eq!(dh + cookies, u64::from(flood));
    // The device saw none of it, and the tunnel kept delivering.
    assert_eq!(sim.nodes[1].dev.drop_counters(), &device_drops);
    assert_eq!(sim.payloads(1).len(), 1 + 20);
}

#[test]
fn a_filling_queue_puts_the_gate_under_load_for_a_second() {
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    assert!(!gate_b.is_under_load(sim.now));
    gate_b.note_backlog(127, 1024, sim.now);
    assert!(!gate_b.is_under_load(sim.now), "below an eighth");
    gate_b.note_backlog(128, 1024, sim.now);
    assert!(gate_b.is_under_load(sim.now));
    // Under load, A's genuine initiation (no mac2 yet) gets a cookie reply,
    // the device is not involved, and A retries with mac2.
    sim.send(0, 1, b"loaded");
    let init = sim.in_flight.pop_front().unwrap();
    let r = deliver_gated(&mut sim, &mut gate_b, init);
    assert!(matches!(r, NetResult::Reply { len: 64, .. }), "{r:?}");
    assert_eq!(gate_b.drop_counters().get(DropReason::CookieRequired), 1);
    assert_eq!(sim.nodes[1].dev.drop_counters().total(), 0);
    run_gated(&mut sim, &mut gate_b); // the cookie reaches A
    assert!(sim.payloads(1).is_empty());
    sim.now += Duration::from_millis(999);
    assert!(gate_b.is_under_load(sim.now));
    sim.now += Duration::from_millis(1);
    assert!(!gate_b.is_under_load(sim.now));
    // A's retransmission (with mac2) completes the handshake.
    for _ in 0..10 {
        sim.now += Duration::from_secs(1);
        let now = sim.now;
        sim.nodes[0].dev.handle_timeout(now);
        sim.collect(0);
        run_gated(&mut sim, &mut gate_b);
    }
    assert_eq!(sim.payloads(1), vec![b"loaded".to_vec()]);
}

#[test]
fn under_load_a_source_with_a_valid_mac2_is_rate_limited_before_any_dh() {
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    gate_b.set_under_load(Some(true));
    sim.send(0, 1, b"x");
    run_gated(&mut sim, &mut gate_b); // cookie reply to A
    sim.now += Duration::from_secs(6);
    let now = sim.now;
    sim.nodes[0].dev.handle_timeout(now);
    sim.collect(0);
    let init = sim.in_flight.pop_front().unwrap();
    assert!(is_handshake(&init.data));
    let mut results = Vec::new();
    for _ in 0..20 {
        let mut buf = init.data.clone();
        results.push(gate_b.process(init.src, &mut buf, init.data.len(), sim.now));
    }
    // Burst of 5 passes (to the device, which would drop 4 as replays);
    // the other 15 are rate limited in the gate.
    let passes = results
        .iter()
        .filter(|r| matches!(r, GateResult::Pass(_)))
        .count();
    assert_eq!(passes, 5);
    assert_eq!(gate_b.drop_counters().get(DropReason::RateLimited), 15);
    // Another source is not limited by A's bucket.
    let mut buf = init.data.clone();
    let other: SocketAddr = "192.0.2.99:51820".parse().unwrap();
    assert!(matches!(
        gate_b.process(other, &mut buf, init.data.len(), sim.now),
        GateResult::Reply { len: 64, .. }
    ));
}

/// An initiation that names a real peer's static key (public knowledge)
/// but whose sender does not hold its private key: the gate does its one
/// DH and passes it, the device rejects it with a hash and an AEAD (the
/// timestamp does not decrypt with the peer's static-static secret) and
/// nothing of the peer changes.
#[test]
fn an_initiation_claiming_a_peer_key_is_rejected_without_touching_the_peer() {
    let mut sim = Sim::pair();
    let mut gate_b = gate_for(&sim, 1);
    sim.send(0, 1, b"up");
    run_gated(&mut sim, &mut gate_b);
    let before = sim.stats(1, 0);

    let b_pub = *sim.nodes[1].private.public_key().as_bytes();
    let a_pub = *sim.nodes[0].private.public_key().as_bytes();
    let attacker = StaticSecret::from([0x42; 32]);
    let e = StaticSecret::from([0x24; 32]);
    let e_pub = DalekPublic::from(&e).to_bytes();
    let mut msg = vec![0u8; HANDSHAKE_INITIATION_LEN];
    msg[0] = 1;
    msg[4..8].copy_from_slice(&77u32.to_le_bytes());
    msg[8..40].copy_from_slice(&e_pub);
    let mut h = crypto::hash(&[&crypto::initial_hash(), &b_pub]);
    let ck = crypto::kdf1(&crypto::initial_chaining_key(), &e_pub);
    h = crypto::hash(&[&h, &e_pub]);
    let (ck, k) = crypto::kdf2(&ck, &crypto::dh(&e, &b_pub).unwrap()[..]);
    crypto::aead_seal(&k, 0, &a_pub, &h, &mut msg[40..88]).unwrap();
    h = crypto::hash(&[&h, &msg[40..88]]);
    let (_, k) = crypto::kdf2(&ck, &crypto::dh(&attacker, &b_pub).unwrap()[..]);
    crypto::aead_seal(&k, 0, &[0xff; 12], &h, &mut msg[88..116]).unwrap();
    let key = crypto::hash(&[crypto::LABEL_MAC1, &b_pub]);
    let mac = crypto::mac(&key, &[&msg[..116]]).unwrap();
    msg[116..132].copy_from_slice(&mac);

    let mut buf = msg.clone();
    let GateResult::Pass(gated) = gate_b.process(flooder(), &mut buf, msg.len(), sim.now) else {
        panic!("the static key decrypts: the gate passes it");
    };
    let now = sim.now;
    assert_eq!(
        sim.nodes[1].dev.handle_gated(gated, &mut buf, now),
        NetResult::Drop(DropReason::DecryptFailed)
    );
    sim.collect(1);
    assert!(sim.in_flight.is_empty(), "nothing is sent");
    let after = sim.stats(1, 0);
    assert_eq!(
        after.endpoint, before.endpoint,
        "no roaming to the attacker"
    );
    assert_eq!(after.rx_bytes, before.rx_bytes);
    assert_eq!(after.handshakes_completed, before.handshakes_completed);
    sim.send(0, 1, b"still up");
    run_gated(&mut sim, &mut gate_b);
    assert_eq!(sim.payloads(1).last().unwrap(), b"still up");
}
