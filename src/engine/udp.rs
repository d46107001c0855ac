//! The UDP side of the data plane: one IPv4 and one IPv6 socket bound to the
//! listen port, large kernel buffers, and batched receive/send with
//! `recvmmsg`/`sendmmsg` (one system call for many datagrams).

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Socket buffer size asked for (wireguard-go uses 7 MiB): a small buffer
/// overflows under bursts and TCP through the tunnel collapses.
const SOCKET_BUFFER: usize = 7 << 20;

/// The engine's UDP sockets.
pub struct UdpSockets {
    pub v4: Socket,
    pub v6: Option<Socket>,
    pub port: u16,
}

impl UdpSockets {
    /// Bind both families to `port` (0: a random free port, the same for
    /// both). IPv6 is optional: without it (disabled in the namespace) the
    /// engine runs IPv4 only.
    pub fn bind(port: u16) -> io::Result<UdpSockets> {
        let mut last_err = None;
        for _ in 0..16 {
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
            match bind_v6(bound) {
                Ok(v6) => {
                    return Ok(UdpSockets {
                        v4,
                        v6,
                        port: bound,
                    });
                }
                // A random v4 port may be taken on v6: try another.
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free UDP port")))
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
    Ok(s)
}

fn set_buffers(s: &Socket) {
    // As root, the *FORCE variants exceed net.core.{r,w}mem_max.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER as libc::c_int;
        if setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, force, v).is_err() {
            let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, plain, v);
        }
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_v6(port: u16) -> io::Result<Option<Socket>> {
    let s = match new_socket(Domain::IPV6) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(None),
        Err(e) => return Err(e),
    };
    s.set_only_v6(true)?;
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

/// Storage for one `recvmmsg` call.
pub struct RecvBatch {
    pub slab: Slab,
    /// Per received datagram: its length and source.
    pub lens: Vec<usize>,
    pub srcs: Vec<SocketAddr>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(slots: usize, stride: usize) -> RecvBatch {
        // SAFETY: sockaddr_storage/iovec/mmsghdr are plain C structs for
        // which all-zero bytes are a valid value.
        let zeroed = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        RecvBatch {
            slab: Slab::new(slots, stride),
            lens: Vec::with_capacity(slots),
            srcs: Vec::with_capacity(slots),
            addrs: (0..slots).map(|_| zeroed()).collect(),
            iovs: (0..slots)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: as above.
            hdrs: (0..slots)
                .map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() })
                .collect(),
        }
    }

    /// Receive up to `slots` datagrams without blocking, each into its slot
    /// starting at `offset`. Returns how many arrived (0 when none is
    /// waiting).
    pub fn recv(&mut self, sock: &Socket, offset: usize) -> io::Result<usize> {
        self.lens.clear();
        self.srcs.clear();
        let n = self.slab.slots;
        let stride = self.slab.stride;
        let base = self.slab.buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: i*stride+offset is inside the slab (offset < stride).
            self.iovs[i].iov_base = unsafe { base.add(i * stride + offset) }.cast();
            self.iovs[i].iov_len = stride - offset;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
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
            self.lens.push(self.hdrs[i].msg_len as usize);
            self.srcs.push(
                sockaddr_to_std(&self.addrs[i])
                    .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))),
            );
        }
        Ok(got)
    }
}

/// Storage for one `sendmmsg` call per socket.
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl SendBatch {
    pub fn new(slots: usize) -> SendBatch {
        SendBatch {
            // SAFETY: plain C structs, all-zero is valid.
            addrs: (0..slots)
                .map(|_| unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() })
                .collect(),
            lens: vec![0; slots],
            iovs: (0..slots)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: as above.
            hdrs: (0..slots)
                .map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() })
                .collect(),
            count: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == self.hdrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Queue `data` for `dst`. The bytes must stay alive and unchanged until
    /// [`SendBatch::flush`].
    pub fn push(&mut self, data: &[u8], dst: &SocketAddr) {
        let i = self.count;
        if i >= self.hdrs.len() {
            return;
        }
        self.lens[i] = std_to_sockaddr(dst, &mut self.addrs[i]);
        self.iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
        self.iovs[i].iov_len = data.len();
        self.count += 1;
    }

    /// Send everything queued on `sock` (blocking briefly when the socket
    /// buffer is full). Returns how many datagrams could not be sent.
    pub fn flush(&mut self, sock: &Socket) -> usize {
        let n = self.count;
        for i in 0..n {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.lens[i];
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        let mut dropped = 0;
        let mut retries = 0;
        while sent < n {
            // SAFETY: headers point at live buffers queued by `push`.
            let rc = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                sent += rc as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if retries < 100 => {
                    retries += 1;
                    wait_writable(sock.as_raw_fd());
                }
                _ => {
                    // Unreachable destination and the like: skip this one.
                    tracing::debug!(error = %e, "UDP send failed");
                    sent += 1;
                    dropped += 1;
                }
            }
        }
        self.count = 0;
        dropped
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

/// Convert a kernel socket address to std.
pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

/// Fill `ss` with `addr`; returns the length to pass to the kernel.
pub fn std_to_sockaddr(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let s =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            s.sin_zero = [0; 8];
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let s =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            s.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_on_loopback() {
        let a = UdpSockets::bind(0).expect("bind a");
        let b = UdpSockets::bind(0).expect("bind b");
        assert_ne!(a.port, 0);
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, b.port));
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let mut sb = SendBatch::new(16);
        for p in &payloads {
            sb.push(p, &dst);
        }
        assert_eq!(sb.flush(&a.v4), 0);
        let mut rb = RecvBatch::new(16, 2048);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = rb.recv(&b.v4, 16).expect("recv");
            for i in 0..n {
                got.push(rb.slab.slot(i)[16..16 + rb.lens[i]].to_vec());
                assert_eq!(rb.srcs[i], SocketAddr::from((Ipv4Addr::LOCALHOST, a.port)));
            }
            if got.len() == payloads.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn sockaddr_conversions_roundtrip() {
        for a in [
            "192.0.2.1:51820".parse::<SocketAddr>().expect("v4"),
            "[2001:db8::1]:443".parse().expect("v6"),
        ] {
            // SAFETY: zeroed sockaddr_storage is valid.
            let mut ss = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
            std_to_sockaddr(&a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss), Some(a));
        }
    }
}
