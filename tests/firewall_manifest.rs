//! Manifest `forwarding:` and `firewall:` parsing and validation: the
//! accepted forms and every rejection as an exact `FILE:LINE:COL` message.

use std::path::Path;

use netman::manifest::{self, ChainType, Family, Hook, Manifest, ManifestErrors, Policy};

const FILE: &str = "site-a.yaml";

/// Lines 1-5: a minimal valid manifest head.
const HEAD: [&str; 5] = [
    "name: site-a",
    "interface:",
    "  name: nm0",
    "  addresses: [10.10.0.1/24]",
    "  private_key_file: a.key",
];

/// The head followed by `rest` (line 6 is `rest[0]`).
fn doc(rest: &[&str]) -> String {
    let mut lines: Vec<&str> = HEAD.to_vec();
    lines.extend_from_slice(rest);
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
    manifest::parse(text, Path::new(FILE))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(m) => panic!(
            "expected errors, got {:#?}\n--- input ---\n{text}",
            m.firewall
        ),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// A firewall section with one chain whose fields are `chain` (indented
/// under `    - `), starting at line 6.
fn chain(fields: &[&str]) -> String {
    let mut rest = vec!["firewall:", "  chains:"];
    let lines: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                format!("    - {f}")
            } else {
                format!("      {f}")
            }
        })
        .collect();
    rest.extend(lines.iter().map(String::as_str));
    doc(&rest)
}

fn insert(fields: &[&str]) -> String {
    let mut rest = vec!["firewall:", "  insert:"];
    let lines: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                format!("    - {f}")
            } else {
                format!("      {f}")
            }
        })
        .collect();
    rest.extend(lines.iter().map(String::as_str));
    doc(&rest)
}

#[test]
fn the_issue_example_is_accepted() {
    let text = doc(&[
        "forwarding: true",
        "firewall:",
        "  chains:",
        "    - name: forward",
        "      hook: forward",
        "      type: filter",
        "      priority: 0",
        "      policy: accept",
        "      rules:",
        "        - iifname \"nm0\" oifname \"lan0\" accept",
        "        - iifname \"lan0\" oifname \"nm0\" ct state established,related accept",
        "    - name: nat",
        "      hook: postrouting",
        "      type: nat",
        "      rules:",
        "        - oifname \"eth0\" ip saddr 10.10.0.0/24 masquerade",
        "  insert:",
        "    - family: ip",
        "      table: filter",
        "      chain: DOCKER-USER",
        "      rule: 'iifname \"nm0\" oifname \"docker0\" accept'",
    ]);
    let m = parse(&text).expect("valid");
    assert!(m.forwarding);
    let fw = &m.firewall;
    assert_eq!(fw.chains.len(), 2);
    let c = &fw.chains[0];
    assert_eq!(
        (c.name.as_str(), c.hook, c.kind, c.priority, c.policy),
        (
            "forward",
            Hook::Forward,
            ChainType::Filter,
            0,
            Policy::Accept
        )
    );
    assert_eq!(c.rules.len(), 2);
    assert_eq!(
        c.rules[1].text,
        "iifname \"lan0\" oifname \"nm0\" ct state established,related accept"
    );
    // Positions: line 16 is the second rule, the text starts at column 11.
    assert_eq!(
        c.rules[1].pos.to_string(),
        "site-a.yaml:16:11: firewall.chains[0].rules[1]"
    );
    assert_eq!(
        c.rules[1].pos.at(4),
        "site-a.yaml:16:15: firewall.chains[0].rules[1]"
    );
    assert_eq!(c.pos.to_string(), "site-a.yaml:9:13: firewall.chains[0]");
    let nat = &fw.chains[1];
    assert_eq!(
        (nat.kind, nat.priority, nat.policy),
        (ChainType::Nat, 100, Policy::Accept)
    );
    let i = &fw.insert[0];
    assert_eq!(
        (
            i.family,
            i.table.as_str(),
            i.chain.as_str(),
            i.rule.text.as_str()
        ),
        (
            Family::Ip,
            "filter",
            "DOCKER-USER",
            "iifname \"nm0\" oifname \"docker0\" accept"
        )
    );
    // A quoted scalar: the text starts after the quote.
    assert_eq!(
        i.rule.pos.to_string(),
        "site-a.yaml:26:14: firewall.insert[0].rule"
    );
    assert_eq!(
        i.pos.to_string(),
        "site-a.yaml:25:14: firewall.insert[0].chain"
    );
}

