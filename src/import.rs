//! `netman import`: turn a wg-quick configuration (`wg0.conf`) into a
//! manifest. Keys are never written into the manifest: the private key and
//! preshared keys go to separate files (mode 0600) that the manifest names.
//! Scripts (`PostUp` and friends) are never executed. The forwarding and
//! NAT commands of a hub (`iptables -A FORWARD -i %i -j ACCEPT`, `-t nat
//! -A POSTROUTING -o eth0 -j MASQUERADE`, the forwarding sysctls, and the
//! `PostDown` lines that undo them) are recognised from a closed set of
//! forms, parsed into typed rules ([`scripts`]), and written as
//! `forwarding: true` and rules of `firewall.chains`, each with a comment
//! naming its source line; every other command is reported as a note.
//!
//! The wg-quick file is untrusted input. It is read with a bound into a
//! buffer that is zeroized (it holds the private key). Every value that
//! reaches the manifest goes through the YAML emitter (`serde-saphyr`),
//! never through string formatting, and the notes written as comments are
//! first reduced to one printable line ([`one_line`]), as are the rules'
//! comments. A rule's text is made from its typed, validated fields (never
//! from the file's text) and then emitted as a scalar like any other value.
//! The manifest is read back before and after it is written and must say
//! exactly what import meant (same keys, same values, the same rules with
//! the same comments, no other section), or nothing is left behind. Output
//! files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` relative to directory
//! descriptors (`keys/` opened with `O_NOFOLLOW`), so nothing is written
//! through a symbolic link, and a failed import removes what it wrote.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use netman_proto::keys::{PresharedKey, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Commented, DoubleQuoted, FlowSeq};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::manifest::{self, ChainType, Hook, Manifest, ManifestErrors, Policy};

mod render;
pub mod scripts;
mod write;

#[cfg(test)]
use render::Doc;
use render::check_reads_back;
pub use render::{Output, render};

use scripts::{Chain, ImportedRule, Script};
use write::{Where, Writer, refuse_existing};

/// wg-quick files larger than this are refused (real ones are a few KiB).
pub const MAX_CONF_BYTES: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Missing { file: String, message: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path}: too large (more than {limit} bytes; a wg-quick file is a few kilobytes)")]
    TooLarge { path: String, limit: usize },
    #[error("{path}: not UTF-8 text")]
    NotUtf8 { path: String },
    #[error("cannot derive a deployment name from {stem:?}; pass --name")]
    NoName { stem: String },
    #[error("{name:?} is not a deployment name (1 to 32 of a-z, 0-9 and '-'); pass another --name")]
    BadName { name: String },
    #[error("{path} exists; not overwriting (choose another --output-dir or --name)")]
    Exists { path: String },
    #[error("{path} is a symbolic link; not writing through it")]
    Symlink { path: String },
    #[error("{path}: {reason}; not writing key files into it")]
    UntrustedKeysDir { path: String, reason: String },
    #[error("{path} exists and is not a directory")]
    NotADir { path: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("render the manifest: {0}")]
    Render(String),
    #[error(
        "{path}: the manifest does not read back as what import meant to write ({reason}); nothing written"
    )]
    Unfaithful { path: String, reason: String },
}

/// One imported peer.
pub struct ImportedPeer {
    pub name: String,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// wg-quick's `Table` as `interface.table` writes it: a word or a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImportedTable {
    Id(u32),
    Word(String),
}

/// wg-quick's `Table` value: `Ok(None)` for `auto`, an error message
/// (a note) for what netman cannot take.
fn import_table(value: &str) -> Result<Option<ImportedTable>, String> {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    match lower.as_str() {
        "auto" => return Ok(None),
        "off" | "main" => return Ok(Some(ImportedTable::Word(lower))),
        _ => {}
    }
    match v.parse::<u32>() {
        Ok(254) => Ok(Some(ImportedTable::Word("main".into()))),
        Ok(n @ (0 | 253 | 255)) => Err(format!(
            "table {n} is reserved by the kernel; interface.table takes main, off or another number"
        )),
        Ok(n) => Ok(Some(ImportedTable::Id(n))),
        Err(_) => Err(
            "interface.table takes main, off or a number (look the name up in /etc/iproute2/rt_tables)"
                .into(),
        ),
    }
}

/// wg-quick's (wg's) `FwMark`: `off`, or a number, decimal or `0x` hex.
fn import_fwmark(value: &str) -> Result<Option<u32>, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse::<u32>(),
    }
    .map_err(|_| "not a 32-bit number".to_string())?;
    Ok((n != 0).then_some(n))
}

