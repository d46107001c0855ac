//! The manifest `netman import` writes: the imported configuration
//! rendered through the YAML emitter into a typed document (only the
//! sections import fills in), and read back — as that document and as a
//! manifest — to check it says exactly what import meant.

use super::*;

/// The manifest import writes, as the YAML emitter sees it: only the
/// sections import fills in. Reading the written text back into this type
/// (unknown keys refused at every level) and comparing is how import checks
/// that the manifest says exactly what it meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Doc {
    pub(super) name: String,
    pub(super) interface: DocInterface,
    pub(super) peers: Vec<DocPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) forwarding: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) firewall: Option<DocFirewall>,
}

/// `firewall:` as import writes it: chains of netman's table only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocFirewall {
    pub(super) chains: Vec<DocChain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocChain {
    pub(super) name: String,
    pub(super) hook: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) policy: Option<String>,
    /// Each rule with the comment naming its source line (read back too:
    /// a comment that moved or changed is a difference).
    pub(super) rules: Vec<Commented<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocInterface {
    pub(super) name: String,
    pub(super) addresses: FlowSeq<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) listen_port: Option<u16>,
    pub(super) private_key_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) table: Option<ImportedTable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fwmark: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocPeer {
    pub(super) name: String,
    pub(super) public_key: DoubleQuoted<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) endpoint: Option<String>,
    pub(super) allowed_ips: FlowSeq<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) persistent_keepalive: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) preshared_key_file: Option<String>,
}

/// The files an import writes: the manifest, the private key, and one
/// preshared key file per peer that has one (paths relative to the
/// manifest's directory). Not `Debug`: it holds keys.
pub struct Output {
    pub manifest: String,
    pub private_key_file: String,
    pub private_key: Zeroizing<String>,
    pub psk_files: Vec<(String, Zeroizing<String>)>,
    /// What `manifest` must read back as.
    doc: Doc,
}

/// Render the manifest for deployment `name` (from the wg-quick file
/// `source`), naming key files under `keys/`.
pub fn render(imp: &Imported, name: &str, source: &str) -> Result<Output, ImportError> {
    let key_file = format!("keys/{name}.key");
    let mut psk_files = Vec::with_capacity(imp.peers.len());
    let mut peers = Vec::with_capacity(imp.peers.len());
    for p in &imp.peers {
        let preshared_key_file = p.preshared_key.as_ref().map(|psk| {
            let f = format!("keys/{name}-{}.psk", p.name);
            psk_files.push((f.clone(), psk.to_base64()));
            f
        });
        peers.push(DocPeer {
            name: p.name.clone(),
            public_key: DoubleQuoted(p.public_key.to_base64()),
            endpoint: p.endpoint.clone(),
            allowed_ips: FlowSeq(p.allowed_ips.iter().map(ToString::to_string).collect()),
            persistent_keepalive: p.persistent_keepalive,
            preshared_key_file,
        });
    }
    let doc = Doc {
        name: name.to_string(),
        interface: DocInterface {
            name: imp.interface.clone(),
            addresses: FlowSeq(imp.addresses.iter().map(ToString::to_string).collect()),
            mtu: imp.mtu,
            listen_port: imp.listen_port,
            private_key_file: key_file.clone(),
            table: imp.table.clone(),
            fwmark: imp.fwmark,
        },
        peers,
        forwarding: imp.forwarding.then_some(true),
        firewall: doc_firewall(&imp.firewall),
    };
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Imported by `netman import` from {}.",
        one_line(source)
    );
    for n in &imp.notes {
        let _ = writeln!(m, "# note: {}", one_line(n));
    }
    // Single-line scalars only: plain when that is safe, else quoted with
    // every control character and line break escaped.
    // Peers indented under `peers:`, as in the README; a rule's comment on
    // its line.
    let options = serde_saphyr::ser_options! {
        prefer_block_scalars: false,
        compact_list_indent: false,
        comment_position: serde_saphyr::CommentPosition::Inline,
    };
    serde_saphyr::to_fmt_writer_with_options(&mut m, &doc, options)
        .map_err(|e| ImportError::Render(one_line(&e.to_string())))?;
    Ok(Output {
        manifest: m,
        private_key_file: key_file,
        private_key: imp.private_key.to_base64(),
        psk_files,
        doc,
    })
}

