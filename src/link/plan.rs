//! The planner: a pure function from (desired, observed, owned) to an
//! ordered list of actions. No I/O, no clock, no randomness.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

use crate::error::ErrorKind;

use crate::link::model::{
    Desired, LinkSpec, Observed, ObservedLink, Owned, RouteSpec, RuleSpec, is_ours,
};

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a persistent multi-queue TUN device, named and aliased, with
    /// its MTU set; it stays down until [`Action::SetUp`].
    CreateLink {
        link: String,
        mtu: u32,
        txqueuelen: u32,
    },
    /// Give an existing (recorded, unnamed) device netman's alias.
    SetAlias {
        link: String,
    },
    SetMtu {
        link: String,
        from: u32,
        to: u32,
    },
    /// The transmit queue length (see `interface.txqueuelen`).
    SetTxQueueLen {
        link: String,
        from: u32,
        to: u32,
    },
    AddAddress {
        link: String,
        address: IpNet,
    },
    SetUp {
        link: String,
    },
    AddRoute {
        link: String,
        route: RouteSpec,
    },
    DelRoute {
        link: String,
        route: RouteSpec,
    },
    DelAddress {
        link: String,
        address: IpNet,
    },
    SetDown {
        link: String,
    },
    /// Delete the device (the kernel removes its addresses and routes).
    DeleteLink {
        link: String,
    },
    /// Add a policy rule (with netman's protocol), after the routes of the
    /// table it points to.
    AddRule {
        rule: RuleSpec,
    },
    /// Delete one of this deployment's policy rules.
    DelRule {
        rule: RuleSpec,
    },
}

impl Action {
    /// The `+`/`-`/`~` sign of the action in text output.
    pub fn sign(&self) -> char {
        match self {
            Action::CreateLink { .. }
            | Action::AddAddress { .. }
            | Action::AddRoute { .. }
            | Action::AddRule { .. } => '+',
            Action::DelAddress { .. }
            | Action::DelRoute { .. }
            | Action::DeleteLink { .. }
            | Action::DelRule { .. } => '-',
            Action::SetAlias { .. }
            | Action::SetMtu { .. }
            | Action::SetTxQueueLen { .. }
            | Action::SetUp { .. }
            | Action::SetDown { .. } => '~',
        }
    }

    /// The link the action is about (none for a policy rule).
    pub fn link(&self) -> Option<&str> {
        match self {
            Action::AddRule { .. } | Action::DelRule { .. } => None,
            Action::CreateLink { link, .. }
            | Action::SetAlias { link }
            | Action::SetMtu { link, .. }
            | Action::SetTxQueueLen { link, .. }
            | Action::AddAddress { link, .. }
            | Action::SetUp { link }
            | Action::AddRoute { link, .. }
            | Action::DelRoute { link, .. }
            | Action::DelAddress { link, .. }
            | Action::SetDown { link }
            | Action::DeleteLink { link } => Some(link),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sign();
        match self {
            Action::CreateLink { link, mtu, .. } => write!(f, "{s} link {link} (tun, mtu {mtu})"),
            Action::SetAlias { link } => write!(f, "{s} link {link} alias (adopt)"),
            Action::SetMtu { link, from, to } => write!(f, "{s} link {link} mtu {from} -> {to}"),
            Action::SetTxQueueLen { link, from, to } => {
                write!(f, "{s} link {link} txqueuelen {from} -> {to}")
            }
            Action::SetUp { link } => write!(f, "{s} link {link} up"),
            Action::SetDown { link } => write!(f, "{s} link {link} down"),
            Action::DeleteLink { link } => write!(f, "{s} link {link}"),
            Action::AddAddress { link, address } | Action::DelAddress { link, address } => {
                write!(f, "{s} address {address} dev {link}")
            }
            Action::AddRoute { link, route } | Action::DelRoute { link, route } => {
                write!(f, "{s} route {} dev {link}", route.dst)?;
                if let Some(m) = route.explicit_metric() {
                    write!(f, " metric {m}")?;
                }
                if route.table != crate::link::model::MAIN_TABLE {
                    write!(f, " table {}", route.table)?;
                }
                Ok(())
            }
            Action::AddRule { rule } | Action::DelRule { rule } => {
                write!(f, "{s} policy rule {rule}")
            }
        }
    }
}

/// An ordered list of actions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            writeln!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Why no plan can reach the desired state without touching what netman
/// does not own.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "link {link}: exists and is not managed by this deployment ({found}); netman never modifies a link it did not create"
    )]
    ForeignLink { link: String, found: String },
    #[error(
        "route {route} dev {link}: a route to this prefix with the same metric exists and is not netman's; remove it or give netman's route another metric"
    )]
    ForeignRoute { link: String, route: RouteSpec },
    #[error(
        "policy rule {rule}: exists with netman's protocol but is not this deployment's: another deployment routes a full tunnel of this address family (two cannot: each one's default route would catch the other's own datagrams), or one left the rule behind; take that deployment down, or delete the rule (`ip{} rule del priority {}`) if nothing uses it",
        if rule.v6 { " -6" } else { "" },
        rule.priority
    )]
    SharedRule { rule: RuleSpec },
}

