//! nftables rules and IP forwarding, reconciled like the links.
//!
//! The shape is the same as for links: [`Desired`] (from the manifest) ×
//! [`Observed`] (read from nft and /proc/sys by [`observe`]) ×
//! [`Record`] (from the state file) → [`plan()`] (pure) → [`script()`] (pure:
//! one nft script, applied in one atomic transaction) → [`execute`] →
//! verify → [`revert`] on failure.
//!
//! The pure steps have a file each: `diff.rs` (the plan), `script.rs` (nft
//! text, and nft's errors mapped back to the manifest), `record.rs` (what
//! the state file keeps after an apply or a revert). `nft.rs` and
//! `sysctl.rs` are the thin executors; this file holds the model and the
//! steps that do I/O.
//!
//! - **netman's table** `table inet netman_<name>` holds the manifest's base
//!   chains. It is rebuilt as a whole in one transaction whenever anything
//!   in it differs, and left alone (no nft write at all) when nothing does.
//!   Drift does not depend on nft's formatting of rule text: right after an
//!   apply, the [`Record`] keeps the kernel's listing of every rule (its
//!   handle and normalised JSON `expr`) next to the manifest text it came
//!   from. A live rule whose handle and expr match the record *is* that
//!   manifest rule; any other live rule is unknown.
//! - **Inserted rules** go into chains netman does not own, carrying the
//!   comment `netman:<name>:<hash>` (hash of family, table, chain and rule
//!   text). Rules without such a comment are never touched.
//! - **Forwarding** sets `net.ipv4.ip_forward` and
//!   `net.ipv6.conf.all.forwarding` to 1; the values found before are kept
//!   in the state file and restored when forwarding is no longer wanted.
//!
//! A manifest without `firewall` and `forwarding`, and no recorded state,
//! never runs nft nor touches /proc/sys.

mod diff;
pub mod nft;
mod record;
mod script;
pub mod sysctl;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::error::ErrorKind;
use crate::manifest::{Interface, MSS_CLAMP_CHAIN, Manifest, MssClamp, Pos};

pub use diff::{Change, Plan, SysctlSet, TableOp, plan};
pub use record::{ChainRecord, Record, RuleRecord, TableRecord, record_after, remap_record};
pub use script::{Script, map_nft_errors, revert_script, script};

/// The family of netman's own table.
pub const TABLE_FAMILY: &str = "inet";

/// `netman_<deployment>`: the table netman owns.
pub fn table_name(deployment: &str) -> String {
    format!("netman_{deployment}")
}

/// `netman:<deployment>:`: the comment prefix of the rules netman inserts.
pub fn comment_prefix(deployment: &str) -> String {
    format!("netman:{deployment}:")
}

/// A chain somewhere in the ruleset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainRef {
    pub family: String,
    pub table: String,
    pub chain: String,
}

/// `FAMILY TABLE CHAIN`, as nft commands name a chain (the scripts use it).
impl fmt::Display for ChainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

/// What makes a chain a base chain, as nft lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainAttrs {
    #[serde(rename = "type")]
    pub kind: String,
    pub hook: String,
    pub priority: i64,
    pub policy: String,
}

impl fmt::Display for ChainAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hook {} priority {} policy {}",
            self.kind, self.hook, self.priority, self.policy
        )
    }
}

// ---------------------------------------------------------------------------
// Desired state

