//! Protocol core benchmarks: transport encapsulation / decapsulation of
//! 64, 1420 and 9000-byte packets (throughput in bytes of inner packet),
//! and full handshakes per second (initiation, response, confirmation).
//!
//! `cargo bench -p netman-proto --bench proto -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netman_proto::{
    Device, IpPrefix, NetResult, PeerConfig, PeerId, PrivateKey, TUN_HEADROOM, TunResult,
    tun_buffer_len,
};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SIZES: [usize; 3] = [64, 1420, 9000];

struct Pair {
    a: Device,
    b: Device,
    a_to_b: PeerId,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    now: Instant,
}

fn pair() -> Pair {
    let now = Instant::now();
    let wall = SystemTime::now();
    let (ka, kb) = (
        PrivateKey::from_seed([1; 32]),
        PrivateKey::from_seed([2; 32]),
    );
    let a_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    let mut a = Device::new(ka.clone(), [3; 32], now, wall);
    let mut b = Device::new(kb.clone(), [4; 32], now, wall);
    let mut ca = PeerConfig::new(kb.public_key());
    ca.endpoint = Some(b_addr);
    ca.allowed_ips = vec![IpPrefix::host(B_IP.into())];
    let mut cb = PeerConfig::new(ka.public_key());
    cb.endpoint = Some(a_addr);
    cb.allowed_ips = vec![IpPrefix::host(A_IP.into())];
    let a_to_b = a.add_peer(ca).unwrap();
    b.add_peer(cb).unwrap();
    let mut p = Pair {
        a,
        b,
        a_to_b,
        a_addr,
        b_addr,
        now,
    };
    p.handshake();
    p
}

impl Pair {
    /// Initiation -> response -> confirming keepalive, all through the public API.
    fn handshake(&mut self) {
        let mut buf = [0u8; 256];
        self.a.initiate_handshake(self.a_to_b, self.now).unwrap();
        let (_, len) = self.a.poll_transmit(&mut buf).expect("initiation");
        let r = self.b.handle_datagram(self.a_addr, &mut buf, len, self.now);
        let NetResult::Reply { len, .. } = r else {
            panic!("no response: {r:?}")
        };
        let r = self.a.handle_datagram(self.b_addr, &mut buf, len, self.now);
        assert_eq!(r, NetResult::Done);
        let (_, len) = self.a.poll_transmit(&mut buf).expect("keepalive");
        let r = self.b.handle_datagram(self.a_addr, &mut buf, len, self.now);
        assert_eq!(r, NetResult::Done);
        while self.a.poll_event().is_some() {}
        while self.b.poll_event().is_some() {}
    }
}

fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&A_IP.octets());
    p[16..20].copy_from_slice(&B_IP.octets());
    p
}

fn encapsulate(c: &mut Criterion) {
    let mut p = pair();
    let mut g = c.benchmark_group("encapsulate");
    for size in SIZES {
        let pkt = ipv4_packet(size);
        let mut buf = vec![0u8; tun_buffer_len(size)];
        buf[TUN_HEADROOM..TUN_HEADROOM + size].copy_from_slice(&pkt);
        g.throughput(Throughput::BytesDecimal(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bch, &size| {
            bch.iter(|| {
                // Encryption overwrote the header: restore it so the packet routes.
                buf[TUN_HEADROOM..TUN_HEADROOM + 20].copy_from_slice(&pkt[..20]);
                let r = p.a.handle_tun_packet(black_box(&mut buf), size, p.now);
                debug_assert!(matches!(r, TunResult::Send { .. }));
                black_box(r)
            })
        });
    }
    g.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut p = pair();
    let mut g = c.benchmark_group("decapsulate");
    for size in SIZES {
        let pkt = ipv4_packet(size);
        g.throughput(Throughput::BytesDecimal(size as u64));
        let Pair {
            a, b, a_addr, now, ..
        } = &mut p;
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bch, &size| {
            bch.iter_batched_ref(
                || {
                    // A fresh (never seen) transport message for every iteration.
                    let mut buf = vec![0u8; tun_buffer_len(size)];
                    buf[TUN_HEADROOM..TUN_HEADROOM + size].copy_from_slice(&pkt);
                    match a.handle_tun_packet(&mut buf, size, *now) {
                        TunResult::Send { len, .. } => (buf, len),
                        other => panic!("{other:?}"),
                    }
                },
                |(buf, len)| {
                    let r = b.handle_datagram(*a_addr, buf, *len, *now);
                    debug_assert!(matches!(r, NetResult::ToTun { .. }));
                    black_box(r)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let mut p = pair();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("initiation+response+confirmation", |bch| {
        bch.iter(|| {
            // Past the one-initiation-per-REKEY_TIMEOUT limit and with a newer timestamp.
            p.now += Duration::from_secs(6);
            p.handshake();
        })
    });
    g.finish();
}

criterion_group!(benches, encapsulate, decapsulate, handshakes);
criterion_main!(benches);
