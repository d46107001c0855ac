//! The data plane over in-memory packet I/O (`super::super::pktio::mem`):
//! two data planes, A and B, joined by a test "wire" that moves what one
//! sent into the other's receive queue. No root, no device, no socket, no
//! sleep: every step is a call to `DataPlane::turn` at a given instant,
//! with the handshake worker's triage run inline.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use netman_proto::keys::PrivateKey;
use tun_rs::{VIRTIO_NET_HDR_LEN, VirtioNetHdr};

use super::*;
use crate::engine::config::PeerSpec;
use crate::engine::pktio::mem::{MemTun, MemUdp, Received, Sent, TunState, UdpState};
use crate::engine::tunrx::tests::{split_at_once, super_packet};

/// One side: its data plane and the test's handles to its I/O.
struct Site {
    dp: DataPlane<MemTun, MemUdp>,
    tun: Rc<RefCell<TunState>>,
    udp: Rc<RefCell<UdpState>>,
    addr: SocketAddr,
    _control: Control,
}

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51821";
/// Overlay addresses, as in `tunrx`'s synthetic super-packets.
const A_IP: [u8; 4] = [10, 10, 0, 1];
const B_IP: [u8; 4] = [10, 10, 0, 2];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// A data plane with key `own`, one peer (key `peer`, at `peer_addr`,
/// owning `peer_net`), on in-memory I/O at `own_addr`.
fn site(
    own: u8,
    peer: u8,
    own_addr: &str,
    peer_addr: &str,
    peer_net: &str,
    offload: bool,
    v6: bool,
) -> Site {
    let private = PrivateKey::from_bytes([own; 32]);
    let peer_public = PrivateKey::from_bytes([peer; 32]).public_key();
    let addr = addr(own_addr);
    let config = EngineConfig {
        peers: vec![PeerSpec {
            name: format!("peer{peer}"),
            public_key: peer_public,
            endpoint_spec: None,
            endpoint: Some(peer_addr.parse().expect("endpoint")),
            allowed_ips: vec![peer_net.parse().expect("net")],
            persistent_keepalive: None,
            preshared_key_file: None,
            endpoint_name: None,
        }],
        listen_port: Some(addr.port()),
        ..EngineConfig::example()
    };
    let keys = LoadedKeys {
        private,
        peers: vec![(peer_public, None)],
    };
    let device = new_device(&keys, config.mtu).expect("device");
    let (tun, tun_h) = MemTun::new(offload);
    let (udp, udp_h) = MemUdp::new(addr.port(), v6);
    let (dp, control) =
        DataPlane::assemble(config, keys, device, tun, udp, 0, None).expect("data plane");
    Site {
        dp,
        tun: tun_h,
        udp: udp_h,
        addr,
        _control: control,
    }
}

/// A and B, peers of each other (A: 10.10.0.1, B: 10.10.0.2).
fn pair(a_offload: bool, b_offload: bool) -> (Site, Site) {
    (
        site(1, 2, A_ADDR, B_ADDR, "10.10.0.2/32", a_offload, true),
        site(2, 1, B_ADDR, A_ADDR, "10.10.0.1/32", b_offload, true),
    )
}

/// One loop iteration of `s` at `now` (the worker's triage first).
fn step(s: &mut Site, now: Instant) {
    s.dp.handshakes.work_inline(now);
    s.dp.turn(Ready::ALL, now);
}

/// Move what `from` sent into `to`'s receive queue: with `gro`, a GSO
/// message arrives as one coalesced message (UDP GRO), else datagram by
/// datagram. Returns the datagrams moved.
fn wire(from: &Site, to: &Site, gro: bool) -> usize {
    let sent = from.udp.borrow_mut().take_sent();
    let mut n = 0;
    let mut inbound = to.udp.borrow_mut();
    for m in sent {
        assert_eq!(m.dst, to.addr, "sent somewhere else");
        n += m.datagrams().len();
        if gro && m.seg > 0 {
            inbound.inbound.push_back(Received {
                src: from.addr,
                seg: m.seg,
                data: m.data,
            });
        } else {
            for d in m.datagrams() {
                inbound.inbound.push_back(Received {
                    src: from.addr,
                    seg: d.len(),
                    data: d,
                });
            }
        }
    }
    n
}

