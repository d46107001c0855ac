//! Reading the TUN device without ever losing a packet for lack of room.
//! Each read takes one raw packet into one buffer (with offloads: a
//! virtio-net header and a TCP or UDP super-packet of up to 64 KiB), which
//! is split into MTU-sized segment slots. Whenever the slots are full the
//! batch is handed on (encrypted and sent) and the split goes on where it
//! stopped, so a super-packet of any segment size (TCP's smallest MSS,
//! UDP GSO segments of a few bytes) is carried whole whatever room was
//! left. Reads come from a caller-supplied function and batches go to a
//! caller-supplied sink, so tests feed synthetic super-packets without a
//! TUN device (the data plane passes `TunIo::recv`, see `super::pktio`).
//!
//! Splitting is tun-rs's `gso_split` (the wireguard-go algorithm). A
//! super-packet that needs more slots than are free is split in chunks:
//! before each chunk its headers are copied in front of the chunk's
//! payload (over payload already sent) with the TCP sequence number and
//! IPv4 ID advanced and the flags that belong to the first (CWR) or last
//! (FIN, PSH) segment only cleared, so the chunks together are exactly
//! the segments of one split.

use std::io;

use tun_rs::{VIRTIO_NET_HDR_LEN, VirtioNetHdr, gso_split};

// From include/uapi/linux/virtio_net.h.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
const F_NEEDS_CSUM: u8 = 1;

const TCP_FLAGS: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Largest packet one TUN read returns (the device's 64 KiB GSO limit).
pub const MAX_PACKET: usize = 65535;

/// What one [`TunRx::drain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxStats {
    /// Packets read (super-packets count once).
    pub reads: usize,
    /// Segments handed to the sink.
    pub segments: usize,
    /// Sink calls.
    pub batches: usize,
    /// Reads that failed after the kernel had dequeued a packet.
    pub read_errors: usize,
    /// Reads that could not be split (bad virtio header, truncated
    /// headers, unknown GSO type).
    pub bad_packets: usize,
}

/// A read that cannot be carried.
#[derive(Debug)]
struct BadPacket(&'static str);

impl From<io::Error> for BadPacket {
    fn from(_: io::Error) -> Self {
        BadPacket("tun-rs refused the packet")
    }
}

/// How a super-packet splits.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The virtio header with `hdr_len` taken from the packet itself.
    hdr: VirtioNetHdr,
    is_v6: bool,
    tcp: bool,
}

/// The read buffer and the segment slots of the TUN side of the data plane.
pub struct TunRx {
    /// One raw read: virtio-net header (with offloads) and the packet.
    raw: Vec<u8>,
    /// Segments, each at `headroom` with `tailroom` free behind it.
    slots: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Slots holding a segment not yet handed on.
    filled: usize,
    headroom: usize,
    tailroom: usize,
    /// Packet bytes a slot holds.
    room: usize,
    /// Reads start with a virtio-net header (the device has offloads).
    vnet: bool,
    /// The original headers of a super-packet split in chunks.
    saved: Vec<u8>,
}

impl TunRx {
    /// `batch` slots for segments of up to `mtu` bytes (more room is made
    /// if the device hands over larger ones), `headroom` bytes free in
    /// front of each and `tailroom` behind; `vnet`: reads carry a
    /// virtio-net header.
    pub fn new(batch: usize, mtu: usize, headroom: usize, tailroom: usize, vnet: bool) -> TunRx {
        let batch = batch.max(1);
        let room = mtu.clamp(1280, MAX_PACKET);
        TunRx {
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            slots: (0..batch)
                .map(|_| vec![0; headroom + room + tailroom])
                .collect(),
            sizes: vec![0; batch],
            filled: 0,
            headroom,
            tailroom,
            room,
            vnet,
            saved: Vec::with_capacity(128),
        }
    }

    /// Whether reads carry a virtio-net header (after re-attaching).
    pub fn set_vnet(&mut self, vnet: bool) {
        self.vnet = vnet;
    }

