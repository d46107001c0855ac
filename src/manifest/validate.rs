//! Semantic validation: raw layer -> validated [`Manifest`], collecting every error.
//!
//! Rules (each reported at the offending value, path in brackets):
//! - `name`: 1..=32 characters of `[a-z0-9-]`.
//! - `interface.name`: a Linux ifname: 1..=15 bytes, none of `/`, `:`, whitespace or
//!   NUL, not `.` or `..`.
//! - `interface.addresses`: at least one; each `ADDRESS/PREFIX`; not unspecified or
//!   multicast; for IPv4 prefixes shorter than /31 not the network address (zero host
//!   part, e.g. `10.10.0.0/24`) nor the broadcast address; no IP listed twice (even
//!   with different prefix lengths).
//! - `interface.mtu`: default 1420; 576..=65535; at least 1280 if any address is IPv6.
//! - `interface.listen_port`, `peers[].endpoint` port: 1..=65535.
//! - `interface.mss_clamp`: `off`, `auto` or 536..=65495; default `auto` with
//!   `forwarding: true`, `off` otherwise.
//! - `interface.private_key_file`, `peers[].preshared_key_file`: non-empty, no NUL;
//!   relative paths resolve against the manifest's directory.
//! - `interface.public_key` (optional): a usable public key (as `peers[].public_key`),
//!   no peer's.
//! - `peers[].name`: 1..=63 characters of `[A-Za-z0-9._-]`, unique.
//! - `peers[].public_key`: padded standard base64 of exactly 32 bytes, unique, not a
//!   low-order point.
//! - `peers[].endpoint`: `v4:port`, `"[v6]:port"` or `hostname:port` (RFC 1123 labels,
//!   at most 253 characters, last label not all-numeric).
//! - `peers[].allowed_ips`, `routes[].to`: `NETWORK/PREFIX` with no host bits set; an
//!   allowed IP appears once per peer and in at most one peer; each `to` appears once.
//!   A peer's allowed IP containing another peer's is a warning; a peer all of whose
//!   allowed IPs are covered whole by more specific ones is an error (`overlap.rs`).
//! - `peers[].persistent_keepalive`: 1..=65535 seconds.
//! - `peers[].endpoint_refresh`, `peers[].endpoint_stale_after`: 1..=86400 seconds,
//!   only with a hostname endpoint.
//! - `routes[].metric`: 0..=4294967295.
//! - `forwarding`: a boolean. `firewall`: see `firewall.rs`.
//! - `probes[].ping`, `peers[].probes[].ping`: an IP address inside the allowed IPs of
//!   some peer (of that peer); at most 16 in all. `rollout.confirm`: `healthy`;
//!   `rollout.timeout`: 5..=3600 seconds (`health.rs`).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::error::{ManifestError, ManifestErrors};
use super::overlap::{self, Claim, Finding};
use super::raw::{Int, RawManifest, RawPeer, RawRoute};
use super::{Endpoint, Firewall, Manifest, Metrics, Peer, PublicKey, Route, Source};

const MAX_NAME_LEN: usize = 32;
const MAX_PEER_NAME_LEN: usize = 63;

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    /// The manifest text (to locate values exactly).
    pub(super) text: &'a str,
    /// Byte offsets of the starts of the lines of `text`, computed once on
    /// first use (finding a line by scanning the text for each of 100,000
    /// firewall rules made validation quadratic).
    line_starts: OnceCell<Vec<usize>>,
    base_dir: &'a Path,
    errors: Vec<ManifestError>,
    /// Legal but suspicious values (`overlap.rs`); reported, not fatal.
    warnings: Vec<ManifestError>,
}

/// Byte offsets of the starts of the lines of `text`, lines ended as YAML
/// ends them (`\n`, `\r\n`, or a lone `\r`), so that line numbers agree
/// with the parser's.
fn line_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                i += 2;
                starts.push(i);
            }
            b'\r' | b'\n' => {
                i += 1;
                starts.push(i);
            }
            _ => i += 1,
        }
    }
    starts
}