/// Step both sides and carry their datagrams until the wire is quiet.
fn exchange(a: &mut Site, b: &mut Site, now: Instant, gro: bool) {
    let mut quiet = 0;
    for _ in 0..256 {
        step(a, now);
        let mut moved = wire(a, b, gro);
        step(b, now);
        moved += wire(b, a, gro);
        // Work left over for the next turn (queued TUN reads, received
        // datagrams not yet carried) counts as traffic.
        let busy = [&*a, &*b].iter().any(|s| s.dp.busy());
        quiet = if moved == 0 && !busy { quiet + 1 } else { 0 };
        if quiet == 2 {
            return;
        }
    }
    panic!("the wire never went quiet");
}

fn checksum(data: &[u8]) -> u16 {
    !tun_rs::checksum(data, 0)
}

/// An IPv4 packet around `l4` (`id`: the IP ID).
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, l4: &[u8]) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// Fill in the TCP or UDP checksum of `l4` (at `at`), with the IPv4
/// pseudo-header.
fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, at: usize, l4: &mut [u8]) {
    let mut all = Vec::new();
    all.extend_from_slice(&src);
    all.extend_from_slice(&dst);
    all.extend_from_slice(&[0, proto]);
    all.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    all.extend_from_slice(l4);
    let c = checksum(&all);
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 UDP packet with `len` payload bytes of `fill`.
fn udp_packet(src: [u8; 4], dst: [u8; 4], len: usize, fill: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&4000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5000u16.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    l4.extend(std::iter::repeat_n(fill, len));
    l4_checksum(src, dst, 17, 6, &mut l4);
    ipv4(src, dst, 17, 0, &l4)
}

/// An IPv4 TCP segment (ACK) of one flow at sequence number `seq`.
fn tcp_segment(id: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[8..12].copy_from_slice(&1u32.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = 0x10; // ACK
    l4[14..16].copy_from_slice(&1000u16.to_be_bytes());
    l4.extend_from_slice(payload);
    l4_checksum(A_IP, B_IP, 6, 16, &mut l4);
    ipv4(A_IP, B_IP, 6, id, &l4)
}

/// The size of the transport datagram carrying an inner packet of `len`
/// bytes: padded to 16 but not beyond the MTU (1420), header and tag.
fn wire_len(len: usize) -> usize {
    16 + (len.div_ceil(16) * 16).min(1420) + 16
}

fn drops(s: &Site, label: &str) -> u64 {
    *s.dp
        .status()
        .drops
        .get(label)
        .expect("every label is listed")
}

/// A and B with a session (A initiated), and the first packet delivered.
fn connected(a_offload: bool, b_offload: bool, now: Instant) -> (Site, Site) {
    let (mut a, mut b) = pair(a_offload, b_offload);
    let first = udp_packet(A_IP, B_IP, 100, 1);
    push_tun(&a, &first);
    exchange(&mut a, &mut b, now, true);
    let written = std::mem::take(&mut b.tun.borrow_mut().written);
    assert_eq!(inner(&b, &written), vec![first], "the first packet");
    (a, b)
}

/// Queue `p` as a TUN read of `s` (behind a plain virtio header when the
/// device has offloads).
fn push_tun(s: &Site, p: &[u8]) {
    let mut t = s.tun.borrow_mut();
    let mut raw = Vec::new();
    if t.offload {
        raw.resize(VIRTIO_NET_HDR_LEN, 0);
    }
    raw.extend_from_slice(p);
    t.inbound.push_back(raw);
}

/// The packets written to `s`'s TUN device, without virtio headers.
fn inner(s: &Site, written: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let skip = if s.tun.borrow().offload {
        VIRTIO_NET_HDR_LEN
    } else {
        0
    };
    written.iter().map(|w| w[skip..].to_vec()).collect()
}

#[test]
fn handshake_and_transport_both_ways() {
    let now = Instant::now();
    let (mut a, mut b) = connected(false, false, now);
    let st = a.dp.status();
    assert_eq!(st.peers[0].handshakes, 1, "A's handshake");
    assert_eq!(b.dp.status().peers[0].handshakes, 1, "B's handshake");
    // Transport both ways on the session.
    let ab = udp_packet(A_IP, B_IP, 500, 7);
    let ba = udp_packet(B_IP, A_IP, 300, 9);
    push_tun(&a, &ab);
    push_tun(&b, &ba);
    exchange(&mut a, &mut b, now, true);
    assert_eq!(b.tun.borrow().written, vec![ab]);
    assert_eq!(a.tun.borrow().written, vec![ba]);
    assert!(a.dp.status().peers[0].rx_bytes > 0 && b.dp.status().peers[0].rx_bytes > 0);
    assert_eq!(
        drops(&a, "udp_send_error") + drops(&b, "tun_write_error"),
        0
    );
}

#[test]
fn a_tun_batch_is_sent_as_gso_groups() {
    let now = Instant::now();
    let (mut a, mut b) = connected(false, false, now);
    // 130 equal packets then a shorter one then 3 more. A turn serves
    // TUN_SERVE (32) segments from the flow queue; per turn, runs of equal
    // size to one destination are GSO messages of at most 64 segments and
    // 65535 bytes (the shorter packet ends a run), and one sendmmsg
    // carries the turn's messages.
    let mut packets: Vec<Vec<u8>> = (0..130)
        .map(|i| udp_packet(A_IP, B_IP, 1000, i as u8))
        .collect();
    packets.push(udp_packet(A_IP, B_IP, 200, 0xee));
    packets.extend((0..3).map(|i| udp_packet(A_IP, B_IP, 1000, 0xf0 + i as u8)));
    for p in &packets {
        push_tun(&a, p);
    }
    while {
        step(&mut a, now);
        a.dp.busy()
    } {}
    let sent: Vec<Sent> = a.udp.borrow().sent.clone();
    let full = wire_len(packets[0].len());
    let per_msg = (65535 / full).min(64);
    assert!(per_msg > TUN_SERVE);
    let mut want: Vec<(usize, usize, usize)> = Vec::new(); // (seg, datagrams, call)
    // Turns 1 to 4: 32 full-size segments each.
    for call in 1..=4 {
        want.push((full, TUN_SERVE, call));
    }
    // Turn 5: 2 full, the short one closing that run, then 3 full.
    want.push((full, 3, 5));
    want.push((full, 3, 5));
    let calls0 = sent.first().map_or(0, |m| m.call) - 1;
    let got: Vec<(usize, usize, usize)> = sent
        .iter()
        .map(|m| (m.seg, m.datagrams().len(), m.call - calls0))
        .collect();
    assert_eq!(got, want, "GSO grouping");
    assert_eq!(
        sent[sent.len() - 2].datagrams()[2].len(),
        wire_len(packets[130].len())
    );
    // B receives them (GRO-coalesced, as the kernel would) in order.
    wire(&a, &b, true);
    while {
        step(&mut b, now);
        b.dp.busy()
    } {}
    assert_eq!(b.tun.borrow().written, packets);
}

#[test]
fn a_tso_super_packet_is_split_into_mtu_segments() {
    let now = Instant::now();
    let (mut a, mut b) = connected(true, false, now);
    // A 20000-byte TCP super-packet with 1380-byte segments (1420 MTU).
    let raw = super_packet(false, true, 0, 1380, 20000);
    let segments = split_at_once(&raw);
    assert_eq!(segments.len(), 15);
    a.tun.borrow_mut().inbound.push_back(raw);
    step(&mut a, now);
    let sent: Vec<Sent> = a.udp.borrow().sent.clone();
    // One sendmmsg: the 14 full segments as one GSO message, the last,
    // shorter one closing it.
    assert_eq!(sent.len(), 1, "one GSO message: {sent:?}");
    assert_eq!(sent[0].seg, wire_len(segments[0].len()));
    assert_eq!(sent[0].datagrams().len(), segments.len());
    wire(&a, &b, false);
    step(&mut b, now);
    assert_eq!(b.tun.borrow().written, segments, "the segments, in order");
    assert_eq!(drops(&a, "tun_bad_packet"), 0);
}

#[test]
fn gro_datagrams_are_split_and_inner_packets_coalesced() {
    let now = Instant::now();
    let (mut a, mut b) = connected(false, true, now);
    // 20 TCP segments of one flow: sent by A as one GSO message, received
    // by B as one GRO message, decrypted one by one and written to B's
    // TUN device as one coalesced super-packet.
    let mss = 1000;
    let segs: Vec<Vec<u8>> = (0..20u32)
        .map(|i| tcp_segment(100 + i as u16, 1 + i * mss as u32, &vec![i as u8; mss]))
        .collect();
    for p in &segs {
        push_tun(&a, p);
    }
    step(&mut a, now);
    assert_eq!(a.udp.borrow().sent.len(), 1, "one GSO message");
    wire(&a, &b, true);
    assert_eq!(b.udp.borrow().inbound.len(), 1, "one GRO message");
    step(&mut b, now);
    let written = b.tun.borrow().written.clone();
    assert_eq!(written.len(), 1, "one coalesced write");
    let hdr = VirtioNetHdr::decode(&written[0]).expect("virtio header");
    assert_eq!(hdr.gso_type, 1, "TCPv4 super-packet");
    assert_eq!(usize::from(hdr.gso_size), mss);
    let sp = &written[0][VIRTIO_NET_HDR_LEN..];
    assert_eq!(sp.len(), 40 + 20 * mss);
    let payload: Vec<u8> = segs.iter().flat_map(|s| s[40..].to_vec()).collect();
    assert_eq!(&sp[40..], &payload[..], "the payload, in order");
    // Another flow's packet is not merged in: written on its own.
    let other = udp_packet(A_IP, B_IP, 50, 3);
    for p in segs.iter().take(3).chain([&other]) {
        push_tun(&a, p);
    }
    step(&mut a, now);
    wire(&a, &b, true);
    b.tun.borrow_mut().written.clear();
    step(&mut b, now);
    // The 3 segments coalesce, the UDP packet is written alone.
    assert_eq!(b.tun.borrow().written.len(), 2);
}

#[test]
fn tun_read_errors_are_counted_but_would_block_is_not() {
    let now = Instant::now();
    let (mut a, _b) = pair(false, false);
    a.tun.borrow_mut().read_faults.extend([libc::EAGAIN]);
    step(&mut a, now);
    assert_eq!(drops(&a, "tun_read_error"), 0, "EAGAIN lost nothing");
    a.tun.borrow_mut().read_faults.extend([libc::EIO]);
    step(&mut a, now);
    assert_eq!(drops(&a, "tun_read_error"), 1);
    a.tun.borrow_mut().read_faults.extend([libc::EBADFD]);
    step(&mut a, now);
    assert_eq!(
        drops(&a, "tun_read_error"),
        1,
        "a detached queue lost nothing"
    );
}

#[test]
fn unsplittable_tun_reads_are_counted() {
    let now = Instant::now();
    let (mut a, _b) = pair(true, false);
    {
        let mut t = a.tun.borrow_mut();
        // Shorter than the virtio-net header.
        t.inbound.push_back(vec![0; 4]);
        // An unknown GSO type.
        let mut raw = super_packet(false, true, 0, 1000, 3000);
        raw[1] = 42;
        t.inbound.push_back(raw);
    }
    step(&mut a, now);
    assert_eq!(drops(&a, "tun_bad_packet"), 2);
}

#[test]
fn failed_tun_writes_count_every_packet_of_the_batch() {
    let now = Instant::now();
    let (mut a, mut b) = connected(false, false, now);
    for i in 0..5 {
        push_tun(&a, &udp_packet(A_IP, B_IP, 100, i));
    }
    step(&mut a, now);
    wire(&a, &b, true);
    b.tun.borrow_mut().write_faults.push_back(libc::EIO);
    step(&mut b, now);
    assert_eq!(drops(&b, "tun_write_error"), 5);
    assert!(b.tun.borrow().written.is_empty());
}

#[test]
fn udp_send_errors_are_counted_per_datagram_and_full_buffers_waited_for() {
    let now = Instant::now();
    let (mut a, _b) = connected(false, false, now);
    a.udp.borrow_mut().take_sent();
    // (Packets larger than the express lane's, so that four of them make
    // one GSO message.)
    // A full send buffer (EAGAIN) is waited for and retried: nothing lost.
    a.udp.borrow_mut().send_faults.push_back(libc::EAGAIN);
    for i in 0..4 {
        push_tun(&a, &udp_packet(A_IP, B_IP, 400, i));
    }
    step(&mut a, now);
    assert_eq!(a.udp.borrow().waits, 1);
    assert_eq!(a.udp.borrow_mut().take_sent()[0].datagrams().len(), 4);
    assert_eq!(drops(&a, "udp_send_error"), 0);
    // No buffer space: the message's 4 datagrams are lost and counted.
    a.udp.borrow_mut().send_faults.push_back(libc::ENOBUFS);
    for i in 0..4 {
        push_tun(&a, &udp_packet(A_IP, B_IP, 400, i));
    }
    step(&mut a, now);
    assert_eq!(drops(&a, "udp_send_error"), 4);
    assert!(a.udp.borrow().sent.is_empty());
    // A single datagram refused (too large): counted too.
    a.udp.borrow_mut().send_faults.push_back(libc::EMSGSIZE);
    push_tun(&a, &udp_packet(A_IP, B_IP, 400, 9));
    step(&mut a, now);
    assert_eq!(drops(&a, "udp_send_error"), 5);
}

#[test]
fn a_refused_gso_send_goes_out_datagram_by_datagram() {
    let now = Instant::now();
    let (mut a, _b) = connected(false, false, now);
    a.udp.borrow_mut().take_sent();
    a.udp.borrow_mut().refuse_gso = Some(libc::EIO);
    let send = |a: &mut Site, at: Instant| {
        for i in 0..6 {
            push_tun(a, &udp_packet(A_IP, B_IP, 300, i));
        }
        step(a, at);
        a.udp.borrow_mut().take_sent()
    };
    let sent = send(&mut a, now);
    assert_eq!(sent.len(), 6, "one by one: {sent:?}");
    assert!(sent.iter().all(|m| m.seg == 0));
    assert_eq!(a.dp.status().udp_gso_refused, 1);
    assert_eq!(drops(&a, "udp_send_error"), 0, "nothing lost");
    // Within the back-off GSO is not even tried.
    let sent = send(&mut a, now + Duration::from_millis(500));
    assert_eq!(sent.len(), 6);
    assert_eq!(a.dp.status().udp_gso_refused, 1);
    // After it, tried again: accepted now, one GSO message.
    a.udp.borrow_mut().refuse_gso = None;
    let sent = send(&mut a, now + Duration::from_millis(1500));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].datagrams().len(), 6);
}

