//! The receiving side (wireguard-go `receive.go`), the hot path network ->
//! TUN (`handle_datagram`): transport data (index lookup, replay window,
//! decryption in place, source check), handshake initiations and responses
//! (through the device's own gate, or from a caller's `HandshakeGate` via
//! `handle_gated`), cookie replies, endpoint roaming and rekeying on receive.

use std::net::SocketAddr;
use std::time::Instant;

use zeroize::Zeroizing;

use super::peers::release_handshake_index;
use super::send::{flush_staged, send_initiation, send_keepalive};
use super::timers::{
    after_packet_sent, timers_any_authenticated_packet_received,
    timers_any_authenticated_packet_traversal, timers_data_received, timers_handshake_complete,
    timers_session_derived,
};
use super::{Core, Device, Peer};
use crate::api::{DropReason, Event, NetResult};
use crate::consts::*;
use crate::cookie::CookieError;
use crate::gate::{GateResult, Gated, GatedHandshake, handshake_drop};
use crate::ip;
use crate::noise::{self, InitiationPartial, Stage};
use crate::session::Keypair;
use crate::wire::{CookieReply, HandshakeResponse, MessageType, TransportData, WireError, field};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

fn set_endpoint(core: &mut Core, peer: &mut Peer, src: SocketAddr) {
    if peer.endpoint != Some(src) {
        peer.endpoint = Some(src);
        core.push_event(Event::EndpointChanged {
            peer: peer.id,
            endpoint: src,
        });
    }
}

fn keep_key_fresh_receiving(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.timers.sent_last_minute_handshake {
        return;
    }
    let Some(kp) = peer.keypairs.current.as_ref() else {
        return;
    };
    if kp.is_initiator
        && now.saturating_duration_since(kp.created)
            > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    {
        peer.timers.sent_last_minute_handshake = true;
        send_initiation(core, peer, now, false);
    }
}