impl<'a> Ctx<'a> {
    /// The rest of source line `line` (1-based, as YAML counts them: `\n`,
    /// `\r\n` and a lone `\r` each end a line) from 1-based character
    /// column `column` on. `location`'s byte offset, when the parser gives
    /// one on that line, locates the column without counting characters.
    pub(super) fn rest_of_line(
        &self,
        location: Location,
        line: usize,
        column: usize,
    ) -> Option<&'a str> {
        let text = self.text;
        let starts = self.line_starts.get_or_init(|| line_starts(text));
        let k = line.saturating_sub(1);
        let start = *starts.get(k)?;
        if start >= text.len() {
            return None;
        }
        let source_line = match starts.get(k + 1) {
            // Ends with a line break: cut it.
            Some(&next) => {
                let l = &text[start..next];
                let l = l.strip_suffix('\n').unwrap_or(l);
                l.strip_suffix('\r').unwrap_or(l)
            }
            None => &text[start..],
        };
        let end = start + source_line.len();
        if let Some(off) = location.span().byte_offset()
            && let Ok(off) = usize::try_from(off)
            && (start..=end).contains(&off)
            && text.is_char_boundary(off)
        {
            return Some(&text[off..end]);
        }
        let skip = column.saturating_sub(1);
        Some(
            source_line
                .char_indices()
                .nth(skip)
                .map_or("", |(i, _)| &source_line[i..]),
        )
    }

    pub(super) fn error(
        &mut self,
        location: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors
            .push(ManifestError::new(self.file, location, path, message));
    }

    pub(super) fn warn(
        &mut self,
        location: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings
            .push(ManifestError::new(self.file, location, path, message));
    }

    /// Run `check` on a spanned value, recording its error at the value.
    pub(super) fn check<T, U>(
        &mut self,
        value: &Spanned<T>,
        path: impl FnOnce() -> String,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(&value.value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(value.referenced, path(), message);
                None
            }
        }
    }

    pub(super) fn key_path(
        &mut self,
        value: &Spanned<String>,
        path: impl FnOnce() -> String,
    ) -> Option<PathBuf> {
        let base_dir = self.base_dir;
        self.check(value, path, |s| {
            if s.is_empty() {
                Err("must not be empty".to_owned())
            } else if s.contains('\0') {
                Err("must not contain a NUL byte".to_owned())
            } else {
                Ok(super::normalize(&base_dir.join(s)))
            }
        })
    }
}

