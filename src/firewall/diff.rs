//! The firewall planner: desired × observed × record → [`Plan`], a pure
//! function, no I/O (golden-tested in `tests/firewall_plan.rs`). The plan
//! says what to show and what to do; [`super::script()`] renders it as nft
//! text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{
    ChainAttrs, ChainRecord, ChainRef, Desired, DesiredChain, DesiredInsert, FirewallError,
    Observed, ObservedRule, ObservedTable, Record, TABLE_FAMILY, TableRecord, TargetState,
    comment_prefix, table_name,
};

/// One change, as shown by `diff` and `apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    AddTable {
        table: String,
    },
    DeleteTable {
        table: String,
    },
    AddChain {
        chain: String,
        attrs: ChainAttrs,
    },
    DeleteChain {
        chain: String,
        attrs: Option<ChainAttrs>,
    },
    SetChain {
        chain: String,
        from: Option<ChainAttrs>,
        to: ChainAttrs,
    },
    AddRule {
        chain: String,
        rule: String,
    },
    DeleteRule {
        chain: String,
        rule: String,
    },
    /// A rule inserted into a chain netman does not own.
    InsertRule {
        target: ChainRef,
        rule: String,
    },
    /// One of netman's inserted rules removed (by handle).
    RemoveRule {
        target: ChainRef,
        rule: String,
        handle: u64,
    },
    Sysctl {
        key: String,
        from: String,
        to: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddTable { table } => write!(f, "+ table {TABLE_FAMILY} {table}"),
            Change::DeleteTable { table } => write!(f, "- table {TABLE_FAMILY} {table}"),
            Change::AddChain { chain, attrs } => write!(f, "+ chain {chain} ({attrs})"),
            Change::DeleteChain { chain, attrs } => match attrs {
                Some(a) => write!(f, "- chain {chain} ({a})"),
                None => write!(f, "- chain {chain}"),
            },
            Change::SetChain { chain, from, to } => match from {
                None => write!(f, "~ chain {chain} (regular chain -> {to})"),
                Some(from) => {
                    let mut parts = Vec::new();
                    if from.kind != to.kind {
                        parts.push(format!("type {} -> {}", from.kind, to.kind));
                    }
                    if from.hook != to.hook {
                        parts.push(format!("hook {} -> {}", from.hook, to.hook));
                    }
                    if from.priority != to.priority {
                        parts.push(format!("priority {} -> {}", from.priority, to.priority));
                    }
                    if from.policy != to.policy {
                        parts.push(format!("policy {} -> {}", from.policy, to.policy));
                    }
                    write!(f, "~ chain {chain} {}", parts.join(", "))
                }
            },
            Change::AddRule { chain, rule } => write!(f, "+ rule {chain}: {rule}"),
            Change::DeleteRule { chain, rule } => write!(f, "- rule {chain}: {rule}"),
            Change::InsertRule { target, rule } => write!(f, "+ rule {target}: {rule}"),
            Change::RemoveRule { target, rule, .. } => write!(f, "- rule {target}: {rule}"),
            Change::Sysctl { key, from, to } => write!(f, "~ sysctl {key} {from} -> {to}"),
        }
    }
}

/// A sysctl write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlSet {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// What to do: the changes to show, and the operations behind them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub table: TableOp,
    /// netman's inserted rules to delete, by handle.
    pub delete: Vec<(ChainRef, u64)>,
    /// Rules to insert, in manifest order.
    pub insert: Vec<DesiredInsert>,
    pub sysctls: Vec<SysctlSet>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether carrying it out writes to nftables.
    pub fn touches_nft(&self) -> bool {
        self.table != TableOp::Keep || !self.delete.is_empty() || !self.insert.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What happens to netman's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TableOp {
    /// Leave it as it is (in sync, or absent and not wanted).
    #[default]
    Keep,
    /// Replace it as a whole with the desired chains and rules.
    Rebuild,
    /// Remove it.
    Delete,
}

/// Above this many cells the rule diff of a chain falls back to "remove
/// all, add all" for the part that differs (the table is rebuilt anyway).
const MAX_DIFF_CELLS: usize = 1_000_000;