/// The chains of netman's table the imported rules go into: `forward`
/// (filter, policy accept, as the chain iptables added them to kept the
/// host's policy) and `postrouting` (nat), only those with rules. Each rule
/// carries the comment `from line N: KEY COMMAND`, reduced to one line.
fn doc_firewall(rules: &[ImportedRule]) -> Option<DocFirewall> {
    let of = |chain: Chain| -> Vec<Commented<String>> {
        rules
            .iter()
            .filter(|r| r.rule.chain == chain)
            .map(|r| {
                Commented(
                    r.rule.nft(),
                    one_line(&format!("from line {}: {}", r.line, r.source)),
                )
            })
            .collect()
    };
    let mut chains = Vec::new();
    let forward = of(Chain::Forward);
    if !forward.is_empty() {
        chains.push(DocChain {
            name: "forward".into(),
            hook: Hook::Forward.as_str().into(),
            kind: None,
            policy: Some(Policy::Accept.as_str().into()),
            rules: forward,
        });
    }
    let postrouting = of(Chain::Postrouting);
    if !postrouting.is_empty() {
        chains.push(DocChain {
            name: "postrouting".into(),
            hook: Hook::Postrouting.as_str().into(),
            kind: Some(ChainType::Nat.as_str().into()),
            policy: None,
            rules: postrouting,
        });
    }
    (!chains.is_empty()).then_some(DocFirewall { chains })
}

/// Whether the validated `firewall` is exactly the chains of `doc` (with
/// the defaults the manifest gives what import leaves out) and inserts
/// nothing.
fn same_firewall(m: &manifest::Firewall, doc: Option<&DocFirewall>) -> bool {
    let chains = doc.map(|f| f.chains.as_slice()).unwrap_or_default();
    m.insert.is_empty()
        && m.chains.len() == chains.len()
        && m.chains.iter().zip(chains).all(|(mc, dc)| {
            let kind = dc.kind.as_deref().unwrap_or(ChainType::Filter.as_str());
            mc.name == dc.name
                && mc.hook.as_str() == dc.hook
                && mc.kind.as_str() == kind
                && mc.priority == mc.kind.default_priority(mc.hook)
                && mc.policy.as_str() == dc.policy.as_deref().unwrap_or(Policy::Accept.as_str())
                && mc.rules.len() == dc.rules.len()
                && mc
                    .rules
                    .iter()
                    .zip(&dc.rules)
                    .all(|(mr, dr)| mr.text == dr.0)
        })
}

/// Read `text` back (as the manifest at `path`) and check it says exactly
/// what `out` meant: the same keys with the same values (the rules' comments
/// included) and nothing else, and, when it validates, `forwarding` and
/// `firewall` exactly as meant and no section import does not write
/// (metrics, routes, `watch: false`). Returns the validation.
pub(super) fn check_reads_back(
    out: &Output,
    text: &str,
    path: &Path,
) -> Result<Result<Manifest, ManifestErrors>, ImportError> {
    let unfaithful = |reason: String| ImportError::Unfaithful {
        path: path.display().to_string(),
        reason,
    };
    let back: Doc = serde_saphyr::from_str_with_options(text, manifest::parser_options())
        .map_err(|e| unfaithful(one_line(&e.to_string())))?;
    if back != out.doc {
        return Err(unfaithful("it reads back with other values".into()));
    }
    let parsed = manifest::parse(text, path);
    if let Ok(m) = &parsed {
        let doc = &out.doc;
        let mut wrong = Vec::new();
        if m.forwarding != doc.forwarding.unwrap_or(false) {
            wrong.push("forwarding");
        }
        if !same_firewall(&m.firewall, doc.firewall.as_ref()) {
            wrong.push("firewall");
        }
        if m.metrics.is_some() {
            wrong.push("metrics");
        }
        if !m.routes.is_empty() {
            wrong.push("routes");
        }
        if !m.watch {
            wrong.push("watch");
        }
        if m.name != doc.name {
            wrong.push("name");
        }
        if m.interface.name != doc.interface.name
            || m.interface.listen_port != doc.interface.listen_port
            || m.interface.addresses.len() != doc.interface.addresses.0.len()
        {
            wrong.push("interface");
        }
        let same_peers = m.peers.len() == doc.peers.len()
            && m.peers.iter().zip(&doc.peers).all(|(mp, dp)| {
                mp.name == dp.name
                    && mp.public_key.to_base64() == dp.public_key.0
                    && mp.endpoint.is_some() == dp.endpoint.is_some()
                    && mp.allowed_ips.len() == dp.allowed_ips.0.len()
                    && mp.persistent_keepalive == dp.persistent_keepalive
                    && mp.preshared_key_file.is_some() == dp.preshared_key_file.is_some()
            });
        if !same_peers {
            wrong.push("peers");
        }
        if !wrong.is_empty() {
            return Err(unfaithful(format!("unexpected {}", wrong.join(", "))));
        }
    }
    Ok(parsed)
}
