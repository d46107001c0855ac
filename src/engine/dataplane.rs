//! The data plane: one thread, one `poll(2)` loop over the TUN queue, the
//! UDP sockets, a command eventfd and a signalfd, driving the sans-IO
//! protocol core. Every wake-up moves batches: packets read from the TUN
//! device (super-packets split into segments, see [`super::tunrx`]) are
//! encrypted in place and sent with one `sendmmsg` per socket and batch;
//! datagrams received with one `recvmmsg` are decrypted in place and
//! written to the TUN device. Nothing is allocated per packet, and every
//! packet lost on the way is counted by reason (the core's `DropReason`s
//! and the I/O ones of [`super::drops`]). Handshake messages are only
//! classified here and handed to their own queue and worker thread
//! ([`super::handshake`]), so a handshake flood never sits in front of
//! transport data.
//!
//! The TUN device and the sockets are reached through the packet-I/O
//! traits of [`super::pktio`] (static dispatch); one iteration of the loop
//! is [`DataPlane::turn`], which the unit tests (`dataplane/tests.rs`)
//! drive over in-memory I/O without `poll`, root or devices. The sending
//! side (TUN → flow queue → UDP) is `dataplane/send.rs`, the receiving
//! side (express and bulk lanes → TUN) `dataplane/receive.rs`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use crate::clock::unix_secs;

use netman_proto::{Device, Event, IpPrefix, NetResult, PeerConfig, PeerId, PublicKey};
use thiserror::Error;

use super::config::{EngineChange, EngineConfig, LoadedKeys};
use super::control::{EngineStatus, PeerStatus};
use super::drops::{IoDropReason, IoDrops};
use super::fq::{FlowQueues, Params};
use super::handshake::{GATED_PER_ROUND, Handshakes, Identity};
use super::pktio::tx::TxQueue;
use super::pktio::{RecvBatch, TunIo, UdpIo};
use super::tunrx::TunRx;
use super::udp::{RealUdp, UdpSockets};
use crate::keys::os_random;
use receive::RxCursor;

