//! The engine's own transmit queue: flow queueing with CoDel on the TUN
//! side of the data plane (the design of Linux's `fq_codel`, RFC 8290).
//!
//! Why: the TUN driver never stops its queue. Everything the kernel routes
//! into the tunnel waits in the driver's ring (`txqueuelen` entries, each
//! up to a 64 KiB TSO super-packet) in one first-in, first-out line, and
//! the driver orphans each packet, so TCP Small Queues cannot see those
//! bytes: one bulk TCP stream kept milliseconds of data there, and a ping
//! or a keystroke waited behind all of it.
//!
//! So the data plane empties that ring at every turn into this queue and
//! decides the order itself:
//!
//! - packets are classified into [`BUCKETS`] flow queues by a keyed hash
//!   of their 5-tuple (addresses and protocol only for fragments and
//!   other protocols);
//! - flows are served by deficit round robin with a quantum of one MTU-
//!   sized packet, and a flow that was empty (a ping, a DNS query, the
//!   first packets of a connection, an interactive session's keystroke)
//!   is served before the flows that always have something queued;
//! - each flow runs CoDel: once its packets have waited longer than the
//!   target for a whole interval, packets are dropped at the head, more
//!   often the longer that lasts, so a bulk TCP flow keeps a short queue
//!   instead of a long one;
//! - the memory the queue holds is bounded; past it, packets are dropped
//!   from the head of the flow holding the most bytes (a flood loses its
//!   own packets, not the ping's).
//!
//! Super-packets are queued and dropped whole (a drop counts once, as a
//! TUN read does) and split only when served. Buffers come from two pools
//! (a read buffer for up to a 64 KiB super-packet; small packets are
//! copied into a small buffer so a ping does not hold 64 KiB), so nothing
//! is allocated per packet once the pools are warm.
//!
//! Sans-IO: time is a parameter of every call, and the hash key is given
//! at construction.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Flow queues (hash buckets), as `fq_codel`'s default.
pub const BUCKETS: usize = 1024;
/// Bytes a flow may send per round of the deficit round robin.
const QUANTUM: i64 = 1514;
/// Packets copied into a small buffer up to this size (an MTU-sized packet
/// with its virtio-net header).
const SMALL: usize = 2048;
/// Free buffers kept for reuse (more are given back to the allocator).
const KEEP_BIG: usize = 32;
const KEEP_SMALL: usize = 512;
/// Packets dropped at most at once when the queue is over its limit.
const OVERFLOW_BATCH: usize = 64;

/// How long packets may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// CoDel's target: the queueing delay a flow may keep standing.
    pub target: Duration,
    /// CoDel's interval: how long the delay must stay above the target
    /// before the first drop (on the order of the flows' round-trip time).
    pub interval: Duration,
    /// Bytes of buffers the whole queue may hold.
    pub limit: usize,
}

/// Linux's `fq_codel` defaults: an interval of 100 ms suits flows whose
/// round trip is up to that (a site-to-site tunnel across the Internet);
/// a shorter one drops from long-RTT flows before they can react. The
/// bulk flow's own standing queue is what the target bounds; other flows
/// do not wait behind it whatever its length.
impl Default for Params {
    fn default() -> Self {
        Params {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
            limit: 8 << 20,
        }
    }
}

/// Packets the queue dropped, by reason (a super-packet counts once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqDrops {
    /// CoDel: the flow's packets kept waiting longer than the target.
    pub delay: u64,
    /// The queue was full: dropped from the flow holding the most bytes.
    pub full: u64,
}

/// A packet taken out of the queue: `len` bytes at the start of `buf`
/// (give `buf` back with [`FlowQueues::recycle`]).
pub struct Packet {
    pub buf: Vec<u8>,
    pub len: usize,
    at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    None,
    New,
    Old,
}

#[derive(Default)]
struct Codel {
    dropping: bool,
    /// When the delay went above the target plus one interval.
    first_above: Option<Instant>,
    drop_next: Option<Instant>,
    count: u32,
    last_count: u32,
}

struct Flow {
    q: VecDeque<Packet>,
    /// Buffer bytes held.
    bytes: usize,
    deficit: i64,
    list: List,
    codel: Codel,
}

/// The flow queues (see the module comment).
pub struct FlowQueues {
    flows: Vec<Flow>,
    new_flows: VecDeque<u16>,
    old_flows: VecDeque<u16>,
    key: u64,
    params: Params,
    /// Buffer bytes held by queued packets.
    held: usize,
    packets: usize,
    big: Vec<Vec<u8>>,
    small: Vec<Vec<u8>>,
    big_len: usize,
    drops: FqDrops,
}

