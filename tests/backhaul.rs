//! Full-tunnel backhaul (issue 13): a branch whose only peer, the hub, has
//! `allowed_ips: [0.0.0.0/0, ::/0]` (or the split form), on a host that
//! already has a default route via its uplink. The hub is off-link, reached
//! through an underlay router namespace; an "internet" host sits behind the
//! hub, which forwards and masquerades. Checks that the tunnel carries the
//! branch's traffic to the internet host, that the tunnel's own datagrams
//! still leave by the uplink (fwmark + netman's table + policy rules), that
//! the host's own default route is untouched, that a deleted rule is
//! repaired by the watcher, and that `down` restores routes and rules
//! exactly.

mod common;

use std::time::Duration;

use common::{NetNs, Netman, Site, require_tool, run_ok, veth, wait_ping, wait_until};

const HUB_PORT: u16 = 51820;
const BRANCH_PORT: u16 = 51821;

/// Everything routing-related in a namespace, all tables and both families.
fn routing_dump(ns: &NetNs) -> String {
    let mut s = String::new();
    for args in [
        &["rule", "show"][..],
        &["-6", "rule", "show"][..],
        &["route", "show", "table", "all"][..],
        &["-6", "route", "show", "table", "all"][..],
    ] {
        s.push_str(&ns.ip(args));
        s.push_str("----\n");
    }
    s
}

/// Packets counted by the nft rule with `comment` in `table inet t`.
fn counter(ns: &NetNs, comment: &str) -> u64 {
    let out = run_ok(ns.cmd("nft").args(["-a", "list", "table", "inet", "t"]));
    let line = out
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment} in:\n{out}"));
    let after = line
        .split("packets ")
        .nth(1)
        .unwrap_or_else(|| panic!("no counter in {line}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad counter in {line}"))
}

fn nft(ns: &NetNs, script: &str) {
    let mut c = ns.cmd("nft");
    c.args(["-f", "-"]);
    c.stdin(std::process::Stdio::piped());
    c.stdout(std::process::Stdio::piped());
    c.stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn nft");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("nft stdin"),
        script.as_bytes(),
    )
    .expect("write nft script");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log(s: &Site) -> String {
    std::fs::read_to_string(s.state_dir().join(format!("{}.log", s.deployment))).unwrap_or_default()
}

struct World {
    hub: Site,
    branch: Site,
    router: NetNs,
    internet: NetNs,
}

/// branch --(up0, 192.168.1.0/24)-- router --(198.51.100.0/24)-- hub
/// --(203.0.113.0/24, 2001:db8:113::/64)-- internet. The router knows
/// nothing of 203.0.113.0/24: the internet host is reachable from the
/// branch only through the tunnel, and it knows only its own subnet, so
/// its replies come back only to the hub's masqueraded address.
fn world(tag: &str) -> World {
    require_tool("nft", "the Debian package nftables");
    let hub = Site::new(&format!("{tag}hub"), "hub");
    let branch = Site::new(&format!("{tag}br"), "branch");
    let router = NetNs::new(&format!("{tag}rt"));
    let internet = NetNs::new(&format!("{tag}in"));
    veth(
        &branch.ns,
        "up0",
        Some("192.168.1.2/24"),
        &router,
        "r-br",
        Some("192.168.1.1/24"),
    );
    veth(
        &router,
        "r-hub",
        Some("198.51.100.1/24"),
        &hub.ns,
        "up0",
        Some("198.51.100.2/24"),
    );
    veth(
        &hub.ns,
        "inet0",
        Some("203.0.113.1/24"),
        &internet,
        "eth0",
        Some("203.0.113.2/24"),
    );
    hub.ns
        .ip(&["addr", "add", "2001:db8:113::1/64", "dev", "inet0", "nodad"]);
    internet.ip(&["addr", "add", "2001:db8:113::2/64", "dev", "eth0", "nodad"]);
    branch
        .ns
        .ip(&["route", "add", "default", "via", "192.168.1.1"]);
    // The uplink's link-local address (and its local route) comes a moment
    // after the link is up: wait for it, so before/after dumps compare.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let a = branch
                .ns
                .ip(&["-6", "addr", "show", "dev", "up0", "scope", "link"]);
            a.contains("fe80") && !a.contains("tentative")
        }),
        "no link-local address on the branch's uplink"
    );
    hub.ns
        .ip(&["route", "add", "default", "via", "198.51.100.1"]);
    run_ok(router.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    // Counters: the tunnel's datagrams by outgoing interface (branch), and
    // what reaches the internet host by source address.
    nft(
        &branch.ns,
        &format!(
            "table inet t {{\n chain out {{\n type filter hook output priority 0\n \
             oifname \"up0\" udp dport {HUB_PORT} counter comment \"via-uplink\"\n \
             oifname \"nm0\" udp dport {HUB_PORT} counter comment \"via-tunnel\"\n }}\n}}\n"
        ),
    );
    nft(
        &internet,
        "table inet t {\n chain in {\n type filter hook input priority 0\n \
         ip saddr 203.0.113.1 icmp type echo-request counter comment \"from-hub\"\n \
         ip saddr != 203.0.113.1 icmp type echo-request counter comment \"from-other\"\n \
         ip6 saddr 2001:db8:113::1 icmpv6 type echo-request counter comment \"from-hub6\"\n }\n}\n",
    );
    World {
        hub,
        branch,
        router,
        internet,
    }
}

