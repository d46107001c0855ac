//! Forwarding-engine integration tests: whole sites in network namespaces
//! (root required, as in CI), joined by veth underlays, running the real
//! binary (`netman apply` starts the detached engine), checked with ping,
//! iperf3, `netman status --output json`, and against wireguard-go and
//! boringtun-cli peers. Every test builds its own uniquely named
//! namespaces and temp dirs and removes them on drop (also on failure);
//! missing tools make a test fail with the package to install.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    Bg, KeyPair, NetNs, Relay, RelayFaults, Site, TempDir, Userspace, UserspaceWg, iperf_tcp,
    netman_genkey, netman_pubkey, parse_ping, ping, ping_fails, ping_ok, require_tool, run, run_ok,
    tcp_transfer, underlay, unique, unix_now, veth, wait_ping, wait_until, write_mode,
};

/// Port every site listens on (each site has its own namespace).
const WG_PORT: u16 = 51820;
/// iperf3 port (per namespace, so it can repeat across tests).
const IPERF_PORT: u16 = 5201;
/// iperf3 pacing: keeps the load of a test bounded on a shared machine.
const IPERF_RATE: &str = "100M";

/// One peer entry of a manifest.
struct PeerDef {
    name: String,
    public_key: String,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
    preshared_key_file: Option<PathBuf>,
}

impl PeerDef {
    fn new(name: &str, public_key: &str, endpoint: &str, allowed_ips: &[&str]) -> PeerDef {
        PeerDef {
            name: name.to_string(),
            public_key: public_key.to_string(),
            endpoint: Some(endpoint.to_string()),
            allowed_ips: allowed_ips.iter().map(ToString::to_string).collect(),
            preshared_key_file: None,
        }
    }

    fn psk(mut self, file: &Path) -> PeerDef {
        self.preshared_key_file = Some(file.to_path_buf());
        self
    }
}

/// A manifest (v1) for one site.
fn manifest(name: &str, addresses: &[&str], key_file: &Path, peers: &[PeerDef]) -> String {
    let mut m = format!(
        "name: {name}\ninterface:\n  name: nm0\n  addresses: [{}]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers:\n",
        addresses.join(", "),
        key_file.display()
    );
    for p in peers {
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
        if let Some(f) = &p.preshared_key_file {
            m.push_str(&format!("    preshared_key_file: {}\n", f.display()));
        }
    }
    m
}

impl Site {
    /// Write a manifest file; returns its path.
    fn write(&self, file: &str, text: &str) -> String {
        self.dir.write(file, text).display().to_string()
    }

    /// `netman apply FILE`; must succeed; returns stdout.
    fn apply(&self, file: &str) -> String {
        self.nm().ok(&["apply", file])
    }

    /// The `engine` object of `status NAME --output json` (must be running).
    fn engine_status(&self) -> serde_json::Value {
        let out = self
            .nm()
            .ok(&["status", &self.deployment, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status JSON of {}: {e}: {out}", self.deployment));
        let engine = v[0]["engine"].clone();
        assert!(
            engine.is_object(),
            "the engine of {} is not running: {out}",
            self.deployment
        );
        engine
    }

    /// The status of one peer, by name.
    fn peer_status(&self, peer: &str) -> serde_json::Value {
        let st = self.engine_status();
        st["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == peer))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "{} has no peer {peer} in its status: {st:#}",
                    self.deployment
                )
            })
    }

    /// Wait until `n` more echo replies (128-byte transport messages, see
    /// `rx_bytes`) came from `peer` than in `before` (its earlier status):
    /// a ping started in the background is under way.
    fn wait_replies(&self, peer: &str, before: &serde_json::Value, n: u64) -> bool {
        let rx0 = u64_of(&before["rx_bytes"], "rx_bytes");
        wait_until(Duration::from_secs(10), || {
            u64_of(&self.peer_status(peer)["rx_bytes"], "rx_bytes") >= rx0 + n * 128
        })
    }

    fn engine_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join(format!("{}.log", self.deployment)))
            .unwrap_or_default()
    }
}

fn u64_of(v: &serde_json::Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// Two sites joined by a veth underlay 192.0.2.1/24 -- 192.0.2.2/24, with
/// overlay 10.10.0.1/24 + fd10::1/64 and .2, each the other's peer.
struct Pair {
    a: Site,
    b: Site,
    ma: String,
    mb: String,
}

/// Build (but do not apply) a pair. `a_extra`/`b_extra` are more allowed
/// IPs for the peer entry *of the other site* in A's/B's manifest; `psk`
/// configures one preshared key on both sides.
fn pair(tag: &str, a_extra: &[&str], b_extra: &[&str], psk: Option<&Path>) -> Pair {
    let a = Site::new(&format!("{tag}a"), "site-a");
    let b = Site::new(&format!("{tag}b"), "site-b");
    underlay(&a.ns, &b.ns);
    let mut a_ips = vec!["10.10.0.2/32", "fd10::2/128"];
    a_ips.extend_from_slice(a_extra);
    let mut b_ips = vec!["10.10.0.1/32", "fd10::1/128"];
    b_ips.extend_from_slice(b_extra);
    let mut pa = PeerDef::new(
        "site-b",
        &b.key.public,
        &format!("192.0.2.2:{WG_PORT}"),
        &a_ips,
    );
    let mut pb = PeerDef::new(
        "site-a",
        &a.key.public,
        &format!("192.0.2.1:{WG_PORT}"),
        &b_ips,
    );
    if let Some(f) = psk {
        pa = pa.psk(f);
        pb = pb.psk(f);
    }
    let ma = a.write(
        "site-a.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24", "fd10::1/64"],
            &a.key.private_file,
            &[pa],
        ),
    );
    let mb = b.write(
        "site-b.yaml",
        &manifest(
            "site-b",
            &["10.10.0.2/24", "fd10::2/64"],
            &b.key.private_file,
            &[pb],
        ),
    );
    Pair { a, b, ma, mb }
}

/// Whether a process is gone: no such pid, or every one of its threads is
/// a zombie (not reaped yet). The thread-group leader turns zombie before
/// the other threads have finished exiting, and the process's descriptors
/// (e.g. a listening control socket) are only closed by the last one.
fn pid_gone(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks
        .flatten()
        .all(|t| match std::fs::read_to_string(t.path().join("stat")) {
            Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| {
                matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
            }),
            Err(_) => true,
        })
}

fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

/// Live processes in a namespace (zombies excluded).
fn live_pids(ns: &NetNs) -> Vec<u32> {
    ns.pids().into_iter().filter(|p| !pid_gone(*p)).collect()
}