pub(crate) fn validate(
    raw: RawManifest,
    source: Source,
    base_dir: &Path,
    file: &str,
) -> Result<Manifest, ManifestErrors> {
    let mut ctx = Ctx {
        file,
        text: &source.text,
        line_starts: OnceCell::new(),
        base_dir,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    let name = ctx.check(&raw.name, || "name".to_owned(), |s| deployment_name(s));
    let forwarding = raw.forwarding.as_ref().is_some_and(|f| f.value);
    let interface = super::interface::interface(&mut ctx, &raw.interface, forwarding);
    let peers: Vec<Option<Peer>> = match &raw.peers {
        Some(list) => peers(&mut ctx, &list.value),
        None => Vec::new(),
    };
    // A peer with the site's own key: the engine refuses it at apply.
    if let (Some(Some(own)), Some(list)) = (interface.as_ref().map(|i| i.public_key), &raw.peers) {
        for (i, (p, raw_peer)) in peers.iter().zip(&list.value).enumerate() {
            if p.as_ref().is_some_and(|p| p.public_key == own) {
                ctx.error(
                    raw_peer.value.public_key.referenced,
                    format!("peers[{i}].public_key"),
                    "this site's own public key (interface.public_key)",
                );
            }
        }
    }
    let routes: Vec<Option<Route>> = match &raw.routes {
        Some(list) => routes(&mut ctx, &list.value),
        None => Vec::new(),
    };
    let watch = raw.watch.as_ref().is_none_or(|w| w.value);
    let metrics: Option<Option<Metrics>> = match &raw.metrics {
        None => Some(None),
        Some(m) => ctx
            .check(
                &m.value.listen,
                || "metrics.listen".to_owned(),
                |s| metrics_listen(s),
            )
            .map(|listen| Some(Metrics { listen })),
    };
    let firewall: Option<Firewall> = match &raw.firewall {
        Some(fw) => super::firewall::firewall(&mut ctx, &fw.value),
        None => Some(Firewall::default()),
    };
    let probes = super::health::probes(&mut ctx, &raw, &peers);
    let rollout = super::health::rollout(&mut ctx, &raw.rollout);

    if !ctx.errors.is_empty() {
        let mut errors = ctx.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(ManifestErrors(errors));
    }
    let mut warnings = ctx.warnings;
    warnings.sort_by_key(|e| (e.line, e.column));
    // With no error recorded, every checked value is present.
    match (
        name,
        interface,
        peers.into_iter().collect::<Option<Vec<_>>>(),
        routes.into_iter().collect::<Option<Vec<_>>>(),
        firewall,
        metrics,
        probes,
        rollout,
    ) {
        (
            Some(name),
            Some(interface),
            Some(peers),
            Some(routes),
            Some(firewall),
            Some(metrics),
            Some(probes),
            Some(rollout),
        ) => Ok(Manifest {
            name,
            interface,
            peers,
            routes,
            forwarding,
            firewall,
            watch,
            metrics,
            probes,
            rollout,
            source,
            warnings,
        }),
        _ => Err(ManifestErrors::single(ManifestError::new(
            file,
            Location::UNKNOWN,
            "",
            "internal error: validation failed without a diagnostic",
        ))),
    }
}

/// `metrics.listen`: an `ADDRESS:PORT` to bind (no hostnames: the engine
/// binds it without DNS).
fn metrics_listen(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9586 or [::1]:9586)"))?;
    if a.port() == 0 {
        return Err("port 0 is not allowed (1..=65535)".to_string());
    }
    Ok(a)
}

