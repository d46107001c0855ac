//! The receiving side of the data plane: the express lane first (small
//! datagrams, see `udp::UdpSockets::express_v4`), then the bulk lane 64 KiB
//! a turn; decrypted in place and written to the TUN device, coalesced
//! where offloads allow.

use std::time::Instant;

use netman_proto::NetResult;

use super::super::drops::{IoDropReason, IoDrops};
use super::super::pktio::{TunIo, UdpIo};
use super::{BULK_BYTES, DataPlane, HEADROOM, Ready, TUN_BATCH};

/// How far the bulk lane's receive batch has been carried: messages
/// `next..got` are still to be decrypted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RxCursor {
    pub(super) next: usize,
    pub(super) got: usize,
    /// The batch came from the IPv6 socket.
    pub(super) v6: bool,
}

impl<T: TunIo, U: UdpIo> DataPlane<T, U> {
    /// Receive from a family's express lane (datagrams of at most
    /// `udp::EXPRESS_MAX` bytes: pings, acknowledgements, handshakes...),
    /// decrypt and write to the TUN device: all of it, ahead of the bulk
    /// lane, a few batches at most per turn.
    pub(super) fn express_to_tun(&mut self, v6: bool, now: Instant) {
        for _round in 0..4 {
            let got = match self.udp.recv_express(v6, &mut self.rx_express) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    return;
                }
            };
            self.carry_datagrams(true, 0, got, usize::MAX, now);
            if got < self.rx_express.slab.slots() {
                return;
            }
        }
    }

    /// Go on with the bulk lane: the batch already received, then one new
    /// batch from each `ready` family, until `BULK_BYTES` were carried (the
    /// rest waits for the next turn, so that the TUN side and the express
    /// lane are looked at between).
    pub(super) fn bulk_to_tun(&mut self, ready: Ready, now: Instant) {
        let mut budget = BULK_BYTES;
        let mut to_read = [ready.udp4, ready.udp6 && self.udp.has_v6()];
        loop {
            if self.rx_at.next >= self.rx_at.got {
                // The family not read last goes first: neither starves
                // the other.
                let order = [!self.rx_at.v6, self.rx_at.v6];
                let Some(v6) = order.into_iter().find(|f| to_read[usize::from(*f)]) else {
                    return;
                };
                let got = match self.udp.recv(v6, &mut self.rx) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        0
                    }
                };
                // A full batch: there may be more.
                to_read[usize::from(v6)] = got == self.rx.slab.slots();
                self.rx_at = RxCursor { next: 0, got, v6 };
                continue;
            }
            let RxCursor { next, got, .. } = self.rx_at;
            let (next, left) = self.carry_datagrams(false, next, got, budget, now);
            self.rx_at.next = next;
            budget = left;
            if budget == 0 {
                return;
            }
        }
    }

    /// Carry messages `from..to` of the express (or the bulk) receive
    /// batch until `budget` bytes were carried: decrypt in place and write
    /// the inner packets to the TUN device, coalesced into super-packets
    /// where offloads allow; handshake messages go to their worker.
    /// Returns the first message not carried and the budget left.
    pub(super) fn carry_datagrams(
        &mut self,
        express: bool,
        from: usize,
        to: usize,
        mut budget: usize,
        now: Instant,
    ) -> (usize, usize) {
        let DataPlane {
            rx,
            rx_express,
            device,
            to_tun,
            tun,
            gro,
            drops,
            udp,
            handshakes,
            ..
        } = self;
        let rx = if express { rx_express } else { rx };
        let mut k = 0;
        let mut i = from;
        while i < to.min(rx.lens.len()) && budget > 0 {
            let (len, seg, src) = (rx.lens[i], rx.segs[i], rx.srcs[i]);
            let mut off = 0;
            while off < len {
                let dlen = seg.min(len - off);
                let d = &mut rx.slab.slot_mut(i)[off..off + dlen];
                off += dlen;
                if netman_proto::is_handshake(d) {
                    // To the handshake worker; never in front of transport data.
                    handshakes.stage(src, d);
                    continue;
                }
                match device.handle_datagram(src, d, dlen, now) {
                    NetResult::ToTun { offset, len, .. } => {
                        let b = &mut to_tun[k];
                        b.clear();
                        b.resize(HEADROOM, 0);
                        b.extend_from_slice(&d[offset..offset + len]);
                        k += 1;
                        if k == TUN_BATCH {
                            write_tun(tun, gro, &mut to_tun[..k], drops);
                            k = 0;
                        }
                    }
                    NetResult::Reply { dst, len } => {
                        if let Some(Err(_)) = udp.send_to(&d[..len], dst) {
                            drops.add(IoDropReason::UdpSendError, 1);
                        }
                    }
                    NetResult::Done | NetResult::Drop(_) => {}
                }
            }
            budget = budget.saturating_sub(len);
            i += 1;
        }
        if k > 0 {
            write_tun(tun, gro, &mut to_tun[..k], drops);
        }
        handshakes.submit();
        // Handshake completions may have released staged packets.
        self.flush_transmits();
        (i, budget)
    }
}

/// Write inner packets to the TUN device: with offloads, TCP segments and
/// UDP datagrams of one flow are coalesced into super-packets (GRO, one
/// write for many packets), anything else is written as it is.
fn write_tun<T: TunIo>(
    tun: &mut T,
    gro: &mut tun_rs::GROTable,
    bufs: &mut [Vec<u8>],
    drops: &mut IoDrops,
) {
    if let Err(e) = tun.send_multiple(gro, bufs, HEADROOM) {
        tracing::debug!(error = %e, "TUN write failed");
        // tun-rs reports one error for the batch, not which of its writes
        // failed (typically all: the device is down or gone): count them all.
        drops.add(IoDropReason::TunWriteError, bufs.len());
    }
}