// ---------------------------------------------------------------------------
// 1. Two sites

#[test]
fn two_sites_carry_v4_v6_and_tcp_and_down_removes_everything() {
    let p = pair("ts", &[], &[], None);
    let (a, b) = (&p.a, &p.b);

    // Keys were made by netman genkey/pubkey into 0600 files.
    for s in [a, b] {
        let mode = std::fs::metadata(&s.key.private_file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("key file metadata");
        assert_eq!(mode, 0o600);
    }

    let out_a = a.apply(&p.ma);
    let out_b = b.apply(&p.mb);
    for (out, name) in [(&out_a, "site-a"), (&out_b, "site-b")] {
        assert!(has_line(out, "+ link nm0 (tun, mtu 1420)"), "{out}");
        assert!(
            has_line(out, &format!("+ engine {name} (not running)")),
            "{out}"
        );
        assert!(
            has_line(out, &format!("applied: deployment {name}")),
            "{out}"
        );
    }

    ping_ok(&a.ns, "10.10.0.2", 3);
    ping_ok(&a.ns, "fd10::2", 3);
    ping_ok(&b.ns, "10.10.0.1", 3);
    ping_ok(&b.ns, "fd10::1", 3);

    let before_a = a.peer_status("site-b");
    let before_b = b.peer_status("site-a");
    let perf = iperf_tcp(
        &a.ns,
        &b.ns,
        "10.10.0.2",
        IPERF_PORT,
        &["-t", "2", "-b", IPERF_RATE],
    );

    let st = a.engine_status();
    let peer = a.peer_status("site-b");
    let now = unix_now();
    let hs = u64_of(&peer["latest_handshake"], "latest_handshake");
    assert!(
        hs <= now + 1 && now.saturating_sub(hs) <= 60,
        "latest handshake {hs} is not within the last minute of {now}: {st:#}"
    );
    let tx = u64_of(&peer["tx_bytes"], "tx_bytes");
    let rx = u64_of(&peer["rx_bytes"], "rx_bytes");
    let tx_during = tx.saturating_sub(u64_of(&before_a["tx_bytes"], "tx_bytes"));
    assert!(
        tx_during >= perf.sent_bytes,
        "site-a sent {tx_during} bytes to site-b during iperf3, which sent {} payload bytes",
        perf.sent_bytes
    );
    assert!(rx > 0 && tx > 0, "{peer:#}");
    // The receiving side counted at least what iperf3 received.
    let b_rx = u64_of(&b.peer_status("site-a")["rx_bytes"], "rx_bytes")
        .saturating_sub(u64_of(&before_b["rx_bytes"], "rx_bytes"));
    assert!(
        b_rx >= perf.received_bytes,
        "site-b received {b_rx} bytes from site-a, iperf3 received {}",
        perf.received_bytes
    );
    // And the engine answered with a sensible identity.
    assert_eq!(st["public_key"], a.key.public.as_str());
    assert_eq!(
        u64_of(&st["listen_port"], "listen_port"),
        u64::from(WG_PORT)
    );

    // down on both: no netman link, no engine process left.
    let pids = [
        u64_of(&st["pid"], "pid") as u32,
        u64_of(&b.engine_status()["pid"], "pid") as u32,
    ];
    for (s, pid) in [(a, pids[0]), (b, pids[1])] {
        let out = s.nm().ok(&["down", &s.deployment]);
        assert!(
            has_line(&out, &format!("- engine {}", s.deployment)),
            "{out}"
        );
        assert!(has_line(&out, "- link nm0"), "{out}");
        assert!(
            wait_until(Duration::from_secs(5), || pid_gone(pid)),
            "engine pid {pid} of {} still runs after down",
            s.deployment
        );
        let links = s.ns.ip(&["-d", "link", "show"]);
        assert!(
            !links.contains("netman:") && !links.contains("nm0"),
            "netman link left in {}:\n{links}",
            s.ns.name
        );
        assert!(
            live_pids(&s.ns).is_empty(),
            "processes left in {}: {:?}",
            s.ns.name,
            live_pids(&s.ns)
        );
        let (code, _, _) = s.nm().out(&["status", &s.deployment]);
        assert_ne!(code, 0, "status still finds {} after down", s.deployment);
    }
}

// ---------------------------------------------------------------------------
// 2. A LAN behind each site (the original scenario)

/// A bridge `br` with `gw_cidr` in the gateway namespace, and a
/// "container" namespace on it with `addr_cidr` and a default route via
/// the gateway.
fn lan(gw: &NetNs, br: &str, gw_cidr: &str, tag: &str, addr_cidr: &str, gw_addr: &str) -> NetNs {
    let c = NetNs::new(tag);
    gw.ip(&["link", "add", br, "type", "bridge"]);
    gw.ip(&["addr", "add", gw_cidr, "dev", br]);
    gw.ip(&["link", "set", br, "up"]);
    veth(gw, "lan0", None, &c, "eth0", Some(addr_cidr));
    gw.ip(&["link", "set", "lan0", "master", br]);
    c.ip(&["route", "add", "default", "via", gw_addr]);
    c
}

fn enable_forwarding(ns: &NetNs) {
    require_tool("sysctl", "the Debian package procps");
    run_ok(ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
}

#[test]
fn containers_in_lans_behind_two_sites_reach_each_other() {
    let p = pair("lan", &["172.18.2.0/24"], &["172.18.1.0/24"], None);
    let (a, b) = (&p.a, &p.b);
    let ca = lan(
        &a.ns,
        "br-a",
        "172.18.1.1/24",
        "lanca",
        "172.18.1.2/24",
        "172.18.1.1",
    );
    let cb = lan(
        &b.ns,
        "br-b",
        "172.18.2.1/24",
        "lancb",
        "172.18.2.2/24",
        "172.18.2.1",
    );
    enable_forwarding(&a.ns);
    enable_forwarding(&b.ns);

    let out = a.apply(&p.ma);
    assert!(has_line(&out, "+ route 172.18.2.0/24 dev nm0"), "{out}");
    let out = b.apply(&p.mb);
    assert!(has_line(&out, "+ route 172.18.1.0/24 dev nm0"), "{out}");

    let tx_before = u64_of(&a.peer_status("site-b")["tx_bytes"], "tx_bytes");
    let s = ping(&ca, "172.18.2.2", 3, "0.2");
    assert!(
        s.received == 3 && s.duplicates == 0,
        "container A -> container B:\n{}",
        s.output
    );
    // Two routers on the way (the gateways): the reply arrives with TTL 62.
    assert!(
        s.output.contains("ttl=62"),
        "expected replies routed by both gateways:\n{}",
        s.output
    );
    let tx_after = u64_of(&a.peer_status("site-b")["tx_bytes"], "tx_bytes");
    assert!(
        tx_after > tx_before,
        "the container traffic did not go through site-a's tunnel"
    );
    ping_ok(&cb, "172.18.1.2", 3);
}

// ---------------------------------------------------------------------------
// 3. Interop with wireguard-go and boringtun-cli

/// `wg genkey` / `wg pubkey`, the private key in a 0600 file.
fn wg_keypair(dir: &Path, name: &str) -> KeyPair {
    require_tool("wg", "the Debian package wireguard-tools");
    let private = run_ok(Command::new("wg").arg("genkey")).trim().to_string();
    let public = wg_pubkey(&private);
    let private_file = dir.join(format!("{name}.key"));
    write_mode(&private_file, &format!("{private}\n"), 0o600);
    KeyPair {
        private_file,
        private,
        public,
    }
}

fn wg_pubkey(private: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn wg pubkey");
    child
        .stdin
        .take()
        .expect("wg pubkey stdin")
        .write_all(format!("{private}\n").as_bytes())
        .expect("write to wg pubkey");
    let out = child.wait_with_output().expect("wg pubkey");
    assert!(out.status.success(), "wg pubkey failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn interop(kind: Userspace, netman_initiates: bool) {
    let n = Site::new("ion", "site-n");
    let peer_ns = NetNs::new("iop");
    let peer_dir = TempDir::new("iop");
    underlay(&n.ns, &peer_ns);
    let pk = wg_keypair(&peer_dir.path, "peer");
    // The key formats agree both ways.
    assert_eq!(netman_pubkey(&pk.private), pk.public);
    assert_eq!(wg_pubkey(&n.key.private), n.key.public);

    let ifname = unique("wg");
    let log = peer_dir.join("daemon.log");
    let _daemon = UserspaceWg::start(kind, &peer_ns, &ifname, &log);
    run_ok(peer_ns.cmd("wg").args([
        "set",
        &ifname,
        "private-key",
        pk.private_file.to_str().expect("utf-8 path"),
        "listen-port",
        &WG_PORT.to_string(),
        "peer",
        &n.key.public,
        "allowed-ips",
        "10.10.0.1/32,fd10::1/128",
        "endpoint",
        &format!("192.0.2.1:{WG_PORT}"),
    ]));
    peer_ns.ip(&["addr", "add", "10.10.0.2/24", "dev", &ifname]);
    peer_ns.ip(&["addr", "add", "fd10::2/64", "dev", &ifname, "nodad"]);
    peer_ns.ip(&["link", "set", "dev", &ifname, "mtu", "1420", "up"]);

    let m = n.write(
        "site-n.yaml",
        &manifest(
            "site-n",
            &["10.10.0.1/24", "fd10::1/64"],
            &n.key.private_file,
            &[PeerDef::new(
                "peer",
                &pk.public,
                &format!("192.0.2.2:{WG_PORT}"),
                &["10.10.0.2/32", "fd10::2/128"],
            )],
        ),
    );
    n.apply(&m);

    // The first packet decides who initiates the handshake.
    if netman_initiates {
        ping_ok(&n.ns, "10.10.0.2", 3);
    } else {
        ping_ok(&peer_ns, "10.10.0.1", 3);
    }
    let st = n.peer_status("peer");
    assert!(u64_of(&st["handshakes"], "handshakes") >= 1, "{st:#}");
    let attempts = u64_of(&st["handshake_attempts"], "handshake_attempts");
    if netman_initiates {
        assert!(attempts >= 1, "netman sent no initiation: {st:#}");
    } else {
        assert_eq!(
            attempts, 0,
            "netman initiated although {kind:?} spoke first: {st:#}"
        );
    }

    ping_ok(&n.ns, "10.10.0.2", 3);
    ping_ok(&peer_ns, "10.10.0.1", 3);
    ping_ok(&n.ns, "fd10::2", 3);
    ping_ok(&peer_ns, "fd10::1", 3);
    let to_peer = iperf_tcp(
        &n.ns,
        &peer_ns,
        "10.10.0.2",
        IPERF_PORT,
        &["-t", "2", "-b", IPERF_RATE],
    );
    let to_netman = iperf_tcp(
        &peer_ns,
        &n.ns,
        "10.10.0.1",
        IPERF_PORT,
        &["-t", "2", "-b", IPERF_RATE],
    );

    // The peer agrees: it knows netman's endpoint, has a handshake and
    // counted the traffic. `wg show dump` peer line: public-key psk
    // endpoint allowed-ips latest-handshake rx tx keepalive.
    let dump = run_ok(peer_ns.cmd("wg").args(["show", &ifname, "dump"]));
    let line = dump
        .lines()
        .find(|l| l.starts_with(&n.key.public))
        .unwrap_or_else(|| panic!("{kind:?} does not list netman as a peer:\n{dump}"));
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        f.get(2),
        Some(&format!("192.0.2.1:{WG_PORT}").as_str()),
        "{line}"
    );
    let hs: u64 = f.get(4).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(hs > 0, "{kind:?} reports no handshake: {line}");
    let peer_rx: u64 = f.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    let peer_tx: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        peer_rx >= to_peer.received_bytes && peer_tx >= to_netman.sent_bytes,
        "{kind:?} counted rx {peer_rx} / tx {peer_tx}; iperf3 moved {} / {}",
        to_peer.received_bytes,
        to_netman.sent_bytes
    );
}

#[test]
fn interop_wireguard_go_netman_initiates() {
    interop(Userspace::WireguardGo, true);
}

#[test]
fn interop_wireguard_go_peer_initiates() {
    interop(Userspace::WireguardGo, false);
}

#[test]
fn interop_boringtun_netman_initiates() {
    interop(Userspace::Boringtun, true);
}

#[test]
fn interop_boringtun_peer_initiates() {
    interop(Userspace::Boringtun, false);
}

// ---------------------------------------------------------------------------
// 4. Live update

#[test]
fn live_update_removes_and_adds_peers_without_disturbing_the_others() {
    let a = Site::new("lua", "site-a");
    a.ns.ip(&["link", "add", "ul", "type", "bridge"]);
    a.ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul"]);
    a.ns.ip(&["link", "set", "ul", "up"]);
    let names = ["b", "c", "d", "e"];
    let mut sites = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let s = Site::new(&format!("lu{n}"), &format!("site-{n}"));
        let host = i + 2;
        let port = format!("p{n}");
        veth(
            &a.ns,
            &port,
            None,
            &s.ns,
            "ul0",
            Some(&format!("192.0.2.{host}/24")),
        );
        a.ns.ip(&["link", "set", &port, "master", "ul"]);
        let m = s.write(
            "m.yaml",
            &manifest(
                &s.deployment,
                &[&format!("10.10.0.{host}/24")],
                &s.key.private_file,
                &[PeerDef::new(
                    "site-a",
                    &a.key.public,
                    &format!("192.0.2.1:{WG_PORT}"),
                    &["10.10.0.1/32"],
                )],
            ),
        );
        s.apply(&m);
        sites.push(s);
    }
    let peer = |i: usize| {
        let s: &Site = &sites[i];
        PeerDef::new(
            &s.deployment,
            &s.key.public,
            &format!("192.0.2.{}:{WG_PORT}", i + 2),
            &[&format!("10.10.0.{}/32", i + 2)],
        )
    };
    let (b, c, d, e) = (&sites[0], &sites[1], &sites[2], &sites[3]);
    let v1 = a.write(
        "v1.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24"],
            &a.key.private_file,
            &[peer(0), peer(1), peer(2)],
        ),
    );
    let v2 = a.write(
        "v2.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24"],
            &a.key.private_file,
            &[peer(0), peer(2), peer(3)],
        ),
    );
    a.apply(&v1);
    for host in ["10.10.0.2", "10.10.0.3", "10.10.0.4"] {
        ping_ok(&a.ns, host, 2);
    }
    let d_before = a.peer_status("site-d");
    let d_handshakes = u64_of(&d_before["handshakes"], "handshakes");
    assert!(d_handshakes >= 1, "{d_before:#}");
    // D's own view of A: a new handshake would show there even when A's
    // counters were reset with the peer.
    let a_seen_by_d = d.peer_status("site-a");

    // A continuous ping to D while the manifest changes under it.
    let mut bg = Bg::spawn(
        "ping to site-d",
        a.ns.cmd("timeout").args([
            "30",
            "ping",
            "-n",
            "-i",
            "0.05",
            "-c",
            "100",
            "-W",
            "2",
            "10.10.0.4",
        ]),
    );
    assert!(
        a.wait_replies("site-d", &d_before, 5),
        "the ping to site-d did not get going"
    );
    let out = a.apply(&v2);
    assert!(
        bg.try_status().is_none(),
        "the ping ended before the re-apply finished; the test proves nothing"
    );
    let ping_out = bg.finish(Duration::from_secs(30));
    let stats = parse_ping(&String::from_utf8_lossy(&ping_out.stdout));
    assert!(
        stats.transmitted == 100 && stats.received == 100 && stats.duplicates == 0,
        "the ping to site-d lost packets across the re-apply:\n{}",
        stats.output
    );

    assert!(
        has_line(&out, &format!("- peer site-c ({})", c.key.public)),
        "{out}"
    );
    assert!(
        has_line(&out, &format!("+ peer site-e ({})", e.key.public)),
        "{out}"
    );
    assert!(
        !out.contains("site-b") && !out.contains("site-d"),
        "unchanged peers were touched:\n{out}"
    );

    let st = a.engine_status();
    let peer_names: Vec<&str> = st["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(peer_names, vec!["site-b", "site-d", "site-e"], "{st:#}");
    let d_after = a.peer_status("site-d");
    assert_eq!(
        d_after["handshakes"], d_before["handshakes"],
        "site-d re-handshook across the re-apply"
    );
    assert_eq!(d_after["latest_handshake"], d_before["latest_handshake"]);
    assert_eq!(
        d.peer_status("site-a")["handshakes"],
        a_seen_by_d["handshakes"],
        "site-a handshook with site-d again across the re-apply"
    );
    // The counters went on: 100 echo requests of 84 bytes, each one a
    // 128-byte transport message (16 header + 96 padded + 16 tag).
    let sent = u64_of(&d_after["tx_bytes"], "tx_bytes")
        .saturating_sub(u64_of(&d_before["tx_bytes"], "tx_bytes"));
    assert!(
        sent >= 100 * 128,
        "site-a's counters for site-d were reset across the re-apply (sent {sent} bytes)"
    );

    ping_ok(&a.ns, "10.10.0.5", 2);
    ping_ok(&e.ns, "10.10.0.1", 2);
    ping_ok(&b.ns, "10.10.0.1", 2);
    // C is no longer a peer of A: its (still configured) tunnel is dead.
    ping_fails(&c.ns, "10.10.0.1", 2);
    ping_ok(&d.ns, "10.10.0.1", 2);
    assert_eq!(a.nm().out(&["diff", &v2]).0, 0);
}

/// A configuration the running engine must refuse as a whole (site-c
/// dropped, site-b's allowed IPs changed, and site-c's address given to a
/// new peer whose public key is a low-order point, which the protocol core
/// refuses) changes nothing: the same peers, sessions and counters as
/// before, no new handshake, and a ping through the peer it would have
/// dropped goes on without loss. Such a key no longer passes manifest
/// validation, so the configuration is pushed over the control socket, as
/// `apply` does.
#[test]
fn a_configure_that_fails_changes_nothing() {
    use netman::engine::config::{EngineConfig, PeerSpec};
    use netman::engine::control::{self, ControlError, Request};

    let p = pair("atom", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    let c = Site::new("atomc", "site-c");
    veth(
        &a.ns,
        "ul1",
        Some("198.51.100.1/24"),
        &c.ns,
        "ul0",
        Some("198.51.100.2/24"),
    );
    let peer_a = |ul: &str| {
        PeerDef::new(
            "site-a",
            &a.key.public,
            &format!("{ul}:{WG_PORT}"),
            &["10.10.0.1/32"],
        )
    };
    let mc = c.write(
        "site-c.yaml",
        &manifest(
            "site-c",
            &["10.10.0.3/24"],
            &c.key.private_file,
            &[peer_a("198.51.100.1")],
        ),
    );
    let ma = a.write(
        "bc.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24", "fd10::1/64"],
            &a.key.private_file,
            &[
                PeerDef::new(
                    "site-b",
                    &b.key.public,
                    &format!("192.0.2.2:{WG_PORT}"),
                    &["10.10.0.2/32", "fd10::2/128"],
                ),
                PeerDef::new(
                    "site-c",
                    &c.key.public,
                    &format!("198.51.100.2:{WG_PORT}"),
                    &["10.10.0.3/32"],
                ),
            ],
        ),
    );
    a.apply(&ma);
    b.apply(&p.mb);
    c.apply(&mc);
    ping_ok(&a.ns, "10.10.0.2", 2);
    ping_ok(&a.ns, "10.10.0.3", 2);
    let before = a.engine_status();
    let c_sees_a = c.peer_status("site-a");

    let mut bad: EngineConfig =
        serde_json::from_value(before["config"].clone()).expect("config in the status");
    bad.peers.retain(|p| p.name != "site-c");
    bad.peers[0]
        .allowed_ips
        .push("10.99.0.0/24".parse().expect("prefix"));
    bad.peers.push(PeerSpec {
        name: "site-x".to_string(),
        public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .expect("a (low-order) key"),
        endpoint_spec: Some(format!("198.51.100.2:{WG_PORT}")),
        endpoint: Some(format!("198.51.100.2:{WG_PORT}").parse().expect("endpoint")),
        allowed_ips: vec!["10.10.0.3/32".parse().expect("prefix")],
        persistent_keepalive: None,
        preshared_key_file: None,
        endpoint_name: None,
    });
    let sock = a.state_dir().join("site-a.sock");
    let push = |dry_run: bool| {
        control::request(
            &sock,
            &Request::Configure {
                config: bad.clone(),
                dry_run,
            },
            Duration::from_secs(10),
        )
    };
    // A dry run (what `diff` asks) already names the problem.
    match push(true) {
        Err(ControlError::Engine(m)) => assert!(m.contains("low-order point"), "{m}"),
        other => panic!("a dry run of a configuration with a low-order key: {other:?}"),
    }

    // A continuous ping to site-c while the engine refuses the change.
    let mut bg = Bg::spawn(
        "ping to site-c",
        a.ns.cmd("timeout").args([
            "30",
            "ping",
            "-n",
            "-i",
            "0.05",
            "-c",
            "60",
            "-W",
            "2",
            "10.10.0.3",
        ]),
    );
    assert!(
        a.wait_replies("site-c", &before["peers"][1], 5),
        "the ping to site-c did not get going"
    );
    match push(false) {
        Err(ControlError::Engine(m)) => assert!(m.contains("low-order point"), "{m}"),
        other => panic!("configure with a low-order key: {other:?}"),
    }
    assert!(
        bg.try_status().is_none(),
        "the ping ended before the configure was refused; the test proves nothing"
    );
    let ping_out = bg.finish(Duration::from_secs(30));
    let stats = parse_ping(&String::from_utf8_lossy(&ping_out.stdout));
    assert!(
        stats.transmitted == 60 && stats.received == 60,
        "the ping to site-c lost packets across the refused configure:\n{}",
        stats.output
    );

    let after = a.engine_status();
    assert_eq!(
        after["config"], before["config"],
        "the configuration in force changed"
    );
    assert_eq!(after["listen_port"], before["listen_port"]);
    let peers = |st: &serde_json::Value| -> Vec<serde_json::Value> {
        st["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| {
                serde_json::json!([
                    p["name"],
                    p["public_key"],
                    p["endpoint"],
                    p["allowed_ips"],
                    p["handshakes"],
                    p["latest_handshake"],
                ])
            })
            .collect()
    };
    assert_eq!(
        peers(&after),
        peers(&before),
        "peers or sessions changed:\n{after:#}"
    );
    let sc = a.peer_status("site-c");
    let before_c = &before["peers"][1];
    assert!(
        u64_of(&sc["tx_bytes"], "tx_bytes") >= u64_of(&before_c["tx_bytes"], "tx_bytes") + 60 * 128,
        "site-c's counters did not go on: {sc:#}"
    );
    assert_eq!(
        c.peer_status("site-a")["handshakes"],
        c_sees_a["handshakes"],
        "site-a handshook with site-c again"
    );
    ping_ok(&a.ns, "10.10.0.2", 2);
    ping_ok(&b.ns, "10.10.0.1", 2);
    ping_ok(&c.ns, "10.10.0.1", 2);
    assert!(
        !a.engine_log().contains("engine reconfigured"),
        "{}",
        a.engine_log()
    );
    // And the engine still takes a good configuration afterwards.
    assert_eq!(a.nm().out(&["diff", &ma]).0, 0);
}

