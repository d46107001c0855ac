//! Hostname endpoints follow their name without an apply. Site A's peer
//! endpoint is `hub-<unique>.test:51820`, resolved through
//! `/etc/netns/<A's namespace>/hosts` (which `ip netns exec` mounts over
//! `/etc/hosts` for the engine); hub B is reachable at two addresses. The
//! tunnel comes up on the first; then the first goes away and the hosts
//! file names the second, and the tunnel must come back by itself (the
//! watcher is off: the engine's resolver does it). A name that stops
//! resolving keeps the last good address and is reported by `status`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Site, ping_ok, underlay, unique, veth, wait_ping, wait_until};

const WG_PORT: u16 = 51820;

/// `/etc/netns/<ns>/` with the files `ip netns exec` mounts over `/etc`;
/// removed on drop (with `/etc/netns` itself if that is then empty).
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &str) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        NetnsEtc { dir }
    }

    /// Write `file` in place: the mount made by `ip netns exec` is of the
    /// file's inode, so a rename would not be seen by a running engine.
    fn write(&self, file: &str, text: &str) {
        let p = self.dir.join(file);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// The one peer of `status --output json`.
fn peer_status(site: &Site) -> serde_json::Value {
    let out = site
        .nm()
        .ok(&["status", &site.deployment, "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"));
    v[0]["engine"]["peers"][0].clone()
}

/// Two sites, hub B reachable at 192.0.2.2 and 198.51.100.2, A's peer
/// endpoint a name that A's hosts file gives as 192.0.2.2, re-resolved
/// every second; the tunnel up. `watch` is A's manifest setting.
struct Setup {
    a: Site,
    b: Site,
    etc: NetnsEtc,
    host: String,
    name: String,
    manifest_a: PathBuf,
}

fn setup(watch: bool) -> Setup {
    let a = Site::new("rra", "site-a");
    let b = Site::new("rrb", "site-b");
    let host = format!("{}.test", unique("hub-"));
    let name = format!("{host}:{WG_PORT}");
    // Before anything runs in A's namespace: `ip netns exec` mounts these
    // files when it starts a command.
    let etc = NetnsEtc::new(&a.ns.name);
    etc.write("hosts", &format!("127.0.0.1 localhost\n192.0.2.2 {host}\n"));
    // Names not in the hosts file fail at once (nothing answers DNS there).
    etc.write(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    underlay(&a.ns, &b.ns);
    veth(
        &a.ns,
        "ul1",
        Some("198.51.100.1/24"),
        &b.ns,
        "ul1",
        Some("198.51.100.2/24"),
    );
    let ma = a.dir.write(
        "site-a.yaml",
        &format!(
            "name: site-a\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers:\n  - name: hub\n    public_key: \"{}\"\n    endpoint: {name}\n    allowed_ips: [10.10.0.2/32]\n    persistent_keepalive: 1\n    endpoint_refresh: 1\nwatch: {watch}\n",
            a.key.private_file.display(),
            b.key.public
        ),
    );
    // The hub has no endpoint for A: it learns it from A's packets.
    let mb = b.dir.write(
        "site-b.yaml",
        &format!(
            "name: site-b\ninterface:\n  name: nm0\n  addresses: [10.10.0.2/24]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers:\n  - name: site-a\n    public_key: \"{}\"\n    allowed_ips: [10.10.0.1/32]\nwatch: false\n",
            b.key.private_file.display(),
            a.key.public
        ),
    );
    b.nm().ok(&["apply", &mb.display().to_string()]);
    // At info level, the engine logs the move.
    common::run_ok(
        a.nm()
            .cmd(&["apply", &ma.display().to_string()])
            .env("NETMAN_LOG", "info"),
    );
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(15)),
        "no ping through the tunnel"
    );
    Setup {
        a,
        b,
        etc,
        host,
        name,
        manifest_a: ma,
    }
}