/// What the manifest asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Base chains of netman's table (none: no table). Rules netman adds
    /// on its own account belong here too, with `pos: None`: the diff, the
    /// script and the record then treat them as they treat the manifest's,
    /// and nft's errors on them quote netman's command.
    pub chains: Vec<DesiredChain>,
    pub inserts: Vec<DesiredInsert>,
    pub forwarding: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredChain {
    pub name: String,
    pub attrs: ChainAttrs,
    pub rules: Vec<DesiredRule>,
    pub pos: Option<Pos>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredRule {
    pub text: String,
    pub pos: Option<Pos>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInsert {
    pub chain: ChainRef,
    pub rule: String,
    /// [`rule_hash`] of chain and rule.
    pub hash: String,
    /// Where the rule was written.
    pub pos: Option<Pos>,
    /// Where the target chain was named.
    pub chain_pos: Option<Pos>,
}

/// Short hash that identifies an inserted rule: 12 hex digits of the
/// SHA-256 of family, table, chain and rule text.
pub fn rule_hash(chain: &ChainRef, rule: &str) -> String {
    let mut h = Sha256::new();
    for part in [&chain.family, &chain.table, &chain.chain] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(rule.as_bytes());
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Desired {
    pub fn from_manifest(m: &Manifest) -> Desired {
        let mut chains: Vec<DesiredChain> = m
            .firewall
            .chains
            .iter()
            .map(|c| DesiredChain {
                name: c.name.clone(),
                attrs: ChainAttrs {
                    kind: c.kind.as_str().to_owned(),
                    hook: c.hook.as_str().to_owned(),
                    priority: i64::from(c.priority),
                    policy: c.policy.as_str().to_owned(),
                },
                rules: c
                    .rules
                    .iter()
                    .map(|r| DesiredRule {
                        text: r.text.clone(),
                        pos: Some(r.pos.clone()),
                    })
                    .collect(),
                pos: Some(c.pos.clone()),
            })
            .collect();
        chains.extend(mss_clamp_chain(&m.interface));
        let inserts = m
            .firewall
            .insert
            .iter()
            .map(|i| {
                let chain = ChainRef {
                    family: i.family.as_str().to_owned(),
                    table: i.table.clone(),
                    chain: i.chain.clone(),
                };
                DesiredInsert {
                    hash: rule_hash(&chain, &i.rule.text),
                    chain,
                    rule: i.rule.text.clone(),
                    pos: Some(i.rule.pos.clone()),
                    chain_pos: Some(i.pos.clone()),
                }
            })
            .collect();
        Desired {
            chains,
            inserts,
            forwarding: m.forwarding,
        }
    }

    /// Whether this asks anything of nftables.
    pub fn needs_nft(&self) -> bool {
        !self.chains.is_empty() || !self.inserts.is_empty()
    }

    /// The chains the inserted rules go into.
    pub fn insert_chains(&self) -> BTreeSet<ChainRef> {
        self.inserts.iter().map(|i| i.chain.clone()).collect()
    }
}

/// The base chain of `interface.mss_clamp` (`None` when off): SYNs
/// forwarded into the tunnel get at most the route's MTU-based MSS
/// (`rt mtu`), SYNs forwarded out of it at most the tunnel's (interface
/// MTU - 40 for IPv4, - 60 for IPv6), so the host on the other side never
/// sends a segment the tunnel cannot carry. A fixed MSS applies to both.
/// nft only ever lowers an MSS here (`size > N` guards the fixed ones).
/// At `priority mangle`, before filter chains, like iptables' TCPMSS in
/// the mangle table.
pub fn mss_clamp_chain(interface: &Interface) -> Option<DesiredChain> {
    const SYN: &str = "tcp flags & (syn | rst) == syn";
    let i = &interface.name;
    let lower_to = |n: u32| format!("tcp option maxseg size > {n} tcp option maxseg size set {n}");
    let rules = match interface.mss_clamp {
        MssClamp::Off => return None,
        MssClamp::Auto => {
            let v4 = interface.mtu.saturating_sub(40);
            let v6 = interface.mtu.saturating_sub(60);
            vec![
                format!("oifname \"{i}\" {SYN} tcp option maxseg size set rt mtu"),
                format!("iifname \"{i}\" meta nfproto ipv4 {SYN} {}", lower_to(v4)),
                format!("iifname \"{i}\" meta nfproto ipv6 {SYN} {}", lower_to(v6)),
            ]
        }
        MssClamp::Fixed(n) => vec![
            format!("oifname \"{i}\" {SYN} {}", lower_to(u32::from(n))),
            format!("iifname \"{i}\" {SYN} {}", lower_to(u32::from(n))),
        ],
    };
    Some(DesiredChain {
        name: MSS_CLAMP_CHAIN.to_owned(),
        attrs: ChainAttrs {
            kind: "filter".to_owned(),
            hook: "forward".to_owned(),
            priority: -150,
            policy: "accept".to_owned(),
        },
        rules: rules
            .into_iter()
            .map(|text| DesiredRule { text, pos: None })
            .collect(),
        pos: None,
    })
}

// ---------------------------------------------------------------------------
// Observed state

/// What nft and /proc/sys report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// netman's table; `None` when it does not exist (or was not looked at).
    #[serde(default)]
    pub table: Option<ObservedTable>,
    /// The chains netman inserts into (or did), with netman's rules in them.
    #[serde(default)]
    pub targets: Vec<ObservedTarget>,
    /// Forwarding sysctls by key (absent: not read, or not in this kernel).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTable {
    pub chains: Vec<ObservedChain>,
    /// `nft -a -s list table ...` as printed; loadable by `nft -f` (the
    /// handles are comments), used to restore the table after a failure.
    #[serde(default)]
    pub listing: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedChain {
    pub name: String,
    /// `None` for a regular (non-base) chain.
    #[serde(default)]
    pub attrs: Option<ChainAttrs>,
    #[serde(default)]
    pub rules: Vec<ObservedRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRule {
    pub handle: u64,
    /// The rule's statements as nft lists them in JSON (stateless).
    #[serde(default)]
    pub expr: serde_json::Value,
    #[serde(default)]
    pub comment: Option<String>,
    /// The rule as nft prints it, without netman's comment (for messages).
    #[serde(default)]
    pub text: String,
}

/// Whether a chain netman inserts into exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Exists,
    NoChain,
    NoTable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTarget {
    pub chain: ChainRef,
    pub state: TargetState,
    /// The rules in it whose comment starts with `netman:<name>:`, in
    /// listing order.
    #[serde(default)]
    pub ours: Vec<ObservedRule>,
}

// ---------------------------------------------------------------------------
// Errors

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error(
        "cannot run `nft`: {0}; the manifest's firewall section and interface.mss_clamp (on by default with forwarding) need nftables (Debian package `nftables`)"
    )]
    NftMissing(String),
    #[error("`nft {args}` failed: {reason}")]
    Nft { args: String, reason: String },
    #[error("`nft {args}`: cannot parse its output: {reason}")]
    Parse { args: String, reason: String },
    /// nft rejected rules of the manifest (positions in the manifest).
    #[error("nft rejected the firewall rules:\n{}", .0.join("\n"))]
    Rejected(Vec<String>),
    /// The ruleset cannot take the manifest's rules (e.g. a missing chain).
    #[error("{}", .0.join("\n"))]
    Plan(Vec<String>),
    #[error("sysctl {key}: {reason}")]
    Sysctl { key: String, reason: String },
    #[error("verification failed: {0}")]
    Verify(String),
}

impl FirewallError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FirewallError::NftMissing(_) | FirewallError::Rejected(_) | FirewallError::Plan(_) => {
                ErrorKind::Invalid
            }
            FirewallError::Nft { .. }
            | FirewallError::Parse { .. }
            | FirewallError::Sysctl { .. }
            | FirewallError::Verify(_) => ErrorKind::Transient,
        }
    }
}