/// UDP messages per `recvmmsg` (each up to 64 KiB with UDP GRO).
const RX_MSGS: usize = 32;
/// Bytes of bulk-lane datagrams decrypted per turn before the TUN side and
/// the express lane get their turn again (a GRO message is finished).
const BULK_BYTES: usize = 64 << 10;
/// Room for one express-lane datagram (at most `udp::EXPRESS_MAX` bytes;
/// anything longer is cut and then fails authentication).
const EXPRESS_SLOT: usize = 2048;
/// Segments encrypted and sent as one batch, and inner packets handed to
/// one GRO-coalescing TUN write.
const TUN_BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Reads from the TUN device into the flow queue per turn (each may be a
/// super-packet): enough to keep the driver's ring empty.
const TUN_READS: usize = 256;
/// Segments served from the flow queue per turn before the other
/// descriptors (and the TUN ring) get their turn again (a super-packet is
/// always finished): a packet that arrives meanwhile waits at most this.
/// Measured (docs/performance.md, "Queueing"): 32 segments and 64 KiB of
/// bulk datagrams a turn keep a ping under load at a median of 0.4 ms
/// where 128 and 256 KiB gave 0.9 ms, at the same TCP throughput.
const TUN_SERVE: usize = 32;
/// Behind a packet: room for padding and the AEAD tag.
const TAILROOM: usize = netman_proto::consts::TUN_TAILROOM;
/// Room for the largest packet a TUN device can hand us, with the
/// transport header in front and padding + tag behind.
const SLOT: usize = HEADROOM + super::tunrx::MAX_PACKET + TAILROOM;
/// The transport header is written in front of the inner packet; it is
/// also room for the virtio-net header of an offloading TUN write.
const HEADROOM: usize = netman_proto::consts::TUN_HEADROOM;
const _: () = assert!(HEADROOM >= tun_rs::VIRTIO_NET_HDR_LEN);

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("attach to TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bind UDP port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Config(#[from] super::config::ConfigError),
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Requests from the control thread.
pub enum Command {
    Status(mpsc::Sender<EngineStatus>),
    Configure {
        config: Box<EngineConfig>,
        dry_run: bool,
        reply: mpsc::Sender<Result<Vec<EngineChange>, String>>,
    },
    /// A hostname endpoint resolved to a new address: send to it from now
    /// on (like a roaming peer: the session stays). The peer is named by
    /// its public key and its endpoint name, so a reply for a
    /// peer since removed or given another endpoint changes nothing.
    SetEndpoint {
        public_key: PublicKey,
        name: String,
        addr: SocketAddr,
    },
    /// Start a handshake with each of these peers (by name) now: a change
    /// on probation hears from them again (see `state::HealthGate`).
    Rehandshake(Vec<String>),
    Stop,
}

/// A handle to wake the data plane with a command. It shares the eventfd
/// with the data plane, so the descriptor stays open as long as either
/// holds it.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
}

impl Control {
    pub fn send(&self, cmd: Command) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| "the data plane has stopped".to_string())?;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd that the
        // shared OwnedFd keeps open.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

/// Attach a queue of the TUN device `name`, with offloads (virtio-net
/// header: TSO/USO super-packets in, GRO-coalesced packets out) when the
/// kernel has them, plain packets otherwise.
fn attach_tun(name: &str) -> Result<tun_rs::SyncDevice, EngineError> {
    let err = |source| EngineError::Tun {
        name: name.to_string(),
        source,
    };
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .multi_queue(true)
            .offload(offload)
            .build_sync()
    };
    // NETMAN_TUN_OFFLOAD=off forces plain packets (troubleshooting, and the
    // tests of the fallback path).
    let want = std::env::var("NETMAN_TUN_OFFLOAD").map_or(true, |v| v != "off");
    let dev = match build(want) {
        Ok(d) => d,
        Err(e) if want => {
            tracing::info!(error = %e, "TUN offloads unavailable; using plain packets");
            build(false).map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    dev.set_nonblocking(true).map_err(err)?;
    Ok(dev)
}

fn bind(port: Option<u16>) -> Result<RealUdp, EngineError> {
    UdpSockets::bind(port.unwrap_or(0))
        .map(|socks| RealUdp::new(socks, TUN_BATCH))
        .map_err(|source| EngineError::Bind {
            port: port.unwrap_or(0),
            source,
        })
}

fn set_mark(udp: &RealUdp, mark: u32) -> Result<(), EngineError> {
    udp.socks.set_mark(mark).map_err(|source| EngineError::Io {
        what: "set the fwmark of the UDP sockets",
        source,
    })
}

fn peer_config(spec: &super::config::PeerSpec, keys: &LoadedKeys, i: usize) -> PeerConfig {
    let (public, psk) = &keys.peers[i];
    let mut pc = PeerConfig::new(*public);
    pc.preshared_key = psk.clone();
    pc.endpoint = spec.endpoint;
    pc.allowed_ips = spec
        .allowed_ips
        .iter()
        .filter_map(|n| IpPrefix::new(n.addr(), n.prefix_len()).ok())
        .collect();
    pc.persistent_keepalive = spec.persistent_keepalive;
    pc
}

fn new_device(keys: &LoadedKeys, mtu: u32) -> Result<Device, EngineError> {
    let seed = os_random().map_err(|source| EngineError::Io {
        what: "read OS randomness",
        source,
    })?;
    let mut d = Device::new(
        keys.private.clone(),
        *seed,
        Instant::now(),
        SystemTime::now(),
    );
    d.set_mtu(Some(mtu as usize));
    Ok(d)
}

/// The running data plane, over the real TUN queue and sockets or (in
/// tests) any other packet I/O (see [`super::pktio`]).
pub struct DataPlane<T: TunIo = tun_rs::SyncDevice, U: UdpIo = RealUdp> {
    config: EngineConfig,
    keys: LoadedKeys,
    device: Device,
    /// Parallel to `config.peers`.
    ids: Vec<PeerId>,
    tun: T,
    /// Interface index of the device the queue is attached to.
    tun_index: u32,
    /// The device went away under the queue (deleted by hand): leave it
    /// out of `poll` until a configure re-attaches it.
    tun_dead: bool,
    udp: U,
    started_at: SystemTime,
    /// TUN reads split into segments (each at `HEADROOM`, encrypted in
    /// place).
    tun_rx: TunRx,
    /// Whether the queued TUN reads carry a virtio-net header.
    vnet: bool,
    /// TUN reads waiting to be sent, in per-flow queues (see
    /// [`super::fq`]).
    fq: FlowQueues,
    /// Packets lost to I/O, by reason.
    drops: IoDrops,
    tx: TxQueue,
    /// The bulk lane's receive batch, and how far it has been carried.
    rx: RecvBatch,
    rx_at: RxCursor,
    /// The express lanes' receive batch.
    rx_express: RecvBatch,
    /// Decrypted inner packets (at `HEADROOM`) for the next TUN write.
    to_tun: Vec<Vec<u8>>,
    gro: tun_rs::GROTable,
    scratch: Vec<u8>,
    cmd_rx: mpsc::Receiver<Command>,
    wake: Arc<OwnedFd>,
    signals: Option<OwnedFd>,
    /// Handshake messages go to their own queue and worker thread.
    handshakes: Handshakes,
}

impl DataPlane {
    /// Attach to the TUN device, bind the sockets, build the protocol
    /// device with every peer. `signals` is a signalfd that stops the loop.
    pub fn new(
        config: EngineConfig,
        signals: Option<OwnedFd>,
    ) -> Result<(DataPlane, Control), EngineError> {
        let keys = config.load_keys()?;
        let tun = attach_tun(&config.interface)?;
        let udp = bind(config.listen_port)?;
        if let Some(mark) = config.fwmark {
            set_mark(&udp, mark)?;
        }
        let device = new_device(&keys, config.mtu)?;
        let tun_index = tun.if_index().unwrap_or(0);
        DataPlane::assemble(config, keys, device, tun, udp, tun_index, signals)
    }
}

impl<T: TunIo, U: UdpIo> DataPlane<T, U> {
    /// The data plane over `tun` and `udp`, with the protocol `device`
    /// (every peer of `config` is added to it). `tun_index`: the interface
    /// index of the device `tun` is a queue of.
    fn assemble(
        config: EngineConfig,
        keys: LoadedKeys,
        mut device: Device,
        tun: T,
        udp: U,
        tun_index: u32,
        signals: Option<OwnedFd>,
    ) -> Result<(DataPlane<T, U>, Control), EngineError> {
        let handshakes = Identity::new(&keys.private, &udp)
            .and_then(Handshakes::new)
            .map_err(|source| EngineError::Io {
                what: "set up the handshake queue",
                source,
            })?;
        let mut ids = Vec::with_capacity(config.peers.len());
        for (i, p) in config.peers.iter().enumerate() {
            let id = device
                .add_peer(peer_config(p, &keys, i))
                .map_err(|e| EngineError::Peer {
                    peer: p.name.clone(),
                    reason: e.to_string(),
                })?;
            ids.push(id);
        }
        // SAFETY: eventfd returns a new descriptor or -1.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(EngineError::Io {
                what: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `wake` is a fresh descriptor we own.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        let (tx, cmd_rx) = mpsc::channel();
        let control = Control {
            tx,
            wake: wake.clone(),
        };
        let tun_rx = TunRx::new(
            TUN_BATCH,
            config.mtu as usize,
            HEADROOM,
            TAILROOM,
            tun.offload(),
        );
        let vnet = tun.offload();
        let fq_key = os_random()
            .map(|r| u64::from_le_bytes(r[..8].try_into().unwrap_or_default()))
            .map_err(|source| EngineError::Io {
                what: "read OS randomness",
                source,
            })?;
        tracing::info!(
            offload = tun.offload(),
            deployment = %config.deployment,
            interface = %config.interface,
            port = udp.port(),
            peers = config.peers.len(),
            "engine started"
        );
        Ok((
            DataPlane {
                config,
                keys,
                device,
                ids,
                tun_index,
                tun_dead: false,
                tun,
                udp,
                started_at: SystemTime::now(),
                tun_rx,
                vnet,
                fq: FlowQueues::new(
                    Params::default(),
                    tun_rs::VIRTIO_NET_HDR_LEN + super::tunrx::MAX_PACKET,
                    fq_key,
                ),
                drops: IoDrops::default(),
                tx: TxQueue::new(TUN_BATCH, TUN_BATCH * 2048, true),
                rx: RecvBatch::new(RX_MSGS, 65536),
                rx_at: RxCursor::default(),
                rx_express: RecvBatch::new(RX_MSGS, EXPRESS_SLOT),
                to_tun: (0..TUN_BATCH).map(|_| Vec::with_capacity(SLOT)).collect(),
                gro: tun_rs::GROTable::new(),
                scratch: vec![0; SLOT],
                cmd_rx,
                wake,
                signals,
                handshakes,
            },
            control,
        ))
    }

    pub fn listen_port(&self) -> u16 {
        self.udp.port()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// Which descriptors `poll` found readable, for [`DataPlane::turn`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub tun: bool,
    pub udp4: bool,
    pub udp6: bool,
    pub express4: bool,
    pub express6: bool,
    pub handshakes: bool,
}

impl Ready {
    /// Everything: a step that looks at every source (what tests do).
    pub const ALL: Ready = Ready {
        tun: true,
        udp4: true,
        udp6: true,
        express4: true,
        express6: true,
        handshakes: true,
    };
}

impl DataPlane {
    /// Run until a stop command or a signal.
    pub fn run(&mut self) -> Result<(), EngineError> {
        self.handshakes.spawn().map_err(|source| EngineError::Io {
            what: "start the handshake worker",
            source,
        })?;
        loop {
            let now = Instant::now();
            let timeout_ms = match self.device.poll_timeout() {
                // Packets are queued, or received and not yet carried:
                // look at the descriptors and go on.
                _ if self.busy() => 0,
                Some(t) => {
                    let d = t.saturating_duration_since(now);
                    // Round up so we never wake before the deadline.
                    (d.as_micros().div_ceil(1000)).min(1000) as i32
                }
                None => 1000,
            };
            let tun_fd = if self.tun_dead {
                -1
            } else {
                self.tun.poll_fd()
            };
            let [udp4, udp6] = self.udp.poll_fds();
            let [express4, express6] = self.udp.express_fds();
            let mut fds = [
                pollfd(tun_fd),
                pollfd(udp4),
                pollfd(udp6),
                pollfd(self.wake.as_raw_fd()),
                pollfd(self.signals.as_ref().map_or(-1, |s| s.as_raw_fd())),
                pollfd(self.handshakes.wake_fd()),
                pollfd(express4),
                pollfd(express6),
            ];
            // SAFETY: valid array of pollfd structures.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(EngineError::Io {
                    what: "poll",
                    source: e,
                });
            }
            let ready = |i: usize| fds[i].revents & libc::POLLIN != 0;
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                tracing::warn!(
                    interface = %self.config.interface,
                    "the TUN device went away; waiting for it to be re-created"
                );
                self.tun_dead = true;
            }
            self.turn(
                Ready {
                    tun: ready(0),
                    udp4: ready(1),
                    udp6: ready(2),
                    express4: ready(6),
                    express6: ready(7),
                    handshakes: ready(5),
                },
                Instant::now(),
            );
            if ready(4) {
                tracing::info!("signal received; stopping the engine");
                return Ok(());
            }
            if ready(3) {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into a live u64 from our eventfd.
                unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                if self.handle_commands() {
                    return Ok(());
                }
            }
        }
    }
}