/// Compute what takes `observed` to `desired` for `deployment`. `record`
/// is what the last apply recorded (it identifies the live rules of
/// netman's table); `saved_sysctls` the sysctl values found before netman
/// changed them.
pub fn plan(
    deployment: &str,
    desired: &Desired,
    observed: &Observed,
    record: Option<&Record>,
    saved_sysctls: &BTreeMap<String, String>,
) -> Result<Plan, FirewallError> {
    let mut p = Plan::default();
    plan_table(
        deployment,
        desired,
        observed.table.as_ref(),
        record.and_then(|r| r.table.as_ref()),
        &mut p,
    );
    let errors = plan_inserts(deployment, desired, observed, &mut p);
    if !errors.is_empty() {
        return Err(FirewallError::Plan(errors));
    }
    plan_sysctls(desired, observed, saved_sysctls, &mut p);
    Ok(p)
}

/// A live rule of netman's table: the manifest rule the record says it is,
/// or unknown (never equal to any manifest rule).
enum Item<'a> {
    Known(&'a str),
    Unknown(&'a ObservedRule),
}

impl Item<'_> {
    fn is(&self, text: &str) -> bool {
        matches!(self, Item::Known(t) if *t == text)
    }

    fn display(&self) -> String {
        match self {
            Item::Known(t) => (*t).to_owned(),
            Item::Unknown(r) => rule_display(r),
        }
    }
}

fn rule_display(r: &ObservedRule) -> String {
    if r.text.is_empty() {
        format!("handle {}", r.handle)
    } else {
        r.text.clone()
    }
}

fn identify<'a>(rule: &'a ObservedRule, record: Option<&'a ChainRecord>) -> Item<'a> {
    record
        .and_then(|c| {
            c.rules
                .iter()
                .find(|r| r.handle == rule.handle && r.handle != 0 && r.expr == rule.expr)
        })
        .map_or(Item::Unknown(rule), |r| Item::Known(&r.text))
}

fn add_chain(c: &DesiredChain, changes: &mut Vec<Change>) {
    changes.push(Change::AddChain {
        chain: c.name.clone(),
        attrs: c.attrs.clone(),
    });
    for r in &c.rules {
        changes.push(Change::AddRule {
            chain: c.name.clone(),
            rule: r.text.clone(),
        });
    }
}

fn plan_table(
    deployment: &str,
    desired: &Desired,
    live: Option<&ObservedTable>,
    record: Option<&TableRecord>,
    p: &mut Plan,
) {
    let table = table_name(deployment);
    let mut changes = Vec::new();
    match live {
        None if desired.chains.is_empty() => {}
        Some(_) if desired.chains.is_empty() => {
            p.changes.push(Change::DeleteTable { table });
            p.table = TableOp::Delete;
            return;
        }
        None => {
            changes.push(Change::AddTable { table });
            for c in &desired.chains {
                add_chain(c, &mut changes);
            }
        }
        Some(live) => {
            for lc in &live.chains {
                if !desired.chains.iter().any(|c| c.name == lc.name) {
                    changes.push(Change::DeleteChain {
                        chain: lc.name.clone(),
                        attrs: lc.attrs.clone(),
                    });
                }
            }
            for dc in &desired.chains {
                let Some(lc) = live.chains.iter().find(|c| c.name == dc.name) else {
                    add_chain(dc, &mut changes);
                    continue;
                };
                if lc.attrs.as_ref() != Some(&dc.attrs) {
                    changes.push(Change::SetChain {
                        chain: dc.name.clone(),
                        from: lc.attrs.clone(),
                        to: dc.attrs.clone(),
                    });
                }
                let rec = record.and_then(|r| r.chains.iter().find(|c| c.name == dc.name));
                let items: Vec<Item<'_>> = lc.rules.iter().map(|r| identify(r, rec)).collect();
                let want: Vec<&str> = dc.rules.iter().map(|r| r.text.as_str()).collect();
                for op in seq_diff(&items, &want) {
                    changes.push(match op {
                        Op::Del(i) => Change::DeleteRule {
                            chain: dc.name.clone(),
                            rule: items[i].display(),
                        },
                        Op::Add(j) => Change::AddRule {
                            chain: dc.name.clone(),
                            rule: want[j].to_owned(),
                        },
                    });
                }
            }
        }
    }
    if !changes.is_empty() {
        p.table = TableOp::Rebuild;
        p.changes.extend(changes);
    }
}

enum Op {
    Del(usize),
    Add(usize),
}

