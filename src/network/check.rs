//! The network file's own rules, checked across sites (the rules of each
//! derived manifest are the manifest's, applied in `mod.rs`). Every
//! finding is positioned at the network file's node:
//! - `network`: a deployment-style name;
//! - `sites[].name`: a deployment name, unique; `public_key`: a usable key,
//!   unique; `addresses`: interface addresses, no overlay address used by
//!   two sites; `subnets`: networks; no address or subnet of one site
//!   overlapping another site's;
//! - `sites[].endpoint`: its port is the site's `listen_port` (and there is
//!   one); a `private_key_file` set for every site;
//! - `topology`: exactly one kind; hubs and link ends name sites; every
//!   tunnel has an endpoint on at least one side; every hub has one;
//! - an MTU below 1280 on a site that carries IPv6 for its peers;
//! - an input chain dropping by policy without a rule that accepts the
//!   listen port (an error when others must reach the site through its
//!   endpoint, a warning otherwise).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::raw::RawNetwork;
use super::{Site, effective};
use crate::manifest::error::ManifestError;
use crate::manifest::raw::Int;
use crate::manifest::validate::{
    deployment_name, endpoint, interface_address, network, public_key,
};
use crate::manifest::{DEFAULT_MTU, Endpoint, PublicKey};

const MIN_MTU_V6: i128 = 1280;

/// At most this many sites: validation derives a manifest per site, and a
/// mesh's manifests grow with the square of the sites.
pub(super) const MAX_SITES: usize = 1000;

/// What `derive.rs` needs, from the parts that checked out.
pub(super) struct Model {
    /// Per site: its valid overlay addresses as host prefixes, with their path.
    pub hosts: Vec<Vec<(IpNet, String)>>,
    /// Per site: its valid subnets, with their path.
    pub subnets: Vec<Vec<(IpNet, String)>>,
    /// Per site: the sites it has a tunnel to, in file order.
    pub peers: Vec<Vec<usize>>,
    /// Per spoke: the hub whose peer entry carries the other spokes.
    pub relay: Vec<Option<usize>>,
    /// Per site: whether the other spokes reach it through its relay.
    pub spoke: Vec<bool>,
    /// Whether a manifest can be derived (a key file is set).
    pub derivable: Vec<bool>,
    pub links: Vec<(usize, usize)>,
    /// `hub_and_spoke`'s hubs, in the order listed (empty otherwise).
    pub hubs: Vec<usize>,
    keys: Vec<Option<PublicKey>>,
    endpoints: Vec<Option<Endpoint>>,
    addresses: Vec<Vec<IpNet>>,
}

impl Model {
    fn new(n: usize, derivable: bool) -> Self {
        Model {
            hosts: vec![Vec::new(); n],
            subnets: vec![Vec::new(); n],
            peers: vec![Vec::new(); n],
            relay: vec![None; n],
            spoke: vec![false; n],
            derivable: vec![derivable; n],
            links: Vec::new(),
            hubs: Vec::new(),
            keys: vec![None; n],
            endpoints: vec![None; n],
            addresses: vec![Vec::new(); n],
        }
    }

    /// The validated sites (`None` if any part failed).
    pub fn sites(&self, raw: &RawNetwork) -> Option<Vec<Site>> {
        raw.sites
            .value
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Some(Site {
                    name: s.value.name.value.clone(),
                    public_key: (*self.keys.get(i)?)?,
                    addresses: self.addresses.get(i)?.clone(),
                    subnets: self.subnets.get(i)?.iter().map(|(n, _)| *n).collect(),
                    endpoint: self.endpoints.get(i)?.clone(),
                })
            })
            .collect()
    }
}

pub(super) struct Checked {
    pub model: Model,
    pub errors: Vec<ManifestError>,
    pub warnings: Vec<ManifestError>,
}

struct Ctx<'a> {
    file: &'a str,
    errors: Vec<ManifestError>,
    warnings: Vec<ManifestError>,
}