impl<T: TunIo, U: UdpIo> DataPlane<T, U> {
    /// One step of the loop at `now`: move what the `ready` sources hold
    /// (transport first, then the handshakes that passed the worker), then
    /// the timers, the core's transmits and its events.
    pub fn turn(&mut self, ready: Ready, now: Instant) {
        // Small datagrams first: they never wait behind the bulk.
        if ready.express4 {
            self.express_to_tun(false, now);
        }
        if ready.express6 {
            self.express_to_tun(true, now);
        }
        self.bulk_to_tun(ready, now);
        if ready.tun {
            self.tun_to_queue(now);
        }
        if !self.fq.is_empty() {
            self.queue_to_udp(now, TUN_SERVE);
        }
        // Behind the transport batches.
        if ready.handshakes {
            self.finish_handshakes(now);
        }
        self.device.handle_timeout(now);
        self.flush_transmits();
        self.drain_events();
    }

    /// Whether work is left for the next turn: TUN reads queued, or
    /// datagrams received and not yet carried.
    pub(crate) fn busy(&self) -> bool {
        !self.fq.is_empty() || self.rx_at.next < self.rx_at.got
    }

    /// Finish up to `GATED_PER_ROUND` handshake messages that passed the
    /// worker (see `handshake.rs`): only authenticated ones cost DH work
    /// here. More are left for the next iteration, after its transport.
    fn finish_handshakes(&mut self, now: Instant) {
        self.handshakes.ack_wake();
        for _ in 0..GATED_PER_ROUND {
            let Some(msg) = self.handshakes.next_passed() else {
                return;
            };
            if let NetResult::Reply { dst, len } =
                self.device.handle_gated(msg, &mut self.scratch, now)
            {
                let _ = self.udp.send_to(&self.scratch[..len], dst);
            }
        }
        self.handshakes.rewake();
    }

