//! The sending side (wireguard-go `send.go`): handshake initiations, rekeying
//! on send, staging packets while no session can send and flushing them once
//! one can, keepalives, the hot path TUN -> network (`handle_tun_packet`) and
//! the transmit queue (`poll_transmit`).

use std::net::SocketAddr;
use std::time::Instant;

use zeroize::Zeroizing;

use super::peers::release_handshake_index;
use super::timers::{
    after_packet_sent, timers_any_authenticated_packet_sent,
    timers_any_authenticated_packet_traversal,
};
use super::{Core, Device, DeviceError, Peer, Staged, Transmit};
use crate::api::{DropReason, PeerId, TunResult};
use crate::consts::*;
use crate::ip;
use crate::noise;
use crate::session::SealError;
use crate::tai64n::Tai64N;
use crate::wire::field;

pub(super) fn send_initiation(core: &mut Core, peer: &mut Peer, now: Instant, is_retry: bool) {
    if !is_retry {
        peer.timers.handshake_attempts = 0;
    }
    // At most one initiation per REKEY_TIMEOUT. Unlike wireguard-go, the
    // interval includes the same random jitter as the retransmission timer:
    // otherwise two peers with synchronized traffic re-initiate at exactly
    // the same instant after a crossed handshake and collide again forever.
    if peer
        .handshake
        .next_initiation_allowed
        .is_some_and(|t| now < t)
    {
        return;
    }
    let Some(dst) = peer.endpoint else {
        return;
    };
    let retry_at = now + REKEY_TIMEOUT + core.jitter();
    peer.handshake.next_initiation_allowed = Some(retry_at);
    release_handshake_index(core, peer);
    let idx = core.new_index(peer.id.slot);
    let seed = Zeroizing::new(core.random32());
    let ts = Tai64N::from_system_time(core.wall(now));
    let mut msg = vec![0u8; HANDSHAKE_INITIATION_LEN];
    let created = noise::create_initiation(
        &core.public,
        &peer.keys,
        &mut peer.handshake,
        *seed,
        idx,
        ts,
        &mut msg,
    );
    if created.is_err() {
        core.release_index(idx);
        peer.handshake.clear();
        return;
    }
    peer.handshake.local_index = Some(idx);
    peer.cookie.add_macs(&mut msg, field::INIT_MAC1, now);
    peer.stats.tx_bytes += msg.len() as u64;
    peer.stats.handshake_attempts += 1;
    core.transmits.push_back(Transmit {
        slot: peer.id.slot,
        dst,
        data: msg,
    });
    timers_any_authenticated_packet_traversal(peer, now);
    timers_any_authenticated_packet_sent(peer);
    peer.timers.retransmit_handshake = Some(retry_at);
}

fn keep_key_fresh_sending(core: &mut Core, peer: &mut Peer, now: Instant) {
    let Some(kp) = peer.keypairs.current.as_ref() else {
        return;
    };
    if kp.send_counter > REKEY_AFTER_MESSAGES
        || (kp.is_initiator && now.saturating_duration_since(kp.created) > REKEY_AFTER_TIME)
    {
        send_initiation(core, peer, now, false);
    }
}

fn stage_packet(core: &mut Core, peer: &mut Peer, payload: &[u8]) {
    if peer.staged.len() >= MAX_STAGED_PACKETS {
        peer.staged.pop_front();
        core.drop_packet(DropReason::QueueFull);
    }
    let mut buf = vec![0u8; TUN_HEADROOM + core.padded_len(payload.len()) + AEAD_TAG_LEN];
    if let Some(dst) = buf.get_mut(TUN_HEADROOM..TUN_HEADROOM + payload.len()) {
        dst.copy_from_slice(payload);
    }
    peer.staged.push_back(Staged {
        buf,
        len: payload.len(),
    });
}

/// Encrypts staged packets into the transmit queue if a session can send,
/// otherwise starts a handshake (wireguard-go `SendStagedPackets`).
pub(super) fn flush_staged(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.staged.is_empty() {
        return;
    }
    let usable = peer
        .keypairs
        .current
        .as_ref()
        .is_some_and(|k| k.can_send(now));
    if !usable {
        send_initiation(core, peer, now, false);
        return;
    }
    let Some(dst) = peer.endpoint else {
        return;
    };
    while let Some(mut st) = peer.staged.pop_front() {
        let Some(kp) = peer.keypairs.current.as_mut() else {
            peer.staged.push_front(st);
            break;
        };
        let padded = core.padded_len(st.len);
        match kp.seal(&mut st.buf, st.len, padded) {
            Ok(n) => {
                st.buf.truncate(n);
                peer.stats.tx_bytes += n as u64;
                core.transmits.push_back(Transmit {
                    slot: peer.id.slot,
                    dst,
                    data: st.buf,
                });
                after_packet_sent(core, peer, now, st.len > 0);
            }
            Err(SealError::Exhausted) => {
                peer.staged.push_front(st);
                send_initiation(core, peer, now, false);
                return;
            }
            Err(SealError::BufferTooSmall) => {
                core.drop_packet(DropReason::BufferTooSmall);
            }
        }
    }
    keep_key_fresh_sending(core, peer, now);
}

