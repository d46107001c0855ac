//! `netman graph`: a picture of a network file (issue 14): its sites, the
//! subnets behind them and its tunnels, as Graphviz DOT or as a Mermaid
//! flowchart (which GitHub draws in a README). Pure and byte-stable: the
//! text depends only on the [`Network`] (in file order) and, for
//! `--live`, on a [`Live`] snapshot of one gateway's tunnels, which the
//! caller builds from its engine's handshake times with
//! [`Live::from_handshakes`] (this layer knows nothing of the engine).

use std::fmt::Write as _;

use crate::manifest::PublicKey;

use super::{Network, Site};

/// A tunnel is up when its latest handshake is at most this old (WireGuard
/// re-keys every 120 s while traffic flows; a session is dead after 180 s).
pub const UP_WITHIN_SECS: u64 = 180;

/// The state of one tunnel as the local gateway's engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelState {
    /// A handshake within the last [`UP_WITHIN_SECS`] seconds.
    Up,
    /// A handshake, but an older one.
    Stale,
    /// The engine has the peer but never completed a handshake with it.
    Never,
    /// The engine does not have the peer (it runs another configuration).
    Unknown,
}

impl TunnelState {
    /// The state of a tunnel whose latest handshake was at unix time
    /// `latest` (seconds), at `now`. A handshake in the future (clock
    /// step) counts as just now.
    pub fn of(latest: Option<u64>, now: u64) -> Self {
        match latest {
            None => TunnelState::Never,
            Some(t) if now.saturating_sub(t) <= UP_WITHIN_SECS => TunnelState::Up,
            Some(_) => TunnelState::Stale,
        }
    }

    /// The edge label.
    pub fn word(self) -> &'static str {
        match self {
            TunnelState::Up => "up",
            TunnelState::Stale => "stale",
            TunnelState::Never => "no handshake",
            TunnelState::Unknown => "unknown",
        }
    }

    /// The edge colour (the same in DOT and Mermaid).
    pub fn colour(self) -> &'static str {
        match self {
            TunnelState::Up => "#2e8b57",
            TunnelState::Stale => "#ff8c00",
            TunnelState::Never => "#d62728",
            TunnelState::Unknown => "#808080",
        }
    }
}

/// One gateway's view of its tunnels, for `netman graph --live`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// The local site (index into `Network::sites`).
    pub local: usize,
    /// Per tunnel of the local site, in `Network::links` order: the site
    /// at its other end and the tunnel's state.
    pub tunnels: Vec<(usize, TunnelState)>,
}

