//! The firewall planner and the nft scripts it leads to: pure functions, no
//! I/O (golden-tested in `tests/firewall_plan.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::manifest::Pos;

use super::{
    ChainRecord, ChainRef, Change, Desired, DesiredChain, FirewallError, Observed, ObservedRule,
    ObservedTable, Plan, Record, RuleRecord, SysctlSet, TABLE_FAMILY, TableRecord, TargetState,
    comment_prefix, table_name,
};

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

// ---------------------------------------------------------------------------
// Scripts

/// Where a script line came from in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    pos: Pos,
    /// Characters of the line before the manifest's text.
    prefix: usize,
}

/// An nft script (for `nft -f -`): one command per line, each line
/// remembering the manifest value it came from, so that nft's
/// `LINE:COL` errors can be reported as manifest positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub lines: Vec<String>,
    origins: Vec<Option<Origin>>,
}

impl Script {
    fn push(&mut self, line: String, origin: Option<Origin>) {
        self.lines.push(line);
        self.origins.push(origin);
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    /// The manifest origin of 1-based line `line`.
    fn origin(&self, line: usize) -> Option<&Origin> {
        self.origins.get(line.checked_sub(1)?)?.as_ref()
    }
}

/// The nft script that carries out `plan` for `deployment`: the table
/// rebuild (or removal), deletions and insertions, in one transaction.
pub fn script(deployment: &str, desired: &Desired, plan: &Plan) -> Script {
    let t = format!("{TABLE_FAMILY} {}", table_name(deployment));
    let mut s = Script::default();
    match plan.table {
        TableOp::Keep => {}
        TableOp::Delete => {
            // `add` first: the delete cannot fail on a table gone meanwhile.
            s.push(format!("add table {t}"), None);
            s.push(format!("delete table {t}"), None);
        }
        TableOp::Rebuild => {
            s.push(format!("add table {t}"), None);
            s.push(format!("delete table {t}"), None);
            s.push(format!("add table {t}"), None);
            for c in &desired.chains {
                let a = &c.attrs;
                s.push(
                    format!(
                        "add chain {t} {} {{ type {} hook {} priority {} ; policy {} ; }}",
                        c.name, a.kind, a.hook, a.priority, a.policy
                    ),
                    c.pos.clone().map(|pos| Origin { pos, prefix: 0 }),
                );
                for r in &c.rules {
                    let prefix = format!("add rule {t} {} ", c.name);
                    let origin = r.pos.clone().map(|pos| Origin {
                        pos,
                        prefix: prefix.chars().count(),
                    });
                    s.push(format!("{prefix}{}", r.text), origin);
                }
            }
        }
    }
    for (c, handle) in &plan.delete {
        s.push(
            format!(
                "delete rule {} {} {} handle {handle}",
                c.family, c.table, c.chain
            ),
            None,
        );
    }
    // Each insert goes to the top of its chain: insert in reverse so the
    // manifest's first rule ends up first.
    let comment = comment_prefix(deployment);
    for d in plan.insert.iter().rev() {
        let c = &d.chain;
        let prefix = format!("insert rule {} {} {} ", c.family, c.table, c.chain);
        let origin = d.pos.clone().map(|pos| Origin {
            pos,
            prefix: prefix.chars().count(),
        });
        s.push(
            format!("{prefix}{} comment \"{comment}{}\"", d.rule, d.hash),
            origin,
        );
    }
    s
}

/// The record of a successful apply: each desired rule of netman's table
/// paired, by position, with the kernel's rule in `observed` (listed right
/// after the apply). `None` when nothing asks anything of nftables.
pub fn record_after(desired: &Desired, observed: &Observed) -> Result<Option<Record>, String> {
    if !desired.needs_nft() {
        return Ok(None);
    }
    let table = if desired.chains.is_empty() {
        None
    } else {
        let live = observed
            .table
            .as_ref()
            .ok_or_else(|| "netman's table does not exist after the apply".to_owned())?;
        let mut chains = Vec::with_capacity(desired.chains.len());
        for dc in &desired.chains {
            let lc = live
                .chains
                .iter()
                .find(|c| c.name == dc.name)
                .ok_or_else(|| format!("chain {} is missing after the apply", dc.name))?;
            if lc.rules.len() != dc.rules.len() {
                return Err(format!(
                    "chain {} has {} rules after the apply, expected {}",
                    dc.name,
                    lc.rules.len(),
                    dc.rules.len()
                ));
            }
            chains.push(ChainRecord {
                name: dc.name.clone(),
                rules: dc
                    .rules
                    .iter()
                    .zip(&lc.rules)
                    .map(|(d, l)| RuleRecord {
                        text: d.text.clone(),
                        handle: l.handle,
                        expr: l.expr.clone(),
                    })
                    .collect(),
            });
        }
        Some(TableRecord { chains })
    };
    Ok(Some(Record {
        table,
        chains: desired.insert_chains(),
    }))
}

fn same_table(a: &ObservedTable, b: &ObservedTable) -> bool {
    a.chains.len() == b.chains.len()
        && a.chains.iter().zip(&b.chains).all(|(x, y)| {
            x.name == y.name
                && x.attrs == y.attrs
                && x.rules.len() == y.rules.len()
                && x.rules
                    .iter()
                    .zip(&y.rules)
                    .all(|(r, s)| r.handle == s.handle && r.expr == s.expr)
        })
}

/// The script that takes nftables from `now` back to `snapshot` (both
/// observed for the same deployment): netman's table re-created from the
/// snapshot's listing (or removed), netman's inserted rules re-inserted or
/// deleted. Foreign rules are not in either and stay untouched.
pub fn revert_script(deployment: &str, snapshot: &Observed, now: &Observed) -> Script {
    let t = format!("{TABLE_FAMILY} {}", table_name(deployment));
    let mut s = Script::default();
    match (&snapshot.table, &now.table) {
        (None, None) => {}
        (None, Some(_)) => {
            s.push(format!("add table {t}"), None);
            s.push(format!("delete table {t}"), None);
        }
        (Some(snap), now_table) => {
            if !now_table.as_ref().is_some_and(|n| same_table(snap, n)) {
                s.push(format!("add table {t}"), None);
                s.push(format!("delete table {t}"), None);
                for line in snap.listing.lines() {
                    s.push(line.to_owned(), None);
                }
            }
        }
    }
    let chains: BTreeSet<&ChainRef> = snapshot
        .targets
        .iter()
        .chain(&now.targets)
        .map(|t| &t.chain)
        .collect();
    let ours = |o: &'_ Observed, c: &ChainRef| -> Vec<ObservedRule> {
        o.targets
            .iter()
            .find(|t| &t.chain == c)
            .map(|t| t.ours.clone())
            .unwrap_or_default()
    };
    for c in chains {
        let before = ours(snapshot, c);
        let after = ours(now, c);
        let count = |rules: &[ObservedRule]| {
            let mut m: HashMap<Option<String>, usize> = HashMap::new();
            for r in rules {
                *m.entry(r.comment.clone()).or_default() += 1;
            }
            m
        };
        let mut budget = count(&before);
        for r in &after {
            match budget.get_mut(&r.comment) {
                Some(n) if *n > 0 => *n -= 1,
                _ => s.push(
                    format!(
                        "delete rule {} {} {} handle {}",
                        c.family, c.table, c.chain, r.handle
                    ),
                    None,
                ),
            }
        }
        let mut have = count(&after);
        for r in before.iter().rev() {
            match have.get_mut(&r.comment) {
                Some(n) if *n > 0 => *n -= 1,
                _ => {
                    let comment = r
                        .comment
                        .as_ref()
                        .map(|c| format!(" comment \"{c}\""))
                        .unwrap_or_default();
                    s.push(
                        format!(
                            "insert rule {} {} {} {}{comment}",
                            c.family, c.table, c.chain, r.text
                        ),
                        None,
                    );
                }
            }
        }
    }
    s
}

