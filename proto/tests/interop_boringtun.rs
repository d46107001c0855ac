//! Wire-compatibility evidence: a netman-proto `Device` and a boringtun
//! `noise::Tunn` handshake (each side initiating in turn) and exchange data,
//! in memory, with and without a preshared key.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use common::*;
use netman_proto::*;

const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct Pair {
    dev: Device,
    peer: PeerId,
    tunn: Tunn,
    our_addr: SocketAddr,
    bt_addr: SocketAddr,
    now: std::time::Instant,
}

fn setup(psk: Option<[u8; 32]>) -> Pair {
    let our_key = key(1);
    let bt_secret_bytes = *key(2).to_bytes();
    let bt_secret = x25519::StaticSecret::from(bt_secret_bytes);
    let bt_public = x25519::PublicKey::from(&bt_secret);
    let now = std::time::Instant::now();
    let mut dev = Device::new(our_key.clone(), [7; 32], now, std::time::SystemTime::now());
    let bt_addr: SocketAddr = "198.51.100.2:51820".parse().unwrap();
    let mut cfg = PeerConfig::new(PublicKey::from_bytes(bt_public.to_bytes()));
    cfg.endpoint = Some(bt_addr);
    cfg.preshared_key = psk.map(PresharedKey::from_bytes);
    cfg.allowed_ips = vec![IpPrefix::new(IpAddr::V4(BT_IP), 32).unwrap()];
    let peer = dev.add_peer(cfg).unwrap();
    let tunn = Tunn::new(
        bt_secret,
        x25519::PublicKey::from(our_key.public_key().to_bytes()),
        psk,
        None,
        42,
        None,
    );
    Pair {
        dev,
        peer,
        tunn,
        our_addr: "198.51.100.1:51820".parse().unwrap(),
        bt_addr,
        now,
    }
}

impl Pair {
    fn our_transmits(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; BUF];
        while let Some((dst, len)) = self.dev.poll_transmit(&mut buf) {
            assert_eq!(dst, self.bt_addr);
            out.push(buf[..len].to_vec());
        }
        out
    }

    /// Feeds a datagram from us into boringtun; returns (datagrams boringtun
    /// wants to send, packets it wrote to its tunnel).
    fn feed_bt(&mut self, datagram: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut net = Vec::new();
        let mut tun = Vec::new();
        let mut out = vec![0u8; BUF];
        match self
            .tunn
            .decapsulate(Some(self.our_addr.ip()), datagram, &mut out)
        {
            TunnResult::WriteToNetwork(p) => {
                net.push(p.to_vec());
                // boringtun asks to be called again with an empty datagram to flush its queue.
                loop {
                    match self.tunn.decapsulate(None, &[], &mut out) {
                        TunnResult::WriteToNetwork(p) => net.push(p.to_vec()),
                        TunnResult::Done => break,
                        other => panic!("unexpected boringtun result {other:?}"),
                    }
                }
            }
            TunnResult::WriteToTunnelV4(p, src) => {
                assert_eq!(src, OUR_IP, "inner source seen by boringtun");
                tun.push(p.to_vec());
            }
            TunnResult::Done => {}
            other => panic!("boringtun rejected our datagram: {other:?}"),
        }
        (net, tun)
    }

    fn feed_us(&mut self, datagram: &[u8]) -> (NetResult, Vec<u8>) {
        let mut buf = vec![0u8; BUF];
        buf[..datagram.len()].copy_from_slice(datagram);
        let r = self
            .dev
            .handle_datagram(self.bt_addr, &mut buf, datagram.len(), self.now);
        let data = match r {
            NetResult::ToTun { offset, len, .. } => buf[offset..offset + len].to_vec(),
            NetResult::Reply { len, .. } => buf[..len].to_vec(),
            _ => Vec::new(),
        };
        (r, data)
    }

    fn we_send(&mut self, payload: &[u8]) -> TunResult {
        let pkt = ipv4_packet(OUR_IP, BT_IP, payload);
        let mut buf = tun_buf(&pkt);
        let r = self.dev.handle_tun_packet(&mut buf, pkt.len(), self.now);
        if let TunResult::Send { len, .. } = r {
            let (net, tun) = self.feed_bt(&buf[..len]);
            assert!(net.is_empty());
            assert_eq!(tun, vec![pkt]);
        }
        r
    }

    fn bt_sends(&mut self, payload: &[u8]) {
        let pkt = ipv4_packet(BT_IP, OUR_IP, payload);
        let mut out = vec![0u8; BUF];
        let datagram = match self.tunn.encapsulate(&pkt, &mut out) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("boringtun could not encapsulate: {other:?}"),
        };
        let (r, data) = self.feed_us(&datagram);
        assert!(matches!(r, NetResult::ToTun { .. }), "{r:?}");
        assert_eq!(data, pkt);
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }
}

