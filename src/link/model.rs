//! The one schema shared by the desired state (from a manifest), the observed
//! state (read from the kernel) and the recorded ownership (from the state
//! file). The planner compares them; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, RouteTable};

/// Route protocol number stamped on every route netman creates (`ip route`
/// shows it as `proto 233`). Routes with any other protocol are foreign.
pub const ROUTE_PROTOCOL: u8 = 233;

/// Kernel default metric of an IPv6 route added without one.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// Table and fwmark of a full tunnel when neither the manifest nor a
/// listen port gives one (wg-quick's choice too).
pub const AUTO_TABLE: u32 = 51820;

/// Priority of netman's `lookup main suppress_prefixlength 0` rule (the
/// one `ip rule add` would give it after wg-quick's pair: just before the
/// kernel's `lookup main` at 32766).
pub const RULE_PRIORITY_SUPPRESS: u32 = 32764;

/// Priority of netman's `not fwmark M lookup T` rule.
pub const RULE_PRIORITY_FWMARK: u32 = 32765;

fn main_table() -> u32 {
    MAIN_TABLE
}

fn is_main_table(t: &u32) -> bool {
    *t == MAIN_TABLE
}

/// Whether a prefix makes the tunnel a full tunnel: a default route (`/0`)
/// or half of the address space (`/1`, the split form `0.0.0.0/1` +
/// `128.0.0.0/1`). Both cover the peers' endpoints, so the tunnel's own
/// datagrams must be kept out of it.
pub fn is_full_tunnel(p: &IpNet) -> bool {
    p.prefix_len() <= 1
}

/// Where a deployment's routes go and which policy rules it needs: the
/// effective `interface.table` and `interface.fwmark`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The table of ordinary routes (`None`: no routes, `table: off`).
    pub table: Option<u32>,
    /// The table of full-tunnel routes ([`is_full_tunnel`]).
    pub full_tunnel_table: Option<u32>,
    /// The mark on the engine's UDP sockets.
    pub fwmark: Option<u32>,
    /// The policy rules (per address family that has a full-tunnel route
    /// in a table of its own).
    pub rules: BTreeSet<RuleSpec>,
    /// Why table and fwmark were chosen automatically (shown by `diff`).
    pub note: Option<String>,
}

impl Routing {
    /// The effective routing of a manifest. With `interface.table` unset
    /// and a full-tunnel prefix in some peer's `allowed_ips` (or `routes`),
    /// like wg-quick: those prefixes go into a table of their own, the
    /// engine's sockets carry a mark, and per family `not fwmark M lookup
    /// T` and `lookup main suppress_prefixlength 0` keep the tunnel's own
    /// datagrams (marked) on the host's routes. T = M = `fwmark` if set,
    /// else the listen port (unique per network namespace, so two
    /// deployments do not share a table), else 51820.
    pub fn of(m: &Manifest) -> Routing {
        let iface = &m.interface;
        let full: Vec<(String, IpNet)> = m
            .peers
            .iter()
            .flat_map(|p| {
                p.allowed_ips
                    .iter()
                    .map(move |a| (format!("peer {}", p.name), a.trunc()))
            })
            .chain(
                m.routes
                    .iter()
                    .map(|r| ("routes".to_string(), r.to.trunc())),
            )
            .filter(|(_, p)| is_full_tunnel(p))
            .collect();
        let mut note = None;
        let (table, full_tunnel_table) = match iface.table {
            Some(RouteTable::Off) => (None, None),
            Some(RouteTable::Main) => (Some(MAIN_TABLE), Some(MAIN_TABLE)),
            Some(RouteTable::Id(t)) => (Some(t), Some(t)),
            None if full.is_empty() => (Some(MAIN_TABLE), Some(MAIN_TABLE)),
            None => {
                let (t, why) = match (iface.fwmark, iface.listen_port) {
                    (Some(f), _) if !(253..=255).contains(&f) => (f, "interface.fwmark"),
                    (_, Some(p)) if !(253..=255).contains(&p) => {
                        (u32::from(p), "interface.listen_port")
                    }
                    _ => (AUTO_TABLE, "the default"),
                };
                let prefixes: Vec<String> =
                    full.iter().map(|(who, p)| format!("{p} ({who})")).collect();
                let mark = iface.fwmark.unwrap_or(t);
                note = Some(format!(
                    "interface.table {t} and interface.fwmark {mark} chosen automatically ({why}) for the full-tunnel route{} {}: those routes go into table {t}, the engine's UDP sockets carry fwmark {mark}, and policy rules send everything else that is unmarked there, so the tunnel's own datagrams keep the host's routes; set interface.table to choose otherwise",
                    if prefixes.len() == 1 { "" } else { "s" },
                    prefixes.join(", ")
                ));
                (Some(MAIN_TABLE), Some(t))
            }
        };
        let policy_table = full_tunnel_table.filter(|t| *t != MAIN_TABLE);
        let fwmark = match (iface.fwmark, policy_table) {
            (Some(f), _) => Some(f),
            (None, Some(t)) if !full.is_empty() => Some(t),
            _ => None,
        };
        let mut rules = BTreeSet::new();
        if let (Some(t), Some(mark)) = (policy_table, fwmark) {
            for (_, p) in &full {
                let v6 = matches!(p, IpNet::V6(_));
                rules.insert(RuleSpec::suppress_main(v6));
                rules.insert(RuleSpec::not_fwmark(v6, mark, t));
            }
        }
        Routing {
            table,
            full_tunnel_table,
            fwmark,
            rules,
            note,
        }
    }

