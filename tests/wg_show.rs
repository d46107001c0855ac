//! `wg show` on netman interfaces: the engine serves WireGuard's userspace
//! API socket (`/var/run/wireguard/<ifname>.sock`) read-only. Two netman
//! sites in network namespaces (root required, as in CI) carry traffic;
//! then `wg show`, `wg show all dump` and `wg showconf` (wireguard-tools)
//! must give what `netman status --output json` gives, field by field,
//! without any secret, and `wg set` must be refused with the state
//! unchanged. The interface names are unique: the socket directory is
//! shared by every network namespace of the host.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::{
    NetNs, Site, UAPI_DIR, UapiSocketGuard, netman_genkey, ping_ok, require_tool, run, underlay,
    unique, wait_ping, write_mode,
};

const WG_PORT: u16 = 51820;

/// A manifest for one site with one peer.
#[allow(clippy::too_many_arguments)]
fn manifest(
    name: &str,
    ifname: &str,
    address: &str,
    key_file: &Path,
    peer: &str,
    peer_key: &str,
    endpoint: &str,
    allowed_ips: &str,
    keepalive: Option<u16>,
    psk: &Path,
) -> String {
    let mut m = format!(
        "name: {name}\ninterface:\n  name: {ifname}\n  addresses: [{address}]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers:\n  - name: {peer}\n    public_key: \"{peer_key}\"\n    endpoint: {endpoint}\n    allowed_ips: [{allowed_ips}]\n    preshared_key_file: {}\n",
        key_file.display(),
        psk.display()
    );
    if let Some(k) = keepalive {
        m.push_str(&format!("    persistent_keepalive: {k}\n"));
    }
    m
}

