//! The network file (issue 14): one table test per finding of
//! `netman validate network.yaml` (each at its FILE:LINE:COL in the
//! network file), the derivation network × site → v1 manifest (golden
//! files under `tests/golden/network/`, `UPDATE_GOLDEN=1` rewrites them),
//! the lookup API apply will use, and the CLI (`render`, `validate
//! --output github`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, golden_dirs, netman_bin};
use netman::manifest::{self, ManifestErrors, PublicKey};
use netman::network::{self, Network};

const K1: &str = "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=";
const K2: &str = "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=";
const K3: &str = "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=";

const FILE: &str = "net.yaml";

/// A valid hub and two branches; line N is `BASE.lines()[N - 1]`.
fn base() -> String {
    [
        "network: corp",
        "defaults:",
        "  listen_port: 51820",
        "  private_key_file: /etc/netman/private.key",
        "sites:",
        "  - name: hq",
        &format!("    public_key: {K1}"),
        "    addresses: [10.10.0.1/24, fd10::1/64]",
        "    subnets: [172.18.1.0/24]",
        "    endpoint: 192.0.2.1:51820",
        "  - name: b1",
        &format!("    public_key: {K2}"),
        "    addresses: [10.10.0.2/24, fd10::2/64]",
        "    subnets: [172.18.2.0/24]",
        "  - name: b2",
        &format!("    public_key: {K3}"),
        "    addresses: [10.10.0.3/24, fd10::3/64]",
        "    subnets: [172.18.3.0/24]",
        "topology:",
        "  hub_and_spoke:",
        "    hubs: [hq]",
        "",
    ]
    .join("\n")
}

/// A table row: what, the edits of the base network, the findings.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