#[test]
fn an_ipv6_endpoint_without_an_ipv6_socket_is_counted() {
    let now = Instant::now();
    let mut a = site(
        1,
        2,
        A_ADDR,
        "[2001:db8::2]:51821",
        "10.10.0.2/32",
        false,
        false,
    );
    push_tun(&a, &udp_packet(A_IP, B_IP, 100, 1));
    step(&mut a, now);
    // The handshake initiation the packet triggered had no socket.
    assert_eq!(drops(&a, "no_ipv6_socket"), 1);
    assert!(a.udp.borrow().sent.is_empty());
}

#[test]
fn the_cores_drop_reasons_are_counted_through_the_data_plane() {
    let now = Instant::now();
    let (mut a, mut b) = connected(false, false, now);
    // No peer owns the destination.
    push_tun(&a, &udp_packet(A_IP, [10, 99, 0, 1], 10, 0));
    step(&mut a, now);
    assert_eq!(drops(&a, "no_route"), 1);
    // A tampered datagram does not decrypt.
    push_tun(&a, &udp_packet(A_IP, B_IP, 10, 0));
    step(&mut a, now);
    let mut sent = a.udp.borrow_mut().take_sent();
    let good = sent[0].data.clone();
    let last = sent[0].data.len() - 1;
    sent[0].data[last] ^= 1;
    a.udp.borrow_mut().sent = sent;
    wire(&a, &b, true);
    step(&mut b, now);
    assert_eq!(drops(&b, "decrypt_failed"), 1);
    // The same datagram twice: the second is a replay.
    for _ in 0..2 {
        b.udp.borrow_mut().inbound.push_back(Received {
            src: a.addr,
            seg: good.len(),
            data: good.clone(),
        });
    }
    step(&mut b, now);
    assert_eq!(drops(&b, "replay"), 1);
    // An inner source the peer does not own.
    push_tun(&a, &udp_packet([10, 10, 0, 77], B_IP, 10, 0));
    step(&mut a, now);
    wire(&a, &b, true);
    step(&mut b, now);
    assert_eq!(drops(&b, "source_check"), 1);
    // Garbage: too short, or of no known type.
    for d in [vec![1u8, 0], vec![9u8; 64]] {
        b.udp.borrow_mut().inbound.push_back(Received {
            src: a.addr,
            seg: d.len(),
            data: d,
        });
    }
    step(&mut b, now);
    assert_eq!(
        drops(&b, "malformed") + drops(&b, "unknown_message_type"),
        2
    );
    // A handshake initiation with a bad mac1, triaged by the worker.
    let mut init = vec![0u8; 148];
    init[0] = 1;
    b.udp.borrow_mut().inbound.push_back(Received {
        src: a.addr,
        seg: 148,
        data: init,
    });
    step(&mut b, now);
    step(&mut b, now);
    assert_eq!(drops(&b, "bad_mac1"), 1);
}

