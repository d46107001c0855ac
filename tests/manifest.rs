//! Manifest v1 parsing and validation.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use netman::manifest::{
    self, Endpoint, Interface, Manifest, ManifestError, ManifestErrors, MssClamp, Peer, PublicKey,
    Route,
};

const K1: &str = "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=";
const K2: &str = "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=";
const K3: &str = "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=";
/// Valid base64, but of 31 bytes.
const KEY_31: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==";
/// Every encoding of a low-order Curve25519 point (u-coordinates whose
/// order divides 8 on the curve or 4 on its twist, their non-canonical
/// forms u + p, each also with the ignored top bit set): X25519 with any
/// of them gives all zeros, so no handshake can work.
const LOW_ORDER_KEYS: [(&str, &str); 14] = [
    ("0", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ("0, top bit", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA="),
    ("1", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ("1, top bit", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA="),
    ("p-1", "7P///////////////////////////////////////38="),
    (
        "p-1, top bit",
        "7P////////////////////////////////////////8=",
    ),
    (
        "order 8 e0eb...",
        "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
    ),
    (
        "order 8 e0eb..., top bit",
        "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuIA=",
    ),
    (
        "order 8 5f9c...",
        "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
    ),
    (
        "order 8 5f9c..., top bit",
        "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEdc=",
    ),
    ("p (0)", "7f///////////////////////////////////////38="),
    (
        "p (0), top bit",
        "7f////////////////////////////////////////8=",
    ),
    ("p+1 (1)", "7v///////////////////////////////////////38="),
    (
        "p+1 (1), top bit",
        "7v////////////////////////////////////////8=",
    ),
];
/// The diagnostic for a low-order key of the first peer of a `with_head` row.
const LOW_ORDER_AT_8_17: &str = "site-a.yaml:8:17: peers[0].public_key: a low-order point, not a usable public key (no key exchange with it can succeed)";

/// The manifest path used in messages.
const FILE: &str = "site-a.yaml";

/// Join lines into a document (line N of the document is `lines[N - 1]`).
fn doc(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
    manifest::parse(text, Path::new(FILE))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(m) => panic!("expected errors, got a manifest: {m:#?}\n--- input ---\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn key(s: &str) -> PublicKey {
    s.parse().expect("test key")
}

/// Prefix of every table row: a minimal valid interface section (lines 1-5).
const HEAD: [&str; 5] = [
    "name: site-a",
    "interface:",
    "  name: nm0",
    "  addresses: [10.10.0.1/24]",
    "  private_key_file: a.key",
];

fn with_head(rest: &[&str]) -> String {
    let mut lines: Vec<&str> = HEAD.to_vec();
    lines.extend_from_slice(rest);
    doc(&lines)
}

fn replace_line(base: &[&str], line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = base.to_vec();
    lines[line - 1] = with;
    doc(&lines)
}

struct Case {
    what: &'static str,
    text: String,
    /// The complete, exact diagnostic.
    expected: &'static str,
}

fn case(what: &'static str, text: String, expected: &'static str) -> Case {
    Case {
        what,
        text,
        expected,
    }
}

fn rejection_cases() -> Vec<Case> {
    let peer = |allowed: &'static str| -> Vec<&'static str> {
        vec![
            "peers:",
            "  - name: site-b",
            "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
            allowed,
        ]
    };
    let two_peers = |a: &'static str, b: &'static str| -> Vec<&'static str> {
        vec![
            "peers:",
            "  - name: site-b",
            "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
            "    allowed_ips: [10.10.0.2/32]",
            a,
            b,
            "    allowed_ips: [10.10.0.3/32]",
        ]
    };
    let head_with = |line: usize, with: &str| replace_line(&HEAD, line, with);

    vec![
        // --- deployment name ---
        case(
            "deployment name with upper case",
            head_with(1, "name: Site-A"),
            "site-a.yaml:1:7: name: invalid character 'S' (allowed: a-z, 0-9 and '-')",
        ),
        case(
            "deployment name with underscore",
            head_with(1, "name: site_a"),
            "site-a.yaml:1:7: name: invalid character '_' (allowed: a-z, 0-9 and '-')",
        ),
        case(
            "deployment name too long",
            head_with(1, "name: abcdefghijklmnopqrstuvwxyz0123456"),
            "site-a.yaml:1:7: name: too long (33 characters; at most 32)",
        ),
        case(
            "empty deployment name",
            head_with(1, "name: \"\""),
            "site-a.yaml:1:7: name: must not be empty",
        ),
        // --- interface name ---
        case(
            "ifname too long",
            head_with(3, "  name: nm0123456789abcd"),
            "site-a.yaml:3:9: interface.name: too long (16 bytes; Linux interface names are at most 15)",
        ),
        case(
            "ifname with slash",
            head_with(3, "  name: nm/0"),
            "site-a.yaml:3:9: interface.name: invalid character '/' in interface name ('/', ':', NUL and whitespace are not allowed)",
        ),
        case(
            "ifname with colon",
            head_with(3, "  name: \"nm:0\""),
            "site-a.yaml:3:9: interface.name: invalid character ':' in interface name ('/', ':', NUL and whitespace are not allowed)",
        ),
        case(
            "ifname with whitespace",
            head_with(3, "  name: \"nm 0\""),
            "site-a.yaml:3:9: interface.name: invalid character ' ' in interface name ('/', ':', NUL and whitespace are not allowed)",
        ),
        case(
            "ifname dot-dot",
            head_with(3, "  name: .."),
            "site-a.yaml:3:9: interface.name: \"..\" is not a valid interface name",
        ),
        case(
            "empty ifname",
            head_with(3, "  name: ''"),
            "site-a.yaml:3:9: interface.name: must not be empty",
        ),
        // --- interface addresses ---
        case(
            "bad CIDR in addresses",
            head_with(4, "  addresses: [10.10.0.300/24]"),
            "site-a.yaml:4:15: interface.addresses[0]: \"10.10.0.300/24\" is not a valid CIDR (expected ADDRESS/PREFIX_LEN, e.g. 10.10.0.1/24 or fd10::1/64)",
        ),
        case(
            "address without prefix length",
            head_with(4, "  addresses: [10.10.0.1]"),
            "site-a.yaml:4:15: interface.addresses[0]: missing prefix length in 10.10.0.1 (e.g. 10.10.0.1/24)",
        ),
        case(
            "address prefix length out of range",
            head_with(4, "  addresses: [fd10::1/129]"),
            "site-a.yaml:4:15: interface.addresses[0]: prefix length /129 is out of range in \"fd10::1/129\" (at most /128)",
        ),
        case(
            "network address as interface address",
            head_with(4, "  addresses: [10.10.0.0/24]"),
            "site-a.yaml:4:15: interface.addresses[0]: 10.10.0.0/24 is the network address of 10.10.0.0/24; use a host address such as 10.10.0.1/24",
        ),
        case(
            "broadcast address as interface address",
            head_with(4, "  addresses: [10.10.0.255/24]"),
            "site-a.yaml:4:15: interface.addresses[0]: 10.10.0.255/24 is the broadcast address of 10.10.0.0/24; use a host address",
        ),
        case(
            "unspecified interface address",
            head_with(4, "  addresses: [\"::/64\"]"),
            "site-a.yaml:4:15: interface.addresses[0]: ::/64: the unspecified address cannot be assigned to an interface",
        ),
        case(
            "multicast interface address",
            head_with(4, "  addresses: [224.0.0.5/24]"),
            "site-a.yaml:4:15: interface.addresses[0]: 224.0.0.5/24: a multicast address cannot be assigned to an interface",
        ),
        case(
            "duplicate address (same IP, other prefix)",
            head_with(4, "  addresses: [10.10.0.1/24, 10.10.0.1/16]"),
            "site-a.yaml:4:29: interface.addresses[1]: duplicate address 10.10.0.1 (already at interface.addresses[0])",
        ),
        case(
            "no addresses",
            head_with(4, "  addresses: []"),
            "site-a.yaml:4:14: interface.addresses: at least one address is required",
        ),
        // --- MTU ---
        case(
            "MTU too small",
            with_head(&["  mtu: 575"]),
            "site-a.yaml:6:8: interface.mtu: MTU 575 is out of range (576..=65535)",
        ),
        case(
            "MTU too large",
            with_head(&["  mtu: 65536"]),
            "site-a.yaml:6:8: interface.mtu: MTU 65536 is out of range (576..=65535)",
        ),
        case(
            "MTU below the IPv6 minimum with an IPv6 address",
            doc(&[
                "name: site-a",
                "interface:",
                "  name: nm0",
                "  addresses: [10.10.0.1/24, fd10::1/64]",
                "  private_key_file: a.key",
                "  mtu: 1279",
            ]),
            "site-a.yaml:6:8: interface.mtu: MTU 1279 is below 1280, the IPv6 minimum, and interface.addresses[1] is IPv6",
        ),
        // --- ports ---
        case(
            "listen_port 0",
            with_head(&["  listen_port: 0"]),
            "site-a.yaml:6:16: interface.listen_port: port 0 is not allowed (1..=65535); omit listen_port to let the kernel pick one",
        ),
        case(
            "listen_port too large",
            with_head(&["  listen_port: 65536"]),
            "site-a.yaml:6:16: interface.listen_port: port 65536 is out of range (1..=65535)",
        ),
        case(
            "empty private_key_file",
            head_with(5, "  private_key_file: \"\""),
            "site-a.yaml:5:21: interface.private_key_file: must not be empty",
        ),
        // --- peers ---
        case(
            "host bits set in allowed_ips",
            with_head(&peer("    allowed_ips: [10.10.0.2/32, 172.18.0.1/16]")),
            "site-a.yaml:9:33: peers[0].allowed_ips[1]: host bits set in 172.18.0.1/16 (did you mean 172.18.0.0/16?)",
        ),
        case(
            "allowed IP without prefix length",
            with_head(&peer("    allowed_ips: [10.10.0.2]")),
            "site-a.yaml:9:19: peers[0].allowed_ips[0]: missing prefix length in 10.10.0.2 (did you mean 10.10.0.2/32?)",
        ),
        case(
            "bad CIDR in allowed_ips",
            with_head(&peer("    allowed_ips: [site-c]")),
            "site-a.yaml:9:19: peers[0].allowed_ips[0]: \"site-c\" is not a valid CIDR (expected ADDRESS/PREFIX_LEN, e.g. 10.10.0.1/24 or fd10::1/64)",
        ),
        case(
            "duplicate allowed IP within one peer",
            with_head(&peer("    allowed_ips: [10.10.0.2/32, 10.10.0.2/32]")),
            "site-a.yaml:9:33: peers[0].allowed_ips[1]: duplicate entry 10.10.0.2/32 (already at peers[0].allowed_ips[0])",
        ),
        case(
            "same prefix claimed by two peers",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: [10.10.0.2/32, 172.18.0.0/16]",
                "  - name: site-c",
                "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
                "    allowed_ips: [10.10.0.3/32, 172.18.0.0/16]",
            ]),
            "site-a.yaml:12:33: peers[1].allowed_ips[1]: 172.18.0.0/16 is already claimed by peer `site-b` (peers[0].allowed_ips[1])",
        ),
        case(
            "a peer left unreachable: its allowed IP covered whole by more specific ones",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: [172.18.0.0/24]",
                "  - name: site-c",
                "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
                "    allowed_ips: [172.18.0.0/25, 172.18.0.128/25]",
            ]),
            "site-a.yaml:9:19: peers[0].allowed_ips[0]: peer `site-b` is unreachable: each of its allowed IPs is entirely covered by more specific ones (172.18.0.0/25 of peer `site-c` (peers[1].allowed_ips[0], line 12), 172.18.0.128/25 of peer `site-c` (peers[1].allowed_ips[1], line 12)), and the longest prefix wins",
        ),
        case(
            "duplicate peer names",
            with_head(&two_peers(
                "  - name: site-b",
                "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
            )),
            "site-a.yaml:10:11: peers[1].name: duplicate peer name `site-b` (already used by peers[0])",
        ),
        case(
            "duplicate public keys",
            with_head(&two_peers(
                "  - name: site-c",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
            )),
            "site-a.yaml:11:17: peers[1].public_key: duplicate public key (already used by peers[0] `site-b`)",
        ),
        case(
            "invalid peer name",
            with_head(&[
                "peers:",
                "  - name: site b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
            ]),
            "site-a.yaml:7:11: peers[0].name: invalid character ' ' (allowed: A-Z, a-z, 0-9, '-', '_' and '.')",
        ),
        case(
            "public key that is not base64",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: \"not a key!\"",
                "    allowed_ips: []",
            ]),
            "site-a.yaml:8:17: peers[0].public_key: not valid base64 (expected 44 characters of standard base64 with `=` padding, as printed by `wg pubkey`)",
        ),
        case(
            "public key without padding",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c",
                "    allowed_ips: []",
            ]),
            "site-a.yaml:8:17: peers[0].public_key: not valid base64 (expected 44 characters of standard base64 with `=` padding, as printed by `wg pubkey`)",
        ),
        case(
            "public key of 31 bytes",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
                "    allowed_ips: []",
            ]),
            "site-a.yaml:8:17: peers[0].public_key: decodes to 31 bytes (expected 32)",
        ),
        case(
            "low-order public key: zero",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "    allowed_ips: []",
            ]),
            LOW_ORDER_AT_8_17,
        ),
        case(
            "low-order public key of the second peer",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "  - name: site-c",
                "    public_key: \"X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=\"",
                "    allowed_ips: []",
            ]),
            "site-a.yaml:11:17: peers[1].public_key: a low-order point, not a usable public key (no key exchange with it can succeed)",
        ),
        case(
            "persistent_keepalive 0",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    persistent_keepalive: 0",
            ]),
            "site-a.yaml:10:27: peers[0].persistent_keepalive: 0 is not allowed (1..=65535 seconds); omit persistent_keepalive to disable keepalives",
        ),
        case(
            "persistent_keepalive too large",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    persistent_keepalive: 65536",
            ]),
            "site-a.yaml:10:27: peers[0].persistent_keepalive: 65536 is out of range (1..=65535 seconds)",
        ),
        case(
            "endpoint_refresh 0",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    endpoint: hub.example.net:51820",
                "    allowed_ips: []",
                "    endpoint_refresh: 0",
            ]),
            "site-a.yaml:11:23: peers[0].endpoint_refresh: 0 is out of range (1..=86400 seconds)",
        ),
        case(
            "endpoint_stale_after too large",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    endpoint: hub.example.net:51820",
                "    allowed_ips: []",
                "    endpoint_stale_after: 86401",
            ]),
            "site-a.yaml:11:27: peers[0].endpoint_stale_after: 86401 is out of range (1..=86400 seconds)",
        ),
        case(
            "endpoint_refresh not an integer",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    endpoint: hub.example.net:51820",
                "    allowed_ips: []",
                "    endpoint_refresh: 5m",
            ]),
            "site-a.yaml:11:23: peers[0].endpoint_refresh: expected an integer, found string",
        ),
        case(
            "endpoint_refresh with an address endpoint",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    endpoint: 192.0.2.10:51820",
                "    allowed_ips: []",
                "    endpoint_refresh: 60",
            ]),
            "site-a.yaml:11:23: peers[0].endpoint_refresh: only a hostname endpoint is re-resolved; peers[0].endpoint is an address",
        ),
        case(
            "endpoint_stale_after without an endpoint",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint_stale_after: 60",
            ]),
            "site-a.yaml:10:27: peers[0].endpoint_stale_after: only a hostname endpoint is re-resolved; peers[0] has no endpoint",
        ),
        case(
            "endpoint port 0",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: 192.0.2.10:0",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: port 0 is not allowed (1..=65535)",
        ),
        case(
            "endpoint without port",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: vpn.example.net",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: missing port in \"vpn.example.net\" (expected IPV4:PORT, [IPV6]:PORT or HOSTNAME:PORT)",
        ),
        case(
            "endpoint with port out of range",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: 192.0.2.10:65536",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: port 65536 is out of range (1..=65535)",
        ),
        case(
            "IPv6 endpoint without brackets",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: 2001:db8::1:51820",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: IPv6 endpoints must be written as [ADDRESS]:PORT, e.g. \"[2001:db8::1]:51820\"",
        ),
        case(
            "endpoint with a malformed IPv4 address",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: 192.0.2.300:51820",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: \"192.0.2.300\" is not a valid IPv4 address or hostname",
        ),
        case(
            "endpoint with a malformed hostname",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: -vpn.example.net:51820",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: \"-vpn.example.net\" is not a valid IPv4 address or hostname",
        ),
        case(
            "bracketed endpoint that is not IPv6",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: \"[192.0.2.1]:51820\"",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: \"192.0.2.1\" is not a valid IPv6 address",
        ),
        case(
            "unquoted [v6]:port endpoint (YAML reads a list)",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    endpoint: [2001:db8::1]",
            ]),
            "site-a.yaml:10:15: peers[0].endpoint: expected a string (quote IPv6 endpoints: \"[fd00::1]:51820\")",
        ),
        case(
            "empty preshared_key_file",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    preshared_key_file: ''",
            ]),
            "site-a.yaml:10:25: peers[0].preshared_key_file: must not be empty",
        ),
        // --- routes ---
        case(
            "host bits set in routes[].to",
            with_head(&["routes:", "  - to: 192.168.50.1/24"]),
            "site-a.yaml:7:9: routes[0].to: host bits set in 192.168.50.1/24 (did you mean 192.168.50.0/24?)",
        ),
        case(
            "bad CIDR in routes[].to",
            with_head(&["routes:", "  - to: 192.168.50.0/"]),
            "site-a.yaml:7:9: routes[0].to: \"192.168.50.0/\" is not a valid CIDR (expected ADDRESS/PREFIX_LEN, e.g. 10.10.0.1/24 or fd10::1/64)",
        ),
        case(
            "duplicate routes[].to",
            with_head(&[
                "routes:",
                "  - to: 192.168.50.0/24",
                "  - to: 192.168.50.0/24",
                "    metric: 10",
            ]),
            "site-a.yaml:8:9: routes[1].to: duplicate route to 192.168.50.0/24 (already at routes[0].to)",
        ),
        case(
            "negative metric",
            with_head(&["routes:", "  - to: 192.168.50.0/24", "    metric: -1"]),
            "site-a.yaml:8:13: routes[0].metric: metric -1 is out of range (0..=4294967295)",
        ),
        case(
            "probe outside every peer's allowed_ips",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: [10.10.0.2/32]",
                "probes:",
                "  - ping: 10.10.0.9",
            ]),
            "site-a.yaml:11:11: probes[0].ping: 10.10.0.9 is not inside the allowed_ips of any peer; a probe must cross the tunnel",
        ),
        case(
            "a peer's probe outside its allowed_ips",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: [10.10.0.2/32]",
                "    probes:",
                "      - ping: fd10::2",
            ]),
            "site-a.yaml:11:15: peers[0].probes[0].ping: fd10::2 is not inside the allowed_ips of peer site-b; a probe must cross the tunnel",
        ),
        case(
            "probe that is not an address",
            with_head(&["probes:", "  - ping: hq.example"]),
            "site-a.yaml:7:11: probes[0].ping: \"hq.example\" is not an IPv4 or IPv6 address",
        ),
        case(
            "rollout confirm that is not healthy",
            with_head(&["rollout:", "  confirm: manual", "  timeout: 60"]),
            "site-a.yaml:7:12: rollout.confirm: \"manual\" is not a confirmation; expected `healthy`",
        ),
        case(
            "rollout timeout too short",
            with_head(&["rollout:", "  confirm: healthy", "  timeout: 2"]),
            "site-a.yaml:8:12: rollout.timeout: 2 is out of range (5..=3600 seconds)",
        ),
        // --- structural errors (reported alone) ---
        case(
            "unknown top-level key",
            with_head(&["dns: true"]),
            "site-a.yaml:6:1: dns: unknown key `dns` (expected one of: name, interface, peers, routes, forwarding, firewall, watch, metrics, probes, rollout)",
        ),
        case(
            "unknown interface key",
            with_head(&["  mtu_bytes: 1400"]),
            "site-a.yaml:6:3: interface.mtu_bytes: unknown key `mtu_bytes` (expected one of: name, addresses, mtu, txqueuelen, listen_port, private_key_file, mss_clamp, table, fwmark, public_key)",
        ),
        case(
            "unknown peer key",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    keepalive: 25",
            ]),
            "site-a.yaml:10:5: peers[0].keepalive: unknown key `keepalive` (expected one of: name, public_key, endpoint, allowed_ips, persistent_keepalive, preshared_key_file, endpoint_refresh, endpoint_stale_after, probes)",
        ),
        case(
            "unknown route key",
            with_head(&["routes:", "  - to: 192.168.50.0/24", "    via: 10.10.0.2"]),
            "site-a.yaml:8:5: routes[0].via: unknown key `via` (expected one of: to, metric)",
        ),
        case(
            "txqueuelen 0",
            with_head(&["  txqueuelen: 0"]),
            "site-a.yaml:6:15: interface.txqueuelen: txqueuelen 0 is out of range (1..=10000 packets)",
        ),
        case(
            "table: the kernel's default table",
            with_head(&["  table: 253"]),
            "site-a.yaml:6:10: interface.table: table 253 is the kernel's `default` table; choose another number",
        ),
        case(
            "table: main by number",
            with_head(&["  table: 254"]),
            "site-a.yaml:6:10: interface.table: table 254 is the main table; write `main`",
        ),
        case(
            "table: the local table",
            with_head(&["  table: 255"]),
            "site-a.yaml:6:10: interface.table: table 255 is the kernel's `local` table; choose another number",
        ),
        case(
            "table 0",
            with_head(&["  table: 0"]),
            "site-a.yaml:6:10: interface.table: table 0 is not a table (1..=4294967295); omit table for the automatic choice",
        ),
        case(
            "table out of range",
            with_head(&["  table: 4294967296"]),
            "site-a.yaml:6:10: interface.table: table 4294967296 is out of range (1..=4294967295)",
        ),
        case(
            "table: an unknown word",
            with_head(&["  table: auto"]),
            "site-a.yaml:6:10: interface.table: expected main, off or a table number, found \"auto\"",
        ),
        case(
            "table: a list",
            with_head(&["  table: [1]"]),
            "site-a.yaml:6:10: interface.table: expected main, off or a table number, found list",
        ),
        case(
            "fwmark 0",
            with_head(&["  fwmark: 0"]),
            "site-a.yaml:6:11: interface.fwmark: fwmark 0 means no mark (1..=4294967295); omit fwmark instead",
        ),
        case(
            "fwmark negative",
            with_head(&["  fwmark: -1"]),
            "site-a.yaml:6:11: interface.fwmark: fwmark -1 is out of range (1..=4294967295)",
        ),
        case(
            "fwmark as a string",
            with_head(&["  fwmark: \"0xca6c\""]),
            "site-a.yaml:6:11: interface.fwmark: expected an integer, found string",
        ),
        case(
            "string where an integer is expected",
            with_head(&["  mtu: \"1420\""]),
            "site-a.yaml:6:8: interface.mtu: expected an integer, found string",
        ),
        case(
            "float where an integer is expected",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
                "    allowed_ips: []",
                "    persistent_keepalive: 2.5",
            ]),
            "site-a.yaml:10:27: peers[0].persistent_keepalive: expected an integer, found floating point number",
        ),
        case(
            "scalar where a list is expected",
            head_with(4, "  addresses: 10.10.0.1/24"),
            "site-a.yaml:4:14: interface.addresses: expected a list",
        ),
        case(
            "list where a mapping is expected",
            doc(&["name: site-a", "interface: [nm0]"]),
            "site-a.yaml:2:12: interface: expected a mapping",
        ),
        case(
            "list where a string is expected",
            head_with(1, "name: [site-a]"),
            "site-a.yaml:1:7: name: expected a string",
        ),
        case(
            "null where a string is expected",
            head_with(1, "name:"),
            "site-a.yaml:1:5: name: expected a string, found null",
        ),
        case(
            "missing name",
            doc(&HEAD[1..]),
            "site-a.yaml:1:1: name: missing required field",
        ),
        case(
            "missing interface",
            doc(&["name: site-a"]),
            "site-a.yaml:1:1: interface: missing required field",
        ),
        case(
            "missing private_key_file",
            doc(&HEAD[..4]),
            "site-a.yaml:3:3: interface.private_key_file: missing required field",
        ),
        case(
            "missing public_key",
            with_head(&["peers:", "  - name: site-b", "    allowed_ips: []"]),
            "site-a.yaml:7:5: peers[0].public_key: missing required field",
        ),
        case(
            "missing allowed_ips",
            with_head(&[
                "peers:",
                "  - name: site-b",
                "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
            ]),
            "site-a.yaml:7:5: peers[0].allowed_ips: missing required field",
        ),
        case(
            "missing routes[].to",
            with_head(&["routes:", "  - metric: 5"]),
            "site-a.yaml:7:5: routes[0].to: missing required field",
        ),
        case(
            "duplicate YAML key",
            with_head(&["  name: nm1"]),
            "site-a.yaml:6:3: interface.name: duplicate key `name`",
        ),
        case(
            "duplicate top-level key",
            with_head(&["name: site-b"]),
            "site-a.yaml:6:1: name: duplicate key `name`",
        ),
        case(
            "mapping where the peer list is expected",
            with_head(&["peers: {}"]),
            "site-a.yaml:6:8: peers: expected a list",
        ),
        case(
            "list where an integer is expected",
            with_head(&["  listen_port: [51820]"]),
            "site-a.yaml:6:16: interface.listen_port: expected an integer, found list",
        ),
        case(
            "missing field in a flow mapping",
            with_head(&["peers:", "  - {name: site-b, allowed_ips: []}"]),
            "site-a.yaml:7:5: peers[0].public_key: missing required field",
        ),
        case(
            "YAML syntax error",
            doc(&["name: site-a", "interface: {name: nm0", "peers: []"]),
            "site-a.yaml:3:6: interface: while parsing a flow mapping, did not find expected ',' or '}'",
        ),
        case(
            "empty document",
            String::new(),
            "site-a.yaml:1:1: the manifest is empty (expected a mapping with name, interface, peers and routes)",
        ),
        case(
            "two documents",
            format!("{}---\nname: other\n", with_head(&[])),
            "site-a.yaml:6:1: more than one YAML document; a manifest is a single document",
        ),
        case(
            "top level is not a mapping",
            doc(&["- name: site-a"]),
            "site-a.yaml:1:1: expected a mapping",
        ),
    ]
}