// ---------------------------------------------------------------------------
// 5. Faults

#[test]
fn killed_engine_shows_in_diff_and_apply_restores_it() {
    let p = pair("kill", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    a.apply(&p.ma);
    b.apply(&p.mb);
    ping_ok(&a.ns, "10.10.0.2", 2);
    let pid = u64_of(&a.engine_status()["pid"], "pid") as u32;
    assert!(
        a.ns.pids().contains(&pid),
        "engine pid {pid} is not in {}",
        a.ns.name
    );

    // SAFETY: kill(2) on the engine this test started (pid read from its
    // own status, inside the test's namespace).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(5), || pid_gone(pid)),
        "engine {pid} survived SIGKILL"
    );

    let (code, out, err) = a.nm().out(&["diff"]);
    assert_eq!(code, 1, "diff after the engine died:\n{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["+ engine site-a (not running)"],
        "{err}"
    );
    let (code, out, _) = a.nm().out(&["diff", &p.ma]);
    assert_eq!(code, 1);
    assert!(has_line(&out, "+ engine site-a (not running)"), "{out}");
    // Fail closed: the device and its routes stay, traffic goes nowhere.
    assert!(a.ns.ip_try(&["link", "show", "nm0"]).status.success());
    ping_fails(&a.ns, "10.10.0.2", 2);

    let out = a.apply(&p.ma);
    assert!(has_line(&out, "+ engine site-a (not running)"), "{out}");
    let new_pid = u64_of(&a.engine_status()["pid"], "pid") as u32;
    assert_ne!(new_pid, pid);
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(10)),
        "no traffic after the engine was restored"
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    ping_ok(&b.ns, "10.10.0.1", 3);
    let (code, out, _) = a.nm().out(&["diff"]);
    assert_eq!(code, 0, "{out}");
}

