//! Fuzz-target bodies, shared by the cargo-fuzz targets under `fuzz/` (each a
//! one-liner) and by the corpus-replay test (`tests/fuzz_corpus.rs`), so that
//! every corpus file also runs under plain `cargo test`.
//!
//! The functions panic only when an invariant is violated (that is what the
//! fuzzer looks for); malformed input itself must never panic.
//!
//! Time is a parameter here as everywhere: the fuzz targets pass
//! `Instant::now()` as the simulated-time base.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::allowed_ips::{AllowedIps, IpPrefix};
use crate::api::{NetResult, PeerConfig, PeerId, TunResult};
use crate::consts::{
    COOKIE_REPLY_LEN, COUNTER_WINDOW_SIZE, HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN,
    REJECT_AFTER_MESSAGES, TRANSPORT_HEADER_LEN, TUN_HEADROOM, tun_buffer_len,
};
use crate::crypto;
use crate::device::Device;
use crate::ip;
use crate::keys::{PresharedKey, PrivateKey};
use crate::replay::ReplayFilter;
use crate::wire::{
    CookieReply, HandshakeInitiation, HandshakeResponse, Message, MessageRepr, TransportData,
};

/// Names of the fuzz targets (and of their corpus directories).
pub const TARGETS: [&str; 4] = ["datagram", "responder", "transport", "allowed_ips"];

/// Runs the named target on one input (used by the corpus replay test).
pub fn run_target(name: &str, base: Instant, data: &[u8]) -> bool {
    match name {
        "datagram" => datagram(data),
        "responder" => responder(base, data),
        "transport" => transport(base, data),
        "allowed_ips" => allowed_ips(data),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------
// datagram: the wire decoder

/// Decodes arbitrary bytes as a WireGuard message; valid messages must
/// round-trip byte for byte through their `Repr`. Also exercises the inner
/// IP header helpers and unchecked views.
pub fn datagram(data: &[u8]) {
    if let Ok(msg) = Message::parse(data) {
        let repr = MessageRepr::parse(&msg);
        assert!(repr.is_ok(), "checked view did not parse: {repr:?}");
        let mut out = vec![0u8; data.len().max(HANDSHAKE_INITIATION_LEN)];
        match repr {
            Ok(MessageRepr::HandshakeInitiation(r)) => {
                assert_eq!(r.emit(&mut out), Ok(HANDSHAKE_INITIATION_LEN));
                assert_eq!(&out[..HANDSHAKE_INITIATION_LEN], data);
            }
            Ok(MessageRepr::HandshakeResponse(r)) => {
                assert_eq!(r.emit(&mut out), Ok(HANDSHAKE_RESPONSE_LEN));
                assert_eq!(&out[..HANDSHAKE_RESPONSE_LEN], data);
            }
            Ok(MessageRepr::CookieReply(r)) => {
                assert_eq!(r.emit(&mut out), Ok(COOKIE_REPLY_LEN));
                assert_eq!(&out[..COOKIE_REPLY_LEN], data);
            }
            Ok(MessageRepr::TransportData(r)) => {
                assert_eq!(r.buffer_len(), data.len());
                assert_eq!(r.emit_header(&mut out), Ok(()));
                assert_eq!(&out[..TRANSPORT_HEADER_LEN], &data[..TRANSPORT_HEADER_LEN]);
            }
            Err(_) => {}
        }
    }
    // Unchecked views must never panic, whatever the length.
    let i = HandshakeInitiation::new_unchecked(data);
    let _ = (
        i.sender_index(),
        i.ephemeral(),
        i.mac1(),
        i.mac2(),
        i.encrypted_static(),
    );
    let r = HandshakeResponse::new_unchecked(data);
    let _ = (
        r.sender_index(),
        r.receiver_index(),
        r.encrypted_nothing(),
        r.mac2(),
    );
    let c = CookieReply::new_unchecked(data);
    let _ = (c.receiver_index(), c.nonce(), c.encrypted_cookie());
    let t = TransportData::new_unchecked(data);
    let _ = (t.receiver_index(), t.counter(), t.encrypted_payload().len());
    let _ = ip::destination(data);
    if let Some((_, len)) = ip::source_and_len(data) {
        assert!(len <= data.len());
    }
}

// ---------------------------------------------------------------------------
// responder: handshake processing of a device with one configured peer

const WALL_BASE_SECS: u64 = 1_700_000_000;
const RESPONDER_SEED: u8 = 0xB1;
const INITIATOR_SEED: u8 = 0xA1;
const PSK: [u8; 32] = [0x33; 32];

fn wall_base() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(WALL_BASE_SECS)
}

/// Source address of every fuzzed datagram.
pub fn fuzz_source() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], 4444))
}

