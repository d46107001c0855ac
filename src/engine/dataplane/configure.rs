//! Reconfiguring a running data plane in place (the control socket's
//! `configure`, and re-attaching to a re-created TUN device): everything
//! that can fail comes first, so a change takes effect whole or not at
//! all. Only for the real packet I/O: it opens TUN queues and binds
//! sockets.

use std::collections::BTreeMap;

use netman_proto::PeerId;

use super::{DataPlane, EngineError, attach_tun, bind, new_device, peer_config, set_mark};
use crate::engine::config::{EngineChange, EngineConfig, LoadedKeys, diff_configs};
use crate::engine::handshake::Identity;

impl DataPlane {
    /// Reach `new` in place; with `dry_run`, only report the changes.
    /// Either every change takes effect or none does: everything that can
    /// fail (the keys, the new peer set, a new TUN queue, socket or
    /// protocol device, adding the new peers) comes before the first change
    /// to what is running, and a failure undoes what it had done.
    pub(super) fn configure(
        &mut self,
        new: EngineConfig,
        dry_run: bool,
    ) -> Result<Vec<EngineChange>, EngineError> {
        let new_keys = new.load_keys()?;
        check_peers(&new, &new_keys)?;
        let changes = diff_configs(&self.config, &self.keys, &new, &new_keys);
        // The device was deleted and re-created (by the watcher, after
        // someone deleted it): attach to the new one.
        let current_index = if_index(&new.interface);
        let reattach = new.interface != self.config.interface
            || self.tun_dead
            || current_index.is_some_and(|i| i != self.tun_index);
        if !dry_run && changes.is_empty() && reattach {
            let t = attach_tun(&new.interface)?;
            self.tun_index = t.if_index().unwrap_or(0);
            self.tun = t;
            self.tun_dead = false;
            tracing::info!(interface = %new.interface, "re-attached to the TUN device");
        }
        if dry_run || changes.is_empty() {
            // Nothing to do (peers may be listed in another order: the
            // running configuration, its ids and keys stay as they are).
            return Ok(changes);
        }
        // Acquire every new resource first, so a failure changes nothing.
        let new_tun = if reattach {
            Some(attach_tun(&new.interface)?)
        } else {
            None
        };
        let new_udp = if new.listen_port != self.config.listen_port {
            Some(bind(new.listen_port)?)
        } else {
            None
        };
        match (&new_udp, new.fwmark) {
            (Some(u), Some(mark)) => set_mark(u, mark)?,
            (None, mark) if mark != self.config.fwmark => {
                set_mark(&self.udp, mark.unwrap_or(0))?;
            }
            _ => {}
        }
        let rekey = self.keys.private != new_keys.private;
        let (device, ids) = if rekey {
            // A new identity: a new protocol device with every peer, built
            // aside.
            let mut d = new_device(&new_keys, new.mtu)?;
            let mut ids = Vec::with_capacity(new.peers.len());
            for (i, p) in new.peers.iter().enumerate() {
                ids.push(d.add_peer(peer_config(p, &new_keys, i)).map_err(|e| {
                    EngineError::Peer {
                        peer: p.name.clone(),
                        reason: e.to_string(),
                    }
                })?);
            }
            (Some(d), ids)
        } else {
            // The last fallible step; nothing fails after it.
            let ids = self.reconfigure_peers(&new, &new_keys)?;
            self.device.set_mtu(Some(new.mtu as usize));
            (None, ids)
        };
        if let Some(d) = device {
            self.device = d;
        }
        if let Some(t) = new_tun {
            self.tun_index = t.if_index().unwrap_or(0);
            self.tun = t;
            self.tun_dead = false;
        }
        let new_identity = rekey || new_udp.is_some();
        if let Some(u) = new_udp {
            self.udp = u;
        }
        if new_identity {
            match Identity::new(&new_keys.private, &self.udp) {
                Ok(id) => self.handshakes.replace(id),
                Err(e) => tracing::warn!(error = %e, "handshake worker keeps its old identity"),
            }
        }
        self.ids = ids;
        self.keys = new_keys;
        self.config = new;
        for c in &changes {
            tracing::info!(change = %c, "engine reconfigured");
        }
        Ok(changes)
    }

    /// Bring the running protocol device's peers to `new` (same private
    /// key) and return their ids, parallel to `new.peers`. A kept peer
    /// (same public key) keeps its sessions. Only adding a peer can fail,
    /// so new peers are added first, without allowed IPs (they take no
    /// prefix from anyone yet), and removed again when one is refused:
    /// then nothing has changed. After that nothing fails: gone peers are
    /// removed, then every peer gets its configuration.
    fn reconfigure_peers(
        &mut self,
        new: &EngineConfig,
        new_keys: &LoadedKeys,
    ) -> Result<Vec<PeerId>, EngineError> {
        let running = |pk: &netman_proto::PublicKey| {
            self.keys
                .peers
                .iter()
                .position(|(k, _)| k == pk)
                .and_then(|j| self.ids.get(j).copied())
                .filter(|id| self.device.peer_config(*id).is_some())
        };
        let kept: Vec<Option<PeerId>> = new_keys.peers.iter().map(|(pk, _)| running(pk)).collect();
        let mut ids = Vec::with_capacity(new.peers.len());
        let mut added = Vec::new();
        for (i, p) in new.peers.iter().enumerate() {
            if let Some(Some(id)) = kept.get(i) {
                ids.push(*id);
                continue;
            }
            let mut pc = peer_config(p, new_keys, i);
            pc.allowed_ips.clear();
            match self.device.add_peer(pc) {
                Ok(id) => {
                    ids.push(id);
                    added.push(id);
                }
                Err(e) => {
                    for id in added {
                        let _ = self.device.remove_peer(id);
                    }
                    return Err(EngineError::Peer {
                        peer: p.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        for id in &self.ids {
            if !kept.contains(&Some(*id)) {
                let _ = self.device.remove_peer(*id);
            }
        }
        for (i, (p, id)) in new.peers.iter().zip(&ids).enumerate() {
            // Same public key, a live id: cannot fail.
            if let Err(e) = self.device.update_peer(*id, peer_config(p, new_keys, i)) {
                tracing::error!(peer = %p.name, error = %e, "could not update a peer");
            }
        }
        Ok(ids)
    }
}

/// Refuse a peer set the protocol core would refuse, before anything
/// changes: a low-order public key (the manifest's validation refuses it
/// too), the interface's own public key, or one key twice.
fn check_peers(new: &EngineConfig, keys: &LoadedKeys) -> Result<(), EngineError> {
    let own = keys.private.public_key();
    let mut seen: BTreeMap<netman_proto::PublicKey, &str> = BTreeMap::new();
    for (p, (pk, _)) in new.peers.iter().zip(&keys.peers) {
        let reason = if pk.is_low_order() {
            Some(
                "its public key is a low-order point (no key exchange with it can succeed)"
                    .to_string(),
            )
        } else if *pk == own {
            Some("its public key is this interface's own public key".to_string())
        } else {
            seen.insert(*pk, p.name.as_str())
                .map(|first| format!("its public key is also peer {first}'s"))
        };
        if let Some(reason) = reason {
            return Err(EngineError::Peer {
                peer: p.name.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// The interface index of `name`, if it exists.
fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