#[test]
fn a_handshake_flood_overflows_the_queue_and_is_counted() {
    let now = Instant::now();
    let (mut a, b) = pair(false, false);
    let mut init = vec![0u8; 148];
    init[0] = 1;
    let n = crate::engine::handshake::QUEUE_SIZE + 100;
    for _ in 0..n {
        a.udp.borrow_mut().inbound.push_back(Received {
            src: b.addr,
            seg: 148,
            data: init.clone(),
        });
    }
    // Without the worker taking any, the queue holds QUEUE_SIZE.
    for _ in 0..n.div_ceil(4 * RX_MSGS) {
        a.dp.turn(Ready::ALL, now);
    }
    assert!(a.udp.borrow().inbound.is_empty());
    assert_eq!(drops(&a, "handshake_queue_full"), 100);
}

/// An ICMP echo request from A to B with `len` bytes of payload.
fn ping(seq: u16, len: usize) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + len];
    l4[0] = 8;
    l4[6..8].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(A_IP, B_IP, 1, seq, &l4)
}

/// Step `a` until its flow queue is empty, carrying everything it sends
/// to `b`'s receive queue datagram by datagram (in the order sent).
fn drain_to(a: &mut Site, b: &Site, now: Instant) {
    for _ in 0..200 {
        step(a, now);
        wire(a, b, false);
        if a.dp.fq.is_empty() {
            return;
        }
    }
    panic!("the flow queue never emptied");
}

