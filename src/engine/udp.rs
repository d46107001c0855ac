//! The UDP side of the data plane: one IPv4 and one IPv6 socket bound to the
//! listen port, large kernel buffers, and batched receive/send with
//! `recvmmsg`/`sendmmsg` (one system call for many datagrams).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

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

/// Control-message space for one `UDP_GRO`/`UDP_SEGMENT` value.
const CMSG_BUF: usize = 64;

/// Largest UDP payload a coalesced (GRO) receive or a segmented (GSO) send
/// carries.
pub const MAX_GSO_BYTES: usize = 65535;
/// Most segments one GSO send may carry (UDP_MAX_SEGMENTS).
const MAX_GSO_SEGMENTS: usize = 64;

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

struct TxMsg {
    dst: SocketAddr,
    start: usize,
    len: usize,
    seg: usize,
    count: usize,
}

/// First wait before UDP GSO is tried again for a destination whose GSO
/// send the kernel refused; it doubles with every refusal in a row.
const GSO_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait before trying again.
const GSO_RETRY_MAX: Duration = Duration::from_secs(64);
/// Destinations with a refusal remembered (the one due soonest is
/// forgotten first).
const GSO_REFUSALS_KEPT: usize = 64;

struct Refusal {
    dst: SocketAddr,
    retry_at: Instant,
    strikes: u32,
}

/// Destinations the kernel refused UDP GSO for (an IPsec/xfrm route, a
/// device or path that cannot segment, no checksums on the socket...),
/// and when to try GSO for them again. Until then their GSO messages are
/// sent as single datagrams (in order with the rest of the flush);
/// everything else keeps GSO.
#[derive(Default)]
pub struct GsoBackoff {
    refusals: Vec<Refusal>,
}

impl GsoBackoff {
    /// Whether datagrams to `dst` may be merged into a GSO message at `now`.
    pub fn allows(&self, dst: &SocketAddr, now: Instant) -> bool {
        self.refusals
            .iter()
            .all(|r| r.dst != *dst || now >= r.retry_at)
    }

    /// The kernel refused a GSO send to `dst` at `now`. Returns true for a
    /// destination not refused before (worth a warning).
    pub fn refused(&mut self, dst: SocketAddr, now: Instant) -> bool {
        if let Some(r) = self.refusals.iter_mut().find(|r| r.dst == dst) {
            // Several messages of one flush refused together count once.
            if now >= r.retry_at {
                r.strikes = r.strikes.saturating_add(1);
                r.retry_at = now + retry_after(r.strikes);
            }
            return false;
        }
        if self.refusals.len() >= GSO_REFUSALS_KEPT
            && let Some(i) = (0..self.refusals.len()).min_by_key(|i| self.refusals[*i].retry_at)
        {
            self.refusals.swap_remove(i);
        }
        self.refusals.push(Refusal {
            dst,
            retry_at: now + GSO_RETRY_FIRST,
            strikes: 1,
        });
        true
    }

    /// A GSO send to `dst` went through: forget its refusals.
    pub fn accepted(&mut self, dst: &SocketAddr) {
        if !self.refusals.is_empty() {
            self.refusals.retain(|r| r.dst != *dst);
        }
    }
}

fn retry_after(strikes: u32) -> Duration {
    let doublings = strikes.saturating_sub(1).min(16);
    GSO_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(GSO_RETRY_MAX)
}

/// What one [`TxQueue::flush`] could not send, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Datagrams the kernel refused (unreachable, no buffer space after
    /// waiting, too large...).
    pub failed: usize,
    /// Datagrams for IPv6 destinations without an IPv6 socket.
    pub no_socket: usize,
}

/// Datagrams waiting to be sent, packed into one arena. Consecutive
/// datagrams to the same destination with the same size (the last of a run
/// may be shorter) become one UDP GSO message: one `sendmmsg` carries many
/// such messages.
pub struct TxQueue {
    arena: Vec<u8>,
    used: usize,
    msgs: Vec<TxMsg>,
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
    /// GSO segment size per header being flushed (0: single datagram).
    segs: Vec<usize>,
    /// Per header being flushed: a GSO message to a destination in GSO
    /// back-off, to be sent as single datagrams.
    split: Vec<bool>,
    /// Index in `msgs` of each header being flushed.
    which: Vec<usize>,
    gso: bool,
    backoff: GsoBackoff,
    gso_refused: u64,
}

