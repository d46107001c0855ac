//! A handshake flood must not starve established sessions (issue 11, item
//! 6): two netman sites with a tunnel up, a third namespace on the victim's
//! underlay flooding its listen port as fast as one Python process can
//! (`examples/flood.py`: initiations with a valid mac1 for the victim's
//! public key mixed with garbage of every length), and a ping every 10 ms
//! through the tunnel meanwhile. Root required, as in CI; every namespace
//! and process is removed on drop, and the flood is bounded in time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Bg, NetNs, Site, require_tool, run, underlay, veth, wait_ping, wait_until};

const WG_PORT: u16 = 51820;
/// The longest the flooder may send; it is stopped (SIGINT) as soon as the
/// ping is done, so the ping runs inside the flood however slow the machine.
const FLOOD_MAX_SECS: u32 = 60;
/// Pings every 10 ms during the flood.
const PINGS: u32 = 400;
/// Average RTT bound through the tunnel during the flood. The target in
/// docs/performance.md is 1 ms; this test runs a debug build on a 2-core machine that
/// may be busy. The old design (all handshake work on the data-plane
/// thread) averaged 88 ms under a ~150 k datagrams/s flood (issue 11) and
/// still 6.6-12 ms on a machine so busy that the flooder managed only
/// ~20 k/s; the current one 1.8-3.8 ms on that busy machine.
const MAX_AVG_RTT_MS: f64 = 10.0;
/// Engine memory may not grow by more than this during the flood.
const MAX_RSS_GROWTH_KB: u64 = 4 * 1024;

fn manifest(
    name: &str,
    addr: &str,
    key_file: &Path,
    peer: &str,
    peer_key: &str,
    ep: &str,
) -> String {
    format!(
        "name: {name}\ninterface:\n  name: nm0\n  addresses: [{addr}/24]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers:\n  - name: {peer}\n    public_key: \"{peer_key}\"\n    endpoint: {ep}:{WG_PORT}\n    allowed_ips: [{}/32]\n",
        key_file.display(),
        if addr.ends_with(".1") {
            "10.10.0.2"
        } else {
            "10.10.0.1"
        },
    )
}