fn we_initiate(p: &mut Pair, payload: &[u8]) {
    let before = p.dev.peer_stats(p.peer).unwrap().handshakes_completed;
    // Either a packet triggers the handshake, or we force one.
    let r = p.dev.handle_tun_packet(
        &mut tun_buf(&ipv4_packet(OUR_IP, BT_IP, payload)),
        20 + payload.len(),
        p.now,
    );
    let r_was_queued = matches!(r, TunResult::Queued { .. });
    if !r_was_queued {
        p.dev.initiate_handshake(p.peer, p.now).unwrap();
    }
    let tx = p.our_transmits();
    assert_eq!(tx.len(), 1, "expected exactly one initiation");
    assert_eq!(tx[0].len(), 148);
    assert_eq!(tx[0][0], 1);
    let (net, tun) = p.feed_bt(&tx[0]);
    assert!(tun.is_empty());
    assert_eq!(net.len(), 1, "boringtun should answer with a response");
    assert_eq!(net[0].len(), 92);
    let (r, _) = p.feed_us(&net[0]);
    assert_eq!(r, NetResult::Done);
    assert_eq!(
        p.dev.peer_stats(p.peer).unwrap().handshakes_completed,
        before + 1
    );
    // Staged data (or a keepalive when nothing is staged) goes out on the new session.
    let tx = p.our_transmits();
    assert_eq!(tx.len(), 1);
    let (net, tun) = p.feed_bt(&tx[0]);
    assert!(net.is_empty());
    if r_was_queued {
        assert_eq!(tun, vec![ipv4_packet(OUR_IP, BT_IP, payload)]);
    } else {
        assert!(tun.is_empty(), "keepalive expected");
    }
}

fn bt_initiates(p: &mut Pair) {
    let before = p.dev.peer_stats(p.peer).unwrap().handshakes_completed;
    let mut out = vec![0u8; BUF];
    let init = match p.tunn.format_handshake_initiation(&mut out, true) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("boringtun did not initiate: {other:?}"),
    };
    let (r, resp) = p.feed_us(&init);
    assert!(matches!(r, NetResult::Reply { len: 92, .. }), "{r:?}");
    let (net, tun) = p.feed_bt(&resp);
    assert!(tun.is_empty());
    // boringtun confirms the session with a keepalive.
    assert!(!net.is_empty());
    for d in net {
        let (r, _) = p.feed_us(&d);
        assert_eq!(r, NetResult::Done);
    }
    assert_eq!(
        p.dev.peer_stats(p.peer).unwrap().handshakes_completed,
        before + 1
    );
}

fn exercise(psk: Option<[u8; 32]>) {
    let mut p = setup(psk);
    // 1. We initiate (triggered by a packet), data both ways.
    we_initiate(&mut p, b"first packet from netman");
    p.bt_sends(b"hello from boringtun");
    assert!(matches!(p.we_send(b"and back"), TunResult::Send { .. }));

    // 2. boringtun initiates, data both ways on the new session.
    p.advance(6);
    bt_initiates(&mut p);
    assert!(matches!(
        p.we_send(b"after bt rekey"),
        TunResult::Send { .. }
    ));
    p.bt_sends(b"bt data after its rekey");

    // 3. We initiate again (forced rekey) and exchange data.
    p.advance(6);
    we_initiate(&mut p, b"sent on the old session");
    p.bt_sends(b"bt data after our rekey");
    assert!(matches!(p.we_send(&[0xab; 1300]), TunResult::Send { .. }));

    let s = p.dev.peer_stats(p.peer).unwrap();
    assert_eq!(s.handshakes_completed, 3);
    assert_eq!(
        p.dev.drop_counters().total(),
        0,
        "{:?}",
        p.dev.drop_counters()
    );
}

#[test]
fn interop_with_boringtun_without_psk() {
    exercise(None);
}

#[test]
fn interop_with_boringtun_with_psk() {
    exercise(Some([0x42; 32]));
}

#[test]
fn mismatched_psk_fails_cleanly() {
    let mut p = setup(Some([1; 32]));
    let bt_secret = x25519::StaticSecret::from(*key(2).to_bytes());
    p.tunn = Tunn::new(
        bt_secret,
        x25519::PublicKey::from(key(1).public_key().to_bytes()),
        Some([2; 32]),
        None,
        42,
        None,
    );
    p.dev.initiate_handshake(p.peer, p.now).unwrap();
    let tx = p.our_transmits();
    let (net, _) = p.feed_bt(&tx[0]);
    // boringtun accepts the initiation (the PSK only enters at the response)...
    assert_eq!(net.len(), 1);
    // ...but we cannot authenticate its response.
    let (r, _) = p.feed_us(&net[0]);
    assert_eq!(r, NetResult::Drop(DropReason::DecryptFailed));
    assert_eq!(p.dev.peer_stats(p.peer).unwrap().handshakes_completed, 0);
}
