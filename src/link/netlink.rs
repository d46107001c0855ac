//! Thin rtnetlink executors: observe links/addresses/routes into the model,
//! and carry out planned actions. Requests of one kind that do not depend on
//! each other are pipelined on the socket instead of waiting for each reply.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use futures::stream::{self, StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;
use thiserror::Error;

use super::tun;
use crate::error::ErrorKind;
use crate::link::model::{Observed, ObservedLink, ROUTE_PROTOCOL, RouteSpec, RuleSpec, link_alias};
use crate::link::plan::Action;

/// The kernel's `local` table (addresses of the host, broadcast).
const LOCAL_TABLE: u32 = 255;

/// How many independent requests may be in flight on the socket at once.
const PIPELINE_DEPTH: usize = 256;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    #[error("{what}: {reason}")]
    Kernel { what: String, reason: String },
    #[error("{0}")]
    Tun(#[from] tun::TunError),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl NetlinkError {
    /// Netlink failures are the kernel's answer of the moment: worth a retry.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Transient
    }
}

/// The kernel's reason for a failed request, as `strerror` text.
pub fn kernel_reason(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn kernel(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| NetlinkError::Kernel {
        what,
        reason: kernel_reason(&e),
    }
}

/// A connection to rtnetlink in the current network namespace.
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Connect (with strict checking, so dumps are filtered in the kernel).
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection_with_strict_check().map_err(NetlinkError::Connect)?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// Send one request and wait for its acknowledgement.
    async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut resp = self.handle.clone().request(req)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }

    /// Send a dump request and collect the replies.
    async fn dump(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut resp = self.handle.clone().request(req)?;
        let mut out = Vec::new();
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(rtnetlink::Error::NetlinkError(e));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The link called `name`, if it exists.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel(format!("read link {name}"))(e)),
        }
    }

    async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        match self.link_by_name(name).await? {
            Some(m) => Ok(m.header.index),
            None => Err(NetlinkError::Kernel {
                what: format!("link {name}"),
                reason: io::Error::from_raw_os_error(libc::ENODEV).to_string(),
            }),
        }
    }

    /// Observe the named links, their addresses and the routes through
    /// them (every table but `local`), and every policy rule with netman's
    /// protocol.
    pub async fn observe<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Observed, NetlinkError> {
        let mut out = Observed::default();
        for name in names {
            let Some(msg) = self.link_by_name(name).await? else {
                continue;
            };
            let index = msg.header.index;
            let mut link = ObservedLink {
                index,
                kind: None,
                alias: None,
                mtu: 0,
                txqueuelen: 0,
                up: msg.header.flags.contains(LinkFlags::Up),
                addresses: BTreeSet::new(),
                routes: BTreeSet::new(),
                foreign_routes: BTreeSet::new(),
            };
            for attr in &msg.attributes {
                match attr {
                    LinkAttribute::Mtu(m) => link.mtu = *m,
                    LinkAttribute::TxQueueLen(q) => link.txqueuelen = *q,
                    LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                link.kind = Some(k.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            link.addresses = self.addresses(index).await?;
            let (ours, foreign) = self.routes(index).await?;
            link.routes = ours;
            link.foreign_routes = foreign;
            out.links.insert(name.to_string(), link);
        }
        out.rules = self.rules().await?;
        Ok(out)
    }

    /// The policy rules with netman's protocol (IPv4 and IPv6).
    async fn rules(&self) -> Result<BTreeSet<RuleSpec>, NetlinkError> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RuleMessage::default();
            msg.header.family = family;
            let replies = match self.dump(RouteNetlinkMessage::GetRule(msg)).await {
                Ok(r) => r,
                // No IPv6 in this namespace or kernel: no IPv6 rules.
                Err(e)
                    if family == AddressFamily::Inet6 && errno(&e) == Some(libc::EAFNOSUPPORT) =>
                {
                    continue;
                }
                Err(e) => return Err(kernel("dump policy rules")(e)),
            };
            for r in replies {
                if let RouteNetlinkMessage::NewRule(r) = r
                    && let Some(spec) = parse_rule(&r)
                {
                    out.insert(spec);
                }
            }
        }
        Ok(out)
    }

    async fn addresses(&self, index: u32) -> Result<BTreeSet<IpNet>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(msg))
            .await
            .map_err(kernel(format!("dump addresses of link #{index}")))?;
        let mut out = BTreeSet::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the host's own address on point-to-point links;
            // IFA_ADDRESS otherwise.
            let mut addr = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.insert(net);
            }
        }
        Ok(out)
    }

    async fn routes(
        &self,
        index: u32,
    ) -> Result<(BTreeSet<RouteSpec>, BTreeSet<RouteSpec>), NetlinkError> {
        let mut ours = BTreeSet::new();
        let mut foreign = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            // Every table (strict checking filters by the oif alone).
            msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
            msg.attributes.push(RouteAttribute::Oif(index));
            let replies = self
                .dump(RouteNetlinkMessage::GetRoute(msg))
                .await
                .map_err(kernel(format!("dump routes of link #{index}")))?;
            for r in replies {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                if let Some((spec, proto)) = parse_route(&r, index) {
                    if proto == ROUTE_PROTOCOL {
                        ours.insert(spec);
                    } else {
                        foreign.insert(spec);
                    }
                }
            }
        }
        Ok((ours, foreign))
    }

    /// Carry out `actions` in order for `deployment`. Consecutive actions of
    /// the same independent kind (address or route adds/deletes) are
    /// pipelined. Stops at the first failing group and returns every error
    /// of that group, or before the next group once `stop()` is true.
    pub async fn execute(
        &self,
        deployment: &str,
        actions: &[Action],
        stop: impl Fn() -> bool,
    ) -> Result<(), Vec<NetlinkError>> {
        let mut i = 0;
        while i < actions.len() {
            if stop() {
                return Err(vec![NetlinkError::Interrupted]);
            }
            let first = &actions[i];
            let mut j = i + 1;
            if pipelinable(first) {
                while j < actions.len()
                    && std::mem::discriminant(&actions[j]) == std::mem::discriminant(first)
                {
                    j += 1;
                }
            }
            let group = &actions[i..j];
            let mut index_cache: Option<(String, u32)> = None;
            // Resolve link indexes once per group (all actions name links).
            let mut indexes = Vec::with_capacity(group.len());
            for a in group {
                let Some(link) = a.link() else {
                    indexes.push(0);
                    continue;
                };
                let idx = match &index_cache {
                    Some((n, idx)) if n == link => *idx,
                    _ if matches!(a, Action::CreateLink { .. }) => 0,
                    _ => {
                        let idx = self.index_of(link).await.map_err(|e| vec![e])?;
                        index_cache = Some((link.to_string(), idx));
                        idx
                    }
                };
                indexes.push(idx);
            }
            let results: Vec<(usize, Result<(), NetlinkError>)> =
                stream::iter(group.iter().zip(indexes).enumerate())
                    .map(|(k, (a, idx))| async move { (k, self.run(deployment, a, idx).await) })
                    .buffer_unordered(PIPELINE_DEPTH)
                    .collect()
                    .await;
            let mut errors: Vec<(usize, NetlinkError)> = results
                .into_iter()
                .filter_map(|(k, r)| r.err().map(|e| (k, e)))
                .collect();
            if !errors.is_empty() {
                errors.sort_by_key(|(k, _)| *k);
                return Err(errors.into_iter().map(|(_, e)| e).collect());
            }
            i = j;
        }
        Ok(())
    }

    async fn run(&self, deployment: &str, action: &Action, index: u32) -> Result<(), NetlinkError> {
        match action {
            Action::CreateLink {
                link,
                mtu,
                txqueuelen,
            } => {
                tun::create_persistent(link)?;
                let index = self.index_of(link).await?;
                let mut m = link_msg(index);
                m.attributes.push(LinkAttribute::Mtu(*mtu));
                m.attributes.push(LinkAttribute::TxQueueLen(*txqueuelen));
                self.ack(RouteNetlinkMessage::SetLink(m), 0)
                    .await
                    .map_err(kernel(format!(
                        "set mtu {mtu} and txqueuelen {txqueuelen} on new link {link}"
                    )))?;
                self.set_alias(deployment, link, index).await
            }
            Action::SetAlias { link } => self.set_alias(deployment, link, index).await,
            Action::SetTxQueueLen { link, to, .. } => {
                let mut m = link_msg(index);
                m.attributes.push(LinkAttribute::TxQueueLen(*to));
                self.ack(RouteNetlinkMessage::SetLink(m), 0)
                    .await
                    .map_err(kernel(format!("set txqueuelen {to} on link {link}")))
            }
            Action::SetMtu { link, to, .. } => {
                let mut m = link_msg(index);
                m.attributes.push(LinkAttribute::Mtu(*to));
                self.ack(RouteNetlinkMessage::SetLink(m), 0)
                    .await
                    .map_err(kernel(format!("set mtu {to} on link {link}")))
            }
            Action::SetUp { link } | Action::SetDown { link } => {
                let up = matches!(action, Action::SetUp { .. });
                let mut m = link_msg(index);
                m.header.change_mask = LinkFlags::Up;
                if up {
                    m.header.flags = LinkFlags::Up;
                }
                self.ack(RouteNetlinkMessage::SetLink(m), 0)
                    .await
                    .map_err(kernel(format!(
                        "set link {link} {}",
                        if up { "up" } else { "down" }
                    )))
            }
            Action::AddAddress { link, address } => self
                .ack(
                    RouteNetlinkMessage::NewAddress(addr_msg(index, address)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .await
                .map_err(kernel(format!("add address {address} to link {link}"))),
            Action::DelAddress { link, address } => {
                match self
                    .ack(RouteNetlinkMessage::DelAddress(addr_msg(index, address)), 0)
                    .await
                {
                    Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
                    r => r.map_err(kernel(format!("remove address {address} from link {link}"))),
                }
            }
            Action::AddRoute { link, route } => self
                .ack(
                    RouteNetlinkMessage::NewRoute(route_msg(index, route)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .await
                .map_err(kernel(format!("add route {route} dev {link}"))),
            Action::DelRoute { link, route } => {
                match self
                    .ack(RouteNetlinkMessage::DelRoute(route_msg(index, route)), 0)
                    .await
                {
                    Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
                    r => r.map_err(kernel(format!("remove route {route} dev {link}"))),
                }
            }
            Action::DeleteLink { link } => {
                match self
                    .ack(RouteNetlinkMessage::DelLink(link_msg(index)), 0)
                    .await
                {
                    Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                    r => r.map_err(kernel(format!("delete link {link}"))),
                }
            }
            Action::AddRule { rule } => self
                .ack(
                    RouteNetlinkMessage::NewRule(rule_msg(rule)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .await
                .map_err(kernel(format!("add policy rule {rule}"))),
            Action::DelRule { rule } => {
                match self
                    .ack(RouteNetlinkMessage::DelRule(rule_msg(rule)), 0)
                    .await
                {
                    Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
                    r => r.map_err(kernel(format!("remove policy rule {rule}"))),
                }
            }
        }
    }

    async fn set_alias(
        &self,
        deployment: &str,
        link: &str,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let mut m = link_msg(index);
        m.attributes
            .push(LinkAttribute::IfAlias(link_alias(deployment)));
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
            .await
            .map_err(kernel(format!("set alias on link {link}")))
    }
}

fn pipelinable(a: &Action) -> bool {
    matches!(
        a,
        Action::AddAddress { .. }
            | Action::DelAddress { .. }
            | Action::AddRoute { .. }
            | Action::DelRoute { .. }
            | Action::AddRule { .. }
            | Action::DelRule { .. }
    )
}

fn link_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn addr_msg(index: u32, net: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = net.prefix_len();
    m.header.family = match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    let ip = net.addr();
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    if let IpNet::V6(_) = net {
        // No duplicate address detection on a point-to-point tunnel: the
        // address is usable at once, even before the engine attaches.
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

fn route_msg(index: u32, r: &RouteSpec) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match r.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = r.dst.prefix_len();
    // Tables above 255 exist only as the RTA_TABLE attribute.
    m.header.table = u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.attributes.push(RouteAttribute::Table(r.table));
    m.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    m.header.scope = match r.dst {
        IpNet::V4(_) => RouteScope::Link,
        IpNet::V6(_) => RouteScope::Universe,
    };
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.network(),
        )));
    m.attributes.push(RouteAttribute::Oif(index));
    m.attributes.push(RouteAttribute::Priority(r.metric));
    m
}

/// A main-table unicast route via `index`, with its protocol number.
fn parse_route(r: &RouteMessage, index: u32) -> Option<(RouteSpec, u8)> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut oif = None;
    let mut dst: Option<IpAddr> = None;
    let mut metric = 0;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    if table == LOCAL_TABLE || oif != Some(index) {
        return None;
    }
    let dst = match (dst, r.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let net = IpNet::new(dst, r.header.destination_prefix_length).ok()?;
    let proto = u8::from(r.header.protocol);
    Some((
        RouteSpec {
            dst: net,
            metric,
            table,
        },
        proto,
    ))
}

fn rule_msg(r: &RuleSpec) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.action = RuleAction::ToTable;
    m.header.table = u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    if r.invert {
        m.header.flags = RuleFlags::Invert;
    }
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            ROUTE_PROTOCOL,
        )));
    if let Some(mark) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
        m.attributes.push(RuleAttribute::FwMask(u32::MAX));
    }
    if let Some(n) = r.suppress_prefixlength {
        m.attributes.push(RuleAttribute::SuppressPrefixLen(n));
    }
    m
}

/// A `lookup` rule with netman's protocol, in the shape netman writes
/// (anything else, e.g. with a source prefix, is not netman's).
fn parse_rule(r: &RuleMessage) -> Option<RuleSpec> {
    if r.header.action != RuleAction::ToTable || r.header.src_len != 0 || r.header.dst_len != 0 {
        return None;
    }
    let v6 = match r.header.family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut spec = RuleSpec {
        v6,
        priority: 0,
        fwmark: None,
        invert: r.header.flags.contains(RuleFlags::Invert),
        table: u32::from(r.header.table),
        suppress_prefixlength: None,
    };
    let mut ours = false;
    for attr in &r.attributes {
        match attr {
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == ROUTE_PROTOCOL,
            RuleAttribute::Priority(p) => spec.priority = *p,
            RuleAttribute::Table(t) => spec.table = *t,
            RuleAttribute::FwMark(m) => spec.fwmark = Some(*m),
            // The kernel reports "none" as -1.
            RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => {
                spec.suppress_prefixlength = Some(*n)
            }
            _ => {}
        }
    }
    if spec.fwmark == Some(0) {
        spec.fwmark = None;
    }
    ours.then_some(spec)
}