fn peers(ctx: &mut Ctx<'_>, raw: &[Spanned<RawPeer>]) -> Vec<Option<Peer>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<PublicKey, usize> = HashMap::new();
    // prefix -> (peer index, allowed_ips index)
    let mut claimed: HashMap<IpNet, (usize, usize)> = HashMap::new();
    let mut overlaps: Vec<Claim> = Vec::new();
    let mut out = Vec::with_capacity(raw.len());

    for (p, item) in raw.iter().enumerate() {
        let peer = &item.value;
        let mut ok = true;

        let name = ctx.check(&peer.name, || format!("peers[{p}].name"), |s| peer_name(s));
        if name.is_some() {
            match names.entry(peer.name.value.as_str()) {
                Entry::Occupied(first) => {
                    ctx.error(
                        peer.name.referenced,
                        format!("peers[{p}].name"),
                        format!(
                            "duplicate peer name `{}` (already used by peers[{}])",
                            peer.name.value,
                            first.get()
                        ),
                    );
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert(p);
                }
            }
        }

        let public_key = ctx.check(
            &peer.public_key,
            || format!("peers[{p}].public_key"),
            |s| public_key(s),
        );
        if let Some(key) = public_key {
            match keys.entry(key) {
                Entry::Occupied(first) => {
                    let first = *first.get();
                    ctx.error(
                        peer.public_key.referenced,
                        format!("peers[{p}].public_key"),
                        format!(
                            "duplicate public key (already used by peers[{first}] `{}`)",
                            raw[first].value.name.value.escape_debug()
                        ),
                    );
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert(p);
                }
            }
        }

        let endpoint = match &peer.endpoint {
            None => Some(None),
            Some(e) => ctx
                .check(e, || format!("peers[{p}].endpoint"), |s| endpoint(s))
                .map(Some),
        };

        let mut allowed_ips = Vec::with_capacity(peer.allowed_ips.value.len());
        for (i, item) in peer.allowed_ips.value.iter().enumerate() {
            let path = || format!("peers[{p}].allowed_ips[{i}]");
            let Some(net) = ctx.check(item, path, |s| network(s)) else {
                ok = false;
                continue;
            };
            match claimed.entry(net) {
                Entry::Occupied(first) => {
                    let (fp, fi) = *first.get();
                    let message = if fp == p {
                        format!("duplicate entry {net} (already at peers[{p}].allowed_ips[{fi}])")
                    } else {
                        format!(
                            "{net} is already claimed by peer `{}` (peers[{fp}].allowed_ips[{fi}])",
                            raw[fp].value.name.value.escape_debug()
                        )
                    };
                    ctx.error(item.referenced, path(), message);
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert((p, i));
                    allowed_ips.push(net);
                    overlaps.push(Claim {
                        net,
                        peer: p,
                        index: i,
                        location: item.referenced,
                    });
                }
            }
        }

        let persistent_keepalive = match &peer.persistent_keepalive {
            None => Some(None),
            Some(k) => ctx
                .check(k, || format!("peers[{p}].persistent_keepalive"), |&n: &Int| {
                let v = n.get()?;
                    match v {
                        0 => Err("0 is not allowed (1..=65535 seconds); omit persistent_keepalive to disable keepalives".to_owned()),
                        _ => u16::try_from(v)
                            .map_err(|_| format!("{v} is out of range (1..=65535 seconds)")),
                    }
                })
                .map(Some),
        };

        let refresh = refresh_settings(ctx, peer, p, endpoint.as_ref());
        let preshared_key_file = match &peer.preshared_key_file {
            None => Some(None),
            Some(f) => ctx
                .key_path(f, || format!("peers[{p}].preshared_key_file"))
                .map(Some),
        };

        out.push(
            match (
                ok,
                name,
                public_key,
                endpoint,
                persistent_keepalive,
                preshared_key_file,
                refresh,
            ) {
                (
                    true,
                    Some(name),
                    Some(public_key),
                    Some(endpoint),
                    Some(persistent_keepalive),
                    Some(preshared_key_file),
                    Some((endpoint_refresh, endpoint_stale_after)),
                ) => Some(Peer {
                    name,
                    public_key,
                    endpoint,
                    allowed_ips,
                    persistent_keepalive,
                    preshared_key_file,
                    endpoint_refresh,
                    endpoint_stale_after,
                }),
                _ => None,
            },
        );
    }
    let name = |p: usize| raw[p].value.name.value.escape_debug().to_string();
    for finding in overlap::check(&overlaps, name) {
        match finding {
            Finding::Warning {
                peer,
                index,
                location,
                message,
            } => ctx.warn(
                location,
                format!("peers[{peer}].allowed_ips[{index}]"),
                message,
            ),
            Finding::Error {
                peer,
                index,
                location,
                message,
            } => {
                ctx.error(
                    location,
                    format!("peers[{peer}].allowed_ips[{index}]"),
                    message,
                );
                out[peer] = None;
            }
        }
    }
    out
}