#[test]
fn every_rejection_is_reported_exactly_once_with_position_path_and_message() {
    let mut failures = String::new();
    for c in rejection_cases() {
        let got = match parse(&c.text) {
            Ok(_) => vec!["<parsed successfully>".to_owned()],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        if got != [c.expected] {
            let _ = writeln!(
                failures,
                "case {:?}\n  expected: {}\n  got:      {}\n",
                c.what,
                c.expected,
                got.join("\n            ")
            );
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
}

#[test]
fn every_low_order_public_key_is_rejected_at_its_position() {
    let mut failures = String::new();
    for (what, k) in LOW_ORDER_KEYS {
        let text = with_head(&[
            "peers:",
            "  - name: site-b",
            &format!("    public_key: \"{k}\""),
            "    allowed_ips: []",
        ]);
        let got = match parse(&text) {
            Ok(_) => vec!["<parsed successfully>".to_owned()],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        if got != [LOW_ORDER_AT_8_17] {
            let _ = writeln!(failures, "low-order key {what} ({k}): got {got:?}");
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
    // Real keys next to them are fine.
    for k in [K1, K2, K3] {
        let text = with_head(&[
            "peers:",
            "  - name: site-b",
            &format!("    public_key: \"{k}\""),
            "    allowed_ips: []",
        ]);
        assert!(parse(&text).is_ok(), "{k} was rejected");
    }
}

#[test]
fn error_fields_are_structured() {
    let errs = parse(&with_head(&[
        "peers:",
        "  - name: site-b",
        "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
        "    allowed_ips: [10.10.0.2/32, 172.18.0.1/16]",
    ]))
    .unwrap_err();
    assert_eq!(
        errs.0,
        vec![ManifestError {
            file: FILE.to_owned(),
            line: 9,
            column: 33,
            path: "peers[0].allowed_ips[1]".to_owned(),
            message: "host bits set in 172.18.0.1/16 (did you mean 172.18.0.0/16?)".to_owned(),
        }]
    );
    let empty_path = ManifestError {
        path: String::new(),
        message: "boom".to_owned(),
        ..errs.0[0].clone()
    };
    assert_eq!(empty_path.to_string(), "site-a.yaml:9:33: boom");
}

#[test]
fn all_semantic_errors_are_reported_in_document_order() {
    let text = doc(&[
        "name: Site-A",                                                 // 1
        "interface:",                                                   // 2
        "  name: nm0-far-too-long-name",                                // 3
        "  addresses: [10.10.0.1/24, fd10::1/64, 10.10.0.1/24]",        // 4
        "  mtu: 1000",                                                  // 5
        "  listen_port: 0",                                             // 6
        "  private_key_file: keys/a.key",                               // 7
        "peers:",                                                       // 8
        "  - name: site-b",                                             // 9
        "    public_key: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", // 10
        "    endpoint: 192.0.2.2:0",                                    // 11
        "    allowed_ips: [10.10.0.2/32, 172.18.2.1/24]",               // 12
        "    persistent_keepalive: 0",                                  // 13
        "  - name: site-b",                                             // 14
        "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=", // 15
        "    allowed_ips: [10.10.0.2/32]",                              // 16
        "routes:",                                                      // 17
        "  - to: 192.168.50.0/24",                                      // 18
        "  - to: 192.168.50.0/24",                                      // 19
        "    metric: 4294967296",                                       // 20
    ]);
    let errs = parse(&text).unwrap_err();
    let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "site-a.yaml:1:7: name: invalid character 'S' (allowed: a-z, 0-9 and '-')",
            "site-a.yaml:3:9: interface.name: too long (21 bytes; Linux interface names are at most 15)",
            "site-a.yaml:4:41: interface.addresses[2]: duplicate address 10.10.0.1 (already at interface.addresses[0])",
            "site-a.yaml:5:8: interface.mtu: MTU 1000 is below 1280, the IPv6 minimum, and interface.addresses[1] is IPv6",
            "site-a.yaml:6:16: interface.listen_port: port 0 is not allowed (1..=65535); omit listen_port to let the kernel pick one",
            "site-a.yaml:10:17: peers[0].public_key: decodes to 31 bytes (expected 32)",
            "site-a.yaml:11:15: peers[0].endpoint: port 0 is not allowed (1..=65535)",
            "site-a.yaml:12:33: peers[0].allowed_ips[1]: host bits set in 172.18.2.1/24 (did you mean 172.18.2.0/24?)",
            "site-a.yaml:13:27: peers[0].persistent_keepalive: 0 is not allowed (1..=65535 seconds); omit persistent_keepalive to disable keepalives",
            "site-a.yaml:14:11: peers[1].name: duplicate peer name `site-b` (already used by peers[0])",
            "site-a.yaml:16:19: peers[1].allowed_ips[0]: 10.10.0.2/32 is already claimed by peer `site-b` (peers[0].allowed_ips[0])",
            "site-a.yaml:19:9: routes[1].to: duplicate route to 192.168.50.0/24 (already at routes[0].to)",
            "site-a.yaml:20:13: routes[1].metric: metric 4294967296 is out of range (0..=4294967295)",
        ]
    );
    // Display: one error per line.
    assert_eq!(errs.to_string(), lines.join("\n"));
}

#[test]
fn key_material_never_appears_in_messages() {
    let bad_keys = [
        "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c",
        "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c==",
        "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=x",
        KEY_31,
        "!!!!!!!!etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7Y",
    ];
    for bad in bad_keys {
        let text = with_head(&[
            "peers:",
            "  - name: site-b",
            &format!("    public_key: \"{bad}\""),
            "    allowed_ips: []",
        ]);
        let msgs = errors(&text);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("site-a.yaml:8:17: peers[0].public_key: "));
        assert!(!msgs[0].contains(bad), "{}", msgs[0]);
        assert!(!msgs[0].contains("etlpqu"), "{}", msgs[0]);
    }

    // Duplicate keys are named by peer, not by value.
    let dup = errors(&with_head(&[
        "peers:",
        "  - name: site-b",
        &format!("    public_key: {K1}"),
        "    allowed_ips: []",
        "  - name: site-c",
        &format!("    public_key: {K1}"),
        "    allowed_ips: []",
    ]));
    assert!(dup.iter().all(|m| !m.contains(K1)), "{dup:?}");

    // A key pasted as a mapping key (e.g. a botched `private_key: ...` line) is not echoed.
    let pasted = errors(&with_head(&[&format!("  {K2}: x")]));
    assert_eq!(
        pasted,
        [
            "site-a.yaml:6:3: interface: unknown key (a key that looks like key material; not shown) (expected one of: name, addresses, mtu, txqueuelen, listen_port, private_key_file, mss_clamp, table, fwmark, public_key)"
        ]
    );

    // A key given where a number is expected is not echoed either.
    let as_port = errors(&with_head(&[&format!("  listen_port: {K3}")]));
    assert_eq!(
        as_port,
        ["site-a.yaml:6:16: interface.listen_port: expected an integer, found string"]
    );
}

#[test]
fn minimal_manifest_gets_defaults_and_resolved_key_path() {
    let m = manifest::parse(&doc(&HEAD), Path::new("/etc/netman/./site-a.yaml")).unwrap();
    assert_eq!(m.name, "site-a");
    assert_eq!(
        m.interface,
        Interface {
            name: "nm0".to_owned(),
            addresses: vec!["10.10.0.1/24".parse().unwrap()],
            mtu: 1420,
            txqueuelen: 500,
            listen_port: None,
            private_key_file: PathBuf::from("/etc/netman/a.key"),
            mss_clamp: MssClamp::Off,
            table: None,
            fwmark: None,
            public_key: None,
        }
    );
    assert_eq!(manifest::DEFAULT_MTU, 1420);
    assert!(m.peers.is_empty());
    assert!(m.routes.is_empty());
    assert_eq!(m.source.path, PathBuf::from("/etc/netman/site-a.yaml"));
    assert_eq!(m.source.text, doc(&HEAD));

    // Empty `peers:`/`routes:` (null) and empty lists are the same as absent.
    let m2 = manifest::parse(
        &with_head(&["peers:", "routes: []"]),
        Path::new("/etc/netman/site-a.yaml"),
    )
    .unwrap();
    assert!(m2.peers.is_empty() && m2.routes.is_empty());
}

#[test]
fn relative_manifest_path_is_made_absolute_against_the_current_directory() {
    let cwd = std::env::current_dir().unwrap();
    let m = manifest::parse(&doc(&HEAD), Path::new("conf/site-a.yaml")).unwrap();
    assert_eq!(m.source.path, cwd.join("conf/site-a.yaml"));
    assert_eq!(m.interface.private_key_file, cwd.join("conf/a.key"));

    // Absolute key paths are kept as they are.
    let abs = replace_line(&HEAD, 5, "  private_key_file: /var/lib/netman/a.key");
    let m = manifest::parse(&abs, Path::new("conf/site-a.yaml")).unwrap();
    assert_eq!(
        m.interface.private_key_file,
        PathBuf::from("/var/lib/netman/a.key")
    );
}

#[test]
fn full_manifest_with_every_field() {
    let text = doc(&[
        "name: site-a",
        "interface:",
        "  name: nm0",
        "  addresses: [10.10.0.1/24, fd10::1/64]",
        "  mtu: 1380",
        "  listen_port: 51820",
        "  private_key_file: keys/site-a.key",
        "peers:",
        "  - name: site-b",
        &format!("    public_key: \"{K1}\""),
        "    endpoint: 192.0.2.10:51820",
        "    allowed_ips: [10.10.0.2/32, 172.18.0.0/16, \"fd10::2/128\"]",
        "    persistent_keepalive: 25",
        "    preshared_key_file: keys/ab.psk",
        "  - name: site-c",
        &format!("    public_key: {K2}"),
        "    allowed_ips:",
        "      - 10.10.0.3/32",
        "routes:",
        "  - to: 192.168.50.0/24",
        "    metric: 100",
        "  - to: fd20::/48",
    ]);
    let m = manifest::parse(&text, Path::new("/srv/netman/site-a.yaml")).unwrap();
    let expected_sha = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(text.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(m.source.sha256, expected_sha);
    assert_eq!(m.source.sha256.len(), 64);
    assert_eq!(
        m,
        Manifest {
            name: "site-a".to_owned(),
            interface: Interface {
                name: "nm0".to_owned(),
                addresses: vec![
                    "10.10.0.1/24".parse().unwrap(),
                    "fd10::1/64".parse().unwrap()
                ],
                mtu: 1380,
                txqueuelen: manifest::DEFAULT_TXQUEUELEN,
                listen_port: Some(51820),
                private_key_file: PathBuf::from("/srv/netman/keys/site-a.key"),
                mss_clamp: MssClamp::Off,
                table: None,
                fwmark: None,
                public_key: None,
            },
            peers: vec![
                Peer {
                    name: "site-b".to_owned(),
                    public_key: key(K1),
                    endpoint: Some(Endpoint::Addr("192.0.2.10:51820".parse().unwrap())),
                    allowed_ips: vec![
                        "10.10.0.2/32".parse().unwrap(),
                        "172.18.0.0/16".parse().unwrap(),
                        "fd10::2/128".parse().unwrap(),
                    ],
                    persistent_keepalive: Some(25),
                    preshared_key_file: Some(PathBuf::from("/srv/netman/keys/ab.psk")),
                    endpoint_refresh: None,
                    endpoint_stale_after: None,
                },
                Peer {
                    name: "site-c".to_owned(),
                    public_key: key(K2),
                    endpoint: None,
                    allowed_ips: vec!["10.10.0.3/32".parse().unwrap()],
                    persistent_keepalive: None,
                    preshared_key_file: None,
                    endpoint_refresh: None,
                    endpoint_stale_after: None,
                },
            ],
            routes: vec![
                Route {
                    to: "192.168.50.0/24".parse().unwrap(),
                    metric: Some(100),
                },
                Route {
                    to: "fd20::/48".parse().unwrap(),
                    metric: None,
                },
            ],
            forwarding: false,
            firewall: Default::default(),
            watch: true,
            metrics: None,
            probes: vec![],
            rollout: None,
            source: m.source.clone(),
            warnings: vec![],
        }
    );
}

#[test]
fn ipv6_only_manifest() {
    let text = doc(&[
        "name: v6-only",
        "interface:",
        "  name: wg-v6",
        "  addresses: [\"fd10::1/64\"]",
        "  mtu: 1280",
        "  private_key_file: k",
        "peers:",
        "  - name: b",
        &format!("    public_key: {K1}"),
        "    endpoint: \"[2001:db8::2]:51820\"",
        "    allowed_ips: [\"fd10::2/128\", \"fd20::/48\"]",
        "routes:",
        "  - to: \"::/0\"",
    ]);
    let m = parse(&text).unwrap();
    assert_eq!(m.interface.mtu, 1280);
    assert_eq!(m.interface.addresses, ["fd10::1/64".parse().unwrap()]);
    assert_eq!(
        m.peers[0].allowed_ips,
        ["fd10::2/128".parse().unwrap(), "fd20::/48".parse().unwrap()]
    );
    assert_eq!(m.routes[0].to, "::/0".parse().unwrap());
    assert_eq!(
        m.peers[0].endpoint,
        Some(Endpoint::Addr("[2001:db8::2]:51820".parse().unwrap()))
    );
}

#[test]
fn endpoints_hostname_and_bracketed_v6() {
    let with_endpoint = |e: &str| {
        let text = with_head(&[
            "peers:",
            "  - name: site-b",
            &format!("    public_key: {K1}"),
            &format!("    endpoint: {e}"),
            "    allowed_ips: []",
        ]);
        parse(&text).unwrap().peers[0].endpoint.clone().unwrap()
    };

    let host = with_endpoint("vpn.example.net:51820");
    assert_eq!(
        host,
        Endpoint::Host {
            host: "vpn.example.net".to_owned(),
            port: 51820
        }
    );
    assert_eq!(host.to_string(), "vpn.example.net:51820");

    let single_label = with_endpoint("gateway:4500");
    assert_eq!(single_label.to_string(), "gateway:4500");

    let v6 = with_endpoint("\"[2001:db8::1]:51820\"");
    let addr: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
    assert_eq!(v6, Endpoint::Addr(addr));
    assert_eq!(v6.to_string(), "[2001:db8::1]:51820");

    let v4 = with_endpoint("192.0.2.10:51820");
    assert_eq!(v4.to_string(), "192.0.2.10:51820");
}

#[test]
fn endpoint_refresh_settings_are_taken_for_a_hostname_endpoint() {
    let text = with_head(&[
        "peers:",
        "  - name: site-b",
        &format!("    public_key: {K1}"),
        "    endpoint: hub.example.net:51820",
        "    allowed_ips: []",
        "    endpoint_refresh: 60",
        "    endpoint_stale_after: 86400",
        "  - name: site-c",
        &format!("    public_key: {K2}"),
        "    endpoint: localhost:51820",
        "    allowed_ips: []",
    ]);
    let m = parse(&text).unwrap();
    assert_eq!(m.peers[0].endpoint_refresh, Some(60));
    assert_eq!(m.peers[0].endpoint_stale_after, Some(86400));
    // Absent: the engine's defaults (300 s and 135 s).
    assert_eq!(m.peers[1].endpoint_refresh, None);
    assert_eq!(m.peers[1].endpoint_stale_after, None);
    // The engine keeps the name with the defaults filled in, next to the
    // address it resolved at apply (localhost: /etc/hosts).
    let mut one = m.clone();
    one.peers.remove(0);
    let cfg = netman::engine::config::EngineConfig::from_manifest(&one).unwrap();
    let name = cfg.peers[0].endpoint_name.clone().unwrap();
    assert_eq!(name.to_string(), "localhost:51820");
    assert_eq!((name.refresh_secs, name.stale_after_secs), (300, 135));
    assert!(cfg.peers[0].endpoint.unwrap().ip().is_loopback());
}

#[test]
fn public_key_round_trips_and_displays_as_base64() {
    let k = key(K3);
    assert_eq!(k.to_string(), K3);
    assert_eq!(format!("{k:?}"), format!("PublicKey({K3})"));
    assert_eq!(PublicKey::from_base64(&k.to_base64()), Ok(k));
    assert_eq!(
        PublicKey::from_base64(KEY_31),
        Err(manifest::KeyError::WrongLength(31))
    );
    assert_eq!(
        "!!".parse::<PublicKey>(),
        Err(manifest::KeyError::NotBase64)
    );
}

#[test]
fn quoted_and_anchored_values_are_positioned_where_used() {
    // The alias reference is what the user sees at that field; report there.
    let text = with_head(&[
        "peers:",
        "  - name: site-b",
        &format!("    public_key: &k {K1}"),
        "    allowed_ips: []",
        "  - name: site-c",
        "    public_key: *k",
        "    allowed_ips: []",
    ]);
    assert_eq!(
        errors(&text),
        [
            "site-a.yaml:11:17: peers[1].public_key: duplicate public key (already used by peers[0] `site-b`)"
        ]
    );
}

#[test]
fn alias_amplification_is_rejected_by_the_budget() {
    // The schema has no nested lists, so the classic nested "billion laughs" dies at the
    // first type error; the real risk is flat amplification: many peers aliasing one
    // large list. 1,000 peers × a 1,000-entry alias would replay ~1M events.
    let mut text = with_head(&["peers:", "  - name: p0", &format!("    public_key: {K1}")]);
    text.push_str("    allowed_ips: &ips [");
    for i in 0..1_000u32 {
        let _ = write!(
            text,
            "{}10.{}.{}.0/24",
            if i == 0 { "" } else { ", " },
            i >> 8,
            i & 0xff
        );
    }
    text.push_str("]\n");
    for p in 1..1_000 {
        let _ = writeln!(
            text,
            "  - {{name: p{p}, public_key: {K1}, allowed_ips: *ips}}"
        );
    }
    let start = std::time::Instant::now();
    let errs = parse(&text).unwrap_err();
    eprintln!(
        "alias amplification rejected in {:?}: {errs}",
        start.elapsed()
    );
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert!(e.line > 10, "{errs}");
    assert!(e.message.contains("limit"), "{errs}");
}

#[test]
fn unreadable_file_is_one_positioned_error() {
    let errs =
        manifest::load(Path::new("tests/fixtures/manifests/does-not-exist.yaml")).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "tests/fixtures/manifests/does-not-exist.yaml:1:1: cannot read: No such file or directory (os error 2)"
    );
    assert_eq!(errs.0[0].path, "");
}

#[test]
fn fixtures_load_and_resolve_keys_against_their_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
    let m = manifest::load(Path::new("tests/fixtures/manifests/full.yaml")).unwrap();
    assert_eq!(m.source.path, dir.join("full.yaml"));
    assert_eq!(m.interface.private_key_file, dir.join("keys/hub.key"));
    assert_eq!(
        m.peers[0].preshared_key_file.as_deref(),
        Some(dir.join("keys/hub-branch1.psk").as_path())
    );
    assert_eq!(m.peers.len(), 2);
    assert_eq!(m.routes.len(), 2);

    let errs = manifest::load(Path::new("tests/fixtures/manifests/many-errors.yaml")).unwrap_err();
    let text = errs.to_string();
    let expected = std::fs::read_to_string(dir.join("many-errors.expected")).unwrap();
    assert_eq!(text, expected.trim_end());
}

fn wg_pubkey(private_key_file: &Path) -> Option<String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let private = std::fs::read(private_key_file).unwrap();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(&private).ok()?;
    let out = child.wait_with_output().ok()?;
    assert!(out.status.success());
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn example_manifests_validate_and_match_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let a = manifest::load(&root.join("manifests/site-a.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let b = manifest::load(&root.join("manifests/site-b.yaml")).unwrap_or_else(|e| panic!("{e}"));

    for (me, other) in [(&a, &b), (&b, &a)] {
        assert_eq!(me.peers.len(), 1);
        let peer = &me.peers[0];
        assert_eq!(peer.name, other.name);
        assert_eq!(peer.persistent_keepalive, Some(25));
        // The peer's overlay addresses are routed to it as host routes.
        for addr in &other.interface.addresses {
            let host = ipnet::IpNet::new(addr.addr(), addr.max_prefix_len()).unwrap();
            assert!(
                peer.allowed_ips.contains(&host),
                "{host} not in {:?}",
                peer.allowed_ips
            );
        }
        // The key files exist next to the manifests and are demo keys.
        assert!(me.interface.private_key_file.is_file());
        assert!(
            me.interface
                .private_key_file
                .starts_with(root.join("manifests/keys"))
        );
        match wg_pubkey(&other.interface.private_key_file) {
            Some(pubkey) => assert_eq!(peer.public_key.to_string(), pubkey),
            None => eprintln!("wg not available; public keys not cross-checked"),
        }
    }
    assert!(
        a.peers[0]
            .allowed_ips
            .contains(&"172.18.2.0/24".parse().unwrap())
    );
    assert!(
        b.peers[0]
            .allowed_ips
            .contains(&"172.18.1.0/24".parse().unwrap())
    );
    assert_eq!(
        a.peers[0]
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("192.0.2.2:51820")
    );
    assert_eq!(
        b.peers[0]
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("192.0.2.1:51820")
    );
}

#[test]
fn large_manifest_parses() {
    // 1,000 peers × 10 allowed IPs and 10,000 routes.
    let mut text = String::with_capacity(2 << 20);
    text.push_str("name: big\ninterface:\n  name: nm0\n  addresses: [10.0.0.1/8]\n  private_key_file: k\npeers:\n");
    for p in 0..1_000u32 {
        // Distinct keys, none of them zero (a low-order point).
        let mut keybytes = [0u8; 32];
        keybytes[..4].copy_from_slice(&(p + 1).to_be_bytes());
        let k = PublicKey::from_bytes(keybytes);
        let _ = writeln!(
            text,
            "  - name: peer-{p}\n    public_key: {k}\n    endpoint: 198.51.100.{}:{}",
            p % 250 + 1,
            10_000 + p
        );
        text.push_str("    persistent_keepalive: 25\n    allowed_ips:\n");
        for i in 0..10u32 {
            let n = p * 10 + i;
            let _ = writeln!(text, "      - 10.{}.{}.0/24", n >> 8 & 0xff, n & 0xff);
        }
    }
    text.push_str("routes:\n");
    for r in 0..10_000u32 {
        let _ = writeln!(
            text,
            "  - to: 172.{}.{}.0/24\n    metric: {}",
            16 + (r >> 8),
            r & 0xff,
            r
        );
    }
    let start = std::time::Instant::now();
    let m = parse(&text).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.0.iter()
                .take(5)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    eprintln!(
        "parsed {} bytes ({} peers, {} allowed IPs, {} routes) in {:?}",
        text.len(),
        m.peers.len(),
        m.peers.iter().map(|p| p.allowed_ips.len()).sum::<usize>(),
        m.routes.len(),
        start.elapsed()
    );
    assert_eq!(m.peers.len(), 1_000);
    assert_eq!(m.routes.len(), 10_000);
    assert!(m.peers.iter().all(|p| p.allowed_ips.len() == 10));
}

/// Overlapping allowed IPs that are legal (the longest prefix wins) are
/// warnings naming both peers and lines; the manifest stays valid.
#[test]
fn overlapping_allowed_ips_are_warnings_naming_both_peers() {
    let text = with_head(&[
        "peers:",                                                       // 6
        "  - name: hub",                                                // 7
        "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=", // 8
        "    allowed_ips: [10.0.0.0/8, 172.18.0.0/24]",                 // 9
        "  - name: branch",                                             // 10
        "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=", // 11
        "    allowed_ips: [10.20.0.0/16, 172.18.0.0/25]",               // 12
        "  - name: other",                                              // 13
        "    public_key: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", // 14
        "    allowed_ips: [172.18.0.128/25, 192.168.0.0/16]",           // 15
    ]);
    let m = parse(&text).unwrap();
    let warnings: Vec<String> = m.warnings.iter().map(|w| w.warning()).collect();
    assert_eq!(
        warnings,
        [
            "site-a.yaml:9:19: peers[0].allowed_ips[0]: warning: 10.0.0.0/8 contains 10.20.0.0/16 of peer `branch` (peers[1].allowed_ips[0], line 12): traffic to those goes to that peer, not to `hub` (the longest prefix wins)",
            "site-a.yaml:9:31: peers[0].allowed_ips[1]: warning: 172.18.0.0/24 never receives traffic: it is entirely covered by more specific entries (172.18.0.0/25 of peer `branch` (peers[1].allowed_ips[1], line 12), 172.18.0.128/25 of peer `other` (peers[2].allowed_ips[0], line 15)), and the longest prefix wins",
        ]
    );
    // Without overlaps there is nothing to say.
    let plain = with_head(&[
        "peers:",
        "  - name: hub",
        "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
        "    allowed_ips: [10.0.0.0/9]",
        "  - name: branch",
        "    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
        "    allowed_ips: [10.128.0.0/9]",
    ]);
    assert_eq!(parse(&plain).unwrap().warnings, []);
}

/// `interface.mss_clamp`: the default follows `forwarding`; `off`, `auto`
/// (quoted or not: YAML 1.1 reads a plain `off` as false) and an MSS in
/// range are accepted; everything else is an error at the value.
#[test]
fn mss_clamp_values_and_default() {
    let with = |clamp: Option<&str>, forwarding: Option<&str>| {
        let mut lines: Vec<String> = HEAD.iter().map(|l| (*l).to_owned()).collect();
        if let Some(c) = clamp {
            lines.push(format!("  mss_clamp: {c}"));
        }
        if let Some(f) = forwarding {
            lines.push(format!("forwarding: {f}"));
        }
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        doc(&lines)
    };
    let ok: &[(Option<&str>, Option<&str>, MssClamp)] = &[
        (None, None, MssClamp::Off),
        (None, Some("false"), MssClamp::Off),
        (None, Some("true"), MssClamp::Auto),
        (Some("off"), Some("true"), MssClamp::Off),
        (Some("\"off\""), Some("true"), MssClamp::Off),
        (Some("auto"), None, MssClamp::Auto),
        (Some("1360"), Some("true"), MssClamp::Fixed(1360)),
        (Some("536"), None, MssClamp::Fixed(536)),
        (Some("65495"), None, MssClamp::Fixed(65495)),
    ];
    for (clamp, fwd, want) in ok {
        let m = parse(&with(*clamp, *fwd)).unwrap_or_else(|e| panic!("{clamp:?} {fwd:?}: {e}"));
        assert_eq!(m.interface.mss_clamp, *want, "{clamp:?} {fwd:?}");
    }
    let bad: &[(&str, &str)] = &[
        (
            "535",
            "site-a.yaml:6:14: interface.mss_clamp: MSS 535 is out of range (536..=65495)",
        ),
        (
            "65496",
            "site-a.yaml:6:14: interface.mss_clamp: MSS 65496 is out of range (536..=65495)",
        ),
        (
            "-1",
            "site-a.yaml:6:14: interface.mss_clamp: MSS -1 is out of range (536..=65495)",
        ),
        (
            "on",
            "site-a.yaml:6:14: interface.mss_clamp: expected off, auto or an MSS (536..=65495), found \"on\"",
        ),
        (
            "pmtu",
            "site-a.yaml:6:14: interface.mss_clamp: expected off, auto or an MSS (536..=65495), found \"pmtu\"",
        ),
        (
            "[1]",
            "site-a.yaml:6:14: interface.mss_clamp: expected off, auto or an MSS (536..=65495), found list",
        ),
        (
            "1.5",
            "site-a.yaml:6:14: interface.mss_clamp: expected off, auto or an MSS (536..=65495), found floating point number",
        ),
    ];
    for (clamp, want) in bad {
        assert_eq!(errors(&with(Some(clamp), None)), [*want], "{clamp}");
    }
    // The clamp's rules name the interface in nftables: a name nft cannot
    // take between quotes is refused where the clamp comes from.
    let quoted = doc(&[
        "name: site-a",
        "interface:",
        "  name: nm\"0",
        "  addresses: [10.10.0.1/24]",
        "  private_key_file: a.key",
        "forwarding: true",
    ]);
    let e = errors(&quoted);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("site-a.yaml:3:9: interface.name: the rules of interface.mss_clamp name the interface in nftables")
            && e[0].ends_with("or set interface.mss_clamp: off"),
        "{e:?}"
    );
    // A manifest chain may not take the clamp's chain name.
    let chain = with_head(&[
        "firewall:",
        "  chains:",
        "    - name: mss_clamp",
        "      hook: forward",
    ]);
    assert_eq!(
        errors(&chain),
        [
            "site-a.yaml:8:13: firewall.chains[0].name: `mss_clamp` is the name of netman's own chain for interface.mss_clamp; choose another"
        ]
    );
}

/// `interface.public_key` (optional): the site's own key, parsed like a
/// peer's, and no peer may have it.
#[test]
fn interface_public_key_is_parsed_and_no_peer_has_it() {
    let own = format!("  public_key: {K2}");
    let m = parse(&with_head(&[&own])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.interface.public_key, Some(key(K2)));
    assert_eq!(
        parse(&doc(&HEAD)).expect("valid").interface.public_key,
        None
    );
    assert_eq!(
        errors(&with_head(&["  public_key: nokey"])),
        [
            "site-a.yaml:6:15: interface.public_key: not valid base64 (expected 44 characters of standard base64 with `=` padding, as printed by `wg pubkey`)"
        ]
    );
    assert_eq!(
        errors(&with_head(&[&format!(
            "  public_key: {}",
            LOW_ORDER_KEYS[0].1
        )])),
        [
            "site-a.yaml:6:15: interface.public_key: a low-order point, not a usable public key (no key exchange with it can succeed)"
        ]
    );
    let peer_key = format!("    public_key: {K2}");
    assert_eq!(
        errors(&with_head(&[
            &own,
            "peers:",
            "  - name: b",
            &peer_key,
            "    allowed_ips: [10.10.0.2/32]",
        ])),
        [
            "site-a.yaml:9:17: peers[0].public_key: this site's own public key (interface.public_key)"
        ]
    );
}

#[test]
fn probes_and_rollout_are_parsed_top_level_first() {
    let text = with_head(&[
        "peers:",
        "  - name: site-b",
        "    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
        "    allowed_ips: [10.10.0.2/32, fd10::/64]",
        "    probes:",
        "      - ping: fd10::2",
        "probes:",
        "  - ping: 10.10.0.2",
        "rollout:",
        "  confirm: healthy",
        "  timeout: 45",
    ]);
    let m = manifest::parse(&text, Path::new("site-a.yaml")).expect("valid");
    let shown: Vec<String> = m.probes.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["ping 10.10.0.2", "ping fd10::2 (peer site-b)"]);
    assert_eq!(m.rollout, Some(manifest::Rollout { timeout_secs: 45 }));
}

/// A rollout timeout under 15 s is legal but risks reverting good changes:
/// a warning at the value.
#[test]
fn a_short_rollout_timeout_is_a_warning() {
    let short = with_head(&["rollout:", "  confirm: healthy", "  timeout: 8"]);
    let m = manifest::parse(&short, Path::new("site-a.yaml")).expect("valid");
    let warnings: Vec<String> = m.warnings.iter().map(|w| w.warning()).collect();
    assert_eq!(
        warnings,
        [
            "site-a.yaml:8:12: rollout.timeout: warning: 8 s may revert a good change: a peer's handshake can be held back 5 s by the protocol's rate limit, and the far end may change later (at least 15 s; see docs/fleet.md, \"Choosing the timeout\")"
        ]
    );
    let long = with_head(&["rollout:", "  confirm: healthy", "  timeout: 15"]);
    let m = manifest::parse(&long, Path::new("site-a.yaml")).expect("valid");
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}