/// A parsed wg-quick configuration. Not `Debug`: it holds keys.
pub struct Imported {
    pub interface: String,
    pub private_key: PrivateKey,
    pub addresses: Vec<IpNet>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    /// `Table`, as `interface.table` (`auto` is the default: `None`).
    pub table: Option<ImportedTable>,
    /// `FwMark`, as `interface.fwmark` (`off`/0: `None`).
    pub fwmark: Option<u32>,
    pub peers: Vec<ImportedPeer>,
    /// A forwarding sysctl or FORWARD rules in the scripts:
    /// `forwarding: true`.
    pub forwarding: bool,
    /// The recognised rules of the scripts, `forward` chain first, each in
    /// order.
    pub firewall: Vec<ImportedRule>,
    /// What import did with the scripts and what netman does not carry
    /// over, one line each, in the order of the file's lines, for the user
    /// (reduced to one printable line by [`one_line`]).
    pub notes: Vec<String>,
}

/// `s` as one printable line: control characters (C0, DEL, C1 such as
/// NEL), the Unicode line and paragraph separators, byte-order marks,
/// non-characters and the invisible formatting characters a terminal or
/// editor would hide or reorder text with (bidi controls, zero-width
/// characters) are written as `\r`, `\n` or `\u{XXXX}`. Tab stays. The
/// result cannot end a YAML comment or a terminal line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if is_hidden(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{fffe}'
                | '\u{ffff}'
        )
}

/// Whether a wg-quick `Endpoint` value can be one: `HOST:PORT` or
/// `[V6]:PORT` (a zone allowed) is made of these characters only. The
/// manifest validates the form; this keeps quotes, spaces and line breaks
/// out.
fn is_endpoint_text(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 300
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]%".contains(&b))
}

