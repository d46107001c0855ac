//! Watcher integration tests: the running engine follows its manifest file
//! and the kernel (`src/watch.rs`), `apply --confirm-timeout`
//! reverts unless confirmed, and an interrupted or killed `apply` leaves
//! nothing half done. Each test runs the real binary in its own uniquely
//! named network namespaces (root required, as in CI) with its own temp
//! dir and state dir, all removed on drop; a missing prerequisite makes a
//! test fail, never skip.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Bg, Monitor, NetNs, OTHER_PUBLIC_KEY, SOME_PUBLIC_KEY, Site, holds_for, ping_ok, poll_until,
    require_tool, run, underlay, wait_ping, wait_until,
};
use sha2::{Digest, Sha256};

const WG_PORT: u16 = 51820;

/// How long the watcher must stay quiet to count as settled: longer than
/// its longest debounce (`FILE_DEBOUNCE`, 200 ms, in
/// src/watch.rs), so a reconcile it had scheduled would have
/// run within it, and every reconcile reads the state file (counted in
/// `watch_counters.state_reads`). The engine has no "idle" signal.
const WATCHER_QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Manifests

#[derive(Clone)]
struct Peer {
    name: String,
    public_key: String,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
}

impl Peer {
    fn new(name: &str, public_key: &str, endpoint: &str, allowed_ips: &[&str]) -> Peer {
        Peer {
            name: name.to_string(),
            public_key: public_key.to_string(),
            endpoint: Some(endpoint.to_string()),
            allowed_ips: allowed_ips.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A manifest (v1), rendered by `yaml`.
#[derive(Clone)]
struct Spec {
    name: String,
    addresses: Vec<String>,
    mtu: u32,
    listen_port: Option<u16>,
    key_file: PathBuf,
    peers: Vec<Peer>,
    routes: Vec<String>,
    watch: Option<bool>,
}

impl Spec {
    fn yaml(&self) -> String {
        let mut m = format!("name: {}\n", self.name);
        if let Some(w) = self.watch {
            m.push_str(&format!("watch: {w}\n"));
        }
        m.push_str(&format!(
            "interface:\n  name: nm0\n  addresses: [{}]\n  mtu: {}\n",
            self.addresses.join(", "),
            self.mtu
        ));
        if let Some(p) = self.listen_port {
            m.push_str(&format!("  listen_port: {p}\n"));
        }
        m.push_str(&format!(
            "  private_key_file: {}\npeers:\n",
            self.key_file.display()
        ));
        for p in &self.peers {
            m.push_str(&format!(
                "  - name: {}\n    public_key: \"{}\"\n",
                p.name, p.public_key
            ));
            if let Some(e) = &p.endpoint {
                m.push_str(&format!("    endpoint: {e}\n"));
            }
            m.push_str(&format!(
                "    allowed_ips: [{}]\n",
                p.allowed_ips.join(", ")
            ));
        }
        if !self.routes.is_empty() {
            m.push_str("routes:\n");
            for r in &self.routes {
                m.push_str(&format!("  - to: {r}\n"));
            }
        }
        m
    }

    fn route(mut self, to: &str) -> Spec {
        self.routes.push(to.to_string());
        self
    }

    fn mtu(mut self, mtu: u32) -> Spec {
        self.mtu = mtu;
        self
    }

    fn watch(mut self, w: bool) -> Spec {
        self.watch = Some(w);
        self
    }
}

/// `n` distinct /24 routes (10.100.0.0/24, 10.100.1.0/24, ...), starting
/// at the `first`-th.
fn many_routes(first: usize, n: usize) -> Vec<String> {
    (first..first + n)
        .map(|i| format!("10.{}.{}.0/24", 100 + i / 256, i % 256))
        .collect()
}

/// Unix time now, in milliseconds (the clock of the confirmation
/// deadlines in the state file).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replace `path` the way git and editors do: write a temp file in the
/// same directory, then rename(2) it over the manifest.
fn write_by_rename(path: &Path, text: &str) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} over {}: {e}", tmp.display(), path.display()));
}

fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Sites

impl Site {
    /// A stand-alone site: overlay 10.10.0.1/24 + fd10::1/64, one peer
    /// behind an unreachable endpoint with routed allowed IPs.
    fn spec(&self) -> Spec {
        Spec {
            name: self.deployment.clone(),
            addresses: vec!["10.10.0.1/24".into(), "fd10::1/64".into()],
            mtu: 1420,
            listen_port: None,
            key_file: self.key.private_file.clone(),
            peers: vec![Peer::new(
                "b",
                SOME_PUBLIC_KEY,
                "192.0.2.10:51820",
                &["10.10.0.2/32", "172.18.0.0/16", "fd18::/48"],
            )],
            routes: Vec::new(),
            watch: None,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write `spec` to `file` (in place); returns its path.
    fn write(&self, file: &str, spec: &Spec) -> PathBuf {
        let p = self.file(file);
        write_in_place(&p, &spec.yaml());
        p
    }

    /// `netman apply ARGS... FILE`; must succeed; returns stdout.
    fn apply(&self, file: &Path, args: &[&str]) -> String {
        let f = file.to_str().expect("utf-8 path");
        let mut a = vec!["apply"];
        a.extend_from_slice(args);
        a.push(f);
        let out = self.nm().ok(&a);
        assert!(
            out.contains(&format!("deployment {}", self.deployment)) || out.contains("no changes"),
            "{out}"
        );
        out
    }

    /// This deployment's entry of `status --output json`.
    fn status(&self) -> serde_json::Value {
        let out = self
            .nm()
            .ok(&["status", &self.deployment, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status JSON of {}: {e}: {out}", self.deployment));
        v[0].clone()
    }

    /// `engine.watch` of the status (the engine must be running).
    fn watch(&self) -> serde_json::Value {
        let st = self.status();
        let w = st["engine"]["watch"].clone();
        assert!(w.is_object(), "no engine.watch in the status: {st:#}");
        w
    }

    fn counter(&self, what: &str) -> u64 {
        let w = self.watch();
        w[what]
            .as_u64()
            .unwrap_or_else(|| panic!("engine.watch.{what} is not a number: {w:#}"))
    }

    fn engine_pid(&self) -> u32 {
        let st = self.status();
        st["engine"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no engine pid in the status: {st:#}")) as u32
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir().join(format!("{}.log", self.deployment))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The recorded state file, as JSON.
    fn state_file(&self) -> serde_json::Value {
        let p = self.state_dir().join(format!("{}.json", self.deployment));
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Prefixes of netman's routes (protocol 233), v4 and v6.
    fn routes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for v in ["-4", "-6"] {
            let o = self.ns.ip_try(&[v, "route", "show", "proto", "233"]);
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                // `ip route` prints host routes without their length.
                match l.split_whitespace().next() {
                    Some(p) if p.contains('/') => out.insert(p.to_string()),
                    Some(p) if v == "-4" => out.insert(format!("{p}/32")),
                    Some(p) => out.insert(format!("{p}/128")),
                    None => false,
                };
            }
        }
        out
    }

    fn has_route(&self, prefix: &str) -> bool {
        self.routes().contains(prefix)
    }

    /// Every route on nm0 (any protocol), as `ip route` prints them.
    fn routes_on_nm0(&self) -> String {
        let mut s = String::new();
        for v in ["-4", "-6"] {
            let o = self.ns.ip_try(&[v, "route", "show", "dev", "nm0"]);
            s.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        s
    }

    fn mtu(&self) -> Option<u32> {
        let o = self.ns.ip_try(&["-o", "link", "show", "nm0"]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut words = s.split_whitespace();
        while let Some(w) = words.next() {
            if w == "mtu" {
                return words.next().and_then(|m| m.parse().ok());
            }
        }
        None
    }

    fn has_addr(&self, cidr: &str) -> bool {
        let o = self.ns.ip_try(&["-o", "addr", "show", "dev", "nm0"]);
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .any(|w| w == cidr)
    }

    /// Wait until the watcher has done all it was going to do (after an
    /// apply: the reconcile its poke asks for, and the one its kernel
    /// events start): its `watch` status and `watch_counters` unchanged for
    /// [`WATCHER_QUIET`]. Without an engine (or a deployment) there is
    /// nothing to wait for.
    fn settle(&self) {
        let probe = || {
            let (code, out, _) = self
                .nm()
                .out(&["status", &self.deployment, "--output", "json"]);
            let v: serde_json::Value = match code {
                0 => serde_json::from_str(&out).unwrap_or_default(),
                _ => serde_json::Value::Null,
            };
            let e = &v[0]["engine"];
            serde_json::json!([e["watch"], e["watch_counters"]])
        };
        let mut last = probe();
        let mut since = Instant::now();
        // Polled gently: each probe runs `netman status`, and many tests
        // run at once.
        let settled = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let now = probe();
            if now != last {
                last = now;
                since = Instant::now();
            }
            since.elapsed() >= WATCHER_QUIET
        });
        assert!(
            settled.is_some(),
            "the watcher of {} did not settle in 10 s: {last:#}",
            self.deployment
        );
    }

    fn peer_names(&self) -> Vec<String> {
        self.status()["engine"]["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Two sites joined by a veth underlay 192.0.2.1/24 -- 192.0.2.2/24, with
/// overlay 10.10.0.1/24 + fd10::1/64 and .2, each the other's peer.
struct Pair {
    a: Site,
    b: Site,
    sa: Spec,
    sb: Spec,
}

fn pair(tag: &str) -> Pair {
    let a = Site::new(&format!("{tag}a"), "site-a");
    let b = Site::new(&format!("{tag}b"), "site-b");
    underlay(&a.ns, &b.ns);
    let spec = |s: &Site, addrs: [&str; 2], peer: &Site, peer_ul: &str, allowed: [&str; 2]| Spec {
        name: s.deployment.clone(),
        addresses: addrs.iter().map(ToString::to_string).collect(),
        mtu: 1420,
        listen_port: Some(WG_PORT),
        key_file: s.key.private_file.clone(),
        peers: vec![Peer::new(
            &peer.deployment,
            &peer.key.public,
            &format!("{peer_ul}:{WG_PORT}"),
            &allowed,
        )],
        routes: Vec::new(),
        watch: None,
    };
    let sa = spec(
        &a,
        ["10.10.0.1/24", "fd10::1/64"],
        &b,
        "192.0.2.2",
        ["10.10.0.2/32", "fd10::2/128"],
    );
    let sb = spec(
        &b,
        ["10.10.0.2/24", "fd10::2/64"],
        &a,
        "192.0.2.1",
        ["10.10.0.1/32", "fd10::1/128"],
    );
    Pair { a, b, sa, sb }
}

impl Pair {
    /// Apply both sites from `site-x.yaml` and wait for traffic.
    fn up(&self) -> (PathBuf, PathBuf) {
        let fa = self.a.write("site-a.yaml", &self.sa);
        let fb = self.b.write("site-b.yaml", &self.sb);
        self.a.apply(&fa, &[]);
        self.b.apply(&fb, &[]);
        assert!(
            wait_ping(&self.a.ns, "10.10.0.2", Duration::from_secs(10)),
            "no traffic between the two sites"
        );
        (fa, fb)
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// Poll `f` every 20 ms until it holds; panics after `timeout`. Returns
/// how long it took.
fn converge(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Duration {
    poll_until(timeout, Duration::from_millis(20), f)
        .unwrap_or_else(|| panic!("{what}: not within {timeout:?} (and no netman command was run)"))
}

/// One ping with a 1 s wait: true if answered.
fn ping1(ns: &NetNs, target: &str) -> bool {
    require_tool("ping", "the Debian package iputils-ping");
    run(ns
        .cmd("timeout")
        .args(["3", "ping", "-n", "-q", "-c", "1", "-W", "1", target]))
    .status
    .success()
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this test started (an apply it spawned, or
    // the engine pid read from the status of its own namespace).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

fn kill9_engine(site: &Site) -> u32 {
    let pid = site.engine_pid();
    assert!(
        site.ns.pids().contains(&pid),
        "engine pid {pid} is not in {}",
        site.ns.name
    );
    kill(pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || pid_gone(pid)),
        "engine {pid} survived SIGKILL"
    );
    // The thread group leader turns zombie before the other threads have
    // closed the control socket: wait until it refuses connections.
    let sock = site.state_dir().join(format!("{}.sock", site.deployment));
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::os::unix::net::UnixStream::connect(&sock).is_err()
        }),
        "the control socket of the killed engine {pid} still accepts connections"
    );
    pid
}

/// Live processes in a namespace (zombies excluded).
fn live_pids(ns: &NetNs) -> Vec<u32> {
    ns.pids().into_iter().filter(|p| !pid_gone(*p)).collect()
}

/// Whether `s` has `path:LINE:COL:` in it.
fn has_file_line_col(s: &str, path: &Path) -> bool {
    let p = format!("{}:", path.display());
    s.match_indices(&p).any(|(i, _)| {
        let rest = &s[i + p.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col = parts.next().unwrap_or("");
        parts.next().is_some()
            && !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && !col.is_empty()
            && col.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Lines of `after` not in `before` and the other way round (for readable
/// failures on big snapshots).
fn snapshot_diff(before: &str, after: &str) -> String {
    let b: BTreeSet<&str> = before.lines().collect();
    let a: BTreeSet<&str> = after.lines().collect();
    let mut s = String::new();
    for l in b.difference(&a).take(20) {
        s.push_str(&format!("- {l}\n"));
    }
    for l in a.difference(&b).take(20) {
        s.push_str(&format!("+ {l}\n"));
    }
    s
}

/// `NetNs::snapshot` once IPv6 duplicate address detection is over (a
/// `tentative` flag going away is not a change anyone made).
fn settled_snapshot(ns: &NetNs) -> String {
    wait_until(Duration::from_secs(5), || {
        !ns.ip(&["-o", "addr", "show"]).contains("tentative")
    });
    ns.snapshot()
}

/// The text of log file `path` once it has every one of `needles` (the
/// watcher logs what it did just after doing it), or after 2 s.
fn log_with(path: &Path, needles: &[&str]) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    wait_until(Duration::from_secs(2), || {
        let t = read();
        needles.iter().all(|n| t.contains(n))
    });
    read()
}

/// Whether an engine log (human or journald format) has an error line.
fn log_has_error(log: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with("<3>") || l.contains(" ERROR "))
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// xorshift64*, seeded from the clock (printed on failure).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ---------------------------------------------------------------------------
// 1. Manifest edits converge by themselves

#[test]
fn manifest_edits_converge_without_any_command() {
    let s = Site::new("edit", "site-a");
    let base = s.spec();
    let f = s.write("site-a.yaml", &base);
    s.apply(&f, &[]);
    assert_eq!(s.watch()["enabled"], true, "watching is on by default");
    let applied_at0 = s.status()["applied_at"].as_u64().expect("applied_at");

    // (a) a route added in the file.
    let v1 = base.clone().route("192.168.50.0/24");
    write_in_place(&f, &v1.yaml());
    let t = converge(
        "(a) route 192.168.50.0/24 from the edited manifest",
        Duration::from_secs(2),
        || s.has_route("192.168.50.0/24"),
    );
    eprintln!("(a) route added after {t:?}");

    // (b) the MTU changed in the file.
    let v2 = v1.clone().mtu(1380);
    write_in_place(&f, &v2.yaml());
    let t = converge("(b) mtu 1380", Duration::from_secs(2), || {
        s.mtu() == Some(1380)
    });
    eprintln!("(b) mtu changed after {t:?}");

    // (c) a peer added in the file: the engine serves it, its route is in.
    let mut v3 = v2.clone();
    v3.peers.push(Peer::new(
        "c",
        OTHER_PUBLIC_KEY,
        "192.0.2.11:51820",
        &["172.19.0.0/16"],
    ));
    write_in_place(&f, &v3.yaml());
    let t = converge(
        "(c) peer c in status and its route",
        Duration::from_secs(2),
        || s.peer_names() == ["b", "c"] && s.has_route("172.19.0.0/16"),
    );
    eprintln!("(c) peer added after {t:?}");

    // (d) the file replaced by rename(2), as git and editors do.
    let v4 = v3.clone().route("192.168.60.0/24");
    write_by_rename(&f, &v4.yaml());
    let t = converge(
        "(d) route 192.168.60.0/24 from the renamed-over manifest",
        Duration::from_secs(2),
        || s.has_route("192.168.60.0/24"),
    );
    eprintln!("(d) renamed manifest applied after {t:?}");
    // ... and the watch survives the rename: one more edit in place.
    let v5 = v4.clone().mtu(1400);
    write_in_place(&f, &v5.yaml());
    converge(
        "(d) an edit after the rename",
        Duration::from_secs(2),
        || s.mtu() == Some(1400),
    );

    // Everything the file says is in force, and status says which file.
    let want: BTreeSet<String> = [
        "172.18.0.0/16",
        "172.19.0.0/16",
        "192.168.50.0/24",
        "192.168.60.0/24",
        "fd18::/48",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let st = converge("status shows the last file", Duration::from_secs(2), || {
        s.status()["manifest"]["sha256"] == sha256_hex(&v5.yaml())
    });
    let _ = st;
    assert_eq!(s.routes(), want);
    let st = s.status();
    assert_eq!(st["manifest"]["path"], f.display().to_string(), "{st:#}");
    assert!(
        st["applied_at"].as_u64().expect("applied_at") >= applied_at0,
        "{st:#}"
    );
    let w = &st["engine"]["watch"];
    assert!(w["applies"].as_u64().unwrap_or(0) >= 5, "{w:#}");
    assert_eq!(w["drift_repairs"], 0, "edits are not drift: {w:#}");
    assert_eq!(w["failures"], 0, "{w:#}");
    assert!(w["manifest_error"].is_null(), "{w:#}");
    let (code, out, err) = s.nm().out(&["diff"]);
    assert_eq!(code, 0, "diff against the recorded manifest:\n{out}{err}");
    let (code, out, err) = s.nm().out(&["diff", f.to_str().expect("path")]);
    assert_eq!(code, 0, "diff against the file:\n{out}{err}");

    // The engine log shows what it did, plan lines included.
    let lines = [
        "  + route 192.168.50.0/24 dev nm0",
        "  ~ link nm0 mtu 1420 -> 1380",
        "  + route 172.19.0.0/16 dev nm0",
        "  + route 192.168.60.0/24 dev nm0",
        "  ~ link nm0 mtu 1380 -> 1400",
    ];
    let log = log_with(&s.log_path(), &lines);
    assert!(
        count(&log, "applied the changed manifest") >= 5,
        "engine log:\n{log}"
    );
    for line in lines {
        assert!(log.contains(line), "engine log lacks {line:?}:\n{log}");
    }
    assert!(!log_has_error(&log), "engine log:\n{log}");
}

#[test]
fn run_in_the_foreground_follows_the_manifest_and_repairs_drift() {
    let s = Site::new("run", "site-a");
    let base = s.spec();
    let f = s.write("site-a.yaml", &base);
    let log = s.file("run.log");
    let _run = Bg::spawn_logged(
        "netman run",
        &mut s.nm().cmd(&["run", f.to_str().expect("path")]),
        &log,
    );
    converge("netman run serves", Duration::from_secs(10), || {
        s.nm()
            .out(&["status", "site-a", "--output", "json"])
            .1
            .contains("\"watch\"")
    });
    write_by_rename(&f, &base.clone().route("192.168.50.0/24").yaml());
    converge(
        "route from the edited manifest (netman run)",
        Duration::from_secs(2),
        || s.has_route("192.168.50.0/24"),
    );
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    converge(
        "deleted route restored (netman run)",
        Duration::from_secs(1),
        || s.has_route("172.18.0.0/16"),
    );
    let text = log_with(&log, &["applied the changed manifest", "repaired drift"]);
    assert!(text.contains("applied the changed manifest"), "{text}");
    assert!(text.contains("repaired drift"), "{text}");
}

// ---------------------------------------------------------------------------
// 2. Drift is repaired; foreign objects are left alone

#[test]
fn drift_is_repaired_within_a_second_and_foreign_objects_are_left_alone() {
    let s = Site::new("drift", "site-a");
    let spec = s.spec().route("192.168.50.0/24");
    let f = s.write("site-a.yaml", &spec);
    s.apply(&f, &[]);
    // Let the watcher's own first reconcile (after the apply) pass.
    s.settle();
    let repairs0 = s.counter("drift_repairs");

    // Foreign objects on netman's device, made before any deletion.
    s.ns.ip(&["route", "add", "192.168.77.0/24", "dev", "nm0"]);
    s.ns.ip(&["-6", "route", "add", "fd77::/64", "dev", "nm0"]);
    s.ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "nm0"]);
    let foreign_ok = || {
        let r = s.routes_on_nm0();
        r.contains("192.168.77.0/24") && r.contains("fd77::/64") && s.has_addr("10.99.0.1/32")
    };

    // An owned route deleted by hand.
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    let t = converge("deleted route restored", Duration::from_secs(1), || {
        s.has_route("172.18.0.0/16")
    });
    eprintln!("route restored after {t:?}");
    assert!(foreign_ok(), "foreign objects: {}", s.routes_on_nm0());

    // The MTU changed by hand.
    s.ns.ip(&["link", "set", "nm0", "mtu", "1300"]);
    let t = converge("mtu reverted", Duration::from_secs(1), || {
        s.mtu() == Some(1420)
    });
    eprintln!("mtu reverted after {t:?}");

    // An owned address flushed by hand (v6, then v4).
    s.ns.ip(&["addr", "del", "fd10::1/64", "dev", "nm0"]);
    let t = converge("fd10::1/64 restored", Duration::from_secs(1), || {
        s.has_addr("fd10::1/64")
    });
    eprintln!("v6 address restored after {t:?}");
    s.ns.ip(&["addr", "del", "10.10.0.1/24", "dev", "nm0"]);
    let t = converge("10.10.0.1/24 restored", Duration::from_secs(1), || {
        s.has_addr("10.10.0.1/24")
    });
    eprintln!("v4 address restored after {t:?}");
    s.settle();
    assert!(
        foreign_ok(),
        "foreign objects must stay: {}",
        s.routes_on_nm0()
    );
    assert!(
        !s.has_route("192.168.77.0/24"),
        "netman claimed a hand-made route"
    );

    // Without the foreign address, removing 10.10.0.1/24 removes the last
    // IPv4 address: the kernel flushes every IPv4 route of the device, and
    // the watcher puts back the address and netman's routes.
    s.ns.ip(&["addr", "del", "10.99.0.1/32", "dev", "nm0"]);
    s.ns.ip(&["addr", "del", "10.10.0.1/24", "dev", "nm0"]);
    let t = converge(
        "last IPv4 address and the flushed owned routes restored",
        Duration::from_secs(1),
        || {
            s.has_addr("10.10.0.1/24")
                && s.has_route("172.18.0.0/16")
                && s.has_route("192.168.50.0/24")
        },
    );
    eprintln!("last v4 address and routes restored after {t:?}");
    // The hand-made v6 route was not touched by any of it.
    assert!(s.routes_on_nm0().contains("fd77::/64"));

    let w = s.watch();
    let repairs = w["drift_repairs"].as_u64().unwrap_or(0);
    assert!(
        repairs >= repairs0 + 5,
        "drift_repairs {repairs0} -> {repairs}: {w:#}"
    );
    assert_eq!(w["failures"], 0, "{w:#}");
    let (code, out, err) = s.nm().out(&["diff"]);
    assert_eq!(code, 0, "diff after the repairs:\n{out}{err}");
    let lines = [
        "repaired drift",
        "  + route 172.18.0.0/16 dev nm0",
        "  ~ link nm0 mtu 1300 -> 1420",
        "  + address fd10::1/64 dev nm0",
        "  + address 10.10.0.1/24 dev nm0",
        "  + route 192.168.50.0/24 dev nm0",
    ];
    let log = log_with(&s.log_path(), &lines);
    for line in lines {
        assert!(log.contains(line), "engine log lacks {line:?}:\n{log}");
    }
}

// ---------------------------------------------------------------------------
// 3. An invalid manifest is not applied

#[test]
fn invalid_manifest_is_not_applied_and_the_running_configuration_stays() {
    let p = pair("inval");
    let (fa, _) = p.up();
    let a = &p.a;
    a.settle();
    let snap = settled_snapshot(&a.ns);
    let pid = a.engine_pid();
    let applies0 = a.counter("applies");

    // An unknown key (with a change that would show if it were applied).
    let mut text = p.sa.clone().route("192.168.50.0/24").yaml();
    text.push_str("bogus_key: true\n");
    let bogus_line = text.lines().count();
    write_in_place(&fa, &text);
    converge("manifest_error shown", Duration::from_secs(2), || {
        !a.watch()["manifest_error"].is_null()
    });
    let err = a.watch()["manifest_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        has_file_line_col(&err, &fa)
            && err.contains(&format!("{}:{bogus_line}:", fa.display()))
            && err.contains("bogus_key"),
        "manifest_error should be FILE:LINE:COL naming the key: {err}"
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    assert_eq!(
        a.ns.snapshot(),
        snap,
        "an invalid manifest changed the kernel"
    );
    assert!(!a.has_route("192.168.50.0/24"));

    // A bad CIDR: the error follows the file.
    let mut bad = p.sa.clone().route("192.168.50.0/24");
    bad.peers[0].allowed_ips.push("10.10.0.300/32".into());
    write_by_rename(&fa, &bad.yaml());
    converge(
        "manifest_error names the bad CIDR",
        Duration::from_secs(2),
        || {
            a.watch()["manifest_error"]
                .as_str()
                .is_some_and(|e| e.contains("allowed_ips") && has_file_line_col(e, &fa))
        },
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    ping_ok(&p.b.ns, "10.10.0.1", 2);
    assert_eq!(
        a.ns.snapshot(),
        snap,
        "an invalid manifest changed the kernel"
    );
    assert_eq!(a.engine_pid(), pid, "the engine was restarted");
    let w = a.watch();
    assert_eq!(w["applies"], applies0, "{w:#}");
    assert_eq!(w["failures"], 0, "an invalid file is not a failure: {w:#}");
    let log = log_with(&a.log_path(), &["the manifest file is invalid"]);
    assert!(
        log.contains("the manifest file is invalid") && has_file_line_col(&log, &fa),
        "the engine log should show the error with FILE:LINE:COL:\n{log}"
    );

    // A valid manifest of another deployment is not applied either.
    let mut other = p.sa.clone().route("192.168.50.0/24");
    other.name = "site-x".into();
    write_in_place(&fa, &other.yaml());
    converge(
        "manifest_error names the other deployment",
        Duration::from_secs(2),
        || {
            a.watch()["manifest_error"]
                .as_str()
                .is_some_and(|e| e.contains("site-x"))
        },
    );
    // The file deleted: nothing is torn down.
    let gone = "cannot read the manifest file";
    let seen = count(&a.log(), gone);
    std::fs::remove_file(&fa).expect("rm manifest");
    converge(
        "the watcher sees the file gone",
        Duration::from_secs(5),
        || count(&a.log(), gone) > seen,
    );
    a.settle();
    ping_ok(&a.ns, "10.10.0.2", 2);
    assert_eq!(
        a.ns.snapshot(),
        snap,
        "a deleted manifest changed the kernel"
    );
    assert_eq!(a.watch()["applies"], applies0);

    // Fixed with a valid change: applied, and the error is gone.
    let fixed = p.sa.clone().route("192.168.50.0/24");
    write_in_place(&fa, &fixed.yaml());
    converge("the fixed manifest applied", Duration::from_secs(2), || {
        a.has_route("192.168.50.0/24")
    });
    converge("manifest_error cleared", Duration::from_secs(1), || {
        a.watch()["manifest_error"].is_null()
    });
    assert_eq!(a.status()["manifest"]["sha256"], sha256_hex(&fixed.yaml()));
    ping_ok(&a.ns, "10.10.0.2", 3);
}

/// The text form of `status` shows what `watch` in the JSON shows: the
/// manifest file's error, every line with its FILE:LINE:COL, and the last
/// reconcile that failed.
#[test]
fn text_status_shows_the_manifest_error_and_the_last_reconcile_error() {
    let s = Site::new("txtst", "site-a");
    let spec = s.spec().route("192.168.50.0/24").route("192.168.60.0/24");
    let f = s.write("site-a.yaml", &spec);
    s.apply(&f, &[]);
    let text = || s.nm().ok(&["status", "site-a"]);
    let t = text();
    assert!(
        !t.contains("manifest error") && !t.contains("last error"),
        "a healthy deployment shows errors:\n{t}"
    );

    // Two errors in the file, on two lines.
    let mut bad = spec.clone();
    bad.peers[0].allowed_ips.push("10.10.0.300/32".into());
    let bad = bad.route("192.168.70.1/24");
    write_in_place(&f, &bad.yaml());
    converge("manifest_error shown", Duration::from_secs(2), || {
        !s.watch()["manifest_error"].is_null()
    });
    let err = s.watch()["manifest_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        has_file_line_col(&err, &f) && err.lines().count() == 2,
        "{err}"
    );
    let t = text();
    assert!(t.contains("manifest error"), "no manifest error in:\n{t}");
    for line in err.lines() {
        assert!(
            t.lines().any(|l| l.trim() == line.trim()),
            "the text status lacks the line {line:?} of the manifest error:\n{t}"
        );
    }

    // A repair the kernel refuses: the last error shows too.
    s.ns.ip(&["route", "del", "192.168.60.0/24", "dev", "nm0"]);
    s.ns.ip(&["route", "add", "blackhole", "192.168.60.0/24"]);
    converge("last_error shown", Duration::from_secs(3), || {
        !s.watch()["last_error"].is_null()
    });
    let last = s.watch()["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let t = text();
    assert!(t.contains("last error"), "no last error in:\n{t}");
    for line in last.lines() {
        assert!(
            t.lines().any(|l| l.trim() == line.trim()),
            "the text status lacks the line {line:?} of the last error:\n{t}"
        );
    }
    // The manifest error stays until the file is fixed.
    assert!(t.contains("manifest error"), "{t}");
}

// ---------------------------------------------------------------------------
// 4. apply --confirm-timeout

#[test]
fn unconfirmed_apply_is_reverted_and_a_confirmed_one_is_kept() {
    let p = pair("conf");
    let (fa, _) = p.up();
    let (a, b) = (&p.a, &p.b);

    // Nothing pending: confirm says so.
    let (code, out, err) = a.nm().out(&["confirm"]);
    assert_ne!(code, 0, "confirm with nothing pending:\n{out}{err}");
    assert!(err.contains("nothing to confirm"), "{err}");

    // Site A's overlay address moves out of its subnet: B loses A.
    let mut moved = p.sa.clone();
    moved.addresses = vec!["10.20.0.1/24".into(), "fd10::1/64".into()];
    let fg = a.write("moved.yaml", &moved);
    let fg_s = fg.to_str().expect("path");
    let out = a.nm().ok(&["apply", "--confirm-timeout", "3", fg_s]);
    let t_applied = Instant::now();
    assert!(
        out.contains("netman confirm site-a"),
        "apply should tell how to confirm:\n{out}"
    );
    assert!(!a.has_addr("10.10.0.1/24") && a.has_addr("10.20.0.1/24"));
    assert!(!ping1(&b.ns, "10.10.0.1"), "10.10.0.1 still answers");

    // A second apply while one is pending is refused.
    let (code, out, err) = a.nm().out(&["apply", fa.to_str().expect("path")]);
    assert_ne!(code, 0, "a second apply while pending:\n{out}{err}");
    assert!(err.contains("netman confirm"), "{err}");
    assert!(
        a.has_addr("10.20.0.1/24"),
        "the refused apply changed things"
    );

    // The revert comes by itself at the deadline, not before.
    let t = converge("automatic revert after 3 s", Duration::from_secs(6), || {
        a.has_addr("10.10.0.1/24") && !a.has_addr("10.20.0.1/24")
    });
    let since = t_applied.elapsed();
    assert!(
        since >= Duration::from_millis(2800),
        "reverted too early: {since:?} after the apply (timeout 3 s)"
    );
    eprintln!("reverted {since:?} after the apply ({t:?} of polling)");
    assert!(
        wait_ping(&b.ns, "10.10.0.1", Duration::from_secs(5)),
        "no traffic after the revert"
    );
    ping_ok(&b.ns, "10.10.0.1", 3);
    let st = a.status();
    assert_eq!(st["manifest"]["path"], fa.display().to_string(), "{st:#}");
    assert_eq!(st["manifest"]["sha256"], sha256_hex(&p.sa.yaml()), "{st:#}");
    let log = log_with(&a.log_path(), &["no `netman confirm` before the deadline"]);
    assert!(
        log.contains("no `netman confirm` before the deadline"),
        "{log}"
    );
    let (code, _, err) = a.nm().out(&["confirm", "site-a"]);
    assert_ne!(code, 0, "confirm after the revert: {err}");
    assert!(err.contains("nothing to confirm"), "{err}");

    // The same, confirmed in time: kept past the deadline.
    let out = a.nm().ok(&["apply", "--confirm-timeout", "3", fg_s]);
    let t_applied = Instant::now();
    assert!(out.contains("netman confirm site-a"), "{out}");
    let out = a.nm().ok(&["confirm", "site-a"]);
    assert!(out.contains("confirmed"), "{out}");
    assert!(
        holds_for(
            Duration::from_secs(4).saturating_sub(t_applied.elapsed()),
            || a.has_addr("10.20.0.1/24") && !a.has_addr("10.10.0.1/24")
        ),
        "a confirmed apply was reverted"
    );
    assert!(!ping1(&b.ns, "10.10.0.1"));
    let st = a.status();
    assert_eq!(st["manifest"]["path"], fg.display().to_string(), "{st:#}");
    assert!(a.state_file()["pending_confirm"].is_null());
    let (code, _, err) = a.nm().out(&["confirm"]);
    assert_ne!(code, 0, "a second confirm: {err}");
    // Applies are allowed again.
    a.apply(&fa, &[]);
    assert!(wait_ping(&b.ns, "10.10.0.1", Duration::from_secs(5)));
}

/// While an apply waits for `netman confirm`, the watcher applies nothing,
/// not even a drift repair, and that is no failure (no error logged, no
/// `last_error`, no failure counted); once confirmed, the drift is
/// repaired.
#[test]
fn drift_while_a_confirmation_is_pending_waits_without_counting_failures() {
    let s = Site::new("pendd", "site-a");
    let spec = s.spec().route("192.168.50.0/24");
    let f = s.write("site-a.yaml", &spec);
    s.apply(&f, &[]);
    let g = s.write("g.yaml", &spec.clone().route("192.168.60.0/24"));
    s.nm().ok(&[
        "apply",
        "--confirm-timeout",
        "60",
        g.to_str().expect("path"),
    ]);
    s.settle();
    let f0 = s.counter("failures");
    s.ns.ip(&["route", "del", "192.168.50.0/24", "dev", "nm0"]);
    assert!(
        holds_for(Duration::from_millis(1500), || !s
            .has_route("192.168.50.0/24")),
        "drift was repaired while a confirmation is pending"
    );
    let w = s.watch();
    assert_eq!(w["failures"], f0, "{w:#}");
    assert!(w["last_error"].is_null(), "{w:#}");
    assert!(
        !s.log().contains("reconcile failed"),
        "a pending confirmation was logged as a failure:\n{}",
        tail(&s.log(), 6)
    );
    s.nm().ok(&["confirm", "site-a"]);
    converge(
        "the drift repaired after the confirmation",
        Duration::from_secs(13),
        || s.has_route("192.168.50.0/24"),
    );
    assert!(s.has_route("192.168.60.0/24"));
    assert_eq!(s.watch()["failures"], f0);
}

/// The pending revert survives a SIGKILL of the engine; the reverted file
/// (still on disk, at the watched path) is not applied again by the
/// watcher, not even by a new engine (`reverted_sha256`).
#[test]
fn pending_revert_survives_an_engine_restart_and_is_not_undone() {
    let s = Site::new("restart", "site-a");
    let v1 = s.spec().route("192.168.50.0/24");
    let f = s.write("site-a.yaml", &v1);
    let f_s = f.to_str().expect("path").to_string();
    // Applied without watching, so that the next edit of the same file is
    // not picked up before `apply --confirm-timeout` runs.
    s.apply(&f, &["--no-watch"]);
    assert_eq!(s.watch()["enabled"], false);
    let mut v2 = v1.clone();
    v2.routes.clear();
    v2.addresses = vec!["10.20.0.1/24".into(), "fd10::1/64".into()];
    write_in_place(&f, &v2.yaml());
    assert!(
        holds_for(Duration::from_millis(600), || s
            .has_route("192.168.50.0/24")),
        "--no-watch: the edited file was applied anyway"
    );

    s.nm().ok(&["apply", "--confirm-timeout", "4", &f_s]);
    let t_applied = Instant::now();
    assert!(!s.has_route("192.168.50.0/24") && s.has_addr("10.20.0.1/24"));
    let old = kill9_engine(&s);

    // Any apply is refused, but brings the engine back for the revert.
    let (code, out, err) = s.nm().out(&["apply", &f_s]);
    assert_ne!(code, 0, "apply while pending:\n{out}{err}");
    assert!(
        err.contains("restarted the engine") && err.contains("reverts on time"),
        "{err}"
    );
    assert!(err.contains("netman confirm"), "{err}");
    let new = s.engine_pid();
    assert_ne!(new, old);

    converge(
        "revert by the restarted engine",
        Duration::from_secs(7),
        || s.has_route("192.168.50.0/24") && s.has_addr("10.10.0.1/24"),
    );
    let since = t_applied.elapsed();
    assert!(
        since >= Duration::from_millis(3800),
        "reverted early: {since:?}"
    );
    // The routes are back before the revert is recorded.
    s.settle();
    let st = s.state_file();
    assert!(st["pending_confirm"].is_null(), "{st:#}");
    assert_eq!(st["reverted_sha256"], sha256_hex(&v2.yaml()), "{st:#}");
    assert_eq!(st["manifest"]["sha256"], sha256_hex(&v1.yaml()), "{st:#}");

    // The file still holds the reverted content: not re-applied...
    let in_force = || s.has_route("192.168.50.0/24") && !s.has_addr("10.20.0.1/24");
    assert!(
        holds_for(Duration::from_secs(2), in_force),
        "the watcher re-applied the reverted file"
    );
    // What keeps a new engine from doing so must still be recorded.
    let st = s.state_file();
    assert_eq!(
        st["reverted_sha256"],
        sha256_hex(&v2.yaml()),
        "reverted_sha256 was lost after the revert (a later no-op reconcile \
         saved the state without it): {st:#}"
    );
    // ... nor by a fresh engine, which has no memory but the state file.
    kill9_engine(&s);
    let elog = s.file("engine.log");
    let _engine = Bg::spawn_logged(
        "netman engine",
        &mut s.nm().cmd(&["engine", "site-a"]),
        &elog,
    );
    converge("the new engine answers", Duration::from_secs(5), || {
        s.nm()
            .out(&["status", "site-a", "--output", "json"])
            .1
            .contains("\"watch\"")
    });
    assert!(
        holds_for(Duration::from_millis(1500), in_force),
        "a new engine re-applied the reverted file: {}",
        std::fs::read_to_string(&elog).unwrap_or_default()
    );
    let w = s.watch();
    assert_eq!(w["applies"], 0, "{w:#}");
    assert!(w["manifest_error"].is_null(), "{w:#}");
    // It does watch that file: a real edit is applied.
    write_in_place(&f, &v1.clone().route("192.168.60.0/24").yaml());
    converge("an edit after the revert", Duration::from_secs(2), || {
        s.has_route("192.168.60.0/24")
    });
}

// ---------------------------------------------------------------------------
// 5. Watching off; no fighting

#[test]
fn watch_false_in_the_manifest_leaves_drift_for_diff() {
    let s = Site::new("nowatch", "site-a");
    let spec = s.spec().watch(false);
    let f = s.write("site-a.yaml", &spec);
    s.apply(&f, &[]);
    assert_eq!(s.watch()["enabled"], false);
    s.settle();
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    write_in_place(&f, &spec.clone().route("192.168.50.0/24").yaml());
    assert!(
        holds_for(Duration::from_secs(2), || !s.has_route("172.18.0.0/16")
            && !s.has_route("192.168.50.0/24")),
        "watch: false, yet the watcher acted"
    );
    let (code, out, _) = s.nm().out(&["diff"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l == "+ route 172.18.0.0/16 dev nm0"),
        "{out}"
    );
    let w = s.watch();
    assert_eq!(w["applies"], 0, "{w:#}");
    assert_eq!(w["drift_repairs"], 0, "{w:#}");
}

#[test]
fn no_watch_flag_overrides_the_manifest_until_the_next_apply() {
    let s = Site::new("noflag", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &["--no-watch"]);
    assert_eq!(s.watch()["enabled"], false);
    s.settle();
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    assert!(
        holds_for(Duration::from_secs(2), || !s.has_route("172.18.0.0/16")),
        "--no-watch, yet the route was repaired"
    );
    let (code, out, _) = s.nm().out(&["diff"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l == "+ route 172.18.0.0/16 dev nm0"),
        "{out}"
    );
    // An apply without the flag watches again.
    s.apply(&f, &[]);
    assert_eq!(s.watch()["enabled"], true);
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    converge("repair once watching again", Duration::from_secs(1), || {
        s.has_route("172.18.0.0/16")
    });
}

#[test]
fn quick_successive_writes_are_debounced_and_cause_no_loop() {
    let s = Site::new("debounce", "site-a");
    let base = s.spec();
    let f = s.write("site-a.yaml", &base);
    s.apply(&f, &[]);
    s.settle();
    let w0 = s.watch();
    let log0 = s.log().len();

    // Three writes in quick succession, as an editor or a script would.
    let v1 = base.clone().route("192.168.51.0/24");
    let v2 = v1.clone().route("192.168.52.0/24");
    let v3 = v2.clone().route("192.168.53.0/24");
    write_in_place(&f, &v1.yaml());
    write_by_rename(&f, &v2.yaml());
    write_in_place(&f, &v3.yaml());
    converge("the last write applied", Duration::from_secs(2), || {
        ["192.168.51.0/24", "192.168.52.0/24", "192.168.53.0/24"]
            .iter()
            .all(|r| s.has_route(r))
    });
    let settled = s.watch();
    // Nothing more happens afterwards: no apply/revert loop. Waiting is
    // the assertion here: a loop would go round several times within
    // NO_LOOP_WINDOW (each round: the watcher's own kernel events, 100 ms
    // of debounce, an apply).
    const NO_LOOP_WINDOW: Duration = Duration::from_secs(1);
    thread::sleep(NO_LOOP_WINDOW);
    let w = s.watch();
    assert_eq!(w, settled, "the watcher kept applying after it converged");
    let applies = w["applies"].as_u64().unwrap_or(0) - w0["applies"].as_u64().unwrap_or(0);
    let log = s.log();
    let new_log = &log[log0.min(log.len())..];
    let logged = count(new_log, "applied the changed manifest");
    assert!(
        (1..=2).contains(&applies) && (1..=2).contains(&logged),
        "3 quick writes gave {applies} applies ({logged} logged), expected 1 or 2:\n{new_log}"
    );
    assert_eq!(
        w["drift_repairs"], w0["drift_repairs"],
        "its own changes were taken for drift: {w:#}"
    );
    assert_eq!(w["failures"], 0, "{w:#}");
    assert_eq!(s.status()["manifest"]["sha256"], sha256_hex(&v3.yaml()));
}

/// A repair the kernel refuses half way (one route blocked by a foreign
/// route elsewhere) is reverted; the revert's own kernel events must not
/// start the same repair again and again.
#[test]
fn a_failing_repair_is_not_retried_in_an_apply_revert_loop() {
    let s = Site::new("loop", "site-a");
    let spec = s.spec().route("192.168.50.0/24").route("192.168.60.0/24");
    let f = s.write("site-a.yaml", &spec);
    s.apply(&f, &[]);
    s.settle();
    let f0 = s.counter("failures");
    // In one go: two owned routes deleted, one of them blocked by a
    // blackhole route of the same prefix and metric (another device).
    let mut batch =
        s.ns.cmd("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip -batch");
    std::io::Write::write_all(
        batch.stdin.as_mut().expect("stdin"),
        b"route del 192.168.60.0/24 dev nm0\nroute add blackhole 192.168.60.0/24\nroute del 192.168.50.0/24 dev nm0\n",
    )
    .expect("write batch");
    drop(batch.stdin.take());
    assert!(batch.wait().expect("ip -batch").success());
    // Waiting is the assertion here: how many attempts fit in 3 s. The
    // watcher backs off 1 s, then 2 s after a failure, so at most three;
    // a loop would make many more.
    const RETRY_WINDOW: Duration = Duration::from_secs(3);
    thread::sleep(RETRY_WINDOW);
    let w = s.watch();
    let failures = w["failures"].as_u64().unwrap_or(0) - f0;
    assert!(
        (1..=3).contains(&failures),
        "a repair that cannot succeed was attempted {failures} times in 3 s \
         (apply, fail, revert, kernel events, again...): {w:#}\nlog tail:\n{}",
        tail(&s.log(), 6)
    );
}

/// An automatic revert that fails (the previous manifest's key file is
/// gone) must not be retried in a tight loop.
#[test]
fn a_failing_automatic_revert_is_not_retried_in_a_tight_loop() {
    let s = Site::new("revfail", "site-a");
    let v1 = s.spec();
    let f = s.write("site-a.yaml", &v1);
    s.apply(&f, &[]);
    let k2 = s.file("second.key");
    std::fs::copy(&s.key.private_file, &k2).expect("copy key");
    let mut v2 = v1.clone();
    v2.key_file = k2;
    v2.addresses = vec!["10.20.0.1/24".into(), "fd10::1/64".into()];
    let g = s.write("g.yaml", &v2);
    s.nm()
        .ok(&["apply", "--confirm-timeout", "1", g.to_str().expect("path")]);
    let hidden = s.file("hidden.key");
    std::fs::rename(&s.key.private_file, &hidden).expect("hide key");
    converge(
        "the automatic revert fails",
        Duration::from_secs(10),
        || {
            s.watch()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("automatic revert"))
        },
    );
    // Waiting is the assertion here: after a failure the watcher waits
    // 1 s before it tries again; a tight loop would try hundreds of times
    // within RETRY_WINDOW.
    const RETRY_WINDOW: Duration = Duration::from_secs(1);
    thread::sleep(RETRY_WINDOW);
    let w = s.watch();
    let log_len = s.log().len();
    // Give the key back (ends any loop), then judge.
    std::fs::rename(&hidden, &s.key.private_file).expect("restore key");
    let failures = w["failures"].as_u64().unwrap_or(0);
    assert!(
        w["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("automatic revert")),
        "{w:#}"
    );
    assert!(
        failures <= 5 && log_len < 20_000,
        "a failing automatic revert was retried {failures} times in ~1 s \
         ({log_len} bytes of log)"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The engine died and the deadline passed with nobody to revert: the
/// next `apply` reverts first, then goes on.
#[test]
fn an_overdue_revert_is_carried_out_by_the_next_apply() {
    let s = Site::new("overdue", "site-a");
    let v1 = s.spec().route("192.168.50.0/24");
    let f = s.write("site-a.yaml", &v1);
    s.apply(&f, &[]);
    let mut v2 = v1.clone();
    v2.routes.clear();
    let g = s.write("g.yaml", &v2);
    s.nm()
        .ok(&["apply", "--confirm-timeout", "1", g.to_str().expect("path")]);
    kill9_engine(&s);
    let deadline_ms = s.state_file()["pending_confirm"]["deadline_ms"]
        .as_u64()
        .expect("pending_confirm.deadline_ms");
    converge(
        "the confirmation deadline passes",
        Duration::from_secs(5),
        || unix_now_ms() >= deadline_ms,
    );
    assert!(
        !s.has_route("192.168.50.0/24"),
        "reverted without an engine?"
    );
    let out = s.nm().ok(&["apply", f.to_str().expect("path")]);
    assert!(
        out.contains("reverted the unconfirmed apply of deployment site-a"),
        "{out}"
    );
    assert!(s.has_route("192.168.50.0/24"), "{out}");
    let st = s.state_file();
    assert!(st["pending_confirm"].is_null(), "{st:#}");
    assert_eq!(st["manifest"]["path"], f.display().to_string(), "{st:#}");
    let (code, out, _) = s.nm().out(&["diff"]);
    assert_eq!(code, 0, "engine and kernel in sync after it:\n{out}");
}

/// An `apply` of another manifest file takes a moment (10,000 routes);
/// the watcher, woken by its kernel events, must not put back the
/// manifest that was in force before.
#[test]
fn the_watcher_does_not_undo_an_apply_of_another_file() {
    let s = Site::new("race", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &[]);
    s.settle();
    let mut big = s.spec();
    big.routes = many_routes(0, 10_000);
    let g = s.write("big.yaml", &big);
    s.apply(&g, &[]);
    let n = || s.routes().len();
    assert!(n() >= 10_000, "{} routes right after the apply", n());
    assert!(
        holds_for(Duration::from_millis(1500), || n() >= 10_000),
        "the operator's apply of {} was undone by the watcher: {} routes left; log:\n{}",
        g.display(),
        n(),
        tail(&s.log(), 4)
    );
    let st = s.status();
    assert_eq!(st["manifest"]["path"], g.display().to_string(), "{st:#}");
    let (code, out, _) = s.nm().out(&["diff", g.to_str().expect("path")]);
    assert_eq!(code, 0, "{}", tail(&out, 5));
}

/// The engine died; the next `apply` (of another file) starts a new one,
/// whose watcher must not put back the manifest that was in force before.
#[test]
fn an_apply_that_restarts_the_engine_is_not_undone_by_it() {
    let s = Site::new("respawn", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &[]);
    kill9_engine(&s);
    let g = s.write("g.yaml", &s.spec().route("192.168.50.0/24"));
    let out = s.apply(&g, &[]);
    assert!(out.contains("+ engine site-a"), "{out}");
    assert!(
        holds_for(Duration::from_secs(1), || s.has_route("192.168.50.0/24")),
        "the restarted engine undid the apply that started it; log:\n{}",
        tail(&s.log(), 4)
    );
    let st = s.status();
    assert_eq!(st["manifest"]["path"], g.display().to_string(), "{st:#}");
}

/// Removing the interface's last IPv4 address makes the kernel flush every
/// IPv4 route of the device; an apply that does so while keeping IPv4
/// routes must still end with those routes in place.
#[test]
fn removing_the_last_ipv4_address_keeps_the_ipv4_routes() {
    let s = Site::new("lastv4", "site-a");
    let v1 = s.spec().watch(false);
    let f = s.write("site-a.yaml", &v1);
    s.apply(&f, &[]);
    let mut v2 = v1.clone();
    v2.addresses = vec!["fd10::1/64".into()];
    let g = s.write("v6only.yaml", &v2);
    let (code, out, err) = s.nm().out(&["apply", g.to_str().expect("path")]);
    assert_eq!(
        code, 0,
        "apply of a manifest without IPv4 address failed:\n{out}{err}"
    );
    assert!(s.has_route("10.10.0.2/32") && s.has_route("172.18.0.0/16"));
    let (code, out, _) = s.nm().out(&["diff", g.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}");
}

// ---------------------------------------------------------------------------
// 6. Interrupted and killed applies

/// Start `netman apply FILE` and send `sig` once `nm0` has appeared (seen
/// through `ip monitor link`) plus `delay`; returns (exit code, stdout,
/// stderr).
fn apply_interrupted(
    s: &Site,
    file: &Path,
    sig: libc::c_int,
    delay: Duration,
) -> (i32, String, String) {
    apply_signalled(s, file, sig, "link", delay)
}

/// Start `netman apply FILE` and send `sig` `delay` after the first
/// `ip monitor OBJECTS` line about nm0 (the apply's first kernel change);
/// returns (exit code or -1 if killed, stdout, stderr).
fn apply_signalled(
    s: &Site,
    file: &Path,
    sig: libc::c_int,
    objects: &str,
    delay: Duration,
) -> (i32, String, String) {
    let objects: Vec<&str> = objects.split_whitespace().collect();
    let mon = Monitor::ip(&s.ns, &objects);
    let from = mon.len();
    let child = s
        .nm()
        .cmd(&["apply", file.to_str().expect("path")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netman apply");
    let pid = child.id();
    let seen = mon.wait(Duration::from_secs(20), |lines| {
        lines[from..].iter().any(|l| l.contains("nm0"))
    });
    if seen {
        // The delay is the point of the test (where in the apply the
        // signal lands), not a wait for something.
        thread::sleep(delay);
        // The apply may be over already (then kill fails with ESRCH unless
        // it is a zombie: both fine).
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
    let out = child.wait_with_output().expect("wait apply");
    drop(mon);
    assert!(seen, "nm0 never appeared");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigint_or_sigterm_mid_apply_reverts_what_it_had_done() {
    let s = Site::new("sigterm", "site-a");
    let mut spec = s.spec();
    spec.routes = many_routes(0, 10_000);
    let f = s.write("big.yaml", &spec);
    let before = s.ns.snapshot();
    let mut interrupted = [0u32; 2];
    let mut finished = 0u32;
    let delays = [0u64, 0, 40, 40, 120, 120];
    for (i, d) in delays.iter().enumerate() {
        let (sig, which) = if i % 2 == 0 {
            (libc::SIGTERM, 0)
        } else {
            (libc::SIGINT, 1)
        };
        let (code, out, err) = apply_interrupted(&s, &f, sig, Duration::from_millis(*d));
        if code == 0 {
            // Finished before the signal: acceptable; start again clean.
            assert!(out.contains("applied: deployment site-a"), "{out}{err}");
            finished += 1;
            s.nm().ok(&["down"]);
        } else {
            assert_eq!(code, 1, "attempt {i}:\n{out}{err}");
            assert!(
                err.contains("interrupted by a signal"),
                "attempt {i}: a failed apply should say it was interrupted:\n{out}{err}"
            );
            assert!(!err.contains("the revert failed"), "attempt {i}:\n{err}");
            interrupted[which] += 1;
            assert!(
                !s.state_dir().join("site-a.json").exists(),
                "attempt {i}: a reverted first apply left its state file"
            );
            assert!(
                live_pids(&s.ns).is_empty(),
                "attempt {i}: processes left in the namespace"
            );
        }
        let after = s.ns.snapshot();
        assert!(
            after == before,
            "attempt {i} (signal {sig}, +{d} ms, exit {code}): the namespace differs:\n{}\n{err}",
            snapshot_diff(&before, &after)
        );
    }
    eprintln!("interrupted (TERM, INT): {interrupted:?}, finished: {finished}");
    assert!(
        interrupted[0] >= 1 && interrupted[1] >= 1,
        "never caught an apply mid-way with both signals: {interrupted:?}"
    );
}

#[test]
fn sigkill_mid_apply_then_apply_or_down_converges() {
    let s = Site::new("sigkill", "site-a");
    // watch: false, so that it is the next `apply` (not the engine) that
    // converges from the recorded state.
    let mut a = s.spec().watch(false);
    a.routes = many_routes(0, 5000);
    let mut b = a.clone().mtu(1400);
    b.routes = many_routes(2500, 5000);
    b.addresses = vec!["10.10.0.1/24".into(), "fd11::1/64".into()];
    let files = [s.write("a.yaml", &a), s.write("b.yaml", &b)];
    let before = s.ns.snapshot();
    let mut rng = Rng::new();
    let seed = rng.0;
    let rounds = 6;
    // Which manifest is in force (index into `files`).
    let mut current: Option<usize> = None;
    let mut mid_way = 0;
    for i in 0..rounds {
        // Always kill an apply that has work to do: the other manifest.
        let target = current.map_or(0, |c| 1 - c);
        // Even rounds: a random delay after the start; odd rounds: a
        // random delay after the first kernel change (mid-way for sure).
        let (delay, code) = if i % 2 == 0 {
            let delay = rng.below(151);
            let mut child = s
                .nm()
                .cmd(&["apply", files[target].to_str().expect("path")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn apply");
            // The delay is the point of the test, not a wait for something.
            thread::sleep(Duration::from_millis(delay));
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let st = child.wait().expect("wait");
            (
                format!("{delay} ms after its start"),
                st.code().unwrap_or(-1),
            )
        } else {
            let delay = rng.below(41);
            let (code, _, _) = apply_signalled(
                &s,
                &files[target],
                libc::SIGKILL,
                "link address route",
                Duration::from_millis(delay),
            );
            (format!("{delay} ms after its first kernel change"), code)
        };
        let killed = code == -1;
        mid_way += usize::from(killed);
        eprintln!(
            "round {i}: apply {} killed {delay}: {}",
            files[target].display(),
            if killed { "mid-way" } else { "had finished" }
        );
        if i == rounds - 1 {
            break;
        }
        // An apply that finished before the kill has poked the engine;
        // let the engine's reconcile pass (see below).
        s.settle();
        // The next apply converges: of the killed manifest, or of the
        // one in force before (a change of mind).
        let next = match current {
            Some(c) if rng.below(2) == 0 => c,
            _ => target,
        };
        let t0 = Instant::now();
        let (code, out, err) = s.nm().out(&["apply", files[next].to_str().expect("path")]);
        assert!(
            code == 0 && !out.contains("File exists") && !err.contains("File exists"),
            "round {i} (seed {seed}, killed after {delay} ms): apply {} after SIGKILL:\n{}\n{err}",
            files[next].display(),
            tail(&out, 10)
        );
        eprintln!(
            "round {i}: apply {} took {:?}",
            files[next].display(),
            t0.elapsed()
        );
        let (code, out, err) = s.nm().out(&["diff", files[next].to_str().expect("path")]);
        assert_eq!(code, 0, "round {i}: diff:\n{}\n{err}", tail(&out, 10));
        current = Some(next);
        // The engine answers each successful apply's poke with a reconcile
        // of its own (even with `watch: false`); let it finish, so that it
        // cannot race the next round's applies (see
        // the_watcher_does_not_undo_an_apply_of_another_file).
        s.settle();
    }
    assert!(
        mid_way >= 2,
        "only {mid_way} applies were killed mid-way in {rounds} rounds; use more routes"
    );
    // Killed once more, then down: the namespace is as before the first apply.
    let (code, out, err) = s.nm().out(&["down"]);
    assert!(
        code == 0 && !err.contains("File exists"),
        "down after SIGKILL (seed {seed}):\n{}{err}",
        tail(&out, 10)
    );
    assert!(
        wait_until(Duration::from_secs(5), || live_pids(&s.ns).is_empty()),
        "processes left in the namespace after down"
    );
    let after = s.ns.snapshot();
    assert!(
        after == before,
        "down left the namespace different (seed {seed}):\n{}",
        snapshot_diff(&before, &after)
    );
    assert!(!s.state_dir().join("site-a.json").exists());
}

#[test]
fn confirm_timeout_covers_a_change_the_watcher_applied_first() {
    // The `netplan try` habit: save the edited manifest, then
    // `apply --confirm-timeout` it. The watcher has applied the saved file
    // before the command runs; the timeout must still protect the change.
    let p = pair("tryw");
    let (fa, _) = p.up();
    let (a, b) = (&p.a, &p.b);
    let mut moved = p.sa.clone();
    moved.addresses = vec!["10.20.0.1/24".into(), "fd10::1/64".into()];
    write_in_place(&fa, &moved.yaml());
    converge(
        "the watcher applies the saved file",
        Duration::from_secs(3),
        || a.has_addr("10.20.0.1/24"),
    );
    assert!(!ping1(&b.ns, "10.10.0.1"), "10.10.0.1 still answers");
    let out = a.nm().ok(&[
        "apply",
        "--confirm-timeout",
        "3",
        fa.to_str().expect("path"),
    ]);
    assert!(out.contains("no changes"), "{out}");
    assert!(out.contains("netman confirm site-a"), "{out}");
    assert!(!a.state_file()["pending_confirm"].is_null());
    converge("automatic revert after 3 s", Duration::from_secs(7), || {
        a.has_addr("10.10.0.1/24") && !a.has_addr("10.20.0.1/24")
    });
    assert!(
        wait_ping(&b.ns, "10.10.0.1", Duration::from_secs(5)),
        "no traffic after the revert"
    );
    // The reverted file is not applied again by the watcher.
    assert!(
        holds_for(Duration::from_secs(2), || a.has_addr("10.10.0.1/24")),
        "the watcher re-applied the reverted file"
    );
    // A plain apply of an unchanged manifest arms nothing.
    let mut again = p.sa.clone();
    again.routes.push("192.168.77.0/24".into());
    let f2 = a.write("again.yaml", &again);
    a.apply(&f2, &[]);
    let out = a.nm().ok(&[
        "apply",
        "--confirm-timeout",
        "3",
        f2.to_str().expect("path"),
    ]);
    assert!(out.contains("no changes"), "{out}");
    assert!(!out.contains("netman confirm"), "{out}");
    assert!(a.state_file()["pending_confirm"].is_null());
}

// ---------------------------------------------------------------------------
// 7. The files the watcher reads

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn a_fifo_in_place_of_the_manifest_does_not_stop_the_watcher() {
    let s = Site::new("fifo", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &[]);
    // The engine's files in the state dir are for root only.
    let cfg = s.state_dir().join(format!("{}.engine.json", s.deployment));
    for p in [s.log_path(), cfg] {
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }
    s.settle();

    // The manifest replaced (by rename) with a FIFO nobody writes to.
    let tmp = f.with_file_name(".site-a.yaml.fifo");
    let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    std::fs::rename(&tmp, &f).expect("rename the FIFO over the manifest");
    converge(
        "the watcher reports the FIFO",
        Duration::from_secs(5),
        || {
            s.watch()["manifest_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a regular file"))
        },
    );
    let w = s.watch();
    let e = w["manifest_error"].as_str().unwrap_or_default();
    assert!(e.contains(&f.display().to_string()), "{w:#}");

    // It still repairs drift.
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    converge("deleted route restored", Duration::from_secs(2), || {
        s.has_route("172.18.0.0/16")
    });

    // And a regular file in its place again is followed again.
    std::fs::remove_file(&f).expect("rm fifo");
    write_by_rename(&f, &s.spec().route("192.168.50.0/24").yaml());
    converge("the new file applied", Duration::from_secs(5), || {
        s.has_route("192.168.50.0/24")
    });
    converge("the error cleared", Duration::from_secs(2), || {
        s.watch()["manifest_error"].is_null()
    });
}

#[test]
fn the_watcher_reads_the_state_file_only_when_it_changed() {
    let s = Site::new("streads", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &[]);
    s.settle();
    let counters = || {
        let st = s.status();
        let c = st["engine"]["watch_counters"].clone();
        let n = |k: &str| {
            c[k].as_u64()
                .unwrap_or_else(|| panic!("engine.watch_counters.{k} is not a number: {st:#}"))
        };
        (n("events"), n("state_reads"))
    };
    let (events0, reads0) = counters();

    // 2,000 routes applied (from another file, so the watcher does not
    // race the apply for the edit): a netlink event for each.
    let mut big = s.spec();
    big.routes = many_routes(0, 2000);
    let fb = s.write("big.yaml", &big);
    s.apply(&fb, &[]);
    converge("the route events seen", Duration::from_secs(10), || {
        counters().0 >= events0 + 1000
    });
    s.settle();
    let (events, reads) = counters();
    let (events, reads) = (events - events0, reads - reads0);
    eprintln!("{events} netlink events, {reads} state file reads");
    assert!(
        reads <= 20,
        "the watcher read the state file {reads} times for {events} events"
    );
    // A change of the state file by someone else is still seen: a pending
    // confirmation made by the CLI (which pokes) ...
    let out = s.apply(&f, &["--confirm-timeout", "60"]);
    assert!(out.contains("netman confirm"), "{out}");
    s.nm().ok(&["confirm"]);
    // ... and drift is still repaired from the state in force (once the
    // watcher has taken the confirm's poke: a kernel event that comes
    // while a poke waits is taken for part of what poked).
    s.settle();
    s.ns.ip(&["route", "del", "172.18.0.0/16", "dev", "nm0"]);
    converge("deleted route restored", Duration::from_secs(2), || {
        s.has_route("172.18.0.0/16")
    });
    assert!(
        !s.has_route("10.100.0.0/24"),
        "the big manifest is not in force any more"
    );
}

/// The transmit queue length set by hand is put back like the MTU
/// (`interface.txqueuelen` is owned state, issue 15).
#[test]
fn txqueuelen_changed_by_hand_is_put_back() {
    let s = Site::new("qlen", "site-a");
    let f = s.write("site-a.yaml", &s.spec());
    s.apply(&f, &[]);
    s.settle();
    let qlen = || common::link_qlen(&s.ns, "nm0");
    assert_eq!(qlen(), Some(500));
    s.ns.ip(&["link", "set", "nm0", "txqueuelen", "1000"]);
    let t = converge("txqueuelen put back", Duration::from_secs(1), || {
        qlen() == Some(500)
    });
    eprintln!("txqueuelen put back after {t:?}");
}