impl FlowQueues {
    /// An empty queue whose read buffers hold `read_len` bytes (the largest
    /// TUN read), with hash key `key`.
    pub fn new(params: Params, read_len: usize, key: u64) -> FlowQueues {
        FlowQueues {
            flows: (0..BUCKETS)
                .map(|_| Flow {
                    q: VecDeque::new(),
                    bytes: 0,
                    deficit: 0,
                    list: List::None,
                    codel: Codel::default(),
                })
                .collect(),
            new_flows: VecDeque::with_capacity(BUCKETS),
            old_flows: VecDeque::with_capacity(BUCKETS),
            key,
            params,
            held: 0,
            packets: 0,
            big: Vec::new(),
            small: Vec::new(),
            big_len: read_len.max(SMALL),
            drops: FqDrops::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.packets
    }

    /// Buffer bytes the queued packets hold.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn drops(&self) -> FqDrops {
        self.drops
    }

    /// A buffer for one TUN read (hand it to [`FlowQueues::enqueue`] or
    /// back to [`FlowQueues::recycle`]).
    pub fn read_buffer(&mut self) -> Vec<u8> {
        self.big.pop().unwrap_or_else(|| vec![0; self.big_len])
    }

    /// Take a buffer back (after [`FlowQueues::dequeue`] or an unused
    /// [`FlowQueues::read_buffer`]).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.len() >= self.big_len {
            if self.big.len() < KEEP_BIG {
                self.big.push(buf);
            }
        } else if buf.len() == SMALL && self.small.len() < KEEP_SMALL {
            self.small.push(buf);
        }
    }

    /// Queue the `len` bytes read into `buf` at `now`; the IP packet starts
    /// at `l3` (after a virtio-net header). Small packets are copied into a
    /// small buffer and `buf` goes back to the pool. Past the memory limit,
    /// packets are dropped from the flow holding the most bytes.
    pub fn enqueue(&mut self, mut buf: Vec<u8>, len: usize, l3: usize, now: Instant) {
        let len = len.min(buf.len());
        let i = flow_of(buf.get(l3..len).unwrap_or(&[]), self.key);
        if len <= SMALL {
            let mut s = self.small.pop().unwrap_or_else(|| vec![0; SMALL]);
            s[..len].copy_from_slice(&buf[..len]);
            self.recycle(std::mem::replace(&mut buf, s));
        }
        let cost = buf.len();
        let f = &mut self.flows[i];
        f.q.push_back(Packet { buf, len, at: now });
        f.bytes += cost;
        self.held += cost;
        self.packets += 1;
        if f.list == List::None {
            f.list = List::New;
            f.deficit = QUANTUM;
            self.new_flows.push_back(i as u16);
        }
        if self.held > self.params.limit {
            self.overflow();
        }
    }

    /// Drop from the head of the fattest flow until it has lost half its
    /// bytes (at most [`OVERFLOW_BATCH`] packets), as `fq_codel` does: one
    /// scan of the flows per batch, not per packet.
    fn overflow(&mut self) {
        let Some(i) = (0..self.flows.len()).max_by_key(|i| self.flows[*i].bytes) else {
            return;
        };
        let goal = self.flows[i].bytes / 2;
        let mut dropped = 0;
        while dropped < OVERFLOW_BATCH && self.flows[i].bytes > goal {
            let Some(p) = self.pop(i) else { break };
            self.recycle(p.buf);
            dropped += 1;
        }
        self.drops.full += dropped as u64;
    }

    fn pop(&mut self, i: usize) -> Option<Packet> {
        let f = &mut self.flows[i];
        let p = f.q.pop_front()?;
        f.bytes -= p.buf.len();
        self.held -= p.buf.len();
        self.packets -= 1;
        Some(p)
    }

    /// The next packet to send at `now`, if any: deficit round robin over
    /// the flows, new flows first, CoDel in each.
    pub fn dequeue(&mut self, now: Instant) -> Option<Packet> {
        loop {
            let (i, from_new) = match self.new_flows.front() {
                Some(&i) => (usize::from(i), true),
                None => (usize::from(*self.old_flows.front()?), false),
            };
            if self.flows[i].deficit <= 0 {
                self.flows[i].deficit += QUANTUM;
                self.rotate(i, from_new);
                continue;
            }
            match self.codel_dequeue(i, now) {
                Some(p) => {
                    self.flows[i].deficit -= p.len as i64;
                    return Some(p);
                }
                None => {
                    // Empty: a new flow goes behind the old ones once (so
                    // it cannot come back as new at once and starve them),
                    // an old one leaves the lists.
                    if from_new && !self.old_flows.is_empty() {
                        self.rotate(i, true);
                    } else {
                        self.unlist(from_new);
                        self.flows[i].list = List::None;
                    }
                }
            }
        }
    }

    /// Move the flow at the head of its list to the tail of the old list.
    fn rotate(&mut self, i: usize, from_new: bool) {
        self.unlist(from_new);
        self.flows[i].list = List::Old;
        self.old_flows.push_back(i as u16);
    }

    fn unlist(&mut self, from_new: bool) {
        if from_new {
            self.new_flows.pop_front();
        } else {
            self.old_flows.pop_front();
        }
    }

    /// CoDel's dequeue (RFC 8289) on flow `i`.
    fn codel_dequeue(&mut self, i: usize, now: Instant) -> Option<Packet> {
        let interval = self.params.interval;
        let (mut p, ok_to_drop) = self.codel_take(i, now);
        let mut dropped = 0u64;
        if self.flows[i].codel.dropping {
            if !ok_to_drop {
                self.flows[i].codel.dropping = false;
            }
            loop {
                let c = &self.flows[i].codel;
                if !(c.dropping && c.drop_next.is_some_and(|t| now >= t)) {
                    break;
                }
                let Some(q) = p.take() else { break };
                self.recycle(q.buf);
                dropped += 1;
                let (next, ok_to_drop) = self.codel_take(i, now);
                p = next;
                let c = &mut self.flows[i].codel;
                c.count = c.count.saturating_add(1);
                if ok_to_drop {
                    c.drop_next = c.drop_next.map(|t| control_law(t, interval, c.count));
                } else {
                    c.dropping = false;
                }
            }
        } else if ok_to_drop && let Some(q) = p.take() {
            self.recycle(q.buf);
            dropped += 1;
            (p, _) = self.codel_take(i, now);
            let c = &mut self.flows[i].codel;
            c.dropping = true;
            // Dropping again soon after the last episode: resume near its
            // drop rate instead of starting over.
            let delta = c.count.saturating_sub(c.last_count);
            let recent = c
                .drop_next
                .is_some_and(|t| now.saturating_duration_since(t) < interval * 16);
            c.count = if delta > 1 && recent { delta } else { 1 };
            c.drop_next = Some(control_law(now, interval, c.count));
            c.last_count = c.count;
        }
        self.drops.delay += dropped;
        p
    }

    /// Take flow `i`'s head packet and say whether CoDel may drop it: its
    /// wait has been above the target for at least an interval, and more
    /// than one full packet is queued.
    fn codel_take(&mut self, i: usize, now: Instant) -> (Option<Packet>, bool) {
        let Params {
            target, interval, ..
        } = self.params;
        let Some(p) = self.pop(i) else {
            self.flows[i].codel.first_above = None;
            return (None, false);
        };
        let f = &mut self.flows[i];
        let sojourn = now.saturating_duration_since(p.at);
        let c = &mut f.codel;
        // RFC 8289: no drop while at most one (MTU-sized) packet is left.
        if sojourn < target || f.bytes <= SMALL {
            c.first_above = None;
            return (Some(p), false);
        }
        match c.first_above {
            None => {
                c.first_above = Some(now + interval);
                (Some(p), false)
            }
            Some(t) => (Some(p), now >= t),
        }
    }
}