/// Packets counted by the (only) counter in an nftables table.
fn nft_counter(ns: &NetNs, table: &str) -> u64 {
    let out = run_ok(ns.cmd("nft").args(["list", "table", "inet", table]));
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{out}"))
}

#[test]
fn lossy_reordering_duplicating_underlay_is_survived_and_replays_are_dropped() {
    require_tool("nft", "the Debian package nftables");
    // A -- U -- B: the underlay namespace U runs a relay between two
    // networks; each site's peer endpoint is the relay.
    let a = Site::new("fla", "site-a");
    let b = Site::new("flb", "site-b");
    let u = NetNs::new("flu");
    veth(
        &a.ns,
        "ul0",
        Some("192.0.2.1/24"),
        &u,
        "ula",
        Some("192.0.2.254/24"),
    );
    veth(
        &b.ns,
        "ul0",
        Some("198.51.100.2/24"),
        &u,
        "ulb",
        Some("198.51.100.254/24"),
    );
    let addr = |s: &str| s.parse::<SocketAddr>().expect("socket address");
    let relay = Relay::start(
        &u,
        addr("192.0.2.254:40001"),
        addr(&format!("192.0.2.1:{WG_PORT}")),
        addr("198.51.100.254:40002"),
        addr(&format!("198.51.100.2:{WG_PORT}")),
        RelayFaults {
            reorder_pct: 25,
            hold: Duration::from_millis(4),
            duplicate_pct: 10,
        },
        Duration::from_secs(120),
    );
    let ma = a.write(
        "a.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24"],
            &a.key.private_file,
            &[PeerDef::new(
                "site-b",
                &b.key.public,
                "192.0.2.254:40001",
                &["10.10.0.2/32"],
            )],
        ),
    );
    let mb = b.write(
        "b.yaml",
        &manifest(
            "site-b",
            &["10.10.0.2/24"],
            &b.key.private_file,
            &[PeerDef::new(
                "site-a",
                &a.key.public,
                "198.51.100.254:40002",
                &["10.10.0.1/32"],
            )],
        ),
    );
    a.apply(&ma);
    b.apply(&mb);
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(20)),
        "no tunnel through the relay"
    );

    // 10% loss on the way into the relay, both directions.
    let table = "nmloss";
    run_ok(u.cmd("nft").args(["add", "table", "inet", table]));
    run_ok(u.cmd("nft").args([
        "add",
        "chain",
        "inet",
        table,
        "input",
        "{ type filter hook input priority 0; }",
    ]));
    run_ok(u.cmd("nft").args([
        "add",
        "rule",
        "inet",
        table,
        "input",
        "udp",
        "dport",
        "{ 40001, 40002 }",
        "numgen",
        "random",
        "mod",
        "10",
        "0",
        "counter",
        "drop",
    ]));

    let perf = iperf_tcp(
        &a.ns,
        &b.ns,
        "10.10.0.2",
        IPERF_PORT,
        &["-t", "3", "-b", "50M"],
    );
    assert!(perf.received_bytes > 0);

    let s = ping(&a.ns, "10.10.0.2", 40, "0.05");
    assert!(
        s.transmitted == 40 && s.received <= s.transmitted && s.received > 0,
        "ping through the faulty path:\n{}",
        s.output
    );
    assert_eq!(
        s.duplicates, 0,
        "duplicated datagrams were delivered twice (DUP!):\n{}",
        s.output
    );

    let dropped_by_nft = nft_counter(&u, table);
    let dup = relay
        .counters
        .duplicated
        .load(std::sync::atomic::Ordering::Relaxed);
    let held = relay
        .counters
        .held_back
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped_by_nft > 0 && dup > 0 && held > 0,
        "the faults were not injected: nft dropped {dropped_by_nft}, relay duplicated {dup}, held back {held}"
    );
    let replays = |s: &Site| s.engine_status()["drops"]["replay"].as_u64().unwrap_or(0);
    let (ra, rb) = (replays(&a), replays(&b));
    eprintln!(
        "faulty path: iperf3 {} bytes; ping {}/{}; nft dropped {dropped_by_nft}; relay forwarded {}, held back {held}, duplicated {dup}; replay drops site-a {ra}, site-b {rb}",
        perf.received_bytes,
        s.received,
        s.transmitted,
        relay
            .counters
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        ra + rb > 0,
        "{dup} duplicated datagrams, but no replay drops counted (site-a {ra}, site-b {rb}):\n{:#}\n{:#}",
        a.engine_status(),
        b.engine_status()
    );
}

