//! Reconciler integration tests: each test runs netman in its own network
//! namespace (root required, as in CI).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KeyPair, Monitor, NetNs, Netman, SOME_PUBLIC_KEY, TempDir, poll_until};

/// A manifest for deployment `name` on interface `ifname`, with `extra`
/// appended (more routes etc.).
fn manifest(name: &str, ifname: &str, mtu: u32, extra: &str) -> String {
    // watch: false — these tests look at drift with `diff` before the
    // engine's watcher would repair it (the watcher has tests of its own).
    format!(
        "name: {name}
watch: false
interface:
  name: {ifname}
  addresses: [10.10.0.1/24, fd10::1/64]
  mtu: {mtu}
  private_key_file: keys/a.key
peers:
  - name: b
    public_key: \"{SOME_PUBLIC_KEY}\"
    endpoint: 192.0.2.10:51820
    allowed_ips: [10.10.0.2/32, 172.18.0.0/16, fd18::/48]
{extra}"
    )
}

struct Site {
    ns: NetNs,
    dir: TempDir,
}

impl Site {
    fn new(tag: &str) -> Site {
        let ns = NetNs::new(tag);
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.join("keys")).expect("mkdir keys");
        KeyPair::generate(&dir.join("keys"), "a");
        Site { ns, dir }
    }

    fn netman(&self) -> Netman<'_> {
        Netman::new(&self.ns, self.dir.join("state"))
    }

    fn write(&self, file: &str, text: &str) -> String {
        self.dir.write(file, text).display().to_string()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn apply_creates_exactly_the_expected_objects_and_is_idempotent() {
    let site = Site::new("apply");
    let nm = site.netman();
    let m = site.write(
        "a.yaml",
        &manifest(
            "site-a",
            "nm0",
            1420,
            "routes:\n  - to: 192.168.50.0/24\n    metric: 100\n",
        ),
    );
    let out = nm.ok(&["apply", &m]);
    assert_eq!(
        lines(&out),
        vec![
            "+ link nm0 (tun, mtu 1420)",
            "+ address 10.10.0.1/24 dev nm0",
            "+ address fd10::1/64 dev nm0",
            "~ link nm0 up",
            "+ route 172.18.0.0/16 dev nm0",
            "+ route 192.168.50.0/24 dev nm0 metric 100",
            "+ route fd18::/48 dev nm0",
            "+ engine site-a (not running)",
            "applied: deployment site-a",
        ]
    );
    let link = site.ns.ip(&["-d", "link", "show", "nm0"]);
    assert!(link.contains("mtu 1420"), "{link}");
    assert!(link.contains("alias netman:site-a"), "{link}");
    assert!(link.contains("multi_queue"), "{link}");
    assert!(link.contains("persist on"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = site.ns.ip(&["-o", "addr", "show", "dev", "nm0"]);
    assert!(addrs.contains("inet 10.10.0.1/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd10::1/64"), "{addrs}");
    let r4 = site.ns.ip(&["route", "show", "proto", "233"]);
    assert_eq!(
        lines(&r4),
        vec![
            "172.18.0.0/16 dev nm0 scope link ",
            "192.168.50.0/24 dev nm0 scope link metric 100 ",
        ]
    );
    let r6 = site.ns.ip(&["-6", "route", "show", "proto", "233"]);
    assert_eq!(
        lines(&r6),
        vec!["fd18::/48 dev nm0 metric 1024 pref medium"]
    );
    // 10.10.0.2/32 is inside the connected 10.10.0.0/24: no route of its own.
    assert!(!r4.contains("10.10.0.2"), "{r4}");

    // A second apply performs no netlink writes at all: nothing shows up
    // on `ip monitor` while it runs.
    let monitor = Monitor::ip(&site.ns, &["link", "address", "route"]);
    let events = monitor.during(|| {
        assert_eq!(nm.ok(&["apply", &m]), "no changes\n");
    });
    assert!(
        events.trim().is_empty(),
        "second apply changed the kernel:\n{events}"
    );

    // And `ip monitor` does see writes (the check above can fail).
    let events = monitor.during(|| {
        site.ns.ip(&["link", "set", "nm0", "mtu", "1400"]);
    });
    assert!(!events.is_empty(), "ip monitor saw nothing");
}

#[test]
fn diff_exit_codes_and_changes() {
    let site = Site::new("diff");
    let nm = site.netman();
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));

    let (code, out, _) = nm.out(&["diff", &m]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("+ link nm0 (tun, mtu 1420)\n"), "{out}");
    // diff touched nothing.
    assert!(site.ns.ip_try(&["link", "show", "nm0"]).status.code() != Some(0));

    nm.ok(&["apply", &m]);
    let (code, out, _) = nm.out(&["diff", &m]);
    assert_eq!(code, 0, "{out}");
    // Without a file: against the last applied manifest.
    let (code, _, _) = nm.out(&["diff"]);
    assert_eq!(code, 0);

    // Modify the manifest: diff shows exactly the change, apply converges.
    let m2 = site.write(
        "a.yaml",
        &manifest("site-a", "nm0", 1380, "routes:\n  - to: 192.168.60.0/24\n"),
    );
    let (code, out, _) = nm.out(&["diff", &m2]);
    assert_eq!(code, 1);
    assert_eq!(
        lines(&out),
        vec![
            "~ link nm0 mtu 1420 -> 1380",
            "+ route 192.168.60.0/24 dev nm0",
            "~ engine mtu 1420 -> 1380"
        ]
    );
    let (code, json, _) = nm.out(&["diff", &m2, "--output", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["in_sync"], false);
    assert_eq!(v["actions"][0]["action"], "set_mtu");
    assert_eq!(v["actions"][1]["route"]["dst"], "192.168.60.0/24");
    // The recorded manifest is still the old one, so diff without a file
    // says in sync.
    assert_eq!(nm.out(&["diff"]).0, 0);
    nm.ok(&["apply", &m2]);
    assert_eq!(nm.out(&["diff", &m2]).0, 0);

    // Remove a peer prefix: its route is removed.
    let m3 = site.write(
        "a.yaml",
        &manifest("site-a", "nm0", 1380, "").replace(", 172.18.0.0/16", ""),
    );
    let (code, out, _) = nm.out(&["diff", &m3]);
    assert_eq!(code, 1);
    assert_eq!(
        lines(&out),
        vec![
            "- route 172.18.0.0/16 dev nm0",
            "- route 192.168.60.0/24 dev nm0",
            "~ peer b allowed_ips [10.10.0.2/32, 172.18.0.0/16, fd18::/48] -> [10.10.0.2/32, fd18::/48]",
        ]
    );

    // An invalid manifest: exit 2 with file:line:col.
    let bad = site.write("bad.yaml", &manifest("site-a", "nm0", 99, ""));
    let (code, _, err) = nm.out(&["diff", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.yaml:6:8: interface.mtu"), "{err}");
}

#[test]
fn drift_is_reported_and_repaired_and_foreign_routes_are_untouched() {
    let site = Site::new("drift");
    let nm = site.netman();
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));
    nm.ok(&["apply", &m]);

    site.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    site.ns.ip(&["link", "set", "nm0", "mtu", "1500"]);
    site.ns.ip(&["addr", "del", "fd10::1/64", "dev", "nm0"]);
    // Foreign: a hand-made route on the same device, and another device.
    site.ns.ip(&["route", "add", "10.77.0.0/16", "dev", "nm0"]);
    site.ns.ip(&["route", "add", "10.88.0.0/16", "dev", "lo"]);
    site.ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "nm0"]);

    let (code, out, _) = nm.out(&["diff"]);
    assert_eq!(code, 1);
    assert_eq!(
        lines(&out),
        vec![
            "~ link nm0 mtu 1500 -> 1420",
            "+ address fd10::1/64 dev nm0",
            "+ route 172.18.0.0/16 dev nm0",
        ]
    );
    let out = nm.ok(&["apply", &m]);
    assert!(out.contains("+ route 172.18.0.0/16 dev nm0"), "{out}");
    assert_eq!(nm.out(&["diff", &m]).0, 0);
    let routes = site.ns.ip(&["route"]);
    assert!(routes.contains("10.77.0.0/16 dev nm0"), "{routes}");
    assert!(routes.contains("10.88.0.0/16 dev lo"), "{routes}");
    let addrs = site.ns.ip(&["-o", "addr", "show", "dev", "nm0"]);
    assert!(addrs.contains("10.99.0.1/24"), "{addrs}");

    // A changed manifest leaves the foreign objects alone too.
    let m2 = site.write(
        "a.yaml",
        &manifest("site-a", "nm0", 1400, "").replace(", 172.18.0.0/16", ""),
    );
    nm.ok(&["apply", &m2]);
    let routes = site.ns.ip(&["route"]);
    assert!(routes.contains("10.77.0.0/16 dev nm0"), "{routes}");
    assert!(!routes.contains("172.18.0.0/16"), "{routes}");

    // down removes netman's link; the route on another device stays.
    nm.ok(&["down"]);
    let routes = site.ns.ip(&["route"]);
    assert!(routes.contains("10.88.0.0/16 dev lo"), "{routes}");
    assert!(site.ns.ip_try(&["link", "show", "nm0"]).status.code() != Some(0));
}

