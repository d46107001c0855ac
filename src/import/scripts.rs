//! The firewall half of a wg-quick file: recognise the forwarding and NAT
//! commands hub configurations carry in `PostUp`/`PostDown` and turn them
//! into netman's own `forwarding:` and `firewall:` (so a migrated hub keeps
//! forwarding), without executing anything and without passing any text
//! of the file through.
//!
//! A command is recognised only when it is one of a closed set of forms,
//! parsed into a typed [`FwRule`] (or a forwarding sysctl):
//! - `iptables|ip6tables [-t filter] -A|-I FORWARD [-i IF] [-o IF] [-s CIDR]
//!   [-d CIDR] [-m state --state S | -m conntrack --ctstate S] -j ACCEPT`
//!   with at least one of `-i`/`-o` and `S` made of `RELATED`/`ESTABLISHED`;
//! - `iptables|ip6tables -t nat -A|-I POSTROUTING -o IF [-s CIDR] [-d CIDR]
//!   -j MASQUERADE | -j SNAT --to-source ADDR`;
//! - `sysctl [-w] [-q] net.ipv4.ip_forward=1` (also
//!   `net.ipv4.conf.all.forwarding`, `net.ipv6.conf.all.forwarding`, with
//!   `/` or `.`), which becomes `forwarding: true`;
//! - in a down script (`PreDown`/`PostDown`), the `-D` of a rule an up
//!   script added, and the `=0` of a forwarding sysctl an up script set: the
//!   undo, which netman does itself at `down`.
//!
//! `%i` (or the tunnel's own name) is the tunnel. Interface names must be
//! 1 to 15 of `[A-Za-z0-9_.-]` and addresses must parse as addresses of the
//! command's family before they become rule text, and a command with any
//! character outside `[A-Za-z0-9_./:,%=+-]`, space and tab (quotes, `$`,
//! `&`, `|`, `>`, line breaks of any kind, ...) is shell syntax and not
//! recognised. Everything else, including other tables, chains and
//! targets, unknown options and `nft` commands, stays a note.
//!
//! iptables rules match one family; netman's table is `inet`, so every
//! rule starts with `meta nfproto ipv4` or `meta nfproto ipv6` (the forms
//! follow `iptables-translate`/`ip6tables-translate`, without counters).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;

/// One command of a wg-quick script, as written.
pub(super) struct Script<'a> {
    /// Line of the file.
    pub line: usize,
    /// The key as written (`PostUp`, `postdown`, ...).
    pub key: &'a str,
    pub cmd: &'a str,
}

/// The address family an iptables binary works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn nfproto(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn addr_keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An interface name that can go into a rule between double quotes:
/// 1 to 15 characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn new(s: &str) -> Option<IfName> {
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && s != "."
            && s != "..";
        ok.then(|| IfName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The chain of netman's table a rule goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    /// `forward`: filter, hook forward.
    Forward = 0,
    /// `postrouting`: nat, hook postrouting.
    Postrouting = 1,
}

/// What a rule does with a matching packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Masquerade,
    Snat(IpAddr),
}

/// `-m state --state` / `-m conntrack --ctstate`, of the states import
/// knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtState {
    pub established: bool,
    pub related: bool,
}

/// A recognised iptables rule, typed: every field was checked, so the nft
/// text made from it ([`FwRule::nft`]) holds nothing from the file but
/// validated names and parsed addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FwRule {
    pub family: Family,
    pub chain: Chain,
    pub iif: Option<IfName>,
    pub oif: Option<IfName>,
    pub saddr: Option<IpNet>,
    pub daddr: Option<IpNet>,
    pub ct_state: Option<CtState>,
    pub verdict: Verdict,
}

impl FwRule {
    /// The rule in nft syntax for netman's `inet` table.
    pub fn nft(&self) -> String {
        let mut s = format!("meta nfproto {}", self.family.nfproto());
        if let Some(i) = &self.iif {
            let _ = write!(s, " iifname \"{}\"", i.as_str());
        }
        if let Some(o) = &self.oif {
            let _ = write!(s, " oifname \"{}\"", o.as_str());
        }
        let kw = self.family.addr_keyword();
        if let Some(a) = &self.saddr {
            let _ = write!(s, " {kw} saddr {}", Prefix(a));
        }
        if let Some(a) = &self.daddr {
            let _ = write!(s, " {kw} daddr {}", Prefix(a));
        }
        if let Some(ct) = self.ct_state {
            let states: Vec<&str> = [(ct.established, "established"), (ct.related, "related")]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
            let _ = write!(s, " ct state {}", states.join(","));
        }
        match self.verdict {
            Verdict::Accept => s.push_str(" accept"),
            Verdict::Masquerade => s.push_str(" masquerade"),
            Verdict::Snat(a) => {
                let _ = write!(s, " snat {kw} to {a}");
            }
        }
        s
    }
}

/// A prefix as iptables-translate writes it: a host without its length.
struct Prefix<'a>(&'a IpNet);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Where an iptables command puts its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `-A`.
    Append,
    /// `-I` (at the top).
    Insert,
    /// `-D`.
    Delete,
}