fn status(site: &Site) -> serde_json::Value {
    let out = site
        .nm()
        .ok(&["status", &site.deployment, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"));
    let engine = v[0]["engine"].clone();
    assert!(engine.is_object(), "the engine is not running: {out}");
    engine
}

fn drops(engine: &serde_json::Value) -> u64 {
    engine["drops"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
}

fn drop_count(engine: &serde_json::Value, reason: &str) -> u64 {
    engine["drops"][reason].as_u64().unwrap_or(0)
}

fn rss_kb(pid: u64) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Packets received on a link (`ip -s -j link show`).
fn rx_packets(ns: &NetNs, ifname: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
}

/// `(loss %, average RTT ms)` from iputils ping's summary.
fn ping_summary(out: &str) -> (f64, f64) {
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| l.split(',').find(|p| p.contains("packet loss")))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(100.0);
    let avg = out
        .lines()
        .find(|l| l.starts_with("rtt "))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::INFINITY);
    (loss, avg)
}

#[test]
fn a_handshake_flood_does_not_starve_the_tunnel() {
    require_tool("python3", "the Debian package python3");
    require_tool("ping", "the Debian package iputils-ping");
    let a = Site::new("fla", "site-a");
    let b = Site::new("flb", "site-b");
    let f = NetNs::new("flf");
    underlay(&a.ns, &b.ns);
    veth(
        &f,
        "ul0",
        Some("198.51.100.2/24"),
        &b.ns,
        "ul1",
        Some("198.51.100.1/24"),
    );
    let ma = a.dir.write(
        "site-a.yaml",
        &manifest(
            "site-a",
            "10.10.0.1",
            &a.key.private_file,
            "site-b",
            &b.key.public,
            "192.0.2.2",
        ),
    );
    let mb = b.dir.write(
        "site-b.yaml",
        &manifest(
            "site-b",
            "10.10.0.2",
            &b.key.private_file,
            "site-a",
            &a.key.public,
            "192.0.2.1",
        ),
    );
    a.nm().ok(&["apply", &ma.display().to_string()]);
    b.nm().ok(&["apply", &mb.display().to_string()]);
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(20)),
        "the tunnel did not come up"
    );

    let before = status(&b);
    let pid = before["pid"].as_u64().expect("engine pid");
    let rss_before = rss_kb(pid);
    let drops_before = drops(&before);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flood.py");
    let mut flooder = Bg::spawn(
        "flood.py",
        f.cmd("python3").args([
            script,
            "--target",
            &format!("198.51.100.1:{WG_PORT}"),
            "--public-key",
            &b.key.public,
            "--seconds",
            &FLOOD_MAX_SECS.to_string(),
        ]),
    );
    // The flood is on the wire once the victim's link counts it.
    let rx0 = rx_packets(&b.ns, "ul1");
    assert!(
        wait_until(Duration::from_secs(10), || rx_packets(&b.ns, "ul1")
            > rx0 + 20_000),
        "the flood did not start"
    );
    let ping = run(a.ns.cmd("timeout").args([
        "30",
        "ping",
        "-n",
        "-q",
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        "10.10.0.2",
    ]));
    let ping_out = format!(
        "{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    let flood_still_running = flooder.try_status().is_none();
    let rss_during = rss_kb(pid);
    // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs
    // python3 in place), not yet reaped.
    unsafe { libc::kill(flooder.pid() as libc::pid_t, libc::SIGINT) };
    let flood = flooder.finish(Duration::from_secs(30));
    let flood_out = String::from_utf8_lossy(&flood.stdout).into_owned();
    assert!(
        flood.status.success(),
        "flood.py failed: {flood_out}{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(flood_out.trim())
        .unwrap_or_else(|e| panic!("flood.py report: {e}: {flood_out}"));
    let after = status(&b);
    let rss_after = rss_kb(pid);
    let (loss, avg) = ping_summary(&ping_out);
    let sent = report["sent"]["initiations"].as_u64().unwrap_or(0) * 2;
    let absorbed = drops(&after) - drops_before;
    let summary = format!(
        "ping: {}\nflood: {flood_out}\nvictim drops: {}\nRSS kB before {rss_before}, during {rss_during}, after {rss_after}",
        ping_out.trim(),
        after["drops"]
    );
    eprintln!("{summary}");

    assert!(
        flood_still_running,
        "the ping did not run inside the flood\n{summary}"
    );
    assert_eq!(
        loss, 0.0,
        "ping loss through the tunnel during the flood\n{summary}"
    );
    assert!(
        avg <= MAX_AVG_RTT_MS,
        "average RTT {avg} ms during the flood (bound {MAX_AVG_RTT_MS} ms)\n{summary}"
    );
    // The flood really reached the victim and was counted, by reason.
    assert!(
        sent > 100_000,
        "the flood was too weak to mean anything\n{summary}"
    );
    assert!(
        absorbed >= sent / 10,
        "only {absorbed} of {sent} flood datagrams show in the drop counters\n{summary}"
    );
    assert!(drop_count(&after, "cookie_required") > 0, "{summary}");
    assert!(
        drop_count(&after, "malformed") + drop_count(&after, "unknown_message_type") > 0,
        "{summary}"
    );
    // Answers: cookie replies only, none larger than what they answer.
    let got = &report["received"];
    assert!(got["cookie_replies"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(got["larger_than_answered"].as_u64(), Some(0), "{summary}");
    assert_eq!(got["unexpected_replies"].as_u64(), Some(0), "{summary}");
    assert!(
        got["max_reply_len"].as_u64().unwrap_or(999) <= 64,
        "{summary}"
    );
    // No memory growth beyond a few MB.
    let peak = rss_during.max(rss_after);
    assert!(
        peak <= rss_before + MAX_RSS_GROWTH_KB,
        "engine RSS grew from {rss_before} kB to {peak} kB\n{summary}"
    );
    // And the tunnel still works afterwards.
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(10)),
        "{summary}"
    );
}