/// All the errors found while planning (reported at once).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PlanErrors(pub Vec<PlanError>);

impl PlanErrors {
    /// A conflict with what netman does not own stays until that changes.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

/// Compute the ordered actions that take `observed` to `desired` for
/// deployment `deployment`, changing or removing only what `owned` records
/// (and routes with netman's protocol on netman's links).
pub fn plan(
    deployment: &str,
    desired: &Desired,
    observed: &Observed,
    owned: &Owned,
) -> Result<Plan, PlanErrors> {
    let mut errors = Vec::new();
    let mut create = Vec::new();
    let mut alias = Vec::new();
    let mut mtu = Vec::new();
    let mut add_addr = Vec::new();
    let mut up = Vec::new();
    let mut add_route = Vec::new();
    let mut del_route = Vec::new();
    let mut del_addr = Vec::new();
    let mut down = Vec::new();
    let mut delete = Vec::new();
    let mut readd = Vec::new();
    let mut add_rule = Vec::new();
    let mut del_rule = Vec::new();

    // Rules: this deployment's are the recorded ones; another deployment's
    // rules (also with netman's protocol) are left alone, and one this
    // deployment needs too is refused: sharing it would make the other's
    // `down` pull it from under this one.
    for r in desired.rules.intersection(&observed.rules) {
        if !owned.rules.contains(r) {
            errors.push(PlanError::SharedRule { rule: r.clone() });
        }
    }
    for r in desired.rules.difference(&observed.rules) {
        add_rule.push(Action::AddRule { rule: r.clone() });
    }
    for r in owned.rules.intersection(&observed.rules) {
        if !desired.rules.contains(r) {
            del_rule.push(Action::DelRule { rule: r.clone() });
        }
    }

    for (name, spec) in &desired.links {
        let recorded = owned.links.get(name);
        match observed.links.get(name) {
            None => {
                create.push(Action::CreateLink {
                    link: name.clone(),
                    mtu: spec.mtu,
                    txqueuelen: spec.txqueuelen,
                });
                for a in &spec.addresses {
                    add_addr.push(Action::AddAddress {
                        link: name.clone(),
                        address: *a,
                    });
                }
                if spec.up {
                    up.push(Action::SetUp { link: name.clone() });
                }
                for r in &spec.routes {
                    add_route.push(Action::AddRoute {
                        link: name.clone(),
                        route: r.clone(),
                    });
                }
            }
            Some(obs) => {
                if !is_ours(obs, deployment, recorded.is_some()) {
                    errors.push(PlanError::ForeignLink {
                        link: name.clone(),
                        found: describe_foreign(obs),
                    });
                    continue;
                }
                if obs.alias.is_none() {
                    alias.push(Action::SetAlias { link: name.clone() });
                }
                diff_link(
                    name,
                    spec,
                    obs,
                    recorded,
                    &mut errors,
                    [
                        &mut mtu,
                        &mut add_addr,
                        &mut up,
                        &mut add_route,
                        &mut del_route,
                        &mut del_addr,
                        &mut down,
                        &mut readd,
                    ],
                );
            }
        }
    }

    // Links netman created that the desired state no longer has.
    for name in owned.links.keys() {
        if desired.links.contains_key(name) {
            continue;
        }
        if let Some(obs) = observed.links.get(name)
            && is_ours(obs, deployment, true)
        {
            delete.push(Action::DeleteLink { link: name.clone() });
        }
    }

    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }
    // Links that go away are deleted first: their routes would otherwise
    // collide (EEXIST) with the same routes on a renamed link. Rules that
    // go away go before that (traffic falls back to the main table rather
    // than to an emptied one); new rules come once their table is filled.
    let actions = [
        del_rule, delete, create, alias, mtu, add_addr, up, add_route, del_route, del_addr, readd,
        add_rule, down,
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(Plan { actions })
}

fn describe_foreign(obs: &ObservedLink) -> String {
    match (&obs.alias, &obs.kind) {
        (Some(a), _) if a.starts_with("netman:") => {
            format!("it belongs to netman deployment {}", &a["netman:".len()..])
        }
        (Some(a), _) => format!("alias {a:?}"),
        (None, Some(k)) => format!("a {k} device without netman's alias"),
        (None, None) => "a device without netman's alias".to_string(),
    }
}

type Buckets<'a> = [&'a mut Vec<Action>; 8];