#[test]
fn foreign_interface_is_never_touched() {
    let site = Site::new("foreign");
    let nm = site.netman();
    // Someone else's TUN device under the name the manifest wants.
    site.ns.ip(&["tuntap", "add", "dev", "nm0", "mode", "tun"]);
    site.ns.ip(&["link", "set", "nm0", "mtu", "1500"]);
    let before = site.ns.snapshot();
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));
    let (code, _, err) = nm.out(&["apply", &m]);
    assert_eq!(code, 1);
    assert!(
        err.contains("link nm0: exists and is not managed by this deployment"),
        "{err}"
    );
    assert_eq!(site.ns.snapshot(), before);
    // Another deployment's link is refused too.
    site.ns.ip(&["link", "del", "nm0"]);
    let other = site.write("o.yaml", &manifest("other", "nm0", 1420, ""));
    nm.ok(&["apply", &other]);
    let (code, _, err) = nm.out(&["apply", &m]);
    assert_eq!(code, 1);
    assert!(err.contains("belongs to netman deployment other"), "{err}");
    // With two deployments recorded, `down` needs a name.
    let third = site.write(
        "t.yaml",
        &manifest("third", "nm1", 1420, "")
            .replace("10.10.0.1/24, fd10::1/64", "10.12.0.1/24")
            .replace("10.10.0.2/32, 172.18.0.0/16, fd18::/48", "10.12.0.2/32"),
    );
    nm.ok(&["apply", &third]);
    let (code, _, err) = nm.out(&["down"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("several deployments are recorded") && err.contains("other, third"),
        "{err}"
    );
    nm.ok(&["down", &third]);
    nm.ok(&["down", "other"]);
}

