//! The UDP side of the data plane: one IPv4 and one IPv6 socket bound to the
//! listen port, large kernel buffers, and batched receive/send with
//! `recvmmsg`/`sendmmsg` (one system call for many datagrams). [`RealUdp`]
//! is the real implementation of the packet-I/O seam's `UdpIo` (see
//! `super::pktio`); what to send and how to react to a refusal is decided
//! above it, in `pktio::tx`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use super::pktio::{Outgoing, UdpIo};

/// The send queue lives above the packet-I/O seam now; this path stays for
/// the benches.
pub use super::pktio::tx::TxQueue;

/// Socket buffer size asked for (wireguard-go uses 7 MiB): a small buffer
/// overflows under bursts and TCP through the tunnel collapses.
const SOCKET_BUFFER: usize = 7 << 20;
/// The main (bulk) lane's receive buffer where there is an express lane
/// (see [`lanes`]).
const BULK_LANE_BUFFER: usize = 4 << 20;

/// Datagrams of up to this many payload bytes take the express lane: an
/// inner packet of up to 208 bytes (a ping, a TCP acknowledgement, a DNS
/// query, a keystroke, a voice frame) and every handshake message.
pub const EXPRESS_MAX: u32 = 256;

/// The engine's UDP sockets.
pub struct UdpSockets {
    pub v4: Socket,
    pub v6: Option<Socket>,
    pub port: u16,
    /// The express lane of each family: a second socket on the same port
    /// (one `SO_REUSEPORT` group with the first) to which a classic BPF
    /// program steers every datagram of at most [`EXPRESS_MAX`] bytes, so
    /// they are read before the bulk queued in the first socket (none
    /// where the kernel refuses the program).
    pub express_v4: Option<Socket>,
    pub express_v6: Option<Socket>,
}

impl UdpSockets {
    /// Bind both families to `port` (0: a random free port, the same for
    /// both). IPv6 is optional: without it (disabled in the namespace) the
    /// engine runs IPv4 only.
    pub fn bind(port: u16) -> io::Result<UdpSockets> {
        let mut last_err = None;
        for _ in 0..16 {
            // First without SO_REUSEPORT, as any other program would bind:
            // a port in use is refused here (and a random port is one no
            // SO_REUSEPORT group holds). Then the lanes take it over.
            let v4 = new_socket(Domain::IPV4)?;
            v4.bind(&SockAddr::from(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            )))?;
            let bound = v4
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("bound socket has no port"))?;
            let v6 = match bind_v6(bound) {
                Ok(v6) => v6,
                // A random v4 port may be taken on v6: try another.
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match with_express_lanes(v4, v6, bound) {
                Ok(socks) => return Ok(socks),
                // Taken between the two binds (a race): try again.
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free UDP port")))
    }

    /// Put `mark` (SO_MARK; 0: none) on both sockets' datagrams, so
    /// policy rules keep them out of the tunnel they carry (a full
    /// tunnel). Needs CAP_NET_ADMIN, which the engine keeps.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        let mark = libc::c_int::from_ne_bytes(mark.to_ne_bytes());
        setsockopt_int(self.v4.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark)?;
        if let Some(v6) = &self.v6 {
            setsockopt_int(v6.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark)?;
        }
        Ok(())
    }