fn responder_addr() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 51820))
}

fn responder_key() -> PrivateKey {
    PrivateKey::from_seed([RESPONDER_SEED; 32])
}

fn initiator_key() -> PrivateKey {
    PrivateKey::from_seed([INITIATOR_SEED; 32])
}

const RESPONDER_TUN: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const INITIATOR_TUN: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// The responder of the `responder` and `transport` targets.
fn responder_device(base: Instant) -> (Device, PeerId) {
    let mut dev = Device::new(responder_key(), [RESPONDER_SEED; 32], base, wall_base());
    let mut cfg = PeerConfig::new(initiator_key().public_key());
    cfg.preshared_key = Some(PresharedKey::from_bytes(PSK));
    cfg.allowed_ips = vec![IpPrefix::host(IpAddr::V4(INITIATOR_TUN))];
    let id = dev
        .add_peer(cfg)
        .unwrap_or_else(|e| panic!("fuzz setup: {e}"));
    (dev, id)
}

/// The initiator of the `responder` and `transport` targets.
fn initiator_device(base: Instant) -> (Device, PeerId) {
    let mut dev = Device::new(initiator_key(), [INITIATOR_SEED; 32], base, wall_base());
    let mut cfg = PeerConfig::new(responder_key().public_key());
    cfg.preshared_key = Some(PresharedKey::from_bytes(PSK));
    cfg.endpoint = Some(responder_addr());
    cfg.allowed_ips = vec![IpPrefix::host(IpAddr::V4(RESPONDER_TUN))];
    let id = dev
        .add_peer(cfg)
        .unwrap_or_else(|e| panic!("fuzz setup: {e}"));
    (dev, id)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

fn check_net_result(r: NetResult, len: usize) {
    match r {
        NetResult::Reply { len: n, .. } => {
            assert!(
                n == HANDSHAKE_RESPONSE_LEN || n == COOKIE_REPLY_LEN,
                "reply of {n} bytes"
            );
            assert!(n <= len, "reply longer than the message it answers");
        }
        NetResult::ToTun { offset, len: n, .. } => {
            assert_eq!(offset, TRANSPORT_HEADER_LEN);
            assert!(offset + n <= len);
        }
        NetResult::Done | NetResult::Drop(_) => {}
    }
}

fn drain(dev: &mut Device) {
    let mut buf = vec![0u8; 2048];
    while dev.poll_transmit(&mut buf).is_some() {}
    while dev.poll_event().is_some() {}
}

/// Splits `data` into datagrams: each is a little-endian u16 length
/// followed by that many bytes (truncated at the end of input).
fn datagrams(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// Encodes datagrams in the `responder` target's input format.
pub fn encode_datagrams(flags: u8, msgs: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for m in msgs {
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// A responder device with one peer processes a sequence of datagrams.
/// Input: one flags byte (bit 0: force "under load"), then length-prefixed
/// datagrams; simulated time advances 100 ms per datagram.
pub fn responder(base: Instant, data: &[u8]) {
    let _ = responder_trace(base, data);
}

/// [`responder`], returning the result of every datagram (lets tests check
/// that seed inputs reach the paths they are meant to).
pub fn responder_trace(base: Instant, data: &[u8]) -> Vec<NetResult> {
    let mut results = Vec::new();
    let Some((&flags, rest)) = data.split_first() else {
        return results;
    };
    let (mut dev, _) = responder_device(base);
    if flags & 1 != 0 {
        dev.set_under_load(Some(true));
    }
    let mut now = base;
    for d in datagrams(rest) {
        let mut buf = d.to_vec();
        let r = dev.handle_datagram(fuzz_source(), &mut buf, d.len(), now);
        check_net_result(r, d.len());
        results.push(r);
        now += Duration::from_millis(100);
        dev.handle_timeout(now);
        drain(&mut dev);
    }
    results
}

// ---------------------------------------------------------------------------
// transport: decryption and the replay window

const PACKETS: usize = 32;

struct Link {
    base: Instant,
    now: Instant,
    a: Device,
    b: Device,
    a_to_b: PeerId,
    packets: Vec<(Vec<u8>, Vec<u8>)>,
}

fn deliver(dev: &mut Device, src: SocketAddr, msg: &[u8], now: Instant) -> (NetResult, Vec<u8>) {
    let mut buf = msg.to_vec();
    buf.resize(msg.len().max(HANDSHAKE_INITIATION_LEN), 0);
    let r = dev.handle_datagram(src, &mut buf, msg.len(), now);
    check_net_result(r, msg.len());
    let out = match r {
        NetResult::ToTun { offset, len, .. } => buf[offset..offset + len].to_vec(),
        NetResult::Reply { len, .. } => buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (r, out)
}

thread_local! {
    /// The established session every `transport` input starts from (a full
    /// handshake per input would dominate the fuzzing time).
    static LINK_TEMPLATE: std::cell::RefCell<Option<Link>> = const { std::cell::RefCell::new(None) };
}

impl Link {
    /// A fork of the per-thread template (built on first use).
    fn forked(base: Instant) -> Self {
        LINK_TEMPLATE.with(|t| {
            let mut t = t.borrow_mut();
            let template = t.get_or_insert_with(|| Link::new(base));
            Link {
                base: template.base,
                now: template.now,
                a: template.a.fork(),
                b: template.b.fork(),
                a_to_b: template.a_to_b,
                packets: template.packets.clone(),
            }
        })
    }

    /// A (initiator) and B (responder) with an established session, plus
    /// `PACKETS` transport messages from A to B and their plaintexts.
    fn new(base: Instant) -> Self {
        let (a, a_to_b) = initiator_device(base);
        let (b, _) = responder_device(base);
        let mut link = Link {
            base,
            now: base,
            a,
            b,
            a_to_b,
            packets: Vec::new(),
        };
        link.a
            .initiate_handshake(a_to_b, base)
            .unwrap_or_else(|e| panic!("fuzz setup: {e}"));
        link.pump();
        for i in 0..PACKETS {
            let plain = ipv4(INITIATOR_TUN, RESPONDER_TUN, &vec![i as u8; i * 7]);
            let mut buf = vec![0u8; tun_buffer_len(plain.len())];
            buf[TUN_HEADROOM..TUN_HEADROOM + plain.len()].copy_from_slice(&plain);
            match link.a.handle_tun_packet(&mut buf, plain.len(), base) {
                TunResult::Send { len, .. } => {
                    buf.truncate(len);
                    link.packets.push((buf, plain));
                }
                other => panic!("fuzz setup: session not established ({other:?})"),
            }
        }
        link
    }

    /// Moves datagrams between A and B until both are quiet.
    fn pump(&mut self) {
        let mut buf = vec![0u8; 4096];
        for _ in 0..64 {
            let mut moved = false;
            while let Some((_, len)) = self.a.poll_transmit(&mut buf) {
                moved = true;
                let msg = buf[..len].to_vec();
                let (r, out) = deliver(&mut self.b, initiator_addr(), &msg, self.now);
                if let NetResult::Reply { .. } = r {
                    deliver(&mut self.a, responder_addr(), &out, self.now);
                }
            }
            while let Some((_, len)) = self.b.poll_transmit(&mut buf) {
                moved = true;
                let msg = buf[..len].to_vec();
                let (r, out) = deliver(&mut self.a, responder_addr(), &msg, self.now);
                if let NetResult::Reply { .. } = r {
                    deliver(&mut self.b, initiator_addr(), &out, self.now);
                }
            }
            while self.a.poll_event().is_some() {}
            while self.b.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
    }
}

fn initiator_addr() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 2], 51820))
}

/// Naive replay model: accept a counter once if it is below
/// REJECT_AFTER_MESSAGES and at most COUNTER_WINDOW_SIZE behind the greatest
/// accepted counter.
#[derive(Default)]
struct NaiveReplay {
    max: Option<u64>,
    seen: BTreeSet<u64>,
}

impl NaiveReplay {
    fn accept(&mut self, n: u64) -> bool {
        if n >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if let Some(max) = self.max
            && n + COUNTER_WINDOW_SIZE < max
        {
            return false;
        }
        if !self.seen.insert(n) {
            return false;
        }
        self.max = Some(self.max.map_or(n, |m| m.max(n)));
        true
    }
}

/// Transport decryption and replay protection.
///
/// Mode (first byte, bit 0) 0: a real session between two devices; each
/// following byte delivers one of 32 genuine packets (`< 0x80`), a corrupted
/// packet (`0x80..0xC0`, next byte chooses the bit), advances time
/// (`0xC0..0xE0`) or sends a packet the other way (`>= 0xE0`). Every genuine
/// packet must be delivered at most once, intact; corrupted ones never.
///
/// Mode 1: the replay filter alone against a naive model, counters built
/// from 3-byte records.
pub fn transport(base: Instant, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        replay_model(rest);
        return;
    }
    let mut link = Link::forked(base);
    let mut accepted = [false; PACKETS];
    let mut it = rest.iter();
    while let Some(&b) = it.next() {
        match b {
            0x00..=0x7f => {
                let i = usize::from(b) % PACKETS;
                let (msg, plain) = link.packets[i].clone();
                let (r, out) = deliver(&mut link.b, initiator_addr(), &msg, link.now);
                if let NetResult::ToTun { .. } = r {
                    assert!(!accepted[i], "packet {i} accepted twice");
                    accepted[i] = true;
                    assert_eq!(out, plain, "packet {i} decrypted to something else");
                }
            }
            0x80..=0xbf => {
                let i = usize::from(b) % PACKETS;
                let Some(&pos) = it.next() else { break };
                let (mut msg, _) = link.packets[i].clone();
                let bitpos = usize::from(pos) % (msg.len() * 8);
                msg[bitpos / 8] ^= 1 << (bitpos % 8);
                let (r, _) = deliver(&mut link.b, initiator_addr(), &msg, link.now);
                assert!(
                    !matches!(r, NetResult::ToTun { .. }),
                    "corrupted packet {i} (bit {bitpos}) accepted"
                );
            }
            0xc0..=0xdf => {
                link.now += Duration::from_secs(u64::from(b & 0x1f) * 4);
                let now = link.now;
                link.a.handle_timeout(now);
                link.b.handle_timeout(now);
                link.pump();
            }
            _ => {
                let plain = ipv4(RESPONDER_TUN, INITIATOR_TUN, &[b; 40]);
                let mut buf = vec![0u8; tun_buffer_len(plain.len())];
                buf[TUN_HEADROOM..TUN_HEADROOM + plain.len()].copy_from_slice(&plain);
                let now = link.now;
                if let TunResult::Send { len, .. } =
                    link.b.handle_tun_packet(&mut buf, plain.len(), now)
                {
                    let (r, out) = deliver(&mut link.a, responder_addr(), &buf[..len], now);
                    if let NetResult::ToTun { .. } = r {
                        assert_eq!(out, plain);
                    }
                }
                link.pump();
            }
        }
    }
}

fn replay_model(data: &[u8]) {
    let mut filter = ReplayFilter::new();
    let mut model = NaiveReplay::default();
    let mut cur: u64 = 0;
    for rec in data.chunks_exact(3) {
        let delta = u64::from(u16::from_le_bytes([rec[1], rec[2]]));
        let n = match rec[0] & 3 {
            0 => cur.saturating_add(delta),
            1 => cur.saturating_sub(delta),
            2 => delta,
            _ => REJECT_AFTER_MESSAGES
                .saturating_sub(delta % 0x4000)
                .saturating_add(8),
        };
        cur = n;
        let predicted = filter.would_accept(n);
        let got = filter.validate(n);
        let want = model.accept(n);
        assert_eq!(
            predicted, want,
            "would_accept({n}) disagrees with the model"
        );
        assert_eq!(got, want, "validate({n}) disagrees with the model");
    }
}

// ---------------------------------------------------------------------------
// allowed_ips: longest-prefix match against a naive oracle

fn v6_from(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0x20;
    o[1] = 0x01;
    o[2..6].copy_from_slice(&b[..4]);
    o[15] = b[4];
    Ipv6Addr::from(o)
}

struct Oracle(Vec<(IpPrefix, u8)>);

impl Oracle {
    fn insert(&mut self, p: IpPrefix, v: u8) {
        self.0.retain(|(q, _)| *q != p);
        self.0.push((p, v));
    }
    fn remove(&mut self, p: IpPrefix) {
        self.0.retain(|(q, _)| *q != p);
    }
    fn lookup(&self, ip: IpAddr) -> Option<u8> {
        self.0
            .iter()
            .filter(|(p, _)| p.contains(ip))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, v)| *v)
    }
}