    /// Slots of `headroom + room + tailroom` bytes hold every segment: grow
    /// them (once; they are never shrunk) if `need` exceeds the room.
    fn ensure_room(&mut self, need: usize) {
        if need <= self.room {
            return;
        }
        self.room = need.min(MAX_PACKET);
        let len = self.headroom + self.room + self.tailroom;
        tracing::debug!(room = self.room, "TUN segment slots grown");
        for s in &mut self.slots {
            s.resize(len, 0);
        }
    }

    /// Read until the device runs dry (`read` fails) or at least `budget`
    /// segments came out, handing every full batch, and the last partial
    /// one, to `sink` as `(slots, sizes)` (each segment at `headroom` in
    /// its slot). A super-packet is always split completely, whatever the
    /// budget and the room left.
    pub fn drain<R, S>(&mut self, budget: usize, mut read: R, mut sink: S) -> RxStats
    where
        R: FnMut(&mut [u8]) -> io::Result<usize>,
        S: FnMut(&mut [Vec<u8>], &[usize]),
    {
        let mut st = RxStats::default();
        let mut raw = std::mem::take(&mut self.raw);
        while st.segments < budget {
            let n = match read(&mut raw) {
                Ok(n) => n,
                Err(e) => {
                    if lost_on_error(&e) {
                        st.read_errors += 1;
                        tracing::debug!(error = %e, "TUN read failed");
                    }
                    break;
                }
            };
            st.reads += 1;
            self.carry(&mut raw, n, &mut sink, &mut st);
        }
        self.raw = raw;
        self.finish(&mut sink, &mut st);
        st
    }

    /// Split one raw read of `n` bytes in `raw` (read elsewhere: the data
    /// plane queues reads before they are carried) into the slots, handing
    /// full batches to `sink`; a read that cannot be carried counts in
    /// `st.bad_packets`. Call [`TunRx::finish`] after the last one.
    pub fn carry<S>(&mut self, raw: &mut [u8], n: usize, sink: &mut S, st: &mut RxStats)
    where
        S: FnMut(&mut [Vec<u8>], &[usize]),
    {
        if let Err(BadPacket(why)) = self.take(raw, n, sink, st) {
            st.bad_packets += 1;
            tracing::debug!(len = n, why, "TUN packet dropped");
        }
    }

    /// Hand the last, partly filled batch to `sink`.
    pub fn finish<S>(&mut self, sink: &mut S, st: &mut RxStats)
    where
        S: FnMut(&mut [Vec<u8>], &[usize]),
    {
        self.flush(sink, st);
    }

    fn flush<S: FnMut(&mut [Vec<u8>], &[usize])>(&mut self, sink: &mut S, st: &mut RxStats) {
        if self.filled > 0 {
            sink(&mut self.slots[..self.filled], &self.sizes[..self.filled]);
            st.batches += 1;
            self.filled = 0;
        }
    }

