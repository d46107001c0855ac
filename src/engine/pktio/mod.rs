//! The packet-I/O seam of the data plane: the TUN side and the UDP side
//! behind two traits, at the granularity the hot path already works in
//! (one raw TUN read, which may be a virtio-net super-packet; one
//! GRO-coalescing TUN write of a batch; one `recvmmsg` into a
//! [`RecvBatch`]; one `sendmmsg` of [`Outgoing`] messages, GSO or not).
//! Everything above the seam — splitting super-packets ([`super::tunrx`]),
//! packing datagrams into GSO messages and the GSO back-off ([`tx`]), the
//! encryption and decryption around them, the drop counters — is the same
//! code whichever implementation is below it.
//!
//! Two implementations: the real one (the TUN queue, `tun_rs::SyncDevice`,
//! implements [`TunIo`] directly; the sockets are [`super::udp::RealUdp`]),
//! and an in-memory one ([`mem`]: queues of packets and datagrams, with
//! knobs that inject errno values and GSO refusals), with which the data
//! plane is unit-tested without root, a device or a socket. The same split
//! as wireguard-go's `tun/tuntest` and `conn/bindtest` and gotatun's
//! channel-backed TUN and UDP; unlike them the data plane is generic over
//! the two traits (static dispatch: no vtable call per packet or batch),
//! and a descriptor to poll is part of each trait, since the real loop
//! waits in `poll(2)` while tests call the loop's step
//! (`DataPlane::turn`) directly.

#[cfg(test)]
pub mod mem;
pub mod tx;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::Socket;

pub use super::udp::RecvBatch;

/// The TUN side.
pub trait TunIo {
    /// Take one packet off the device into `buf` (a virtio-net header in
    /// front when [`TunIo::offload`]); `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Whether reads carry a virtio-net header (TSO/USO super-packets in)
    /// and writes may be coalesced (GRO super-packets out).
    fn offload(&self) -> bool;

    /// Write inner packets, each at `offset` in its buffer (with at least
    /// a virtio-net header's room in front): with offloads, TCP segments
    /// and UDP datagrams of one flow are coalesced first (`gro` is reused
    /// state). One error stands for the batch.
    fn send_multiple(
        &mut self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize>;

    /// The descriptor the loop polls for reads (-1: none).
    fn poll_fd(&self) -> RawFd;
}

impl TunIo for tun_rs::SyncDevice {
    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tun_rs::SyncDevice::recv(self, buf)
    }

    fn offload(&self) -> bool {
        self.tcp_gso()
    }

    #[inline]
    fn send_multiple(
        &mut self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        tun_rs::DeviceImpl::send_multiple(self, gro, bufs, offset)
    }

    fn poll_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// One message of a batch send: `len` bytes at `start` of the queue's
/// arena, to `dst`; with `seg > 0` a UDP GSO message the kernel cuts into
/// datagrams of `seg` bytes (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub dst: SocketAddr,
    pub start: usize,
    pub len: usize,
    pub seg: usize,
}

/// The UDP side: an IPv4 socket and optionally an IPv6 one, on one port.
pub trait UdpIo {
    /// The bound port.
    fn port(&self) -> u16;

    /// Whether there is an IPv6 socket.
    fn has_v6(&self) -> bool;

    /// Receive up to `batch`'s slots of messages from the IPv4 (or IPv6)
    /// socket without blocking (UDP GRO: one message may hold several
    /// datagrams of `segs[i]` bytes). Returns how many arrived, 0 when
    /// none is waiting or there is no such socket.
    fn recv(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize>;

    /// Receive from the family's express lane, where the kernel puts the
    /// datagrams of at most `udp::EXPRESS_MAX` bytes (see
    /// `udp::UdpSockets::express_v4`), like [`UdpIo::recv`]; 0 when there
    /// is no such lane.
    fn recv_express(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        let _ = (v6, batch);
        Ok(0)
    }

    /// The express lanes' descriptors: IPv4, IPv6 (-1: none).
    fn express_fds(&self) -> [RawFd; 2] {
        [-1, -1]
    }

    /// One `sendmmsg` of `msgs` (all of one family, bytes in `arena`):
    /// how many messages, from the first, went out; an error only when
    /// none did.
    fn send_mmsg(&mut self, v6: bool, arena: &[u8], msgs: &[Outgoing]) -> io::Result<usize>;

    /// Send one datagram.
    fn send_one(&mut self, data: &[u8], dst: SocketAddr) -> io::Result<()>;

    /// Wait (briefly, bounded) for room in the socket's send buffer.
    fn wait_writable(&mut self, v6: bool);

    /// The descriptors the loop polls: IPv4, IPv6 (-1: none).
    fn poll_fds(&self) -> [RawFd; 2];

    /// Duplicates of the sockets for the handshake worker's cookie replies
    /// (none: the replies are not sent).
    fn reply_sockets(&self) -> io::Result<(Option<Socket>, Option<Socket>)>;

    /// Send one datagram on the socket of `dst`'s family; `None` when
    /// there is no such socket (IPv6 without one).
    fn send_to(&mut self, data: &[u8], dst: SocketAddr) -> Option<io::Result<()>> {
        if dst.is_ipv6() && !self.has_v6() {
            return None;
        }
        Some(self.send_one(data, dst))
    }
}