    /// The table of a route to `dst`, if it gets one.
    pub fn table_of(&self, dst: &IpNet) -> Option<u32> {
        if is_full_tunnel(dst) {
            self.full_tunnel_table
        } else {
            self.table
        }
    }
}

/// A policy routing rule netman owns (`ip rule` shows `proto 233`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleSpec {
    /// IPv6 (`ip -6 rule`) rather than IPv4.
    pub v6: bool,
    pub priority: u32,
    /// `fwmark M` (with `not`: every packet without that mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    /// `lookup T`.
    pub table: u32,
    /// `suppress_prefixlength N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefixlength: Option<u32>,
}

impl RuleSpec {
    /// `lookup main suppress_prefixlength 0`: the host's routes, except
    /// its default route.
    pub fn suppress_main(v6: bool) -> RuleSpec {
        RuleSpec {
            v6,
            priority: RULE_PRIORITY_SUPPRESS,
            fwmark: None,
            invert: false,
            table: MAIN_TABLE,
            suppress_prefixlength: Some(0),
        }
    }

    /// `not fwmark M lookup T`: everything but the engine's own datagrams.
    pub fn not_fwmark(v6: bool, mark: u32, table: u32) -> RuleSpec {
        RuleSpec {
            v6,
            priority: RULE_PRIORITY_FWMARK,
            fwmark: Some(mark),
            invert: true,
            table,
            suppress_prefixlength: None,
        }
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:",
            if self.v6 { "ipv6" } else { "ipv4" },
            self.priority
        )?;
        if self.invert {
            write!(f, " not")?;
        }
        if let Some(m) = self.fwmark {
            write!(f, " fwmark {m}")?;
        }
        match self.table {
            MAIN_TABLE => write!(f, " lookup main")?,
            t => write!(f, " lookup {t}")?,
        }
        if let Some(n) = self.suppress_prefixlength {
            write!(f, " suppress_prefixlength {n}")?;
        }
        Ok(())
    }
}

/// The alias netman puts on a link it created for deployment `name`.
pub fn link_alias(deployment: &str) -> String {
    format!("netman:{deployment}")
}

/// A route through a netman link, in the main table or the deployment's
/// own table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    /// Explicit metric (the kernel's `priority`); IPv6 routes without a
    /// metric in the manifest get the kernel default 1024, IPv4 ones 0.
    pub metric: u32,
    /// The routing table (main unless `interface.table` or a full tunnel
    /// says otherwise).
    #[serde(default = "main_table", skip_serializing_if = "is_main_table")]
    pub table: u32,
}

impl RouteSpec {
    /// A route to `dst` with the manifest's optional metric, normalised to
    /// what the kernel reports back.
    pub fn new(dst: IpNet, metric: Option<u32>) -> Self {
        let metric = metric.unwrap_or(match dst {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => IPV6_DEFAULT_METRIC,
        });
        RouteSpec {
            dst,
            metric,
            table: MAIN_TABLE,
        }
    }