/// `prior` (recorded before a failed apply, describing `snapshot`) adjusted
/// to the table as `restored` after the revert: a rule at position i of a
/// chain in the snapshot is at position i in the restored table. Recorded
/// rules that were already gone in the snapshot stay gone (handle 0).
pub fn remap_record(
    prior: &TableRecord,
    snapshot: Option<&ObservedTable>,
    restored: Option<&ObservedTable>,
) -> TableRecord {
    let find = |t: Option<&'_ ObservedTable>, name: &str| {
        t.and_then(|t| t.chains.iter().find(|c| c.name == name).cloned())
    };
    TableRecord {
        chains: prior
            .chains
            .iter()
            .map(|rc| {
                let snap = find(snapshot, &rc.name);
                let now = find(restored, &rc.name);
                ChainRecord {
                    name: rc.name.clone(),
                    rules: rc
                        .rules
                        .iter()
                        .map(|rr| {
                            let at = snap.as_ref().and_then(|c| {
                                c.rules
                                    .iter()
                                    .position(|r| r.handle == rr.handle && r.expr == rr.expr)
                            });
                            match at.and_then(|i| now.as_ref().and_then(|c| c.rules.get(i))) {
                                Some(l) => RuleRecord {
                                    text: rr.text.clone(),
                                    handle: l.handle,
                                    expr: l.expr.clone(),
                                },
                                None => RuleRecord {
                                    text: rr.text.clone(),
                                    handle: 0,
                                    expr: rr.expr.clone(),
                                },
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// nft's error output for `script` as messages naming the manifest:
/// `FILE:LINE:COL: firewall.chains[0].rules[2]: nft: <nft's message>`.
/// Lines netman generated itself are quoted instead.
pub fn map_nft_errors(stderr: &str, script: &Script) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        let message = if let Some(idx) = line.find(": Error: ") {
            let (loc, msg) = (&line[..idx], &line[idx + ": Error: ".len()..]);
            // LOC is FILE:LINE:FIRST-LAST
            let mut parts = loc.rsplitn(3, ':');
            let cols = parts.next();
            let lno: Option<usize> = parts.next().and_then(|l| l.parse().ok());
            let first: Option<usize> = cols
                .and_then(|c| c.split('-').next())
                .and_then(|c| c.parse().ok());
            match (lno, lno.and_then(|l| script.origin(l))) {
                (_, Some(o)) => {
                    let offset = first.and_then(|f| f.checked_sub(1 + o.prefix)).unwrap_or(0);
                    format!("{}: nft: {msg}", o.pos.at(offset))
                }
                (Some(l), None) => match script.lines.get(l.wrapping_sub(1)) {
                    Some(cmd) => format!("nft: {msg} (in netman's command `{cmd}`)"),
                    None => format!("nft: {msg}"),
                },
                (None, None) => format!("nft: {msg}"),
            }
        } else if let Some(msg) = line.strip_prefix("Error: ") {
            format!("nft: {msg}")
        } else {
            continue;
        };
        if !out.contains(&message) {
            out.push(message);
        }
    }
    if out.is_empty() {
        let all = stderr.trim();
        out.push(if all.is_empty() {
            "nft: failed without a message".to_owned()
        } else {
            format!("nft: {all}")
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{
        ChainAttrs, DesiredInsert, DesiredRule, ObservedChain, ObservedTarget, rule_hash,
    };

    fn pos(path: &str, line: usize, column: usize, verbatim: bool) -> Pos {
        Pos {
            file: "a.yaml".into(),
            path: path.into(),
            line,
            column,
            verbatim,
        }
    }

    fn desired() -> Desired {
        let chain = ChainRef {
            family: "ip".into(),
            table: "filter".into(),
            chain: "DOCKER-USER".into(),
        };
        Desired {
            chains: vec![DesiredChain {
                name: "forward".into(),
                attrs: ChainAttrs {
                    kind: "filter".into(),
                    hook: "forward".into(),
                    priority: 0,
                    policy: "drop".into(),
                },
                rules: vec![
                    DesiredRule {
                        text: "iifname \"nm0\" accept".into(),
                        pos: Some(pos("firewall.chains[0].rules[0]", 10, 11, true)),
                    },
                    DesiredRule {
                        text: "iifname \"lan0\" acept".into(),
                        pos: Some(pos("firewall.chains[0].rules[1]", 11, 11, true)),
                    },
                ],
                pos: Some(pos("firewall.chains[0]", 6, 13, false)),
            }],
            inserts: vec![DesiredInsert {
                hash: rule_hash(&chain, "accept"),
                chain,
                rule: "accept".into(),
                pos: Some(pos("firewall.insert[0].rule", 20, 13, false)),
                chain_pos: None,
            }],
            forwarding: false,
        }
    }

    fn rebuild_script() -> Script {
        let d = desired();
        let p = Plan {
            table: TableOp::Rebuild,
            insert: d.inserts.clone(),
            ..Plan::default()
        };
        script("a", &d, &p)
    }

    #[test]
    fn nft_errors_name_the_manifest() {
        let s = rebuild_script();
        // Line 6 is the second rule; nft's columns are 1-based.
        let prefix = "add rule inet netman_a forward ".len();
        let stderr = format!(
            "/dev/stdin:6:{}-{}: Error: syntax error, unexpected newline\nadd rule ...\n      ^\n",
            prefix + 21,
            prefix + 21
        );
        assert_eq!(
            map_nft_errors(&stderr, &s),
            vec![
                "a.yaml:11:31: firewall.chains[0].rules[1]: nft: syntax error, unexpected newline"
                    .to_owned()
            ]
        );
        // Not verbatim: the value's own position.
        let stderr =
            "/dev/stdin:7:1-70: Error: Could not process rule: No such file or directory\n";
        assert_eq!(
            map_nft_errors(stderr, &s),
            vec![
                "a.yaml:20:13: firewall.insert[0].rule: nft: Could not process rule: No such file or directory"
                    .to_owned()
            ]
        );
        // A chain line points at the chain.
        let stderr =
            "/dev/stdin:4:32-38: Error: syntax error\n/dev/stdin:4:32-38: Error: syntax error\n";
        assert_eq!(
            map_nft_errors(stderr, &s),
            vec!["a.yaml:6:13: firewall.chains[0]: nft: syntax error".to_owned()]
        );
        // netman's own lines are quoted; unknown output is kept.
        let stderr = "/dev/stdin:1:1-5: Error: Could not process rule: Operation not permitted\n";
        assert_eq!(
            map_nft_errors(stderr, &s),
            vec![
                "nft: Could not process rule: Operation not permitted (in netman's command `add table inet netman_a`)"
                    .to_owned()
            ]
        );
        assert_eq!(
            map_nft_errors("Error: Could not open file\n", &s),
            vec!["nft: Could not open file".to_owned()]
        );
        assert_eq!(
            map_nft_errors("something odd\n", &s),
            vec!["nft: something odd".to_owned()]
        );
    }

    #[test]
    fn insert_carries_the_ownership_comment() {
        let s = rebuild_script();
        let last = s.lines.last().expect("insert line");
        let d = desired();
        assert_eq!(
            *last,
            format!(
                "insert rule ip filter DOCKER-USER accept comment \"netman:a:{}\"",
                d.inserts[0].hash
            )
        );
        assert_eq!(d.inserts[0].hash.len(), 12);
    }

    fn rule(handle: u64, text: &str, comment: Option<&str>) -> ObservedRule {
        ObservedRule {
            handle,
            expr: serde_json::json!([{ "stand-in": text }]),
            comment: comment.map(str::to_owned),
            text: text.into(),
        }
    }

    fn table(handles: &[u64]) -> ObservedTable {
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

    fn target(ours: Vec<ObservedRule>) -> ObservedTarget {
        ObservedTarget {
            chain: ChainRef {
                family: "ip".into(),
                table: "filter".into(),
                chain: "DOCKER-USER".into(),
            },
            state: TargetState::Exists,
            ours,
        }
    }

    #[test]
    fn revert_recreates_table_and_puts_inserted_rules_back() {
        let snapshot = Observed {
            table: Some(table(&[2, 3])),
            targets: vec![target(vec![rule(
                7,
                "accept",
                Some("netman:a:111111111111"),
            )])],
            sysctls: BTreeMap::new(),
        };
        let now = Observed {
            table: Some(table(&[2])),
            targets: vec![target(vec![rule(9, "drop", Some("netman:a:222222222222"))])],
            sysctls: BTreeMap::new(),
        };
        assert_eq!(
            revert_script("a", &snapshot, &now).text(),
            "add table inet netman_a\n\
             delete table inet netman_a\n\
             table inet netman_a { # handle 1\n\
             }\n\
             delete rule ip filter DOCKER-USER handle 9\n\
             insert rule ip filter DOCKER-USER accept comment \"netman:a:111111111111\"\n"
        );
        // Nothing changed: nothing to do.
        assert!(revert_script("a", &snapshot, &snapshot).is_empty());
        // The table did not exist before: it goes.
        let before = Observed::default();
        assert_eq!(
            revert_script(
                "a",
                &before,
                &Observed {
                    table: Some(table(&[2])),
                    ..Observed::default()
                }
            )
            .text(),
            "add table inet netman_a\ndelete table inet netman_a\n"
        );
    }

    #[test]
    fn remap_follows_positions_and_keeps_vanished_rules_gone() {
        let prior = TableRecord {
            chains: vec![ChainRecord {
                name: "forward".into(),
                rules: vec![
                    RuleRecord {
                        text: "r2".into(),
                        handle: 2,
                        expr: serde_json::json!([{ "stand-in": "rule 2" }]),
                    },
                    RuleRecord {
                        text: "r4".into(),
                        handle: 4,
                        expr: serde_json::json!([{ "stand-in": "rule 4" }]),
                    },
                    RuleRecord {
                        text: "r3".into(),
                        handle: 3,
                        expr: serde_json::json!([{ "stand-in": "rule 3" }]),
                    },
                ],
            }],
        };
        // Snapshot: rule 4 was already gone; the restored table has new
        // handles for the same rules.
        let snapshot = table(&[2, 3]);
        let mut restored = table(&[20, 30]);
        restored.chains[0].rules[0].expr = serde_json::json!([{ "stand-in": "rule 2" }]);
        restored.chains[0].rules[1].expr = serde_json::json!([{ "stand-in": "rule 3" }]);
        let r = remap_record(&prior, Some(&snapshot), Some(&restored));
        let handles: Vec<(String, u64)> = r.chains[0]
            .rules
            .iter()
            .map(|r| (r.text.clone(), r.handle))
            .collect();
        assert_eq!(
            handles,
            vec![("r2".into(), 20), ("r4".into(), 0), ("r3".into(), 30)]
        );
    }

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
