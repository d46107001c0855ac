//! The in-memory packet I/O: a TUN device and a pair of UDP sockets that
//! are queues, for unit tests of the data plane without root, devices or
//! sockets (like wireguard-go's `tun/tuntest` and `conn/bindtest`). Each is
//! driven through a shared handle the test keeps: it queues what the
//! kernel would hand the data plane (raw TUN reads, with or without a
//! virtio-net header; received UDP messages, GRO-coalesced or not), reads
//! back what the data plane wrote and sent (every `sendmmsg` message with
//! its GSO segment size, every TUN write after GRO coalescing), and
//! injects faults: an errno for the next reads, writes or sends, or a
//! refusal of every GSO send (as the kernel refuses UDP GSO on an xfrm
//! route or a socket without checksums).
//!
//! The TUN write coalesces with tun-rs's own GRO (`handle_gro`, the code
//! the real device write runs), so a test sees the super-packets the
//! kernel would be handed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use socket2::Socket;
use tun_rs::VIRTIO_NET_HDR_LEN;

use super::super::udp::EXPRESS_MAX;
use super::{Outgoing, RecvBatch, TunIo, UdpIo};

/// What a test sees of and does to an in-memory TUN device.
#[derive(Debug, Default)]
pub struct TunState {
    /// Reads carry a virtio-net header and writes are GRO-coalesced.
    pub offload: bool,
    /// With offload: UDP datagrams are coalesced too (USO).
    pub udp_gso: bool,
    /// Raw reads to hand out, oldest first.
    pub inbound: VecDeque<Vec<u8>>,
    /// Errno values the next reads fail with (before any packet).
    pub read_faults: VecDeque<i32>,
    /// Every packet written (a virtio-net header in front with offload),
    /// in order.
    pub written: Vec<Vec<u8>>,
    /// `send_multiple` calls.
    pub write_calls: usize,
    /// Errno values the next `send_multiple` calls fail with (nothing of
    /// such a batch is written).
    pub write_faults: VecDeque<i32>,
}

/// A TUN device that is two queues.
pub struct MemTun(Rc<RefCell<TunState>>);

impl MemTun {
    /// The device and the test's handle to it.
    pub fn new(offload: bool) -> (MemTun, Rc<RefCell<TunState>>) {
        let st = Rc::new(RefCell::new(TunState {
            offload,
            udp_gso: offload,
            ..TunState::default()
        }));
        (MemTun(st.clone()), st)
    }
}

impl TunIo for MemTun {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        if let Some(errno) = st.read_faults.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let Some(p) = st.inbound.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    }

    fn offload(&self) -> bool {
        self.0.borrow().offload
    }

    fn send_multiple(
        &mut self,
        _gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        st.write_calls += 1;
        if let Some(errno) = st.write_faults.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut to_write = Vec::new();
        let start = if st.offload {
            // The tables are tun-rs's own (unnamed) types, fresh per batch
            // as the device's write resets them.
            tun_rs::handle_gro(
                bufs,
                offset,
                &mut Default::default(),
                &mut Default::default(),
                st.udp_gso,
                &mut to_write,
            )?;
            offset - VIRTIO_NET_HDR_LEN
        } else {
            to_write.extend(0..bufs.len());
            offset
        };
        let mut total = 0;
        for i in to_write {
            let p = bufs
                .get(i)
                .and_then(|b| b.get(start..))
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            total += p.len();
            st.written.push(p.to_vec());
        }
        Ok(total)
    }

    fn poll_fd(&self) -> RawFd {
        -1
    }
}

/// One message as `recvmmsg` returns it: with UDP GRO, several datagrams
/// of `seg` bytes (the last may be shorter) from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: SocketAddr,
    pub data: Vec<u8>,
    pub seg: usize,
}

/// One message the data plane sent: with `seg > 0` a GSO message the
/// kernel would cut into datagrams of `seg` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub dst: SocketAddr,
    pub data: Vec<u8>,
    pub seg: usize,
    /// The `sendmmsg` call it went out with (0: a single `sendto`).
    pub call: usize,
}

impl Sent {
    /// The datagrams on the wire.
    pub fn datagrams(&self) -> Vec<Vec<u8>> {
        let seg = if self.seg == 0 {
            self.data.len().max(1)
        } else {
            self.seg
        };
        self.data.chunks(seg).map(<[u8]>::to_vec).collect()
    }
}