impl TxQueue {
    /// A queue for up to `max_msgs` messages and `arena` bytes; `gso`:
    /// merge datagrams into UDP GSO messages.
    pub fn new(max_msgs: usize, arena: usize, gso: bool) -> TxQueue {
        let unspecified = SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        TxQueue {
            arena: vec![0; arena],
            used: 0,
            msgs: Vec::with_capacity(max_msgs),
            addrs: vec![unspecified; max_msgs],
            iovs: (0..max_msgs).map(|_| empty_iovec()).collect(),
            hdrs: (0..max_msgs).map(|_| empty_mmsghdr()).collect(),
            cmsgs: vec![[0u64; CMSG_BUF / 8]; max_msgs],
            segs: vec![0; max_msgs],
            split: vec![false; max_msgs],
            which: vec![0; max_msgs],
            gso,
            backoff: GsoBackoff::default(),
            gso_refused: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// GSO sends the kernel refused so far (their datagrams were sent one
    /// by one).
    pub fn gso_refused(&self) -> u64 {
        self.gso_refused
    }

    /// Forget everything queued (nothing is sent).
    pub fn clear(&mut self) {
        self.msgs.clear();
        self.used = 0;
    }

    /// Whether one more datagram of up to `len` bytes certainly fits.
    pub fn has_room(&self, len: usize) -> bool {
        self.used + len <= self.arena.len() && self.msgs.len() < self.hdrs.len()
    }

    /// Copy `data` in for `dst`. Returns false (and queues nothing) when
    /// full: flush and push again.
    pub fn push(&mut self, data: &[u8], dst: SocketAddr) -> bool {
        let n = data.len();
        if self.used + n > self.arena.len() {
            return false;
        }
        let merge = self.gso
            && self.msgs.last().is_some_and(|m| {
                m.dst == dst
                    && m.len == m.seg * m.count
                    && n <= m.seg
                    && n > 0
                    && m.len + n <= MAX_GSO_BYTES
                    && m.count < MAX_GSO_SEGMENTS
                    && m.start + m.len == self.used
            });
        if !merge && self.msgs.len() >= self.hdrs.len() {
            return false;
        }
        self.arena[self.used..self.used + n].copy_from_slice(data);
        if merge {
            if let Some(m) = self.msgs.last_mut() {
                m.len += n;
                m.count += 1;
            }
        } else {
            self.msgs.push(TxMsg {
                dst,
                start: self.used,
                len: n,
                seg: n,
                count: 1,
            });
        }
        self.used += n;
        true
    }

    /// Send everything queued (IPv4 messages on `udp.v4`, IPv6 on
    /// `udp.v6`) at time `now`. Returns what could not be sent.
    pub fn flush(&mut self, udp: &UdpSockets, now: Instant) -> FlushReport {
        let mut report = FlushReport::default();
        for v6 in [false, true] {
            let Some(sock) = (if v6 { udp.v6.as_ref() } else { Some(&udp.v4) }) else {
                report.no_socket += self
                    .msgs
                    .iter()
                    .filter(|m| m.dst.is_ipv6())
                    .map(|m| m.count)
                    .sum::<usize>();
                continue;
            };
            let mut k = 0;
            let base = self.arena.as_mut_ptr();
            for (i, m) in self.msgs.iter().enumerate() {
                if m.dst.is_ipv6() != v6 {
                    continue;
                }
                self.which[k] = i;
                self.segs[k] = if m.count > 1 { m.seg } else { 0 };
                self.split[k] = m.count > 1 && !self.backoff.allows(&m.dst, now);
                self.addrs[k] = SockAddr::from(m.dst);
                // SAFETY: the message lies inside the arena.
                self.iovs[k].iov_base = unsafe { base.add(m.start) }.cast();
                self.iovs[k].iov_len = m.len;
                let h = &mut self.hdrs[k].msg_hdr;
                // The kernel only reads the address of a message it sends.
                h.msg_name = self.addrs[k].as_ptr().cast_mut().cast();
                h.msg_namelen = self.addrs[k].len();
                h.msg_iov = &mut self.iovs[k];
                h.msg_iovlen = 1;
                h.msg_flags = 0;
                if m.count > 1 && !self.split[k] {
                    h.msg_control = self.cmsgs[k].as_mut_ptr().cast();
                    h.msg_controllen = set_segment_cmsg(h, m.seg as u16);
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
                k += 1;
            }
            if k == 0 {
                continue;
            }
            let (msgs, which, backoff) = (&self.msgs, &self.which, &mut self.backoff);
            let refused = &mut self.gso_refused;
            let (segs, split) = (&self.segs[..k], &self.split[..k]);
            report.failed += send_all(sock, &mut self.hdrs[..k], segs, split, |j, ok| {
                let dst = msgs[which[j]].dst;
                if ok {
                    backoff.accepted(&dst);
                } else {
                    *refused += 1;
                    if backoff.refused(dst, now) {
                        tracing::warn!(
                            %dst,
                            "UDP GSO refused; sending to this destination one datagram at a time for a while"
                        );
                    }
                }
            });
        }
        self.clear();
        report
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

/// `sendmmsg` everything in order, waiting briefly when the socket buffer
/// is full. `segs[i]` is the GSO segment size of message `i` (0: not
/// segmented); with `split[i]` its datagrams are sent one by one.
/// `gso(i, accepted)` hears of every GSO message the kernel took or
/// refused; a refused one has its datagrams sent one by one instead.
/// Returns the number of datagrams that could not be sent.
fn send_all(
    sock: &Socket,
    hdrs: &mut [libc::mmsghdr],
    segs: &[usize],
    split: &[bool],
    mut gso: impl FnMut(usize, bool),
) -> usize {
    let n = hdrs.len();
    let mut sent = 0;
    let mut dropped = 0;
    let mut retries = 0;
    while sent < n {
        if split.get(sent).copied().unwrap_or(false) {
            dropped += send_split(sock, &hdrs[sent], segs.get(sent).copied().unwrap_or(0));
            sent += 1;
            continue;
        }
        // Up to the next message to be split.
        let end = (sent..n)
            .find(|i| split.get(*i).copied().unwrap_or(false))
            .unwrap_or(n);
        // SAFETY: headers point at live buffers.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs[sent..end].as_mut_ptr(),
                (end - sent) as libc::c_uint,
                0,
            )
        };
        if rc > 0 {
            for i in sent..sent + rc as usize {
                if segs.get(i).is_some_and(|s| *s > 0) {
                    gso(i, true);
                }
            }
            sent += rc as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        let seg = segs.get(sent).copied().unwrap_or(0);
        let gso_refused = seg > 0
            && matches!(
                e.raw_os_error(),
                Some(
                    libc::EIO
                        | libc::EINVAL
                        | libc::EOPNOTSUPP
                        | libc::ENOPROTOOPT
                        | libc::EMSGSIZE
                )
            );
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock if retries < 100 => {
                retries += 1;
                wait_writable(sock.as_raw_fd());
            }
            _ if gso_refused => {
                tracing::debug!(error = %e, "UDP GSO send refused");
                gso(sent, false);
                dropped += send_split(sock, &hdrs[sent], seg);
                sent += 1;
            }
            _ => {
                // Unreachable destination and the like: skip this message.
                tracing::debug!(error = %e, "UDP send failed");
                dropped += datagrams_in(&hdrs[sent], seg);
                sent += 1;
            }
        }
    }
    dropped
}

/// How many datagrams a message carries.
fn datagrams_in(h: &libc::mmsghdr, seg: usize) -> usize {
    // SAFETY: msg_iov points at the message's one live iovec.
    let len = unsafe { (*h.msg_hdr.msg_iov).iov_len };
    if seg > 0 { len.div_ceil(seg) } else { 1 }
}

/// Send the datagrams of one GSO message separately (`seg` 0: the message
/// is one datagram).
fn send_split(sock: &Socket, h: &libc::mmsghdr, seg: usize) -> usize {
    // SAFETY: the header's iovec and address point at live memory of the
    // queue being flushed.
    let (base, len) = unsafe {
        (
            (*h.msg_hdr.msg_iov).iov_base as *const u8,
            (*h.msg_hdr.msg_iov).iov_len,
        )
    };
    let seg = if seg == 0 { len.max(1) } else { seg };
    let mut dropped = 0;
    let mut off = 0;
    while off < len {
        let n = seg.min(len - off);
        // SAFETY: [off, off + n) lies inside the message; name/namelen are
        // the message's destination.
        let rc = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                base.add(off).cast(),
                n,
                0,
                h.msg_hdr.msg_name as *const libc::sockaddr,
                h.msg_hdr.msg_namelen,
            )
        };
        if rc < 0 {
            dropped += 1;
        }
        off += n;
    }
    dropped
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
            assert_eq!(q.flush(&a, Instant::now()), FlushReport::default());
            let got = recv_all(&b.v4, payloads.len());
            let data: Vec<Vec<u8>> = got.iter().map(|(d, _)| d.clone()).collect();
            assert_eq!(data, payloads, "gso={gso} gro={gro}");
            assert!(
                got.iter()
                    .all(|(_, s)| *s == SocketAddr::from((Ipv4Addr::LOCALHOST, a.port)))
            );
        }
    }

    #[test]
    fn full_queue_refuses_instead_of_overflowing() {
        let mut q = TxQueue::new(2, 4096, false);
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        assert!(q.push(&[1; 100], dst));
        assert!(q.push(&[2; 100], dst));
        assert!(!q.push(&[3; 100], dst));
        let mut q = TxQueue::new(8, 150, true);
        assert!(q.push(&[1; 100], dst));
        assert!(!q.push(&[2; 100], dst));
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
            assert_eq!(q.flush(&a, at), FlushReport::default());
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
    fn gso_back_off_is_per_destination_and_bounded() {
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:1".parse().expect("a");
        let b: SocketAddr = "192.0.2.2:1".parse().expect("b");
        let mut g = GsoBackoff::default();
        assert!(g.allows(&a, t0) && g.allows(&b, t0));
        assert!(g.refused(a, t0), "first refusal is news");
        assert!(!g.allows(&a, t0 + Duration::from_millis(999)));
        assert!(g.allows(&b, t0), "another destination lost GSO too");
        // Refusals within the same back-off count once.
        assert!(!g.refused(a, t0 + Duration::from_millis(10)));
        assert!(g.allows(&a, t0 + GSO_RETRY_FIRST));
        // Refused again after the wait: 2 s, then 4 s, ... up to the cap.
        let mut t = t0 + GSO_RETRY_FIRST;
        let mut wait = GSO_RETRY_FIRST;
        for _ in 0..10 {
            g.refused(a, t);
            wait = (wait * 2).min(GSO_RETRY_MAX);
            assert!(!g.allows(&a, t + wait - Duration::from_millis(1)));
            assert!(g.allows(&a, t + wait));
            t += wait;
        }
        assert_eq!(wait, GSO_RETRY_MAX);
        g.accepted(&a);
        assert!(g.allows(&a, t));
        // Bounded: the table keeps at most GSO_REFUSALS_KEPT destinations.
        for p in 0..1000u16 {
            g.refused(SocketAddr::from((Ipv4Addr::LOCALHOST, p)), t0);
        }
        assert_eq!(g.refusals.len(), GSO_REFUSALS_KEPT);
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
        };
        assert!(q.push(&[2u8; 100], "[::1]:9".parse().expect("v6")));
        assert!(q.push(&[3u8; 100], "[::1]:9".parse().expect("v6")));
        assert_eq!(
            q.flush(&v4_only, Instant::now()),
            FlushReport {
                failed: 1,
                no_socket: 2
            }
        );
    }
}