    /// The socket for datagrams to `dst`.
    pub fn for_dst(&self, dst: &SocketAddr) -> Option<&Socket> {
        match dst {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

fn new_socket(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    set_buffers(&s);
    // Coalesce received datagrams of one flow (UDP GRO, Linux 5.0+): a
    // whole GSO train from the peer arrives as one message. Without it
    // every datagram arrives on its own, which also works.
    let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1);
    Ok(s)
}

fn set_buffers(s: &Socket) {
    set_buffer(s, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, SOCKET_BUFFER);
    set_buffer(s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SOCKET_BUFFER);
}

fn set_buffer(s: &Socket, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    // As root, the *FORCE variants exceed net.core.{r,w}mem_max.
    let v = bytes as libc::c_int;
    if setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, force, v).is_err() {
        let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, plain, v);
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    setsockopt(fd, level, opt, &v)
}

/// `setsockopt(2)` with the option value `v`.
fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a live T and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The sockets on `port`: each family's plain socket re-bound as the
/// first of an `SO_REUSEPORT` group with an express socket (see
/// [`UdpSockets::express_v4`]). Where the kernel refuses the steering
/// program the family keeps one plain socket.
fn with_express_lanes(v4: Socket, v6: Option<Socket>, port: u16) -> io::Result<UdpSockets> {
    let addr4 = SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let addr6 = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    let (v4, express_v4) = lanes(Domain::IPV4, &addr4, v4)?;
    let (v6, express_v6) = match v6 {
        Some(s) => {
            let (main, express) = lanes(Domain::IPV6, &addr6, s)?;
            (Some(main), express)
        }
        None => (None, None),
    };
    Ok(UdpSockets {
        v4,
        v6,
        port,
        express_v4,
        express_v6,
    })
}

/// Replace `plain` (bound to `addr`) by a main and an express socket on
/// `addr` in one `SO_REUSEPORT` group, steered by [`steer_small`]; where
/// the kernel has no such steering, a plain socket on `addr` again and no
/// express one. An error only when the address can no longer be bound.
fn lanes(domain: Domain, addr: &SockAddr, plain: Socket) -> io::Result<(Socket, Option<Socket>)> {
    // Both with UDP GRO: the kernel's GRO stage looks the socket up
    // without running the program (by hash), and coalesces only for a
    // socket that asked for it; what it coalesced is then steered by its
    // whole length (to the main lane unless it is still small).
    let (main, express) = (family_socket(domain, true)?, family_socket(domain, true)?);
    // Bounded so that what can wait behind the express lane stays well
    // inside the receiver's replay window (8,128 counters): the kernel
    // doubles this, and a 64 KiB GRO message of 45 datagrams takes about
    // 70 KiB of it, so at most about 5,200 datagrams wait here, and 32
    // messages more in the data plane.
    set_buffer(
        &main,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        BULK_LANE_BUFFER,
    );
    // The port is ours: let the group have it.
    drop(plain);
    let joined = main
        .bind(addr)
        .and_then(|()| express.bind(addr))
        .and_then(|()| steer_small(&main));
    match joined {
        Ok(()) => Ok((main, Some(express))),
        Err(e) => {
            tracing::debug!(error = %e, "no express lane for small datagrams");
            drop((main, express));
            let s = family_socket(domain, false)?;
            s.bind(addr)?;
            Ok((s, None))
        }
    }
}

/// A socket of `domain` (IPv6 only for IPv6), with `SO_REUSEPORT` when
/// `reuse_port`.
fn family_socket(domain: Domain, reuse_port: bool) -> io::Result<Socket> {
    let s = new_socket(domain)?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    Ok(s)
}

/// Attach to the `SO_REUSEPORT` group of `s` the classic BPF program that
/// picks the group's second socket (index 1, the express lane) for a
/// datagram of at most [`EXPRESS_MAX`] payload bytes and the first for any
/// other. The kernel runs it with the packet's data at the UDP payload, so
/// its length is the payload's.
fn steer_small(s: &Socket) -> io::Result<()> {
    const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut prog = [
        libc::sock_filter {
            code: LD_LEN,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // Longer: skip to "return 0".
        libc::sock_filter {
            code: JGT,
            jt: 1,
            jf: 0,
            k: EXPRESS_MAX,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: 1,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // `fprog` points at `prog`, which outlives the call (the kernel
    // copies the program).
    setsockopt(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

fn bind_v6(port: u16) -> io::Result<Option<Socket>> {
    let s = match family_socket(Domain::IPV6, false) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match s.bind(&SockAddr::from(SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ))) {
        Ok(()) => Ok(Some(s)),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            tracing::warn!("IPv6 is not available here; the engine listens on IPv4 only");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A fixed number of equally sized packet slots in one allocation.
pub struct Slab {
    buf: Vec<u8>,
    stride: usize,
    slots: usize,
}

impl Slab {
    pub fn new(slots: usize, stride: usize) -> Slab {
        Slab {
            buf: vec![0; slots * stride],
            stride,
            slots,
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * self.stride..(i + 1) * self.stride]
    }

    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * self.stride..(i + 1) * self.stride]
    }
}

/// Control-message space for one `UDP_GRO`/`UDP_SEGMENT` value.
const CMSG_BUF: usize = 64;

/// Storage for one `recvmmsg` call. With UDP GRO enabled, one message may
/// hold several datagrams of `segs[i]` bytes each (the last may be
/// shorter), all from the same source.
pub struct RecvBatch {
    pub slab: Slab,
    /// Per received message: its length, segment size and source.
    pub lens: Vec<usize>,
    pub segs: Vec<usize>,
    pub srcs: Vec<SocketAddr>,
    addrs: Vec<SockAddrStorage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
}

/// An empty `mmsghdr` (null pointers, zero lengths), to be filled in
/// before each call.
fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers,
    // for which all-zero bytes (null pointers, zero lengths) are valid.
    unsafe { mem::zeroed() }
}

fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

impl RecvBatch {
    pub fn new(slots: usize, stride: usize) -> RecvBatch {
        RecvBatch {
            slab: Slab::new(slots, stride),
            lens: Vec::with_capacity(slots),
            segs: Vec::with_capacity(slots),
            srcs: Vec::with_capacity(slots),
            addrs: (0..slots).map(|_| SockAddrStorage::zeroed()).collect(),
            iovs: (0..slots).map(|_| empty_iovec()).collect(),
            hdrs: (0..slots).map(|_| empty_mmsghdr()).collect(),
            cmsgs: vec![[0u64; CMSG_BUF / 8]; slots],
        }
    }

    /// Receive up to `slots` messages without blocking. Returns how many
    /// arrived (0 when none is waiting).
    pub fn recv(&mut self, sock: &Socket) -> io::Result<usize> {
        self.lens.clear();
        self.segs.clear();
        self.srcs.clear();
        let n = self.slab.slots;
        let stride = self.slab.stride;
        let base = self.slab.buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot i lies inside the slab.
            self.iovs[i].iov_base = unsafe { base.add(i * stride) }.cast();
            self.iovs[i].iov_len = stride;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut SockAddrStorage).cast();
            h.msg_namelen = self.addrs[i].size_of();
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_BUF as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = got as usize;
        for i in 0..got {
            let len = self.hdrs[i].msg_len as usize;
            let seg = gro_segment(&self.hdrs[i].msg_hdr).unwrap_or(len).max(1);
            self.lens.push(len);
            self.segs.push(seg);
            let storage = mem::replace(&mut self.addrs[i], SockAddrStorage::zeroed());
            self.srcs.push(
                source_addr(storage, self.hdrs[i].msg_hdr.msg_namelen)
                    .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))),
            );
        }
        Ok(got)
    }
}

