//! Thin executors around the `nft` binary: JSON listings parsed into the
//! [`super::Observed`] model (only the fields netman needs), and scripts
//! fed to `nft -f -` (one atomic transaction) or `nft -c -f -` (checked
//! by nft and the kernel, then discarded).
//!
//! The binary is `nft` from `PATH`, or `$NETMAN_NFT`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

use super::script::{Script, map_nft_errors};
use super::{
    ChainAttrs, ChainRef, FirewallError, ObservedChain, ObservedRule, ObservedTable,
    ObservedTarget, TargetState,
};

fn binary() -> OsString {
    std::env::var_os("NETMAN_NFT").unwrap_or_else(|| OsString::from("nft"))
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<Output, FirewallError> {
    let bin = binary();
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        ErrorKind::NotFound => {
            FirewallError::NftMissing(format!("{} not found", bin.to_string_lossy()))
        }
        _ => FirewallError::NftMissing(format!("{}: {e}", bin.to_string_lossy())),
    })?;
    let output = std::thread::scope(|scope| {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Written from a thread so a chatty nft cannot deadlock us.
            scope.spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| FirewallError::Nft {
        args: args.join(" "),
        reason: e.to_string(),
    })?;
    Ok(Output {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn failure(args: &[&str], stderr: &str) -> FirewallError {
    let reason = stderr
        .lines()
        .find_map(|l| l.split_once("Error: ").map(|(_, m)| m.to_owned()))
        .unwrap_or_else(|| stderr.trim().to_owned());
    FirewallError::Nft {
        args: args.join(" "),
        reason,
    }
}

fn not_found(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

/// `FORMAT -s list OBJECT...`: `-j` for JSON, `-a` for text with handles.
fn list_args<'a>(format: &'a str, object: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![format, "-s", "list"];
    args.extend_from_slice(object);
    args
}

/// The output of the listing `args`.
fn list(args: &[&str]) -> Result<String, FirewallError> {
    let out = run(args, None)?;
    if !out.ok {
        return Err(failure(args, &out.stderr));
    }
    Ok(out.stdout)
}

/// The output of the listing `args`, or `None` if what it lists does not
/// exist.
fn list_existing(args: &[&str]) -> Result<Option<String>, FirewallError> {
    let out = run(args, None)?;
    if out.ok {
        Ok(Some(out.stdout))
    } else if not_found(&out.stderr) {
        Ok(None)
    } else {
        Err(failure(args, &out.stderr))
    }
}

/// Run `script` as one transaction (`check`: only have it checked).
/// Errors on manifest lines name the manifest positions.
pub fn run_script(script: &Script, check: bool) -> Result<(), FirewallError> {
    let args: &[&str] = if check {
        &["-c", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    let out = run(args, Some(&script.text()))?;
    if out.ok {
        return Ok(());
    }
    let errors = map_nft_errors(&out.stderr, script);
    if errors.iter().any(|e| !e.starts_with("nft: ")) {
        Err(FirewallError::Rejected(errors))
    } else {
        Err(FirewallError::Nft {
            args: args.join(" "),
            reason: errors.join("; "),
        })
    }
}

// ---------------------------------------------------------------------------
// Listings

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<HashMap<String, Value>>,
}

#[derive(Deserialize)]
struct JsonChain {
    family: String,
    table: String,
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    hook: Option<String>,
    #[serde(default)]
    prio: Option<i64>,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
struct JsonRule {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expr: Value,
}

#[derive(Deserialize)]
struct JsonTable {
    family: String,
    name: String,
}

#[derive(Default)]
struct Parsed {
    tables: Vec<JsonTable>,
    chains: Vec<JsonChain>,
    rules: Vec<JsonRule>,
}

fn parse(args: &[&str], stdout: &str) -> Result<Parsed, FirewallError> {
    let err = |reason: String| FirewallError::Parse {
        args: args.join(" "),
        reason,
    };
    let listing: Listing = serde_json::from_str(stdout).map_err(|e| err(e.to_string()))?;
    let mut out = Parsed::default();
    for mut object in listing.nftables {
        if let Some(v) = object.remove("table") {
            out.tables
                .push(serde_json::from_value(v).map_err(|e| err(format!("table: {e}")))?);
        } else if let Some(v) = object.remove("chain") {
            out.chains
                .push(serde_json::from_value(v).map_err(|e| err(format!("chain: {e}")))?);
        } else if let Some(v) = object.remove("rule") {
            out.rules
                .push(serde_json::from_value(v).map_err(|e| err(format!("rule: {e}")))?);
        }
    }
    Ok(out)
}

impl JsonChain {
    fn attrs(&self) -> Option<ChainAttrs> {
        Some(ChainAttrs {
            kind: self.kind.clone()?,
            hook: self.hook.clone()?,
            priority: self.prio.unwrap_or(0),
            policy: self.policy.clone().unwrap_or_else(|| "accept".to_owned()),
        })
    }
}

/// Rule texts by (chain, handle) from an `nft -a` listing: every line in a
/// chain block that ends in `# handle N`.
fn rule_texts(listing: &str) -> HashMap<(String, u64), String> {
    let mut out = HashMap::new();
    let mut chain: Option<String> = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().map(str::to_owned);
            continue;
        }
        if t == "}" {
            chain = None;
            continue;
        }
        if let (Some(c), Some((body, handle))) = (&chain, t.rsplit_once(" # handle "))
            && let Ok(handle) = handle.trim().parse::<u64>()
        {
            out.insert((c.clone(), handle), body.trim().to_owned());
        }
    }
    out
}

fn observed_rule(r: JsonRule, texts: &HashMap<(String, u64), String>) -> ObservedRule {
    let mut text = texts
        .get(&(r.chain.clone(), r.handle))
        .cloned()
        .unwrap_or_default();
    if let Some(c) = &r.comment
        && let Some(stripped) = text.strip_suffix(&format!(" comment \"{c}\""))
    {
        text = stripped.to_owned();
    }
    ObservedRule {
        handle: r.handle,
        expr: r.expr,
        comment: r.comment,
        text,
    }
}

/// `table FAMILY NAME` with its chains and rules; `None` if it does not
/// exist.
pub fn list_table(family: &str, name: &str) -> Result<Option<ObservedTable>, FirewallError> {
    let object = ["table", family, name];
    let args = list_args("-j", &object);
    let Some(json) = list_existing(&args)? else {
        return Ok(None);
    };
    let parsed = parse(&args, &json)?;
    let listing = list(&list_args("-a", &object))?;
    let texts = rule_texts(&listing);
    let mut chains: Vec<ObservedChain> = parsed
        .chains
        .iter()
        .filter(|c| c.family == family && c.table == name)
        .map(|c| ObservedChain {
            name: c.name.clone(),
            attrs: c.attrs(),
            rules: Vec::new(),
        })
        .collect();
    for r in parsed.rules {
        if r.family != family || r.table != name {
            continue;
        }
        if let Some(c) = chains.iter_mut().find(|c| c.name == r.chain) {
            c.rules.push(observed_rule(r, &texts));
        }
    }
    Ok(Some(ObservedTable { chains, listing }))
}

fn table_exists(family: &str, table: &str) -> Result<bool, FirewallError> {
    let args = ["-j", "list", "tables", family];
    Ok(parse(&args, &list(&args)?)?
        .tables
        .iter()
        .any(|t| t.family == family && t.name == table))
}

/// A chain netman inserts into: whether it exists, and the rules in it
/// whose comment starts with `prefix` (netman's).
pub fn list_target(chain: &ChainRef, prefix: &str) -> Result<ObservedTarget, FirewallError> {
    let object = ["chain", &chain.family, &chain.table, &chain.chain];
    let args = list_args("-j", &object);
    let Some(json) = list_existing(&args)? else {
        let state = if table_exists(&chain.family, &chain.table)? {
            TargetState::NoChain
        } else {
            TargetState::NoTable
        };
        return Ok(ObservedTarget {
            chain: chain.clone(),
            state,
            ours: Vec::new(),
        });
    };
    let parsed = parse(&args, &json)?;
    let ours: Vec<JsonRule> = parsed
        .rules
        .into_iter()
        .filter(|r| {
            r.family == chain.family
                && r.table == chain.table
                && r.chain == chain.chain
                && r.comment.as_deref().is_some_and(|c| c.starts_with(prefix))
        })
        .collect();
    let texts = if ours.is_empty() {
        HashMap::new()
    } else {
        rule_texts(&list(&list_args("-a", &object))?)
    };
    Ok(ObservedTarget {
        chain: chain.clone(),
        state: TargetState::Exists,
        ours: ours.into_iter().map(|r| observed_rule(r, &texts)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_texts_from_listing() {
        let listing = "table ip filter { # handle 1\n\tchain DOCKER-USER { # handle 1\n\t\tiifname \"nm0\" accept comment \"netman:a:12\" # handle 6\n\t\tcounter return # handle 2\n\t}\n\n\tchain FORWARD { # handle 3\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tip saddr { 10.0.0.1, 10.0.0.2 } accept # handle 4\n\t}\n}\n";
        let t = rule_texts(listing);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[&("DOCKER-USER".to_owned(), 6)],
            "iifname \"nm0\" accept comment \"netman:a:12\""
        );
        assert_eq!(t[&("DOCKER-USER".to_owned(), 2)], "counter return");
        assert_eq!(
            t[&("FORWARD".to_owned(), 4)],
            "ip saddr { 10.0.0.1, 10.0.0.2 } accept"
        );
    }

    #[test]
    fn parse_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "netman_a", "handle": 5}}, {"chain": {"family": "inet", "table": "netman_a", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "netman_a", "chain": "forward", "handle": 2, "expr": [{"accept": null}]}}]}"#;
        let p = parse(&["x"], json).expect("parse");
        assert_eq!(p.tables.len(), 1);
        assert_eq!(
            p.chains[0].attrs(),
            Some(ChainAttrs {
                kind: "filter".into(),
                hook: "forward".into(),
                priority: 0,
                policy: "drop".into()
            })
        );
        assert_eq!(p.rules[0].handle, 2);
        assert!(parse(&["x"], "not json").is_err());
    }
}