    /// The same route in `table`.
    pub fn in_table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// The metric, unless it is the kernel's default for the family.
    pub fn explicit_metric(&self) -> Option<u32> {
        let default = match self.dst {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => IPV6_DEFAULT_METRIC,
        };
        (self.metric != default).then_some(self.metric)
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(m) = self.explicit_metric() {
            write!(f, " metric {m}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

fn default_txqueuelen() -> u32 {
    crate::manifest::DEFAULT_TXQUEUELEN
}

/// What one link should look like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub mtu: u32,
    /// The transmit queue length (packets).
    #[serde(default = "default_txqueuelen")]
    pub txqueuelen: u32,
    pub up: bool,
    pub addresses: BTreeSet<IpNet>,
    pub routes: BTreeSet<RouteSpec>,
}

/// The desired state of one deployment: its links by name.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Desired {
    pub links: BTreeMap<String, LinkSpec>,
    /// Policy rules (full tunnel), see [`Routing`].
    #[serde(default)]
    pub rules: BTreeSet<RuleSpec>,
}

impl Desired {
    /// Derive the kernel objects a manifest asks for. Every `allowed_ips`
    /// prefix and every `routes[].to` becomes a route via the interface,
    /// deduplicated; a prefix inside one of the interface's own connected
    /// prefixes gets no route of its own. An explicit `routes[]` entry wins
    /// over an `allowed_ips` prefix (it may carry a metric).
    pub fn from_manifest(m: &Manifest) -> Desired {
        let iface = &m.interface;
        let routing = Routing::of(m);
        let addresses: BTreeSet<IpNet> = iface.addresses.iter().copied().collect();
        let connected: Vec<IpNet> = addresses.iter().map(IpNet::trunc).collect();
        let covered = |p: &IpNet| connected.iter().any(|c| c.contains(p));

        let mut by_prefix: BTreeMap<IpNet, RouteSpec> = BTreeMap::new();
        for peer in &m.peers {
            for p in &peer.allowed_ips {
                let p = p.trunc();
                if !covered(&p)
                    && let Some(t) = routing.table_of(&p)
                {
                    by_prefix
                        .entry(p)
                        .or_insert_with(|| RouteSpec::new(p, None).in_table(t));
                }
            }
        }
        for r in &m.routes {
            let p = r.to.trunc();
            if !covered(&p)
                && let Some(t) = routing.table_of(&p)
            {
                by_prefix.insert(p, RouteSpec::new(p, r.metric).in_table(t));
            }
        }
        let link = LinkSpec {
            mtu: iface.mtu,
            txqueuelen: iface.txqueuelen,
            up: true,
            addresses,
            routes: by_prefix.into_values().collect(),
        };
        let mut links = BTreeMap::new();
        links.insert(iface.name.clone(), link);
        Desired {
            links,
            rules: routing.rules,
        }
    }
}

/// A link as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLink {
    pub index: u32,
    /// `IFLA_INFO_KIND`, e.g. `tun`.
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub mtu: u32,
    /// `IFLA_TXQLEN`.
    #[serde(default = "default_txqueuelen")]
    pub txqueuelen: u32,
    pub up: bool,
    /// Every address on the link, owned or not.
    pub addresses: BTreeSet<IpNet>,
    /// Routes via this link (in any table but `local`) carrying netman's
    /// protocol.
    pub routes: BTreeSet<RouteSpec>,
    /// Other unicast routes via this link (not netman's).
    #[serde(default)]
    pub foreign_routes: BTreeSet<RouteSpec>,
}

/// The observed state of the links a deployment cares about (desired or
/// owned); a name missing from the map does not exist in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    pub links: BTreeMap<String, ObservedLink>,
    /// Every policy rule with netman's protocol in the namespace (any
    /// deployment's).
    #[serde(default)]
    pub rules: BTreeSet<RuleSpec>,
}

/// What netman created and therefore may change or remove: links by name,
/// with the addresses netman added to each, and policy rules. Routes need
/// no record: they carry [`ROUTE_PROTOCOL`] and go with their link. Rules
/// carry it too, but are not tied to a link: the record says which are
/// this deployment's.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Owned {
    pub links: BTreeMap<String, BTreeSet<IpNet>>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub rules: BTreeSet<RuleSpec>,
}

impl Owned {
    /// Everything in `self` or in `other`.
    pub fn union(&self, other: &Owned) -> Owned {
        let mut out = self.clone();
        for (name, addrs) in &other.links {
            out.links
                .entry(name.clone())
                .or_default()
                .extend(addrs.iter().copied());
        }
        out.rules.extend(other.rules.iter().cloned());
        out
    }

    /// The ownership that results from reaching `desired`.
    pub fn from_desired(desired: &Desired) -> Owned {
        Owned {
            links: desired
                .links
                .iter()
                .map(|(n, l)| (n.clone(), l.addresses.clone()))
                .collect(),
            rules: desired.rules.clone(),
        }
    }

    /// Ownership restricted to what exists in `observed` (after a revert or
    /// a `down`, forget what is gone).
    pub fn retain_existing(&self, observed: &Observed, deployment: &str) -> Owned {
        let mut out = Owned::default();
        for (name, addrs) in &self.links {
            if let Some(link) = observed.links.get(name)
                && is_ours(link, deployment, true)
            {
                let kept = addrs
                    .iter()
                    .filter(|a| link.addresses.contains(a))
                    .copied()
                    .collect();
                out.links.insert(name.clone(), kept);
            }
        }
        out.rules = self.rules.intersection(&observed.rules).cloned().collect();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.rules.is_empty()
    }
}

