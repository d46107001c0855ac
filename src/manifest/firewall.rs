//! Validation of the `firewall:` section.
//!
//! Rules (each reported at the offending value):
//! - `chains[].name`: 1..=64 characters of `[A-Za-z0-9_-]`, starting with a
//!   letter or `_` (an nft identifier; nft itself rejects its keywords),
//!   unique.
//! - `chains[].hook`: `prerouting | input | forward | output | postrouting`.
//! - `chains[].type`: `filter | nat` (default filter); a nat chain cannot
//!   hook `forward`.
//! - `chains[].priority`: a 32-bit signed integer; default filter 0, nat
//!   -100 at prerouting/output and 100 at postrouting/input.
//! - `chains[].policy`: `accept | drop` (default accept).
//! - `chains[].rules[]`, `insert[].rule`: one nft rule on one line: not
//!   empty, at most 4096 bytes, no control characters, balanced double
//!   quotes, and outside quoted strings no `;` (it would start another
//!   command), no `#` (it would comment out the rest) and no `\`. Whether
//!   nft accepts the rule is checked by nft itself at diff/apply.
//! - `insert[].family`: `ip | ip6 | inet`; `insert[].table`/`chain`: nft
//!   identifiers (`[A-Za-z_.][A-Za-z0-9_./-]*`, at most 255 bytes); the table
//!   is not one of netman's own (`netman_*`).
//! - `insert[].rule` carries no `comment`: netman marks its inserted rules
//!   with the comment `netman:<name>:<hash>`.
//! - No rule is inserted twice into the same chain.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_saphyr::{Location, Spanned};

use super::error::line_col;
use super::raw::{Int, RawChain, RawFirewall, RawInsert};
use super::validate::Ctx;
use super::{Chain, ChainType, Family, Firewall, Hook, Insert, Policy, Pos, Rule};

const MAX_CHAIN_NAME: usize = 64;
const MAX_IDENTIFIER: usize = 255;
const MAX_RULE_BYTES: usize = 4096;

/// The prefix of netman's own table names.
pub const OWN_TABLE_PREFIX: &str = "netman_";