#[test]
fn defaults() {
    let m = parse(&doc(&[])).expect("valid");
    assert!(!m.forwarding);
    assert!(m.firewall.is_empty());

    let m = parse(&chain(&["name: pre", "hook: prerouting", "type: nat"])).expect("valid");
    let c = &m.firewall.chains[0];
    assert_eq!((c.priority, c.policy), (-100, Policy::Accept));
    assert!(c.rules.is_empty());
    let m = parse(&chain(&["name: out", "hook: output", "type: nat"])).expect("valid");
    assert_eq!(m.firewall.chains[0].priority, -100);
    let m = parse(&chain(&["name: in", "hook: input", "type: nat"])).expect("valid");
    assert_eq!(m.firewall.chains[0].priority, 100);
    let m = parse(&chain(&[
        "name: in",
        "hook: input",
        "priority: -150",
        "policy: drop",
    ]))
    .expect("valid");
    let c = &m.firewall.chains[0];
    assert_eq!(
        (c.kind, c.priority, c.policy),
        (ChainType::Filter, -150, Policy::Drop)
    );
    let m = parse(&doc(&["forwarding: false", "firewall:", "  chains: []"])).expect("valid");
    assert!(!m.forwarding && m.firewall.is_empty());
}

#[test]
fn rejections() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown hook",
            chain(&["name: f", "hook: forwrd"]),
            vec![
                "site-a.yaml:9:13: firewall.chains[0].hook: unknown hook \"forwrd\" (expected prerouting | input | forward | output | postrouting)",
            ],
        ),
        (
            "unknown type",
            chain(&["name: f", "hook: forward", "type: route"]),
            vec![
                "site-a.yaml:10:13: firewall.chains[0].type: unknown chain type \"route\" (expected filter | nat)",
            ],
        ),
        (
            "nat on forward",
            chain(&["name: f", "hook: forward", "type: nat"]),
            vec![
                "site-a.yaml:10:13: firewall.chains[0].type: a nat chain cannot hook forward (nat hooks: prerouting, input, output, postrouting)",
            ],
        ),
        (
            "unknown policy",
            chain(&["name: f", "hook: forward", "policy: reject"]),
            vec![
                "site-a.yaml:10:15: firewall.chains[0].policy: unknown policy \"reject\" (expected accept | drop)",
            ],
        ),
        (
            "priority out of range",
            chain(&["name: f", "hook: forward", "priority: 2147483648"]),
            vec![
                "site-a.yaml:10:17: firewall.chains[0].priority: priority 2147483648 is out of range (-2147483648..=2147483647)",
            ],
        ),
        (
            "priority not an integer",
            chain(&["name: f", "hook: forward", "priority: filter"]),
            vec![
                "site-a.yaml:10:17: firewall.chains[0].priority: expected an integer, found string",
            ],
        ),
        (
            "bad chain name",
            chain(&["name: 1st", "hook: forward"]),
            vec![
                "site-a.yaml:8:13: firewall.chains[0].name: must start with a letter or '_' (found '1')",
            ],
        ),
        (
            "chain name with a space",
            chain(&["name: my chain", "hook: forward"]),
            vec![
                "site-a.yaml:8:13: firewall.chains[0].name: invalid character ' ' in chain name (allowed: A-Z, a-z, 0-9, '_' and '-')",
            ],
        ),
        (
            "rule with ;",
            chain(&[
                "name: f",
                "hook: forward",
                "rules:",
                "  - accept; flush ruleset",
            ]),
            vec![
                "site-a.yaml:11:11: firewall.chains[0].rules[0]: `;` outside a quoted string would end the rule and start another nftables command; write one rule per entry",
            ],
        ),
        (
            "rule with # (quoted in YAML)",
            chain(&["name: f", "hook: forward", "rules:", "  - \"accept #x\""]),
            vec![
                "site-a.yaml:11:11: firewall.chains[0].rules[0]: `#` outside a quoted string starts an nftables comment and would hide the rest of the rule",
            ],
        ),
        (
            "rule on two lines",
            chain(&[
                "name: f",
                "hook: forward",
                "rules:",
                "  - \"accept\\ndrop\"",
            ]),
            vec![
                "site-a.yaml:11:11: firewall.chains[0].rules[0]: a rule must be on one line (one rule per entry)",
            ],
        ),
        (
            "empty rule",
            chain(&["name: f", "hook: forward", "rules:", "  - \"  \""]),
            vec!["site-a.yaml:11:11: firewall.chains[0].rules[0]: must not be empty"],
        ),
        (
            "unterminated string",
            chain(&[
                "name: f",
                "hook: forward",
                "rules:",
                "  - 'iifname \"nm0 accept'",
            ]),
            vec![
                "site-a.yaml:11:11: firewall.chains[0].rules[0]: unterminated quoted string (missing closing `\"`)",
            ],
        ),
        (
            "inserted rule with a comment",
            insert(&[
                "family: ip",
                "table: filter",
                "chain: DOCKER-USER",
                "rule: accept comment \"mine\"",
            ]),
            vec![
                "site-a.yaml:11:13: firewall.insert[0].rule: an inserted rule cannot carry its own comment: netman marks the rules it inserts with the comment `netman:<name>:<hash>`",
            ],
        ),
        (
            "unknown family",
            insert(&[
                "family: bridge",
                "table: filter",
                "chain: FORWARD",
                "rule: accept",
            ]),
            vec![
                "site-a.yaml:8:15: firewall.insert[0].family: unknown family \"bridge\" (expected ip | ip6 | inet)",
            ],
        ),
        (
            "netman's own table",
            insert(&[
                "family: inet",
                "table: netman_site-b",
                "chain: forward",
                "rule: accept",
            ]),
            vec![
                "site-a.yaml:9:14: firewall.insert[0].table: table netman_site-b is netman's own (netman_<deployment>); declare rules of netman's table under firewall.chains",
            ],
        ),
        (
            "bad chain identifier",
            insert(&[
                "family: ip",
                "table: filter",
                "chain: \"DOCKER USER\"",
                "rule: accept",
            ]),
            vec![
                "site-a.yaml:10:14: firewall.insert[0].chain: invalid character ' ' in chain name (allowed: A-Z, a-z, 0-9, '_', '.', '/' and '-')",
            ],
        ),
        (
            "forwarding not a boolean",
            doc(&["forwarding: yes"]),
            vec!["site-a.yaml:6:13: forwarding: invalid boolean (strict mode expects true/false)"],
        ),
        (
            "unknown chain key",
            chain(&["name: f", "hook: forward", "rule: accept"]),
            vec![
                "site-a.yaml:10:7: firewall.chains[0].rule: unknown key `rule` (expected one of: name, hook, type, priority, policy, rules)",
            ],
        ),
        (
            "missing hook",
            chain(&["name: f"]),
            vec!["site-a.yaml:8:7: firewall.chains[0].hook: missing required field"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, expected) in &cases {
        let got = errors(text);
        if got != *expected {
            failures.push(format!(
                "{what}:\n  expected {expected:#?}\n  got      {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_semantic_errors_at_once() {
    let text = doc(&[
        "firewall:",
        "  chains:",
        "    - name: forward",
        "      hook: forward",
        "    - name: forward",
        "      hook: sideways",
        "      rules:",
        "        - accept; drop",
        "  insert:",
        "    - family: ip",
        "      table: filter",
        "      chain: DOCKER-USER",
        "      rule: accept",
        "    - family: ip",
        "      table: filter",
        "      chain: DOCKER-USER",
        "      rule: accept",
    ]);
    assert_eq!(
        errors(&text),
        vec![
            "site-a.yaml:10:13: firewall.chains[1].name: duplicate chain name `forward` (already used by firewall.chains[0])",
            "site-a.yaml:11:13: firewall.chains[1].hook: unknown hook \"sideways\" (expected prerouting | input | forward | output | postrouting)",
            "site-a.yaml:13:11: firewall.chains[1].rules[0]: `;` outside a quoted string would end the rule and start another nftables command; write one rule per entry",
            "site-a.yaml:22:13: firewall.insert[1].rule: duplicate rule: firewall.insert[0] already inserts it into ip filter DOCKER-USER",
        ]
    );
}

/// YAML ends a line at `\n`, `\r\n` or a lone `\r` (and reports positions
/// so): a lone carriage return in a comment above the rules must not shift
/// the rules' positions (found by the `manifest` fuzz target: the line
/// index behind rule positions counted only `\n`).
#[test]
fn rule_positions_count_lines_as_yaml_does() {
    let rules = [
        "firewall:",
        "  chains:",
        "    - name: forward",
        "      hook: forward",
        "      rules:",
        "        - iifname \"nm0\" accept",
        "        - 'oifname \"nm0\" accept'",
    ];
    let mut lf = vec!["# one", "# two"];
    lf.extend_from_slice(&rules);
    let lf = doc(&lf);
    let positions = |text: &str| -> Vec<(String, String, bool)> {
        let m = parse(text).unwrap_or_else(|e| panic!("{e}\n{text:?}"));
        m.firewall.chains[0]
            .rules
            .iter()
            .map(|r| (r.pos.to_string(), r.pos.at(3), r.pos.verbatim))
            .collect()
    };
    let want = positions(&lf);
    assert_eq!(
        want,
        [
            (
                "site-a.yaml:13:11: firewall.chains[0].rules[0]".to_owned(),
                "site-a.yaml:13:14: firewall.chains[0].rules[0]".to_owned(),
                true
            ),
            (
                "site-a.yaml:14:12: firewall.chains[0].rules[1]".to_owned(),
                "site-a.yaml:14:15: firewall.chains[0].rules[1]".to_owned(),
                true
            ),
        ]
    );
    for (what, eol) in [("CR", "\r"), ("CRLF", "\r\n")] {
        let text = lf.replacen("# one\n", &format!("# one{eol}"), 1);
        assert_eq!(positions(&text), want, "{what} ending line 6");
        let all = lf.replace('\n', eol);
        assert_eq!(positions(&all), want, "{what} ending every line");
    }
}