    /// Send everything the core queued (handshakes, keepalives, staged
    /// packets released by a new session).
    fn flush_transmits(&mut self) {
        while let Some((dst, len)) = self.device.poll_transmit(&mut self.scratch) {
            match self.udp.send_to(&self.scratch[..len], dst) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::debug!(%dst, error = %e, "UDP send failed");
                    self.drops.add(IoDropReason::UdpSendError, 1);
                }
                None => self.drops.add(IoDropReason::NoIpv6Socket, 1),
            }
        }
    }

    fn peer_name(&self, id: PeerId) -> &str {
        self.ids
            .iter()
            .position(|x| *x == id)
            .and_then(|i| self.config.peers.get(i))
            .map_or("?", |p| p.name.as_str())
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.device.poll_event() {
            match ev {
                Event::HandshakeCompleted { peer, initiator } => {
                    tracing::info!(
                        peer = self.peer_name(peer),
                        initiator,
                        "handshake completed"
                    );
                }
                Event::EndpointChanged { peer, endpoint } => {
                    tracing::info!(peer = self.peer_name(peer), %endpoint, "endpoint changed");
                }
                Event::HandshakeFailed { peer } => {
                    tracing::info!(
                        peer = self.peer_name(peer),
                        "handshake gave up after retries"
                    );
                }
                other => tracing::debug!(event = ?other, "protocol event"),
            }
        }
    }
}