pub(super) fn firewall(ctx: &mut Ctx<'_>, raw: &RawFirewall) -> Option<Firewall> {
    let chains = match &raw.chains {
        Some(list) => chains(ctx, &list.value),
        None => Vec::new(),
    };
    let insert = match &raw.insert {
        Some(list) => inserts(ctx, &list.value),
        None => Vec::new(),
    };
    Some(Firewall {
        chains: chains.into_iter().collect::<Option<Vec<_>>>()?,
        insert: insert.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

fn chains(ctx: &mut Ctx<'_>, raw: &[Spanned<RawChain>]) -> Vec<Option<Chain>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (c, item) in raw.iter().enumerate() {
        let chain = &item.value;
        let at = |field: &str| format!("firewall.chains[{c}].{field}");
        let mut ok = true;

        let name = ctx.check(&chain.name, || at("name"), |s| chain_name(s));
        if name.is_some() {
            match names.entry(chain.name.value.as_str()) {
                Entry::Occupied(first) => {
                    ctx.error(
                        chain.name.referenced,
                        at("name"),
                        format!(
                            "duplicate chain name `{}` (already used by firewall.chains[{}])",
                            chain.name.value,
                            first.get()
                        ),
                    );
                    ok = false;
                }
                Entry::Vacant(slot) => {
                    slot.insert(c);
                }
            }
        }

        let hook = ctx.check(
            &chain.hook,
            || at("hook"),
            |s| Hook::parse(s).ok_or_else(|| unknown("hook", s, &Hook::choices())),
        );
        let kind = match &chain.kind {
            None => Some(ChainType::Filter),
            Some(k) => ctx.check(k, || at("type"), |s| {
                let kind = ChainType::parse(s)
                    .ok_or_else(|| unknown("chain type", s, &ChainType::choices()))?;
                if kind == ChainType::Nat && hook == Some(Hook::Forward) {
                    return Err(
                        "a nat chain cannot hook forward (nat hooks: prerouting, input, output, postrouting)"
                            .to_owned(),
                    );
                }
                Ok(kind)
            }),
        };
        let priority = match &chain.priority {
            None => match (kind, hook) {
                (Some(k), Some(h)) => Some(k.default_priority(h)),
                _ => None,
            },
            Some(p) => ctx.check(
                p,
                || at("priority"),
                |&n: &Int| {
                    let v = n.get()?;
                    i32::try_from(v).map_err(|_| {
                        format!("priority {v} is out of range ({}..={})", i32::MIN, i32::MAX)
                    })
                },
            ),
        };
        let policy = match &chain.policy {
            None => Some(Policy::Accept),
            Some(p) => ctx.check(
                p,
                || at("policy"),
                |s| Policy::parse(s).ok_or_else(|| unknown("policy", s, &Policy::choices())),
            ),
        };

        let mut rules = Vec::new();
        if let Some(list) = &chain.rules {
            for (r, item) in list.value.iter().enumerate() {
                let path = format!("firewall.chains[{c}].rules[{r}]");
                match ctx.check(item, || path.clone(), |s| rule_text(s, false)) {
                    Some(text) => rules.push(Rule {
                        pos: pos(ctx, item.referenced, &path, Some(&text)),
                        text,
                    }),
                    None => ok = false,
                }
            }
        }

        let chain_pos = pos(
            ctx,
            chain.name.referenced,
            &format!("firewall.chains[{c}]"),
            None,
        );
        out.push(match (ok, name, hook, kind, priority, policy) {
            (true, Some(name), Some(hook), Some(kind), Some(priority), Some(policy)) => {
                Some(Chain {
                    name,
                    hook,
                    kind,
                    priority,
                    policy,
                    rules,
                    pos: chain_pos,
                })
            }
            _ => None,
        });
    }
    out
}

fn inserts(ctx: &mut Ctx<'_>, raw: &[Spanned<RawInsert>]) -> Vec<Option<Insert>> {
    let mut seen: HashMap<(Family, &str, &str, String), usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, item) in raw.iter().enumerate() {
        let ins = &item.value;
        let at = |field: &str| format!("firewall.insert[{i}].{field}");
        let family = ctx.check(
            &ins.family,
            || at("family"),
            |s| Family::parse(s).ok_or_else(|| unknown("family", s, &Family::choices())),
        );
        let table = ctx.check(&ins.table, || at("table"), |s| {
            let t = identifier("table", s)?;
            if t.starts_with(OWN_TABLE_PREFIX) {
                return Err(format!(
                    "table {t} is netman's own (netman_<deployment>); declare rules of netman's table under firewall.chains"
                ));
            }
            Ok(t)
        });
        let chain = ctx.check(&ins.chain, || at("chain"), |s| identifier("chain", s));
        let path = at("rule");
        let text = ctx.check(&ins.rule, || path.clone(), |s| rule_text(s, true));
        let (Some(family), Some(table), Some(chain), Some(text)) = (family, table, chain, text)
        else {
            out.push(None);
            continue;
        };
        let key = (
            family,
            ins.table.value.as_str(),
            ins.chain.value.as_str(),
            text.clone(),
        );
        match seen.entry(key) {
            Entry::Occupied(first) => {
                ctx.error(
                    ins.rule.referenced,
                    path,
                    format!(
                        "duplicate rule: firewall.insert[{}] already inserts it into {family} {table} {chain}",
                        first.get()
                    ),
                );
                out.push(None);
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
                out.push(Some(Insert {
                    family,
                    table,
                    chain,
                    rule: Rule {
                        pos: pos(ctx, ins.rule.referenced, &path, Some(&text)),
                        text,
                    },
                    pos: pos(ctx, ins.chain.referenced, &at("chain"), None),
                }));
            }
        }
    }
    out
}

fn unknown(what: &str, s: &str, choices: &str) -> String {
    format!("unknown {what} {s:?} (expected {choices})")
}

/// The position of a value; `verbatim` when `text` appears unchanged on its
/// line at the value (plain scalar) or right after its opening quote.
fn pos(ctx: &Ctx<'_>, location: Location, path: &str, text: Option<&str>) -> Pos {
    let (line, column) = line_col(location);
    let mut out = Pos {
        file: ctx.file.to_owned(),
        path: path.to_owned(),
        line,
        column,
        verbatim: false,
    };
    let Some(text) = text else {
        return out;
    };
    let Some(rest) = ctx.rest_of_line(location, line, column) else {
        return out;
    };
    if rest.starts_with(text) {
        out.verbatim = true;
    } else if (rest.starts_with('"') || rest.starts_with('\'')) && rest[1..].starts_with(text) {
        out.verbatim = true;
        out.column += 1;
    }
    out
}

fn chain_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s == super::MSS_CLAMP_CHAIN {
        return Err(format!(
            "`{s}` is the name of netman's own chain for interface.mss_clamp; choose another"
        ));
    }
    let len = s.chars().count();
    if len > MAX_CHAIN_NAME {
        return Err(format!(
            "too long ({len} characters; at most {MAX_CHAIN_NAME})"
        ));
    }
    let mut chars = s.chars();
    if let Some(first) = chars.next()
        && !(first.is_ascii_alphabetic() || first == '_')
    {
        return Err(format!("must start with a letter or '_' (found {first:?})"));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))) {
        return Err(format!(
            "invalid character {c:?} in chain name (allowed: A-Z, a-z, 0-9, '_' and '-')"
        ));
    }
    Ok(s.to_owned())
}

