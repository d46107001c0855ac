//! Confirmation by health (issue 14): what a change on probation must show
//! to be kept by itself, and whether it shows it. Pure: the engine status
//! and the probe results come in as parameters; `watch` runs the probes
//! and asks the engine, `deploy` and the binary build the gate.
//!
//! A change is healthy when every peer that had a handshake in the
//! [`RECENT_HANDSHAKE_SECS`] before it (and is still configured after it)
//! has completed a handshake since, and every probe of the new manifest
//! has answered since. A peer given a new key counts as heard from only
//! with a handshake under the new key: a wrong key never handshakes, so
//! the change is reverted when its timeout expires.

use crate::engine::control::PeerStatus;
use crate::manifest::Manifest;
use crate::state::{GatePeer, HealthGate, RECENT_HANDSHAKE_SECS};

/// The gate of a change to `m` made at `now_ms`, given the engine's peers
/// just before it (`None`: no engine ran, so no peer to hear from again).
pub fn gate(m: &Manifest, before: Option<&[PeerStatus]>, now_ms: u64) -> HealthGate {
    let now_secs = now_ms / 1000;
    let peers = before
        .map(|before| {
            before
                .iter()
                .filter(|p| {
                    p.latest_handshake
                        .is_some_and(|t| now_secs.saturating_sub(t) <= RECENT_HANDSHAKE_SECS)
                })
                .filter(|p| m.peers.iter().any(|q| q.name == p.name))
                .map(|p| GatePeer {
                    name: p.name.clone(),
                    public_key: p.public_key,
                    handshakes: p.handshakes,
                })
                .collect()
        })
        .unwrap_or_default();
    HealthGate {
        since_ms: now_ms,
        peers,
        probes: m.probes.clone(),
    }
}

/// Whether `p` (a peer now) has handshaken since the change, `g` being the
/// same peer before it.
fn heard_again(g: &GatePeer, p: &PeerStatus, since_ms: u64) -> bool {
    // A second that starts after the change (the time is in whole
    // seconds): a handshake just before the change, in its second, does
    // not count.
    let later = p
        .latest_handshake
        .is_some_and(|t| t.saturating_mul(1000) > since_ms);
    if p.public_key == g.public_key {
        // The counter survives a reconfigure; a restarted engine's does not.
        p.handshakes > g.handshakes || later
    } else {
        // A new key is a new peer: its counter started at the change.
        p.handshakes >= 1
            && p.latest_handshake
                .is_some_and(|t| t.saturating_add(1).saturating_mul(1000) > since_ms)
    }
}

/// Something a change on probation still waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// A peer to hear from again (with its new key, if the change gave it one).
    Peer {
        name: String,
        new_key: Option<crate::manifest::PublicKey>,
    },
    /// A probe that has not answered since the change.
    Probe(crate::manifest::Probe),
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmet::Peer {
                name,
                new_key: Some(k),
            } => write!(
                f,
                "peer {name} (new public key {}) has not completed a handshake",
                k.to_base64()
            ),
            Unmet::Peer {
                name,
                new_key: None,
            } => write!(
                f,
                "peer {name} has not completed a handshake since the change"
            ),
            Unmet::Probe(p) => write!(f, "probe {p} has not answered"),
        }
    }
}

/// What the gate still waits for (empty: healthy), peers first, in the
/// gate's order. `peers` is the engine's status now; `probes_answered[i]`
/// whether probe `i` of the gate has answered since the change.
pub fn unmet(gate: &HealthGate, peers: &[PeerStatus], probes_answered: &[bool]) -> Vec<Unmet> {
    let mut out = Vec::new();
    for g in &gate.peers {
        match peers.iter().find(|p| p.name == g.name) {
            Some(p) if heard_again(g, p, gate.since_ms) => {}
            Some(p) => out.push(Unmet::Peer {
                name: g.name.clone(),
                new_key: (p.public_key != g.public_key).then_some(p.public_key),
            }),
            None => {}
        }
    }
    for (i, probe) in gate.probes.iter().enumerate() {
        if !probes_answered.get(i).copied().unwrap_or(false) {
            out.push(Unmet::Probe(probe.clone()));
        }
    }
    out
}