#[test]
fn failure_mid_apply_reverts_to_the_previous_state() {
    let site = Site::new("revert");
    let nm = site.netman();
    // A foreign route on another device makes the kernel refuse netman's
    // route to the same prefix (EEXIST) after the link and addresses exist.
    site.ns.ip(&["route", "add", "172.18.0.0/16", "dev", "lo"]);
    let before = site.ns.snapshot();
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));
    let (code, _, err) = nm.out(&["apply", &m]);
    assert_eq!(code, 1);
    assert!(
        err.contains("add route 172.18.0.0/16 dev nm0: File exists"),
        "{err}"
    );
    assert!(err.contains("reverted"), "{err}");
    assert_eq!(
        site.ns.snapshot(),
        before,
        "a failed first apply left state behind"
    );
    assert!(
        !site.dir.join("state/site-a.json").exists(),
        "a failed first apply left a state file"
    );

    // A failing change to a working deployment restores it exactly.
    site.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "lo"]);
    nm.ok(&["apply", &m]);
    let before = site.ns.snapshot();
    site.ns
        .ip(&["route", "add", "192.168.70.0/24", "dev", "lo"]);
    let before_with_lo = site.ns.snapshot();
    assert_ne!(before, before_with_lo);
    let m2 = site.write(
        "a2.yaml",
        &manifest(
            "site-a",
            "nm0",
            1300,
            "routes:\n  - to: 192.168.60.0/24\n  - to: 192.168.70.0/24\n",
        )
        .replace(
            "10.10.0.1/24, fd10::1/64",
            "10.10.0.1/24, 10.11.0.1/24, fd10::1/64",
        ),
    );
    let (code, _, err) = nm.out(&["apply", &m2]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("192.168.70.0/24"), "{err}");
    assert_eq!(
        site.ns.snapshot(),
        before_with_lo,
        "revert did not restore the state"
    );
    // The recorded manifest is still the old one.
    assert_eq!(nm.out(&["diff"]).0, 0);
}