/// A table or chain name as nft accepts it unquoted.
fn identifier(what: &str, s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > MAX_IDENTIFIER {
        return Err(format!(
            "too long ({} bytes; at most {MAX_IDENTIFIER})",
            s.len()
        ));
    }
    let mut chars = s.chars();
    if let Some(first) = chars.next()
        && !(first.is_ascii_alphabetic() || matches!(first, '_' | '.'))
    {
        return Err(format!(
            "{what} name must start with a letter, '_' or '.' (found {first:?})"
        ));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')))
    {
        return Err(format!(
            "invalid character {c:?} in {what} name (allowed: A-Z, a-z, 0-9, '_', '.', '/' and '-')"
        ));
    }
    Ok(s.to_owned())
}

/// One nft rule on one line (see the module docs); `inserted` rules may not
/// carry a comment.
fn rule_text(s: &str, inserted: bool) -> Result<String, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > MAX_RULE_BYTES {
        return Err(format!(
            "rule too long ({} bytes; at most {MAX_RULE_BYTES})",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(match c {
            '\n' | '\r' => "a rule must be on one line (one rule per entry)".to_owned(),
            c => format!("control character {c:?} in rule"),
        });
    }
    let mut in_quote = false;
    let mut word = String::new();
    let mut words = Vec::new();
    for c in text.chars() {
        if c == '"' {
            in_quote = !in_quote;
            continue;
        }
        if in_quote {
            continue;
        }
        match c {
            ';' => {
                return Err(
                    "`;` outside a quoted string would end the rule and start another nftables command; write one rule per entry"
                        .to_owned(),
                );
            }
            '#' => {
                return Err(
                    "`#` outside a quoted string starts an nftables comment and would hide the rest of the rule"
                        .to_owned(),
                );
            }
            '\\' => return Err("`\\` outside a quoted string is not allowed".to_owned()),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => word.push(c),
            _ => words.push(std::mem::take(&mut word)),
        }
    }
    words.push(word);
    if in_quote {
        return Err("unterminated quoted string (missing closing `\"`)".to_owned());
    }
    if inserted && words.iter().any(|w| w == "comment") {
        return Err(
            "an inserted rule cannot carry its own comment: netman marks the rules it inserts with the comment `netman:<name>:<hash>`"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_text_checks() {
        assert_eq!(
            rule_text(" iifname \"nm0\" accept ", false).as_deref(),
            Ok("iifname \"nm0\" accept")
        );
        assert!(rule_text("accept; flush ruleset", false).is_err());
        assert!(rule_text("accept # hidden", false).is_err());
        assert!(rule_text("accept \\", false).is_err());
        assert!(rule_text("iifname \"nm0 accept", false).is_err());
        assert!(rule_text("accept\nflush ruleset", false).is_err());
        assert!(rule_text("", false).is_err());
        // Inside quotes anything goes.
        assert!(rule_text("accept comment \"a;b #c\"", false).is_ok());
        assert!(rule_text("accept comment \"x\"", true).is_err());
        assert!(rule_text("meta comment-free accept", true).is_ok());
        assert!(rule_text("iifname \"comment\" accept", true).is_ok());
    }

    #[test]
    fn names() {
        assert!(chain_name("forward").is_ok());
        assert!(chain_name("DOCKER-USER").is_ok());
        assert!(chain_name("1x").is_err());
        assert!(chain_name("a b").is_err());
        assert!(chain_name(&"a".repeat(65)).is_err());
        assert!(identifier("chain", "DOCKER-USER").is_ok());
        assert!(identifier("table", "filter").is_ok());
        assert!(identifier("table", "fil ter").is_err());
        assert!(identifier("table", "").is_err());
    }
}