/// wireguard-go `SendKeepalive`: an empty packet unless data is staged.
pub(super) fn send_keepalive(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.staged.is_empty() {
        stage_packet(core, peer, &[]);
    }
    flush_staged(core, peer, now);
}

impl Device {
    /// Starts a handshake with a peer now (rate limited to one per
    /// REKEY_TIMEOUT, like every initiation). The initiation comes out of
    /// `poll_transmit`.
    pub fn initiate_handshake(&mut self, id: PeerId, now: Instant) -> Result<(), DeviceError> {
        self.core.observe(now);
        let peer = self
            .peers
            .get_mut(id.slot as usize)
            .and_then(Option::as_mut)
            .filter(|p| p.id == id)
            .ok_or(DeviceError::UnknownPeer)?;
        if peer.endpoint.is_none() {
            return Err(DeviceError::NoEndpoint);
        }
        send_initiation(&mut self.core, peer, now, false);
        let d = peer.next_deadline(self.core.now_hint);
        self.core.arm(d);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Hot path: TUN -> network

    /// Encrypts one packet read from the TUN device, in place.
    ///
    /// `buf[TUN_HEADROOM..TUN_HEADROOM + payload_len]` holds the IP packet;
    /// `buf` must extend at least `TUN_TAILROOM` bytes past it (see
    /// [`tun_buffer_len`]). On `Send { dst, len }` the datagram is `buf[..len]`.
    /// Allocates only when the packet has to be staged.
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> TunResult {
        let core = &mut self.core;
        core.observe(now);
        let Some(payload) = buf.get(TUN_HEADROOM..TUN_HEADROOM.saturating_add(payload_len)) else {
            return TunResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let Some(dst_ip) = ip::destination(payload) else {
            return TunResult::Drop(core.drop_packet(DropReason::InvalidInnerPacket));
        };
        let Some(slot) = self.allowed_ips.lookup(dst_ip) else {
            return TunResult::Drop(core.drop_packet(DropReason::NoRoute));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return TunResult::Drop(core.drop_packet(DropReason::NoRoute));
        };
        let Some(dst) = peer.endpoint else {
            return TunResult::Drop(core.drop_packet(DropReason::NoEndpoint));
        };
        let padded = core.padded_len(payload_len);
        if buf.len() < TUN_HEADROOM + padded + AEAD_TAG_LEN {
            return TunResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        }
        let usable = peer.staged.is_empty()
            && peer
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(now));
        if usable
            && let Some(kp) = peer.keypairs.current.as_mut()
            && let Ok(len) = kp.seal(buf, payload_len, padded)
        {
            peer.stats.tx_bytes += len as u64;
            after_packet_sent(core, peer, now, true);
            keep_key_fresh_sending(core, peer, now);
            core.arm(peer.next_deadline(core.now_hint));
            return TunResult::Send { dst, len };
        }
        let payload = buf
            .get(TUN_HEADROOM..TUN_HEADROOM + payload_len)
            .unwrap_or_default();
        stage_packet(core, peer, payload);
        flush_staged(core, peer, now);
        core.arm(peer.next_deadline(core.now_hint));
        TunResult::Queued { peer: peer.id }
    }

    // -----------------------------------------------------------------------
    // Polling

    /// Copies the next queued datagram (handshake initiation, keepalive or
    /// flushed staged packet) into `buf`, returning its destination and
    /// length. A datagram that does not fit is dropped (`BufferTooSmall`);
    /// `buf` of `MAX_HANDSHAKE_LEN.max(mtu + TUN_HEADROOM + TUN_TAILROOM)`
    /// bytes always suffices.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(t) = self.core.transmits.pop_front() {
            match buf.get_mut(..t.data.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&t.data);
                    return Some((t.dst, t.data.len()));
                }
                None => {
                    self.core.drop_packet(DropReason::BufferTooSmall);
                }
            }
        }
        None
    }

    /// Number of datagrams waiting for `poll_transmit`.
    pub fn pending_transmits(&self) -> usize {
        self.core.transmits.len()
    }
}
