//! Validation of what a health-gated rollout needs: `probes:` (top level
//! and per peer: addresses across the tunnel that must answer a ping) and
//! `rollout:` (the watcher's probation for a changed file). Called from
//! `validate.rs`, like `interface.rs`.

use std::net::IpAddr;

use super::raw::{RawManifest, RawProbe, RawRollout};
use super::validate::Ctx;
use serde::{Deserialize, Serialize};

use super::Peer;

/// At most this many probes in a manifest (each is a ping every second
/// while a change is on probation).
pub(crate) const MAX_PROBES: usize = 16;
const MIN_ROLLOUT_SECS: i128 = 5;
const MAX_ROLLOUT_SECS: i128 = 3600;
/// A rollout timeout below this is legal but warned about.
const SHORT_ROLLOUT_SECS: u64 = 15;

type Spanned<T> = serde_saphyr::Spanned<T>;

/// Every probe of the manifest: the top-level ones, then each peer's, in
/// document order. A probe's address must be inside the allowed IPs of
/// its peer (top level: of some peer), or it would not test the tunnel.
/// `None` when any is invalid (the errors are in `ctx`). `peers` are the
/// validated peers, `None` where a peer was invalid (its probes are then
/// only parsed).
pub(super) fn probes(
    ctx: &mut Ctx<'_>,
    raw: &RawManifest,
    peers: &[Option<Peer>],
) -> Option<Vec<Probe>> {
    let mut out = Vec::new();
    let mut ok = true;
    let all_known = peers.iter().all(Option::is_some);
    if let Some(list) = &raw.probes {
        for (i, p) in list.value.iter().enumerate() {
            let path = format!("probes[{i}].ping");
            let covering = |a: IpAddr| {
                peers
                    .iter()
                    .flatten()
                    .any(|peer| peer.allowed_ips.iter().any(|n| n.contains(&a)))
            };
            match probe(ctx, p, path, all_known, "any peer", covering) {
                Some(ping) => out.push(Probe { ping, peer: None }),
                None => ok = false,
            }
        }
    }
    if let Some(raw_peers) = &raw.peers {
        for (j, rp) in raw_peers.value.iter().enumerate() {
            let Some(list) = &rp.value.probes else {
                continue;
            };
            let peer = peers.get(j).and_then(Option::as_ref);
            for (i, p) in list.value.iter().enumerate() {
                let path = format!("peers[{j}].probes[{i}].ping");
                let covering = |a: IpAddr| {
                    peer.is_some_and(|peer| peer.allowed_ips.iter().any(|n| n.contains(&a)))
                };
                let whose = format!("peer {}", rp.value.name.value);
                match probe(ctx, p, path, peer.is_some(), &whose, covering) {
                    Some(ping) => out.push(Probe {
                        ping,
                        peer: peer.map(|p| p.name.clone()),
                    }),
                    None => ok = false,
                }
            }
        }
    }
    if ok && out.len() > MAX_PROBES {
        let at = raw
            .probes
            .as_ref()
            .map(|p| p.referenced)
            .unwrap_or(raw.name.referenced);
        ctx.error(
            at,
            "probes",
            format!(
                "{} probes (with the peers' own); at most {MAX_PROBES}",
                out.len()
            ),
        );
        return None;
    }
    ok.then_some(out)
}

/// One probe's address; `judge` is false when the peers it must be
/// inside are not all valid (then only its syntax is checked).
fn probe(
    ctx: &mut Ctx<'_>,
    p: &Spanned<RawProbe>,
    path: String,
    judge: bool,
    whose: &str,
    covered: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let s = &p.value.ping;
    let addr: IpAddr = ctx.check(
        s,
        || path.clone(),
        |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
        },
    )?;
    if judge && !covered(addr) {
        ctx.error(
            s.referenced,
            path,
            format!(
                "{addr} is not inside the allowed_ips of {whose}; a probe must cross the tunnel"
            ),
        );
        return None;
    }
    Some(addr)
}

/// The `rollout:` section; `Some(None)` when absent.
pub(super) fn rollout(
    ctx: &mut Ctx<'_>,
    raw: &Option<Spanned<RawRollout>>,
) -> Option<Option<Rollout>> {
    let Some(r) = raw else {
        return Some(None);
    };
    let confirm = ctx.check(
        &r.value.confirm,
        || "rollout.confirm".to_owned(),
        |s| {
            if s == "healthy" {
                Ok(())
            } else {
                Err(format!("{s:?} is not a confirmation; expected `healthy`"))
            }
        },
    );
    let timeout = ctx.check(
        &r.value.timeout,
        || "rollout.timeout".to_owned(),
        |t| {
            let t = t.get()?;
            if (MIN_ROLLOUT_SECS..=MAX_ROLLOUT_SECS).contains(&t) {
                u64::try_from(t).map_err(|_| "out of range".to_owned())
            } else {
                Err(format!(
                    "{t} is out of range ({MIN_ROLLOUT_SECS}..={MAX_ROLLOUT_SECS} seconds)"
                ))
            }
        },
    );
    if let Some(t) = timeout
        && t < SHORT_ROLLOUT_SECS
    {
        ctx.warn(
            r.value.timeout.referenced,
            "rollout.timeout",
            format!(
                "{t} s may revert a good change: a peer's handshake can be held back 5 s by the protocol's rate limit, and the far end may change later (at least {SHORT_ROLLOUT_SECS} s; see docs/fleet.md, \"Choosing the timeout\")"
            ),
        );
    }
    Some(Some(Rollout {
        timeout_secs: timeout.filter(|_| confirm.is_some())?,
    }))
}

/// A check across the tunnel: `ping` must answer an ICMP echo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub ping: std::net::IpAddr,
    /// The peer whose `probes:` it is in (`None`: the top level).
    pub peer: Option<String>,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ping {}", self.ping)?;
        if let Some(p) = &self.peer {
            write!(f, " (peer {p})")?;
        }
        Ok(())
    }
}

/// The `rollout:` section: a changed file is applied on probation and
/// reverted unless the deployment is healthy within `timeout_secs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub timeout_secs: u64,
}
