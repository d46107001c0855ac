//! Timers (wireguard-go `timers.go`): the hooks that arm and cancel a peer's
//! timers as packets pass, what runs when one is due (handshake
//! retransmission and giving up, keepalives, a new handshake after
//! unanswered data, zeroing of key material, session expiry), and the
//! device's single deadline (`handle_timeout`, `poll_timeout`).

use std::time::{Duration, Instant};

use super::peers::release_handshake_index;
use super::send::{send_initiation, send_keepalive};
use super::{Core, Device, Peer};
use crate::api::{DropReason, Event};
use crate::consts::*;

impl Peer {
    pub(super) fn next_deadline(&self, now_hint: Instant) -> Option<Instant> {
        let t = &self.timers;
        let expiry = self
            .keypairs
            .current
            .as_ref()
            .filter(|k| !k.expiry_reported)
            .map(|k| k.created + REJECT_AFTER_TIME);
        [
            t.retransmit_handshake,
            t.send_keepalive,
            t.new_handshake,
            t.zero_key_material,
            t.persistent_keepalive,
            t.kick.then_some(now_hint),
            expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

// ---------------------------------------------------------------------------
// Timer hooks (wireguard-go `timers.go`)

pub(super) fn timers_any_authenticated_packet_traversal(peer: &mut Peer, now: Instant) {
    if let Some(secs) = peer.config.keepalive_interval() {
        peer.timers.persistent_keepalive = Some(now + Duration::from_secs(u64::from(secs)));
    }
}

pub(super) fn timers_any_authenticated_packet_sent(peer: &mut Peer) {
    peer.timers.send_keepalive = None;
}

pub(super) fn timers_any_authenticated_packet_received(peer: &mut Peer) {
    peer.timers.new_handshake = None;
}

fn timers_data_sent(core: &mut Core, peer: &mut Peer, now: Instant) {
    if peer.timers.new_handshake.is_none() {
        peer.timers.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + core.jitter());
    }
}

pub(super) fn timers_data_received(peer: &mut Peer, now: Instant) {
    if peer.timers.send_keepalive.is_none() {
        peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
    } else {
        peer.timers.need_another_keepalive = true;
    }
}

pub(super) fn timers_handshake_complete(core: &Core, peer: &mut Peer, now: Instant) {
    peer.timers.retransmit_handshake = None;
    peer.timers.handshake_attempts = 0;
    peer.timers.sent_last_minute_handshake = false;
    peer.stats.last_handshake = Some(core.wall(now));
    peer.stats.handshakes_completed += 1;
}

pub(super) fn timers_session_derived(peer: &mut Peer, now: Instant) {
    peer.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
}

pub(super) fn after_packet_sent(core: &mut Core, peer: &mut Peer, now: Instant, is_data: bool) {
    timers_any_authenticated_packet_traversal(peer, now);
    timers_any_authenticated_packet_sent(peer);
    if is_data {
        timers_data_sent(core, peer, now);
    }
}

fn zero_key_material(core: &mut Core, peer: &mut Peer) {
    for idx in peer.keypairs.clear() {
        core.release_index(idx);
    }
    release_handshake_index(core, peer);
    peer.handshake.clear();
    peer.staged.clear();
}

fn run_timers(core: &mut Core, peer: &mut Peer, now: Instant) {
    let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);

    if due(peer.timers.retransmit_handshake) {
        peer.timers.retransmit_handshake = None;
        if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
            peer.timers.send_keepalive = None;
            for _ in 0..peer.staged.len() {
                core.drop_packet(DropReason::HandshakeTimeout);
            }
            peer.staged.clear();
            if peer.timers.zero_key_material.is_none() {
                peer.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
            }
            core.push_event(Event::HandshakeFailed { peer: peer.id });
        } else {
            peer.timers.handshake_attempts += 1;
            send_initiation(core, peer, now, true);
        }
    }
    if due(peer.timers.send_keepalive) {
        peer.timers.send_keepalive = None;
        send_keepalive(core, peer, now);
        if peer.timers.need_another_keepalive {
            peer.timers.need_another_keepalive = false;
            peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
    }
    if due(peer.timers.new_handshake) {
        peer.timers.new_handshake = None;
        send_initiation(core, peer, now, false);
    }
    if due(peer.timers.zero_key_material) {
        peer.timers.zero_key_material = None;
        zero_key_material(core, peer);
        core.push_event(Event::KeysZeroed { peer: peer.id });
    }
    if due(peer.timers.persistent_keepalive) {
        peer.timers.persistent_keepalive = None;
        if peer.config.keepalive_interval().is_some() {
            send_keepalive(core, peer, now);
        }
    }
    if peer.timers.kick {
        peer.timers.kick = false;
        if peer.config.keepalive_interval().is_some() && peer.endpoint.is_some() {
            send_keepalive(core, peer, now);
        }
    }
    if let Some(kp) = peer.keypairs.current.as_mut()
        && !kp.expiry_reported
        && now.saturating_duration_since(kp.created) >= REJECT_AFTER_TIME
    {
        kp.expiry_reported = true;
        core.push_event(Event::SessionExpired { peer: peer.id });
    }
}

impl Device {
    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.observe(now);
        // Every change to a peer timer lowers `next_deadline` (`Core::arm`),
        // so nothing can be due before it; with nothing armed, nothing is due.
        match self.core.next_deadline {
            Some(d) if now >= d => {}
            _ => return,
        }
        self.core.next_deadline = None;
        let core = &mut self.core;
        for peer in self.peers.iter_mut().flatten() {
            run_timers(core, peer, now);
            let d = peer.next_deadline(core.now_hint);
            core.arm(d);
        }
    }

    /// When `handle_timeout` should next be called (`None`: no timer armed).
    /// May be early (a timer was cancelled); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.next_deadline
    }
}
