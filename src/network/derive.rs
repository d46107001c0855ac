//! The pure derivation network × site → the text of a v1 manifest, every
//! line paired with the network file position it came from (so that the
//! manifest rules' findings in the text map back to the network file).
//!
//! The text is byte-stable: sites, peers and prefixes in file order, one
//! value per line (lists in block form), strings plain when they cannot
//! be read as anything else and JSON-quoted otherwise (a JSON string is a
//! YAML double-quoted scalar). A non-integer where an integer belongs is
//! written as a value of the same kind, so that the manifest reports it.

use serde_saphyr::{Location, Spanned};

use super::check::{Model, locate};
use super::raw::RawNetwork;
use super::{Origin, effective};
use crate::manifest::raw::{Int, IntOrWord, RawFirewall};

pub(super) struct Rendered {
    pub text: String,
    /// `origins[k]`: the origin of line `k + 1`.
    pub origins: Vec<Origin>,
}

struct Out {
    text: String,
    origins: Vec<Origin>,
}

impl Out {
    fn line(&mut self, indent: usize, s: &str, at: Location, path: &str) {
        for _ in 0..indent {
            self.text.push(' ');
        }
        self.text.push_str(s);
        self.text.push('\n');
        self.origins.push(Origin::at(at, path.to_owned()));
    }
}