impl Live {
    /// The local site `local`'s tunnels, each in the state its engine's
    /// peer with the other end's public key is in; `handshakes` is that
    /// engine's peers as (public key, latest handshake in unix seconds),
    /// `now` the time to judge them at. A tunnel whose peer the engine
    /// lacks is [`TunnelState::Unknown`].
    pub fn from_handshakes<D>(
        net: &Network<D>,
        local: usize,
        handshakes: &[(PublicKey, Option<u64>)],
        now: u64,
    ) -> Self {
        let tunnels = net
            .links
            .iter()
            .filter_map(|&(a, b)| match (a == local, b == local) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .filter_map(|other| {
                let key = net.sites.get(other)?.public_key;
                let state = handshakes
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(TunnelState::Unknown, |&(_, t)| TunnelState::of(t, now));
                Some((other, state))
            })
            .collect();
        Live { local, tunnels }
    }

    /// The state of the tunnel (a, b), if it is one of the local site's.
    fn state(&self, a: usize, b: usize) -> Option<TunnelState> {
        let other = if a == self.local {
            b
        } else if b == self.local {
            a
        } else {
            return None;
        };
        Some(
            self.tunnels
                .iter()
                .find(|(s, _)| *s == other)
                .map_or(TunnelState::Unknown, |&(_, st)| st),
        )
    }
}

/// The lines of a site's node label: name, overlay addresses, endpoint.
fn site_lines(site: &Site) -> Vec<String> {
    let mut lines = vec![site.name.clone()];
    lines.extend(site.addresses.iter().map(ToString::to_string));
    lines.extend(site.endpoint.iter().map(ToString::to_string));
    lines
}

fn title<D>(net: &Network<D>, live: Option<&Live>) -> String {
    match live.and_then(|l| net.sites.get(l.local)) {
        Some(site) => format!("network {}, live from {}", net.name, site.name),
        None => format!("network {}", net.name),
    }
}

/// A DOT double-quoted string: `"` and `\` escaped, a newline as `\n`.
fn dot_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A DOT label of several lines, each escaped.
fn dot_label(lines: &[String]) -> String {
    dot_quote(&lines.join("\n"))
}

/// The DOT ID of a subnet node: `site/prefix` (a site name has no `/`).
fn dot_subnet_id(site: &Site, subnet: &impl std::fmt::Display) -> String {
    dot_quote(&format!("{}/{subnet}", site.name))
}

/// The network as an undirected Graphviz graph (`dot -Tsvg`).
pub fn dot<D>(net: &Network<D>, live: Option<&Live>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// {}: drawn by `netman graph` from the network file",
        title(net, live)
    );
    let _ = writeln!(out, "graph {} {{", dot_quote(&net.name));
    let _ = writeln!(
        out,
        "  graph [label={}, labelloc=t, fontname=\"Helvetica\"];",
        dot_quote(&title(net, live))
    );
    out.push_str("  node [fontname=\"Helvetica\"];\n");
    out.push_str("  edge [fontname=\"Helvetica\"];\n");
    for (i, site) in net.sites.iter().enumerate() {
        let hub = net.hubs.contains(&i);
        let local = live.is_some_and(|l| l.local == i);
        let mut attrs = vec![format!(
            "shape={}",
            if hub { "doubleoctagon" } else { "box" }
        )];
        let mut style = Vec::new();
        if hub {
            style.push("bold");
        }
        if !hub {
            style.push("rounded");
        }
        if local {
            style.push("filled");
        }
        attrs.push(format!("style={}", dot_quote(&style.join(","))));
        if local {
            attrs.push("fillcolor=\"#cce5ff\"".to_owned());
        }
        attrs.push(format!("label={}", dot_label(&site_lines(site))));
        let _ = writeln!(out, "  {} [{}];", dot_quote(&site.name), attrs.join(", "));
        for subnet in &site.subnets {
            let id = dot_subnet_id(site, subnet);
            let _ = writeln!(
                out,
                "  {id} [shape=note, fontsize=10, label={}];",
                dot_quote(&subnet.to_string())
            );
            let _ = writeln!(out, "  {} -- {id};", dot_quote(&site.name));
        }
    }
    for &(a, b) in &net.links {
        let (Some(sa), Some(sb)) = (net.sites.get(a), net.sites.get(b)) else {
            continue;
        };
        let mut attrs = vec!["penwidth=2".to_owned()];
        if let Some(st) = live.and_then(|l| l.state(a, b)) {
            attrs.push(format!("color={}", dot_quote(st.colour())));
            attrs.push(format!("fontcolor={}", dot_quote(st.colour())));
            attrs.push(format!("label={}", dot_quote(st.word())));
        }
        let _ = writeln!(
            out,
            "  {} -- {} [{}];",
            dot_quote(&sa.name),
            dot_quote(&sb.name),
            attrs.join(", ")
        );
    }
    out.push_str("}\n");
    out
}

/// Text for inside a Mermaid `"..."` label: the characters that would end
/// it or be read as markup, as entity codes.
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A Mermaid label of several lines, each escaped, joined with `<br/>`.
fn mermaid_label(lines: &[String]) -> String {
    let escaped: Vec<String> = lines.iter().map(|l| mermaid_escape(l)).collect();
    format!("\"{}\"", escaped.join("<br/>"))
}