fn hub_manifest(w: &World) -> String {
    let text = format!(
        "name: hub\n\
         interface:\n  name: nm0\n  addresses: [10.10.0.1/24, fd10::1/64]\n  listen_port: {HUB_PORT}\n  private_key_file: {}\n\
         peers:\n  - name: branch\n    public_key: \"{}\"\n    allowed_ips: [10.10.0.2/32, fd10::2/128]\n\
         forwarding: true\n\
         firewall:\n  chains:\n    - name: nat\n      hook: postrouting\n      type: nat\n      rules:\n\
         \x20       - oifname \"inet0\" ip saddr 10.10.0.0/24 masquerade\n\
         \x20       - oifname \"inet0\" ip6 saddr fd10::/64 masquerade\n",
        w.hub.key.private_file.display(),
        w.branch.key.public,
    );
    w.hub.dir.write("hub.yaml", &text).display().to_string()
}

fn branch_manifest(w: &World, allowed: &str) -> String {
    let text = format!(
        "name: branch\n\
         interface:\n  name: nm0\n  addresses: [10.10.0.2/24, fd10::2/64]\n  listen_port: {BRANCH_PORT}\n  private_key_file: {}\n\
         peers:\n  - name: hub\n    public_key: \"{}\"\n    endpoint: 198.51.100.2:{HUB_PORT}\n    allowed_ips: [{allowed}]\n    persistent_keepalive: 5\n",
        w.branch.key.private_file.display(),
        w.hub.key.public,
    );
    w.branch
        .dir
        .write("branch.yaml", &text)
        .display()
        .to_string()
}

/// The branch's traffic to the internet host goes through the tunnel and
/// out of the hub, masqueraded.
fn assert_through_tunnel(w: &World, target: &str, hub_counter: &str) {
    let before = counter(&w.internet, hub_counter);
    assert!(
        wait_ping(&w.branch.ns, target, Duration::from_secs(20)),
        "no ping from the branch to {target} through the tunnel\nbranch routing:\n{}\nhub log:\n{}\nbranch log:\n{}",
        routing_dump(&w.branch.ns),
        log(&w.hub),
        log(&w.branch)
    );
    assert!(
        counter(&w.internet, hub_counter) > before,
        "the internet host did not see the hub's address as the source"
    );
    assert_eq!(
        counter(&w.internet, "from-other"),
        0,
        "the internet host saw a ping from another source than the hub"
    );
}

