//! `netman status` as text: what the state file and the running engine
//! say about a deployment, formatted for people (the JSON form is the
//! engine's status as it is). Pure: time is a parameter.

use std::fmt::Write as _;

use crate::engine::control::EngineStatus;
use crate::state::DeploymentState;

/// `netman status --output json`: per deployment, the manifest in force
/// (path and hash, never its text), when it was applied, and the engine's
/// status as it is.
pub fn json(all: &[(String, Option<DeploymentState>, Option<EngineStatus>)]) -> serde_json::Value {
    all.iter()
        .map(|(n, st, engine)| {
            serde_json::json!({
                "deployment": n,
                "manifest": st.as_ref().and_then(|s| s.manifest.as_ref()).map(|m| serde_json::json!({
                    "path": m.path,
                    "sha256": m.sha256,
                })),
                "applied_at": st.as_ref().and_then(|s| s.applied_at),
                "site": st.as_ref().and_then(|s| s.manifest.as_ref()).and_then(|m| m.derived_from.as_ref()).map(|d| serde_json::json!({
                    "network": d.network,
                    "site": d.site,
                    "network_sha256": d.sha256,
                })),
                "pending_confirm": st.as_ref().and_then(|s| s.pending_confirm.as_ref()).map(|p| serde_json::json!({
                    "deadline_ms": p.deadline_ms,
                    "by_health": p.health.is_some(),
                })),
                "reverted": st.as_ref().and_then(|s| s.reverted_sha256.as_ref()).map(|sha| serde_json::json!({
                    "sha256": sha,
                    "reason": st.as_ref().and_then(|s| s.reverted_reason.clone()),
                })),
                "engine": engine,
            })
        })
        .collect()
}

/// How long ago `t` was, at `now` (Unix seconds).
pub fn ago(now: u64, t: u64) -> String {
    let d = now.saturating_sub(t);
    match d {
        0 => "just now".to_string(),
        1..=119 => format!("{d} seconds ago"),
        120..=7199 => format!("{} minutes, {} seconds ago", d / 60, d % 60),
        _ => format!("{} hours, {} minutes ago", d / 3600, (d % 3600) / 60),
    }
}

/// A byte count in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The text form of one deployment's status.
pub fn text(
    name: &str,
    st: Option<&DeploymentState>,
    engine: Option<&EngineStatus>,
    now: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "deployment: {name}");
    if let Some(m) = st.and_then(|s| s.manifest.as_ref()) {
        let _ = writeln!(
            out,
            "  manifest: {} (sha256 {})",
            m.path.display(),
            &m.sha256[..m.sha256.len().min(12)]
        );
    }
    if let Some(d) = st
        .and_then(|s| s.manifest.as_ref())
        .and_then(|m| m.derived_from.as_ref())
    {
        let _ = writeln!(out, "  site: {} of network {}", d.site, d.network);
    }
    if let Some(t) = st.and_then(|s| s.applied_at) {
        let _ = writeln!(out, "  applied: {}", ago(now, t));
    }
    if let Some(p) = st.and_then(|s| s.pending_confirm.as_ref()) {
        let left = p
            .deadline_ms
            .saturating_sub(now.saturating_mul(1000))
            .div_ceil(1000);
        let by = if p.health.is_some() {
            "health or `netman confirm`"
        } else {
            "`netman confirm`"
        };
        let _ = writeln!(
            out,
            "  on probation: reverted in {left} s unless confirmed by {by}"
        );
    }
    if let Some(s) = st.filter(|s| s.reverted_sha256.is_some()) {
        let _ = writeln!(
            out,
            "  last revert: {} (that file version is not applied again until the file changes)",
            s.reverted_reason
                .as_deref()
                .unwrap_or("no confirmation before the deadline")
        );
    }
    let Some(e) = engine else {
        let _ = writeln!(out, "  engine: not running");
        return out;
    };
    let _ = writeln!(
        out,
        "  engine: running (pid {}, started {})",
        e.pid,
        ago(now, e.started_at)
    );
    if let Some(w) = &e.watch {
        // What the watcher could not do, as in `watch` of the JSON form.
        let mut lines = |title: &str, text: &Option<String>| {
            if let Some(t) = text {
                let _ = writeln!(out, "  {title}:");
                for l in t.lines() {
                    let _ = writeln!(out, "    {l}");
                }
            }
        };
        lines(
            "manifest error (not applied; the running configuration stays)",
            &w.manifest_error,
        );
        lines("last error", &w.last_error);
        if !w.probation.is_empty() {
            let _ = writeln!(out, "  probation waits for:");
            for l in &w.probation {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    let _ = writeln!(out, "interface: {}", e.interface);
    let _ = writeln!(out, "  public key: {}", e.public_key);
    let _ = writeln!(out, "  private key: (hidden)");
    let _ = writeln!(out, "  listening port: {}", e.listen_port);
    for p in &e.peers {
        let _ = writeln!(out);
        let _ = writeln!(out, "peer: {} ({})", p.name, p.public_key);
        if p.preshared_key {
            let _ = writeln!(out, "  preshared key: (hidden)");
        }
        match (p.endpoint, &p.endpoint_name) {
            (Some(ep), Some(name)) => {
                let _ = writeln!(out, "  endpoint: {ep} ({name})");
            }
            (Some(ep), None) => {
                let _ = writeln!(out, "  endpoint: {ep}");
            }
            (None, Some(name)) => {
                let _ = writeln!(out, "  endpoint: (none) ({name})");
            }
            (None, None) => {}
        }
        if let Some(err) = &p.endpoint_error {
            let _ = writeln!(
                out,
                "  endpoint error: {err} (the last good address stays in use)"
            );
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  allowed ips: {}",
            if ips.is_empty() {
                "(none)".to_string()
            } else {
                ips.join(", ")
            }
        );
        match p.latest_handshake {
            Some(t) => {
                let _ = writeln!(out, "  latest handshake: {}", ago(now, t));
            }
            None => {
                let _ = writeln!(out, "  latest handshake: (none)");
            }
        }
        let _ = writeln!(
            out,
            "  transfer: {} received, {} sent",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "  persistent keepalive: every {k} seconds");
        }
    }
    // Every reason is listed, zeros included; show the ones that happened.
    let d: Vec<String> = e
        .drops
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !d.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "dropped: {}", d.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_people_say_them() {
        assert_eq!(ago(100, 100), "just now");
        assert_eq!(ago(100, 10), "90 seconds ago");
        assert_eq!(ago(1000, 10), "16 minutes, 30 seconds ago");
        assert_eq!(ago(10_000, 10), "2 hours, 46 minutes ago");
        assert_eq!(ago(10, 100), "just now", "a time in the future");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(5 << 30), "5.00 GiB");
    }

    #[test]
    fn a_deployment_without_engine_says_so() {
        let t = text("site-a", None, None, 0);
        assert_eq!(t, "deployment: site-a\n  engine: not running\n");
    }
}