/// What a test sees of and does to in-memory UDP sockets.
#[derive(Debug, Default)]
pub struct UdpState {
    pub port: u16,
    pub v6: bool,
    /// Messages waiting to be received, oldest first.
    pub inbound: VecDeque<Received>,
    /// Every message sent, in order.
    pub sent: Vec<Sent>,
    /// `sendmmsg` calls.
    pub mmsg_calls: usize,
    /// Waits for send-buffer room.
    pub waits: usize,
    /// Errno values the next sends fail with: a `sendmmsg` whose first
    /// message meets one fails (a later message ends the call short, as
    /// the kernel does), a single send takes one.
    pub send_faults: VecDeque<i32>,
    /// Every GSO message fails with this errno (single datagrams go).
    pub refuse_gso: Option<i32>,
    /// Errno values the next receives fail with.
    pub recv_faults: VecDeque<i32>,
    /// An express lane, as the real sockets have (datagrams of at most
    /// `EXPRESS_MAX` bytes are received from it, the rest from the main
    /// lane).
    pub express: bool,
}

impl UdpState {
    /// Take everything sent so far.
    pub fn take_sent(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }
}

/// UDP sockets that are queues.
pub struct MemUdp(Rc<RefCell<UdpState>>);

impl MemUdp {
    /// Sockets on `port` (IPv4, and IPv6 when `v6`), and the test's handle.
    pub fn new(port: u16, v6: bool) -> (MemUdp, Rc<RefCell<UdpState>>) {
        let st = Rc::new(RefCell::new(UdpState {
            port,
            v6,
            ..UdpState::default()
        }));
        (MemUdp(st.clone()), st)
    }
}

impl UdpIo for MemUdp {
    fn port(&self) -> u16 {
        self.0.borrow().port
    }

    fn has_v6(&self) -> bool {
        self.0.borrow().v6
    }

    fn recv(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        self.recv_lane(v6, false, batch)
    }

    fn recv_express(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        self.recv_lane(v6, true, batch)
    }

    fn send_mmsg(&mut self, _v6: bool, arena: &[u8], msgs: &[Outgoing]) -> io::Result<usize> {
        self.send_mmsg_mem(arena, msgs)
    }

    fn send_one(&mut self, data: &[u8], dst: SocketAddr) -> io::Result<()> {
        self.send_one_mem(data, dst)
    }

    fn wait_writable(&mut self, _v6: bool) {
        self.0.borrow_mut().waits += 1;
    }

    fn poll_fds(&self) -> [RawFd; 2] {
        [-1, -1]
    }

    fn reply_sockets(&self) -> io::Result<(Option<Socket>, Option<Socket>)> {
        Ok((None, None))
    }
}

impl MemUdp {
    /// What `recv` (`express` false) or `recv_express` takes: with
    /// `UdpState::express` the queue is split as the kernel's steering
    /// program splits it (datagrams of at most `EXPRESS_MAX` bytes to the
    /// express lane), else everything is in the main lane.
    fn recv_lane(&mut self, v6: bool, express: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        if express && !st.express {
            return Ok(0);
        }
        if let Some(errno) = st.recv_faults.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let split = st.express;
        let lane = |m: &Received| !split || (m.data.len() <= EXPRESS_MAX as usize) == express;
        batch.lens.clear();
        batch.segs.clear();
        batch.srcs.clear();
        let mut rest = VecDeque::new();
        while let Some(m) = st.inbound.pop_front() {
            let i = batch.lens.len();
            if i < batch.slab.slots() && m.src.is_ipv6() == v6 && lane(&m) {
                let n = m.data.len().min(batch.slab.stride());
                batch.slab.slot_mut(i)[..n].copy_from_slice(&m.data[..n]);
                batch.lens.push(n);
                batch.segs.push(m.seg.clamp(1, n.max(1)));
                batch.srcs.push(m.src);
            } else {
                rest.push_back(m);
            }
        }
        st.inbound = rest;
        Ok(batch.lens.len())
    }

    fn send_mmsg_mem(&mut self, arena: &[u8], msgs: &[Outgoing]) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        st.mmsg_calls += 1;
        let call = st.mmsg_calls;
        for (i, m) in msgs.iter().enumerate() {
            let fault = if m.seg > 0 && st.refuse_gso.is_some() {
                st.refuse_gso
            } else if i == 0 {
                st.send_faults.pop_front()
            } else {
                st.send_faults.front().copied()
            };
            if let Some(errno) = fault {
                return if i == 0 {
                    Err(io::Error::from_raw_os_error(errno))
                } else {
                    Ok(i)
                };
            }
            let data = arena
                .get(m.start..m.start + m.len)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
            st.sent.push(Sent {
                dst: m.dst,
                data: data.to_vec(),
                seg: m.seg,
                call,
            });
        }
        Ok(msgs.len())
    }

    fn send_one_mem(&mut self, data: &[u8], dst: SocketAddr) -> io::Result<()> {
        let mut st = self.0.borrow_mut();
        if let Some(errno) = st.send_faults.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        st.sent.push(Sent {
            dst,
            data: data.to_vec(),
            seg: 0,
            call: 0,
        });
        Ok(())
    }
}
