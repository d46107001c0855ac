//! `netman import`: turn a wg-quick configuration (`wg0.conf`) into a
//! manifest. Keys are never written into the manifest: the private key and
//! preshared keys go to separate files (mode 0600) that the manifest names.
//! Scripts (`PostUp` and friends) are never executed; firewall commands in
//! them are reported so they can be turned into `firewall:` rules.

use std::fmt::Write as _;

use ipnet::IpNet;
use netman_proto::keys::{PresharedKey, PrivateKey, PublicKey};
use thiserror::Error;
use zeroize::Zeroizing;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Missing { file: String, message: String },
}

/// One imported peer.
pub struct ImportedPeer {
    pub name: String,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// A parsed wg-quick configuration. Not `Debug`: it holds keys.
pub struct Imported {
    pub interface: String,
    pub private_key: PrivateKey,
    pub addresses: Vec<IpNet>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub peers: Vec<ImportedPeer>,
    /// Things netman does not carry over, one line each, for the user.
    pub notes: Vec<String>,
}

fn is_firewall_command(cmd: &str) -> bool {
    let first = cmd.split_whitespace().next().unwrap_or("");
    let base = first.rsplit('/').next().unwrap_or(first);
    matches!(
        base,
        "iptables" | "ip6tables" | "iptables-nft" | "ip6tables-nft" | "iptables-legacy" | "nft"
    )
}

/// Parse wg-quick `text` (from `file`, whose stem names the interface).
pub fn parse(text: &str, file: &str, interface: &str) -> Result<Imported, ImportError> {
    let syntax = |line: usize, message: String| ImportError::Syntax {
        file: file.to_string(),
        line,
        message,
    };
    enum Section {
        None,
        Interface,
        Peer,
    }
    let mut section = Section::None;
    let mut private_key = None;
    let mut addresses = Vec::new();
    let mut listen_port = None;
    let mut mtu = None;
    let mut notes = Vec::new();
    let mut peers: Vec<ImportedPeer> = Vec::new();
    let mut pending_name: Option<String> = None;

    // Peers are finished when the next section starts or at the end.
    struct PeerDraft {
        line: usize,
        name: Option<String>,
        public_key: Option<PublicKey>,
        preshared_key: Option<PresharedKey>,
        endpoint: Option<String>,
        allowed_ips: Vec<IpNet>,
        keepalive: Option<u16>,
    }
    let mut draft: Option<PeerDraft> = None;
    let finish = |d: PeerDraft, peers: &mut Vec<ImportedPeer>| -> Result<(), ImportError> {
        let Some(public_key) = d.public_key else {
            return Err(syntax(d.line, "[Peer] without PublicKey".into()));
        };
        let name = d
            .name
            .unwrap_or_else(|| format!("peer-{}", peers.len() + 1));
        peers.push(ImportedPeer {
            name,
            public_key,
            preshared_key: d.preshared_key,
            endpoint: d.endpoint,
            allowed_ips: d.allowed_ips,
            persistent_keepalive: d.keepalive,
        });
        Ok(())
    };

    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            // `# Name = site-b` (anywhere in a peer, or before it) or a
            // plain `# site-b` right before a [Peer] names that peer.
            let c = comment.trim();
            let named = c
                .split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("name"))
                .map(|(_, v)| v.trim());
            match (named, draft.as_mut()) {
                (Some(n), Some(d)) if d.name.is_none() => d.name = sanitize_name(n),
                (Some(n), _) => pending_name = sanitize_name(n),
                // A commented-out setting (`#PersistentKeepalive = 25`)
                // names nothing.
                (None, _) if c.contains('=') => pending_name = None,
                (None, _) => pending_name = sanitize_name(c),
            }
            continue;
        }
        if line.starts_with('[') {
            if let Some(d) = draft.take() {
                finish(d, &mut peers)?;
            }
            match line.to_ascii_lowercase().as_str() {
                "[interface]" => section = Section::Interface,
                "[peer]" => {
                    section = Section::Peer;
                    draft = Some(PeerDraft {
                        line: line_no,
                        name: pending_name.take(),
                        public_key: None,
                        preshared_key: None,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        keepalive: None,
                    });
                }
                other => return Err(syntax(line_no, format!("unknown section {other}"))),
            }
            continue;
        }
        pending_name = None;
        let Some((key, value)) = line.split_once('=') else {
            return Err(syntax(line_no, "expected `Key = Value`".into()));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        // A trailing comment on a value line.
        let value = value.split(" #").next().unwrap_or(value).trim();
        match section {
            Section::None => return Err(syntax(line_no, "setting outside of a section".into())),
            Section::Interface => match key.as_str() {
                "privatekey" => {
                    private_key = Some(PrivateKey::from_base64(value).map_err(|_| {
                        syntax(line_no, "PrivateKey is not a valid key".into())
                    })?)
                }
                "address" => {
                    for a in split_list(value) {
                        let net: IpNet = a
                            .parse()
                            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| syntax(line_no, format!("Address {a:?} is not an address")))?;
                        addresses.push(net);
                    }
                }
                "listenport" => {
                    listen_port = Some(value.parse().map_err(|_| {
                        syntax(line_no, format!("ListenPort {value:?} is not a port"))
                    })?)
                }
                "mtu" => {
                    mtu = Some(
                        value
                            .parse()
                            .map_err(|_| syntax(line_no, format!("MTU {value:?} is not a number")))?,
                    )
                }
                "postup" | "postdown" | "preup" | "predown" => {
                    for cmd in value.split(';').map(str::trim).filter(|c| !c.is_empty()) {
                        let what = if is_firewall_command(cmd) {
                            "firewall command, not executed; declare it under `firewall:`"
                        } else {
                            "command, not executed"
                        };
                        notes.push(format!("line {line_no}: {} {what}: {cmd}", raw_key(raw)));
                    }
                }
                "dns" => notes.push(format!(
                    "line {line_no}: DNS = {value} is not managed by netman; configure the resolver separately"
                )),
                "table" => notes.push(format!(
                    "line {line_no}: Table = {value} ignored: netman adds routes for allowed IPs to the main table"
                )),
                "fwmark" => notes.push(format!("line {line_no}: FwMark = {value} ignored")),
                "saveconfig" => notes.push(format!("line {line_no}: SaveConfig ignored")),
                other => return Err(syntax(line_no, format!("unknown [Interface] key {other}"))),
            },
            Section::Peer => {
                let Some(d) = draft.as_mut() else {
                    return Err(syntax(line_no, "setting outside of a section".into()));
                };
                match key.as_str() {
                    "publickey" => {
                        d.public_key = Some(PublicKey::from_base64(value).map_err(|_| {
                            syntax(line_no, "PublicKey is not a valid key".into())
                        })?)
                    }
                    "presharedkey" => {
                        d.preshared_key = Some(PresharedKey::from_base64(value).map_err(|_| {
                            syntax(line_no, "PresharedKey is not a valid key".into())
                        })?)
                    }
                    "endpoint" => d.endpoint = Some(value.to_string()),
                    "allowedips" => {
                        for a in split_list(value) {
                            let net: IpNet = a
                                .parse()
                                .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                                .map_err(|_| {
                                    syntax(line_no, format!("AllowedIPs {a:?} is not a prefix"))
                                })?;
                            let trunc = net.trunc();
                            if trunc != net {
                                notes.push(format!(
                                    "line {line_no}: AllowedIPs {net} has host bits set; imported as {trunc}"
                                ));
                            }
                            if trunc.prefix_len() == 0 {
                                notes.push(format!(
                                    "line {line_no}: AllowedIPs {trunc} routes everything through the tunnel; netman adds it to the main table (wg-quick uses policy routing); check it does not collide with your default route"
                                ));
                            }
                            d.allowed_ips.push(trunc);
                        }
                    }
                    "persistentkeepalive" => {
                        if value.eq_ignore_ascii_case("off") || value == "0" {
                            d.keepalive = None;
                        } else {
                            d.keepalive = Some(value.parse().map_err(|_| {
                                syntax(line_no, format!("PersistentKeepalive {value:?} is not a number"))
                            })?);
                        }
                    }
                    other => return Err(syntax(line_no, format!("unknown [Peer] key {other}"))),
                }
            }
        }
    }
    if let Some(d) = draft.take() {
        finish(d, &mut peers)?;
    }
    let private_key = private_key.ok_or_else(|| ImportError::Missing {
        file: file.to_string(),
        message: "[Interface] has no PrivateKey".into(),
    })?;
    if addresses.is_empty() {
        return Err(ImportError::Missing {
            file: file.to_string(),
            message: "[Interface] has no Address (netman needs at least one)".into(),
        });
    }
    // Unique peer names.
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in peers.iter_mut().enumerate() {
        if !seen.insert(p.name.clone()) {
            p.name = format!("{}-{}", p.name, i + 1);
            seen.insert(p.name.clone());
        }
    }
    Ok(Imported {
        interface: interface.to_string(),
        private_key,
        addresses,
        listen_port,
        mtu,
        peers,
        notes,
    })
}

