//! Peer management: adding, re-applying and removing peers (slot, generation,
//! public-key map and allowed-IPs table kept in step), lookups by id, public
//! key and inner address, and per-peer status. What a re-apply of an
//! unchanged peer keeps, and what a new public key resets, is decided here.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Core, Counters, Device, DeviceError, Peer, Timers};
use crate::allowed_ips::IpPrefix;
use crate::api::{PeerConfig, PeerId, PeerStats};
use crate::cookie::CookieGenerator;
use crate::keys::PublicKey;
use crate::noise::{Handshake, PeerKeys};
use crate::session::Keypairs;

pub(super) fn release_handshake_index(core: &mut Core, peer: &mut Peer) {
    if let Some(old) = peer.handshake.local_index.take() {
        core.release_index(old);
    }
}

impl Device {
    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers
            .get(id.slot as usize)
            .and_then(Option::as_ref)
            .filter(|p| p.id == id)
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers
            .get_mut(id.slot as usize)
            .and_then(Option::as_mut)
            .filter(|p| p.id == id)
    }

    fn validate_key(&self, key: &PublicKey, except: Option<u32>) -> Result<PeerKeys, DeviceError> {
        if key.as_bytes() == &self.core.public {
            return Err(DeviceError::OwnPublicKey);
        }
        if let Some(&slot) = self.by_key.get(key.as_bytes())
            && Some(slot) != except
        {
            return Err(DeviceError::DuplicatePublicKey(*key));
        }
        PeerKeys::new(self.core.private_key.secret(), key.to_bytes(), None)
            .map_err(|_| DeviceError::InvalidPublicKey(*key))
    }

    fn set_allowed_ips(&mut self, slot: u32, prefixes: &[IpPrefix]) {
        self.allowed_ips.retain(|v| *v != slot);
        for p in prefixes {
            self.allowed_ips.insert(*p, slot);
        }
    }

    /// Adds a peer. If it has a persistent keepalive and an endpoint, a
    /// keepalive (and so a handshake) is sent at the next `handle_timeout`.
    pub fn add_peer(&mut self, config: PeerConfig) -> Result<PeerId, DeviceError> {
        let mut keys = self.validate_key(&config.public_key, None)?;
        keys.set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.peers.len()).map_err(|_| DeviceError::TooManyPeers)?;
                if s == u32::MAX {
                    return Err(DeviceError::TooManyPeers);
                }
                self.peers.push(None);
                self.generations.push(0);
                s
            }
        };
        let generation = self
            .generations
            .get(slot as usize)
            .copied()
            .unwrap_or_default();
        let id = PeerId { slot, generation };
        let mut peer = Peer {
            id,
            cookie: CookieGenerator::new(config.public_key.as_bytes()),
            keys,
            endpoint: config.endpoint,
            handshake: Handshake::new(),
            keypairs: Keypairs::default(),
            staged: VecDeque::new(),
            timers: Timers::default(),
            stats: Counters::default(),
            config,
        };
        peer.timers.kick = peer.config.keepalive_interval().is_some();
        self.by_key.insert(peer.config.public_key.to_bytes(), slot);
        let prefixes = peer.config.allowed_ips.clone();
        self.core.arm(peer.next_deadline(self.core.now_hint));
        if let Some(entry) = self.peers.get_mut(slot as usize) {
            *entry = Some(peer);
        }
        self.set_allowed_ips(slot, &prefixes);
        Ok(id)
    }

    /// Re-applies a peer's configuration. With an unchanged public key the
    /// sessions, handshake state, staged packets and statistics are kept (no
    /// new handshake is caused); the endpoint is only replaced if the
    /// configured endpoint changed (so a roamed endpoint survives a re-apply).
    /// A different public key makes it a new identity: all state is reset.
    pub fn update_peer(&mut self, id: PeerId, config: PeerConfig) -> Result<(), DeviceError> {
        let old_key = self
            .peer(id)
            .ok_or(DeviceError::UnknownPeer)?
            .config
            .public_key;
        let slot = id.slot;
        if old_key != config.public_key {
            let mut keys = self.validate_key(&config.public_key, Some(slot))?;
            keys.set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
            let now_hint = self.core.now_hint;
            let new_key = config.public_key.to_bytes();
            let peer = self.peer_mut(id).ok_or(DeviceError::UnknownPeer)?;
            let mut released: Vec<u32> = peer.keypairs.clear();
            released.extend(peer.handshake.local_index.take());
            peer.handshake = Handshake::new();
            peer.keys = keys;
            peer.cookie = CookieGenerator::new(config.public_key.as_bytes());
            peer.staged.clear();
            peer.timers = Timers::default();
            peer.stats = Counters::default();
            peer.endpoint = config.endpoint;
            peer.timers.kick = config.keepalive_interval().is_some();
            peer.config = config;
            let deadline = peer.next_deadline(now_hint);
            let prefixes = peer.config.allowed_ips.clone();
            for idx in released {
                self.core.release_index(idx);
            }
            self.core.transmits.retain(|t| t.slot != slot);
            self.by_key.remove(old_key.as_bytes());
            self.by_key.insert(new_key, slot);
            self.core.arm(deadline);
            self.set_allowed_ips(slot, &prefixes);
            return Ok(());
        }
        let now_hint = self.core.now_hint;
        let peer = self.peer_mut(id).ok_or(DeviceError::UnknownPeer)?;
        peer.keys
            .set_psk(config.preshared_key.as_ref().map(|p| p.as_bytes()));
        if config.endpoint != peer.config.endpoint && config.endpoint.is_some() {
            peer.endpoint = config.endpoint;
        }
        let old_ka = peer.config.keepalive_interval();
        let new_ka = config.keepalive_interval();
        if old_ka != new_ka {
            match new_ka {
                None => peer.timers.persistent_keepalive = None,
                Some(_) if old_ka.is_none() => peer.timers.kick = true,
                Some(secs) => {
                    peer.timers.persistent_keepalive =
                        Some(now_hint + Duration::from_secs(u64::from(secs)));
                }
            }
        }
        let prefixes_changed = peer.config.allowed_ips != config.allowed_ips;
        peer.config = config;
        let deadline = peer.next_deadline(now_hint);
        let prefixes = peer.config.allowed_ips.clone();
        self.core.arm(deadline);
        if prefixes_changed {
            self.set_allowed_ips(slot, &prefixes);
        }
        Ok(())
    }

    /// Removes a peer, zeroizing its keys and dropping its queued packets.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<PeerConfig, DeviceError> {
        self.peer(id).ok_or(DeviceError::UnknownPeer)?;
        let slot = id.slot;
        let Some(mut peer) = self.peers.get_mut(slot as usize).and_then(Option::take) else {
            return Err(DeviceError::UnknownPeer);
        };
        for idx in peer.keypairs.clear() {
            self.core.release_index(idx);
        }
        if let Some(idx) = peer.handshake.local_index.take() {
            self.core.release_index(idx);
        }
        self.core.transmits.retain(|t| t.slot != slot);
        self.by_key.remove(peer.config.public_key.as_bytes());
        self.allowed_ips.retain(|v| *v != slot);
        if let Some(g) = self.generations.get_mut(slot as usize) {
            *g = g.wrapping_add(1);
        }
        self.free_slots.push(slot);
        Ok(peer.config.clone())
    }

    /// Looks a peer up by public key.
    pub fn peer_by_public_key(&self, key: &PublicKey) -> Option<PeerId> {
        let slot = *self.by_key.get(key.as_bytes())?;
        self.peers
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|p| p.id)
    }

    /// All peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.iter().flatten().map(|p| p.id)
    }

    /// A peer's configuration as last applied.
    pub fn peer_config(&self, id: PeerId) -> Option<&PeerConfig> {
        self.peer(id).map(|p| &p.config)
    }

    /// The prefixes currently routed to a peer (a prefix re-assigned to
    /// another peer no longer shows here).
    pub fn allowed_ips_of(&self, id: PeerId) -> Vec<IpPrefix> {
        if self.peer(id).is_none() {
            return Vec::new();
        }
        self.allowed_ips
            .entries()
            .into_iter()
            .filter(|(_, s)| *s == id.slot)
            .map(|(p, _)| p)
            .collect()
    }

    /// The peer an inner destination address routes to.
    pub fn route(&self, addr: std::net::IpAddr) -> Option<PeerId> {
        let slot = self.allowed_ips.lookup(addr)?;
        self.peers
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|p| p.id)
    }

    /// Per-peer status.
    pub fn peer_stats(&self, id: PeerId) -> Option<PeerStats> {
        let p = self.peer(id)?;
        Some(PeerStats {
            public_key: p.config.public_key,
            endpoint: p.endpoint,
            rx_bytes: p.stats.rx_bytes,
            tx_bytes: p.stats.tx_bytes,
            last_handshake: p.stats.last_handshake,
            handshake_attempts: p.stats.handshake_attempts,
            handshakes_completed: p.stats.handshakes_completed,
            persistent_keepalive: p.config.keepalive_interval(),
            session_established: p
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(self.core.now_hint)),
            keypairs: p.keypairs.count(),
            staged_packets: p.staged.len(),
        })
    }
}