// ---------------------------------------------------------------------------
// Executors (thin: the decisions are in `plan`)

/// Carry out `script` (one atomic nft transaction; nothing when empty),
/// then the sysctl writes. An nft failure changes nothing.
pub fn execute(script: &Script, sysctls: &[SysctlSet]) -> Result<(), FirewallError> {
    if !script.is_empty() {
        nft::run_script(script, false)?;
    }
    for s in sysctls {
        sysctl::write(&s.key, &s.to)?;
    }
    Ok(())
}

/// Have nft check `script` against the live ruleset without applying it
/// (nothing when empty). Rejections name the manifest positions.
pub fn check(script: &Script) -> Result<(), FirewallError> {
    if script.is_empty() {
        return Ok(());
    }
    nft::run_script(script, true)
}

/// Observe what a reconcile of `desired` needs to see, given the record.
/// Runs no nft at all when neither asks anything of nftables, and reads
/// no sysctl unless forwarding is wanted or values are recorded.
pub fn observe(
    deployment: &str,
    desired: &Desired,
    record: Option<&Record>,
    saved_sysctls: &BTreeMap<String, String>,
) -> Result<Observed, FirewallError> {
    let mut out = Observed::default();
    if desired.needs_nft() || record.is_some() {
        out.table = nft::list_table(TABLE_FAMILY, &table_name(deployment))?;
        let mut chains = desired.insert_chains();
        if let Some(r) = record {
            chains.extend(r.chains.iter().cloned());
        }
        let prefix = comment_prefix(deployment);
        for chain in chains {
            out.targets.push(nft::list_target(&chain, &prefix)?);
        }
    }
    if desired.forwarding || !saved_sysctls.is_empty() {
        for key in sysctl::FORWARDING_KEYS {
            if let Some(v) = sysctl::read(key)? {
                out.sysctls.insert(key.to_owned(), v);
            }
        }
    }
    Ok(out)
}