/// `peers[p].endpoint_refresh` and `endpoint_stale_after`: 1..=86400
/// seconds, and only for a hostname endpoint (an address is never
/// re-resolved). `endpoint` is the peer's checked endpoint (`None` when it
/// did not validate: then only the ranges are checked).
fn refresh_settings(
    ctx: &mut Ctx<'_>,
    peer: &RawPeer,
    p: usize,
    endpoint: Option<&Option<Endpoint>>,
) -> Option<(Option<u32>, Option<u32>)> {
    let mut ok = true;
    let mut one = |ctx: &mut Ctx<'_>, v: &Option<Spanned<Int>>, field: &str| -> Option<u32> {
        let v = v.as_ref()?;
        let path = || format!("peers[{p}].{field}");
        let n = ctx.check(v, path, |&n: &Int| {
            let n = n.get()?;
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| format!("{n} is out of range (1..=86400 seconds)"))
        });
        match (n, endpoint) {
            (None, _) => ok = false,
            (Some(_), Some(Some(Endpoint::Host { .. })) | None) => {}
            (Some(_), Some(e)) => {
                ctx.error(
                    v.referenced,
                    path(),
                    match e {
                        Some(_) => format!(
                            "only a hostname endpoint is re-resolved; peers[{p}].endpoint is an address"
                        ),
                        None => format!(
                            "only a hostname endpoint is re-resolved; peers[{p}] has no endpoint"
                        ),
                    },
                );
                ok = false;
            }
        }
        n
    };
    let refresh = one(ctx, &peer.endpoint_refresh, "endpoint_refresh");
    let stale = one(ctx, &peer.endpoint_stale_after, "endpoint_stale_after");
    ok.then_some((refresh, stale))
}

/// `peers[].public_key`: 32 bytes of base64, and a key a handshake can
/// work with (the protocol core refuses a low-order point, which is
/// nobody's real public key).
pub(crate) fn public_key(s: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_base64(s).map_err(|e| e.to_string())?;
    if key.is_low_order() {
        return Err(
            "a low-order point, not a usable public key (no key exchange with it can succeed)"
                .to_owned(),
        );
    }
    Ok(key)
}

