//! The one schema shared by the desired state (from a manifest), the observed
//! state (read from the kernel) and the recorded ownership (from the state
//! file). The planner compares them; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// Route protocol number stamped on every route netman creates (`ip route`
/// shows it as `proto 233`). Routes with any other protocol are foreign.
pub const ROUTE_PROTOCOL: u8 = 233;

/// Kernel default metric of an IPv6 route added without one.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The alias netman puts on a link it created for deployment `name`.
pub fn link_alias(deployment: &str) -> String {
    format!("netman:{deployment}")
}

/// A route through a netman link, in the main table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    /// Explicit metric (the kernel's `priority`); IPv6 routes without a
    /// metric in the manifest get the kernel default 1024, IPv4 ones 0.
    pub metric: u32,
}

impl RouteSpec {
    /// A route to `dst` with the manifest's optional metric, normalised to
    /// what the kernel reports back.
    pub fn new(dst: IpNet, metric: Option<u32>) -> Self {
        let metric = metric.unwrap_or(match dst {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => IPV6_DEFAULT_METRIC,
        });
        RouteSpec { dst, metric }
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
        Ok(())
    }
}

/// What one link should look like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub mtu: u32,
    pub up: bool,
    pub addresses: BTreeSet<IpNet>,
    pub routes: BTreeSet<RouteSpec>,
}

/// The desired state of one deployment: its links by name.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Desired {
    pub links: BTreeMap<String, LinkSpec>,
}

impl Desired {
    /// Derive the kernel objects a manifest asks for. Every `allowed_ips`
    /// prefix and every `routes[].to` becomes a route via the interface,
    /// deduplicated; a prefix inside one of the interface's own connected
    /// prefixes gets no route of its own. An explicit `routes[]` entry wins
    /// over an `allowed_ips` prefix (it may carry a metric).
    pub fn from_manifest(m: &Manifest) -> Desired {
        let iface = &m.interface;
        let addresses: BTreeSet<IpNet> = iface.addresses.iter().copied().collect();
        let connected: Vec<IpNet> = addresses.iter().map(IpNet::trunc).collect();
        let covered = |p: &IpNet| connected.iter().any(|c| c.contains(p));

        let mut by_prefix: BTreeMap<IpNet, RouteSpec> = BTreeMap::new();
        for peer in &m.peers {
            for p in &peer.allowed_ips {
                let p = p.trunc();
                if !covered(&p) {
                    by_prefix
                        .entry(p)
                        .or_insert_with(|| RouteSpec::new(p, None));
                }
            }
        }
        for r in &m.routes {
            let p = r.to.trunc();
            if !covered(&p) {
                by_prefix.insert(p, RouteSpec::new(p, r.metric));
            }
        }
        let link = LinkSpec {
            mtu: iface.mtu,
            up: true,
            addresses,
            routes: by_prefix.into_values().collect(),
        };
        let mut links = BTreeMap::new();
        links.insert(iface.name.clone(), link);
        Desired { links }
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
    pub up: bool,
    /// Every address on the link, owned or not.
    pub addresses: BTreeSet<IpNet>,
    /// Routes via this link in the main table carrying netman's protocol.
    pub routes: BTreeSet<RouteSpec>,
    /// Other unicast routes via this link in the main table (not netman's).
    #[serde(default)]
    pub foreign_routes: BTreeSet<RouteSpec>,
}

/// The observed state of the links a deployment cares about (desired or
/// owned); a name missing from the map does not exist in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    pub links: BTreeMap<String, ObservedLink>,
}

/// What netman created and therefore may change or remove: links by name,
/// with the addresses netman added to each. Routes need no record: they
/// carry [`ROUTE_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Owned {
    pub links: BTreeMap<String, BTreeSet<IpNet>>,
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
        out
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
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