    /// Carry one read of `n` bytes in `raw`.
    fn take<S: FnMut(&mut [Vec<u8>], &[usize])>(
        &mut self,
        raw: &mut [u8],
        n: usize,
        sink: &mut S,
        st: &mut RxStats,
    ) -> Result<(), BadPacket> {
        let n = n.min(raw.len());
        if !self.vnet {
            if n == 0 {
                return Err(BadPacket("empty read"));
            }
            self.push_whole(&raw[..n], sink, st);
            return Ok(());
        }
        if n <= VIRTIO_NET_HDR_LEN {
            return Err(BadPacket("shorter than the virtio-net header"));
        }
        let hdr = VirtioNetHdr::decode(&raw[..VIRTIO_NET_HDR_LEN])?;
        let len = n - VIRTIO_NET_HDR_LEN;
        let packet = &mut raw[VIRTIO_NET_HDR_LEN..n];
        if hdr.gso_type == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
            }
            self.push_whole(&raw[VIRTIO_NET_HDR_LEN..n], sink, st);
            return Ok(());
        }
        let plan = plan(packet, hdr)?;
        self.split(&mut raw[..n], len, plan, sink, st)
    }

    /// One packet as it is (no offload) into the next slot.
    fn push_whole<S: FnMut(&mut [Vec<u8>], &[usize])>(
        &mut self,
        packet: &[u8],
        sink: &mut S,
        st: &mut RxStats,
    ) {
        let len = packet.len();
        self.ensure_room(len);
        if self.filled == self.slots.len() {
            self.flush(sink, st);
        }
        let i = self.filled;
        let h = self.headroom;
        self.slots[i][h..h + len].copy_from_slice(packet);
        self.sizes[i] = len;
        self.filled += 1;
        st.segments += 1;
    }

    /// Split the super-packet of `len` bytes after the virtio header into
    /// segments, handing on full batches as it goes.
    fn split<S: FnMut(&mut [Vec<u8>], &[usize])>(
        &mut self,
        raw: &mut [u8],
        len: usize,
        plan: Plan,
        sink: &mut S,
        st: &mut RxStats,
    ) -> Result<(), BadPacket> {
        let hdr_len = usize::from(plan.hdr.hdr_len);
        let gso = usize::from(plan.hdr.gso_size);
        let payload = len - hdr_len;
        let segments = payload.div_ceil(gso);
        if segments == 0 {
            return Err(BadPacket("super-packet without payload"));
        }
        self.ensure_room(hdr_len + gso.min(payload));
        const V: usize = VIRTIO_NET_HDR_LEN;
        if segments <= self.slots.len() - self.filled {
            let f = self.filled;
            let got = gso_split(
                &mut raw[V..V + len],
                plan.hdr,
                &mut self.slots[f..f + segments],
                &mut self.sizes[f..f + segments],
                self.headroom,
                plan.is_v6,
            )?;
            if got != segments {
                return Err(BadPacket("split gave an unexpected segment count"));
            }
            self.filled += got;
            st.segments += got;
            return Ok(());
        }
        // More segments than free slots: split in chunks, each as if it
        // were a super-packet of its own (see the module comment).
        self.saved.clear();
        self.saved.extend_from_slice(&raw[V..V + hdr_len]);
        let mut k = 0;
        while k < segments {
            if self.filled == self.slots.len() {
                self.flush(sink, st);
            }
            let f = self.filled;
            let n = (self.slots.len() - f).min(segments - k);
            let start = k * gso;
            let end = ((k + n) * gso).min(payload);
            // The chunk's payload starts at V + hdr_len + start; its
            // headers go right in front of it.
            let chunk = &mut raw[V + start..V + hdr_len + end];
            chunk[..hdr_len].copy_from_slice(&self.saved);
            patch_chunk_headers(&mut chunk[..hdr_len], &plan, k, end == payload);
            let got = gso_split(
                chunk,
                plan.hdr,
                &mut self.slots[f..f + n],
                &mut self.sizes[f..f + n],
                self.headroom,
                plan.is_v6,
            )?;
            if got != n {
                return Err(BadPacket("split gave an unexpected segment count"));
            }
            self.filled += n;
            st.segments += n;
            k += n;
        }
        Ok(())
    }
}

/// Whether a failed read lost a packet: the kernel dequeues the packet
/// before copying it out, so a copy failure loses it; "would block", an
/// interrupted wait and a detached queue (`EBADFD`) lose nothing.
pub(crate) fn lost_on_error(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) && e.raw_os_error() != Some(libc::EBADFD)
}