/// A forwarding sysctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sysctl {
    /// `net.ipv4.ip_forward` or `net.ipv4.conf.all.forwarding`.
    V4Forwarding,
    /// `net.ipv6.conf.all.forwarding`.
    V6Forwarding,
}

/// A recognised command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recognised {
    Rule {
        op: Op,
        rule: FwRule,
    },
    /// Each setting and whether it turns forwarding on (`1`) or off (`0`).
    Sysctl(Vec<(Sysctl, bool)>),
}

/// Why a command was not recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a firewall command at all (`echo`, `ip link`, ...).
    NotFirewall,
    /// A firewall command import does not translate; the reason, for the
    /// user.
    Firewall(String),
}

fn refuse<T>(reason: impl Into<String>) -> Result<T, Refused> {
    Err(Refused::Firewall(reason.into()))
}

/// The characters a recognised command is made of (besides space and tab).
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_./:,%=+-".contains(&b)
}

/// What kind of program the first word names.
enum Program {
    Iptables(Family),
    Sysctl,
    Nft,
    Other,
}

fn program(word: &str) -> Program {
    let base = word.rsplit('/').next().unwrap_or(word);
    match base {
        "iptables" | "iptables-nft" | "iptables-legacy" => Program::Iptables(Family::V4),
        "ip6tables" | "ip6tables-nft" | "ip6tables-legacy" => Program::Iptables(Family::V6),
        "sysctl" => Program::Sysctl,
        "nft" => Program::Nft,
        _ => Program::Other,
    }
}

/// Recognise one command of a script; `tunnel` is the tunnel's name (what
/// `%i` stands for), `None` when that name cannot go into a rule.
pub fn recognise(cmd: &str, tunnel: Option<&IfName>) -> Result<Recognised, Refused> {
    let first = cmd.split_whitespace().next().unwrap_or("");
    let prog = program(first);
    if matches!(prog, Program::Other) {
        return Err(Refused::NotFirewall);
    }
    if !cmd.bytes().all(|b| is_plain(b) || b == b' ' || b == b'\t') {
        return refuse("shell syntax or a negation: only plain words are translated");
    }
    let words: Vec<&str> = cmd.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let args = words.get(1..).unwrap_or_default();
    match prog {
        Program::Iptables(family) => iptables(family, args, tunnel),
        Program::Sysctl => sysctl(args),
        Program::Nft => refuse("nft commands are not translated"),
        Program::Other => Err(Refused::NotFirewall),
    }
}

fn sysctl(args: &[&str]) -> Result<Recognised, Refused> {
    let mut settings = Vec::new();
    for a in args {
        match *a {
            "-w" | "-q" | "-wq" | "-qw" | "--write" | "--quiet" => {}
            a if a.starts_with('-') => return refuse(format!("sysctl option {a}")),
            a => {
                let Some((key, value)) = a.split_once('=') else {
                    return refuse("sysctl without KEY=VALUE");
                };
                let which = match key.replace('/', ".").as_str() {
                    "net.ipv4.ip_forward" | "net.ipv4.conf.all.forwarding" => Sysctl::V4Forwarding,
                    "net.ipv6.conf.all.forwarding" => Sysctl::V6Forwarding,
                    _ => return refuse(format!("sysctl {key} is not a forwarding switch")),
                };
                let on = match value {
                    "1" => true,
                    "0" => false,
                    _ => return refuse(format!("sysctl {key} value {value}")),
                };
                settings.push((which, on));
            }
        }
    }
    if settings.is_empty() {
        return refuse("sysctl without KEY=VALUE");
    }
    Ok(Recognised::Sysctl(settings))
}

/// The value after option `opt`, once.
fn value<'a>(
    it: &mut std::iter::Peekable<std::slice::Iter<'_, &'a str>>,
    slot: &mut Option<&'a str>,
    opt: &str,
) -> Result<(), Refused> {
    let Some(v) = it.next() else {
        return refuse(format!("{opt} without a value"));
    };
    if v.starts_with('-') {
        return refuse(format!("{opt} without a value"));
    }
    if slot.replace(v).is_some() {
        return refuse(format!("{opt} given twice"));
    }
    Ok(())
}