// ---------------------------------------------------------------------------
// 6. Security

#[test]
fn key_files_open_to_others_are_refused_and_nothing_is_applied() {
    let a = Site::new("perm", "site-a");
    let psk = a.dir.join("ab.psk");
    write_mode(&psk, &format!("{}\n", netman_genkey()), 0o600);
    let other = netman_pubkey(&netman_genkey());
    let m = a.write(
        "a.yaml",
        &manifest(
            "site-a",
            &["10.10.0.1/24", "fd10::1/64"],
            &a.key.private_file,
            &[PeerDef::new(
                "site-b",
                &other,
                "192.0.2.2:51820",
                &["10.10.0.2/32", "172.18.2.0/24"],
            )
            .psk(&psk)],
        ),
    );
    let before = a.ns.snapshot();
    for (file, what) in [
        (&a.key.private_file, "private key"),
        (&psk, "preshared key"),
    ] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod 0644");
        let (code, out, err) = a.nm().out(&["apply", &m]);
        assert_ne!(code, 0, "a {what} file of mode 0644 was accepted:\n{out}");
        assert!(
            err.contains(&file.display().to_string()),
            "the error does not name the {what} file {}:\n{err}",
            file.display()
        );
        assert!(err.contains("0644"), "{err}");
        assert_eq!(
            a.ns.snapshot(),
            before,
            "a refused apply changed the namespace"
        );
        assert!(
            live_pids(&a.ns).is_empty(),
            "a refused apply started something"
        );
        assert!(!a.state_dir().join("site-a.json").exists());
        let (code, _, _) = a.nm().out(&["diff", &m]);
        assert_eq!(code, 1, "diff must still show everything pending");
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 0600");
    }
    // With both files private the same manifest applies.
    let out = a.apply(&m);
    assert!(has_line(&out, "+ engine site-a (not running)"), "{out}");
}

