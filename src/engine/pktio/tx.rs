//! The send queue of the data plane, above the packet-I/O seam: datagrams
//! packed into one arena, consecutive datagrams to one destination with one
//! size merged into UDP GSO messages, sent in order with one `sendmmsg` per
//! family and flush, and the policy for what the kernel refuses (wait for
//! buffer room, split a refused GSO message into single datagrams and back
//! off GSO for that destination, count what is lost). Only the system
//! calls themselves are behind [`UdpIo`], so this is the same code over
//! real sockets and in memory.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::udp::EXPRESS_MAX;
use super::{Outgoing, UdpIo};

/// Largest UDP payload a coalesced (GRO) receive or a segmented (GSO) send
/// carries.
pub const MAX_GSO_BYTES: usize = 65535;
/// Most segments one GSO send may carry (UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;

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

pub(crate) struct Refusal {
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
    pub(crate) refusals: Vec<Refusal>,
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
    max_msgs: usize,
    /// The messages of one family being flushed.
    out: Vec<Outgoing>,
    /// Per message being flushed: a GSO message to a destination in GSO
    /// back-off, to be sent as single datagrams.
    split: Vec<bool>,
    gso: bool,
    pub(crate) backoff: GsoBackoff,
    gso_refused: u64,
}

impl TxQueue {
    /// A queue for up to `max_msgs` messages and `arena` bytes; `gso`:
    /// merge datagrams into UDP GSO messages.
    pub fn new(max_msgs: usize, arena: usize, gso: bool) -> TxQueue {
        TxQueue {
            arena: vec![0; arena],
            used: 0,
            msgs: Vec::with_capacity(max_msgs),
            max_msgs,
            out: Vec::with_capacity(max_msgs),
            split: Vec::with_capacity(max_msgs),
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
        self.used + len <= self.arena.len() && self.msgs.len() < self.max_msgs
    }

    /// Copy `data` in for `dst`. Returns false (and queues nothing) when
    /// full: flush and push again.
    pub fn push(&mut self, data: &[u8], dst: SocketAddr) -> bool {
        let n = data.len();
        if self.used + n > self.arena.len() {
            return false;
        }
        // Datagrams for the far end's express lane (see `udp::EXPRESS_MAX`)
        // are sent on their own: in a GSO message the receiving kernel
        // would see, and steer, the whole message.
        let merge = self.gso
            && n > EXPRESS_MAX as usize
            && self.msgs.last().is_some_and(|m| {
                m.dst == dst
                    && m.len == m.seg * m.count
                    && n <= m.seg
                    && m.len + n <= MAX_GSO_BYTES
                    && m.count < MAX_GSO_SEGMENTS
                    && m.start + m.len == self.used
            });
        if !merge && self.msgs.len() >= self.max_msgs {
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

    /// Send everything queued (IPv4 messages on the IPv4 socket, IPv6 on
    /// the IPv6 one) at time `now`. Returns what could not be sent.
    pub fn flush<U: UdpIo>(&mut self, udp: &mut U, now: Instant) -> FlushReport {
        let mut report = FlushReport::default();
        for v6 in [false, true] {
            if v6 && !udp.has_v6() {
                report.no_socket += self
                    .msgs
                    .iter()
                    .filter(|m| m.dst.is_ipv6())
                    .map(|m| m.count)
                    .sum::<usize>();
                continue;
            }
            self.out.clear();
            self.split.clear();
            for m in self.msgs.iter().filter(|m| m.dst.is_ipv6() == v6) {
                self.out.push(Outgoing {
                    dst: m.dst,
                    start: m.start,
                    len: m.len,
                    seg: if m.count > 1 { m.seg } else { 0 },
                });
                self.split
                    .push(m.count > 1 && !self.backoff.allows(&m.dst, now));
            }
            if self.out.is_empty() {
                continue;
            }
            let (out, backoff) = (&self.out, &mut self.backoff);
            let refused = &mut self.gso_refused;
            let arena = &self.arena[..self.used];
            report.failed += send_all(udp, v6, arena, out, &self.split, |j, ok| {
                let dst = out[j].dst;
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

/// Send `msgs` in order with as few `sendmmsg` calls as possible, waiting
/// briefly when the socket buffer is full. With `split[i]` the datagrams of
/// message `i` are sent one by one. `gso(i, accepted)` hears of every GSO
/// message the kernel took or refused; a refused one has its datagrams
/// sent one by one instead. Returns the number of datagrams that could not
/// be sent.
fn send_all<U: UdpIo>(
    udp: &mut U,
    v6: bool,
    arena: &[u8],
    msgs: &[Outgoing],
    split: &[bool],
    mut gso: impl FnMut(usize, bool),
) -> usize {
    let n = msgs.len();
    let mut sent = 0;
    let mut dropped = 0;
    let mut retries = 0;
    while sent < n {
        if split.get(sent).copied().unwrap_or(false) {
            dropped += send_split(udp, arena, &msgs[sent]);
            sent += 1;
            continue;
        }
        // Up to the next message to be split.
        let end = (sent..n)
            .find(|i| split.get(*i).copied().unwrap_or(false))
            .unwrap_or(n);
        let e = match udp.send_mmsg(v6, arena, &msgs[sent..end]) {
            Ok(k) if k > 0 => {
                let k = k.min(end - sent);
                for (i, m) in msgs.iter().enumerate().skip(sent).take(k) {
                    if m.seg > 0 {
                        gso(i, true);
                    }
                }
                sent += k;
                continue;
            }
            Ok(_) => io::Error::from(io::ErrorKind::WouldBlock),
            Err(e) => e,
        };
        let m = &msgs[sent];
        let gso_refused = m.seg > 0
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
                udp.wait_writable(v6);
            }
            _ if gso_refused => {
                tracing::debug!(error = %e, "UDP GSO send refused");
                gso(sent, false);
                dropped += send_split(udp, arena, m);
                sent += 1;
            }
            _ => {
                // Unreachable destination and the like: skip this message.
                tracing::debug!(error = %e, "UDP send failed");
                dropped += datagrams_in(m);
                sent += 1;
            }
        }
    }
    dropped
}

/// How many datagrams a message carries.
fn datagrams_in(m: &Outgoing) -> usize {
    if m.seg > 0 { m.len.div_ceil(m.seg) } else { 1 }
}

/// Send the datagrams of one GSO message separately (`seg` 0: the message
/// is one datagram). Returns how many could not be sent.
fn send_split<U: UdpIo>(udp: &mut U, arena: &[u8], m: &Outgoing) -> usize {
    let Some(data) = arena.get(m.start..m.start + m.len) else {
        return datagrams_in(m);
    };
    let seg = if m.seg == 0 { m.len.max(1) } else { m.seg };
    data.chunks(seg)
        .filter(|d| udp.send_one(d, m.dst).is_err())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

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

    /// Small datagrams (the far end's express lane) are never merged into
    /// a GSO message, nor appended to one as its shorter last segment:
    /// the receiving kernel would steer the whole message as bulk.
    #[test]
    fn express_sized_datagrams_are_sent_on_their_own() {
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let mut q = TxQueue::new(64, 1 << 20, true);
        for _ in 0..4 {
            assert!(q.push(&[1; EXPRESS_MAX as usize], dst));
        }
        assert_eq!(q.msgs.len(), 4, "four small datagrams, four messages");
        q.clear();
        for _ in 0..4 {
            assert!(q.push(&[1; 1000], dst));
        }
        assert!(q.push(&[1; 100], dst));
        assert!(q.push(&[1; EXPRESS_MAX as usize + 1], dst));
        let shape: Vec<(usize, usize)> = q.msgs.iter().map(|m| (m.count, m.seg)).collect();
        assert_eq!(
            shape,
            vec![(4, 1000), (1, 100), (1, EXPRESS_MAX as usize + 1)],
            "the short tail is on its own, the next run starts afresh"
        );
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
}
