//! The sending side of the data plane: TUN reads into the flow queue
//! (`engine::fq`), and the queue served a few segments a turn: split,
//! encrypted in place, sent in GSO batches.

use std::time::Instant;

use netman_proto::TunResult;

use super::super::drops::{IoDropReason, IoDrops};
use super::super::pktio::tx::FlushReport;
use super::super::pktio::{TunIo, UdpIo};
use super::super::tunrx::{RxStats, lost_on_error};
use super::{DataPlane, TUN_READS};

impl<T: TunIo, U: UdpIo> DataPlane<T, U> {
    /// Empty the TUN device's ring into the flow queue (at most
    /// `TUN_READS` reads a turn): from there the data plane, not the
    /// driver's first-in first-out ring, decides what goes first.
    pub(super) fn tun_to_queue(&mut self, now: Instant) {
        let vnet = self.tun.offload();
        if vnet != self.vnet {
            // A re-attached queue with other offloads: what was read
            // under the old framing goes out under it first.
            self.queue_to_udp(now, usize::MAX);
            self.vnet = vnet;
            self.tun_rx.set_vnet(vnet);
        }
        let l3 = if vnet { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
        for _ in 0..TUN_READS {
            let mut buf = self.fq.read_buffer();
            match self.tun.recv(&mut buf) {
                Ok(n) => self.fq.enqueue(buf, n, l3, now),
                Err(e) => {
                    self.fq.recycle(buf);
                    if lost_on_error(&e) {
                        tracing::debug!(error = %e, "TUN read failed");
                        self.drops.add(IoDropReason::TunReadError, 1);
                    }
                    break;
                }
            }
        }
    }

    /// Serve the flow queue until `budget` segments went out: split
    /// offloaded super-packets into segments (as many batches as they
    /// take), encrypt in place, and send with GSO-batched `sendmmsg`.
    pub(super) fn queue_to_udp(&mut self, now: Instant, budget: usize) {
        let DataPlane {
            fq,
            tun_rx,
            device,
            tx,
            udp,
            drops,
            ..
        } = self;
        let mut st = RxStats::default();
        let mut sink = |slots: &mut [Vec<u8>], sizes: &[usize]| {
            for (buf, &len) in slots.iter_mut().zip(sizes) {
                if let TunResult::Send { dst, len } = device.handle_tun_packet(buf, len, now) {
                    let data = &buf[..len];
                    if !tx.push(data, dst) {
                        note_flush(drops, tx.flush(&mut *udp, now));
                        if !tx.push(data, dst) {
                            // Larger than the whole queue: cannot be sent.
                            drops.add(IoDropReason::UdpSendError, 1);
                        }
                    }
                }
            }
            note_flush(drops, tx.flush(&mut *udp, now));
        };
        while st.segments < budget {
            let Some(mut p) = fq.dequeue(now) else { break };
            tun_rx.carry(&mut p.buf, p.len, &mut sink, &mut st);
            fq.recycle(p.buf);
        }
        tun_rx.finish(&mut sink, &mut st);
        drops.add(IoDropReason::TunBadPacket, st.bad_packets);
    }
}

/// Count what a send-queue flush could not send.
pub(super) fn note_flush(drops: &mut IoDrops, r: FlushReport) {
    drops.add(IoDropReason::UdpSendError, r.failed);
    drops.add(IoDropReason::NoIpv6Socket, r.no_socket);
}