/// Random insert/remove/retain/lookup sequences on `AllowedIps`, checked
/// against a linear-scan oracle.
pub fn allowed_ips(data: &[u8]) {
    let mut table: AllowedIps<u8> = AllowedIps::new();
    let mut oracle = Oracle(Vec::new());
    let mut probes: Vec<IpAddr> = Vec::new();
    let mut d = data;
    while let Some((&op, rest)) = d.split_first() {
        d = rest;
        match op % 6 {
            0 | 2 => {
                let Some((b, rest)) = d.split_at_checked(6) else {
                    break;
                };
                d = rest;
                let ip = IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                let Ok(p) = IpPrefix::new(ip, b[4] % 33) else {
                    continue;
                };
                probes.push(ip);
                if op % 6 == 0 {
                    table.insert(p, b[5] % 8);
                    oracle.insert(p, b[5] % 8);
                } else {
                    table.remove(p);
                    oracle.remove(p);
                }
            }
            1 | 3 => {
                let Some((b, rest)) = d.split_at_checked(7) else {
                    break;
                };
                d = rest;
                let ip = IpAddr::V6(v6_from(b));
                let Ok(p) = IpPrefix::new(ip, b[5] % 129) else {
                    continue;
                };
                probes.push(ip);
                if op % 6 == 1 {
                    table.insert(p, b[6] % 8);
                    oracle.insert(p, b[6] % 8);
                } else {
                    table.remove(p);
                    oracle.remove(p);
                }
            }
            4 => {
                let Some((&v, rest)) = d.split_first() else {
                    break;
                };
                d = rest;
                table.retain(|x| *x != v % 8);
                oracle.0.retain(|(_, x)| *x != v % 8);
            }
            _ => {
                let Some((b, rest)) = d.split_at_checked(9) else {
                    break;
                };
                d = rest;
                for ip in [
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
                    IpAddr::V6(v6_from(&b[4..9])),
                ] {
                    assert_eq!(table.lookup(ip), oracle.lookup(ip), "lookup({ip})");
                }
            }
        }
        assert_eq!(table.len(), oracle.0.len());
    }
    for ip in probes {
        let next = match ip {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
        };
        for probe in [ip, next] {
            assert_eq!(table.lookup(probe), oracle.lookup(probe), "lookup({probe})");
        }
    }
    let mut got: Vec<(IpPrefix, u8)> = table.entries();
    let mut want = oracle.0.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Seed corpus

/// Recomputes mac1 of a handshake message as if it were sent to the fuzz responder.
fn remac(m: &mut [u8], mac1_off: usize) {
    let key = crypto::hash(&[crypto::LABEL_MAC1, responder_key().public_key().as_bytes()]);
    let mac1 = m
        .get(..mac1_off)
        .and_then(|c| crypto::mac(&key, &[c]).ok())
        .unwrap_or_default();
    if let Some(dst) = m.get_mut(mac1_off..mac1_off + 16) {
        dst.copy_from_slice(&mac1);
    }
}

/// Builds the seed corpus: `(target, file name, contents)`. Deterministic,
/// made of real messages produced by this crate plus edge cases.
pub fn seed_corpus(base: Instant) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |t: &'static str, n: &str, d: Vec<u8>| out.push((t, n.to_owned(), d));

    // A real exchange between the fuzz initiator and responder.
    let (mut a, a_id) = initiator_device(base);
    let (mut b, _) = responder_device(base);
    let mut buf = vec![0u8; 4096];
    let _ = a.initiate_handshake(a_id, base);
    let init = match a.poll_transmit(&mut buf) {
        Some((_, len)) => buf[..len].to_vec(),
        None => Vec::new(),
    };
    let (_, resp) = deliver(&mut b, fuzz_source(), &init, base);
    let t1 = base + Duration::from_millis(100);
    deliver(&mut a, responder_addr(), &resp, t1);
    let keepalive = match a.poll_transmit(&mut buf) {
        Some((_, len)) => buf[..len].to_vec(),
        None => Vec::new(),
    };
    let plain = ipv4(INITIATOR_TUN, RESPONDER_TUN, b"fuzz corpus payload");
    let mut tb = vec![0u8; tun_buffer_len(plain.len())];
    tb[TUN_HEADROOM..TUN_HEADROOM + plain.len()].copy_from_slice(&plain);
    let data_msg = match a.handle_tun_packet(&mut tb, plain.len(), t1) {
        TunResult::Send { len, .. } => tb[..len].to_vec(),
        _ => Vec::new(),
    };
    let spoofed = ipv4(
        Ipv4Addr::new(10, 9, 0, 99),
        RESPONDER_TUN,
        b"spoofed source",
    );
    let mut sb = vec![0u8; tun_buffer_len(spoofed.len())];
    sb[TUN_HEADROOM..TUN_HEADROOM + spoofed.len()].copy_from_slice(&spoofed);
    // Route the spoofed packet through A's only peer by destination.
    let spoof_msg = match a.handle_tun_packet(&mut sb, spoofed.len(), t1) {
        TunResult::Send { len, .. } => sb[..len].to_vec(),
        _ => Vec::new(),
    };

    // Under load: first initiation gets a cookie reply, the retry carries mac2.
    let (mut a2, a2_id) = initiator_device(base);
    let (mut b2, _) = responder_device(base);
    b2.set_under_load(Some(true));
    let _ = a2.initiate_handshake(a2_id, base);
    let init_no_mac2 = match a2.poll_transmit(&mut buf) {
        Some((_, len)) => buf[..len].to_vec(),
        None => Vec::new(),
    };
    let (_, cookie) = deliver(&mut b2, fuzz_source(), &init_no_mac2, base);
    deliver(&mut a2, responder_addr(), &cookie, base);
    let t5 = base + Duration::from_secs(6);
    a2.handle_timeout(t5);
    let init_mac2 = match a2.poll_transmit(&mut buf) {
        Some((_, len)) => buf[..len].to_vec(),
        None => Vec::new(),
    };

    // datagram
    add("datagram", "initiation", init.clone());
    add("datagram", "response", resp.clone());
    add("datagram", "cookie_reply", cookie.clone());
    add("datagram", "keepalive", keepalive.clone());
    add("datagram", "transport_data", data_msg.clone());
    add("datagram", "initiation_with_mac2", init_mac2.clone());
    add("datagram", "empty", Vec::new());
    add("datagram", "one_byte", vec![1]);
    for t in 1u8..=4 {
        add(
            "datagram",
            &format!("header_only_type{t}"),
            vec![t, 0, 0, 0],
        );
    }
    add("datagram", "type5", vec![5, 0, 0, 0, 0, 0, 0, 0]);
    add("datagram", "reserved_nonzero", {
        let mut m = init.clone();
        if let Some(b) = m.get_mut(1) {
            *b = 1;
        }
        m
    });
    add(
        "datagram",
        "initiation_147",
        init.get(..147).unwrap_or_default().to_vec(),
    );
    add(
        "datagram",
        "initiation_149",
        [init.as_slice(), &[0]].concat(),
    );
    add(
        "datagram",
        "response_91",
        resp.get(..91).unwrap_or_default().to_vec(),
    );
    add("datagram", "cookie_65", [cookie.as_slice(), &[0]].concat());
    add(
        "datagram",
        "transport_31",
        keepalive.get(..31).unwrap_or_default().to_vec(),
    );
    add("datagram", "ipv4_header", plain.clone());
    add("datagram", "ipv6_header", {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[5] = 8;
        p
    });

    // responder
    add("responder", "initiation", encode_datagrams(0, &[&init]));
    add(
        "responder",
        "initiation_keepalive_data",
        encode_datagrams(0, &[&init, &keepalive, &data_msg]),
    );
    add(
        "responder",
        "spoofed_source",
        encode_datagrams(0, &[&init, &keepalive, &spoof_msg]),
    );
    add(
        "responder",
        "replayed_initiation",
        encode_datagrams(0, &[&init, &init]),
    );
    add(
        "responder",
        "under_load_cookie",
        encode_datagrams(1, &[&init_no_mac2]),
    );
    add(
        "responder",
        "under_load_mac2",
        encode_datagrams(1, &[&init_no_mac2, &init_mac2]),
    );
    add("responder", "unexpected_response", {
        let mut m = resp.clone();
        remac(&mut m, 60);
        encode_datagrams(0, &[&m])
    });
    add(
        "responder",
        "unexpected_cookie",
        encode_datagrams(0, &[&cookie]),
    );
    add("responder", "bad_mac1", {
        let mut m = init.clone();
        if let Some(b) = m.get_mut(120) {
            *b ^= 0xff;
        }
        encode_datagrams(0, &[&m])
    });
    add("responder", "low_order_ephemeral", {
        let mut m = init.clone();
        if let Some(e) = m.get_mut(8..40) {
            e.fill(0);
        }
        // Re-MAC so the message gets past mac1 to the Diffie-Hellman check.
        remac(&mut m, 116);
        encode_datagrams(0, &[&m])
    });
    add(
        "responder",
        "garbage",
        encode_datagrams(0, &[b"\x04\x00\x00\x00garbage-garbage-garbage-garbage"]),
    );
    add("responder", "empty", vec![0]);

    // transport
    add(
        "transport",
        "in_order",
        [vec![0u8], (0u8..32).collect()].concat(),
    );
    add(
        "transport",
        "reverse_with_duplicates",
        vec![0, 31, 30, 29, 3, 2, 1, 0, 0, 1, 31],
    );
    add(
        "transport",
        "corrupted",
        vec![0, 0x80, 0, 0x81, 17, 0x82, 200, 2, 2],
    );
    add(
        "transport",
        "time_and_reply",
        vec![0, 1, 0xe5, 0xc3, 2, 0xc5, 3, 0xdf, 0xdf, 4, 0xe0],
    );
    add("transport", "expiry", vec![0, 0, 0xdf, 0xdf, 0xdf, 1, 2]);
    add("transport", "replay_model_window", {
        let mut v = vec![1u8];
        for rec in [
            [2u8, 0, 0],
            [0, 0xc0, 0x1f],
            [1, 0xc0, 0x1f],
            [1, 1, 0],
            [0, 2, 0],
            [1, 0xff, 0xff],
        ] {
            v.extend_from_slice(&rec);
        }
        v
    });
    add("transport", "replay_model_reject_edge", {
        let mut v = vec![1u8];
        for rec in [
            [3u8, 9, 0],
            [3, 8, 0],
            [3, 10, 0],
            [3, 7, 0],
            [1, 1, 0],
            [2, 0, 0],
        ] {
            v.extend_from_slice(&rec);
        }
        v
    });

    // allowed_ips
    add(
        "allowed_ips",
        "nested_v4",
        vec![
            0, 10, 0, 0, 0, 8, 1, 0, 10, 1, 0, 0, 16, 2, 0, 10, 1, 2, 3, 32, 3, 5, 10, 1, 2, 3, 0,
            0, 0, 0, 0, 5, 10, 1, 9, 9, 0, 0, 0, 0, 0, 2, 10, 1, 0, 0, 16, 0, 5, 10, 1, 9, 9, 0, 0,
            0, 0, 0,
        ],
    );
    add(
        "allowed_ips",
        "v6_and_default",
        vec![
            1, 0xde, 0xad, 0, 0, 0, 32, 4, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0xde, 0xad, 0xbe, 0xef, 7,
            128, 5, 5, 1, 2, 3, 4, 0xde, 0xad, 0xbe, 0xef, 7, 0, 0, 0, 0, 0, 0, 32, 3, 4, 1,
        ],
    );
    add(
        "allowed_ips",
        "retain",
        vec![
            0, 192, 168, 0, 0, 24, 1, 0, 192, 168, 0, 128, 25, 2, 4, 1, 5, 192, 168, 0, 200, 0, 0,
            0, 0, 0,
        ],
    );
    add(
        "allowed_ips",
        "reassign",
        vec![
            0, 172, 16, 0, 0, 12, 1, 0, 172, 16, 0, 0, 12, 6, 5, 172, 20, 1, 1, 0, 0, 0, 0, 0,
        ],
    );
    out
}