#[test]
fn invalid_manifest_leaves_the_namespace_unchanged() {
    let site = Site::new("invalid");
    let nm = site.netman();
    let before = site.ns.snapshot();
    let bad = manifest("site-a", "nm0", 1420, "")
        .replace("172.18.0.0/16", "172.18.0.1/16")
        .replace(SOME_PUBLIC_KEY, "short");
    let m = site.write("bad.yaml", &bad);
    let (code, _, err) = nm.out(&["apply", &m]);
    assert_eq!(code, 2);
    let errs: Vec<&str> = err.lines().filter(|l| l.contains("bad.yaml:")).collect();
    assert_eq!(errs.len(), 2, "all errors at once: {err}");
    assert_eq!(site.ns.snapshot(), before);
    let (code, _, _) = nm.out(&["validate", &m]);
    assert_eq!(code, 2);
}

#[test]
fn down_removes_everything_even_after_apply_was_killed() {
    let site = Site::new("killed");
    let nm = site.netman();
    let before = site.ns.snapshot();
    // A large manifest so the apply takes a while; kill it mid-way.
    let mut routes = String::from("routes:\n");
    for i in 0..4000u32 {
        routes.push_str(&format!("  - to: 10.{}.{}.0/24\n", 100 + i / 256, i % 256));
    }
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, &routes));
    let mut child = nm
        .cmd(&["apply", &m])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    // Polled tightly: the kill must land while the apply is under way.
    poll_until(Duration::from_secs(20), Duration::from_millis(2), || {
        site.ns.ip_try(&["link", "show", "nm0"]).status.success()
    });
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        site.dir.join("state/site-a.json").exists(),
        "the intent was not recorded before the kernel was touched"
    );
    nm.ok(&["down", "site-a"]);
    assert_eq!(site.ns.snapshot(), before);
    assert!(!site.dir.join("state/site-a.json").exists());

    // down from the recorded state alone: the manifest file is gone.
    nm.ok(&["apply", &m]);
    std::fs::remove_file(&m).expect("rm manifest");
    let out = nm.ok(&["down"]);
    assert_eq!(
        lines(&out),
        vec!["- engine site-a", "- link nm0", "down: deployment site-a"]
    );
    assert_eq!(site.ns.snapshot(), before);
}

#[test]
fn interrupted_first_apply_converges_on_reapply() {
    let site = Site::new("reapply");
    let nm = site.netman();
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));
    // Simulate a crash right after the device was created but before it was
    // named: an unaliased TUN device recorded as intended.
    nm.ok(&["apply", &m]);
    site.ns.ip(&["link", "del", "nm0"]);
    site.ns
        .ip(&["tuntap", "add", "dev", "nm0", "mode", "tun", "multi_queue"]);
    let out = nm.ok(&["apply", &m]);
    assert!(out.contains("~ link nm0 alias (adopt)"), "{out}");
    assert_eq!(nm.out(&["diff", &m]).0, 0);
}

/// The TUN device's transmit queue length (`interface.txqueuelen`, issue
/// 15) is owned state: set when the device is made, reported as drift by
/// `diff`, put back by `apply`, changed in place by a new manifest.
#[test]
fn txqueuelen_is_set_reported_as_drift_and_repaired() {
    let site = Site::new("qlen");
    let nm = site.netman();
    let qlen = || common::link_qlen(&site.ns, "nm0");
    let m = site.write("a.yaml", &manifest("site-a", "nm0", 1420, ""));
    nm.ok(&["apply", &m]);
    assert_eq!(qlen(), Some(netman::manifest::DEFAULT_TXQUEUELEN));

    site.ns.ip(&["link", "set", "nm0", "txqueuelen", "1000"]);
    let (code, out, _) = nm.out(&["diff"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(lines(&out), vec!["~ link nm0 txqueuelen 1000 -> 500"]);
    nm.ok(&["apply", &m]);
    assert_eq!(qlen(), Some(500));
    assert_eq!(nm.out(&["diff", &m]).0, 0);

    let m2 = site.write(
        "a.yaml",
        &manifest("site-a", "nm0", 1420, "")
            .replace("  mtu: 1420\n", "  mtu: 1420\n  txqueuelen: 8\n"),
    );
    let out = nm.ok(&["apply", &m2]);
    assert!(out.contains("~ link nm0 txqueuelen 500 -> 8"), "{out}");
    assert_eq!(qlen(), Some(8));
    nm.ok(&["down"]);
}