/// `t + interval / sqrt(count)`.
fn control_law(t: Instant, interval: Duration, count: u32) -> Instant {
    t + interval.div_f64(f64::from(count.max(1)).sqrt())
}

/// The bucket of an IP packet: a keyed hash of its addresses, protocol and
/// (for unfragmented TCP, UDP, UDP-Lite and SCTP) ports. Anything else,
/// however malformed, lands in some bucket. The hash is a multiply-rotate
/// mix (like the kernel's jhash for `fq_codel`, not a cryptographic one)
/// under a random key, so the buckets cannot be chosen from outside; it is
/// on the path of every packet, where SipHash cost 6 % of a UDP flood.
fn flow_of(pkt: &[u8], key: u64) -> usize {
    let ports_at = |proto: u8, at: usize| -> u64 {
        match pkt.get(at..at + 4) {
            Some(p) if matches!(proto, 6 | 17 | 132 | 136) => {
                u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
            }
            _ => 0,
        }
    };
    let mut h = key;
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let proto = pkt[9];
            // Only the first fragment has the ports; a later one has an
            // offset, and every fragment but the last "more fragments".
            let fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
            h = mix(h, word(&pkt[12..20]));
            let ports = if fragment { 0 } else { ports_at(proto, ihl) };
            h = mix(h, ports << 8 | u64::from(proto));
        }
        Some(6) if pkt.len() >= 40 => {
            let proto = pkt[6];
            for w in pkt[8..40].chunks(8) {
                h = mix(h, word(w));
            }
            h = mix(h, ports_at(proto, 40) << 8 | u64::from(proto) | 1 << 48);
        }
        _ => {
            for w in pkt.get(..pkt.len().min(40)).unwrap_or(&[]).chunks(8) {
                h = mix(h, word(w));
            }
            h = mix(h, 2 << 48);
        }
    }
    h = mix(h, key.rotate_left(17));
    ((h ^ (h >> 29)) % BUCKETS as u64) as usize
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(27)
}

/// Up to 8 bytes as one word.
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests;
