//! A change on probation (`apply --confirm-when healthy`, `rollout:
//! {confirm: healthy}`): while the pending confirmation of the state file
//! carries a [`HealthGate`], the watcher asks the engine for handshakes with
//! the peers to hear from, runs the probes, and confirms by itself once
//! [`health::unmet`] is empty. The revert at the deadline is the watcher's
//! ordinary one; what was still unmet is its reason.
//!
//! A probe is one `ping -c 1 -W 1 -n ADDR` at a time (iputils' ping, as
//! root), started again while it has not answered; children are killed
//! and reaped when the probation ends.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::health;
use crate::manifest::Probe;
use crate::state::HealthGate;

/// How often the watcher looks at a change on probation.
pub const TICK: Duration = Duration::from_millis(300);
/// How often handshakes are asked for again while a peer is unheard. The
/// protocol core lets one initiation out per REKEY_TIMEOUT (5 s) and drops
/// the others; asking every second sends the next one as soon as it may
/// (a handshake just before the change holds it back up to 5 s).
const REHANDSHAKE_EVERY: Duration = Duration::from_secs(1);

pub struct Probation {
    /// The gate (identified by `since_ms`) this probation is for.
    pub gate: HealthGate,
    answered: Vec<bool>,
    running: Vec<Option<Child>>,
    /// When handshakes were last asked for.
    kicked: Option<Instant>,
    /// What is still unmet, as of the last check.
    pub unmet: Vec<health::Unmet>,
}

/// What one look at the probation found.
pub enum Look {
    /// Every peer heard from again and every probe answered.
    Healthy,
    /// Still waiting; ask these peers for a handshake now (may be empty).
    Waiting { rehandshake: Vec<String> },
}

impl Probation {
    pub fn new(gate: HealthGate) -> Self {
        let n = gate.probes.len();
        Probation {
            gate,
            answered: vec![false; n],
            running: (0..n).map(|_| None).collect(),
            kicked: None,
            unmet: Vec::new(),
        }
    }

    /// Look again, given the engine's peers now (`None`: no answer).
    pub fn look(
        &mut self,
        peers: Option<&[crate::engine::control::PeerStatus]>,
        now: Instant,
    ) -> Look {
        self.poll_probes();
        let peers = peers.unwrap_or_default();
        self.unmet = health::unmet(&self.gate, peers, &self.answered);
        if self.unmet.is_empty() {
            return Look::Healthy;
        }
        let due = self
            .kicked
            .is_none_or(|t| now.saturating_duration_since(t) >= REHANDSHAKE_EVERY);
        let rehandshake = if due {
            self.kicked = Some(now);
            self.unmet
                .iter()
                .filter_map(|u| match u {
                    health::Unmet::Peer { name, .. } => Some(name.clone()),
                    health::Unmet::Probe(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Look::Waiting { rehandshake }
    }

    /// Collect finished probes; start again those that failed, and those
    /// not started yet.
    fn poll_probes(&mut self) {
        for (i, probe) in self.gate.probes.iter().enumerate() {
            if self.answered.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Some(slot) = self.running.get_mut(i) else {
                continue;
            };
            if let Some(child) = slot {
                match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        *slot = None;
                        if status.success() {
                            if let Some(a) = self.answered.get_mut(i) {
                                *a = true;
                            }
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(probe = %probe, error = %e, "cannot wait for the probe");
                        *slot = None;
                    }
                }
            }
            match ping(probe) {
                Ok(child) => *slot = Some(child),
                Err(e) => {
                    tracing::warn!(probe = %probe, error = %e, "cannot run the probe (is iputils-ping installed?)");
                }
            }
        }
    }
}

impl Drop for Probation {
    fn drop(&mut self) {
        for mut child in self.running.drain(..).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ping(probe: &Probe) -> std::io::Result<Child> {
    Command::new("ping")
        .args(["-c", "1", "-W", "1", "-n"])
        .arg(probe.ping.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}