/// The network as a Mermaid flowchart (a ```` ```mermaid ```` block in a
/// README). Node IDs are `s<i>` for site i and `s<i>n<k>` for its k-th
/// subnet, so no site name has to be a Mermaid identifier.
pub fn mermaid<D>(net: &Network<D>, live: Option<&Live>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "%% {}: drawn by `netman graph` from the network file",
        mermaid_escape(&title(net, live))
    );
    out.push_str("flowchart LR\n");
    // Edges are numbered in the order they are written, for linkStyle.
    let mut edges = 0usize;
    for (i, site) in net.sites.iter().enumerate() {
        let label = mermaid_label(&site_lines(site));
        let node = if net.hubs.contains(&i) {
            format!("s{i}{{{{{label}}}}}")
        } else {
            format!("s{i}({label})")
        };
        let class = if live.is_some_and(|l| l.local == i) {
            ":::local"
        } else {
            ""
        };
        let _ = writeln!(out, "  {node}{class}");
        for (k, subnet) in site.subnets.iter().enumerate() {
            let _ = writeln!(
                out,
                "  s{i}n{k}[{}]:::subnet",
                mermaid_label(&[subnet.to_string()])
            );
            let _ = writeln!(out, "  s{i} --- s{i}n{k}");
            edges += 1;
        }
    }
    let mut styles = Vec::new();
    for &(a, b) in &net.links {
        match live.and_then(|l| l.state(a, b)) {
            Some(st) => {
                let _ = writeln!(
                    out,
                    "  s{a} ===|{}| s{b}",
                    mermaid_label(&[st.word().to_owned()])
                );
                styles.push(format!(
                    "  linkStyle {edges} stroke:{},color:{}",
                    st.colour(),
                    st.colour()
                ));
            }
            None => {
                let _ = writeln!(out, "  s{a} === s{b}");
            }
        }
        edges += 1;
    }
    out.push_str("  classDef subnet fill:#f7f7f7,stroke:#999999,font-size:12px\n");
    if live.is_some() {
        out.push_str("  classDef local fill:#cce5ff,stroke:#004085,stroke-width:3px\n");
    }
    for s in styles {
        out.push_str(&s);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KEYS: [&str; 3] = [
        "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
        "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
        "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=",
    ];

    /// Three sites a, b, c-1 (a and b with endpoints), connected by
    /// `topology`.
    fn net(topology: &str) -> Network {
        let text = format!(
            "network: t\ndefaults:\n  listen_port: 51820\n  private_key_file: k.key\nsites:\n  - name: a\n    public_key: \"{}\"\n    addresses: [10.0.0.1/24]\n    subnets: [192.168.1.0/24]\n    endpoint: 192.0.2.1:51820\n  - name: b\n    public_key: \"{}\"\n    addresses: [10.0.0.2/24]\n    endpoint: 192.0.2.2:51820\n  - name: c-1\n    public_key: \"{}\"\n    addresses: [10.0.0.3/24]\ntopology:\n{topology}",
            KEYS[0], KEYS[1], KEYS[2]
        );
        super::super::parse(&text, Path::new("n.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(i: usize) -> PublicKey {
        PublicKey::from_base64(KEYS[i]).expect("key")
    }

    #[test]
    fn tunnel_state_boundaries() {
        assert_eq!(TunnelState::of(None, 1000), TunnelState::Never);
        assert_eq!(TunnelState::of(Some(1000), 1000), TunnelState::Up);
        assert_eq!(TunnelState::of(Some(820), 1000), TunnelState::Up);
        assert_eq!(TunnelState::of(Some(819), 1000), TunnelState::Stale);
        assert_eq!(TunnelState::of(Some(0), 1000), TunnelState::Stale);
        // A handshake "in the future" (the clock stepped back) is recent.
        assert_eq!(TunnelState::of(Some(2000), 1000), TunnelState::Up);
    }

    #[test]
    fn live_colours_each_tunnel_of_the_local_site_by_its_peer_key() {
        let n = net("  links: [[a, b], [a, c-1], [b, c-1]]\n");
        assert_eq!(n.links, vec![(0, 1), (0, 2), (1, 2)]);
        let now = 10_000;
        // From b: a handshook 10 s ago, c-1 is unknown to the engine, and
        // an extra peer the network does not have is ignored.
        let other = PublicKey::from_bytes([7; 32]);
        let live =
            Live::from_handshakes(&n, 1, &[(other, Some(now)), (key(0), Some(now - 10))], now);
        assert_eq!(
            live,
            Live {
                local: 1,
                tunnels: vec![(0, TunnelState::Up), (2, TunnelState::Unknown)]
            }
        );
        // From a: b stale, c-1 never.
        let live = Live::from_handshakes(
            &n,
            0,
            &[(key(2), None), (key(1), Some(now - UP_WITHIN_SECS - 1))],
            now,
        );
        assert_eq!(
            live.tunnels,
            vec![(1, TunnelState::Stale), (2, TunnelState::Never)]
        );
        let dot = dot(&n, Some(&live));
        assert!(
            dot.contains("  \"a\" -- \"b\" [penwidth=2, color=\"#ff8c00\", fontcolor=\"#ff8c00\", label=\"stale\"];\n"),
            "{dot}"
        );
        assert!(
            dot.contains("  \"a\" -- \"c-1\" [penwidth=2, color=\"#d62728\", fontcolor=\"#d62728\", label=\"no handshake\"];\n"),
            "{dot}"
        );
        // The tunnel between two other sites keeps the plain style.
        assert!(dot.contains("  \"b\" -- \"c-1\" [penwidth=2];\n"), "{dot}");
        assert!(dot.contains("fillcolor=\"#cce5ff\", label=\"a\\n"), "{dot}");
        assert!(dot.contains("label=\"network t, live from a\""), "{dot}");
        let mmd = mermaid(&n, Some(&live));
        // One subnet edge (0), then the tunnels (1, 2, 3).
        assert!(mmd.contains("  s0 ===|\"stale\"| s1\n"), "{mmd}");
        assert!(mmd.contains("  s0 ===|\"no handshake\"| s2\n"), "{mmd}");
        assert!(mmd.contains("  s1 === s2\n"), "{mmd}");
        assert!(
            mmd.contains("  linkStyle 1 stroke:#ff8c00,color:#ff8c00\n  linkStyle 2 stroke:#d62728,color:#d62728\n"),
            "{mmd}"
        );
        assert!(!mmd.contains("linkStyle 3"), "{mmd}");
        assert!(
            mmd.contains("(\"a<br/>10.0.0.1/24<br/>192.0.2.1:51820\"):::local\n"),
            "{mmd}"
        );
    }

    #[test]
    fn without_live_nothing_is_coloured_and_hubs_stand_out() {
        let n = net("  hub_and_spoke:\n    hubs: [b]\n");
        assert_eq!(n.hubs, vec![1]);
        let dot = dot(&n, None);
        assert!(!dot.contains("color"), "{dot}");
        assert!(
            dot.contains("  \"b\" [shape=doubleoctagon, style=\"bold\", label=\"b\\n10.0.0.2/24\\n192.0.2.2:51820\"];\n"),
            "{dot}"
        );
        assert!(dot.contains("  \"a\" -- \"a/192.168.1.0/24\";\n"), "{dot}");
        let mmd = mermaid(&n, None);
        assert!(
            mmd.contains("  s1{{\"b<br/>10.0.0.2/24<br/>192.0.2.2:51820\"}}\n"),
            "{mmd}"
        );
        assert!(
            !mmd.contains("linkStyle") && !mmd.contains("local"),
            "{mmd}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(dot_quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(mermaid_escape("a\"b#c<d>"), "a#quot;b#35;c#lt;d#gt;");
    }
}