fn iptables(family: Family, args: &[&str], tunnel: Option<&IfName>) -> Result<Recognised, Refused> {
    let mut table = None;
    let mut command: Option<(Op, &str)> = None;
    let mut iif = None;
    let mut oif = None;
    let mut src = None;
    let mut dst = None;
    let mut target = None;
    let mut to_source = None;
    let mut matches: Vec<&str> = Vec::new();
    let mut states = None;
    // The first option import does not know, reported after the table and
    // chain (a rule of another chain is better named by its chain).
    let mut unknown = None;
    let mut it = args.iter().peekable();
    while let Some(&a) = it.next() {
        match a {
            "-t" | "--table" => value(&mut it, &mut table, a)?,
            "-A" | "--append" | "-I" | "--insert" | "-D" | "--delete" => {
                let op = match a {
                    "-A" | "--append" => Op::Append,
                    "-I" | "--insert" => Op::Insert,
                    _ => Op::Delete,
                };
                let mut chain = None;
                value(&mut it, &mut chain, a)?;
                if command.is_some() {
                    return refuse("more than one of -A, -I, -D");
                }
                command = chain.map(|c| (op, c));
                // `-I CHAIN 1` is the top too; `-D CHAIN N` deletes by
                // position, which import cannot tell.
                if let Some(n) = it.peek().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                    if op == Op::Insert && **n == "1" {
                        it.next();
                    } else {
                        return refuse(format!("rule position {n}"));
                    }
                }
            }
            "-i" | "--in-interface" => value(&mut it, &mut iif, a)?,
            "-o" | "--out-interface" => value(&mut it, &mut oif, a)?,
            "-s" | "--source" | "--src" => value(&mut it, &mut src, a)?,
            "-d" | "--destination" | "--dst" => value(&mut it, &mut dst, a)?,
            "-j" | "--jump" => value(&mut it, &mut target, a)?,
            "--to-source" | "--to" => value(&mut it, &mut to_source, a)?,
            "-m" | "--match" => {
                let mut m = None;
                value(&mut it, &mut m, a)?;
                let m = m.unwrap_or_default();
                if !matches!(m, "state" | "conntrack") {
                    return refuse(format!("match {m}"));
                }
                if matches.contains(&m) {
                    return refuse(format!("match {m} given twice"));
                }
                matches.push(m);
            }
            "--state" | "--ctstate" => {
                let needs = if a == "--state" { "state" } else { "conntrack" };
                if !matches.contains(&needs) {
                    return refuse(format!("{a} without -m {needs}"));
                }
                value(&mut it, &mut states, a)?;
            }
            // Wait for the xtables lock (optionally for N seconds).
            "-w" | "--wait" => {
                if it
                    .peek()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                {
                    it.next();
                }
            }
            a => {
                unknown.get_or_insert(a);
            }
        }
    }
    let Some((op, chain_name)) = command else {
        return refuse(match unknown {
            Some(a) => format!("option {a}"),
            None => "no -A, -I or -D".to_string(),
        });
    };
    let table = table.unwrap_or("filter");
    let chain = match (table, chain_name) {
        ("filter", "FORWARD") => Chain::Forward,
        ("nat", "POSTROUTING") => Chain::Postrouting,
        ("filter" | "nat", c) => {
            return refuse(format!(
                "chain {c} of table {table}: import translates FORWARD and nat POSTROUTING"
            ));
        }
        (t, _) => return refuse(format!("table {t}")),
    };
    if let Some(a) = unknown {
        return refuse(format!("option {a}"));
    }
    let iface = |v: Option<&str>| -> Result<Option<IfName>, Refused> {
        match v {
            None => Ok(None),
            Some(v) if v == "%i" || tunnel.is_some_and(|t| t.as_str() == v) => match tunnel {
                Some(t) => Ok(Some(t.clone())),
                None => refuse(
                    "the tunnel's name (from the file name) is not 1 to 15 of [A-Za-z0-9_.-]",
                ),
            },
            Some(v) => IfName::new(v).map(Some).ok_or_else(|| {
                Refused::Firewall(format!(
                    "interface {v}: a name is 1 to 15 of [A-Za-z0-9_.-], wildcards are not translated"
                ))
            }),
        }
    };
    let prefix = |v: Option<&str>| -> Result<Option<IpNet>, Refused> {
        let Some(v) = v else { return Ok(None) };
        let net = v
            .parse::<IpNet>()
            .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| Refused::Firewall(format!("address {v}")))?;
        if Family::of(net.addr()) != family {
            return refuse(format!("address {v} of the other family"));
        }
        Ok(Some(net.trunc()))
    };
    let iif = iface(iif)?;
    let oif = iface(oif)?;
    let saddr = prefix(src)?;
    let daddr = prefix(dst)?;
    let ct_state = match states {
        None => None,
        Some(s) => {
            let mut ct = CtState {
                established: false,
                related: false,
            };
            for state in s.split(',') {
                match state {
                    "ESTABLISHED" => ct.established = true,
                    "RELATED" => ct.related = true,
                    _ => return refuse(format!("state {state}")),
                }
            }
            Some(ct)
        }
    };
    let verdict = match (chain, target) {
        (_, None) => return refuse("no -j"),
        (Chain::Forward, Some("ACCEPT")) => Verdict::Accept,
        (Chain::Postrouting, Some("MASQUERADE")) => Verdict::Masquerade,
        (Chain::Postrouting, Some("SNAT")) => {
            let Some(to) = to_source else {
                return refuse("SNAT without --to-source");
            };
            let addr: IpAddr = to
                .parse()
                .map_err(|_| Refused::Firewall(format!("--to-source {to}: one address only")))?;
            if Family::of(addr) != family {
                return refuse(format!("--to-source {to} of the other family"));
            }
            Verdict::Snat(addr)
        }
        (_, Some(t)) => return refuse(format!("target {t} in {chain_name}")),
    };
    if to_source.is_some() && !matches!(verdict, Verdict::Snat(_)) {
        return refuse("--to-source without -j SNAT");
    }
    match chain {
        Chain::Forward if iif.is_none() && oif.is_none() => {
            return refuse("FORWARD rule without -i or -o");
        }
        Chain::Postrouting if oif.is_none() => return refuse("POSTROUTING rule without -o"),
        Chain::Postrouting if iif.is_some() => return refuse("-i in POSTROUTING"),
        Chain::Postrouting if ct_state.is_some() => {
            return refuse("a state match in nat POSTROUTING");
        }
        _ => {}
    }
    Ok(Recognised::Rule {
        op,
        rule: FwRule {
            family,
            chain,
            iif,
            oif,
            saddr,
            daddr,
            ct_state,
            verdict,
        },
    })
}