/// Check a super-packet's headers (as tun-rs's own read path does) and
/// take the header length from the packet: the kernel's `hdr_len` may
/// cover a whole segment on the forwarding path.
fn plan(packet: &[u8], mut hdr: VirtioNetHdr) -> Result<Plan, BadPacket> {
    if hdr.gso_size == 0 {
        return Err(BadPacket("GSO size 0"));
    }
    let is_v6 = match packet.first().map(|b| b >> 4) {
        Some(4) => false,
        Some(6) => true,
        _ => return Err(BadPacket("not IPv4 or IPv6")),
    };
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let tcp = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 if !is_v6 => true,
        GSO_TCPV6 if is_v6 => true,
        GSO_UDP_L4 if !ecn => false,
        _ => return Err(BadPacket("GSO type does not fit the packet")),
    };
    let cs = usize::from(hdr.csum_start);
    if cs < if is_v6 { 40 } else { 20 } {
        return Err(BadPacket("transport header inside the IP header"));
    }
    let hdr_len = if tcp {
        let off = *packet
            .get(cs + 12)
            .ok_or(BadPacket("truncated TCP header"))?;
        let thl = usize::from(off >> 4) * 4;
        if !(20..=60).contains(&thl) {
            return Err(BadPacket("bad TCP header length"));
        }
        cs + thl
    } else {
        cs + 8
    };
    if hdr_len > packet.len() {
        return Err(BadPacket("truncated headers"));
    }
    if cs + usize::from(hdr.csum_offset) + 2 > hdr_len {
        return Err(BadPacket("checksum field outside the transport header"));
    }
    hdr.hdr_len = u16::try_from(hdr_len).map_err(|_| BadPacket("headers too long"))?;
    Ok(Plan { hdr, is_v6, tcp })
}