/// The sender's queue: a ping the kernel queued behind a burst of TCP
/// super-packets (as one bulk transfer keeps the TUN ring full) leaves
/// before the burst's remainder, instead of after all of it.
#[test]
fn a_ping_behind_a_bulk_burst_is_sent_first() {
    let now = Instant::now();
    let (mut a, mut b) = connected(true, false, now);
    for _ in 0..4 {
        a.tun
            .borrow_mut()
            .inbound
            .push_back(super_packet(false, true, 0, 1380, 60_000));
    }
    let p = ping(1, 56);
    push_tun(&a, &p);
    drain_to(&mut a, &b, now);
    exchange(&mut a, &mut b, now, false);
    let written = std::mem::take(&mut b.tun.borrow_mut().written);
    assert_eq!(written.len(), 4 * 44 + 1, "everything arrived");
    let at = written.iter().position(|w| *w == p).expect("the ping");
    // At most one super-packet (44 segments) in front of it: the one
    // being served when it was read.
    assert!(at <= 44, "the ping went out after {at} bulk segments");
    assert_eq!(
        drops(&a, "tun_queue_delay") + drops(&a, "tun_queue_full"),
        0
    );
}

/// The receiver's queue: a ping that arrives behind a backlog of bulk
/// datagrams in the socket is read from the express lane and written to
/// the TUN device first. Without the lane it comes last.
#[test]
fn a_small_datagram_behind_a_bulk_backlog_is_decrypted_first() {
    for express in [true, false] {
        let now = Instant::now();
        let (mut a, mut b) = connected(false, false, now);
        b.udp.borrow_mut().express = express;
        let bulk: Vec<Vec<u8>> = (0..200)
            .map(|i| udp_packet(A_IP, B_IP, 1300, i as u8))
            .collect();
        for p in &bulk {
            push_tun(&a, p);
        }
        drain_to(&mut a, &b, now);
        let p = ping(2, 56);
        push_tun(&a, &p);
        drain_to(&mut a, &b, now);
        assert_eq!(
            b.udp.borrow().inbound.len(),
            201,
            "the ping is last in line"
        );
        step(&mut b, now);
        let written = b.tun.borrow().written.clone();
        if express {
            assert_eq!(written.first(), Some(&p), "the ping first");
            // Only part of the backlog per turn: the TUN side and the
            // express lane are looked at in between.
            assert!(written.len() < 100, "{} written in one turn", written.len());
        } else {
            assert!(!written.contains(&p), "without the lane it waits its turn");
        }
        exchange(&mut a, &mut b, now, false);
        let written = std::mem::take(&mut b.tun.borrow_mut().written);
        assert_eq!(written.len(), 201);
        let rest: Vec<&Vec<u8>> = written.iter().filter(|w| **w != p).collect();
        assert_eq!(rest, bulk.iter().collect::<Vec<_>>(), "the bulk, in order");
    }
}