/// A rule import carries over, with the script line it came from.
pub struct ImportedRule {
    pub rule: FwRule,
    pub line: usize,
    /// `PostUp iptables -A ...`: the key and the command as written (for a
    /// comment; reduced to one line when written).
    pub source: String,
}

/// What the scripts of a file become.
pub(super) struct Translation {
    pub forwarding: bool,
    /// Rules of the `forward` chain, then of `postrouting`, each in order.
    pub rules: Vec<ImportedRule>,
    /// Notes, each with the line it is about.
    pub notes: Vec<(usize, String)>,
}

fn is_up(key: &str) -> Option<bool> {
    match key.to_ascii_lowercase().as_str() {
        "preup" | "postup" => Some(true),
        "predown" | "postdown" => Some(false),
        _ => None,
    }
}

fn chain_name(c: Chain) -> &'static str {
    match c {
        Chain::Forward => "forward",
        Chain::Postrouting => "postrouting",
    }
}

/// Translate the scripts of a file whose tunnel is named `tunnel`.
pub(super) fn translate(scripts: &[Script<'_>], tunnel: &str) -> Translation {
    let tunnel = IfName::new(tunnel);
    let mut notes = Vec::new();
    // Per chain: the rules inserted at the top (latest first once
    // reversed) and the appended ones, in order; and each rule's line.
    let mut top: [Vec<ImportedRule>; 2] = [Vec::new(), Vec::new()];
    let mut appended: [Vec<ImportedRule>; 2] = [Vec::new(), Vec::new()];
    let mut imported: HashMap<FwRule, usize> = HashMap::new();
    // The forwarding sysctls turned on, each with its first line.
    let mut sysctl_on: HashMap<Sysctl, usize> = HashMap::new();
    let not_executed = |s: &Script<'_>, why: &Refused| match why {
        Refused::NotFirewall => format!(
            "line {}: {} command, not executed: {}",
            s.line, s.key, s.cmd
        ),
        Refused::Firewall(reason) => format!(
            "line {}: {} firewall command, not executed, not translated ({reason}); declare it under `firewall:`: {}",
            s.line, s.key, s.cmd
        ),
    };
    let recognised: Vec<(bool, Result<Recognised, Refused>)> = scripts
        .iter()
        .map(|s| {
            (
                is_up(s.key).unwrap_or(true),
                recognise(s.cmd, tunnel.as_ref()),
            )
        })
        .collect();

    // Up scripts first: what they add is what the down scripts undo.
    for (s, (up, r)) in scripts.iter().zip(&recognised) {
        if !up {
            continue;
        }
        let note = match r {
            Err(why) => not_executed(s, why),
            Ok(Recognised::Rule { op: Op::Delete, .. }) => not_executed(
                s,
                &Refused::Firewall(
                    "-D in an up script: netman starts from a table of its own".into(),
                ),
            ),
            Ok(Recognised::Rule { op, rule }) => {
                if let Some(first) = imported.get(rule) {
                    format!(
                        "line {}: {} {}: the same rule as line {first}, imported once",
                        s.line, s.key, s.cmd
                    )
                } else {
                    imported.insert(rule.clone(), s.line);
                    let list = match op {
                        Op::Insert => &mut top[rule.chain as usize],
                        _ => &mut appended[rule.chain as usize],
                    };
                    list.push(ImportedRule {
                        rule: rule.clone(),
                        line: s.line,
                        source: format!("{} {}", s.key, s.cmd),
                    });
                    format!(
                        "line {}: {} {}: not executed; imported into firewall chain {}: {}",
                        s.line,
                        s.key,
                        s.cmd,
                        chain_name(rule.chain),
                        rule.nft()
                    )
                }
            }
            Ok(Recognised::Sysctl(settings)) => {
                if settings.iter().all(|(_, on)| *on) {
                    for (which, _) in settings {
                        sysctl_on.entry(*which).or_insert(s.line);
                    }
                    format!(
                        "line {}: {} {}: not executed; imported as `forwarding: true` (netman sets net.ipv4.ip_forward and net.ipv6.conf.all.forwarding to 1 while up and restores them at down)",
                        s.line, s.key, s.cmd
                    )
                } else {
                    not_executed(
                        s,
                        &Refused::Firewall("turning forwarding off in an up script".into()),
                    )
                }
            }
        };
        notes.push((s.line, note));
    }

    // Down scripts: the undo of what was imported is netman's own `down`.
    for (s, (up, r)) in scripts.iter().zip(&recognised) {
        if *up {
            continue;
        }
        let undone = match r {
            Ok(Recognised::Rule {
                op: Op::Delete,
                rule,
            }) => imported
                .get(rule)
                .map(|&line| (line, "netman deletes its table at `down`")),
            // Every setting back to 0 was turned on by an up script.
            Ok(Recognised::Sysctl(settings)) => settings
                .iter()
                .map(|(which, on)| sysctl_on.get(which).filter(|_| !on))
                .try_fold(0, |max, line| line.map(|&l| max.max(l)))
                .map(|line| {
                    (
                        line,
                        "netman restores the forwarding sysctls it found at `down`",
                    )
                }),
            _ => None,
        };
        let note = match (undone, r) {
            (Some((line, how)), _) => format!(
                "line {}: {} {}: not executed; understood as the undo of line {line} ({how})",
                s.line, s.key, s.cmd
            ),
            (None, Err(why)) => not_executed(s, why),
            (None, Ok(_)) => not_executed(
                s,
                &Refused::Firewall("in a down script it undoes nothing import carried over".into()),
            ),
        };
        notes.push((s.line, note));
    }

    let mut chains = top.into_iter().zip(appended).map(|(mut top, appended)| {
        top.reverse();
        top.extend(appended);
        top
    });
    let forward = chains.next().unwrap_or_default();
    let postrouting = chains.next().unwrap_or_default();
    let forwarding = !sysctl_on.is_empty() || !forward.is_empty();
    if let Some(first) = forward.iter().map(|r| r.line).min() {
        if sysctl_on.is_empty() {
            notes.push((
                first,
                format!(
                    "line {first}: FORWARD rules need a host that forwards: imported as `forwarding: true` (wg-quick left that to the host, e.g. /etc/sysctl.conf; netman sets net.ipv4.ip_forward and net.ipv6.conf.all.forwarding to 1 while up and restores them at down)"
                ),
            ));
        }
        notes.push((
            first,
            format!(
                "line {first}: the FORWARD rules went into the host's FORWARD chain, whose policy netman does not own; netman's chain forward keeps policy accept, and if the host's FORWARD policy is drop (Docker, ufw) an accept in netman's table does not let the packets through: add the rules there with `firewall.insert` too"
            ),
        ));
    }
    let mut rules = forward;
    rules.extend(postrouting);
    Translation {
        forwarding,
        rules,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wg0() -> Option<IfName> {
        IfName::new("wg0")
    }

    fn nft(cmd: &str) -> Result<(Op, String), Refused> {
        match recognise(cmd, wg0().as_ref())? {
            Recognised::Rule { op, rule } => Ok((op, rule.nft())),
            Recognised::Sysctl(s) => panic!("{cmd}: a sysctl {s:?}"),
        }
    }

    /// Each recognised form and its nft text (checked against
    /// iptables-translate and `nft -c` in an inet table).
    #[test]
    fn recognised_forms_and_their_nft_text() {
        use Op::*;
        for (cmd, op, want) in [
            (
                "iptables -A FORWARD -i %i -j ACCEPT",
                Append,
                r#"meta nfproto ipv4 iifname "wg0" accept"#,
            ),
            (
                "iptables -A FORWARD -o %i -j ACCEPT",
                Append,
                r#"meta nfproto ipv4 oifname "wg0" accept"#,
            ),
            (
                "ip6tables -A FORWARD -i wg0 -j ACCEPT",
                Append,
                r#"meta nfproto ipv6 iifname "wg0" accept"#,
            ),
            (
                "/usr/sbin/iptables -w -I FORWARD 1 -i %i -o eth0 -j ACCEPT",
                Insert,
                r#"meta nfproto ipv4 iifname "wg0" oifname "eth0" accept"#,
            ),
            (
                "iptables -A FORWARD -i eth0 -o %i -m state --state RELATED,ESTABLISHED -j ACCEPT",
                Append,
                r#"meta nfproto ipv4 iifname "eth0" oifname "wg0" ct state established,related accept"#,
            ),
            (
                "iptables-nft --append FORWARD --in-interface eth0 --out-interface %i -m conntrack --ctstate ESTABLISHED -j ACCEPT",
                Append,
                r#"meta nfproto ipv4 iifname "eth0" oifname "wg0" ct state established accept"#,
            ),
            (
                "iptables -A FORWARD -i %i -s 10.8.0.0/24 -d 192.168.1.7 -j ACCEPT",
                Append,
                r#"meta nfproto ipv4 iifname "wg0" ip saddr 10.8.0.0/24 ip daddr 192.168.1.7 accept"#,
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
                Append,
                r#"meta nfproto ipv4 oifname "eth0" masquerade"#,
            ),
            (
                "iptables -t nat -A POSTROUTING -s 10.8.0.1/24 -o enp0s3 -j MASQUERADE",
                Append,
                r#"meta nfproto ipv4 oifname "enp0s3" ip saddr 10.8.0.0/24 masquerade"#,
            ),
            (
                "ip6tables -t nat -A POSTROUTING -s fd42:42:42::/64 -o eth0 -j MASQUERADE",
                Append,
                r#"meta nfproto ipv6 oifname "eth0" ip6 saddr fd42:42:42::/64 masquerade"#,
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0.100 -j SNAT --to-source 203.0.113.5",
                Append,
                r#"meta nfproto ipv4 oifname "eth0.100" snat ip to 203.0.113.5"#,
            ),
            (
                "ip6tables --table nat -A POSTROUTING -o %i -j SNAT --to 2001:db8::1",
                Append,
                r#"meta nfproto ipv6 oifname "wg0" snat ip6 to 2001:db8::1"#,
            ),
            (
                "iptables -D FORWARD -i %i -j ACCEPT",
                Delete,
                r#"meta nfproto ipv4 iifname "wg0" accept"#,
            ),
            (
                "iptables\t-t nat  -D POSTROUTING -o eth0 -j MASQUERADE",
                Delete,
                r#"meta nfproto ipv4 oifname "eth0" masquerade"#,
            ),
        ] {
            assert_eq!(nft(cmd), Ok((op, want.to_string())), "{cmd}");
        }
        // The tunnel's own name is the tunnel, as `%i` is.
        assert_eq!(
            recognise("iptables -A FORWARD -i wg0 -j ACCEPT", wg0().as_ref()),
            recognise("iptables -A FORWARD -i %i -j ACCEPT", wg0().as_ref())
        );
    }

    #[test]
    fn forwarding_sysctls_are_recognised() {
        use Sysctl::*;
        for (cmd, want) in [
            (
                "sysctl -w net.ipv4.ip_forward=1",
                vec![(V4Forwarding, true)],
            ),
            ("sysctl net.ipv4.ip_forward=0", vec![(V4Forwarding, false)]),
            (
                "sysctl -q -w net.ipv4.conf.all.forwarding=1 net/ipv6/conf/all/forwarding=1",
                vec![(V4Forwarding, true), (V6Forwarding, true)],
            ),
            (
                "/sbin/sysctl -qw net.ipv6.conf.all.forwarding=1",
                vec![(V6Forwarding, true)],
            ),
        ] {
            assert_eq!(
                recognise(cmd, wg0().as_ref()),
                Ok(Recognised::Sysctl(want)),
                "{cmd}"
            );
        }
    }

    /// Everything outside the closed set is refused, with a reason.
    #[test]
    fn everything_else_is_refused() {
        for (cmd, why) in [
            ("iptables -A INPUT -i %i -j ACCEPT", "chain INPUT"),
            ("iptables -A FORWARD -i %i -j DROP", "target DROP"),
            (
                "iptables -t mangle -A FORWARD -i %i -j ACCEPT",
                "table mangle",
            ),
            ("iptables -t raw -A PREROUTING -j NOTRACK", "table raw"),
            (
                "iptables -t nat -A PREROUTING -p tcp --dport 80 -j DNAT --to 10.0.0.2",
                "chain PREROUTING of table nat",
            ),
            (
                "iptables -A INPUT -p udp --dport 51820 -j ACCEPT",
                "chain INPUT",
            ),
            ("iptables -A FORWARD -i %i -p udp -j ACCEPT", "option -p"),
            (
                "iptables -A FORWARD -i %i -j ACCEPT --random",
                "option --random",
            ),
            ("iptables -A FORWARD -j ACCEPT", "without -i or -o"),
            (
                "iptables -t nat -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE",
                "without -o",
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0 -j ACCEPT",
                "target ACCEPT",
            ),
            (
                "iptables -A FORWARD -o eth0 -j MASQUERADE",
                "target MASQUERADE",
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0 -j SNAT",
                "without --to-source",
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0 -j SNAT --to-source 192.0.2.1:1024-2000",
                "one address only",
            ),
            (
                "iptables -t nat -A POSTROUTING -o eth0 -j SNAT --to-source 2001:db8::1",
                "other family",
            ),
            (
                "iptables -A FORWARD -i %i -o eth0 -j ACCEPT --to-source 1.2.3.4",
                "--to-source without",
            ),
            (
                "iptables -t nat -A POSTROUTING -i %i -o eth0 -j MASQUERADE",
                "-i in POSTROUTING",
            ),
            (
                "iptables -A FORWARD -i %i -s fd00::/8 -j ACCEPT",
                "other family",
            ),
            (
                "ip6tables -A FORWARD -i %i -d 10.0.0.0/8 -j ACCEPT",
                "other family",
            ),
            (
                "iptables -A FORWARD -i %i -s 10.0.0.0/33 -j ACCEPT",
                "address 10.0.0.0/33",
            ),
            (
                "iptables -A FORWARD -i %i -s 10.0.0.0/8,10.1.0.0/16 -j ACCEPT",
                "address",
            ),
            ("iptables -A FORWARD -i eth+ -j ACCEPT", "interface eth+"),
            ("iptables -A FORWARD -i %i+ -j ACCEPT", "interface %i+"),
            (
                "iptables -A FORWARD -i averyveryverylongname -j ACCEPT",
                "interface",
            ),
            ("iptables -A FORWARD -i .. -j ACCEPT", "interface .."),
            (
                "iptables -A FORWARD -i %i -m state --state NEW -j ACCEPT",
                "state NEW",
            ),
            (
                "iptables -A FORWARD -i %i --state ESTABLISHED -j ACCEPT",
                "without -m state",
            ),
            (
                "iptables -A FORWARD -i %i -m comment --comment x -j ACCEPT",
                "match comment",
            ),
            ("iptables -A FORWARD -i %i -i eth0 -j ACCEPT", "given twice"),
            (
                "iptables -A FORWARD -A FORWARD -i %i -j ACCEPT",
                "more than one",
            ),
            ("iptables -I FORWARD 2 -i %i -j ACCEPT", "position 2"),
            ("iptables -D FORWARD 1", "position 1"),
            ("iptables -i %i -j ACCEPT", "no -A"),
            ("iptables -A FORWARD -i %i", "no -j"),
            ("iptables -A FORWARD -i", "without a value"),
            (
                "iptables -A FORWARD -i -o eth0 -j ACCEPT",
                "without a value",
            ),
            ("iptables -A FORWARD ! -i %i -j ACCEPT", "shell syntax"),
            ("iptables -F", "option -F"),
            ("iptables -P FORWARD ACCEPT", "option -P"),
            (
                "iptables -A FORWARD -i %i -j ACCEPT && echo ok",
                "shell syntax",
            ),
            ("iptables -A FORWARD -i $IF -j ACCEPT", "shell syntax"),
            ("iptables -A FORWARD -i \"wg0\" -j ACCEPT", "shell syntax"),
            (
                "iptables -A FORWARD -i %i -j ACCEPT > /dev/null",
                "shell syntax",
            ),
            ("iptables -A FORWARD -i `id` -j ACCEPT", "shell syntax"),
            (
                "iptables -A FORWARD -i %i -j ACCEPT\r-j DROP",
                "shell syntax",
            ),
            (
                "iptables -A FORWARD -i %i -j ACCEPT\u{2028}x",
                "shell syntax",
            ),
            ("iptables -A FORWARD -i %i\u{85}-j ACCEPT", "shell syntax"),
            (
                "nft add rule inet filter forward iifname wg0 accept",
                "nft commands",
            ),
            ("sysctl -p", "sysctl option -p"),
            (
                "sysctl -w net.ipv4.conf.eth0.rp_filter=0",
                "not a forwarding switch",
            ),
            ("sysctl -w net.ipv4.ip_forward=2", "value 2"),
            ("sysctl -w", "without KEY=VALUE"),
        ] {
            match recognise(cmd, wg0().as_ref()) {
                Err(Refused::Firewall(reason)) => {
                    assert!(reason.contains(why), "{cmd}: {reason:?} lacks {why:?}");
                }
                other => panic!("{cmd}: {other:?}"),
            }
        }
        for cmd in [
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
            "ip link set up dev %i",
            "",
        ] {
            assert_eq!(
                recognise(cmd, wg0().as_ref()),
                Err(Refused::NotFirewall),
                "{cmd}"
            );
        }
    }

    /// Names and prefixes that could add nft syntax never get into a rule;
    /// neither does a tunnel whose name (from the file name) could.
    #[test]
    fn hostile_names_and_prefixes_are_refused() {
        for name in [
            "eth0\"",
            "eth0\" accept; flush ruleset",
            "eth0\"accept",
            "e{t}h",
            "eth0#",
            "eth0\\",
            "eth0;",
            "eth0\r",
            "eth0\u{2028}",
            "ëth0",
            "eth0*",
            "",
        ] {
            assert_eq!(IfName::new(name), None, "{name:?}");
            for cmd in [
                format!("iptables -A FORWARD -i {name} -j ACCEPT"),
                format!("iptables -t nat -A POSTROUTING -o {name} -j MASQUERADE"),
            ] {
                assert!(
                    matches!(recognise(&cmd, wg0().as_ref()), Err(Refused::Firewall(_))),
                    "{cmd:?}"
                );
            }
        }
        for prefix in [
            "10.0.0.0/8\"",
            "10.0.0.0/8;",
            "10.0.0.0/8 accept",
            "{10.0.0.0/8,1.2.3.4}",
            "10.0.0.0/8#",
            "10.0.0.0-10.0.0.9",
            "fe80::1%eth0",
            "any",
        ] {
            let cmd = format!("iptables -A FORWARD -i %i -s {prefix} -j ACCEPT");
            assert!(
                matches!(recognise(&cmd, wg0().as_ref()), Err(Refused::Firewall(_))),
                "{cmd:?}"
            );
        }
        for tunnel in ["wg\"0", "wg 0", "wg;0", "my-very-long-vpn-name"] {
            assert_eq!(IfName::new(tunnel), None);
            let t = translate(
                &[Script {
                    line: 3,
                    key: "PostUp",
                    cmd: "iptables -A FORWARD -i %i -j ACCEPT",
                }],
                tunnel,
            );
            assert!(t.rules.is_empty() && !t.forwarding, "{tunnel:?}");
            assert!(
                t.notes[0].1.contains("the tunnel's name"),
                "{tunnel:?}: {:?}",
                t.notes
            );
        }
        for good in ["wg0", "eth0.100", "enp0s31f6", "br-lan_1", "a"] {
            assert_eq!(IfName::new(good).map(|n| n.0), Some(good.to_string()));
        }
    }

    fn scripts<'a>(lines: &[(usize, &'a str, &'a str)]) -> Vec<Script<'a>> {
        lines
            .iter()
            .map(|&(line, key, cmd)| Script { line, key, cmd })
            .collect()
    }

    #[test]
    fn down_scripts_that_undo_up_scripts_are_consumed() {
        let t = translate(
            &scripts(&[
                (5, "PostUp", "iptables -A FORWARD -i %i -j ACCEPT"),
                (
                    5,
                    "PostUp",
                    "iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
                ),
                (6, "PostUp", "sysctl -w net.ipv4.ip_forward=1"),
                (7, "PostDown", "iptables -D FORWARD -i %i -j ACCEPT"),
                (
                    7,
                    "PostDown",
                    "iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE",
                ),
                (7, "PostDown", "iptables -D FORWARD -o %i -j ACCEPT"),
                (8, "PostDown", "sysctl -w net.ipv4.ip_forward=0"),
                (8, "PostDown", "iptables -A FORWARD -o %i -j ACCEPT"),
                (9, "PostDown", "sysctl -w net.ipv6.conf.all.forwarding=0"),
            ]),
            "wg0",
        );
        assert!(t.forwarding);
        let texts: Vec<String> = t.rules.iter().map(|r| r.rule.nft()).collect();
        assert_eq!(
            texts,
            vec![
                r#"meta nfproto ipv4 iifname "wg0" accept"#,
                r#"meta nfproto ipv4 oifname "eth0" masquerade"#
            ]
        );
        let notes: Vec<&str> = t.notes.iter().map(|(_, n)| n.as_str()).collect();
        for want in [
            "line 7: PostDown iptables -D FORWARD -i %i -j ACCEPT: not executed; understood as the undo of line 5 (netman deletes its table at `down`)",
            "line 7: PostDown iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE: not executed; understood as the undo of line 5",
            "line 7: PostDown firewall command, not executed, not translated (in a down script it undoes nothing import carried over); declare it under `firewall:`: iptables -D FORWARD -o %i -j ACCEPT",
            "line 8: PostDown sysctl -w net.ipv4.ip_forward=0: not executed; understood as the undo of line 6",
            "line 8: PostDown firewall command, not executed, not translated (in a down script it undoes nothing import carried over); declare it under `firewall:`: iptables -A FORWARD -o %i -j ACCEPT",
            "line 9: PostDown firewall command, not executed, not translated (in a down script it undoes nothing import carried over); declare it under `firewall:`: sysctl -w net.ipv6.conf.all.forwarding=0",
            "line 6: PostUp sysctl -w net.ipv4.ip_forward=1: not executed; imported as `forwarding: true`",
            "line 5: the FORWARD rules went into the host's FORWARD chain, whose policy netman does not own",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(want)),
                "no note {want:?} in {notes:#?}"
            );
        }
        // With the sysctl in the file, forwarding is not called inferred.
        assert!(
            !notes
                .iter()
                .any(|n| n.contains("need a host that forwards"))
        );
    }

    #[test]
    fn order_duplicates_and_inferred_forwarding() {
        let t = translate(
            &scripts(&[
                (
                    3,
                    "PreUp",
                    "iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
                ),
                (
                    4,
                    "PostUp",
                    "iptables -t nat -I POSTROUTING -o eth1 -j MASQUERADE",
                ),
                (4, "PostUp", "iptables -A FORWARD -o %i -j ACCEPT"),
                (5, "PostUp", "iptables-nft -A FORWARD -o wg0 -j ACCEPT"),
                (5, "PostUp", "ip6tables -A FORWARD -o %i -j ACCEPT"),
                (6, "PostUp", "iptables -D FORWARD -o %i -j ACCEPT"),
            ]),
            "wg0",
        );
        assert!(t.forwarding, "FORWARD rules imply forwarding");
        let got: Vec<(usize, String)> = t.rules.iter().map(|r| (r.line, r.rule.nft())).collect();
        assert_eq!(
            got,
            vec![
                (4, r#"meta nfproto ipv4 oifname "wg0" accept"#.to_string()),
                (5, r#"meta nfproto ipv6 oifname "wg0" accept"#.to_string()),
                (
                    4,
                    r#"meta nfproto ipv4 oifname "eth1" masquerade"#.to_string()
                ),
                (
                    3,
                    r#"meta nfproto ipv4 oifname "eth0" masquerade"#.to_string()
                ),
            ]
        );
        assert_eq!(
            t.rules[0].source,
            "PostUp iptables -A FORWARD -o %i -j ACCEPT"
        );
        let notes: Vec<&str> = t.notes.iter().map(|(_, n)| n.as_str()).collect();
        for want in [
            "line 5: PostUp iptables-nft -A FORWARD -o wg0 -j ACCEPT: the same rule as line 4, imported once",
            "line 4: FORWARD rules need a host that forwards: imported as `forwarding: true`",
            "line 6: PostUp firewall command, not executed, not translated (-D in an up script",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(want)),
                "no note {want:?} in {notes:#?}"
            );
        }

        // NAT alone does not make a host forward.
        let t = translate(
            &scripts(&[(
                3,
                "PostUp",
                "iptables -t nat -A POSTROUTING -o %i -j MASQUERADE",
            )]),
            "wg0",
        );
        assert!(!t.forwarding);
        assert_eq!(t.rules.len(), 1);
    }
}