impl Device {
    /// Processes one received datagram `buf[..len]` from `src`.
    ///
    /// Transport data is decrypted in place (`ToTun`); a handshake response
    /// or cookie reply to an initiation is written into `buf` (`Reply`).
    /// Bad input is dropped and counted, never answered and never panics.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> NetResult {
        self.core.observe(now);
        let Some(data) = buf.get(..len) else {
            return NetResult::Drop(self.core.drop_packet(DropReason::BufferTooSmall));
        };
        let ty = match MessageType::from_header(data) {
            Ok(t) => t,
            Err(WireError::UnknownType(_)) => {
                return NetResult::Drop(self.core.drop_packet(DropReason::UnknownMessageType));
            }
            Err(_) => return NetResult::Drop(self.core.drop_packet(DropReason::Malformed)),
        };
        match ty {
            MessageType::TransportData => self.handle_transport(src, buf, len, now),
            MessageType::HandshakeInitiation | MessageType::HandshakeResponse => {
                let core = &mut self.core;
                match self
                    .gate
                    .triage
                    .process(&mut core.drops, &mut core.rng, src, buf, len, now)
                {
                    GateResult::Pass(msg) => self.finish_gated(msg, buf, now),
                    GateResult::Reply { dst, len } => NetResult::Reply { dst, len },
                    GateResult::Drop(r) => NetResult::Drop(r),
                }
            }
            MessageType::CookieReply => self.handle_cookie_reply(buf, len, now),
        }
    }

    fn handle_transport(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> NetResult {
        let core = &mut self.core;
        let Some(msg) = buf.get_mut(..len) else {
            return NetResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let (receiver, counter) = match TransportData::new_checked(&*msg) {
            Ok(v) => (v.receiver_index(), v.counter()),
            Err(_) => return NetResult::Drop(core.drop_packet(DropReason::Malformed)),
        };
        let Some(&slot) = core.index.get(&receiver) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let kps = &mut peer.keypairs;
        let which = if kps
            .current
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            Slot::Current
        } else if kps
            .previous
            .as_ref()
            .is_some_and(|k| k.local_index == receiver)
        {
            Slot::Previous
        } else if kps.next.as_ref().is_some_and(|k| k.local_index == receiver) {
            Slot::Next
        } else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let kp = match which {
            Slot::Current => kps.current.as_mut(),
            Slot::Previous => kps.previous.as_mut(),
            Slot::Next => kps.next.as_mut(),
        };
        let Some(kp) = kp else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        if !kp.can_receive(now) {
            return NetResult::Drop(core.drop_packet(DropReason::KeyExpired));
        }
        if !kp.replay.would_accept(counter) {
            return NetResult::Drop(core.drop_packet(DropReason::Replay));
        }
        let Some(ciphertext) = msg.get_mut(TRANSPORT_HEADER_LEN..) else {
            return NetResult::Drop(core.drop_packet(DropReason::Malformed));
        };
        let Some(plain_len) = kp.open(counter, ciphertext) else {
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        if !kp.replay.validate(counter) {
            return NetResult::Drop(core.drop_packet(DropReason::Replay));
        }

        // Authenticated.
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        if which == Slot::Next {
            if let Some(old) = peer.keypairs.promote_next() {
                core.release_index(old);
            }
            timers_handshake_complete(core, peer, now);
            core.push_event(Event::HandshakeCompleted {
                peer: peer.id,
                initiator: false,
            });
            flush_staged(core, peer, now);
        }
        keep_key_fresh_receiving(core, peer, now);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);
        if plain_len == 0 {
            core.arm(peer.next_deadline(core.now_hint));
            return NetResult::Done;
        }
        timers_data_received(peer, now);
        core.arm(peer.next_deadline(core.now_hint));

        let plain = msg
            .get(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plain_len)
            .unwrap_or_default();
        let Some((src_ip, ip_len)) = ip::source_and_len(plain) else {
            return NetResult::Drop(core.drop_packet(DropReason::InvalidInnerPacket));
        };
        if self.allowed_ips.lookup(src_ip) != Some(slot) {
            return NetResult::Drop(core.drop_packet(DropReason::SourceCheck));
        }
        NetResult::ToTun {
            offset: TRANSPORT_HEADER_LEN,
            len: ip_len,
            peer: peer.id,
        }
    }

    /// Finishes a handshake message that passed a [`HandshakeGate`] (see
    /// [`crate::gate`]): for an initiation, the peer lookup, timestamp
    /// decryption, replay and per-peer rate checks, then the response
    /// (written to `buf[..HANDSHAKE_RESPONSE_LEN]`, `Reply`); for a response,
    /// the index lookup and its DH (`Done`, staged packets come out of
    /// `poll_transmit`). Only authenticated messages cost more than a hash
    /// here. `buf` must hold at least `MAX_HANDSHAKE_LEN` bytes.
    ///
    /// [`HandshakeGate`]: crate::gate::HandshakeGate
    pub fn handle_gated(&mut self, msg: GatedHandshake, buf: &mut [u8], now: Instant) -> NetResult {
        self.core.observe(now);
        self.finish_gated(msg, buf, now)
    }

    fn finish_gated(&mut self, msg: GatedHandshake, buf: &mut [u8], now: Instant) -> NetResult {
        let src = msg.src;
        match msg.msg {
            Gated::Initiation(partial) => self.handle_initiation(src, partial, buf, now),
            Gated::Response(bytes) => self.handle_response(src, &bytes, now),
        }
    }

    fn handle_initiation(
        &mut self,
        src: SocketAddr,
        mut partial: InitiationPartial,
        buf: &mut [u8],
        now: Instant,
    ) -> NetResult {
        let len = HANDSHAKE_INITIATION_LEN;
        let core = &mut self.core;
        let Some(&slot) = self.by_key.get(&partial.remote_static) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownPeer));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownPeer));
        };
        let ts = match noise::consume_initiation_timestamp(&mut partial, &peer.keys) {
            Ok(ts) => ts,
            Err(e) => return NetResult::Drop(core.drop_packet(handshake_drop(e))),
        };
        if !ts.is_after(&peer.handshake.latest_timestamp) {
            return NetResult::Drop(core.drop_packet(DropReason::ReplayedInitiation));
        }
        if peer
            .handshake
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) < HANDSHAKE_INITIATION_RATE)
        {
            return NetResult::Drop(core.drop_packet(DropReason::HandshakeFlood));
        }

        // Authenticated initiation: it supersedes any handshake of ours in flight.
        release_handshake_index(core, peer);
        noise::commit_initiation(&mut peer.handshake, &partial, ts, now);
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);

        let idx = core.new_index(slot);
        let seed = Zeroizing::new(core.random32());
        let keys = match noise::create_response(&peer.keys, &mut peer.handshake, *seed, idx, buf) {
            Ok(k) => k,
            Err(e) => {
                core.release_index(idx);
                core.arm(peer.next_deadline(core.now_hint));
                return NetResult::Drop(core.drop_packet(handshake_drop(e)));
            }
        };
        if let Some(resp) = buf.get_mut(..HANDSHAKE_RESPONSE_LEN) {
            peer.cookie.add_macs(resp, field::RESP_MAC1, now);
        }
        let Some(kp) = Keypair::new(&keys, idx, now, false) else {
            core.release_index(idx);
            core.arm(peer.next_deadline(core.now_hint));
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        for old in peer.keypairs.install(kp).into_iter().flatten() {
            core.release_index(old);
        }
        timers_session_derived(peer, now);
        after_packet_sent(core, peer, now, false);
        peer.stats.tx_bytes += HANDSHAKE_RESPONSE_LEN as u64;
        core.arm(peer.next_deadline(core.now_hint));
        NetResult::Reply {
            dst: src,
            len: HANDSHAKE_RESPONSE_LEN,
        }
    }

    fn handle_response(
        &mut self,
        src: SocketAddr,
        bytes: &[u8; HANDSHAKE_RESPONSE_LEN],
        now: Instant,
    ) -> NetResult {
        let len = HANDSHAKE_RESPONSE_LEN;
        let view = HandshakeResponse::new_unchecked(&bytes[..]);
        let core = &mut self.core;
        let receiver = view.receiver_index();
        let Some(&slot) = core.index.get(&receiver) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        if peer.handshake.local_index != Some(receiver)
            || peer.handshake.stage != Stage::InitiationCreated
        {
            return NetResult::Drop(core.drop_packet(DropReason::UnexpectedHandshake));
        }
        let keys = match noise::consume_response(
            core.private_key.secret(),
            &peer.keys,
            &mut peer.handshake,
            &view,
        ) {
            Ok(k) => k,
            Err(e) => return NetResult::Drop(core.drop_packet(handshake_drop(e))),
        };
        let Some(idx) = peer.handshake.local_index.take() else {
            return NetResult::Drop(core.drop_packet(DropReason::UnexpectedHandshake));
        };
        let Some(kp) = Keypair::new(&keys, idx, now, true) else {
            core.release_index(idx);
            return NetResult::Drop(core.drop_packet(DropReason::DecryptFailed));
        };
        for old in peer.keypairs.install(kp).into_iter().flatten() {
            core.release_index(old);
        }
        peer.stats.rx_bytes += len as u64;
        set_endpoint(core, peer, src);
        timers_any_authenticated_packet_traversal(peer, now);
        timers_any_authenticated_packet_received(peer);
        timers_session_derived(peer, now);
        timers_handshake_complete(core, peer, now);
        core.push_event(Event::HandshakeCompleted {
            peer: peer.id,
            initiator: true,
        });
        send_keepalive(core, peer, now);
        core.arm(peer.next_deadline(core.now_hint));
        NetResult::Done
    }

    fn handle_cookie_reply(&mut self, buf: &mut [u8], len: usize, now: Instant) -> NetResult {
        let core = &mut self.core;
        let Some(data) = buf.get(..len) else {
            return NetResult::Drop(core.drop_packet(DropReason::BufferTooSmall));
        };
        let view = match CookieReply::new_checked(data) {
            Ok(v) => v,
            Err(_) => return NetResult::Drop(core.drop_packet(DropReason::Malformed)),
        };
        let Some(&slot) = core.index.get(&view.receiver_index()) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return NetResult::Drop(core.drop_packet(DropReason::UnknownIndex));
        };
        match peer.cookie.consume_reply(&view, now) {
            Ok(()) => NetResult::Done,
            Err(CookieError::NoPendingMac1) => {
                NetResult::Drop(core.drop_packet(DropReason::UnexpectedCookie))
            }
            Err(CookieError::Decrypt) => {
                NetResult::Drop(core.drop_packet(DropReason::DecryptFailed))
            }
        }
    }
}