fn raw_key(raw: &str) -> &str {
    raw.split('=').next().unwrap_or("").trim()
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A peer or deployment name from free text: lower case, `[a-z0-9-]`.
pub fn sanitize_name(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out
        .trim_end_matches('-')
        .chars()
        .take(32)
        .collect::<String>();
    (!out.is_empty()).then_some(out)
}

/// The files an import writes: the manifest, the private key, and one
/// preshared key file per peer that has one (paths relative to the
/// manifest's directory).
pub struct Output {
    pub manifest: String,
    pub private_key_file: String,
    pub private_key: Zeroizing<String>,
    pub psk_files: Vec<(String, Zeroizing<String>)>,
}

/// Render the manifest for deployment `name`, naming key files under
/// `keys/`.
pub fn render(imp: &Imported, name: &str, source: &str) -> Output {
    let key_file = format!("keys/{name}.key");
    let mut m = String::new();
    let _ = writeln!(m, "# Imported by `netman import` from {source}.");
    for n in &imp.notes {
        let _ = writeln!(m, "# note: {n}");
    }
    let _ = writeln!(m, "name: {name}");
    let _ = writeln!(m, "interface:");
    let _ = writeln!(m, "  name: {}", imp.interface);
    let addrs: Vec<String> = imp.addresses.iter().map(ToString::to_string).collect();
    let _ = writeln!(m, "  addresses: [{}]", addrs.join(", "));
    if let Some(mtu) = imp.mtu {
        let _ = writeln!(m, "  mtu: {mtu}");
    }
    if let Some(p) = imp.listen_port {
        let _ = writeln!(m, "  listen_port: {p}");
    }
    let _ = writeln!(m, "  private_key_file: {key_file}");
    let mut psk_files = Vec::new();
    if imp.peers.is_empty() {
        let _ = writeln!(m, "peers: []");
    } else {
        let _ = writeln!(m, "peers:");
    }
    for p in &imp.peers {
        let _ = writeln!(m, "  - name: {}", p.name);
        let _ = writeln!(m, "    public_key: \"{}\"", p.public_key.to_base64());
        if let Some(e) = &p.endpoint {
            let _ = writeln!(m, "    endpoint: \"{e}\"");
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(m, "    allowed_ips: [{}]", ips.join(", "));
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(m, "    persistent_keepalive: {k}");
        }
        if let Some(psk) = &p.preshared_key {
            let f = format!("keys/{name}-{}.psk", p.name);
            let _ = writeln!(m, "    preshared_key_file: {f}");
            psk_files.push((f, psk.to_base64()));
        }
    }
    Output {
        manifest: m,
        private_key_file: key_file,
        private_key: imp.private_key.to_base64(),
        psk_files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "\
# wg0 on the hub
[Interface]
Address = 10.8.0.1/24, fd42:42:42::1/64
ListenPort = 51820
PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=
MTU = 1420
SaveConfig = false
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE; echo up
PostDown = iptables -D FORWARD -i %i -j ACCEPT

# laptop
[Peer]
PublicKey = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
AllowedIPs = 10.8.0.2/32, fd42:42:42::2/128

[Peer]
# Name = Branch Office #2
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
Endpoint = branch.example.net:51820
AllowedIPs = 10.8.0.3/32, 192.168.20.5/24
PersistentKeepalive = 25
";

    const CLIENT: &str = "\
[Interface]
PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=
Address = 10.8.0.2/32
DNS = 1.1.1.1, 9.9.9.9

[Peer]
PublicKey = NMhRCnaqtzbpu7h1R8CWi9kRSB1sZ0yY2BbOUgFJVmU=
Endpoint = [2001:db8::1]:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 15
";

    #[test]
    fn server_config_imports_with_names_notes_and_keys() {
        let imp = parse(SERVER, "wg0.conf", "wg0").expect("parse");
        assert_eq!(imp.interface, "wg0");
        assert_eq!(imp.listen_port, Some(51820));
        assert_eq!(imp.mtu, Some(1420));
        assert_eq!(
            imp.private_key.public_key().to_base64(),
            "V4rUiYSmRyeAkPT7GM/ETiJGHx76LuE2faJytobSM0c="
        );
        let names: Vec<&str> = imp.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["laptop", "branch-office-2"]);
        assert!(imp.peers[0].preshared_key.is_some());
        assert_eq!(
            imp.peers[1].endpoint.as_deref(),
            Some("branch.example.net:51820")
        );
        assert_eq!(imp.peers[1].allowed_ips[1].to_string(), "192.168.20.0/24");
        assert_eq!(imp.peers[1].persistent_keepalive, Some(25));
        let fw: Vec<&String> = imp
            .notes
            .iter()
            .filter(|n| n.contains("firewall command"))
            .collect();
        assert_eq!(fw.len(), 3, "{:?}", imp.notes);
        assert!(
            imp.notes
                .iter()
                .any(|n| n.contains("command, not executed: echo up"))
        );
        assert!(imp.notes.iter().any(|n| n.contains("host bits set")));
        assert!(imp.notes.iter().any(|n| n.contains("SaveConfig")));
    }

    #[test]
    fn client_config_notes_dns_and_default_route() {
        let imp = parse(CLIENT, "client.conf", "client").expect("parse");
        assert_eq!(imp.peers[0].name, "peer-1");
        assert_eq!(
            imp.peers[0].endpoint.as_deref(),
            Some("[2001:db8::1]:51820")
        );
        assert!(imp.notes.iter().any(|n| n.contains("DNS")));
        assert_eq!(
            imp.notes
                .iter()
                .filter(|n| n.contains("routes everything"))
                .count(),
            2
        );
    }

    #[test]
    fn errors_name_the_line_and_never_the_key() {
        let bad = SERVER.replace(
            "PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=",
            "PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30",
        );
        let e = parse(&bad, "wg0.conf", "wg0")
            .err()
            .expect("bad key")
            .to_string();
        assert_eq!(e, "wg0.conf:5: PrivateKey is not a valid key");
        let e = parse("[Interface]\nAddress = 10.0.0.1/24\n", "x.conf", "x")
            .err()
            .expect("no key")
            .to_string();
        assert!(e.contains("no PrivateKey"), "{e}");
        let e = parse("[Interface]\nFoo = 1\n", "x.conf", "x")
            .err()
            .expect("unknown")
            .to_string();
        assert_eq!(e, "x.conf:2: unknown [Interface] key foo");
        let e = parse(
            "[Peer]\nAllowedIPs = 10.0.0.0/8\n[Interface]\n",
            "x.conf",
            "x",
        )
        .err()
        .expect("no pubkey")
        .to_string();
        assert_eq!(e, "x.conf:1: [Peer] without PublicKey");
    }

    #[test]
    fn rendered_manifest_round_trips_through_validation() {
        for (text, file) in [(SERVER, "wg0.conf"), (CLIENT, "client.conf")] {
            let iface = file.trim_end_matches(".conf");
            let imp = parse(text, file, iface).expect("parse");
            let out = render(&imp, "site-x", file);
            assert!(
                !out.manifest
                    .contains("YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=")
            );
            assert!(
                !out.manifest
                    .contains("FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=")
            );
            let m =
                crate::manifest::parse(&out.manifest, std::path::Path::new("/etc/netman/x.yaml"))
                    .unwrap_or_else(|e| panic!("{file}: {e}\n{}", out.manifest));
            assert_eq!(m.interface.name, iface);
            assert_eq!(m.interface.addresses, imp.addresses);
            assert_eq!(m.interface.listen_port, imp.listen_port);
            assert_eq!(
                m.interface.private_key_file,
                std::path::PathBuf::from("/etc/netman/keys/site-x.key")
            );
            assert_eq!(m.peers.len(), imp.peers.len());
            for (mp, ip) in m.peers.iter().zip(&imp.peers) {
                assert_eq!(mp.name, ip.name);
                assert_eq!(mp.public_key.to_base64(), ip.public_key.to_base64());
                assert_eq!(mp.allowed_ips, ip.allowed_ips);
                assert_eq!(mp.persistent_keepalive, ip.persistent_keepalive);
                assert_eq!(mp.endpoint.as_ref().map(ToString::to_string), ip.endpoint);
                assert_eq!(mp.preshared_key_file.is_some(), ip.preshared_key.is_some());
            }
            assert_eq!(
                PrivateKey::from_base64(&out.private_key)
                    .expect("key")
                    .public_key(),
                imp.private_key.public_key()
            );
        }
    }
}
