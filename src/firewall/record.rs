//! What the state file keeps of the firewall after an apply: each rule of
//! netman's table with the handle and expr the kernel gave it (so the next
//! plan can tell netman's rules from any other), and the chains netman
//! inserted into; adjusted after a revert re-creates the table.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ChainRef, Desired, Observed, ObservedTable};

/// What netman applied, kept in the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// netman's table as last applied: every rule's manifest text with the
    /// handle and expr the kernel gave it.
    #[serde(default)]
    pub table: Option<TableRecord>,
    /// The chains netman's inserted rules may be in (a superset while an
    /// apply is in progress), so `down` finds them without the manifest.
    #[serde(default)]
    pub chains: BTreeSet<ChainRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    pub chains: Vec<ChainRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    pub name: String,
    pub rules: Vec<RuleRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// The rule as written in the manifest.
    pub text: String,
    /// Handle and expr of the kernel's rule (handle 0: gone).
    pub handle: u64,
    pub expr: serde_json::Value,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fixtures::table;

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
}