/// `unmet` as text, one line each.
pub fn lines(unmet: &[Unmet]) -> Vec<String> {
    unmet.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Probe, PublicKey};

    const K1: &str = "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=";
    const K2: &str = "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=";
    const K3: &str = "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_base64(s).expect("key")
    }

    fn peer(name: &str, k: &str, handshakes: u64, latest: Option<u64>) -> PeerStatus {
        let mut p = PeerStatus::example(name, key(k));
        p.handshakes = handshakes;
        p.latest_handshake = latest;
        p
    }

    fn gate_of(peers: Vec<GatePeer>, probes: usize) -> HealthGate {
        HealthGate {
            since_ms: 1_000_500,
            peers,
            probes: (0..probes)
                .map(|i| Probe {
                    ping: format!("10.0.0.{}", i + 1).parse().expect("ip"),
                    peer: None,
                })
                .collect(),
        }
    }

    fn gp(name: &str, k: &str, handshakes: u64) -> GatePeer {
        GatePeer {
            name: name.into(),
            public_key: key(k),
            handshakes,
        }
    }

    #[test]
    fn same_key_needs_a_new_handshake() {
        let g = gate_of(vec![gp("b", K2, 3)], 0);
        // Nothing new: the handshake before the change, in its second.
        let before = [peer("b", K2, 3, Some(1000))];
        assert_eq!(
            lines(&unmet(&g, &before, &[])),
            ["peer b has not completed a handshake since the change"]
        );
        assert!(unmet(&g, &[peer("b", K2, 4, Some(1000))], &[]).is_empty());
        // A restarted engine: counter reset, a handshake a second later.
        assert!(unmet(&g, &[peer("b", K2, 1, Some(1001))], &[]).is_empty());
    }

    #[test]
    fn a_new_key_must_handshake_under_it() {
        let g = gate_of(vec![gp("b", K2, 7)], 0);
        let wrong = [peer("b", K3, 0, None)];
        assert_eq!(
            lines(&unmet(&g, &wrong, &[])),
            [format!(
                "peer b (new public key {K3}) has not completed a handshake"
            )]
        );
        assert!(unmet(&g, &[peer("b", K3, 1, Some(1000))], &[]).is_empty());
    }

    #[test]
    fn probes_must_all_answer() {
        let g = gate_of(vec![], 2);
        assert_eq!(
            lines(&unmet(&g, &[], &[true, false])),
            ["probe ping 10.0.0.2 has not answered"]
        );
        assert_eq!(unmet(&g, &[], &[]).len(), 2);
        assert!(unmet(&g, &[], &[true, true]).is_empty());
    }

    #[test]
    fn gate_takes_recent_peers_still_configured() {
        let text = format!(
            "name: a
interface:
  name: nm0
  addresses: [10.0.0.1/24]
  private_key_file: /k
peers:
  - name: b
    public_key: {K2}
    allowed_ips: [10.0.0.2/32]
  - name: c
    public_key: {K3}
    allowed_ips: [10.0.0.3/32]
probes:
  - ping: 10.0.0.2
"
        );
        let m = crate::manifest::parse(&text, std::path::Path::new("/a.yaml")).expect("valid");
        let before = vec![
            peer("b", K2, 2, Some(10_000 - 180)), // recent enough
            peer("c", K3, 1, Some(10_000 - 181)), // too old
            peer("gone", K1, 5, Some(10_000)),    // removed by the change
        ];
        let g = gate(&m, Some(&before), 10_000_000);
        assert_eq!(g.peers, [gp("b", K2, 2)]);
        assert_eq!(g.probes, m.probes);
        assert_eq!(g.since_ms, 10_000_000);
        assert!(gate(&m, None, 1).peers.is_empty());
    }
}