/// Parse wg-quick `text` (from `file`, whose stem names the interface).
pub fn parse(text: &str, file: &str, interface: &str) -> Result<Imported, ImportError> {
    let syntax = |line: usize, message: String| ImportError::Syntax {
        file: file.to_string(),
        line,
        message,
    };
    enum Section {
        None,
        Interface,
        Peer,
    }
    let mut section = Section::None;
    let mut private_key = None;
    let mut addresses = Vec::new();
    let mut listen_port = None;
    let mut mtu = None;
    let mut table = None;
    let mut fwmark = None;
    // Each note with the line it is about.
    let mut notes: Vec<(usize, String)> = Vec::new();
    let mut scripts: Vec<Script<'_>> = Vec::new();
    let mut peers: Vec<ImportedPeer> = Vec::new();
    let mut pending_name: Option<String> = None;

    // Peers are finished when the next section starts or at the end.
    struct PeerDraft {
        line: usize,
        name: Option<String>,
        public_key: Option<PublicKey>,
        preshared_key: Option<PresharedKey>,
        endpoint: Option<String>,
        allowed_ips: Vec<IpNet>,
        keepalive: Option<u16>,
    }
    let mut draft: Option<PeerDraft> = None;
    let finish = |d: PeerDraft, peers: &mut Vec<ImportedPeer>| -> Result<(), ImportError> {
        let Some(public_key) = d.public_key else {
            return Err(syntax(d.line, "[Peer] without PublicKey".into()));
        };
        let name = d
            .name
            .unwrap_or_else(|| format!("peer-{}", peers.len() + 1));
        peers.push(ImportedPeer {
            name,
            public_key,
            preshared_key: d.preshared_key,
            endpoint: d.endpoint,
            allowed_ips: d.allowed_ips,
            persistent_keepalive: d.keepalive,
        });
        Ok(())
    };

    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            // `# Name = site-b` (anywhere in a peer, or before it) or a
            // plain `# site-b` right before a [Peer] names that peer.
            let c = comment.trim();
            let named = c
                .split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("name"))
                .map(|(_, v)| v.trim());
            match (named, draft.as_mut()) {
                (Some(n), Some(d)) if d.name.is_none() => d.name = sanitize_name(n),
                (Some(n), _) => pending_name = sanitize_name(n),
                // A commented-out setting (`#PersistentKeepalive = 25`)
                // names nothing.
                (None, _) if c.contains('=') => pending_name = None,
                (None, _) => pending_name = sanitize_name(c),
            }
            continue;
        }
        if line.starts_with('[') {
            if let Some(d) = draft.take() {
                finish(d, &mut peers)?;
            }
            match line.to_ascii_lowercase().as_str() {
                "[interface]" => section = Section::Interface,
                "[peer]" => {
                    section = Section::Peer;
                    draft = Some(PeerDraft {
                        line: line_no,
                        name: pending_name.take(),
                        public_key: None,
                        preshared_key: None,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        keepalive: None,
                    });
                }
                other => {
                    return Err(syntax(
                        line_no,
                        format!("unknown section {}", one_line(other)),
                    ));
                }
            }
            continue;
        }
        pending_name = None;
        let Some((key, value)) = line.split_once('=') else {
            return Err(syntax(line_no, "expected `Key = Value`".into()));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        // A trailing comment on a value line.
        let value = value.split(" #").next().unwrap_or(value).trim();
        match section {
            Section::None => return Err(syntax(line_no, "setting outside of a section".into())),
            Section::Interface => match key.as_str() {
                "privatekey" => {
                    private_key = Some(PrivateKey::from_base64(value).map_err(|_| {
                        syntax(line_no, "PrivateKey is not a valid key".into())
                    })?)
                }
                "address" => {
                    for a in split_list(value) {
                        let net: IpNet = a
                            .parse()
                            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| syntax(line_no, format!("Address {a:?} is not an address")))?;
                        addresses.push(net);
                    }
                }
                "listenport" => {
                    listen_port = Some(value.parse().map_err(|_| {
                        syntax(line_no, format!("ListenPort {value:?} is not a port"))
                    })?)
                }
                "mtu" => {
                    mtu = Some(
                        value
                            .parse()
                            .map_err(|_| syntax(line_no, format!("MTU {value:?} is not a number")))?,
                    )
                }
                "postup" | "postdown" | "preup" | "predown" => {
                    // Recognised (never run) once the whole file is read:
                    // a down script's undo may come before its up script.
                    let key = raw_key(raw);
                    scripts.extend(
                        value
                            .split(';')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(|cmd| Script {
                                line: line_no,
                                key,
                                cmd,
                            }),
                    );
                }
                "dns" => notes.push((line_no, format!(
                    "line {line_no}: DNS = {value} is not managed by netman; configure the resolver separately"
                ))),
                "table" => match import_table(value) {
                    Ok(t) => table = t,
                    Err(why) => notes.push((line_no, format!(
                        "line {line_no}: Table = {value} not carried over: {why}"
                    ))),
                },
                "fwmark" => match import_fwmark(value) {
                    Ok(m) => fwmark = m,
                    Err(why) => notes.push((line_no, format!(
                        "line {line_no}: FwMark = {value} not carried over: {why}"
                    ))),
                },
                "saveconfig" => notes.push((line_no, format!("line {line_no}: SaveConfig ignored"))),
                other => {
                    return Err(syntax(
                        line_no,
                        format!("unknown [Interface] key {}", one_line(other)),
                    ));
                }
            },
            Section::Peer => {
                let Some(d) = draft.as_mut() else {
                    return Err(syntax(line_no, "setting outside of a section".into()));
                };
                match key.as_str() {
                    "publickey" => {
                        d.public_key = Some(PublicKey::from_base64(value).map_err(|_| {
                            syntax(line_no, "PublicKey is not a valid key".into())
                        })?)
                    }
                    "presharedkey" => {
                        d.preshared_key = Some(PresharedKey::from_base64(value).map_err(|_| {
                            syntax(line_no, "PresharedKey is not a valid key".into())
                        })?)
                    }
                    "endpoint" => {
                        if !is_endpoint_text(value) {
                            return Err(syntax(
                                line_no,
                                format!("Endpoint {value:?} is not HOST:PORT"),
                            ));
                        }
                        // As the manifest will read it (`host:03640` is
                        // port 3640), where it can.
                        d.endpoint = Some(
                            manifest::parse_endpoint(value)
                                .map_or_else(|_| value.to_string(), |e| e.to_string()),
                        );
                    }
                    "allowedips" => {
                        for a in split_list(value) {
                            let net: IpNet = a
                                .parse()
                                .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                                .map_err(|_| {
                                    syntax(line_no, format!("AllowedIPs {a:?} is not a prefix"))
                                })?;
                            let trunc = net.trunc();
                            if trunc != net {
                                notes.push((line_no, format!(
                                    "line {line_no}: AllowedIPs {net} has host bits set; imported as {trunc}"
                                )));
                            }
                            if trunc.prefix_len() == 0 {
                                notes.push((line_no, format!(
                                    "line {line_no}: AllowedIPs {trunc} routes everything through the tunnel; unless interface.table says otherwise, netman (like wg-quick) keeps the tunnel's own datagrams out of it with a routing table, an fwmark and two policy rules of its own (see interface.table in docs/manifest.md)"
                                )));
                            }
                            d.allowed_ips.push(trunc);
                        }
                    }
                    "persistentkeepalive" => {
                        if value.eq_ignore_ascii_case("off") || value == "0" {
                            d.keepalive = None;
                        } else {
                            d.keepalive = Some(value.parse().map_err(|_| {
                                syntax(line_no, format!("PersistentKeepalive {value:?} is not a number"))
                            })?);
                        }
                    }
                    other => {
                        return Err(syntax(
                            line_no,
                            format!("unknown [Peer] key {}", one_line(other)),
                        ));
                    }
                }
            }
        }
    }
    if let Some(d) = draft.take() {
        finish(d, &mut peers)?;
    }
    let private_key = private_key.ok_or_else(|| ImportError::Missing {
        file: file.to_string(),
        message: "[Interface] has no PrivateKey".into(),
    })?;
    if addresses.is_empty() {
        return Err(ImportError::Missing {
            file: file.to_string(),
            message: "[Interface] has no Address (netman needs at least one)".into(),
        });
    }
    // Unique peer names.
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in peers.iter_mut().enumerate() {
        if !seen.insert(p.name.clone()) {
            p.name = format!("{}-{}", p.name, i + 1);
            seen.insert(p.name.clone());
        }
    }
    let fw = scripts::translate(&scripts, interface);
    notes.extend(fw.notes);
    // In the order of the file (stable: a line's notes keep theirs).
    notes.sort_by_key(|(line, _)| *line);
    Ok(Imported {
        interface: interface.to_string(),
        private_key,
        addresses,
        listen_port,
        mtu,
        table,
        fwmark,
        peers,
        forwarding: fw.forwarding,
        firewall: fw.rules,
        notes: notes.into_iter().map(|(_, n)| one_line(&n)).collect(),
    })
}