/// Headers for the chunk whose first segment is segment `k` of the
/// super-packet (`h` holds the super-packet's original headers).
fn patch_chunk_headers(h: &mut [u8], plan: &Plan, k: usize, last: bool) {
    if !plan.is_v6 {
        let id = u16::from_be_bytes([h[4], h[5]]).wrapping_add(k as u16);
        h[4..6].copy_from_slice(&id.to_be_bytes());
    }
    if plan.tcp {
        let t = usize::from(plan.hdr.csum_start);
        let seq = u32::from_be_bytes([h[t + 4], h[t + 5], h[t + 6], h[t + 7]])
            .wrapping_add((k as u32).wrapping_mul(u32::from(plan.hdr.gso_size)));
        h[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        if k > 0 {
            h[t + TCP_FLAGS] &= !TCP_CWR;
        }
        if !last {
            h[t + TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
        }
    }
}

/// Finish a checksum the kernel left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`
/// without GSO): the field holds the pseudo-header sum; fold in the rest.
fn complete_checksum(pkt: &mut [u8], start: u16, offset: u16) -> Result<(), BadPacket> {
    let s = usize::from(start);
    let at = s + usize::from(offset);
    if at + 2 > pkt.len() {
        return Err(BadPacket("checksum field beyond the packet"));
    }
    let initial = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    pkt[at] = 0;
    pkt[at + 1] = 0;
    let sum = !tun_rs::checksum(&pkt[s..], u64::from(initial));
    // As the kernel does: a computed 0 goes on the wire as 0xffff.
    let sum = if sum == 0 { 0xffff } else { sum };
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const HEAD: usize = 16;
    const TAIL: usize = 16;

    /// A raw TUN read: virtio header, then an IPv4/IPv6 TCP or UDP packet
    /// with `payload` bytes of a known pattern, as the kernel hands over a
    /// TSO/USO super-packet of `gso` segments.
    pub(crate) fn super_packet(
        v6: bool,
        tcp: bool,
        tcp_opts: usize,
        gso: u16,
        payload: usize,
    ) -> Vec<u8> {
        let iph = if v6 { 40 } else { 20 };
        let th = if tcp { 20 + tcp_opts } else { 8 };
        let total = iph + th + payload;
        let mut p = vec![0u8; total];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = if tcp { 6 } else { 17 };
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total.min(65535) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes()); // wraps
            p[8] = 64;
            p[9] = if tcp { 6 } else { 17 };
            p[12..16].copy_from_slice(&[10, 10, 0, 1]);
            p[16..20].copy_from_slice(&[10, 10, 0, 2]);
        }
        p[iph..iph + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[iph + 2..iph + 4].copy_from_slice(&5201u16.to_be_bytes());
        if tcp {
            // Sequence number close to wrapping, ACK|PSH|FIN|CWR.
            p[iph + 4..iph + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
            p[iph + 12] = ((th / 4) as u8) << 4;
            p[iph + 13] = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
            for o in 0..tcp_opts {
                p[iph + 20 + o] = 1; // NOP
            }
        }
        for (i, b) in p[iph + th..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (tcp, v6) {
                (true, false) => GSO_TCPV4,
                (true, true) => GSO_TCPV6,
                (false, _) => GSO_UDP_L4,
            },
            // As on the forwarding path: not to be trusted.
            hdr_len: (iph + th + usize::from(gso)).min(total) as u16,
            gso_size: gso,
            csum_start: iph as u16,
            csum_offset: if tcp { 16 } else { 6 },
        };
        let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN];
        hdr.encode(&mut raw).expect("encode");
        raw.extend_from_slice(&p);
        raw
    }

    /// The segments of `raw` split in one go into as many buffers as it
    /// takes (the oracle).
    pub(crate) fn split_at_once(raw: &[u8]) -> Vec<Vec<u8>> {
        let mut input = raw[VIRTIO_NET_HDR_LEN..].to_vec();
        let hdr = VirtioNetHdr::decode(raw).expect("hdr");
        let plan = plan(&input, hdr).expect("plan");
        let payload = input.len() - usize::from(plan.hdr.hdr_len);
        let n = payload.div_ceil(usize::from(plan.hdr.gso_size));
        let mut bufs = vec![vec![0u8; 70000]; n];
        let mut sizes = vec![0; n];
        let got = gso_split(&mut input, plan.hdr, &mut bufs, &mut sizes, 0, plan.is_v6)
            .expect("one-shot split");
        assert_eq!(got, n);
        bufs.into_iter()
            .zip(sizes)
            .map(|(b, s)| b[..s].to_vec())
            .collect()
    }

    /// Feed `reads` through a TunRx of `batch` slots; returns every
    /// segment handed on and the stats. Each batch must fit the slots.
    fn run(batch: usize, vnet: bool, reads: &[Vec<u8>], budget: usize) -> (Vec<Vec<u8>>, RxStats) {
        let mut rx = TunRx::new(batch, 1420, HEAD, TAIL, vnet);
        let mut queue = reads.iter();
        let mut out = Vec::new();
        let st = rx.drain(
            budget,
            |buf| match queue.next() {
                Some(r) => {
                    buf[..r.len()].copy_from_slice(r);
                    Ok(r.len())
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
            |slots, sizes| {
                assert!(!slots.is_empty() && slots.len() <= batch);
                assert_eq!(slots.len(), sizes.len());
                for (s, &n) in slots.iter().zip(sizes) {
                    assert!(s.len() >= HEAD + n + TAIL, "no tailroom behind a segment");
                    out.push(s[HEAD..HEAD + n].to_vec());
                }
            },
        );
        (out, st)
    }

    fn ones_complement_ok(data: &[u8], initial: u64) -> bool {
        tun_rs::checksum(data, initial) == 0xffff
    }

    /// Independent of the oracle: the segments carry the payload in order,
    /// with consistent lengths, sequence numbers, flags and checksums.
    fn check_segments(raw: &[u8], segs: &[Vec<u8>], v6: bool, tcp: bool, gso: usize) {
        let orig = &raw[VIRTIO_NET_HDR_LEN..];
        let iph = if v6 { 40 } else { 20 };
        let th = if tcp {
            usize::from(orig[iph + 12] >> 4) * 4
        } else {
            8
        };
        let payload = &orig[iph + th..];
        assert_eq!(segs.len(), payload.len().div_ceil(gso));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let data = &s[iph + th..];
            assert!(data.len() == gso || (last && data.len() <= gso));
            joined.extend_from_slice(data);
            if v6 {
                assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                let id = u16::from_be_bytes([s[4], s[5]]);
                assert_eq!(id, 0xfff0u16.wrapping_add(i as u16));
                assert!(ones_complement_ok(&s[..20], 0), "IPv4 header checksum");
            }
            let pseudo = {
                let mut p = Vec::new();
                if v6 {
                    p.extend_from_slice(&s[8..40]);
                } else {
                    p.extend_from_slice(&s[12..20]);
                }
                p.extend_from_slice(&[0, if tcp { 6 } else { 17 }]);
                p.extend_from_slice(&((s.len() - iph) as u16).to_be_bytes());
                p
            };
            let mut l4 = pseudo;
            l4.extend_from_slice(&s[iph..]);
            if l4.len() % 2 == 1 {
                l4.push(0);
            }
            assert!(
                ones_complement_ok(&l4, 0),
                "transport checksum of segment {i}"
            );
            if tcp {
                let seq = u32::from_be_bytes([s[iph + 4], s[iph + 5], s[iph + 6], s[iph + 7]]);
                assert_eq!(seq, 0xffff_ff00u32.wrapping_add((i * gso) as u32));
                let f = s[iph + TCP_FLAGS];
                assert_eq!(f & TCP_CWR != 0, i == 0, "CWR on segment {i}");
                assert_eq!(f & (TCP_FIN | TCP_PSH) != 0, last, "FIN/PSH on segment {i}");
            } else {
                assert_eq!(
                    usize::from(u16::from_be_bytes([s[iph + 4], s[iph + 5]])),
                    s.len() - iph
                );
            }
        }
        assert_eq!(joined, payload, "payload lost or reordered");
    }

    #[test]
    fn every_segment_of_any_segment_size_comes_out_in_full_batches() {
        // TCP's smallest MSS (88) and smaller (the peer's MSS option may go
        // down to tcp_min_snd_mss), typical small MSS values, the tunnel's.
        for gso in [36u16, 88, 100, 288, 300, 524, 536, 1000, 1368, 1380] {
            for (v6, tcp, opts) in [
                (false, true, 12),
                (true, true, 0),
                (false, false, 0),
                (true, false, 0),
            ] {
                let iph = if v6 { 40 } else { 20 };
                let th = if tcp { 20 + opts } else { 8 };
                let payload = MAX_PACKET - iph - th;
                let big = super_packet(v6, tcp, opts, gso, payload);
                let small = super_packet(v6, tcp, opts, gso, 3 * usize::from(gso) / 2);
                // A batch already partly filled, big packets back to back,
                // odd batch sizes: every split crosses batch boundaries.
                for batch in [1, 7, 64, 128] {
                    let reads = vec![small.clone(), big.clone(), big.clone(), small.clone()];
                    let (out, st) = run(batch, true, &reads, usize::MAX);
                    let want: Vec<Vec<u8>> = reads.iter().flat_map(|r| split_at_once(r)).collect();
                    assert_eq!(st.reads, 4);
                    assert_eq!(st.bad_packets + st.read_errors, 0);
                    assert_eq!(
                        out.len(),
                        want.len(),
                        "gso {gso} v6 {v6} tcp {tcp} batch {batch}"
                    );
                    assert!(
                        out == want,
                        "gso {gso} v6 {v6} tcp {tcp} batch {batch}: segments differ from a one-shot split"
                    );
                    assert_eq!(st.segments, out.len());
                    assert_eq!(
                        st.batches,
                        out.len().div_ceil(batch),
                        "batches not filled up"
                    );
                    let n_small = 2;
                    check_segments(
                        &big,
                        &out[n_small..n_small + (out.len() - 2 * n_small) / 2],
                        v6,
                        tcp,
                        usize::from(gso),
                    );
                }
            }
        }
    }

    #[test]
    fn tiny_udp_segments_are_all_carried() {
        // UDP GSO may use segments of a few bytes: thousands per read.
        for gso in [1u16, 8, 29] {
            for v6 in [false, true] {
                let raw = super_packet(v6, false, 0, gso, 64 * 1024 - 100);
                let (out, st) = run(128, true, std::slice::from_ref(&raw), usize::MAX);
                assert_eq!(st.bad_packets, 0);
                check_segments(&raw, &out, v6, false, usize::from(gso));
                assert_eq!(out, split_at_once(&raw));
            }
        }
    }

    #[test]
    fn plain_packets_and_partial_checksums() {
        // No offloads: packets as they are, even larger than the MTU.
        let reads: Vec<Vec<u8>> = [60usize, 1420, 9000, 1]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 256) as u8).collect())
            .collect();
        let (out, st) = run(2, false, &reads, usize::MAX);
        assert_eq!(out, reads);
        assert_eq!(st.batches, 2);

        // Offloads, no GSO, checksum left partial: completed.
        let raw = super_packet(false, false, 0, 1000, 300);
        let mut hdr = VirtioNetHdr::decode(&raw).expect("hdr");
        hdr.gso_type = GSO_NONE;
        let mut plain = raw.clone();
        hdr.encode(&mut plain).expect("encode");
        let pkt = &mut plain[VIRTIO_NET_HDR_LEN..];
        let total = pkt.len();
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        // The kernel leaves the (uncomplemented) pseudo-header sum in the
        // checksum field.
        let mut ph = Vec::new();
        ph.extend_from_slice(&pkt[12..20]);
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&((total - 20) as u16).to_be_bytes());
        pkt[26..28].copy_from_slice(&tun_rs::checksum(&ph, 0).to_be_bytes());
        let (out, st) = run(4, true, &[plain.clone()], usize::MAX);
        assert_eq!(st.segments, 1);
        let s = &out[0];
        let mut l4 = ph.clone();
        l4.extend_from_slice(&s[20..]);
        assert!(ones_complement_ok(&l4, 0), "checksum not completed");
        assert_eq!(&s[28..], &plain[VIRTIO_NET_HDR_LEN + 28..]);
    }

    #[test]
    fn bad_reads_are_counted_and_the_next_ones_carried() {
        let good = super_packet(false, true, 0, 536, 5000);
        let mut wrong_type = good.clone();
        wrong_type[1] = GSO_TCPV6; // TCPv6 GSO on an IPv4 packet
        let short = vec![0u8; VIRTIO_NET_HDR_LEN];
        let mut truncated = good.clone();
        truncated.truncate(VIRTIO_NET_HDR_LEN + 30);
        let reads = vec![wrong_type, good.clone(), short, truncated, good.clone()];
        let (out, st) = run(8, true, &reads, usize::MAX);
        assert_eq!(st.bad_packets, 3);
        assert_eq!(out.len(), 2 * split_at_once(&good).len());
    }

    #[test]
    fn read_errors_that_lose_a_packet_are_counted() {
        for (err, counted) in [
            (io::Error::from_raw_os_error(libc::EINVAL), true),
            (io::Error::from_raw_os_error(libc::EFAULT), true),
            (io::Error::from_raw_os_error(libc::EBADFD), false),
            (io::ErrorKind::WouldBlock.into(), false),
            (io::ErrorKind::Interrupted.into(), false),
        ] {
            let mut rx = TunRx::new(4, 1420, HEAD, TAIL, true);
            let mut e = Some(err);
            let st = rx.drain(
                usize::MAX,
                |_| Err(e.take().unwrap_or_else(|| io::ErrorKind::WouldBlock.into())),
                |_, _| panic!("nothing was read"),
            );
            assert_eq!(st.read_errors, usize::from(counted));
        }
    }

    #[test]
    fn the_budget_stops_reading_but_never_cuts_a_super_packet() {
        let big = super_packet(false, true, 0, 300, 60000);
        let per = split_at_once(&big).len();
        let reads = vec![big.clone(), big.clone(), big];
        let (out, st) = run(16, true, &reads, per + 1);
        assert_eq!(st.reads, 2, "reading went on past the budget");
        assert_eq!(out.len(), 2 * per);
    }
}
