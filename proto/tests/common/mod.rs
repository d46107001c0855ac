//! Shared test harness: two (or more) devices on a simulated, lossless-by-default
//! network with simulated time.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netman_proto::{
    Device, Event, IpPrefix, NetResult, PeerConfig, PeerId, PresharedKey, PrivateKey, TUN_HEADROOM,
    TunResult, tun_buffer_len,
};

pub const BUF: usize = 65536;

pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_seed([n; 32])
}

pub fn wall0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A minimal IPv4 packet (valid header, no checksum) carrying `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
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

/// Minimal IPv6 packet.
pub fn ipv6_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..].copy_from_slice(payload);
    p
}

/// Puts `packet` at the headroom offset of a buffer big enough for in-place encryption.
pub fn tun_buf(packet: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; tun_buffer_len(packet.len())];
    b[TUN_HEADROOM..TUN_HEADROOM + packet.len()].copy_from_slice(packet);
    b
}

#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: usize,
    pub to: usize,
    pub src: SocketAddr,
    pub data: Vec<u8>,
}

pub struct Node {
    pub dev: Device,
    pub private: PrivateKey,
    pub addr: SocketAddr,
    pub tun_ip: Ipv4Addr,
    /// Packets written to this node's TUN.
    pub inbox: Vec<Vec<u8>>,
    /// Results of handle_datagram on this node (for assertions).
    pub results: Vec<NetResult>,
    pub events: Vec<Event>,
    /// PeerId of the other node(s), by node index.
    pub peer_ids: Vec<Option<PeerId>>,
}

pub type Filter = Box<dyn FnMut(&Datagram) -> bool>;

pub struct Sim {
    pub base: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub in_flight: VecDeque<Datagram>,
    /// Returns false to drop a datagram.
    pub filter: Filter,
    pub delivered: usize,
    pub dropped_by_filter: usize,
}

pub struct PairOpts {
    pub psk: Option<[u8; 32]>,
    pub keepalive_a: Option<u16>,
    pub keepalive_b: Option<u16>,
    /// Whether B knows A's endpoint up front.
    pub b_knows_a: bool,
}

impl Default for PairOpts {
    fn default() -> Self {
        Self {
            psk: None,
            keepalive_a: None,
            keepalive_b: None,
            b_knows_a: true,
        }
    }
}

impl Sim {
    pub fn pair() -> Sim {
        Self::pair_with(PairOpts::default())
    }

    pub fn pair_with(o: PairOpts) -> Sim {
        let base = Instant::now();
        let mut sim = Sim {
            base,
            now: base,
            nodes: Vec::new(),
            in_flight: VecDeque::new(),
            filter: Box::new(|_| true),
            delivered: 0,
            dropped_by_filter: 0,
        };
        sim.add_node(1, "192.0.2.1:51820", Ipv4Addr::new(10, 0, 0, 1));
        sim.add_node(2, "192.0.2.2:51820", Ipv4Addr::new(10, 0, 0, 2));
        sim.connect(0, 1, o.psk, o.keepalive_a, true);
        sim.connect(1, 0, o.psk, o.keepalive_b, o.b_knows_a);
        sim
    }

    pub fn add_node(&mut self, seed: u8, addr: &str, tun_ip: Ipv4Addr) -> usize {
        let private = key(seed);
        let dev = Device::new(
            private.clone(),
            [seed ^ 0x5a; 32],
            self.now,
            self.wall(self.now),
        );
        self.nodes.push(Node {
            dev,
            private,
            addr: addr.parse().unwrap(),
            tun_ip,
            inbox: Vec::new(),
            results: Vec::new(),
            events: Vec::new(),
            peer_ids: Vec::new(),
        });
        self.nodes.len() - 1
    }

    pub fn wall(&self, t: Instant) -> SystemTime {
        wall0() + (t - self.base)
    }

    pub fn peer_config(
        &self,
        from: usize,
        to: usize,
        psk: Option<[u8; 32]>,
        ka: Option<u16>,
        endpoint: bool,
    ) -> PeerConfig {
        let other = &self.nodes[to];
        let mut cfg = PeerConfig::new(other.private.public_key());
        cfg.preshared_key = psk.map(PresharedKey::from_bytes);
        cfg.endpoint = endpoint.then_some(other.addr);
        cfg.allowed_ips = vec![IpPrefix::new(IpAddr::V4(other.tun_ip), 32).unwrap()];
        cfg.persistent_keepalive = ka;
        let _ = from;
        cfg
    }

    pub fn connect(
        &mut self,
        from: usize,
        to: usize,
        psk: Option<[u8; 32]>,
        ka: Option<u16>,
        endpoint: bool,
    ) {
        let cfg = self.peer_config(from, to, psk, ka, endpoint);
        let id = self.nodes[from].dev.add_peer(cfg).unwrap();
        let ids = &mut self.nodes[from].peer_ids;
        if ids.len() <= to {
            ids.resize(to + 1, None);
        }
        ids[to] = Some(id);
    }

    pub fn pid(&self, from: usize, to: usize) -> PeerId {
        self.nodes[from].peer_ids[to].unwrap()
    }

    fn node_by_addr(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Builds an IP packet from node `from` to node `to` and hands it to `from`'s device.
    pub fn send(&mut self, from: usize, to: usize, payload: &[u8]) -> TunResult {
        let pkt = ipv4_packet(self.nodes[from].tun_ip, self.nodes[to].tun_ip, payload);
        self.send_raw(from, &pkt)
    }

    pub fn send_raw(&mut self, from: usize, pkt: &[u8]) -> TunResult {
        let mut buf = tun_buf(pkt);
        let now = self.now;
        let r = self.nodes[from]
            .dev
            .handle_tun_packet(&mut buf, pkt.len(), now);
        if let TunResult::Send { dst, len } = r {
            self.push(from, dst, buf[..len].to_vec());
        }
        self.collect(from);
        r
    }

    pub fn push(&mut self, from: usize, dst: SocketAddr, data: Vec<u8>) {
        if let Some(to) = self.node_by_addr(dst) {
            let src = self.nodes[from].addr;
            self.in_flight.push_back(Datagram {
                from,
                to,
                src,
                data,
            });
        }
    }

    /// Drains poll_transmit and poll_event of node `i`.
    pub fn collect(&mut self, i: usize) {
        let mut buf = vec![0u8; BUF];
        while let Some((dst, len)) = self.nodes[i].dev.poll_transmit(&mut buf) {
            let data = buf[..len].to_vec();
            self.push(i, dst, data);
        }
        while let Some(e) = self.nodes[i].dev.poll_event() {
            self.nodes[i].events.push(e);
        }
    }

    /// Delivers one datagram to its node; returns the result.
    pub fn deliver(&mut self, d: Datagram) -> NetResult {
        let mut buf = vec![0u8; BUF];
        buf[..d.data.len()].copy_from_slice(&d.data);
        let now = self.now;
        let to = d.to;
        let r = self.nodes[to]
            .dev
            .handle_datagram(d.src, &mut buf, d.data.len(), now);
        self.nodes[to].results.push(r);
        match r {
            NetResult::ToTun { offset, len, .. } => {
                self.nodes[to]
                    .inbox
                    .push(buf[offset..offset + len].to_vec());
            }
            NetResult::Reply { dst, len } => {
                let data = buf[..len].to_vec();
                self.push(to, dst, data);
            }
            _ => {}
        }
        self.collect(to);
        r
    }

    /// Delivers everything in flight (and whatever that causes) at the current time.
    pub fn run(&mut self) {
        let mut guard = 0;
        while let Some(d) = self.in_flight.pop_front() {
            guard += 1;
            assert!(guard < 100_000, "network did not settle");
            if !(self.filter)(&d) {
                self.dropped_by_filter += 1;
                continue;
            }
            self.delivered += 1;
            self.deliver(d);
        }
    }

    /// Advances simulated time to `now + d`, firing timers at their deadlines
    /// and delivering traffic as it is produced.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.run();
        loop {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.dev.poll_timeout())
                .filter(|t| *t <= target)
                .min();
            let Some(t) = next else { break };
            if t > self.now {
                self.now = t;
            }
            for i in 0..self.nodes.len() {
                let now = self.now;
                self.nodes[i].dev.handle_timeout(now);
                self.collect(i);
            }
            self.run();
        }
        self.now = target;
        for i in 0..self.nodes.len() {
            let now = self.now;
            self.nodes[i].dev.handle_timeout(now);
            self.collect(i);
        }
        self.run();
    }

    pub fn stats(&self, node: usize, peer_node: usize) -> netman_proto::PeerStats {
        self.nodes[node]
            .dev
            .peer_stats(self.pid(node, peer_node))
            .unwrap()
    }

    pub fn payloads(&self, node: usize) -> Vec<Vec<u8>> {
        self.nodes[node]
            .inbox
            .iter()
            .map(|p| p[20..].to_vec())
            .collect()
    }

    pub fn count_events(&self, node: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.nodes[node].events.iter().filter(|e| f(e)).count()
    }
}