fn diff_link(
    name: &str,
    spec: &LinkSpec,
    obs: &ObservedLink,
    recorded: Option<&std::collections::BTreeSet<IpNet>>,
    errors: &mut Vec<PlanError>,
    buckets: Buckets<'_>,
) {
    let [
        mtu,
        add_addr,
        up,
        add_route,
        del_route,
        del_addr,
        down,
        readd,
    ] = buckets;
    let link = || name.to_string();
    if obs.mtu != spec.mtu {
        mtu.push(Action::SetMtu {
            link: link(),
            from: obs.mtu,
            to: spec.mtu,
        });
    }
    if obs.txqueuelen != spec.txqueuelen {
        mtu.push(Action::SetTxQueueLen {
            link: link(),
            from: obs.txqueuelen,
            to: spec.txqueuelen,
        });
    }
    for a in spec.addresses.difference(&obs.addresses) {
        add_addr.push(Action::AddAddress {
            link: link(),
            address: *a,
        });
    }
    let mut removed = std::collections::BTreeSet::new();
    if let Some(rec) = recorded {
        for a in rec.intersection(&obs.addresses) {
            if !spec.addresses.contains(a) {
                removed.insert(*a);
                del_addr.push(Action::DelAddress {
                    link: link(),
                    address: *a,
                });
            }
        }
    }
    // Removing a link's last IPv4 address makes the kernel flush every
    // IPv4 route of the link: the routes to keep are added again, after
    // the address is gone.
    let is_v4 = |a: &IpNet| matches!(a, IpNet::V4(_));
    let v4_flushed = !removed.is_empty()
        && removed.iter().any(is_v4)
        && !obs
            .addresses
            .iter()
            .any(|a| is_v4(a) && !removed.contains(a))
        && !spec.addresses.iter().any(is_v4);
    match (spec.up, obs.up) {
        (true, false) => up.push(Action::SetUp { link: link() }),
        (false, true) => down.push(Action::SetDown { link: link() }),
        _ => {}
    }
    for r in spec.routes.iter() {
        let flushed = v4_flushed && is_v4(&r.dst) && obs.routes.contains(r);
        if obs.routes.contains(r) && !flushed {
            continue;
        }
        if obs.foreign_routes.contains(r) {
            errors.push(PlanError::ForeignRoute {
                link: link(),
                route: r.clone(),
            });
            continue;
        }
        // IPv4 routes go in after the last IPv4 address is removed (which
        // flushes them); all others before anything is removed.
        let bucket = if v4_flushed && is_v4(&r.dst) {
            &mut *readd
        } else {
            &mut *add_route
        };
        bucket.push(Action::AddRoute {
            link: link(),
            route: r.clone(),
        });
    }
    for r in obs.routes.difference(&spec.routes) {
        del_route.push(Action::DelRoute {
            link: link(),
            route: r.clone(),
        });
    }
}

