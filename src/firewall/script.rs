//! The nft scripts: a [`Plan`] (or a revert) rendered as the text of one
//! nft transaction, each line remembering the manifest value it came from,
//! and nft's errors mapped back to manifest positions. Pure, no I/O.

use std::collections::{BTreeSet, HashMap};

use crate::manifest::Pos;

use super::{
    ChainRef, Desired, Observed, ObservedRule, ObservedTable, Plan, TABLE_FAMILY, TableOp,
    comment_prefix, table_name,
};

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

    /// `prefix`, the manifest value `text` (written at `pos`), `suffix`.
    fn push_value(&mut self, prefix: &str, text: &str, suffix: &str, pos: Option<&Pos>) {
        let origin = pos.map(|pos| Origin {
            pos: pos.clone(),
            prefix: prefix.chars().count(),
        });
        self.push(format!("{prefix}{text}{suffix}"), origin);
    }

    /// Remove table `t` (`FAMILY NAME`). `add` first: the delete cannot
    /// fail on a table gone meanwhile.
    fn drop_table(&mut self, t: &str) {
        self.push(format!("add table {t}"), None);
        self.push(format!("delete table {t}"), None);
    }

    fn delete_rule(&mut self, chain: &ChainRef, handle: u64) {
        self.push(format!("delete rule {chain} handle {handle}"), None);
    }

    /// Insert `rule` (written at `pos`) at the top of `chain`, with
    /// `comment` if there is one.
    fn insert_rule(
        &mut self,
        chain: &ChainRef,
        rule: &str,
        comment: Option<&str>,
        pos: Option<&Pos>,
    ) {
        let comment = comment
            .map(|c| format!(" comment \"{c}\""))
            .unwrap_or_default();
        self.push_value(&format!("insert rule {chain} "), rule, &comment, pos);
    }

    /// The manifest origin of 1-based line `line`.
    fn origin(&self, line: usize) -> Option<&Origin> {
        self.origins.get(line.checked_sub(1)?)?.as_ref()
    }
}

/// `FAMILY NAME` of netman's table.
fn own_table(deployment: &str) -> String {
    format!("{TABLE_FAMILY} {}", table_name(deployment))
}

/// The nft script that carries out `plan` for `deployment`: the table
/// rebuild (or removal), deletions and insertions, in one transaction.
pub fn script(deployment: &str, desired: &Desired, plan: &Plan) -> Script {
    let t = own_table(deployment);
    let mut s = Script::default();
    match plan.table {
        TableOp::Keep => {}
        TableOp::Delete => s.drop_table(&t),
        TableOp::Rebuild => {
            s.drop_table(&t);
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
                let prefix = format!("add rule {t} {} ", c.name);
                for r in &c.rules {
                    s.push_value(&prefix, &r.text, "", r.pos.as_ref());
                }
            }
        }
    }
    for (c, handle) in &plan.delete {
        s.delete_rule(c, *handle);
    }
    // Each insert goes to the top of its chain: insert in reverse so the
    // manifest's first rule ends up first.
    let comment = comment_prefix(deployment);
    for d in plan.insert.iter().rev() {
        let comment = format!("{comment}{}", d.hash);
        s.insert_rule(&d.chain, &d.rule, Some(&comment), d.pos.as_ref());
    }
    s
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
    let t = own_table(deployment);
    let mut s = Script::default();
    match (&snapshot.table, &now.table) {
        (None, None) => {}
        (None, Some(_)) => s.drop_table(&t),
        (Some(snap), now_table) => {
            if !now_table.as_ref().is_some_and(|n| same_table(snap, n)) {
                s.drop_table(&t);
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
                _ => s.delete_rule(c, r.handle),
            }
        }
        let mut have = count(&after);
        for r in before.iter().rev() {
            match have.get_mut(&r.comment) {
                Some(n) if *n > 0 => *n -= 1,
                _ => s.insert_rule(c, &r.text, r.comment.as_deref(), None),
            }
        }
    }
    s
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
    use crate::firewall::fixtures::{rule, table};
    use crate::firewall::{
        ChainAttrs, DesiredChain, DesiredInsert, DesiredRule, ObservedTarget, TargetState,
        rule_hash,
    };
    use std::collections::BTreeMap;

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
}