/// Whether an observed link belongs to `deployment`: it carries the
/// deployment's alias, or it is a TUN device without any alias that the
/// state file records as being created (an apply interrupted between
/// creating the device and naming it).
pub fn is_ours(link: &ObservedLink, deployment: &str, recorded: bool) -> bool {
    match &link.alias {
        Some(a) => *a == link_alias(deployment),
        None => recorded && link.kind.as_deref() == Some("tun"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(iface_extra: &str, allowed: &str) -> Manifest {
        let text = format!(
            "name: site-a\ninterface:\n  name: nm0\n  addresses: [10.10.0.2/24]\n  private_key_file: a.key\n{iface_extra}peers:\n  - name: hub\n    public_key: \"etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=\"\n    endpoint: 192.0.2.1:51820\n    allowed_ips: [{allowed}]\n"
        );
        crate::manifest::parse(&text, std::path::Path::new("/etc/netman/site-a.yaml"))
            .expect("valid manifest")
    }

    fn routes(m: &Manifest) -> Vec<String> {
        let d = Desired::from_manifest(m);
        d.links["nm0"]
            .routes
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn rules(r: &Routing) -> Vec<String> {
        r.rules.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn routing_choice_table() {
        // (interface lines, allowed_ips, table, full-tunnel table, fwmark, rules, routes)
        type Row = (
            &'static str,
            &'static str,
            Option<u32>,
            Option<u32>,
            Option<u32>,
            &'static [&'static str],
            &'static [&'static str],
        );
        let rows: &[Row] = &[
            // No full tunnel: everything as before.
            (
                "",
                "172.18.0.0/16",
                Some(254),
                Some(254),
                None,
                &[],
                &["172.18.0.0/16"],
            ),
            // A default route: automatic table and mark (51820 without a
            // listen port), both rules; other prefixes stay in main.
            (
                "",
                "0.0.0.0/0, 172.18.0.0/16",
                Some(254),
                Some(51820),
                Some(51820),
                &[
                    "ipv4 32764: lookup main suppress_prefixlength 0",
                    "ipv4 32765: not fwmark 51820 lookup 51820",
                ],
                &["0.0.0.0/0 table 51820", "172.18.0.0/16"],
            ),
            // The listen port names the table; the split form counts too.
            (
                "  listen_port: 41000\n",
                "0.0.0.0/1, 128.0.0.0/1",
                Some(254),
                Some(41000),
                Some(41000),
                &[
                    "ipv4 32764: lookup main suppress_prefixlength 0",
                    "ipv4 32765: not fwmark 41000 lookup 41000",
                ],
                &["0.0.0.0/1 table 41000", "128.0.0.0/1 table 41000"],
            ),
            // An explicit fwmark names the table; v6 gets v6 rules.
            (
                "  listen_port: 41000\n  fwmark: 77\n",
                "::/0",
                Some(254),
                Some(77),
                Some(77),
                &[
                    "ipv6 32764: lookup main suppress_prefixlength 0",
                    "ipv6 32765: not fwmark 77 lookup 77",
                ],
                &["::/0 table 77"],
            ),
            // An explicit table takes every route, with the rules.
            (
                "  table: 1000\n",
                "0.0.0.0/0, 172.18.0.0/16",
                Some(1000),
                Some(1000),
                Some(1000),
                &[
                    "ipv4 32764: lookup main suppress_prefixlength 0",
                    "ipv4 32765: not fwmark 1000 lookup 1000",
                ],
                &["0.0.0.0/0 table 1000", "172.18.0.0/16 table 1000"],
            ),
            // `main`: the operator's choice, no rules (a fwmark still marks).
            (
                "  table: main\n  fwmark: 5\n",
                "0.0.0.0/0",
                Some(254),
                Some(254),
                Some(5),
                &[],
                &["0.0.0.0/0"],
            ),
            // `off`: no routes at all, no rules.
            ("  table: off\n", "0.0.0.0/0", None, None, None, &[], &[]),
        ];
        for (i, (extra, allowed, table, ft, mark, want_rules, want_routes)) in
            rows.iter().enumerate()
        {
            let m = manifest(extra, allowed);
            let r = Routing::of(&m);
            assert_eq!(r.table, *table, "row {i}");
            assert_eq!(r.full_tunnel_table, *ft, "row {i}");
            assert_eq!(r.fwmark, *mark, "row {i}");
            assert_eq!(rules(&r), *want_rules, "row {i}");
            assert_eq!(routes(&m), *want_routes, "row {i}");
            let automatic = m.interface.table.is_none() && r.full_tunnel_table != r.table;
            assert_eq!(r.note.is_some(), automatic, "row {i}: {:?}", r.note);
        }
        let note = Routing::of(&manifest("", "0.0.0.0/0")).note.expect("note");
        assert!(
            note.starts_with(
                "interface.table 51820 and interface.fwmark 51820 chosen automatically (the default) for the full-tunnel route 0.0.0.0/0 (peer hub)"
            ),
            "{note}"
        );
    }
}