/// The edits (in order) that turn `live` into `want`, keeping a longest
/// common subsequence.
fn seq_diff(live: &[Item<'_>], want: &[&str]) -> Vec<Op> {
    let mut start = 0;
    while start < live.len() && start < want.len() && live[start].is(want[start]) {
        start += 1;
    }
    let (mut end_l, mut end_w) = (live.len(), want.len());
    while end_l > start && end_w > start && live[end_l - 1].is(want[end_w - 1]) {
        end_l -= 1;
        end_w -= 1;
    }
    let a = &live[start..end_l];
    let b = &want[start..end_w];
    let mut ops = Vec::new();
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        ops.extend((0..a.len()).map(|i| Op::Del(start + i)));
        ops.extend((0..b.len()).map(|j| Op::Add(start + j)));
        return ops;
    }
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i].is(b[j]) {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is(b[j]) {
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            ops.push(Op::Del(start + i));
            i += 1;
        } else {
            ops.push(Op::Add(start + j));
            j += 1;
        }
    }
    ops.extend((i..a.len()).map(|i| Op::Del(start + i)));
    ops.extend((j..b.len()).map(|j| Op::Add(start + j)));
    ops
}

fn hash_of<'a>(r: &'a ObservedRule, prefix: &str) -> Option<&'a str> {
    r.comment.as_deref().and_then(|c| c.strip_prefix(prefix))
}

fn plan_inserts(
    deployment: &str,
    desired: &Desired,
    observed: &Observed,
    p: &mut Plan,
) -> Vec<String> {
    let prefix = comment_prefix(deployment);
    let mut errors = Vec::new();
    let mut wanted: BTreeSet<(&ChainRef, &str)> = BTreeSet::new();
    let mut inserts = Vec::new();
    for d in &desired.inserts {
        let at = d
            .chain_pos
            .as_ref()
            .map(|p| format!("{p}: "))
            .unwrap_or_default();
        let target = observed.targets.iter().find(|t| t.chain == d.chain);
        let Some(target) = target.filter(|t| t.state == TargetState::Exists) else {
            let c = &d.chain;
            errors.push(match target.map(|t| t.state) {
                Some(TargetState::NoTable) => format!(
                    "{at}table {} {} does not exist, so rules cannot be inserted into its chain {}; netman inserts only into existing chains (create them first)",
                    c.family, c.table, c.chain
                ),
                _ => format!(
                    "{at}chain {} does not exist in table {} {}; netman inserts only into existing chains (create it first)",
                    c.chain, c.family, c.table
                ),
            });
            continue;
        };
        wanted.insert((&d.chain, d.hash.as_str()));
        if !target
            .ours
            .iter()
            .any(|r| hash_of(r, &prefix) == Some(d.hash.as_str()))
        {
            inserts.push(d);
        }
    }
    // netman's rules that are no longer wanted, or duplicates. A rule
    // without this deployment's comment is never touched.
    let mut kept = BTreeSet::new();
    for t in &observed.targets {
        for r in &t.ours {
            let Some(h) = hash_of(r, &prefix) else {
                continue;
            };
            if !(wanted.contains(&(&t.chain, h)) && kept.insert((&t.chain, h))) {
                p.changes.push(Change::RemoveRule {
                    target: t.chain.clone(),
                    rule: rule_display(r),
                    handle: r.handle,
                });
                p.delete.push((t.chain.clone(), r.handle));
            }
        }
    }
    for d in inserts {
        p.changes.push(Change::InsertRule {
            target: d.chain.clone(),
            rule: d.rule.clone(),
        });
        p.insert.push(d.clone());
    }
    errors
}

fn plan_sysctls(
    desired: &Desired,
    observed: &Observed,
    saved: &BTreeMap<String, String>,
    p: &mut Plan,
) {
    let mut set = |key: &str, from: &str, to: &str| {
        p.changes.push(Change::Sysctl {
            key: key.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        });
        p.sysctls.push(SysctlSet {
            key: key.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        });
    };
    if desired.forwarding {
        for (key, live) in &observed.sysctls {
            if live != "1" {
                set(key, live, "1");
            }
        }
    } else {
        for (key, prev) in saved {
            if let Some(live) = observed.sysctls.get(key)
                && live != prev
            {
                set(key, live, prev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_diff_keeps_the_common_rules() {
        let live = [
            Item::Known("a"),
            Item::Known("b"),
            Item::Known("c"),
            Item::Known("d"),
        ];
        let ops = seq_diff(&live, &["a", "c", "x", "d"]);
        let shown: Vec<String> = ops
            .iter()
            .map(|o| match o {
                Op::Del(i) => format!("-{i}"),
                Op::Add(j) => format!("+{j}"),
            })
            .collect();
        assert_eq!(shown, vec!["-1", "+2"]);
    }
}