fn routes(ctx: &mut Ctx<'_>, raw: &[Spanned<RawRoute>]) -> Vec<Option<Route>> {
    let mut seen: HashMap<IpNet, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (r, item) in raw.iter().enumerate() {
        let route = &item.value;
        let path = || format!("routes[{r}].to");
        let mut to = ctx.check(&route.to, path, |s| network(s));
        if let Some(net) = to {
            match seen.entry(net) {
                Entry::Occupied(first) => {
                    ctx.error(
                        route.to.referenced,
                        path(),
                        format!(
                            "duplicate route to {net} (already at routes[{}].to)",
                            first.get()
                        ),
                    );
                    to = None;
                }
                Entry::Vacant(slot) => {
                    slot.insert(r);
                }
            }
        }
        let metric = match &route.metric {
            None => Some(None),
            Some(m) => ctx
                .check(
                    m,
                    || format!("routes[{r}].metric"),
                    |&n: &Int| {
                        let v = n.get()?;
                        u32::try_from(v)
                            .map_err(|_| format!("metric {v} is out of range (0..={})", u32::MAX))
                    },
                )
                .map(Some),
        };
        out.push(match (to, metric) {
            (Some(to), Some(metric)) => Some(Route { to, metric }),
            _ => None,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Individual value checks. Each returns a message (never containing key material).

pub(crate) fn deployment_name(s: &str) -> Result<String, String> {
    let len = s.chars().count();
    if len == 0 {
        return Err("must not be empty".to_owned());
    }
    if len > MAX_NAME_LEN {
        return Err(format!(
            "too long ({len} characters; at most {MAX_NAME_LEN})"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "invalid character {c:?} (allowed: a-z, 0-9 and '-')"
        ));
    }
    Ok(s.to_owned())
}

fn peer_name(s: &str) -> Result<String, String> {
    let len = s.chars().count();
    if len == 0 {
        return Err("must not be empty".to_owned());
    }
    if len > MAX_PEER_NAME_LEN {
        return Err(format!(
            "too long ({len} characters; at most {MAX_PEER_NAME_LEN})"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "invalid character {c:?} (allowed: A-Z, a-z, 0-9, '-', '_' and '.')"
        ));
    }
    Ok(s.to_owned())
}

enum CidrError {
    MissingPrefix(IpAddr),
    PrefixOutOfRange { prefix: String, max: u8 },
    Invalid,
}

fn parse_cidr(s: &str) -> Result<IpNet, CidrError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Err(CidrError::MissingPrefix(addr));
    }
    if let Some((addr, prefix)) = s.rsplit_once('/')
        && let Ok(addr) = addr.parse::<IpAddr>()
        && prefix.bytes().all(|b| b.is_ascii_digit())
    {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix
            .parse::<u64>()
            .map_or(!prefix.is_empty(), |p| p > u64::from(max))
        {
            return Err(CidrError::PrefixOutOfRange {
                prefix: prefix.to_owned(),
                max,
            });
        }
    }
    Err(CidrError::Invalid)
}

fn cidr_message(
    s: &str,
    e: CidrError,
    missing_prefix_hint: impl FnOnce(IpAddr) -> String,
) -> String {
    match e {
        CidrError::MissingPrefix(addr) => {
            format!(
                "missing prefix length in {addr} ({})",
                missing_prefix_hint(addr)
            )
        }
        CidrError::PrefixOutOfRange { prefix, max } => {
            format!("prefix length /{prefix} is out of range in {s:?} (at most /{max})")
        }
        CidrError::Invalid => format!(
            "{s:?} is not a valid CIDR (expected ADDRESS/PREFIX_LEN, e.g. 10.10.0.1/24 or fd10::1/64)"
        ),
    }
}

/// An interface address: a host address with its prefix length.
pub(crate) fn interface_address(s: &str) -> Result<IpNet, String> {
    let net = parse_cidr(s).map_err(|e| {
        cidr_message(s, e, |addr| {
            let example = if addr.is_ipv4() { 24 } else { 64 };
            format!("e.g. {addr}/{example}")
        })
    })?;
    let addr = net.addr();
    if addr.is_unspecified() {
        return Err(format!(
            "{net}: the unspecified address cannot be assigned to an interface"
        ));
    }
    if addr.is_multicast() {
        return Err(format!(
            "{net}: a multicast address cannot be assigned to an interface"
        ));
    }
    if let IpNet::V4(v4) = net
        && v4.prefix_len() < 31
    {
        if v4.addr() == v4.network() {
            return Err(format!(
                "{net} is the network address of {}; use a host address such as {}/{}",
                v4.trunc(),
                v4.hosts()
                    .next()
                    .map_or_else(|| v4.addr().to_string(), |h| h.to_string()),
                v4.prefix_len()
            ));
        }
        if v4.addr() == v4.broadcast() {
            return Err(format!(
                "{net} is the broadcast address of {}; use a host address",
                v4.trunc()
            ));
        }
    }
    Ok(net)
}

/// A network with no host bits set (allowed IPs, route destinations).
pub(crate) fn network(s: &str) -> Result<IpNet, String> {
    let net = parse_cidr(s).map_err(|e| {
        cidr_message(s, e, |addr| {
            let full = if addr.is_ipv4() { 32 } else { 128 };
            format!("did you mean {addr}/{full}?")
        })
    })?;
    if net != net.trunc() {
        return Err(format!(
            "host bits set in {net} (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

pub(crate) fn endpoint(s: &str) -> Result<Endpoint, String> {
    const FORMS: &str = "expected IPV4:PORT, [IPV6]:PORT or HOSTNAME:PORT";
    if s.starts_with('[') {
        let Some((host, port)) = s.rsplit_once("]:") else {
            return Err(format!("{s:?} is not a valid endpoint ({FORMS})"));
        };
        let port = port_number(port)?;
        let addr = host[1..]
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{:?} is not a valid IPv6 address", &host[1..]))?;
        return Ok(Endpoint::Addr(SocketAddr::new(IpAddr::V6(addr), port)));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("missing port in {s:?} ({FORMS})"));
    };
    if host.contains(':') {
        return Err(format!(
            "IPv6 endpoints must be written as [ADDRESS]:PORT, e.g. \"[{host}]:{port}\""
        ));
    }
    let port = port_number(port)?;
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return Ok(Endpoint::Addr(SocketAddr::new(IpAddr::V4(v4), port)));
    }
    hostname(host)?;
    Ok(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

fn port_number(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {s:?} (expected 1..=65535)"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed (1..=65535)".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {s} is out of range (1..=65535)")),
    }
}

fn hostname(host: &str) -> Result<(), String> {
    let bad = || format!("{host:?} is not a valid IPv4 address or hostname");
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let mut last = "";
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(bad());
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How positions were found before the line index: the line by
    /// scanning the text, the column by counting characters.
    /// The old scan, with lines as YAML ends them (`\r\n`, `\n` or a lone
    /// `\r`; the old scan used `str::lines`, which keeps a lone `\r` inside
    /// a line, while the parser's line numbers count it as a break).
    fn reference(text: &str, line: usize, column: usize) -> Option<String> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let l = text.lines().nth(line.saturating_sub(1))?;
        Some(l.chars().skip(column.saturating_sub(1)).collect())
    }

    fn ctx(text: &str) -> Ctx<'_> {
        Ctx {
            file: "m.yaml",
            text,
            line_starts: OnceCell::new(),
            base_dir: Path::new("/"),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    const HEAD: &str =
        "name: a\ninterface:\n  name: nm0\n  addresses: [10.0.0.1/24]\n  private_key_file: k\n";

    #[test]
    fn rest_of_line_matches_the_old_scan_for_every_rule() {
        let bodies = [
            "firewall:\n  chains:\n    - name: f\n      hook: forward\n      rules:\n        - accept\n        - \"iifname \\\"nm0\\\" accept\"\n        - 'drop'\n",
            "firewall:\n  chains:\n    - {name: f, hook: forward, rules: [accept, \"ü accept\", 'é drop', ip saddr 10.0.0.0/8 drop]}\n",
            "firewall:\r\n  chains:\r\n    - name: f\r\n      hook: forward\r\n      rules:\r\n        - accept\r\n        - \"x\\ty\"\r\n",
            "firewall:\n  chains:\n    - name: f\n      hook: forward\n      rules:\n        - &r meta mark 1 accept\n        - *r\n        - >\n          folded\n          rule\n",
            "# ünïcödé comment\nfirewall: {chains: [{name: f, hook: forward, rules: [\"ä\", \"ö\", accept]}], insert: [{family: ip, table: filter, chain: X, rule: \"ß accept\"}]}",
        ];
        for body in bodies {
            let text = format!("{HEAD}{body}");
            let raw =
                super::super::raw_parse(&text, "m.yaml").unwrap_or_else(|e| panic!("{e}: {text}"));
            let fw = raw.firewall.expect("firewall").value;
            let mut locations = Vec::new();
            for chain in &fw.chains.expect("chains").value {
                for rule in &chain.value.rules.as_ref().expect("rules").value {
                    locations.push(rule.referenced);
                }
            }
            if let Some(ins) = &fw.insert {
                locations.extend(ins.value.iter().map(|i| i.value.rule.referenced));
            }
            assert!(!locations.is_empty());
            let c = ctx(&text);
            for loc in locations {
                let (line, column) = super::super::error::line_col(loc);
                let want = reference(&text, line, column);
                assert_eq!(
                    c.rest_of_line(loc, line, column).map(str::to_owned),
                    want,
                    "{line}:{column} in {text:?}"
                );
                // Without the parser's byte offset too.
                assert_eq!(
                    c.rest_of_line(Location::UNKNOWN, line, column)
                        .map(str::to_owned),
                    want,
                    "{line}:{column} in {text:?}"
                );
            }
        }
        // Every line and column of awkward text, without byte offsets.
        for text in [
            "",
            "a",
            "a\n",
            "a\n\n",
            "ä\r\nb\rc\n\nd\r",
            "x\u{feff}y\nzz",
        ] {
            let c = ctx(text);
            for line in 0..6 {
                for column in 0..6 {
                    assert_eq!(
                        c.rest_of_line(Location::UNKNOWN, line, column)
                            .map(str::to_owned),
                        reference(text, line, column),
                        "{line}:{column} in {text:?}"
                    );
                }
            }
        }
    }
}