/// The `UDP_GRO` segment size of a received message, if it was coalesced.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // CMSG macros, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let mut v: libc::c_int = 0;
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(c),
                    (&mut v as *mut libc::c_int).cast(),
                    mem::size_of::<libc::c_int>(),
                );
                return usize::try_from(v).ok().filter(|v| *v > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// The real UDP side: the sockets, and the system-call scratch of one
/// `sendmmsg` (headers, addresses, `UDP_SEGMENT` control messages) for up
/// to `max_msgs` messages, allocated once.
pub struct RealUdp {
    pub socks: UdpSockets,
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
}

impl RealUdp {
    pub fn new(socks: UdpSockets, max_msgs: usize) -> RealUdp {
        let max_msgs = max_msgs.max(1);
        let unspecified = SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        RealUdp {
            socks,
            addrs: vec![unspecified; max_msgs],
            iovs: (0..max_msgs).map(|_| empty_iovec()).collect(),
            hdrs: (0..max_msgs).map(|_| empty_mmsghdr()).collect(),
            cmsgs: vec![[0u64; CMSG_BUF / 8]; max_msgs],
        }
    }

    fn sock(&self, v6: bool) -> Option<&Socket> {
        if v6 {
            self.socks.v6.as_ref()
        } else {
            Some(&self.socks.v4)
        }
    }
}

impl UdpIo for RealUdp {
    fn port(&self) -> u16 {
        self.socks.port
    }

    fn has_v6(&self) -> bool {
        self.socks.v6.is_some()
    }

    #[inline]
    fn recv(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        match self.sock(v6) {
            Some(s) => batch.recv(s),
            None => Ok(0),
        }
    }

    fn recv_express(&mut self, v6: bool, batch: &mut RecvBatch) -> io::Result<usize> {
        let s = if v6 {
            self.socks.express_v6.as_ref()
        } else {
            self.socks.express_v4.as_ref()
        };
        match s {
            Some(s) => batch.recv(s),
            None => Ok(0),
        }
    }

    fn express_fds(&self) -> [RawFd; 2] {
        [
            self.socks
                .express_v4
                .as_ref()
                .map_or(-1, AsRawFd::as_raw_fd),
            self.socks
                .express_v6
                .as_ref()
                .map_or(-1, AsRawFd::as_raw_fd),
        ]
    }

    fn send_mmsg(&mut self, v6: bool, arena: &[u8], msgs: &[Outgoing]) -> io::Result<usize> {
        let Some(fd) = self.sock(v6).map(AsRawFd::as_raw_fd) else {
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        };
        let k = msgs.len().min(self.hdrs.len());
        let base = arena.as_ptr();
        for (i, m) in msgs[..k].iter().enumerate() {
            if m.start + m.len > arena.len() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.addrs[i] = SockAddr::from(m.dst);
            // SAFETY: the message lies inside the arena (checked above);
            // the kernel only reads from it.
            self.iovs[i].iov_base = unsafe { base.add(m.start) }.cast_mut().cast();
            self.iovs[i].iov_len = m.len;
            let h = &mut self.hdrs[i].msg_hdr;
            // The kernel only reads the address of a message it sends.
            h.msg_name = self.addrs[i].as_ptr().cast_mut().cast();
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if m.seg > 0 {
                h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = set_segment_cmsg(h, m.seg as u16) as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // SAFETY: the first k headers point at live buffers (the arena,
        // self's addresses, iovecs and control buffers).
        let rc = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), k as libc::c_uint, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    fn send_one(&mut self, data: &[u8], dst: SocketAddr) -> io::Result<()> {
        match self.socks.for_dst(&dst) {
            Some(s) => s.send_to(data, &dst.into()).map(|_| ()),
            None => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        }
    }

    fn wait_writable(&mut self, v6: bool) {
        if let Some(s) = self.sock(v6) {
            wait_writable(s.as_raw_fd());
        }
    }

    fn poll_fds(&self) -> [RawFd; 2] {
        [
            self.socks.v4.as_raw_fd(),
            self.socks.v6.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        ]
    }

    fn reply_sockets(&self) -> io::Result<(Option<Socket>, Option<Socket>)> {
        Ok((
            Some(self.socks.v4.try_clone()?),
            self.socks.v6.as_ref().map(Socket::try_clone).transpose()?,
        ))
    }
}

/// Write a `UDP_SEGMENT` control message into `h.msg_control`; returns the
/// control length.
fn set_segment_cmsg(h: &mut libc::msghdr, seg: u16) -> usize {
    // SAFETY: msg_control points at a CMSG_BUF-byte, 8-aligned buffer,
    // larger than CMSG_SPACE(2).
    unsafe {
        let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
        h.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            (&seg as *const u16).cast::<u8>(),
            libc::CMSG_DATA(c),
            mem::size_of::<u16>(),
        );
        space
    }
}

fn wait_writable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 10) };
}