impl DataPlane {
    /// Returns true when the engine must stop.
    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Stop => return true,
                Command::Status(reply) => {
                    let _ = reply.send(self.status());
                }
                Command::Configure {
                    config,
                    dry_run,
                    reply,
                } => {
                    let r = self.configure(*config, dry_run).map_err(|e| e.to_string());
                    let _ = reply.send(r);
                }
                Command::SetEndpoint {
                    public_key,
                    name,
                    addr,
                } => self.set_endpoint(&public_key, &name, addr),
                Command::Rehandshake(names) => self.rehandshake(&names),
            }
        }
        false
    }
}

impl<T: TunIo, U: UdpIo> DataPlane<T, U> {
    /// Point the peer with `public_key`, whose endpoint is the name
    /// `name`, at `addr` (see [`Command::SetEndpoint`]).
    fn set_endpoint(&mut self, public_key: &PublicKey, name: &str, addr: SocketAddr) {
        let Some(i) = self.config.peers.iter().position(|p| {
            p.public_key == *public_key
                && p.endpoint_name
                    .as_ref()
                    .is_some_and(|n| n.to_string() == name)
        }) else {
            return;
        };
        let (Some(spec), Some(id)) = (self.config.peers.get_mut(i), self.ids.get(i)) else {
            return;
        };
        if spec.endpoint == Some(addr) {
            return;
        }
        spec.endpoint = Some(addr);
        let pc = peer_config(spec, &self.keys, i);
        // Same public key: the sessions, timers and counters stay; only
        // where the next datagram goes changes.
        if let Err(e) = self.device.update_peer(*id, pc) {
            tracing::error!(peer = %spec.name, error = %e, "could not set the endpoint");
        }
    }