/// The desired state that restores `snapshot` (observed before an apply)
/// for everything netman owned then: links owned before keep their MTU,
/// admin state, owned addresses and netman routes; links created since are
/// absent (and so get deleted).
pub fn desired_from_snapshot(
    snapshot: &Observed,
    owned_before: &Owned,
    deployment: &str,
) -> Desired {
    let mut out = Desired::default();
    for (name, addrs) in &owned_before.links {
        let Some(obs) = snapshot.links.get(name) else {
            continue;
        };
        if !is_ours(obs, deployment, true) {
            continue;
        }
        out.links.insert(
            name.clone(),
            LinkSpec {
                mtu: obs.mtu,
                txqueuelen: obs.txqueuelen,
                up: obs.up,
                addresses: addrs.intersection(&obs.addresses).copied().collect(),
                routes: obs.routes.clone(),
            },
        );
    }
    out.rules = owned_before
        .rules
        .intersection(&snapshot.rules)
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn spec() -> LinkSpec {
        LinkSpec {
            mtu: 1420,
            txqueuelen: 64,
            up: true,
            addresses: [net("10.10.0.1/24"), net("fd10::1/64")].into(),
            routes: [
                RouteSpec::new(net("172.18.0.0/16"), None),
                RouteSpec::new(net("192.168.50.0/24"), Some(100)),
            ]
            .into(),
        }
    }

    fn observed_from(spec: &LinkSpec, alias: &str) -> ObservedLink {
        ObservedLink {
            index: 7,
            kind: Some("tun".into()),
            alias: Some(alias.into()),
            mtu: spec.mtu,
            txqueuelen: spec.txqueuelen,
            up: spec.up,
            addresses: spec.addresses.clone(),
            routes: spec.routes.clone(),
            foreign_routes: BTreeSet::new(),
        }
    }

    fn desired() -> Desired {
        Desired {
            links: [("nm0".to_string(), spec())].into(),
            rules: BTreeSet::new(),
        }
    }

    fn text(p: &Plan) -> String {
        p.to_string()
    }

    #[test]
    fn fresh_apply_creates_in_order() {
        let p = plan("a", &desired(), &Observed::default(), &Owned::default()).expect("plan");
        assert_eq!(
            text(&p),
            "+ link nm0 (tun, mtu 1420)\n\
             + address 10.10.0.1/24 dev nm0\n\
             + address fd10::1/64 dev nm0\n\
             ~ link nm0 up\n\
             + route 172.18.0.0/16 dev nm0\n\
             + route 192.168.50.0/24 dev nm0 metric 100\n"
        );
    }

    #[test]
    fn in_sync_is_empty_and_foreign_addresses_are_ignored() {
        let mut obs = observed_from(&spec(), "netman:a");
        obs.addresses.insert(net("fe80::1234/64"));
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        let owned = Owned::from_desired(&desired());
        let p = plan("a", &desired(), &observed, &owned).expect("plan");
        assert!(p.is_empty(), "{p}");
    }

    #[test]
    fn foreign_link_is_refused() {
        let obs = observed_from(&spec(), "somebody");
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        let err = plan("a", &desired(), &observed, &Owned::default()).expect_err("foreign");
        assert!(
            err.to_string().contains("not managed by this deployment"),
            "{err}"
        );
        let obs = observed_from(&spec(), "netman:b");
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        let err =
            plan("a", &desired(), &observed, &Owned::default()).expect_err("other deployment");
        assert!(err.to_string().contains("netman deployment b"), "{err}");
    }

    #[test]
    fn unaliased_tun_is_adopted_only_when_recorded() {
        let mut obs = observed_from(&spec(), "x");
        obs.alias = None;
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        assert!(plan("a", &desired(), &observed, &Owned::default()).is_err());
        let p = plan("a", &desired(), &observed, &Owned::from_desired(&desired())).expect("adopt");
        assert_eq!(text(&p), "~ link nm0 alias (adopt)\n");
    }

    #[test]
    fn drift_is_repaired_and_only_owned_addresses_removed() {
        let mut obs = observed_from(&spec(), "netman:a");
        obs.mtu = 1500;
        obs.routes
            .remove(&RouteSpec::new(net("172.18.0.0/16"), None));
        obs.routes.insert(RouteSpec::new(net("10.99.0.0/16"), None));
        obs.addresses.insert(net("10.20.0.1/24")); // hand-made, not recorded
        obs.addresses.insert(net("10.30.0.1/24")); // recorded, no longer desired
        obs.foreign_routes
            .insert(RouteSpec::new(net("10.77.0.0/16"), None));
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        let mut owned = Owned::from_desired(&desired());
        owned
            .links
            .get_mut("nm0")
            .expect("nm0")
            .insert(net("10.30.0.1/24"));
        let p = plan("a", &desired(), &observed, &owned).expect("plan");
        assert_eq!(
            text(&p),
            "~ link nm0 mtu 1500 -> 1420\n\
             + route 172.18.0.0/16 dev nm0\n\
             - route 10.99.0.0/16 dev nm0\n\
             - address 10.30.0.1/24 dev nm0\n"
        );
    }

    #[test]
    fn conflicting_foreign_route_is_an_error() {
        let mut obs = observed_from(&spec(), "netman:a");
        let r = RouteSpec::new(net("172.18.0.0/16"), None);
        obs.routes.remove(&r);
        obs.foreign_routes.insert(r);
        let observed = Observed {
            links: [("nm0".to_string(), obs)].into(),
            ..Default::default()
        };
        let err = plan("a", &desired(), &observed, &Owned::from_desired(&desired()))
            .expect_err("conflict");
        assert!(
            err.to_string().starts_with("route 172.18.0.0/16 dev nm0:"),
            "{err}"
        );
    }

    #[test]
    fn renamed_interface_creates_new_then_deletes_old() {
        let observed = Observed {
            links: [("old0".to_string(), observed_from(&spec(), "netman:a"))].into(),
            ..Default::default()
        };
        let owned = Owned {
            links: [("old0".to_string(), spec().addresses)].into(),
            ..Default::default()
        };
        let p = plan("a", &desired(), &observed, &owned).expect("plan");
        let t = text(&p);
        assert!(
            t.starts_with("- link old0\n+ link nm0 (tun, mtu 1420)\n"),
            "{t}"
        );
    }

    #[test]
    fn down_deletes_only_our_links() {
        let observed = Observed {
            links: [
                ("nm0".to_string(), observed_from(&spec(), "netman:a")),
                ("nm1".to_string(), observed_from(&spec(), "netman:zzz")),
            ]
            .into(),
            ..Default::default()
        };
        let owned = Owned {
            links: [
                ("nm0".to_string(), BTreeSet::new()),
                ("nm1".to_string(), BTreeSet::new()),
                ("gone".to_string(), BTreeSet::new()),
            ]
            .into(),
            ..Default::default()
        };
        let p = plan("a", &Desired::default(), &observed, &owned).expect("plan");
        assert_eq!(text(&p), "- link nm0\n");
    }

    #[test]
    fn revert_restores_snapshot() {
        // Before: link at mtu 1500 with one address and one route.
        let mut before = observed_from(&spec(), "netman:a");
        before.mtu = 1500;
        before.addresses = [net("10.10.0.1/24")].into();
        before.routes = [RouteSpec::new(net("172.18.0.0/16"), None)].into();
        let snapshot = Observed {
            links: [("nm0".to_string(), before)].into(),
            ..Default::default()
        };
        let owned_before = Owned {
            links: [("nm0".to_string(), [net("10.10.0.1/24")].into())].into(),
            ..Default::default()
        };
        let target = desired_from_snapshot(&snapshot, &owned_before, "a");
        // Now: as desired() (after a partial apply).
        let now = Observed {
            links: [("nm0".to_string(), observed_from(&spec(), "netman:a"))].into(),
            ..Default::default()
        };
        let owned_now = owned_before.union(&Owned::from_desired(&desired()));
        let p = plan("a", &target, &now, &owned_now).expect("plan");
        assert_eq!(
            text(&p),
            "~ link nm0 mtu 1420 -> 1500\n\
             - route 192.168.50.0/24 dev nm0 metric 100\n\
             - address fd10::1/64 dev nm0\n"
        );
        // A link created by the failed apply is deleted by the revert.
        let p = plan(
            "a",
            &Desired::default(),
            &now,
            &Owned::from_desired(&desired()),
        )
        .expect("plan");
        assert_eq!(text(&p), "- link nm0\n");
    }
}