/// The source address the kernel wrote into `storage` (`len` bytes), with
/// IPv4-mapped IPv6 addresses as IPv4.
fn source_addr(storage: SockAddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    if len == 0 || len > storage.size_of() {
        return None;
    }
    // SAFETY: the kernel initialised `len` bytes of the storage as the
    // address of its family (a zeroed storage reads as family 0: no
    // address).
    let addr = unsafe { SockAddr::new(storage, len) };
    match addr.as_socket()? {
        SocketAddr::V6(a) => Some(match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => SocketAddr::V6(a),
        }),
        v4 => Some(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pktio::tx::{FlushReport, TxQueue};
    use std::time::{Duration, Instant};

    /// The real UDP side over (duplicates of) `s`'s sockets.
    fn real(s: &UdpSockets) -> RealUdp {
        let socks = UdpSockets {
            v4: s.v4.try_clone().expect("clone"),
            v6: s.v6.as_ref().map(|v| v.try_clone().expect("clone")),
            port: s.port,
            express_v4: None,
            express_v6: None,
        };
        RealUdp::new(socks, 64)
    }

    fn recv_all(sock: &Socket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut rb = RecvBatch::new(16, 65536);
        let mut got = Vec::new();
        for _ in 0..200 {
            let n = rb.recv(sock).expect("recv");
            for i in 0..n {
                let msg = &rb.slab.slot(i)[..rb.lens[i]];
                for d in msg.chunks(rb.segs[i]) {
                    got.push((d.to_vec(), rb.srcs[i]));
                }
            }
            if got.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn gso_send_and_gro_receive_roundtrip_on_loopback() {
        for (gso, gro) in [(false, false), (true, false), (true, true), (false, true)] {
            let a = UdpSockets::bind(0).expect("bind a");
            let b = UdpSockets::bind(0).expect("bind b");
            if !gro {
                let _ = setsockopt_int(b.v4.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 0);
            }
            let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, b.port));
            // Runs of equal sizes with a shorter tail, then odd sizes.
            let mut payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1200]).collect();
            payloads.push(vec![99; 700]);
            payloads.extend((0..5u8).map(|i| vec![100 + i; 300 + i as usize]));
            let mut q = TxQueue::new(64, 1 << 20, gso);
            for p in &payloads {
                assert!(q.push(p, dst));
            }
            assert_eq!(
                q.flush(&mut real(&a), Instant::now()),
                FlushReport::default()
            );
            let got = recv_all(&b.v4, payloads.len());
            let data: Vec<Vec<u8>> = got.iter().map(|(d, _)| d.clone()).collect();
            assert_eq!(data, payloads, "gso={gso} gro={gro}");
            assert!(
                got.iter()
                    .all(|(_, s)| *s == SocketAddr::from((Ipv4Addr::LOCALHOST, a.port)))
            );
        }
    }

    /// The kernel steers each datagram by its size: one of at most
    /// `EXPRESS_MAX` bytes to the express socket, any other to the main
    /// one, on one port; and the port is still refused to anyone else.
    #[test]
    fn small_datagrams_take_the_express_lane() {
        let s = UdpSockets::bind(0).expect("bind");
        let families: Vec<(SocketAddr, &Socket, Option<&Socket>)> = [
            Some((
                SocketAddr::from((Ipv4Addr::LOCALHOST, s.port)),
                &s.v4,
                s.express_v4.as_ref(),
            )),
            s.v6.as_ref().map(|v6| {
                (
                    SocketAddr::from((Ipv6Addr::LOCALHOST, s.port)),
                    v6,
                    s.express_v6.as_ref(),
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (dst, main, express) in families {
            let express = express.unwrap_or_else(|| {
                panic!("no express lane for {dst}: SO_ATTACH_REUSEPORT_CBPF refused")
            });
            let client = std::net::UdpSocket::bind(if dst.is_ipv6() {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            })
            .expect("client");
            let small = vec![1u8; EXPRESS_MAX as usize];
            let big = vec![2u8; EXPRESS_MAX as usize + 1];
            for d in [&big, &small, &big, &small] {
                client.send_to(d, dst).expect("send");
            }
            let lens = |got: Vec<(Vec<u8>, SocketAddr)>| -> Vec<usize> {
                got.iter().map(|(d, _)| d.len()).collect()
            };
            assert_eq!(lens(recv_all(express, 2)), vec![small.len(); 2], "{dst}");
            assert_eq!(lens(recv_all(main, 2)), vec![big.len(); 2], "{dst}");
        }
        // Another program (or a second engine) cannot join the group.
        let again = std::net::UdpSocket::bind(("0.0.0.0", s.port));
        assert_eq!(
            again.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::AddrInUse)
        );
        let e = UdpSockets::bind(s.port)
            .map(|_| ())
            .expect_err("port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn sockaddr_conversions_roundtrip() {
        for a in [
            "192.0.2.1:51820".parse::<SocketAddr>().expect("v4"),
            "[2001:db8::1]:443".parse().expect("v6"),
        ] {
            let sa = SockAddr::from(a);
            let len = sa.len();
            assert_eq!(source_addr(sa.as_storage(), len), Some(a));
        }
        // IPv4-mapped sources read as IPv4; nothing written reads as none.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:9".parse().expect("mapped");
        let sa = SockAddr::from(mapped);
        let len = sa.len();
        assert_eq!(
            source_addr(sa.as_storage(), len),
            Some("192.0.2.7:9".parse().expect("v4"))
        );
        let empty = SockAddrStorage::zeroed();
        let size = empty.size_of();
        assert_eq!(source_addr(empty, size), None);
        assert_eq!(source_addr(SockAddrStorage::zeroed(), 0), None);
    }

    fn loopback_pair() -> (UdpSockets, UdpSockets, SocketAddr) {
        let a = UdpSockets::bind(0).expect("bind a");
        let b = UdpSockets::bind(0).expect("bind b");
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, b.port));
        (a, b, dst)
    }

    #[test]
    fn refused_gso_is_tried_again_after_a_back_off() {
        // SO_NO_CHECK makes the kernel refuse every UDP GSO send on the
        // socket (EINVAL): the datagrams go out one by one, and GSO is
        // tried again once the back-off has passed, not never again.
        let (a, b, dst) = loopback_pair();
        setsockopt_int(a.v4.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1)
            .expect("SO_NO_CHECK");
        let mut q = TxQueue::new(64, 1 << 20, true);
        let t0 = Instant::now();
        let round = |q: &mut TxQueue, at: Instant| {
            let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000]).collect();
            for p in &payloads {
                assert!(q.push(p, dst));
            }
            assert_eq!(q.flush(&mut real(&a), at), FlushReport::default());
            let got: Vec<Vec<u8>> = recv_all(&b.v4, payloads.len())
                .into_iter()
                .map(|(d, _)| d)
                .collect();
            assert_eq!(got, payloads, "datagrams lost after a GSO refusal");
        };
        round(&mut q, t0);
        assert_eq!(q.gso_refused(), 1, "GSO was not tried at first");
        round(&mut q, t0 + Duration::from_millis(500));
        assert_eq!(q.gso_refused(), 1, "GSO tried again within the back-off");
        round(&mut q, t0 + Duration::from_millis(1100));
        assert_eq!(q.gso_refused(), 2, "GSO never tried again");
        // A second refusal in a row doubles the wait (2 s).
        round(&mut q, t0 + Duration::from_millis(2600));
        assert_eq!(q.gso_refused(), 2);
        round(&mut q, t0 + Duration::from_millis(3200));
        assert_eq!(q.gso_refused(), 3);
        // Once the kernel takes GSO again, it stays on.
        setsockopt_int(a.v4.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 0)
            .expect("SO_NO_CHECK off");
        round(&mut q, t0 + Duration::from_secs(8));
        assert!(
            q.backoff.refusals.is_empty(),
            "an accepted GSO send was not noted"
        );
        round(&mut q, t0 + Duration::from_secs(8));
        assert_eq!(q.gso_refused(), 3);
    }

    #[test]
    fn unsendable_datagrams_are_reported_by_reason() {
        let (a, _b, dst) = loopback_pair();
        let mut q = TxQueue::new(8, 1 << 20, true);
        // Larger than any UDP datagram: the kernel refuses it.
        assert!(q.push(&vec![7u8; 70000], dst));
        assert!(q.push(&[1u8; 100], dst));
        // No IPv6 socket for an IPv6 destination.
        let v4_only = UdpSockets {
            v4: a.v4.try_clone().expect("clone"),
            v6: None,
            port: a.port,
            express_v4: None,
            express_v6: None,
        };
        assert!(q.push(&[2u8; 100], "[::1]:9".parse().expect("v6")));
        assert!(q.push(&[3u8; 100], "[::1]:9".parse().expect("v6")));
        assert_eq!(
            q.flush(&mut real(&v4_only), Instant::now()),
            FlushReport {
                failed: 1,
                no_socket: 2
            }
        );
    }
}