#[test]
fn a_hostname_endpoint_follows_its_name_without_an_apply() {
    let Setup {
        a,
        b,
        etc,
        host,
        name,
        ..
    } = setup(false);
    let p = peer_status(&a);
    assert_eq!(p["endpoint_name"], name.as_str());
    assert_eq!(p["endpoint"], format!("192.0.2.2:{WG_PORT}").as_str());
    assert!(p["endpoint_error"].is_null(), "{p}");
    let handshakes = p["handshakes"].as_u64().expect("handshakes");

    // The hub moves: its first address goes, the name points at the
    // second. No apply: the engine re-resolves (every second here).
    b.ns.ip(&["addr", "del", "192.0.2.2/24", "dev", "ul0"]);
    etc.write(
        "hosts",
        &format!("127.0.0.1 localhost\n198.51.100.2 {host}\n"),
    );
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(30)),
        "the tunnel did not follow the name to its new address"
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    let p = peer_status(&a);
    assert_eq!(p["endpoint_name"], name.as_str());
    assert_eq!(p["endpoint"], format!("198.51.100.2:{WG_PORT}").as_str());
    assert!(p["endpoint_error"].is_null(), "{p}");
    // Like roaming: the session went on (at most a rekey on a slow
    // machine, not a handshake per move).
    let after = p["handshakes"].as_u64().expect("handshakes");
    assert!(after <= handshakes + 1, "{handshakes} -> {after}");
    let text = a.nm().ok(&["status", "site-a"]);
    assert!(
        text.contains(&format!("endpoint: 198.51.100.2:{WG_PORT} ({name})")),
        "{text}"
    );
    let log = std::fs::read_to_string(a.state_dir().join("site-a.log")).unwrap_or_default();
    assert!(
        log.contains("resolves to a new address"),
        "engine log: {log}"
    );

    // The name stops resolving: the last good address stays, the error is
    // shown, traffic goes on.
    etc.write("hosts", "127.0.0.1 localhost\n");
    let mut p = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            p = peer_status(&a);
            !p["endpoint_error"].is_null()
        }),
        "no resolve error reported: {p}"
    );
    assert_eq!(p["endpoint"], format!("198.51.100.2:{WG_PORT}").as_str());
    ping_ok(&a.ns, "10.10.0.2", 3);
    let text = a.nm().ok(&["status", "site-a"]);
    assert!(
        text.contains("endpoint error: ") && text.contains("the last good address stays in use"),
        "{text}"
    );
}

/// With the watcher on, its re-applies resolve the manifest again: a name
/// that is down must not make them fail (the engine keeps the last good
/// address), so a manifest change still goes through.
#[test]
fn a_name_that_is_down_does_not_stop_the_watcher() {
    let Setup {
        a,
        b: _b,
        etc,
        manifest_a,
        ..
    } = setup(true);
    etc.write("hosts", "127.0.0.1 localhost\n");
    let mut p = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            p = peer_status(&a);
            !p["endpoint_error"].is_null()
        }),
        "no resolve error reported: {p}"
    );
    // A change the watcher applies: the keepalive 1 -> 2.
    let text = std::fs::read_to_string(&manifest_a).expect("manifest");
    let changed = text.replace("persistent_keepalive: 1\n", "persistent_keepalive: 2\n");
    assert_ne!(text, changed);
    std::fs::write(&manifest_a, changed).expect("write manifest");
    let mut st = serde_json::Value::Null;
    let settled = wait_until(Duration::from_secs(30), || {
        let out = a.nm().ok(&["status", "site-a", "--output", "json"]);
        st = serde_json::from_str(&out).expect("status JSON");
        let e = &st[0]["engine"];
        e["peers"][0]["persistent_keepalive"] == 2 || !e["watch"]["last_error"].is_null()
    });
    let e = &st[0]["engine"];
    assert!(settled, "the watcher did nothing with the change: {e:#}");
    assert!(e["watch"]["last_error"].is_null(), "{:#}", e["watch"]);
    assert_eq!(e["peers"][0]["persistent_keepalive"], 2);
    assert_eq!(
        e["peers"][0]["endpoint"],
        format!("192.0.2.2:{WG_PORT}").as_str()
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
}