fn parse(text: &str) -> Result<Network, ManifestErrors> {
    network::parse(text, Path::new(FILE))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(n) => panic!(
            "expected errors, got a network of {} sites\n{text}",
            n.sites.len()
        ),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// `base()` with `from` replaced by `to` (which must be there).
fn edit(edits: &[(&str, &str)]) -> String {
    let mut text = base();
    for (from, to) in edits {
        assert!(text.contains(from), "the base network lacks {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

#[test]
fn the_base_network_is_valid() {
    let n = parse(&base()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n.name, "corp");
    assert_eq!(n.links, vec![(0, 1), (0, 2)]);
    assert!(n.warnings.is_empty(), "{:?}", n.warnings);
}

/// Every finding of the network's own rules, one row each: the edit of
/// the base network and every line `validate` must print, in order.
#[test]
fn each_network_finding_is_positioned_in_the_network_file() {
    let cases: &[Case<'_>] = &[
        (
            "duplicate site name",
            &[("  - name: b2", "  - name: b1")],
            &["net.yaml:15:11: sites[2].name: duplicate site name `b1` (already sites[1])"],
        ),
        (
            "duplicate public key",
            &[(
                &format!("    public_key: {K3}"),
                &format!("    public_key: {K2}"),
            )],
            &["net.yaml:16:17: sites[2].public_key: the same public key as site `b1` (sites[1])"],
        ),
        (
            "a key that is not a key, reported once (not once per manifest naming it)",
            &[(&format!("    public_key: {K3}"), "    public_key: nokey")],
            &[
                "net.yaml:16:17: sites[2].public_key: not valid base64 (expected 44 characters of standard base64 with `=` padding, as printed by `wg pubkey`)",
            ],
        ),
        (
            "duplicate overlay address",
            &[("10.10.0.3/24", "10.10.0.2/24")],
            &[
                "net.yaml:17:17: sites[2].addresses[0]: overlay address 10.10.0.2 is already used at sites[1].addresses[0]",
            ],
        ),
        (
            "overlapping subnets",
            &[("[172.18.3.0/24]", "[172.18.0.0/16]")],
            &[
                "net.yaml:18:15: sites[2].subnets[0]: 172.18.0.0/16 overlaps 172.18.1.0/24 of site `hq` (sites[0].subnets[0]): a prefix can route to one site only",
            ],
        ),
        (
            "a subnet holding another site's overlay address",
            &[("[172.18.3.0/24]", "[10.10.0.0/29]")],
            &[
                "net.yaml:18:15: sites[2].subnets[0]: 10.10.0.0/29 overlaps 10.10.0.1/32 of site `hq` (sites[0].addresses[0]): a prefix can route to one site only",
            ],
        ),
        (
            "a hub without an endpoint",
            &[("    endpoint: 192.0.2.1:51820\n", "")],
            &[
                "net.yaml:20:12: topology.hub_and_spoke.hubs[0]: hub `hq` has no endpoint: no spoke could ever reach it",
            ],
        ),
        (
            "a hub that is no site",
            &[("hubs: [hq]", "hubs: [hq, hub2]")],
            &["net.yaml:21:16: topology.hub_and_spoke.hubs[1]: no site named `hub2`"],
        ),
        (
            "an endpoint port that is not the listen port",
            &[("192.0.2.1:51820", "192.0.2.1:51821")],
            &[
                "net.yaml:10:15: sites[0].endpoint: port 51821 is not the site's listen_port 51820 (defaults.listen_port, line 3)",
            ],
        ),
        (
            "an endpoint without a listen port",
            &[("  listen_port: 51820\n", "")],
            &[
                "net.yaml:9:15: sites[0].endpoint: the site has an endpoint but no listen_port: it would listen on a random port (set listen_port)",
            ],
        ),
        (
            "no private key file",
            &[("  private_key_file: /etc/netman/private.key\n", "")],
            &[
                "net.yaml:5:11: sites[0]: no private_key_file: set it for the site or in defaults",
                "net.yaml:10:11: sites[1]: no private_key_file: set it for the site or in defaults",
                "net.yaml:14:11: sites[2]: no private_key_file: set it for the site or in defaults",
            ],
        ),
        (
            "a mesh pair with no endpoint on either side",
            &[("  hub_and_spoke:\n    hubs: [hq]", "  mesh: true")],
            &[
                "net.yaml:20:9: topology.mesh: sites `b1`, `b2` have no endpoint: the tunnels between them can never handshake",
            ],
        ),
        (
            "links: no endpoint, unknown site, self, twice, not a pair",
            &[(
                "  hub_and_spoke:\n    hubs: [hq]",
                "  links:\n    - [hq, b1]\n    - [b1, b2]\n    - [b1, nowhere]\n    - [b2, b2]\n    - [b1, hq]\n    - [hq]",
            )],
            &[
                "net.yaml:22:7: topology.links[1]: neither `b1` nor `b2` has an endpoint: this tunnel can never handshake",
                "net.yaml:23:12: topology.links[2][1]: no site named `nowhere`",
                "net.yaml:24:7: topology.links[3]: a link joins two different sites",
                "net.yaml:25:7: topology.links[4]: the same link again",
                "net.yaml:26:7: topology.links[5]: a link is two site names, [a, b]; found 1",
            ],
        ),
        (
            "no topology",
            &[("  hub_and_spoke:\n    hubs: [hq]", "  mesh: false")],
            &[
                "net.yaml:20:3: topology: no topology: say `mesh: true`, `hub_and_spoke: {hubs: [...]}` or `links: [[a, b], ...]`",
            ],
        ),
        (
            "two topologies",
            &[("    hubs: [hq]", "    hubs: [hq]\n  mesh: true")],
            &[
                "net.yaml:20:3: topology: more than one topology: say only one of mesh, hub_and_spoke and links",
            ],
        ),
        (
            "an MTU below 1280 on a site that carries IPv6 for its peers",
            &[("10.10.0.2/24, fd10::2/64]", "10.10.0.2/24]\n    mtu: 1200")],
            &[
                "net.yaml:14:10: sites[1].mtu: MTU 1200 of site `b1` is below 1280, the IPv6 minimum, and the site carries IPv6 (default 1420)",
            ],
        ),
        (
            "an input chain that drops by policy without opening the listen port",
            &[(
                "    endpoint: 192.0.2.1:51820\n",
                "    endpoint: 192.0.2.1:51820\n    firewall:\n      chains:\n        - name: in\n          hook: input\n          policy: drop\n          rules: [\"tcp dport 22 accept\"]\n",
            )],
            &[
                "net.yaml:15:19: sites[0].firewall.chains[0].policy: site `hq`: input chain `in` drops by policy and no rule accepts udp dport 51820 (the listen port): no peer can reach the site",
            ],
        ),
        (
            "every finding at once, in document order",
            &[
                ("  - name: b2", "  - name: b1"),
                ("[172.18.3.0/24]", "[172.18.2.0/24]"),
                ("192.0.2.1:51820", "192.0.2.1:1"),
            ],
            &[
                "net.yaml:10:15: sites[0].endpoint: port 1 is not the site's listen_port 51820 (defaults.listen_port, line 3)",
                "net.yaml:15:11: sites[2].name: duplicate site name `b1` (already sites[1])",
                "net.yaml:18:15: sites[2].subnets[0]: 172.18.2.0/24 overlaps 172.18.2.0/24 of site `b1` (sites[1].subnets[0]): a prefix can route to one site only",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, edits, want) in cases {
        let got = errors(&edit(edits));
        if got != *want {
            failures.push(format!("{what}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The rules of the derived v1 manifests, reported at the network file's
/// value that produced the offending line, naming the site.
#[test]
fn derived_manifest_errors_map_back_to_the_network_file() {
    let cases: &[Case<'_>] = &[
        (
            "a bad interface name in defaults: once, not once per site",
            &[(
                "  listen_port: 51820\n",
                "  listen_port: 51820\n  interface: a/b\n",
            )],
            &[
                "net.yaml:4:14: defaults.interface: invalid character '/' in interface name ('/', ':', NUL and whitespace are not allowed) (manifest of site hq: interface.name)",
            ],
        ),
        (
            "a bad overlay address",
            &[("10.10.0.3/24", "10.10.0.300/24")],
            &[
                "net.yaml:17:17: sites[2].addresses[0]: \"10.10.0.300/24\" is not a valid CIDR (expected ADDRESS/PREFIX_LEN, e.g. 10.10.0.1/24 or fd10::1/64) (manifest of site b2: interface.addresses[0])",
            ],
        ),
        (
            "a firewall chain with an unknown hook",
            &[(
                "    endpoint: 192.0.2.1:51820\n",
                "    endpoint: 192.0.2.1:51820\n    firewall:\n      chains:\n        - name: fwd\n          hook: sideways\n",
            )],
            &[
                "net.yaml:14:17: sites[0].firewall.chains[0].hook: unknown hook \"sideways\" (expected prerouting | input | forward | output | postrouting) (manifest of site hq: firewall.chains[0].hook)",
            ],
        ),
        (
            "a listen port out of range",
            &[("  listen_port: 51820", "  listen_port: 70000")],
            &[
                "net.yaml:3:16: defaults.listen_port: port 70000 is out of range (1..=65535) (manifest of site hq: interface.listen_port)",
                "net.yaml:10:15: sites[0].endpoint: port 51820 is not the site's listen_port 70000 (defaults.listen_port, line 3)",
            ],
        ),
        (
            "a non-integer MTU is reported by the manifest's rule",
            &[(
                "    subnets: [172.18.2.0/24]",
                "    subnets: [172.18.2.0/24]\n    mtu: \"big\"",
            )],
            &[
                "net.yaml:15:10: sites[1].mtu: expected an integer, found string (manifest of site b1: interface.mtu)",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, edits, want) in cases {
        let got = errors(&edit(edits));
        if got != *want {
            failures.push(format!("{what}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unknown_keys_and_wrong_types_are_positioned() {
    let got = errors(&edit(&[(
        "    subnets: [172.18.2.0/24]",
        "    subnet: [172.18.2.0/24]",
    )]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("net.yaml:14:5: sites[1].subnet: unknown key `subnet` (expected one of: name, public_key, addresses, subnets, endpoint, interface, mtu, txqueuelen, listen_port,"),
        "{got:?}"
    );
    let got = errors(&edit(&[("network: corp", "network: [corp]")]));
    assert_eq!(got, ["net.yaml:1:10: network: expected a string"]);
}

/// Warnings: a site in no link; an input chain that drops by policy on a
/// site nobody reaches through an endpoint.
#[test]
fn warnings_do_not_invalidate() {
    let n = parse(&edit(&[
        ("  hub_and_spoke:\n    hubs: [hq]", "  links:\n    - [hq, b1]"),
        (
            "    subnets: [172.18.2.0/24]\n",
            "    subnets: [172.18.2.0/24]\n    firewall:\n      chains:\n        - name: in\n          hook: input\n          policy: drop\n",
        ),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<String> = n.warnings.iter().map(|w| w.warning()).collect();
    assert_eq!(
        got,
        [
            "net.yaml:19:19: sites[1].firewall.chains[0].policy: warning: site `b1`: input chain `in` drops by policy and no rule accepts udp dport 51820 (the listen port): only replies to its own handshakes can pass, and only with a ct state rule",
            "net.yaml:20:11: sites[2].name: warning: site `b2` is in no link",
        ]
    );
    assert_eq!(n.links, vec![(0, 1)]);
    // A rule accepting the port (in a set, or all of udp) silences it.
    for rule in [
        "udp dport { 22, 51820 } accept",
        "meta l4proto udp accept",
        "udp dport 51000-52000 accept",
    ] {
        let text = edit(&[(
            "    subnets: [172.18.2.0/24]\n",
            &format!(
                "    subnets: [172.18.2.0/24]\n    firewall:\n      chains:\n        - name: in\n          hook: input\n          policy: drop\n          rules: [\"{rule}\"]\n"
            ),
        )]);
        let n = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(n.warnings.is_empty(), "{rule}: {:?}", n.warnings);
    }
}

/// What apply will use: the site of a key, the derived manifest of a site
/// (deployment name = site name, peers per topology, the hub carrying the
/// other spokes), and a clear refusal of an unknown site.
#[test]
fn derivation_api() {
    let n = parse(&base()).unwrap_or_else(|e| panic!("{e}"));
    let key = PublicKey::from_base64(K2).expect("key");
    assert_eq!(n.site_for_key(&key).map(|s| s.name.as_str()), Some("b1"));
    let other =
        PublicKey::from_base64("ydBt2HwE43VhIEkxJ6RM+WSbWRoxxYxm2/heF7UNJ0g=").expect("key");
    assert!(n.site_for_key(&other).is_none());

    let b1 = n.derive("b1").expect("b1");
    let m = &b1.manifest;
    assert_eq!(m.name, "b1");
    assert_eq!(m.peers.len(), 1);
    assert_eq!(m.peers[0].name, "hq");
    let allowed: Vec<String> = m.peers[0]
        .allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        allowed,
        [
            "10.10.0.1/32",
            "fd10::1/128",
            "172.18.1.0/24",
            "10.10.0.3/32",
            "fd10::3/128",
            "172.18.3.0/24"
        ]
    );
    assert_eq!(
        m.interface.private_key_file,
        PathBuf::from("/etc/netman/private.key")
    );
    assert_eq!(m.source.text, b1.text);
    // The text parses to the same manifest on its own.
    let again = manifest::parse(&b1.text, Path::new(FILE)).expect("the derived text is a manifest");
    assert_eq!(again.peers, m.peers);
    // Line 2 (`name: b1`) came from the site's name (line 11, column 11).
    let o = b1.origin(2).expect("origin");
    assert_eq!(
        (o.line, o.column, o.path.as_str()),
        (11, 11, "sites[1].name")
    );

    let hq = n.derive("hq").expect("hq");
    let names: Vec<&str> = hq.manifest.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b1", "b2"]);
    assert_eq!(
        hq.manifest.peers[1].allowed_ips.len(),
        3,
        "the hub's entries carry only their own site"
    );

    let e = n.derive("nope").expect_err("unknown site");
    assert_eq!(
        e.to_string(),
        "network corp has no site named \"nope\" (sites: hq, b1, b2)"
    );

    assert!(network::is_network(&base()));
    assert!(!network::is_network("name: site-a\n"));
    assert!(!network::is_network(": : :"));
}

/// `tests/golden/network/<case>/network.yaml` rendered for each of its
/// sites must be exactly `<case>/<site>.yaml` (byte-stable), and each is a
/// v1 manifest netman accepts, whose deployment is the site. With
/// `UPDATE_GOLDEN` set the expected files are rewritten.
#[test]
fn render_golden_manifests() {
    let (root, cases) = golden_dirs("network");
    assert!(
        cases.len() >= 2,
        "golden cases missing in {}",
        root.display()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("network.yaml")).expect("network.yaml");
        let n = network::parse(&text, &case.join("network.yaml")).unwrap_or_else(|e| panic!("{e}"));
        for site in &n.sites {
            let derived = n.derive(&site.name).expect("site");
            // Twice the same bytes.
            let again = network::parse(&text, &case.join("network.yaml")).expect("valid");
            assert_eq!(again.derive(&site.name).expect("site").text, derived.text);
            let m = manifest::parse(&derived.text, Path::new("x.yaml"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.name, site.name);
            let golden = case.join(format!("{}.yaml", site.name));
            if update {
                std::fs::write(&golden, &derived.text).expect("write golden");
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != derived.text {
                failures.push(format!(
                    "{}: rendered differs (UPDATE_GOLDEN=1 to accept)\n--- got ---\n{}",
                    golden.display(),
                    derived.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(netman_bin())
        .args(args)
        .output()
        .expect("run netman");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn render_prints_the_golden_text_and_refuses_clearly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/network/01-hub-and-spoke");
    let file = root.join("network.yaml").display().to_string();
    let (code, out, err) = run(&["render", &file, "--site", "branch-1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        std::fs::read_to_string(root.join("branch-1.yaml")).expect("golden")
    );
    let (code, out, err) = run(&["render", &file, "--site", "nope"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("network corp has no site named \"nope\" (sites: hq, branch-1, branch-2)"),
        "{err}"
    );
    let site_a = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/site-a.yaml");
    let (code, _, err) = run(&["render", &site_a.display().to_string(), "--site", "a"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a network file"), "{err}");
}

/// `validate` recognises each kind; `--output github` prints annotations
/// for both, on stdout, and exits like the text output.
#[test]
fn validate_github_annotations_for_networks_and_manifests() {
    let dir = TempDir::new("netgh");
    let net = dir.write("net.yaml", &edit(&[("  - name: b2", "  - name: b1")]));
    let good = dir.write("good.yaml", &base());
    let man = dir.write(
        "site.yaml",
        "name: site-a\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  private_key_file: k\n  mtu: 9\n",
    );
    let (n, g, m) = (
        net.display().to_string(),
        good.display().to_string(),
        man.display().to_string(),
    );
    let (code, out, err) = run(&["validate", "--output", "github", &n, &m, &g]);
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let esc = |s: &str| s.replace(':', "%3A").replace(',', "%2C");
    assert_eq!(
        lines,
        [
            format!(
                "::error file={},line=15,col=11::sites[2].name: duplicate site name `b1` (already sites[1])",
                esc(&n)
            ),
            format!(
                "::error file={},line=6,col=8::interface.mtu: MTU 9 is out of range (576..=65535)",
                esc(&m)
            ),
            format!("{g}: valid (network corp, 3 sites, 2 links)"),
        ]
    );
    let (code, out, _) = run(&["validate", &g]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("{g}: valid (network corp, 3 sites, 2 links)").as_str()
        )
    );
    let (code, _, err) = run(&["validate", &n]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{n}:15:11: sites[2].name: duplicate site name")),
        "{err}"
    );
}

/// A network is bounded: validation derives a manifest per site (a mesh's
/// grow with the square of the sites), so more than 1000 sites are refused
/// before any of that work.
#[test]
fn more_than_1000_sites_are_refused() {
    let site = format!("  - name: s\n    public_key: {K1}\n    addresses: [10.0.0.1/8]\n");
    let text = format!(
        "network: big\nsites:\n{}topology:\n  mesh: true\n",
        site.repeat(1001)
    );
    assert_eq!(
        errors(&text),
        ["net.yaml:3:3: sites: 1001 sites; at most 1000"]
    );
}

/// At apply, the private key file's public key must be the declared
/// `interface.public_key` (a network file's derived manifests declare the
/// site's): a wrong key file, or a wrong key in the file, is refused
/// before anything changes.
#[test]
fn apply_refuses_a_key_file_that_is_not_the_declared_key() {
    let dir = TempDir::new("netkey");
    let private = netman::keys::generate_private_key().expect("randomness");
    let key_file = dir.join("site.key");
    common::write_mode(
        &key_file,
        &format!("{}\n", private.to_base64().as_str()),
        0o600,
    );
    let own = private.public_key().to_base64();
    let text = |declared: &str| {
        format!(
            "name: s\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  private_key_file: {}\n  public_key: {declared}\n",
            key_file.display()
        )
    };
    let m = manifest::parse(&text(&own), Path::new("s.yaml")).expect("valid");
    assert!(netman::deploy::engine_config(&m).is_ok());
    let m = manifest::parse(&text(K3), Path::new("s.yaml")).expect("valid");
    let e = netman::deploy::engine_config(&m).expect_err("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "private key file {}: its public key is {own}, but interface.public_key declares {K3}",
            key_file.display()
        )
    );
    assert_eq!(e.kind(), netman::error::ErrorKind::Invalid);
}

/// A network large enough to be derived on several threads (when the
/// machine has them): every site gets its own manifest, and a finding in
/// many sites is reported once per site, in file order.
#[test]
fn a_large_network_derives_every_site_in_order() {
    let private: Vec<_> = (0..48)
        .map(|_| netman::keys::generate_private_key().expect("randomness"))
        .collect();
    let keys: Vec<String> = private.iter().map(|k| k.public_key().to_base64()).collect();
    let dir = TempDir::new("netbig");
    let key_file = dir.join("site.key");
    common::write_mode(
        &key_file,
        &format!("{}\n", private[30].to_base64().as_str()),
        0o600,
    );
    let site = |i: usize, extra: &str| {
        format!(
            "  - name: s{i}\n    public_key: {}\n    addresses: [10.0.{i}.1/16]\n    subnets: [172.20.{i}.0/24]\n    endpoint: 192.0.2.{}:51820\n{extra}",
            keys[i],
            i + 1
        )
    };
    let network = |extra: &dyn Fn(usize) -> &'static str| {
        format!(
            "network: big\ndefaults:\n  listen_port: 51820\n  private_key_file: {}\nsites:\n{}topology:\n  mesh: true\n",
            key_file.display(),
            (0..keys.len())
                .map(|i| site(i, extra(i)))
                .collect::<String>()
        )
    };
    let net = parse(&network(&|_| "")).expect("valid");
    for (i, key) in keys.iter().enumerate() {
        let m = &net.derive(&format!("s{i}")).expect("derived").manifest;
        assert_eq!(
            m.interface.addresses[0].to_string(),
            format!("10.0.{i}.1/16"),
            "site s{i} got another site's manifest"
        );
        assert_eq!(m.peers.len(), keys.len() - 1);
        assert!(
            m.peers.iter().all(|p| p.public_key.to_base64() != *key),
            "s{i} peers with itself"
        );
    }
    // A bad MTU in every third site: one finding per such site, in order.
    let bad = errors(&network(&|i| {
        if i % 3 == 0 { "    mtu: \"big\"\n" } else { "" }
    }));
    let sites: Vec<String> = bad
        .iter()
        .map(|e| e.split(": ").nth(1).unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..keys.len())
        .filter(|i| i % 3 == 0)
        .map(|i| format!("sites[{i}].mtu"))
        .collect();
    assert_eq!(sites, want, "{bad:#?}");

    // What apply, diff and the watcher load (each site's manifest derived
    // and checked, only the chosen one kept) is the site's derived
    // manifest, with the network's warnings: by the local key file...
    let text = network(&|_| "");
    let path = Path::new(FILE);
    let net = parse(&text).expect("valid");
    let derived = |name: &str| {
        let mut m = net.derive(name).expect("derived").manifest.clone();
        m.warnings = net.warnings.clone();
        m
    };
    let mine = network::manifest_of(&text, path, None).expect("site s30 by its key");
    assert_eq!(mine.name, "s30");
    assert_eq!(mine, derived("s30"));
    // ... or by name.
    let named = network::manifest_of(&text, path, Some("s7")).expect("site s7");
    assert_eq!(named, derived("s7"));
    let e = network::manifest_of(&text, path, Some("nope")).expect_err("no such site");
    // The first 20 names, not all 48.
    assert!(
        e.to_string().ends_with(&format!(
            "has no site named \"nope\" (sites: {} and 28 more)",
            (0..20)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        "{e}"
    );
}