    /// Initiate a handshake with each named peer that has an endpoint
    /// (rate limited like every initiation; the others wait for theirs).
    fn rehandshake(&mut self, names: &[String]) {
        let now = Instant::now();
        for (spec, id) in self.config.peers.iter().zip(&self.ids) {
            if names.contains(&spec.name)
                && let Err(e) = self.device.initiate_handshake(*id, now)
            {
                tracing::debug!(peer = %spec.name, error = %e, "no handshake initiated");
            }
        }
    }

    pub fn status(&self) -> EngineStatus {
        let mut peers = Vec::with_capacity(self.ids.len());
        for (i, id) in self.ids.iter().enumerate() {
            let Some(spec) = self.config.peers.get(i) else {
                continue;
            };
            let stats = self.device.peer_stats(*id);
            peers.push(PeerStatus {
                name: spec.name.clone(),
                public_key: spec.public_key,
                endpoint: stats.as_ref().and_then(|s| s.endpoint),
                allowed_ips: spec.allowed_ips.clone(),
                latest_handshake: stats.as_ref().and_then(|s| s.last_handshake).map(unix_secs),
                rx_bytes: stats.as_ref().map_or(0, |s| s.rx_bytes),
                tx_bytes: stats.as_ref().map_or(0, |s| s.tx_bytes),
                persistent_keepalive: spec.persistent_keepalive,
                handshakes: stats.as_ref().map_or(0, |s| s.handshakes_completed),
                handshake_attempts: stats.as_ref().map_or(0, |s| s.handshake_attempts),
                preshared_key: spec.preshared_key_file.is_some(),
                endpoint_name: spec.endpoint_name.as_ref().map(ToString::to_string),
                endpoint_error: None,
            });
        }
        // Every reason, zeros included: the metrics export each from the
        // start.
        let mut drops: BTreeMap<String, u64> = self
            .device
            .drop_counters()
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), n))
            .collect();
        let mut io = self.drops.clone();
        let fq = self.fq.drops();
        io.add(IoDropReason::QueueDelay, fq.delay as usize);
        io.add(IoDropReason::QueueFull, fq.full as usize);
        drops.extend(io.iter().map(|(r, n)| (r.as_str().to_string(), n)));
        for (label, n) in self.handshakes.drop_counts() {
            *drops.entry(label.to_string()).or_default() += n;
        }
        EngineStatus {
            deployment: self.config.deployment.clone(),
            pid: std::process::id(),
            interface: self.config.interface.clone(),
            listen_port: self.udp.port(),
            public_key: self.device.public_key(),
            started_at: unix_secs(self.started_at),
            peers,
            drops,
            udp_gso_refused: self.tx.gso_refused(),
            config: self.config.clone(),
            watch: None,
            watch_counters: None,
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Block the stop signals in this thread (and the threads it spawns later)
/// and return a signalfd that reports them.
pub fn stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask and
    // signalfd with valid arguments.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// How long the CLI waits for the engine to answer.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

mod configure;
mod receive;
mod send;
#[cfg(test)]
mod tests;