/// After a failure: put nftables and the sysctls back as they were in
/// `snapshot` (observed before the apply), and return the record that
/// describes the restored state (the prior record, with the handles of a
/// re-created table).
pub fn revert(
    deployment: &str,
    desired: &Desired,
    snapshot: &Observed,
    prior: Option<&Record>,
    intent: Option<&Record>,
    saved_sysctls: &BTreeMap<String, String>,
) -> Result<Option<Record>, Vec<String>> {
    let mut errors = Vec::new();
    let now =
        observe(deployment, desired, intent, saved_sysctls).map_err(|e| vec![e.to_string()])?;
    let s = revert_script(deployment, snapshot, &now);
    if !s.is_empty()
        && let Err(e) = nft::run_script(&s, false)
    {
        errors.push(format!("restoring nftables: {e}"));
    }
    for (key, value) in &snapshot.sysctls {
        if now.sysctls.get(key) != Some(value)
            && let Err(e) = sysctl::write(key, value)
        {
            errors.push(e.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let restored = if snapshot.table.is_some() && !s.is_empty() {
        nft::list_table(TABLE_FAMILY, &table_name(deployment)).map_err(|e| vec![e.to_string()])?
    } else {
        now.table.clone()
    };
    Ok(prior.map(|p| Record {
        table: p
            .table
            .as_ref()
            .map(|t| remap_record(t, snapshot.table.as_ref(), restored.as_ref())),
        chains: p.chains.clone(),
    }))
}

/// Observed values shared by the unit tests of the submodules.
#[cfg(test)]
mod fixtures {
    use super::{ObservedChain, ObservedRule, ObservedTable};

    pub fn rule(handle: u64, text: &str, comment: Option<&str>) -> ObservedRule {
        ObservedRule {
            handle,
            expr: serde_json::json!([{ "stand-in": text }]),
            comment: comment.map(str::to_owned),
            text: text.into(),
        }
    }

    pub fn table(handles: &[u64]) -> ObservedTable {
        ObservedTable {
            chains: vec![ObservedChain {
                name: "forward".into(),
                attrs: None,
                rules: handles
                    .iter()
                    .map(|h| rule(*h, &format!("rule {h}"), None))
                    .collect(),
            }],
            listing: "table inet netman_a { # handle 1\n}\n".into(),
        }
    }
}