/// Every way a 32-byte secret could show up in text, with a label.
fn secret_forms(b64: &str) -> Vec<(&'static str, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("secret is base64");
    assert_eq!(bytes.len(), 32);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("base64", b64.to_string()),
        (
            "base64 without padding",
            b64.trim_end_matches('=').to_string(),
        ),
        ("the first half of its base64", b64[..22].to_string()),
        ("hex", hex.clone()),
        ("upper-case hex", hex.to_uppercase()),
        ("a byte array", format!("{bytes:?}")),
    ]
}

#[test]
fn secrets_never_appear_in_output_or_logs() {
    let dir = TempDir::new("psk");
    let psk = dir.join("ab.psk");
    let psk_text = netman_genkey();
    write_mode(&psk, &format!("{psk_text}\n"), 0o600);
    let p = pair("sec", &[], &[], Some(&psk));
    let (a, b) = (&p.a, &p.b);
    // The engines log everything (NETMAN_LOG is passed to the detached
    // engine by apply).
    for (s, m) in [(a, &p.ma), (b, &p.mb)] {
        let o = run(s.nm().cmd(&["-vvv", "apply", m]).env("NETMAN_LOG", "trace"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    ping_ok(&a.ns, "10.10.0.2", 3);
    ping_ok(&b.ns, "fd10::1", 3);
    assert_eq!(a.peer_status("site-b")["preshared_key"], true);

    let mut texts: Vec<(String, String)> = Vec::new();
    let mut vvv = |what: &str, args: &[&str], expect_code: i32| {
        let o = run(a.nm().cmd(args).env_remove("NETMAN_LOG"));
        assert_eq!(
            o.status.code(),
            Some(expect_code),
            "netman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        texts.push((
            what.to_string(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ));
    };
    vvv("status", &["-vvv", "status"], 0);
    vvv("status json", &["-vvv", "status", "--output", "json"], 0);
    vvv("diff", &["-vvv", "diff", &p.ma], 0);
    vvv("diff json", &["-vvv", "diff", &p.ma, "--output", "json"], 0);
    vvv("apply", &["-vvv", "apply", &p.ma], 0);
    let status_text = &texts[0].1;
    assert!(
        status_text.contains("preshared key: (hidden)"),
        "{status_text}"
    );
    assert!(
        texts[4].1.contains("no changes"),
        "apply was not a no-op: {}",
        texts[4].1
    );

    let log_a = a.engine_log();
    let log_b = b.engine_log();
    for (log, who) in [(&log_a, "site-a"), (&log_b, "site-b")] {
        assert!(
            log.contains("handshake completed"),
            "the engine log of {who} lacks what NETMAN_LOG=trace should show:\n{log}"
        );
        texts.push((format!("engine log of {who}"), log.clone()));
    }
    // Everything netman wrote to its state dirs, too.
    for s in [a, b] {
        let entries = std::fs::read_dir(s.state_dir()).expect("state dir");
        for e in entries.flatten() {
            if e.path().is_file() {
                let data = std::fs::read(e.path()).unwrap_or_default();
                texts.push((
                    e.path().display().to_string(),
                    String::from_utf8_lossy(&data).into_owned(),
                ));
            }
        }
    }

    let secrets = [
        ("site-a's private key", a.key.private.as_str()),
        ("site-b's private key", b.key.private.as_str()),
        ("the preshared key", psk_text.as_str()),
    ];
    for (where_, text) in &texts {
        eprintln!("checked {where_}: {} bytes", text.len());
    }
    for (what, secret) in secrets {
        for (form, needle) in secret_forms(secret) {
            for (where_, text) in &texts {
                assert!(
                    !text.contains(&needle),
                    "{what} appears in {where_} (as {form})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 7. `netman run` (what examples/netman@.service relies on)

#[test]
fn run_serves_in_the_foreground_reloads_with_apply_and_stops_on_sigterm() {
    let p = pair("run", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    b.apply(&p.mb);
    let fg = Bg::spawn("netman run", &mut a.nm().cmd(&["run", &p.ma]));
    let running = wait_until(Duration::from_secs(10), || {
        let (code, out, _) = a.nm().out(&["status", "site-a", "--output", "json"]);
        code == 0 && out.contains("\"pid\"")
    });
    assert!(running, "netman run did not start an engine");
    // The engine is the foreground process itself (what systemd watches).
    let pid = u64_of(&a.engine_status()["pid"], "pid") as u32;
    assert_eq!(pid, fg.pid());
    ping_ok(&a.ns, "10.10.0.2", 2);

    // ExecReload: `apply` reconfigures the engine of `run` in place.
    let m2 = a.write(
        "site-a-2.yaml",
        &std::fs::read_to_string(&p.ma)
            .expect("read manifest")
            .replace("fd10::2/128]", "fd10::2/128, 172.18.2.0/24]"),
    );
    let out = a.apply(&m2);
    assert!(has_line(&out, "+ route 172.18.2.0/24 dev nm0"), "{out}");
    assert!(
        has_line(
            &out,
            "~ peer site-b allowed_ips [10.10.0.2/32, fd10::2/128] -> [10.10.0.2/32, fd10::2/128, 172.18.2.0/24]"
        ),
        "{out}"
    );
    assert!(
        !out.contains("+ engine"),
        "apply started a second engine:\n{out}"
    );
    assert_eq!(u64_of(&a.engine_status()["pid"], "pid") as u32, pid);
    ping_ok(&a.ns, "10.10.0.2", 2);

    // A second `run` refuses while the first serves.
    let (code, _, err) = a.nm().out(&["run", &m2]);
    assert_ne!(code, 0);
    assert!(err.contains("already running"), "{err}");

    // SIGTERM: exit 0, the kernel state stays (fail closed) for `down`.
    // SAFETY: kill(2) on the pid of our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let o = fg.finish(Duration::from_secs(10));
    assert!(
        o.status.success(),
        "netman run exited with {} on SIGTERM: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(a.ns.ip_try(&["link", "show", "nm0"]).status.success());
    let routes = a.ns.ip(&["route", "show", "proto", "233"]);
    assert!(routes.contains("172.18.2.0/24 dev nm0"), "{routes}");
    let (code, out, _) = a.nm().out(&["diff"]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["+ engine site-a (not running)"]
    );
    ping_fails(&a.ns, "10.10.0.2", 2);
    let out = a.nm().ok(&["down", "site-a"]);
    assert!(has_line(&out, "- link nm0"), "{out}");
    assert!(!a.ns.ip_try(&["link", "show", "nm0"]).status.success());
}

// ---------------------------------------------------------------------------
// 8. Reordered peers (a manifest edit that changes nothing)

#[test]
fn reordering_peers_keeps_status_and_later_changes_attached_to_the_right_peer() {
    let p = pair("ord", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    // A second peer of A that never answers (nothing at its endpoint).
    let c_key = netman_pubkey(&netman_genkey());
    let peer_b = || {
        PeerDef::new(
            "site-b",
            &b.key.public,
            &format!("192.0.2.2:{WG_PORT}"),
            &["10.10.0.2/32", "fd10::2/128"],
        )
    };
    let peer_c = || {
        PeerDef::new(
            "site-c",
            &c_key,
            &format!("192.0.2.3:{WG_PORT}"),
            &["10.10.0.3/32"],
        )
    };
    let addrs = ["10.10.0.1/24", "fd10::1/64"];
    let bc = a.write(
        "bc.yaml",
        &manifest("site-a", &addrs, &a.key.private_file, &[peer_b(), peer_c()]),
    );
    let cb = a.write(
        "cb.yaml",
        &manifest("site-a", &addrs, &a.key.private_file, &[peer_c(), peer_b()]),
    );
    let only_b = a.write(
        "b.yaml",
        &manifest("site-a", &addrs, &a.key.private_file, &[peer_b()]),
    );
    a.apply(&bc);
    b.apply(&p.mb);
    ping_ok(&a.ns, "10.10.0.2", 2);

    let check = |when: &str| {
        let sb = a.peer_status("site-b");
        let sc = a.peer_status("site-c");
        assert_eq!(sb["public_key"], b.key.public.as_str(), "{when}");
        assert!(
            u64_of(&sb["handshakes"], "handshakes") >= 1
                && sb["endpoint"] == format!("192.0.2.2:{WG_PORT}").as_str(),
            "{when}: site-b shows another peer's state: {sb:#}"
        );
        assert!(
            u64_of(&sc["handshakes"], "handshakes") == 0
                && sc["endpoint"] == format!("192.0.2.3:{WG_PORT}").as_str(),
            "{when}: site-c shows another peer's state: {sc:#}"
        );
    };
    check("before the reorder");

    // The same peers in another order: nothing to change...
    let out = a.apply(&cb);
    assert_eq!(out, "no changes\n");
    // ...and status still shows each peer's own state.
    check("after reordering the peers");

    // A later real change names the peer it really removes.
    let out = a.apply(&only_b);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            format!("- peer site-c ({c_key})").as_str(),
            "applied: deployment site-a"
        ],
        "{out}"
    );
    let sb = a.peer_status("site-b");
    assert!(u64_of(&sb["handshakes"], "handshakes") >= 1, "{sb:#}");
    ping_ok(&a.ns, "10.10.0.2", 2);
}

// ---------------------------------------------------------------------------
// Offloads fall back cleanly

#[test]
fn an_engine_without_tun_offloads_carries_traffic_with_one_that_has_them() {
    // Site A's engine attaches its TUN queue without offloads (as on a
    // kernel that lacks them), site B's with them: plain packets on one
    // side, TSO/GRO super-packets on the other, same wire format.
    let p = pair("nooff", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    let out = run_ok(
        a.nm()
            .cmd(&["apply", &p.ma])
            .env("NETMAN_TUN_OFFLOAD", "off"),
    );
    assert!(has_line(&out, "+ engine site-a (not running)"), "{out}");
    b.apply(&p.mb);
    let flags = |s: &Site| s.ns.ip(&["-d", "link", "show", "nm0"]);
    assert!(
        flags(a).contains("vnet_hdr off"),
        "site A attached with offloads: {}",
        flags(a)
    );
    assert!(
        flags(b).contains("vnet_hdr on"),
        "site B attached without offloads: {}",
        flags(b)
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    ping_ok(&b.ns, "fd10::1", 3);
    // Bulk TCP both ways: super-packets from B, plain packets from A.
    for (client, server, addr) in [(a, b, "10.10.0.2"), (b, a, "10.10.0.1")] {
        let perf = iperf_tcp(
            &client.ns,
            &server.ns,
            addr,
            IPERF_PORT,
            &["-t", "2", "-b", IPERF_RATE],
        );
        assert!(
            perf.received_bytes > 1_000_000,
            "{addr}: only {} bytes arrived",
            perf.received_bytes
        );
    }
}

// ---------------------------------------------------------------------------
// Small TCP segments (issue 11, item 1)

/// The engine's own data-plane drop reasons (next to the protocol core's),
/// as `status --output json` lists them.
const DATAPLANE_DROPS: &[&str] = &[
    "tun_read_error",
    "tun_bad_packet",
    "tun_write_error",
    "udp_send_error",
    "no_ipv6_socket",
    // The flow queue's memory limit (its CoDel drops, `tun_queue_delay`,
    // are congestion signals a bulk flow is meant to get).
    "tun_queue_full",
];

/// A host with a small MSS (an old stack, a PPPoE or IPsec path, MSS
/// clamping) makes the kernel hand the engine TSO super-packets of many
/// small segments: 64 KiB of 300-byte segments is over 200 of them. Every
/// one must be split and sent; none may be lost for lack of room in a
/// batch, and whatever the data plane does drop must be counted.
#[test]
fn tcp_with_a_small_mss_crosses_the_tunnel_without_loss() {
    let p = pair("mss", &[], &[], None);
    let (a, b) = (&p.a, &p.b);
    a.apply(&p.ma);
    b.apply(&p.mb);
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(15)),
        "no handshake between the sites"
    );
    let mut report = Vec::new();
    for mss in [1380u32, 536, 300] {
        // As fast as TCP goes, for a few seconds: that is what makes the
        // kernel build the largest super-packets.
        let t = tcp_transfer(
            &a.ns,
            &b.ns,
            "10.10.0.2:5202".parse().expect("addr"),
            mss,
            Duration::from_secs(3),
        );
        report.push(format!(
            "MSS {mss} (in use {}): {} bytes sent, {} received, {:.0} Mbit/s, {} retransmits",
            t.mss,
            t.sent,
            t.received,
            t.mbit_per_s(),
            t.retransmits
        ));
        assert!(
            t.received == t.sent && t.intact,
            "TCP at MSS {mss}: the receiver did not get exactly what was sent: {}",
            report.join("; ")
        );
        // Near zero: a loaded machine may lose a datagram in a socket
        // buffer now and then, but not one segment in a thousand.
        let segments = t.sent / u64::from(mss);
        assert!(
            u64::from(t.retransmits) <= 20 + segments / 1000,
            "TCP at MSS {mss} through the tunnel: {}",
            report.join("; ")
        );
    }
    eprintln!("{}", report.join("\n"));
    // Nothing was dropped by the data plane on either side, and every
    // reason is listed (zeros included).
    for s in [a, b] {
        let st = s.engine_status();
        for reason in ["replay", "decrypt_failed", "no_route"] {
            assert!(
                st["drops"][reason].is_u64(),
                "{}: protocol-core drop reason {reason} missing from status: {:#}",
                s.deployment,
                st["drops"]
            );
        }
        for reason in DATAPLANE_DROPS {
            let n = st["drops"][reason].as_u64().unwrap_or_else(|| {
                panic!(
                    "{}: drop reason {reason} missing from status: {:#}",
                    s.deployment, st["drops"]
                )
            });
            assert!(
                n <= 2,
                "{}: {n} packets dropped ({reason}): {:#}; {}",
                s.deployment,
                st["drops"],
                report.join("; ")
            );
        }
    }
}