fn raw_key(raw: &str) -> &str {
    raw.split('=').next().unwrap_or("").trim()
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A peer or deployment name from free text: lower case, `[a-z0-9-]`.
pub fn sanitize_name(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out
        .trim_end_matches('-')
        .chars()
        .take(32)
        .collect::<String>();
    (!out.is_empty()).then_some(out)
}

/// What [`import_file`] wrote.
pub struct Written {
    /// `DIR/NAME.yaml`.
    pub manifest_path: PathBuf,
    /// `DIR/keys`.
    pub keys_dir: PathBuf,
    /// What was not carried over, one printable line each.
    pub notes: Vec<String>,
    /// The manifest as validated (written anyway when invalid: exit 2).
    pub validation: Result<Manifest, ManifestErrors>,
}

/// Read the wg-quick file at `path`: a regular file of at most
/// [`MAX_CONF_BYTES`], into a buffer allocated once and zeroized on drop
/// (the file holds the private key).
pub fn read_conf(path: &Path) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    let label = path.display().to_string();
    let err = |source| ImportError::Read {
        path: label.clone(),
        source,
    };
    // O_NONBLOCK: a FIFO in place of the file must not hang the open.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    if !f.metadata().map_err(err)?.is_file() {
        return Err(ImportError::NotAFile { path: label });
    }
    let mut buf = Zeroizing::new(vec![0u8; MAX_CONF_BYTES + 1]);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    if n > MAX_CONF_BYTES {
        return Err(ImportError::TooLarge {
            path: label,
            limit: MAX_CONF_BYTES,
        });
    }
    buf.truncate(n);
    Ok(buf)
}