fn assert_datagrams_via_uplink(w: &World) {
    let via_uplink = counter(&w.branch.ns, "via-uplink");
    assert!(via_uplink > 0, "no tunnel datagram left by the uplink");
    assert_eq!(
        counter(&w.branch.ns, "via-tunnel"),
        0,
        "tunnel datagrams were routed into the tunnel (a loop)"
    );
    // The kernel agrees: marked traffic to the endpoint takes the uplink,
    // unmarked traffic elsewhere takes the tunnel.
    let marked = w.branch.ns.ip(&[
        "route",
        "get",
        "198.51.100.2",
        "mark",
        &BRANCH_PORT.to_string(),
    ]);
    assert!(marked.contains("dev up0"), "{marked}");
    let unmarked = w.branch.ns.ip(&["route", "get", "203.0.113.2"]);
    assert!(unmarked.contains("dev nm0"), "{unmarked}");
    // The host's own routes other than the default still win.
    let router = w.branch.ns.ip(&["route", "get", "192.168.1.1"]);
    assert!(router.contains("dev up0"), "{router}");
}

#[test]
fn full_tunnel_default_route_goes_through_the_hub_and_down_restores_routing() {
    let w = world("bh");
    let _ = &w.router;
    let before = routing_dump(&w.branch.ns);
    assert!(
        before.contains("default via 192.168.1.1 dev up0"),
        "{before}"
    );

    let hub = hub_manifest(&w);
    w.hub.nm().ok(&["apply", &hub]);
    let branch = branch_manifest(&w, "0.0.0.0/0, ::/0");
    let nm = w.branch.nm();

    // `diff` explains the automatic choice and shows the rules.
    let (code, diff, err) = nm.out(&["diff", &branch]);
    assert_eq!(code, 1, "{diff}{err}");
    assert!(
        diff.contains(&format!(
            "# interface.table {BRANCH_PORT} and interface.fwmark {BRANCH_PORT} chosen automatically (interface.listen_port)"
        )),
        "{diff}"
    );
    for line in [
        format!("+ route 0.0.0.0/0 dev nm0 table {BRANCH_PORT}\n"),
        format!("+ route ::/0 dev nm0 table {BRANCH_PORT}\n"),
        "+ policy rule ipv4 32764: lookup main suppress_prefixlength 0\n".to_string(),
        format!("+ policy rule ipv4 32765: not fwmark {BRANCH_PORT} lookup {BRANCH_PORT}\n"),
        "+ policy rule ipv6 32764: lookup main suppress_prefixlength 0\n".to_string(),
        format!("+ policy rule ipv6 32765: not fwmark {BRANCH_PORT} lookup {BRANCH_PORT}\n"),
    ] {
        assert!(diff.contains(&line), "missing {line:?} in:\n{diff}");
    }

    nm.ok(&["apply", &branch]);
    // The rules are netman's (proto 233), the host's default route stays.
    let rules = w.branch.ns.ip(&["rule", "show"]);
    assert!(
        rules.contains(&format!(
            "32765:\tnot from all fwmark 0x{BRANCH_PORT:x} lookup {BRANCH_PORT} proto 233"
        )),
        "{rules}"
    );
    assert!(
        rules.contains("32764:\tfrom all lookup main suppress_prefixlength 0 proto 233"),
        "{rules}"
    );
    let main = w.branch.ns.ip(&["route", "show", "table", "main"]);
    assert!(main.contains("default via 192.168.1.1 dev up0"), "{main}");
    assert!(!main.contains("nm0 proto 233"), "{main}");

    assert_through_tunnel(&w, "203.0.113.2", "from-hub");
    assert_through_tunnel(&w, "2001:db8:113::2", "from-hub6");
    assert_datagrams_via_uplink(&w);
    let (code, out, err) = nm.out(&["diff"]);
    assert_eq!(code, 0, "not in sync after apply:\n{out}{err}");

    // Drift: a rule deleted by hand comes back (the watcher).
    w.branch.ns.ip(&["rule", "del", "priority", "32765"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            w.branch
                .ns
                .ip(&["rule", "show"])
                .contains(&format!("not from all fwmark 0x{BRANCH_PORT:x}"))
        }),
        "the deleted rule was not repaired:\n{}\n{}",
        w.branch.ns.ip(&["rule", "show"]),
        log(&w.branch)
    );
    assert_through_tunnel(&w, "203.0.113.2", "from-hub");

    // `down` puts routes and rules back exactly.
    nm.ok(&["down", "branch"]);
    assert_eq!(routing_dump(&w.branch.ns), before);
    w.hub.nm().ok(&["down", "hub"]);
}