impl Ctx<'_> {
    fn error(&mut self, at: Location, path: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ManifestError::new(self.file, at, path, message));
    }

    fn warn(&mut self, at: Location, path: impl Into<String>, message: impl Into<String>) {
        self.warnings
            .push(ManifestError::new(self.file, at, path, message));
    }

    fn check<T, U>(
        &mut self,
        v: &Spanned<T>,
        path: impl FnOnce() -> String,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match f(&v.value) {
            Ok(u) => Some(u),
            Err(m) => {
                self.error(v.referenced, path(), m);
                None
            }
        }
    }
}

fn host(net: &IpNet) -> IpNet {
    IpNet::from(net.addr())
}

pub(super) fn check(raw: &RawNetwork, file: &str) -> Checked {
    let mut ctx = Ctx {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    ctx.check(
        &raw.network,
        || "network".to_owned(),
        |s| deployment_name(s),
    );
    let sites = &raw.sites.value;
    let n = sites.len();
    if n == 0 {
        ctx.error(
            raw.sites.referenced,
            "sites",
            "at least one site is required",
        );
    }

    if n > MAX_SITES {
        ctx.error(
            raw.sites.referenced,
            "sites",
            format!("{n} sites; at most {MAX_SITES}"),
        );
        return Checked {
            model: Model::new(n, false),
            errors: ctx.errors,
            warnings: ctx.warnings,
        };
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut key_seen: HashMap<PublicKey, usize> = HashMap::new();
    let mut addr_seen: HashMap<std::net::IpAddr, String> = HashMap::new();
    let mut model = Model::new(n, true);
    for (i, s) in sites.iter().enumerate() {
        let s = &s.value;
        let p = |f: &str| format!("sites[{i}].{f}");
        if ctx
            .check(&s.name, || p("name"), |v| deployment_name(v))
            .is_some()
        {
            match names.entry(s.name.value.as_str()) {
                Entry::Occupied(e) => ctx.error(
                    s.name.referenced,
                    p("name"),
                    format!(
                        "duplicate site name `{}` (already sites[{}])",
                        s.name.value,
                        e.get()
                    ),
                ),
                Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
        if let Some(key) = ctx.check(&s.public_key, || p("public_key"), |v| public_key(v)) {
            match key_seen.entry(key) {
                Entry::Occupied(e) => ctx.error(
                    s.public_key.referenced,
                    p("public_key"),
                    format!(
                        "the same public key as site `{}` (sites[{}])",
                        sites[*e.get()].value.name.value,
                        e.get()
                    ),
                ),
                Entry::Vacant(e) => {
                    e.insert(i);
                    model.keys[i] = Some(key);
                }
            }
        }
        for (k, a) in s.addresses.value.iter().enumerate() {
            // Its own manifest reports a bad one (the same message, once).
            let Ok(net) = interface_address(&a.value) else {
                continue;
            };
            let path = format!("sites[{i}].addresses[{k}]");
            match addr_seen.entry(net.addr()) {
                Entry::Occupied(e) if !e.get().starts_with(&format!("sites[{i}].")) => {
                    ctx.error(
                        a.referenced,
                        &path,
                        format!(
                            "overlay address {} is already used at {}",
                            net.addr(),
                            e.get()
                        ),
                    );
                    continue;
                }
                Entry::Occupied(_) => continue,
                Entry::Vacant(e) => {
                    e.insert(path.clone());
                }
            }
            model.addresses[i].push(net);
            model.hosts[i].push((host(&net), path));
        }
        if let Some(subnets) = &s.subnets {
            for (k, v) in subnets.value.iter().enumerate() {
                let path = format!("sites[{i}].subnets[{k}]");
                if let Some(net) = ctx.check(v, || path.clone(), |v| network(v)) {
                    model.subnets[i].push((net, path));
                }
            }
        }
        if effective!(raw, i, private_key_file).is_none() {
            ctx.error(
                s.name.referenced,
                format!("sites[{i}]"),
                "no private_key_file: set it for the site or in defaults",
            );
            model.derivable[i] = false;
        }
        if let Some(ep) = &s.endpoint {
            model.endpoints[i] = ctx.check(ep, || p("endpoint"), |v| endpoint(v));
        }
        endpoint_port(&mut ctx, raw, i, model.endpoints[i].as_ref());
    }
    overlaps(&mut ctx, raw, &model);
    topology(&mut ctx, raw, &names, &mut model);
    for i in 0..n {
        mtu(&mut ctx, raw, i, &model);
        firewall(&mut ctx, raw, i, model.endpoints[i].is_some());
    }
    Checked {
        model,
        errors: ctx.errors,
        warnings: ctx.warnings,
    }
}

/// The endpoint's port must be the port the site listens on.
fn endpoint_port(ctx: &mut Ctx<'_>, raw: &RawNetwork, i: usize, ep: Option<&Endpoint>) {
    let (Some(ep), Some(at)) = (ep, raw.sites.value[i].value.endpoint.as_ref()) else {
        return;
    };
    let port = match ep {
        Endpoint::Addr(a) => a.port(),
        Endpoint::Host { port, .. } => *port,
    };
    let path = format!("sites[{i}].endpoint");
    match effective!(raw, i, listen_port) {
        None => ctx.error(
            at.referenced,
            path,
            "the site has an endpoint but no listen_port: it would listen on a random port (set listen_port)",
        ),
        Some((lp, lp_path)) => {
            if let Int::Value(v) = lp.value
                && v != i128::from(port)
            {
                ctx.error(
                    at.referenced,
                    path,
                    format!(
                        "port {port} is not the site's listen_port {v} ({lp_path}, line {})",
                        lp.referenced.line()
                    ),
                );
            }
        }
    }
}

/// No address or subnet of one site may overlap another site's (each
/// prefix must route to exactly one site).
fn overlaps(ctx: &mut Ctx<'_>, raw: &RawNetwork, model: &Model) {
    let claims: Vec<Vec<(IpNet, &str)>> = (0..model.hosts.len())
        .map(|i| {
            model.hosts[i]
                .iter()
                .chain(&model.subnets[i])
                .map(|(n, p)| (*n, p.as_str()))
                .collect()
        })
        .collect();
    for i in 0..claims.len() {
        for (net, path) in &claims[i] {
            // A duplicate overlay address is reported already.
            let is_host = model.hosts[i].iter().any(|(_, p)| p == path);
            'other: for (j, other) in claims.iter().enumerate().take(i) {
                for (o, opath) in other {
                    let other_host = model.hosts[j].iter().any(|(_, p)| p == opath);
                    if (is_host && other_host) || !(net.contains(o) || o.contains(net)) {
                        continue;
                    }
                    if let Some(at) = locate(raw, path) {
                        ctx.error(
                            at,
                            *path,
                            format!(
                                "{net} overlaps {o} of site `{}` ({opath}): a prefix can route to one site only",
                                raw.sites.value[j].value.name.value
                            ),
                        );
                    }
                    break 'other;
                }
            }
        }
    }
}

/// The position of `sites[i].addresses[k]` / `sites[i].subnets[k]`.
pub(super) fn locate(raw: &RawNetwork, path: &str) -> Option<Location> {
    let rest = path.strip_prefix("sites[")?;
    let (i, rest) = rest.split_once("].")?;
    let (field, k) = rest.split_once('[')?;
    let i: usize = i.parse().ok()?;
    let k: usize = k.strip_suffix(']')?.parse().ok()?;
    let s = &raw.sites.value.get(i)?.value;
    let list = match field {
        "addresses" => &s.addresses.value,
        "subnets" => &s.subnets.as_ref()?.value,
        _ => return None,
    };
    Some(list.get(k)?.referenced)
}

fn topology(ctx: &mut Ctx<'_>, raw: &RawNetwork, names: &HashMap<&str, usize>, model: &mut Model) {
    let t = &raw.topology.value;
    let n = raw.sites.value.len();
    let mesh = t.mesh.as_ref().is_some_and(|m| m.value);
    let kinds =
        usize::from(mesh) + usize::from(t.hub_and_spoke.is_some()) + usize::from(t.links.is_some());
    if kinds != 1 {
        ctx.error(
            raw.topology.referenced,
            "topology",
            if kinds == 0 {
                "no topology: say `mesh: true`, `hub_and_spoke: {hubs: [...]}` or `links: [[a, b], ...]`"
            } else {
                "more than one topology: say only one of mesh, hub_and_spoke and links"
            },
        );
        return;
    }
    let site_name = |i: usize| raw.sites.value[i].value.name.value.as_str();
    let has_endpoint = |i: usize| raw.sites.value[i].value.endpoint.is_some();
    let mut links: Vec<(usize, usize)> = Vec::new();
    if mesh {
        for a in 0..n {
            for b in a + 1..n {
                links.push((a, b));
            }
        }
        let unreachable: Vec<&str> = (0..n)
            .filter(|&i| !has_endpoint(i))
            .map(site_name)
            .collect();
        if unreachable.len() > 1 {
            let at = t
                .mesh
                .as_ref()
                .map_or(raw.topology.referenced, |m| m.referenced);
            ctx.error(
                at,
                "topology.mesh",
                format!(
                    "sites `{}` have no endpoint: the tunnels between them can never handshake",
                    unreachable.join("`, `")
                ),
            );
        }
    } else if let Some(hs) = &t.hub_and_spoke {
        let mut hubs: Vec<usize> = Vec::new();
        if hs.value.hubs.value.is_empty() {
            ctx.error(
                hs.value.hubs.referenced,
                "topology.hub_and_spoke.hubs",
                "at least one hub is required",
            );
        }
        for (k, h) in hs.value.hubs.value.iter().enumerate() {
            let path = format!("topology.hub_and_spoke.hubs[{k}]");
            match names.get(h.value.as_str()) {
                None => ctx.error(h.referenced, path, format!("no site named `{}`", h.value)),
                Some(&i) if hubs.contains(&i) => {
                    ctx.error(h.referenced, path, format!("`{}` is listed twice", h.value))
                }
                Some(&i) => {
                    if !has_endpoint(i) {
                        ctx.error(
                            h.referenced,
                            path,
                            format!(
                                "hub `{}` has no endpoint: no spoke could ever reach it",
                                h.value
                            ),
                        );
                    }
                    hubs.push(i);
                }
            }
        }
        for a in 0..n {
            for b in a + 1..n {
                if hubs.contains(&a) || hubs.contains(&b) {
                    links.push((a, b));
                }
            }
            if !hubs.contains(&a) {
                model.spoke[a] = true;
                model.relay[a] = hubs.first().copied();
            }
        }
        model.hubs = hubs;
    } else if let Some(list) = &t.links {
        for (k, l) in list.value.iter().enumerate() {
            let path = format!("topology.links[{k}]");
            let ends: Vec<Option<usize>> = l
                .value
                .iter()
                .enumerate()
                .map(|(e, s)| {
                    let i = names.get(s.value.as_str()).copied();
                    if i.is_none() {
                        ctx.error(
                            s.referenced,
                            format!("{path}[{e}]"),
                            format!("no site named `{}`", s.value),
                        );
                    }
                    i
                })
                .collect();
            let [Some(a), Some(b)] = ends[..] else {
                if ends.len() != 2 {
                    ctx.error(
                        l.referenced,
                        &path,
                        format!("a link is two site names, [a, b]; found {}", ends.len()),
                    );
                }
                continue;
            };
            let pair = (a.min(b), a.max(b));
            if a == b {
                ctx.error(l.referenced, &path, "a link joins two different sites");
            } else if links.contains(&pair) {
                ctx.error(l.referenced, &path, "the same link again");
            } else {
                if !has_endpoint(a) && !has_endpoint(b) {
                    ctx.error(
                        l.referenced,
                        &path,
                        format!(
                            "neither `{}` nor `{}` has an endpoint: this tunnel can never handshake",
                            site_name(a),
                            site_name(b)
                        ),
                    );
                }
                links.push(pair);
            }
        }
        for i in 0..n {
            if !links.iter().any(|&(a, b)| a == i || b == i) {
                let s = &raw.sites.value[i].value;
                ctx.warn(
                    s.name.referenced,
                    format!("sites[{i}].name"),
                    format!("site `{}` is in no link", s.name.value),
                );
            }
        }
    }
    links.sort_unstable();
    for &(a, b) in &links {
        model.peers[a].push(b);
        model.peers[b].push(a);
    }
    for p in &mut model.peers {
        p.sort_unstable();
    }
    model.links = links;
}

/// IPv6 needs an MTU of at least 1280 on every link that carries it.
fn mtu(ctx: &mut Ctx<'_>, raw: &RawNetwork, i: usize, model: &Model) {
    let Some((m, path)) = effective!(raw, i, mtu) else {
        return; // the default, 1420
    };
    let Int::Value(v) = m.value else { return };
    if !(576..MIN_MTU_V6).contains(&v) {
        return; // fine, or the manifest's own range error
    }
    // With an IPv6 address of its own the manifest's rule says it.
    if model.addresses[i].iter().any(|a| a.addr().is_ipv6()) {
        return;
    }
    let v6 = |nets: &[(IpNet, String)]| nets.iter().any(|(n, _)| n.addr().is_ipv6());
    let carries = v6(&model.subnets[i])
        || model.peers[i]
            .iter()
            .any(|&p| v6(&model.hosts[p]) || v6(&model.subnets[p]));
    if carries {
        ctx.error(
            m.referenced,
            path,
            format!(
                "MTU {v} of site `{}` is below 1280, the IPv6 minimum, and the site carries IPv6 (default {DEFAULT_MTU})",
                raw.sites.value[i].value.name.value
            ),
        );
    }
}

/// An input chain dropping by policy must accept the listen port.
fn firewall(ctx: &mut Ctx<'_>, raw: &RawNetwork, i: usize, reached: bool) {
    let (Some((fw, fw_path)), Some((lp, _))) = (
        effective!(raw, i, firewall),
        effective!(raw, i, listen_port),
    ) else {
        return;
    };
    let Int::Value(port) = lp.value else { return };
    let Some(chains) = &fw.value.chains else {
        return;
    };
    for (k, c) in chains.value.iter().enumerate() {
        let c = &c.value;
        let drops = c.policy.as_ref().is_some_and(|p| p.value == "drop");
        if c.hook.value != "input" || !drops {
            continue;
        }
        let rules = c.rules.as_ref().map(|r| r.value.as_slice()).unwrap_or(&[]);
        if rules.iter().any(|r| opens(&r.value, port)) {
            continue;
        }
        let path = format!("{fw_path}.chains[{k}].policy");
        let at = c
            .policy
            .as_ref()
            .map_or(c.name.referenced, |p| p.referenced);
        let site = &raw.sites.value[i].value.name.value;
        if reached {
            ctx.error(
                at,
                path,
                format!(
                    "site `{site}`: input chain `{}` drops by policy and no rule accepts udp dport {port} (the listen port): no peer can reach the site",
                    c.name.value
                ),
            );
        } else {
            ctx.warn(
                at,
                path,
                format!(
                    "site `{site}`: input chain `{}` drops by policy and no rule accepts udp dport {port} (the listen port): only replies to its own handshakes can pass, and only with a ct state rule",
                    c.name.value
                ),
            );
        }
    }
}

/// Whether nft rule `rule` accepts UDP to `port` (by its words: `udp
/// dport` naming the port, or a udp rule with no port condition).
fn opens(rule: &str, port: i128) -> bool {
    let words: Vec<&str> = rule
        .split(|c: char| c.is_whitespace() || matches!(c, '{' | '}' | ','))
        .filter(|w| !w.is_empty())
        .collect();
    if words.last() != Some(&"accept") || !words.contains(&"udp") {
        return false;
    }
    if !words.contains(&"dport") {
        return true;
    }
    let p = port.to_string();
    words.iter().any(|w| {
        *w == p
            || w.split_once('-').is_some_and(|(lo, hi)| {
                matches!((lo.parse::<i128>(), hi.parse::<i128>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&port))
            })
    })
}