/// `netman import FILE [--name NAME] [-o DIR]`: read and convert the
/// wg-quick file, write `DIR/NAME.yaml` and the key files under
/// `DIR/keys/`, never over an existing file nor through a symbolic link;
/// on any failure, nothing that was written is left behind.
pub fn import_file(file: &Path, name: Option<&str>, dir: &Path) -> Result<Written, ImportError> {
    let buf = read_conf(file)?;
    let label = one_line(&file.display().to_string());
    let text = std::str::from_utf8(&buf).map_err(|_| ImportError::NotUtf8 {
        path: label.clone(),
    })?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("wg0")
        .to_string();
    let ifname: String = stem.chars().take(15).collect();
    let name = match name {
        Some(n) => n.to_string(),
        None => sanitize_name(&stem).ok_or_else(|| ImportError::NoName { stem: stem.clone() })?,
    };
    // The name becomes file names: check it before writing anything.
    if !manifest::is_deployment_name(&name) {
        return Err(ImportError::BadName { name });
    }
    let imp = parse(text, &label, &ifname)?;
    let out = render(&imp, &name, &label)?;
    let manifest_name = format!("{name}.yaml");
    let manifest_path = dir.join(&manifest_name);
    // Refuse before anything is written if the text is not what we meant.
    let _ = check_reads_back(&out, &out.manifest, &manifest_path)?;

    // Never overwrite (keys especially), never through a link: all of it
    // checked before anything is written; the writes below check again.
    refuse_existing(&manifest_path)?;
    let keys_path = dir.join("keys");
    match std::fs::symlink_metadata(&keys_path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(ImportError::Symlink {
                path: keys_path.display().to_string(),
            });
        }
        Ok(m) if !m.is_dir() => {
            return Err(ImportError::NotADir {
                path: keys_path.display().to_string(),
            });
        }
        _ => {}
    }
    refuse_existing(&dir.join(&out.private_key_file))?;
    for (f, _) in &out.psk_files {
        refuse_existing(&dir.join(f))?;
    }

    let mut w = Writer::open(dir)?;
    w.open_keys_dir()?;
    let mut secrets = Vec::with_capacity(1 + out.psk_files.len());
    secrets.push((&out.private_key_file, &out.private_key));
    secrets.extend(out.psk_files.iter().map(|(f, k)| (f, k)));
    for (rel, key) in secrets {
        let file_name = rel.strip_prefix("keys/").unwrap_or(rel);
        // One pre-sized buffer: the key and its newline, zeroized on drop.
        let mut line = Zeroizing::new(Vec::with_capacity(key.len() + 1));
        line.extend_from_slice(key.as_bytes());
        line.push(b'\n');
        w.create(Where::Keys, file_name, 0o600, &line)?;
    }
    w.create(Where::Dir, &manifest_name, 0o666, out.manifest.as_bytes())?;
    // Read back what is now on disk and check it once more.
    let on_disk = w.read_back(&manifest_name, out.manifest.len())?;
    let on_disk = std::str::from_utf8(&on_disk)
        .ok()
        .filter(|t| *t == out.manifest)
        .ok_or_else(|| ImportError::Unfaithful {
            path: manifest_path.display().to_string(),
            reason: "the file holds other bytes than were written".into(),
        })?;
    let validation = check_reads_back(&out, on_disk, &manifest_path)?;
    w.commit();
    Ok(Written {
        manifest_path,
        keys_dir: keys_path,
        notes: imp.notes,
        validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "\
# wg0 on the hub
[Interface]
Address = 10.8.0.1/24, fd42:42:42::1/64
ListenPort = 51820
PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=
MTU = 1420
SaveConfig = false
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE; echo up
PostDown = iptables -D FORWARD -i %i -j ACCEPT

# laptop
[Peer]
PublicKey = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
AllowedIPs = 10.8.0.2/32, fd42:42:42::2/128

[Peer]
# Name = Branch Office #2
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
Endpoint = branch.example.net:51820
AllowedIPs = 10.8.0.3/32, 192.168.20.5/24
PersistentKeepalive = 25
";

    const CLIENT: &str = "\
[Interface]
PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=
Address = 10.8.0.2/32
DNS = 1.1.1.1, 9.9.9.9

[Peer]
PublicKey = NMhRCnaqtzbpu7h1R8CWi9kRSB1sZ0yY2BbOUgFJVmU=
Endpoint = [2001:db8::1]:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 15
";

    #[test]
    fn server_config_imports_with_names_notes_and_keys() {
        let imp = parse(SERVER, "wg0.conf", "wg0").expect("parse");
        assert_eq!(imp.interface, "wg0");
        assert_eq!(imp.listen_port, Some(51820));
        assert_eq!(imp.mtu, Some(1420));
        assert_eq!(
            imp.private_key.public_key().to_base64(),
            "V4rUiYSmRyeAkPT7GM/ETiJGHx76LuE2faJytobSM0c="
        );
        let names: Vec<&str> = imp.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["laptop", "branch-office-2"]);
        assert!(imp.peers[0].preshared_key.is_some());
        assert_eq!(
            imp.peers[1].endpoint.as_deref(),
            Some("branch.example.net:51820")
        );
        assert_eq!(imp.peers[1].allowed_ips[1].to_string(), "192.168.20.0/24");
        assert_eq!(imp.peers[1].persistent_keepalive, Some(25));
        // The hub's forwarding and NAT are carried over, their undo is
        // understood, the rest is a note.
        assert!(imp.forwarding);
        let rules: Vec<(usize, String)> = imp
            .firewall
            .iter()
            .map(|r| (r.line, r.rule.nft()))
            .collect();
        assert_eq!(
            rules,
            vec![
                (8, r#"meta nfproto ipv4 iifname "wg0" accept"#.to_string()),
                (
                    8,
                    r#"meta nfproto ipv4 oifname "eth0" masquerade"#.to_string()
                ),
            ]
        );
        assert!(
            !imp.notes.iter().any(|n| n.contains("firewall command")),
            "{:#?}",
            imp.notes
        );
        assert!(imp.notes.iter().any(|n| n
            == "line 9: PostDown iptables -D FORWARD -i %i -j ACCEPT: not executed; understood as the undo of line 8 (netman deletes its table at `down`)"));
        assert!(
            imp.notes
                .iter()
                .any(|n| n == "line 8: PostUp command, not executed: echo up")
        );
        // In the order of the file.
        let lines: Vec<usize> = imp
            .notes
            .iter()
            .filter_map(|n| n.strip_prefix("line ")?.split(':').next()?.parse().ok())
            .collect();
        assert_eq!(lines.len(), imp.notes.len(), "{:#?}", imp.notes);
        assert!(lines.is_sorted(), "{lines:?}");
        assert!(imp.notes.iter().any(|n| n.contains("host bits set")));
        assert!(imp.notes.iter().any(|n| n.contains("SaveConfig")));
    }

    #[test]
    fn client_config_notes_dns_and_default_route() {
        let imp = parse(CLIENT, "client.conf", "client").expect("parse");
        assert_eq!(imp.peers[0].name, "peer-1");
        assert_eq!(
            imp.peers[0].endpoint.as_deref(),
            Some("[2001:db8::1]:51820")
        );
        assert!(imp.notes.iter().any(|n| n.contains("DNS")));
        assert_eq!(
            imp.notes
                .iter()
                .filter(|n| n.contains("routes everything"))
                .count(),
            2
        );
    }

    #[test]
    fn errors_name_the_line_and_never_the_key() {
        let bad = SERVER.replace(
            "PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=",
            "PrivateKey = YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30",
        );
        let e = parse(&bad, "wg0.conf", "wg0")
            .err()
            .expect("bad key")
            .to_string();
        assert_eq!(e, "wg0.conf:5: PrivateKey is not a valid key");
        let e = parse("[Interface]\nAddress = 10.0.0.1/24\n", "x.conf", "x")
            .err()
            .expect("no key")
            .to_string();
        assert!(e.contains("no PrivateKey"), "{e}");
        let e = parse("[Interface]\nFoo = 1\n", "x.conf", "x")
            .err()
            .expect("unknown")
            .to_string();
        assert_eq!(e, "x.conf:2: unknown [Interface] key foo");
        let e = parse(
            "[Peer]\nAllowedIPs = 10.0.0.0/8\n[Interface]\n",
            "x.conf",
            "x",
        )
        .err()
        .expect("no pubkey")
        .to_string();
        assert_eq!(e, "x.conf:1: [Peer] without PublicKey");
    }

    #[test]
    fn rendered_manifest_round_trips_through_validation() {
        for (text, file) in [(SERVER, "wg0.conf"), (CLIENT, "client.conf")] {
            let iface = file.trim_end_matches(".conf");
            let imp = parse(text, file, iface).expect("parse");
            let out = render(&imp, "site-x", file).expect("render");
            assert!(
                !out.manifest
                    .contains("YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=")
            );
            assert!(
                !out.manifest
                    .contains("FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=")
            );
            let m =
                crate::manifest::parse(&out.manifest, std::path::Path::new("/etc/netman/x.yaml"))
                    .unwrap_or_else(|e| panic!("{file}: {e}\n{}", out.manifest));
            assert_eq!(m.interface.name, iface);
            assert_eq!(m.interface.addresses, imp.addresses);
            assert_eq!(m.interface.listen_port, imp.listen_port);
            assert_eq!(
                m.interface.private_key_file,
                std::path::PathBuf::from("/etc/netman/keys/site-x.key")
            );
            assert_eq!(m.peers.len(), imp.peers.len());
            for (mp, ip) in m.peers.iter().zip(&imp.peers) {
                assert_eq!(mp.name, ip.name);
                assert_eq!(mp.public_key.to_base64(), ip.public_key.to_base64());
                assert_eq!(mp.allowed_ips, ip.allowed_ips);
                assert_eq!(mp.persistent_keepalive, ip.persistent_keepalive);
                assert_eq!(mp.endpoint.as_ref().map(ToString::to_string), ip.endpoint);
                assert_eq!(mp.preshared_key_file.is_some(), ip.preshared_key.is_some());
            }
            assert_eq!(
                PrivateKey::from_base64(&out.private_key)
                    .expect("key")
                    .public_key(),
                imp.private_key.public_key()
            );
        }
    }

    #[test]
    fn one_line_escapes_line_breaks_and_hidden_characters() {
        for (input, want) in [
            ("plain text: 1, 2 # ok", "plain text: 1, 2 # ok"),
            ("tab\tstays", "tab\tstays"),
            ("a\rb", "a\\rb"),
            ("a\nb", "a\\nb"),
            ("a\u{85}b", "a\\u{0085}b"),
            ("a\u{2028}b\u{2029}c", "a\\u{2028}b\\u{2029}c"),
            ("\u{feff}bom", "\\u{feff}bom"),
            ("\x1b[2Khidden", "\\u{001b}[2Khidden"),
            ("\x7f\u{9b}", "\\u{007f}\\u{009b}"),
            ("rtl\u{202e}txt", "rtl\\u{202e}txt"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("Zürich ✓", "Zürich ✓"),
        ] {
            let got = one_line(input);
            assert_eq!(got, want, "{input:?}");
            assert!(!got.chars().any(|c| c != '\t' && is_hidden(c)), "{got:?}");
        }
    }

    /// SERVER without its scripts: import means no `forwarding` or
    /// `firewall`.
    fn server_without_scripts() -> String {
        SERVER
            .lines()
            .filter(|l| !l.starts_with("PostUp") && !l.starts_with("PostDown"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// An `Imported` whose every text field carries YAML after a line break
    /// (as a caller other than `parse` could build it) still renders into a
    /// manifest with only the sections import writes (the three it always
    /// writes, and `forwarding` and `firewall` when the scripts meant them),
    /// each value read back exactly as given.
    #[test]
    fn hostile_values_are_emitted_as_inert_scalars() {
        let no_scripts = server_without_scripts();
        for (conf, sections) in [
            (no_scripts.as_str(), &["name", "interface", "peers"][..]),
            (
                SERVER,
                &["name", "interface", "peers", "forwarding", "firewall"][..],
            ),
        ] {
            for br in ["\r", "\n", "\r\n", "\u{85}", "\u{2028}", "\u{2029}"] {
                let mut imp = parse(conf, "wg0.conf", "wg0").expect("parse");
                let inject =
                    format!("x\"{br}forwarding: true{br}metrics: {{listen: 0.0.0.0:1}}{br}#");
                imp.interface = format!("wg0{inject}");
                imp.notes.push(format!("note{inject}"));
                imp.notes.push(format!("{br}watch: false"));
                imp.peers[0].name = format!("laptop{inject}");
                imp.peers[1].endpoint = Some(format!("branch.example.net:51820{inject}"));
                for r in &mut imp.firewall {
                    r.source = format!("PostUp {inject}{br}    - drop{br}  insert: []");
                }
                let source = format!("wg0.conf{br}routes: [{{to: 0.0.0.0/0}}]{br}#");
                let out = render(&imp, "site-x", &source).expect("render");
                let path = std::path::Path::new("/etc/netman/site-x.yaml");
                let checked = check_reads_back(&out, &out.manifest, path);
                assert!(
                    checked.is_ok(),
                    "{br:?}: {:?}\n{}",
                    checked.err().map(|e| e.to_string()),
                    out.manifest
                );
                for line in out.manifest.lines() {
                    assert!(
                        !line.contains(['\r', '\u{85}', '\u{2028}', '\u{2029}']),
                        "{br:?}: a line break YAML or a terminal knows in {line:?}"
                    );
                    if line.starts_with('#') {
                        continue;
                    }
                    let key = line.split(':').next().unwrap_or("");
                    assert!(
                        key.starts_with(' ') || sections.contains(&key),
                        "{br:?}: top-level {key:?} in\n{}",
                        out.manifest
                    );
                }
                let back: Doc = serde_saphyr::from_str(&out.manifest).expect("reads back");
                assert_eq!(back.interface.name, imp.interface, "{br:?}");
                assert_eq!(back.peers[0].name, imp.peers[0].name, "{br:?}");
                assert_eq!(back.peers[1].endpoint, imp.peers[1].endpoint, "{br:?}");
                assert_eq!(back.forwarding, imp.forwarding.then_some(true), "{br:?}");
                let rules: Vec<String> = back
                    .firewall
                    .iter()
                    .flat_map(|f| &f.chains)
                    .flat_map(|c| &c.rules)
                    .map(|r| r.0.clone())
                    .collect();
                let want: Vec<String> = imp.firewall.iter().map(|r| r.rule.nft()).collect();
                assert_eq!(rules, want, "{br:?}");
            }
        }
    }

    /// The read-back check refuses a text that says more, or otherwise,
    /// than import meant; comments are all it lets through.
    #[test]
    fn a_manifest_that_says_more_than_meant_is_refused() {
        let imp = parse(&server_without_scripts(), "wg0.conf", "wg0").expect("parse");
        assert!(!imp.forwarding && imp.firewall.is_empty());
        let out = render(&imp, "site-x", "wg0.conf").expect("render");
        let path = std::path::Path::new("/etc/netman/site-x.yaml");
        assert!(check_reads_back(&out, &out.manifest, path).is_ok());
        let commented = format!("# forwarding: true\n{}", out.manifest);
        assert!(check_reads_back(&out, &commented, path).is_ok());
        for (what, text) in [
            ("forwarding", format!("forwarding: true\n{}", out.manifest)),
            (
                "firewall",
                format!(
                    "{}firewall:\n  chains:\n    - name: f\n      hook: forward\n      rules: [accept]\n",
                    out.manifest
                ),
            ),
            ("watch", format!("{}watch: false\n", out.manifest)),
            (
                "metrics",
                format!("{}metrics:\n  listen: 0.0.0.0:9586\n", out.manifest),
            ),
            (
                "a peer setting",
                out.manifest.replace(
                    "  - name: laptop\n",
                    "  - name: laptop\n    persistent_keepalive: 7\n",
                ),
            ),
            (
                "another endpoint",
                out.manifest
                    .replace("branch.example.net:51820", "evil.example.net:51820"),
            ),
            ("not YAML", format!("{}\t- [", out.manifest)),
        ] {
            assert_ne!(text, out.manifest, "{what}: the test changed nothing");
            let e = check_reads_back(&out, &text, path)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted\n{text}"));
            assert!(matches!(e, ImportError::Unfaithful { .. }), "{what}: {e}");
        }
    }

    /// With translated scripts, the read-back check expects exactly the
    /// `forwarding` and `firewall` import meant: every rule, chain setting
    /// and comment as written, nothing inserted elsewhere.
    #[test]
    fn a_manifest_with_other_firewall_rules_than_meant_is_refused() {
        let imp = parse(SERVER, "wg0.conf", "wg0").expect("parse");
        let out = render(&imp, "site-x", "wg0.conf").expect("render");
        let path = std::path::Path::new("/etc/netman/site-x.yaml");
        let validated = check_reads_back(&out, &out.manifest, path)
            .unwrap_or_else(|e| panic!("{e}\n{}", out.manifest))
            .unwrap_or_else(|e| panic!("{e}\n{}", out.manifest));
        assert!(validated.forwarding);
        let chains: Vec<(&str, &str, &str, &str, Vec<&str>)> = validated
            .firewall
            .chains
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.hook.as_str(),
                    c.kind.as_str(),
                    c.policy.as_str(),
                    c.rules.iter().map(|r| r.text.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            chains,
            vec![
                (
                    "forward",
                    "forward",
                    "filter",
                    "accept",
                    vec![r#"meta nfproto ipv4 iifname "wg0" accept"#]
                ),
                (
                    "postrouting",
                    "postrouting",
                    "nat",
                    "accept",
                    vec![r#"meta nfproto ipv4 oifname "eth0" masquerade"#]
                ),
            ]
        );
        assert!(validated.firewall.insert.is_empty());
        let m = &out.manifest;
        let rule = r#"        - meta nfproto ipv4 iifname "wg0" accept # from line 8: PostUp iptables -A FORWARD -i %i -j ACCEPT
"#;
        assert!(m.contains(rule), "{m}");
        for (what, text) in [
            ("no forwarding", m.replace("forwarding: true\n", "")),
            (
                "forwarding false",
                m.replace("forwarding: true", "forwarding: false"),
            ),
            (
                "another rule text",
                m.replace(r#"iifname "wg0" accept"#, r#"iifname "wg0" drop"#),
            ),
            (
                "another comment",
                m.replace(
                    "# from line 8: PostUp iptables -A FORWARD",
                    "# from line 7: PostUp iptables -A FORWARD",
                ),
            ),
            (
                "a rule more",
                m.replace(rule, &format!("{rule}        - udp dport 53 drop\n")),
            ),
            ("a rule less", m.replace(rule, "")),
            ("policy drop", m.replace("policy: accept", "policy: drop")),
            (
                "a priority",
                m.replace(
                    "      hook: forward\n",
                    "      hook: forward\n      priority: -300\n",
                ),
            ),
            ("another hook", m.replace("hook: forward", "hook: input")),
            ("a filter chain", m.replace("type: nat", "type: filter")),
            (
                "an inserted rule",
                format!(
                    "{m}  insert:\n    - family: ip\n      table: filter\n      chain: INPUT\n      rule: accept\n"
                ),
            ),
            (
                "no firewall",
                m[..m.find("firewall:").unwrap_or(m.len())].to_string(),
            ),
        ] {
            assert_ne!(&text, m, "{what}: the test changed nothing");
            let e = check_reads_back(&out, &text, path)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted\n{text}"));
            assert!(matches!(e, ImportError::Unfaithful { .. }), "{what}: {e}");
        }
    }

    #[test]
    fn endpoints_with_quotes_spaces_or_line_breaks_are_refused() {
        for bad in [
            "a\"b:51820",
            "192.0.2.1:51820\"\r    persistent_keepalive: 7",
            "vpn example net:51820",
            "vpn.example.net:51820\u{2028}x",
            "vpn.example.net:51820\u{85}x",
            "'vpn':1",
        ] {
            let text = SERVER.replace("branch.example.net:51820", bad);
            let e = parse(&text, "wg0.conf", "wg0")
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"))
                .to_string();
            assert!(
                e.starts_with("wg0.conf:20: Endpoint ") && e.ends_with(" is not HOST:PORT"),
                "{bad:?}: {e}"
            );
            assert!(!e.contains(['\r', '\u{85}', '\u{2028}']), "{e:?}");
        }
        for good in [
            "[fe80::1%eth0]:51820",
            "vpn-1.example_x.net:1",
            "192.0.2.1:51820",
        ] {
            let text = SERVER.replace("branch.example.net:51820", good);
            let imp = parse(&text, "wg0.conf", "wg0").expect(good);
            assert_eq!(imp.peers[1].endpoint.as_deref(), Some(good));
        }
    }

    /// An endpoint the manifest reads is written as the manifest reads it
    /// (found by the `import` fuzz target: `host:03640` was written as is
    /// and read back as port 3640, so the manifest said other than import
    /// reported).
    #[test]
    fn endpoints_are_written_as_the_manifest_reads_them() {
        for (given, written) in [
            ("branch.example.net:03640", "branch.example.net:3640"),
            ("192.0.2.1:051820", "192.0.2.1:51820"),
            ("[2001:db8:0::1]:00443", "[2001:db8::1]:443"),
            ("[fe80::1%eth0]:51820", "[fe80::1%eth0]:51820"),
        ] {
            let text = SERVER.replace("branch.example.net:51820", given);
            let imp = parse(&text, "wg0.conf", "wg0").expect(given);
            assert_eq!(imp.peers[1].endpoint.as_deref(), Some(written), "{given}");
        }
    }
}