#[test]
fn split_default_route_does_not_loop_and_down_restores_routing() {
    let w = world("bs");
    let before = routing_dump(&w.branch.ns);
    let hub = hub_manifest(&w);
    w.hub.nm().ok(&["apply", &hub]);
    let branch = branch_manifest(&w, "0.0.0.0/1, 128.0.0.0/1");
    let nm = w.branch.nm();
    nm.ok(&["apply", &branch]);
    let table = w
        .branch
        .ns
        .ip(&["route", "show", "table", &BRANCH_PORT.to_string()]);
    assert!(
        table.contains("0.0.0.0/1 dev nm0 proto 233")
            && table.contains("128.0.0.0/1 dev nm0 proto 233"),
        "{table}"
    );
    assert_through_tunnel(&w, "203.0.113.2", "from-hub");
    assert_datagrams_via_uplink(&w);
    nm.ok(&["down", "branch"]);
    assert_eq!(routing_dump(&w.branch.ns), before);
}

/// Without the fwmark scheme (`table: main`), the clash the issue reported
/// is still refused cleanly: nothing is left behind.
#[test]
fn default_route_in_main_table_clashes_and_reverts() {
    let w = world("bm");
    let before = routing_dump(&w.branch.ns);
    let branch = branch_manifest(&w, "0.0.0.0/0");
    let text = std::fs::read_to_string(&branch).expect("read manifest");
    let text = text.replace("  private_key_file:", "  table: main\n  private_key_file:");
    std::fs::write(&branch, text).expect("write manifest");
    let nm: Netman<'_> = w.branch.nm();
    let out = nm.run(&["apply", &branch]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add route 0.0.0.0/0 dev nm0"), "{err}");
    assert_eq!(routing_dump(&w.branch.ns), before);
}

/// A second full tunnel of one address family in the same namespace is
/// refused before anything changes: the two would share the `lookup main
/// suppress_prefixlength 0` rule (the first one's `down` would pull it
/// from under the second), and each one's default route would catch the
/// other's own datagrams.
#[test]
fn a_second_full_tunnel_of_a_family_is_refused_and_changes_nothing() {
    let w = world("b2");
    let before = routing_dump(&w.branch.ns);
    let hub = hub_manifest(&w);
    w.hub.nm().ok(&["apply", &hub]);
    let branch = branch_manifest(&w, "0.0.0.0/0, ::/0");
    let nm = w.branch.nm();
    nm.ok(&["apply", &branch]);
    let applied = routing_dump(&w.branch.ns);

    let second = w.branch.dir.write(
        "second.yaml",
        &format!(
            "name: second\n\
             interface:\n  name: nm1\n  addresses: [10.20.0.2/24]\n  listen_port: 51822\n  private_key_file: {}\n\
             peers:\n  - name: hub\n    public_key: \"{}\"\n    endpoint: 198.51.100.2:{HUB_PORT}\n    allowed_ips: [0.0.0.0/0]\n",
            w.branch.key.private_file.display(),
            w.hub.key.public,
        ),
    );
    let second = second.display().to_string();
    // `diff` cannot tell (2); `apply` applied nothing (1), as for a
    // foreign link.
    for (cmd, exit) in [("diff", 2), ("apply", 1)] {
        let (code, out, err) = nm.out(&[cmd, &second]);
        assert_eq!(code, exit, "{cmd}: {out}{err}");
        assert!(
            err.contains("policy rule ipv4 32764: lookup main suppress_prefixlength 0: exists with netman's protocol but is not this deployment's")
                && err.contains("`ip rule del priority 32764`"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(
        routing_dump(&w.branch.ns),
        applied,
        "the refused apply changed routing"
    );
    assert!(
        !w.branch.ns.ip(&["link", "show"]).contains("nm1"),
        "the refused apply made a link"
    );
    assert_through_tunnel(&w, "203.0.113.2", "from-hub");

    nm.ok(&["down", "branch"]);
    assert_eq!(routing_dump(&w.branch.ns), before);
    w.hub.nm().ok(&["down", "hub"]);
}