/// `s` as a YAML scalar that reads back as the string `s`: plain when it
/// cannot be read as anything else, JSON-quoted otherwise.
fn scalar(s: &str) -> String {
    const WORDS: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let number_like = s.chars().all(|c| "0123456789_:.+-eE".contains(c));
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./+=:-".contains(c))
        && !s.ends_with(':')
        && !number_like
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
        && !s.starts_with("0x")
        && !s.starts_with("0o");
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

fn int(v: Int) -> String {
    match v {
        Int::Value(v) => v.to_string(),
        Int::NotInteger("floating point number") => "0.5".to_owned(),
        Int::NotInteger("list") => "[]".to_owned(),
        Int::NotInteger("mapping") => "{}".to_owned(),
        Int::NotInteger("null") => "null".to_owned(),
        Int::NotInteger("boolean") => "true".to_owned(),
        Int::NotInteger(_) => "\"?\"".to_owned(),
    }
}

fn int_or_word(v: &IntOrWord) -> String {
    match v {
        IntOrWord::Int(i) => int(*i),
        IntOrWord::Word(w) => scalar(w),
    }
}

fn kv(out: &mut Out, indent: usize, key: &str, value: &str, at: Location, path: &str) {
    out.line(indent, &format!("{key}: {value}"), at, path);
}

fn string_list(
    out: &mut Out,
    indent: usize,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
    path: &str,
) {
    if list.value.is_empty() {
        kv(out, indent, key, "[]", list.referenced, path);
        return;
    }
    out.line(indent, &format!("{key}:"), list.referenced, path);
    for (k, v) in list.value.iter().enumerate() {
        out.line(
            indent + 2,
            &format!("- {}", scalar(&v.value)),
            v.referenced,
            &format!("{path}[{k}]"),
        );
    }
}

/// The manifest text of site `i`.
pub(super) fn render(raw: &RawNetwork, model: &Model, i: usize) -> Rendered {
    let mut out = Out {
        text: String::new(),
        origins: Vec::new(),
    };
    let site = &raw.sites.value[i].value;
    let here = site.name.referenced;
    let sp = format!("sites[{i}]");
    out.line(
        0,
        &format!(
            "# netman manifest v1: site {} of network {} (netman render; do not edit)",
            site.name.value, raw.network.value
        ),
        here,
        &sp,
    );
    kv(
        &mut out,
        0,
        "name",
        &scalar(&site.name.value),
        here,
        &format!("{sp}.name"),
    );

    out.line(0, "interface:", here, &sp);
    match effective!(raw, i, interface) {
        Some((v, p)) => kv(&mut out, 2, "name", &scalar(&v.value), v.referenced, &p),
        None => kv(&mut out, 2, "name", "nm0", here, &sp),
    }
    string_list(
        &mut out,
        2,
        "addresses",
        &site.addresses,
        &format!("{sp}.addresses"),
    );
    macro_rules! int_setting {
        ($field:ident) => {
            if let Some((v, p)) = effective!(raw, i, $field) {
                kv(
                    &mut out,
                    2,
                    stringify!($field),
                    &int(v.value),
                    v.referenced,
                    &p,
                );
            }
        };
    }
    int_setting!(mtu);
    int_setting!(txqueuelen);
    int_setting!(listen_port);
    if let Some((v, p)) = effective!(raw, i, private_key_file) {
        kv(
            &mut out,
            2,
            "private_key_file",
            &scalar(&v.value),
            v.referenced,
            &p,
        );
    }
    kv(
        &mut out,
        2,
        "public_key",
        &scalar(&site.public_key.value),
        site.public_key.referenced,
        &format!("{sp}.public_key"),
    );
    if let Some((v, p)) = effective!(raw, i, mss_clamp) {
        kv(
            &mut out,
            2,
            "mss_clamp",
            &int_or_word(&v.value),
            v.referenced,
            &p,
        );
    }
    if let Some((v, p)) = effective!(raw, i, table) {
        kv(
            &mut out,
            2,
            "table",
            &int_or_word(&v.value),
            v.referenced,
            &p,
        );
    }
    int_setting!(fwmark);

    let peers = &model.peers[i];
    if !peers.is_empty() {
        out.line(0, "peers:", here, &sp);
    }
    let keepalive = effective!(raw, i, persistent_keepalive);
    for &p in peers {
        let peer = &raw.sites.value[p].value;
        let pp = format!("sites[{p}]");
        kv(
            &mut out,
            2,
            "- name",
            &scalar(&peer.name.value),
            peer.name.referenced,
            &format!("{pp}.name"),
        );
        kv(
            &mut out,
            4,
            "public_key",
            &scalar(&peer.public_key.value),
            peer.public_key.referenced,
            &format!("{pp}.public_key"),
        );
        if let Some(ep) = &peer.endpoint {
            kv(
                &mut out,
                4,
                "endpoint",
                &scalar(&ep.value),
                ep.referenced,
                &format!("{pp}.endpoint"),
            );
        }
        let mut prefixes: Vec<(String, &str)> = Vec::new();
        let mut carried = vec![p];
        if model.relay[i] == Some(p) {
            carried.extend((0..raw.sites.value.len()).filter(|&q| q != i && model.spoke[q]));
        }
        for q in carried {
            for (net, path) in model.hosts[q].iter().chain(&model.subnets[q]) {
                prefixes.push((net.to_string(), path.as_str()));
            }
        }
        if prefixes.is_empty() {
            kv(
                &mut out,
                4,
                "allowed_ips",
                "[]",
                peer.addresses.referenced,
                &format!("{pp}.addresses"),
            );
        } else {
            out.line(
                4,
                "allowed_ips:",
                peer.addresses.referenced,
                &format!("{pp}.addresses"),
            );
        }
        for (net, path) in prefixes {
            let at = locate(raw, path).unwrap_or(peer.name.referenced);
            out.line(6, &format!("- {net}"), at, path);
        }
        if let Some((v, kp)) = &keepalive
            && peer.endpoint.is_some()
        {
            kv(
                &mut out,
                4,
                "persistent_keepalive",
                &int(v.value),
                v.referenced,
                kp,
            );
        }
    }

    if let Some((routes, p)) = effective!(raw, i, routes) {
        if routes.value.is_empty() {
            kv(&mut out, 0, "routes", "[]", routes.referenced, &p);
        } else {
            out.line(0, "routes:", routes.referenced, &p);
        }
        for (k, r) in routes.value.iter().enumerate() {
            let rp = format!("{p}[{k}]");
            let r = &r.value;
            kv(
                &mut out,
                2,
                "- to",
                &scalar(&r.to.value),
                r.to.referenced,
                &format!("{rp}.to"),
            );
            if let Some(m) = &r.metric {
                kv(
                    &mut out,
                    4,
                    "metric",
                    &int(m.value),
                    m.referenced,
                    &format!("{rp}.metric"),
                );
            }
        }
    }
    if let Some((v, p)) = effective!(raw, i, forwarding) {
        kv(
            &mut out,
            0,
            "forwarding",
            &v.value.to_string(),
            v.referenced,
            &p,
        );
    }
    if let Some((fw, p)) = effective!(raw, i, firewall) {
        firewall(&mut out, &fw.value, fw.referenced, &p);
    }
    if let Some((v, p)) = effective!(raw, i, watch) {
        kv(&mut out, 0, "watch", &v.value.to_string(), v.referenced, &p);
    }
    if let Some((m, p)) = effective!(raw, i, metrics) {
        out.line(0, "metrics:", m.referenced, &p);
        let l = &m.value.listen;
        kv(
            &mut out,
            2,
            "listen",
            &scalar(&l.value),
            l.referenced,
            &format!("{p}.listen"),
        );
    }
    if let Some((probes, p)) = effective!(raw, i, probes) {
        if probes.value.is_empty() {
            kv(&mut out, 0, "probes", "[]", probes.referenced, &p);
        } else {
            out.line(0, "probes:", probes.referenced, &p);
        }
        for (k, pr) in probes.value.iter().enumerate() {
            let ping = &pr.value.ping;
            kv(
                &mut out,
                2,
                "- ping",
                &scalar(&ping.value),
                ping.referenced,
                &format!("{p}[{k}].ping"),
            );
        }
    }
    if let Some((r, p)) = effective!(raw, i, rollout) {
        out.line(0, "rollout:", r.referenced, &p);
        let c = &r.value.confirm;
        kv(
            &mut out,
            2,
            "confirm",
            &scalar(&c.value),
            c.referenced,
            &format!("{p}.confirm"),
        );
        let t = &r.value.timeout;
        kv(
            &mut out,
            2,
            "timeout",
            &int(t.value),
            t.referenced,
            &format!("{p}.timeout"),
        );
    }
    Rendered {
        text: out.text,
        origins: out.origins,
    }
}

fn firewall(out: &mut Out, fw: &RawFirewall, at: Location, p: &str) {
    out.line(0, "firewall:", at, p);
    if let Some(chains) = &fw.chains {
        let cp = format!("{p}.chains");
        if chains.value.is_empty() {
            kv(out, 2, "chains", "[]", chains.referenced, &cp);
        } else {
            out.line(2, "chains:", chains.referenced, &cp);
        }
        for (k, c) in chains.value.iter().enumerate() {
            let c = &c.value;
            let cp = format!("{cp}[{k}]");
            kv(
                out,
                4,
                "- name",
                &scalar(&c.name.value),
                c.name.referenced,
                &format!("{cp}.name"),
            );
            kv(
                out,
                6,
                "hook",
                &scalar(&c.hook.value),
                c.hook.referenced,
                &format!("{cp}.hook"),
            );
            if let Some(t) = &c.kind {
                kv(
                    out,
                    6,
                    "type",
                    &scalar(&t.value),
                    t.referenced,
                    &format!("{cp}.type"),
                );
            }
            if let Some(v) = &c.priority {
                kv(
                    out,
                    6,
                    "priority",
                    &int(v.value),
                    v.referenced,
                    &format!("{cp}.priority"),
                );
            }
            if let Some(v) = &c.policy {
                kv(
                    out,
                    6,
                    "policy",
                    &scalar(&v.value),
                    v.referenced,
                    &format!("{cp}.policy"),
                );
            }
            if let Some(rules) = &c.rules {
                string_list(out, 6, "rules", rules, &format!("{cp}.rules"));
            }
        }
    }
    if let Some(insert) = &fw.insert {
        let ip = format!("{p}.insert");
        if insert.value.is_empty() {
            kv(out, 2, "insert", "[]", insert.referenced, &ip);
        } else {
            out.line(2, "insert:", insert.referenced, &ip);
        }
        for (k, r) in insert.value.iter().enumerate() {
            let r = &r.value;
            let rp = format!("{ip}[{k}]");
            kv(
                out,
                4,
                "- family",
                &scalar(&r.family.value),
                r.family.referenced,
                &format!("{rp}.family"),
            );
            kv(
                out,
                6,
                "table",
                &scalar(&r.table.value),
                r.table.referenced,
                &format!("{rp}.table"),
            );
            kv(
                out,
                6,
                "chain",
                &scalar(&r.chain.value),
                r.chain.referenced,
                &format!("{rp}.chain"),
            );
            kv(
                out,
                6,
                "rule",
                &scalar(&r.rule.value),
                r.rule.referenced,
                &format!("{rp}.rule"),
            );
        }
    }
}