/// `wg ARGS` run in `ns`: (success, stdout, stderr).
fn wg(ns: &NetNs, args: &[&str]) -> (bool, String, String) {
    let o = run(ns.cmd("wg").args(args));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn wg_ok(ns: &NetNs, args: &[&str]) -> String {
    let (ok, out, err) = wg(ns, args);
    assert!(ok, "wg {args:?} failed: {err}\n{out}");
    out
}

/// The `engine` object of `netman status NAME --output json`.
fn engine_status(site: &Site) -> serde_json::Value {
    let out = site
        .nm()
        .ok(&["status", &site.deployment, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"));
    assert!(v[0]["engine"].is_object(), "engine not running: {out}");
    v[0]["engine"].clone()
}

fn num(v: &serde_json::Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// One peer line of `wg show all dump`, split.
#[derive(Debug)]
struct DumpPeer {
    public_key: String,
    preshared_key: String,
    endpoint: String,
    allowed_ips: BTreeSet<String>,
    latest_handshake: u64,
    rx: u64,
    tx: u64,
    keepalive: String,
}

/// The lines of `wg show all dump` for `ifname`: the interface's fields
/// (private key, public key, listen port, fwmark) and its peers.
fn dump_of(dump: &str, ifname: &str) -> (Vec<String>, Vec<DumpPeer>) {
    let mut iface = None;
    let mut peers = Vec::new();
    for line in dump.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.first() != Some(&ifname) {
            continue;
        }
        match f.len() {
            5 => iface = Some(f[1..].iter().map(ToString::to_string).collect()),
            9 => peers.push(DumpPeer {
                public_key: f[1].into(),
                preshared_key: f[2].into(),
                endpoint: f[3].into(),
                allowed_ips: f[4].split(',').map(ToString::to_string).collect(),
                latest_handshake: f[5].parse().expect("latest handshake"),
                rx: f[6].parse().expect("rx"),
                tx: f[7].parse().expect("tx"),
                keepalive: f[8].into(),
            }),
            n => panic!("dump line of {n} fields: {line:?}"),
        }
    }
    (
        iface.unwrap_or_else(|| panic!("no interface line for {ifname} in:\n{dump}")),
        peers,
    )
}

/// Every form a 32-byte secret could be printed in: base64 and hex.
fn secret_forms(b64: &str) -> Vec<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("key is base64");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![b64.trim().to_string(), hex]
}

/// Compare one site's dump and its status, bracketing the counters that
/// move between status snapshots taken before and after the dump.
fn check_site(site: &Site, ifname: &str, peer_key: &str, endpoint: &str, keepalive: &str) {
    let before = engine_status(site);
    let dump = wg_ok(&site.ns, &["show", "all", "dump"]);
    let after = engine_status(site);
    let (iface, peers) = dump_of(&dump, ifname);
    // No private key crosses the socket, so wg knows no public key either.
    assert_eq!(
        iface,
        ["(none)", "(none)", &WG_PORT.to_string(), "off"],
        "{dump}"
    );
    assert_eq!(
        num(&after["listen_port"], "listen_port"),
        u64::from(WG_PORT)
    );
    assert_eq!(peers.len(), 1, "{dump}");
    let d = &peers[0];
    let (sb, sa) = (&before["peers"][0], &after["peers"][0]);
    assert_eq!(d.public_key, peer_key);
    assert_eq!(sa["public_key"], peer_key);
    // The preshared key is a secret: not sent, so wg shows none.
    assert_eq!(d.preshared_key, "(none)");
    assert_eq!(sa["preshared_key"], true);
    assert_eq!(d.endpoint, endpoint);
    assert_eq!(sa["endpoint"], endpoint);
    let status_ips: BTreeSet<String> = sa["allowed_ips"]
        .as_array()
        .expect("allowed_ips")
        .iter()
        .map(|v| v.as_str().expect("prefix").to_string())
        .collect();
    assert_eq!(d.allowed_ips, status_ips);
    let hs = |v: &serde_json::Value| num(&v["latest_handshake"], "latest_handshake");
    assert!(hs(sb) > 0, "no handshake yet: {sb}");
    assert!(
        (hs(sb)..=hs(sa)).contains(&d.latest_handshake),
        "latest handshake {} not within status {}..={}",
        d.latest_handshake,
        hs(sb),
        hs(sa)
    );
    for (got, key) in [(d.rx, "rx_bytes"), (d.tx, "tx_bytes")] {
        let (lo, hi) = (num(&sb[key], key), num(&sa[key], key));
        assert!(lo > 0, "no traffic counted in {key}");
        assert!(
            (lo..=hi).contains(&got),
            "{key}: wg says {got}, status {lo}..={hi}"
        );
    }
    assert_eq!(d.keepalive, keepalive);
    match &sa["persistent_keepalive"] {
        serde_json::Value::Null => assert_eq!(keepalive, "off"),
        v => assert_eq!(num(v, "persistent_keepalive").to_string(), keepalive),
    }
}

#[test]
fn wg_show_reads_the_live_state_and_wg_set_is_refused() {
    require_tool("wg", "the Debian package wireguard-tools");
    let (ia, ib) = (unique("wsa"), unique("wsb"));
    // Dropped after the sites (declared first): their engines die with
    // the namespaces, by SIGKILL, before they could remove the sockets.
    let _socks = (UapiSocketGuard::new(&ia), UapiSocketGuard::new(&ib));
    let a = Site::new("wsa", "site-a");
    let b = Site::new("wsb", "site-b");
    underlay(&a.ns, &b.ns);
    let psk = netman_genkey();
    let (psk_a, psk_b) = (a.dir.join("ab.psk"), b.dir.join("ab.psk"));
    write_mode(&psk_a, &format!("{psk}\n"), 0o600);
    write_mode(&psk_b, &format!("{psk}\n"), 0o600);
    let ma = a
        .dir
        .write(
            "site-a.yaml",
            &manifest(
                "site-a",
                &ia,
                "10.10.0.1/24",
                &a.key.private_file,
                "site-b",
                &b.key.public,
                &format!("192.0.2.2:{WG_PORT}"),
                "10.10.0.2/32, fd10::2/128, 172.18.2.0/24",
                Some(25),
                &psk_a,
            ),
        )
        .display()
        .to_string();
    let mb = b
        .dir
        .write(
            "site-b.yaml",
            &manifest(
                "site-b",
                &ib,
                "10.10.0.2/24",
                &b.key.private_file,
                "site-a",
                &a.key.public,
                &format!("192.0.2.1:{WG_PORT}"),
                "10.10.0.1/32",
                None,
                &psk_b,
            ),
        )
        .display()
        .to_string();
    a.nm().ok(&["apply", &ma]);
    b.nm().ok(&["apply", &mb]);
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(15)),
        "no ping through the tunnel"
    );
    ping_ok(&a.ns, "10.10.0.2", 5);

    // The socket: root's only, in a directory only root writes.
    let sock = Path::new(UAPI_DIR).join(format!("{ia}.sock"));
    let m = std::fs::symlink_metadata(&sock).expect("wg socket of site A");
    assert!(m.file_type().is_socket());
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));
    let d = std::fs::symlink_metadata(UAPI_DIR).expect("socket dir");
    assert!(d.is_dir() && d.mode() & 0o022 == 0 && d.uid() == 0);

    // `wg show all dump`, field by field against status, on both sites
    // (each from its own namespace: the sockets are shared).
    check_site(
        &a,
        &ia,
        &b.key.public,
        &format!("192.0.2.2:{WG_PORT}"),
        "25",
    );
    check_site(
        &b,
        &ib,
        &a.key.public,
        &format!("192.0.2.1:{WG_PORT}"),
        "off",
    );

    // `wg show IFNAME`: the human form.
    let show = wg_ok(&a.ns, &["show", &ia]);
    for want in [
        format!("interface: {ia}"),
        format!("listening port: {WG_PORT}"),
        format!("peer: {}", b.key.public),
        format!("endpoint: 192.0.2.2:{WG_PORT}"),
        "latest handshake: ".into(),
        "transfer: ".into(),
        "persistent keepalive: every 25 seconds".into(),
    ] {
        assert!(show.contains(&want), "no {want:?} in wg show:\n{show}");
    }
    let ips_line = show
        .lines()
        .find(|l| l.trim_start().starts_with("allowed ips:"))
        .unwrap_or_else(|| panic!("no allowed ips in:\n{show}"));
    for ip in ["10.10.0.2/32", "fd10::2/128", "172.18.2.0/24"] {
        assert!(ips_line.contains(ip), "{ip} missing: {ips_line}");
    }
    assert!(!show.contains("private key"), "{show}");

    // `wg showconf`: a config without its secrets.
    let conf = wg_ok(&a.ns, &["showconf", &ia]);
    for want in [
        "[Interface]".to_string(),
        format!("ListenPort = {WG_PORT}"),
        "[Peer]".into(),
        format!("PublicKey = {}", b.key.public),
        format!("Endpoint = 192.0.2.2:{WG_PORT}"),
        "PersistentKeepalive = 25".into(),
    ] {
        assert!(
            conf.lines().any(|l| l == want),
            "no {want:?} in wg showconf:\n{conf}"
        );
    }
    assert!(
        !conf.contains("PrivateKey") && !conf.contains("PresharedKey"),
        "{conf}"
    );

    // `wg set` is refused (EPERM), whatever it asks, and changes nothing.
    let st0 = engine_status(&a);
    for args in [
        vec!["set", ia.as_str(), "peer", b.key.public.as_str(), "remove"],
        vec!["set", ia.as_str(), "listen-port", "51999"],
    ] {
        let (ok, out, err) = wg(&a.ns, &args);
        assert!(!ok, "wg {args:?} succeeded: {out}");
        assert!(
            err.contains("Unable to modify interface: Operation not permitted"),
            "wg {args:?}: {err}"
        );
    }
    let st1 = engine_status(&a);
    assert_eq!(st1["listen_port"], st0["listen_port"]);
    assert_eq!(st1["peers"].as_array().map(Vec::len), Some(1));
    assert_eq!(st1["peers"][0]["public_key"], b.key.public);
    assert_eq!(st1["peers"][0]["endpoint"], st0["peers"][0]["endpoint"]);
    ping_ok(&a.ns, "10.10.0.2", 3);
    let log = std::fs::read_to_string(a.state_dir().join("site-a.log")).unwrap_or_default();
    assert!(
        log.contains("refused a `wg set`") && log.contains("source of truth"),
        "engine log: {log}"
    );

    // No secret in anything wg printed or the engine logged.
    let dump = wg_ok(&a.ns, &["show", "all", "dump"]);
    let everything = format!("{dump}\n{show}\n{conf}\n{log}");
    for (what, key) in [
        ("A's private key", &a.key.private),
        ("B's private key", &b.key.private),
        ("the preshared key", &psk),
    ] {
        for form in secret_forms(key) {
            assert!(!everything.contains(&form), "{what} appears in the output");
        }
    }

    // `down` stops the engine, which removes its socket; wg no longer
    // lists the interface.
    a.nm().ok(&["down", "site-a"]);
    assert!(!sock.exists(), "{} left behind", sock.display());
    let dump = wg_ok(&a.ns, &["show", "interfaces"]);
    assert!(!dump.split_whitespace().any(|i| i == ia), "{dump}");
    let (ok, _, _) = wg(&a.ns, &["show", &ia]);
    assert!(!ok, "wg show {ia} still works after down");
}
