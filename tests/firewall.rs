//! nftables rules and IP forwarding, end to end in network namespaces (root
//! and `nft` required, as in CI; the Docker scenario also needs
//! `iptables`). The traffic tests run two gateways with netman's engine
//! over a veth underlay, each with a LAN bridge and a "container"
//! namespace behind it.

mod common;

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Bg, Monitor, NetNs, Netman, TempDir, netman_bin, require_tool, run, run_ok, tcp_listening,
    wait_until,
};

fn require_nft() {
    require_tool("nft", "the Debian package nftables");
}

fn nft(ns: &NetNs, args: &[&str]) -> String {
    run_ok(ns.cmd("nft").args(args))
}

/// The whole ruleset as nft lists it in JSON (stateless: no counters).
fn ruleset(ns: &NetNs) -> String {
    nft(ns, &["-j", "-s", "list", "ruleset"])
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn sysctl(ns: &NetNs, key: &str) -> String {
    run_ok(ns.cmd("sysctl").args(["-n", key]))
        .trim()
        .to_string()
}

fn set_sysctl(ns: &NetNs, key: &str, value: &str) {
    run_ok(ns.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
}

/// One gateway: a namespace, a temp dir (state, manifests) and a key pair
/// made with `netman genkey` / `netman pubkey` (private key file 0600).
struct Gw {
    ns: NetNs,
    dir: TempDir,
    key_file: PathBuf,
    public: String,
}

impl Gw {
    fn new(tag: &str) -> Gw {
        require_nft();
        let ns = NetNs::new(tag);
        let dir = TempDir::new(tag);
        let private = run_ok(Command::new(netman_bin()).arg("genkey"))
            .trim()
            .to_string();
        let key_file = dir.join("gw.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .expect("create key file");
        f.write_all(format!("{private}\n").as_bytes())
            .expect("write key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        let mut child = Command::new(netman_bin())
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("netman pubkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{private}\n").as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("netman pubkey");
        assert!(out.status.success(), "netman pubkey failed");
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Gw {
            ns,
            dir,
            key_file,
            public,
        }
    }

    fn nm(&self) -> Netman<'_> {
        Netman::new(&self.ns, self.dir.join("state"))
    }

    fn write(&self, file: &str, text: &str) -> String {
        self.dir.write(file, text).display().to_string()
    }
}

/// A manifest for deployment `name` with tunnel address `addr`, one peer
/// (`peer`: name, public key, endpoint, allowed IPs) if given, and `extra`
/// YAML appended (forwarding, firewall).
fn manifest(
    name: &str,
    addr: &str,
    key_file: &std::path::Path,
    peer: Option<(&str, &str, &str, &str)>,
    extra: &str,
) -> String {
    // The watcher would repair the drift these tests create by hand before
    // `diff` could see it; the watcher has tests of its own. MSS clamping
    // (on by default with forwarding) would add a chain to every plan
    // these tests compare; it has a test of its own too.
    let mut m = format!(
        "name: {name}
watch: false
interface:
  name: nm0
  addresses: [{addr}]
  listen_port: 51820
  private_key_file: {}
  mss_clamp: off
",
        key_file.display()
    );
    if let Some((pname, key, endpoint, allowed)) = peer {
        m.push_str(&format!(
            "peers:
  - name: {pname}
    public_key: \"{key}\"
    endpoint: {endpoint}
    allowed_ips: [{allowed}]
    persistent_keepalive: 1
"
        ));
    }
    m.push_str(extra);
    m
}

/// Two gateways joined by a veth underlay (192.0.2.1 - 192.0.2.2).
struct Pair {
    a: Gw,
    b: Gw,
}

fn pair(tag: &str) -> Pair {
    let a = Gw::new(&format!("{tag}a"));
    let b = Gw::new(&format!("{tag}b"));
    a.ns.ip(&[
        "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b.ns.name,
    ]);
    for (gw, addr) in [(&a, "192.0.2.1/24"), (&b, "192.0.2.2/24")] {
        gw.ns.ip(&["addr", "add", addr, "dev", "ul0"]);
        gw.ns.ip(&["link", "set", "ul0", "up"]);
    }
    Pair { a, b }
}

impl Pair {
    /// Site manifests: A has 10.10.0.1 and LAN 172.18.1.0/24, B 10.10.0.2
    /// and 172.18.2.0/24. `a_allowed`/`b_allowed`: what each accepts from
    /// the other (`allowed_ips` of its peer).
    fn manifests(
        &self,
        a_allowed: &str,
        b_allowed: &str,
        a_extra: &str,
        b_extra: &str,
    ) -> (String, String) {
        let ma = manifest(
            "site-a",
            "10.10.0.1/24",
            &self.a.key_file,
            Some(("site-b", &self.b.public, "192.0.2.2:51820", a_allowed)),
            a_extra,
        );
        let mb = manifest(
            "site-b",
            "10.10.0.2/24",
            &self.b.key_file,
            Some(("site-a", &self.a.public, "192.0.2.1:51820", b_allowed)),
            b_extra,
        );
        (self.a.write("a.yaml", &ma), self.b.write("b.yaml", &mb))
    }
}

/// A bridge `docker0` (`gw_cidr`) in the gateway and a "container"
/// namespace on it (`addr_cidr`, default route via `gw_addr`).
fn lan(gw: &NetNs, tag: &str, gw_cidr: &str, addr_cidr: &str, gw_addr: &str) -> NetNs {
    let c = NetNs::new(tag);
    gw.ip(&["link", "add", "docker0", "type", "bridge"]);
    gw.ip(&["addr", "add", gw_cidr, "dev", "docker0"]);
    gw.ip(&["link", "set", "docker0", "up"]);
    gw.ip(&[
        "link", "add", "vethc", "type", "veth", "peer", "name", "eth0", "netns", &c.name,
    ]);
    gw.ip(&["link", "set", "vethc", "master", "docker0"]);
    gw.ip(&["link", "set", "vethc", "up"]);
    c.ip(&["addr", "add", addr_cidr, "dev", "eth0"]);
    c.ip(&["link", "set", "eth0", "up"]);
    c.ip(&["route", "add", "default", "via", gw_addr]);
    c
}

fn ping(ns: &NetNs, dst: &str, count: u32) -> bool {
    let out = run(ns.cmd("ping").args([
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        dst,
    ]));
    out.status.success()
}

/// Ping until one gets through (the first handshake), at most `timeout`.
fn wait_ping(ns: &NetNs, dst: &str, timeout: Duration) -> bool {
    wait_until(timeout, || ping(ns, dst, 1))
}

/// Docker's FORWARD setup, made with iptables-nft as Docker makes it: the
/// `filter` table's FORWARD chain drops by default and first jumps to
/// DOCKER-USER (ending in RETURN); containers may go out, and only replies
/// come back in. Plus an admin's own rule in DOCKER-USER.
fn docker_filter(gw: &NetNs) {
    require_tool("iptables", "the Debian package iptables (iptables-nft)");
    for args in [
        &["-N", "DOCKER-USER"][..],
        &["-A", "DOCKER-USER", "-j", "RETURN"][..],
        &["-I", "DOCKER-USER", "-s", "203.0.113.0/24", "-j", "DROP"][..],
        &["-P", "FORWARD", "DROP"][..],
        &["-A", "FORWARD", "-j", "DOCKER-USER"][..],
        &[
            "-A",
            "FORWARD",
            "-o",
            "docker0",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ][..],
        &[
            "-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT",
        ][..],
        &[
            "-A", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "ACCEPT",
        ][..],
    ] {
        run_ok(gw.cmd("iptables").args(args));
    }
}

/// What `nft monitor` prints while `f` runs.
fn monitor(ns: &NetNs, f: impl FnOnce()) -> String {
    Monitor::nft(ns).during(f)
}

const DOCKER_INSERT: &str = "firewall:
  chains:
    - name: count
      hook: forward
      rules:
        - iifname \"nm0\" oifname \"docker0\" counter
  insert:
    - family: ip
      table: filter
      chain: DOCKER-USER
      rule: iifname \"nm0\" oifname \"docker0\" accept
";

/// The original scenario: Docker's DOCKER-USER chain in the way.
#[test]
fn docker_user_insert_lets_the_tunnel_into_the_lan_and_down_restores_the_chain() {
    let p = pair("dock");
    let ca = lan(
        &p.a.ns,
        "docka-c",
        "172.18.1.1/24",
        "172.18.1.2/24",
        "172.18.1.1",
    );
    let cb = lan(
        &p.b.ns,
        "dockb-c",
        "172.18.2.1/24",
        "172.18.2.2/24",
        "172.18.2.1",
    );
    docker_filter(&p.a.ns);
    docker_filter(&p.b.ns);
    let user_a = nft(
        &p.a.ns,
        &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );
    let user_b = nft(
        &p.b.ns,
        &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );

    // Without the insert rule: the tunnel is up, the LANs do not reach
    // each other (the far gateway drops nm0 -> docker0).
    let (ma, mb) = p.manifests(
        "10.10.0.2/32, 172.18.2.0/24",
        "10.10.0.1/32, 172.18.1.0/24",
        "forwarding: true\n",
        "forwarding: true\n",
    );
    p.a.nm().ok(&["apply", &ma]);
    p.b.nm().ok(&["apply", &mb]);
    assert!(
        wait_ping(&p.a.ns, "10.10.0.2", Duration::from_secs(15)),
        "the tunnel between the gateways does not come up"
    );
    assert!(
        !ping(&ca, "172.18.2.2", 2),
        "the LANs reach each other without the insert rule"
    );

    // With it: both directions work.
    let extra = format!("forwarding: true\n{DOCKER_INSERT}");
    let (ma, mb) = p.manifests(
        "10.10.0.2/32, 172.18.2.0/24",
        "10.10.0.1/32, 172.18.1.0/24",
        &extra,
        &extra,
    );
    let (code, diff, err) = p.a.nm().out(&["diff", &ma]);
    assert_eq!(code, 1, "{diff}{err}");
    assert_eq!(
        lines(&diff),
        vec![
            "+ table inet netman_site-a",
            "+ chain count (filter hook forward priority 0 policy accept)",
            "+ rule count: iifname \"nm0\" oifname \"docker0\" counter",
            "+ rule ip filter DOCKER-USER: iifname \"nm0\" oifname \"docker0\" accept",
        ]
    );
    let out = p.a.nm().ok(&["apply", &ma]);
    assert!(
        out.contains("+ rule ip filter DOCKER-USER: iifname \"nm0\" oifname \"docker0\" accept\n"),
        "{out}"
    );
    p.b.nm().ok(&["apply", &mb]);
    assert!(
        ping(&ca, "172.18.2.2", 3),
        "container A cannot reach container B"
    );
    assert!(
        ping(&cb, "172.18.1.2", 3),
        "container B cannot reach container A"
    );

    // The rule is netman's (comment), at the top, and the admin's rule is
    // still there with its handle.
    let chain = nft(
        &p.a.ns,
        &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );
    let rules: Vec<&str> = chain
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain "))
        .collect();
    assert!(
        rules[0].contains("iifname \"nm0\" oifname \"docker0\" accept comment \"netman:site-a:"),
        "{chain}"
    );
    for line in user_a
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain "))
    {
        assert!(
            chain.contains(line),
            "foreign rule {line:?} changed:\n{chain}"
        );
    }

    // Re-apply: no change, and no nftables write at all.
    let events = monitor(&p.a.ns, || {
        assert_eq!(p.a.nm().ok(&["apply", &ma]), "no changes\n");
    });
    assert!(
        events.trim().is_empty(),
        "re-apply wrote to nftables:\n{events}"
    );
    let events = monitor(&p.a.ns, || {
        nft(&p.a.ns, &["add", "table", "inet", "probe"]);
    });
    assert!(!events.trim().is_empty(), "nft monitor saw nothing");
    nft(&p.a.ns, &["delete", "table", "inet", "probe"]);

    // down: DOCKER-USER exactly as before (same rules, same handles), and
    // netman's table gone.
    for (gw, before) in [(&p.a, &user_a), (&p.b, &user_b)] {
        let out = gw.nm().ok(&["down"]);
        assert!(
            out.contains(
                "- rule ip filter DOCKER-USER: iifname \"nm0\" oifname \"docker0\" accept\n"
            ),
            "{out}"
        );
        let after = nft(
            &gw.ns,
            &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
        );
        assert_eq!(&after, before, "DOCKER-USER changed");
        let tables = nft(&gw.ns, &["list", "tables"]);
        assert!(!tables.contains("netman"), "{tables}");
        assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    }
}

/// A LAN host reaches the far site through site A's masquerade: site B
/// only accepts site A's tunnel address, so without NAT the packets are
/// dropped; with it, the replies find their way back (conntrack both ways,
/// ICMP and TCP).
#[test]
fn masquerade_carries_a_lan_host_through_the_tunnel() {
    require_tool("iperf3", "the Debian package iperf3");
    let p = pair("masq");
    let ca = lan(
        &p.a.ns,
        "masqa-c",
        "172.18.1.1/24",
        "172.18.1.2/24",
        "172.18.1.1",
    );
    let cb = lan(
        &p.b.ns,
        "masqb-c",
        "172.18.2.1/24",
        "172.18.2.2/24",
        "172.18.2.1",
    );
    let (ma, mb) = p.manifests(
        "10.10.0.2/32, 172.18.2.0/24",
        "10.10.0.1/32",
        "forwarding: true\n",
        "forwarding: true\n",
    );
    p.a.nm().ok(&["apply", &ma]);
    p.b.nm().ok(&["apply", &mb]);
    assert!(
        wait_ping(&p.a.ns, "10.10.0.2", Duration::from_secs(15)),
        "the tunnel between the gateways does not come up"
    );
    assert!(
        !ping(&ca, "172.18.2.2", 2),
        "site B accepted a source it does not allow"
    );

    let nat = "forwarding: true
firewall:
  chains:
    - name: nat
      hook: postrouting
      type: nat
      rules:
        - oifname \"nm0\" ip saddr 172.18.1.0/24 masquerade
";
    let (ma, _) = p.manifests(
        "10.10.0.2/32, 172.18.2.0/24",
        "10.10.0.1/32",
        nat,
        "forwarding: true\n",
    );
    let out = p.a.nm().ok(&["apply", &ma]);
    assert_eq!(
        lines(&out),
        vec![
            "+ table inet netman_site-a",
            "+ chain nat (nat hook postrouting priority 100 policy accept)",
            "+ rule nat: oifname \"nm0\" ip saddr 172.18.1.0/24 masquerade",
            "applied: deployment site-a",
        ]
    );
    assert!(
        ping(&ca, "172.18.2.2", 3),
        "the LAN host cannot reach site B's LAN"
    );
    // TCP, both directions of the connection through the NAT.
    let mut server = cb
        .cmd("iperf3")
        .args(["-s", "-1", "-B", "172.18.2.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    assert!(
        wait_until(Duration::from_secs(10), || tcp_listening(&cb, 5201)),
        "iperf3 -s did not start listening"
    );
    let client =
        run(ca
            .cmd("timeout")
            .args(["20", "iperf3", "-c", "172.18.2.2", "-n", "1M", "--bidir"]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        client.status.success(),
        "TCP through the masquerade failed: {}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    // It is NAT, not routing: site B cannot open a connection to the host.
    assert!(!ping(&cb, "172.18.1.2", 1));
    p.a.nm().ok(&["down"]);
    assert!(!nft(&p.a.ns, &["list", "tables"]).contains("netman"));
}

/// A single gateway (no peer).
fn single(tag: &str) -> Gw {
    Gw::new(tag)
}

fn filter_table(gw: &Gw) {
    let script = "table ip filter {\n chain FORWARD { type filter hook forward priority 0; policy drop; jump DOCKER-USER; }\n chain DOCKER-USER { ip saddr 203.0.113.0/24 drop; return; }\n}\n";
    let mut child = gw
        .ns
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft -f");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

fn firewall_manifest(gw: &Gw, rules: &[&str]) -> String {
    let mut extra = String::from(
        "forwarding: true
firewall:
  chains:
    - name: forward
      hook: forward
      policy: drop
      rules:
",
    );
    for r in rules {
        extra.push_str(&format!("        - {r}\n"));
    }
    extra.push_str(
        "  insert:
    - family: ip
      table: filter
      chain: DOCKER-USER
      rule: iifname \"nm0\" oifname \"lan0\" accept
",
    );
    manifest("site-a", "10.10.0.1/24", &gw.key_file, None, &extra)
}

const RULES: [&str; 3] = [
    "iifname \"nm0\" oifname \"lan0\" accept",
    "iifname \"lan0\" oifname \"nm0\" ct state established,related accept",
    "meta l4proto icmp accept",
];

#[test]
fn an_invalid_rule_changes_nothing() {
    let gw = single("atom");
    filter_table(&gw);
    let nm = gw.nm();
    let bad_rules = [RULES[0], RULES[1], "tcp dport 99999 accept"];
    let bad = gw.write("bad.yaml", &firewall_manifest(&gw, &bad_rules));

    // First apply: nothing at all is created.
    let before = ruleset(&gw.ns);
    let links = gw.ns.snapshot();
    let (code, out, err) = nm.out(&["apply", &bad]);
    assert_eq!(code, 2, "{out}{err}");
    // Line 17 holds the third rule; nft points at `99999` (column 11 + 10).
    assert!(
        err.contains("bad.yaml:18:21: firewall.chains[0].rules[2]: nft: Service out of range"),
        "{err}"
    );
    assert!(err.contains("nothing applied"), "{err}");
    assert_eq!(ruleset(&gw.ns), before, "the ruleset changed");
    assert_eq!(gw.ns.snapshot(), links, "links changed");
    assert!(!gw.dir.join("state/site-a.json").exists());
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    // diff reports it too (exit 2).
    let (code, _, err) = nm.out(&["diff", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("firewall.chains[0].rules[2]: nft: "), "{err}");

    // On top of a working deployment: the ruleset stays exactly as it is.
    let good = gw.write("good.yaml", &firewall_manifest(&gw, &RULES));
    nm.ok(&["apply", &good]);
    let before = ruleset(&gw.ns);
    let links = gw.ns.snapshot();
    let (code, _, err) = nm.out(&["apply", &bad]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(ruleset(&gw.ns), before, "the ruleset changed");
    assert_eq!(gw.ns.snapshot(), links);
    assert_eq!(nm.out(&["diff", &good]).0, 0);
    nm.ok(&["down"]);
}

#[test]
fn drift_in_rules_is_reported_and_repaired_and_foreign_rules_are_untouched() {
    let gw = single("drift");
    filter_table(&gw);
    let nm = gw.nm();
    let m = gw.write("a.yaml", &firewall_manifest(&gw, &RULES));
    nm.ok(&["apply", &m]);
    assert_eq!(nm.out(&["diff"]).0, 0);

    // Delete a rule of netman's table and netman's inserted rule by hand,
    // add a rule of one's own to netman's table.
    let handle_of = |listing: &str, needle: &str| -> String {
        let line = listing
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {listing}"));
        line.rsplit("# handle ")
            .next()
            .expect("handle")
            .trim()
            .to_string()
    };
    let table = nft(&gw.ns, &["-a", "list", "table", "inet", "netman_site-a"]);
    let h = handle_of(&table, "ct state established,related accept");
    nft(
        &gw.ns,
        &[
            "delete",
            "rule",
            "inet",
            "netman_site-a",
            "forward",
            "handle",
            &h,
        ],
    );
    nft(
        &gw.ns,
        &[
            "add",
            "rule",
            "inet",
            "netman_site-a",
            "forward",
            "udp",
            "dport",
            "53",
            "drop",
        ],
    );
    let chain = nft(
        &gw.ns,
        &["-a", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );
    let h = handle_of(&chain, "netman:site-a:");
    nft(
        &gw.ns,
        &[
            "delete",
            "rule",
            "ip",
            "filter",
            "DOCKER-USER",
            "handle",
            &h,
        ],
    );
    let foreign = nft(
        &gw.ns,
        &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );

    let (code, out, err) = nm.out(&["diff"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        lines(&out),
        vec![
            "+ rule forward: iifname \"lan0\" oifname \"nm0\" ct state established,related accept",
            "- rule forward: udp dport 53 drop",
            "+ rule ip filter DOCKER-USER: iifname \"nm0\" oifname \"lan0\" accept",
        ]
    );
    let (code, json, _) = nm.out(&["diff", "--output", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["firewall"][0]["action"], "add_rule");
    assert_eq!(v["firewall"][2]["target"]["chain"], "DOCKER-USER");

    let out = nm.ok(&["apply", &m]);
    assert!(out.contains("+ rule forward: iifname \"lan0\""), "{out}");
    assert_eq!(nm.out(&["diff"]).0, 0);
    let rules = nft(
        &gw.ns,
        &["list", "chain", "inet", "netman_site-a", "forward"],
    );
    assert!(
        rules.contains("ct state established,related accept"),
        "{rules}"
    );
    assert!(!rules.contains("udp dport 53"), "{rules}");
    // The foreign rules of DOCKER-USER kept their handles.
    let chain = nft(
        &gw.ns,
        &["-a", "-s", "list", "chain", "ip", "filter", "DOCKER-USER"],
    );
    for line in foreign
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain "))
    {
        assert!(
            chain.contains(line),
            "foreign rule {line:?} changed:\n{chain}"
        );
    }
    // Another deployment's rule in the same chain is not ours either.
    nft(
        &gw.ns,
        &[
            "insert",
            "rule",
            "ip",
            "filter",
            "DOCKER-USER",
            "accept",
            "comment",
            "\"netman:other:0123456789ab\"",
        ],
    );
    assert_eq!(nm.out(&["diff"]).0, 0);

    // A manifest change is shown rule by rule, and applied.
    let changed = [RULES[0], RULES[1], "meta l4proto icmpv6 accept"];
    let m2 = gw.write("a.yaml", &firewall_manifest(&gw, &changed));
    let (code, out, _) = nm.out(&["diff", &m2]);
    assert_eq!(code, 1);
    assert_eq!(
        lines(&out),
        vec![
            "- rule forward: meta l4proto icmp accept",
            "+ rule forward: meta l4proto icmpv6 accept",
        ]
    );
    nm.ok(&["apply", &m2]);
    assert_eq!(nm.out(&["diff", &m2]).0, 0);
    nm.ok(&["down"]);
    let chain = nft(&gw.ns, &["list", "chain", "ip", "filter", "DOCKER-USER"]);
    assert!(chain.contains("netman:other:0123456789ab"), "{chain}");
    assert!(!chain.contains("netman:site-a:"), "{chain}");
}

#[test]
fn forwarding_sysctls_are_set_by_apply_and_restored_by_down() {
    let gw = Gw::new("fwd");
    let nm = gw.nm();
    // Forwarding for IPv6 was on before netman; IPv4 was off.
    set_sysctl(&gw.ns, "net.ipv6.conf.all.forwarding", "1");
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    let m = gw.write(
        "a.yaml",
        &manifest(
            "site-a",
            "10.10.0.1/24",
            &gw.key_file,
            None,
            "forwarding: true\n",
        ),
    );
    let out = nm.ok(&["apply", &m]);
    assert!(
        out.contains("~ sysctl net.ipv4.ip_forward 0 -> 1\n"),
        "{out}"
    );
    assert!(!out.contains("net.ipv6"), "{out}");
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&gw.ns, "net.ipv6.conf.all.forwarding"), "1");

    // Drift: reported and repaired.
    set_sysctl(&gw.ns, "net.ipv4.ip_forward", "0");
    let (code, out, _) = nm.out(&["diff"]);
    assert_eq!(
        (code, out.as_str()),
        (1, "~ sysctl net.ipv4.ip_forward 0 -> 1\n")
    );
    nm.ok(&["apply", &m]);
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "1");
    assert_eq!(nm.ok(&["apply", &m]), "no changes\n");

    // Turning forwarding off restores the values from before.
    let off = gw.write(
        "off.yaml",
        &manifest("site-a", "10.10.0.1/24", &gw.key_file, None, ""),
    );
    let out = nm.ok(&["apply", &off]);
    assert!(
        out.contains("~ sysctl net.ipv4.ip_forward 1 -> 0\n"),
        "{out}"
    );
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&gw.ns, "net.ipv6.conf.all.forwarding"), "1");

    // And so does down.
    set_sysctl(&gw.ns, "net.ipv6.conf.all.forwarding", "0");
    nm.ok(&["apply", &m]);
    assert_eq!(sysctl(&gw.ns, "net.ipv6.conf.all.forwarding"), "1");
    let out = nm.ok(&["down"]);
    assert!(
        out.contains("~ sysctl net.ipv4.ip_forward 1 -> 0\n"),
        "{out}"
    );
    assert!(
        out.contains("~ sysctl net.ipv6.conf.all.forwarding 1 -> 0\n"),
        "{out}"
    );
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&gw.ns, "net.ipv6.conf.all.forwarding"), "0");
}

/// Without `firewall` nothing runs nft: a host without it keeps working.
#[test]
fn no_firewall_section_never_runs_nft() {
    let gw = Gw::new("nonft");
    let nm = gw.nm();
    let plain = gw.write(
        "a.yaml",
        &manifest(
            "site-a",
            "10.10.0.1/24",
            &gw.key_file,
            None,
            "forwarding: true\n",
        ),
    );
    let without_nft = |args: &[&str]| {
        let o = run(nm.cmd(args).env("NETMAN_NFT", "/nonexistent/nft"));
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = without_nft(&["apply", &plain]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(without_nft(&["diff", &plain]).0, 0);

    // With a firewall section the missing nft is named, and nothing applied.
    filter_table(&gw);
    let fw = gw.write("fw.yaml", &firewall_manifest(&gw, &RULES));
    let before = gw.ns.snapshot();
    let (code, _, err) = without_nft(&["apply", &fw]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nothing applied: cannot run `nft`: /nonexistent/nft not found"),
        "{err}"
    );
    assert!(err.contains("nftables"), "{err}");
    assert_eq!(gw.ns.snapshot(), before);
    let (code, _, _) = without_nft(&["down"]);
    assert_eq!(code, 0);
    // A missing target chain is an error naming the manifest position.
    let m = gw.write(
        "m.yaml",
        &firewall_manifest(&gw, &RULES).replace("DOCKER-USER", "DOCKER-USR"),
    );
    let (code, _, err) = nm.out(&["apply", &m]);
    assert_eq!(code, 1);
    assert!(
        err.contains("m.yaml:22:14: firewall.insert[0].chain: chain DOCKER-USR does not exist in table ip filter"),
        "{err}"
    );
}

/// A failure after the nft transaction (here: the engine cannot bind its
/// port, taken by another deployment) puts nftables and the sysctls back
/// as they were, and the record still matches the restored table.
#[test]
fn a_failure_after_nft_restores_the_ruleset_and_sysctls() {
    let gw = single("rvrt");
    filter_table(&gw);
    let nm = gw.nm();
    // Another deployment holds UDP port 51821.
    let other = gw.write(
        "other.yaml",
        &manifest("other", "10.11.0.1/24", &gw.key_file, None, "")
            .replace("name: nm0", "name: nm1")
            .replace("51820", "51821"),
    );
    nm.ok(&["apply", &other]);

    // First apply fails: nothing is left behind.
    let before = ruleset(&gw.ns);
    let links = gw.ns.snapshot();
    let m = firewall_manifest(&gw, &RULES);
    let bad = gw.write("bad.yaml", &m.replace("51820", "51821"));
    let (code, _, err) = nm.out(&["apply", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reverted"), "{err}");
    assert_eq!(ruleset(&gw.ns), before, "the ruleset was not restored");
    assert_eq!(gw.ns.snapshot(), links);
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "0");
    assert!(!gw.dir.join("state/site-a.json").exists());

    // A failing change to a working deployment: the table is re-created
    // as it was, and `diff` still finds it in sync with the old manifest.
    let good = gw.write("good.yaml", &m);
    nm.ok(&["apply", &good]);
    let text_before = nft(&gw.ns, &["-s", "list", "ruleset"]);
    let changed = firewall_manifest(&gw, &[RULES[0], "meta l4proto icmpv6 accept"])
        .replace("forwarding: true\n", "")
        .replace("oifname \"lan0\" accept\n", "oifname \"lan1\" accept\n")
        .replace("51820", "51821");
    let bad = gw.write("bad2.yaml", &changed);
    let (code, _, err) = nm.out(&["apply", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reverted"), "{err}");
    assert_eq!(nft(&gw.ns, &["-s", "list", "ruleset"]), text_before);
    assert_eq!(sysctl(&gw.ns, "net.ipv4.ip_forward"), "1");
    let (code, out, err) = nm.out(&["diff", &good]);
    assert_eq!(code, 0, "{out}{err}");
    nm.ok(&["down", "site-a"]);
    nm.ok(&["down", "other"]);
    assert!(!nft(&gw.ns, &["list", "tables"]).contains("netman"));
}

/// A TCP exchange for the MSS clamping test: the client sends N bytes, the
/// server sends as many back; each side prints the MSS its socket uses
/// (`TCP_MAXSEG`). Every blocking step has a timeout.
const MSS_EXCHANGE: &str = r#"
import socket, sys
mode, addr, port, n, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def recvn(c, n):
    got = 0
    while got < n:
        d = c.recv(min(65536, n - got))
        if not d:
            break
        got += len(d)
    return got
if mode == "server":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(t)
    c, _ = s.accept()
    c.settimeout(t)
    got = recvn(c, n)
    c.sendall(b"y" * got)
    print("mss", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), "got", got, flush=True)
    c.close()
else:
    c = socket.create_connection((addr, port), timeout=t)
    print("mss", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
    c.sendall(b"x" * n)
    print("back", recvn(c, n), flush=True)
"#;

/// The MSS a line `mss N ...` of [`MSS_EXCHANGE`] reports.
fn reported_mss(out: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| l.strip_prefix("mss "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One [`MSS_EXCHANGE`] of `bytes` from `client` to `server_addr` (in
/// `server`) and back, each blocking step bounded by `secs`: (client
/// succeeded, client output, server output).
fn mss_exchange(
    client: &NetNs,
    server: &NetNs,
    server_addr: &str,
    port: u16,
    bytes: usize,
    secs: u32,
) -> (bool, String, String) {
    require_tool("python3", "the Debian package python3");
    let args = |mode: &str| {
        vec![
            "-c".to_owned(),
            MSS_EXCHANGE.to_owned(),
            mode.to_owned(),
            server_addr.to_owned(),
            port.to_string(),
            bytes.to_string(),
            secs.to_string(),
        ]
    };
    let srv = Bg::spawn(
        "python3 exchange server",
        server.cmd("python3").args(args("server")),
    );
    assert!(
        wait_until(Duration::from_secs(10), || tcp_listening(server, port)),
        "the exchange server in {} did not start",
        server.name
    );
    let out = run(client
        .cmd("timeout")
        .arg((secs * 3).to_string())
        .arg("python3")
        .args(args("client")));
    let srv = srv.finish(Duration::from_secs(u64::from(secs) * 3));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.success() && text(&out.stdout).contains(&format!("back {bytes}")),
        text(&out.stdout) + &text(&out.stderr),
        text(&srv.stdout) + &text(&srv.stderr),
    )
}

/// `interface.mss_clamp`: two LANs with MTU 1500 joined through a tunnel
/// of MTU 1420, with the ICMP "fragmentation needed" messages lost (a PMTU
/// black hole, as behind many firewalls). Without clamping, a TCP transfer
/// between the LAN hosts stalls; with the default clamp of a forwarding
/// gateway (on site A only) it completes, both ways, with an MSS that fits
/// the tunnel; a fixed clamp sets that MSS; `down` removes the chain.
#[test]
fn mss_clamping_carries_tcp_across_a_pmtu_black_hole() {
    let p = pair("mss");
    let ca = lan(
        &p.a.ns,
        "mssa-c",
        "172.18.1.1/24",
        "172.18.1.2/24",
        "172.18.1.1",
    );
    let cb = lan(
        &p.b.ns,
        "mssb-c",
        "172.18.2.1/24",
        "172.18.2.2/24",
        "172.18.2.1",
    );
    // The black hole: the LAN hosts never hear that their segments are
    // too big for the tunnel.
    for c in [&ca, &cb] {
        nft(c, &["add", "table", "inet", "blackhole"]);
        nft(
            c,
            &[
                "add",
                "chain",
                "inet",
                "blackhole",
                "in",
                "{ type filter hook input priority 0 ; }",
            ],
        );
        nft(
            c,
            &[
                "add",
                "rule",
                "inet",
                "blackhole",
                "in",
                "icmp",
                "type",
                "destination-unreachable",
                "icmp",
                "code",
                "frag-needed",
                "drop",
            ],
        );
    }
    // Site B never clamps: site A's clamp alone must fix both directions.
    let (ma, mb) = p.manifests(
        "10.10.0.2/32, 172.18.2.0/24",
        "10.10.0.1/32, 172.18.1.0/24",
        "forwarding: true\n",
        "forwarding: true\n",
    );
    p.a.nm().ok(&["apply", &ma]);
    p.b.nm().ok(&["apply", &mb]);
    assert!(
        wait_ping(&ca, "172.18.2.2", Duration::from_secs(15)),
        "the LAN hosts cannot reach each other through the tunnel"
    );
    const BYTES: usize = 2 << 20;

    // Clamping off (as `manifest` writes it): the first full-size segment
    // never arrives.
    let (done, client, server) = mss_exchange(&ca, &cb, "172.18.2.2", 7101, BYTES, 4);
    assert!(
        !done,
        "the transfer got through the black hole without clamping: the test shows nothing\nclient: {client}\nserver: {server}"
    );
    assert_eq!(reported_mss(&client), Some(1448), "client: {client}");

    // The default with forwarding: clamped to the tunnel.
    let text = std::fs::read_to_string(&ma).expect("read manifest");
    let ma =
        p.a.write("a-clamp.yaml", &text.replace("  mss_clamp: off\n", ""));
    let out = p.a.nm().ok(&["apply", &ma]);
    assert_eq!(
        lines(&out),
        vec![
            "+ table inet netman_site-a",
            "+ chain mss_clamp (filter hook forward priority -150 policy accept)",
            "+ rule mss_clamp: oifname \"nm0\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu",
            "+ rule mss_clamp: iifname \"nm0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380",
            "+ rule mss_clamp: iifname \"nm0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360",
            "applied: deployment site-a",
        ]
    );
    assert_eq!(p.a.nm().out(&["diff", &ma]).0, 0, "not in sync after apply");
    // The exchange completes, and each side sends with the MSS `mss`: the
    // client with the server's clamped one (SYN-ACK out of the tunnel), the
    // server with the client's (SYN into it); both less the 12 bytes of the
    // timestamp option.
    let completes_with = |port: u16, mss: u32, what: &str| {
        let (done, client, server) = mss_exchange(&ca, &cb, "172.18.2.2", port, BYTES, 20);
        assert!(
            done,
            "the transfer stalled {what}\nclient: {client}\nserver: {server}"
        );
        assert_eq!(reported_mss(&client), Some(mss), "{what}: client: {client}");
        assert_eq!(reported_mss(&server), Some(mss), "{what}: server: {server}");
    };
    completes_with(7102, 1368, "with clamping");

    // A fixed MSS.
    let ma = p.a.write(
        "a-1200.yaml",
        &text.replace("  mss_clamp: off\n", "  mss_clamp: 1200\n"),
    );
    p.a.nm().ok(&["apply", &ma]);
    completes_with(7103, 1188, "with a fixed clamp");

    // `down` takes the chain (and netman's table) away.
    p.a.nm().ok(&["down", "site-a"]);
    let tables = nft(&p.a.ns, &["list", "tables"]);
    assert!(!tables.contains("netman"), "{tables}");
}
