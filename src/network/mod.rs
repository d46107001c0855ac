//! The network file: every site of a network in one document, from which
//! each site's v1 manifest is derived (issue 14). The same file is meant
//! to be deployed unchanged to every gateway.
//!
//! ```yaml
//! network: corp
//! defaults:                       # any per-site setting, for every site
//!   listen_port: 51820
//!   private_key_file: /etc/netman/private.key
//!   forwarding: true
//! sites:
//!   - name: hq
//!     public_key: "<base64>"
//!     addresses: [10.10.0.1/24, fd10::1/64]
//!     subnets: [172.18.1.0/24]
//!     endpoint: 192.0.2.1:51820
//!   - name: branch-1
//!     public_key: "<base64>"
//!     addresses: [10.10.0.2/24, fd10::2/64]
//!     subnets: [172.18.2.0/24]
//!     persistent_keepalive: 25    # a per-site override
//! topology:
//!   hub_and_spoke: { hubs: [hq] } # or `mesh: true`, or `links: [[a, b], ...]`
//! ```
//!
//! Three steps, like the manifest's: [`raw`] deserialises with source
//! spans; `check.rs` checks the network as a whole (names, keys, overlay
//! addresses, overlaps, endpoints, topology, MTU, firewall) and builds the
//! [`Model`](check::Model); `derive.rs` renders, purely, network × site →
//! the text of a v1 manifest, each of whose lines remembers the network
//! file position it came from, and that text goes through
//! [`manifest::parse`] — so a derived manifest is by construction exactly
//! what a hand-written v1 manifest would be, `netman render` prints the
//! very text that is applied, and every error the manifest rules find in
//! it is reported at the network file's line that produced it.
//! [`graph`] draws a validated network (`netman graph`: DOT or Mermaid).
//!
//! Derivation rules: the site's own key becomes `interface.public_key`
//! (checked against the key file at apply); each site's peers are the sites the topology connects
//! it to, in file order; a peer's `allowed_ips` are its overlay addresses
//! as host prefixes (/32, /128) and its subnets; on a spoke, the first
//! hub's entry also carries every other spoke's. Keepalives go to peers
//! that have an endpoint.

mod check;
mod derive;
pub mod graph;
pub mod raw;
mod select;

pub use select::{KeyTried, LoadError, SelectError, SiteChoice, load_manifest, manifest_of};

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_saphyr::Location;

use crate::manifest::error::{self, ManifestError, ManifestErrors};
use crate::manifest::{self, DerivedFrom, Endpoint, Manifest, PublicKey, Source};

/// One site of a validated network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The deployment name of the site's derived manifest.
    pub name: String,
    pub public_key: PublicKey,
    /// Overlay addresses with their prefix length, in file order.
    pub addresses: Vec<IpNet>,
    /// Networks behind the site.
    pub subnets: Vec<IpNet>,
    pub endpoint: Option<Endpoint>,
}

/// Where a line of a derived manifest came from in the network file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// 1-based line and column of the value in the network file.
    pub line: usize,
    pub column: usize,
    /// Field path in the network file, e.g. `sites[1].subnets[0]`.
    pub path: String,
}

/// The v1 manifest of one site: its text (what `netman render` prints),
/// the parsed manifest, and the origin of each of its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub text: String,
    /// Parsed from `text` with the network file's path (so relative key
    /// files resolve against its directory); `source.text` is `text`.
    pub manifest: Manifest,
    origins: Vec<Origin>,
}

impl Derived {
    /// The network file position that produced line `line` (1-based) of
    /// [`Derived::text`] (e.g. to place an nft error at apply).
    pub fn origin(&self, line: usize) -> Option<&Origin> {
        self.origins.get(line.checked_sub(1)?)
    }
}

/// A validated network file, with every site's derived manifest
/// ([`parse`]), or only what [`site_manifest`] keeps of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network<D = Derived> {
    pub name: String,
    /// In file order.
    pub sites: Vec<Site>,
    /// The tunnels: pairs of indices into `sites`, lower index first, sorted.
    pub links: Vec<(usize, usize)>,
    /// The hubs of a `hub_and_spoke` topology, indices into `sites` in the
    /// order `hubs:` lists them; empty for `mesh` and `links`.
    pub hubs: Vec<usize>,
    /// The network file (path made absolute, text, SHA-256).
    pub source: Source,
    /// Legal but suspicious findings, in document order.
    pub warnings: Vec<ManifestError>,
    /// Per site, in site order.
    derived: Vec<D>,
}

/// `--site NAME` names no site of the network.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "network {network} has no site named {site:?} (sites: {})",
    some_names(known)
)]
pub struct UnknownSite {
    pub network: String,
    pub site: String,
    pub known: Vec<String>,
}

impl<D> Network<D> {
    /// The site named `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The site whose public key is `key` (keys are unique in a valid network).
    pub fn site_for_key(&self, key: &PublicKey) -> Option<&Site> {
        self.sites.iter().find(|s| &s.public_key == key)
    }

    /// The index of the site named `name` (in `sites`, and in what was
    /// kept of the derived manifests).
    fn index_of(&self, name: &str) -> Result<usize, UnknownSite> {
        self.sites
            .iter()
            .position(|s| s.name == name)
            .filter(|&i| i < self.derived.len())
            .ok_or_else(|| UnknownSite {
                network: self.name.clone(),
                site: name.to_owned(),
                known: self.sites.iter().map(|s| s.name.clone()).collect(),
            })
    }
}

impl Network {
    /// The v1 manifest of site `name` (derived and validated at parse).
    pub fn derive(&self, name: &str) -> Result<&Derived, UnknownSite> {
        let i = self.index_of(name)?;
        Ok(&self.derived[i])
    }
}

/// At most [`NAMES_SHOWN`] of `names`, and how many more there are: a
/// message stays one readable line for a network of 1,000 sites.
fn some_names(names: &[String]) -> String {
    /// Names listed in a message.
    const NAMES_SHOWN: usize = 20;
    let mut out = names
        .iter()
        .take(NAMES_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        out.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    out
}

/// A network file checked as a whole, keeping none of the derived
/// manifests: what `validate` and `graph` need.
pub type Checked = Network<()>;

/// Parse and validate network file `text` like [`parse`], deriving and
/// checking every site's manifest without keeping any.
pub fn check(text: &str, path: &Path) -> Result<Checked, ManifestErrors> {
    CheckedFile::new(text, path)?.network(|_| ())
}

/// The effective value of a per-site setting of site `$i`: the site's own,
/// else `defaults:`'s, with its field path.
macro_rules! effective {
    ($raw:expr, $i:expr, $field:ident) => {{
        let raw: &$crate::network::raw::RawNetwork = $raw;
        let i: usize = $i;
        match raw.sites.value.get(i).and_then(|s| s.value.$field.as_ref()) {
            Some(v) => Some((v, format!("sites[{i}].{}", stringify!($field)))),
            None => raw
                .defaults
                .as_ref()
                .and_then(|d| d.value.$field.as_ref())
                .map(|v| (v, format!("defaults.{}", stringify!($field)))),
        }
    }};
}
pub(crate) use effective;

/// Whether `text` is a network file: a YAML mapping with a top-level
/// `network:` key (anything else is read as a v1 manifest).
pub fn is_network(text: &str) -> bool {
    // The key must appear literally; most manifests are ruled out without
    // a YAML parse.
    text.contains("network")
        && serde_saphyr::from_str_with_options::<raw::Probe>(text, manifest::parser_options())
            .is_ok_and(|p| p.network.is_some())
}

/// Read and parse the network file at `path` (bounded, regular file only,
/// like a manifest).
pub fn load(path: &Path) -> Result<Network, ManifestErrors> {
    let text = manifest::read_text(path).map_err(|e| manifest::read_error(path, &e))?;
    parse(&text, path)
}

/// Parse and validate network file `text`, and derive every site's
/// manifest; every finding at once, in document order. `path` is used in
/// messages (as given) and to resolve relative key file paths.
pub fn parse(text: &str, path: &Path) -> Result<Network, ManifestErrors> {
    CheckedFile::new(text, path)?.network(|d| d)
}

/// The network file parsed and checked by its own rules, ready to derive
/// its sites' manifests (shared by the threads that derive them).
struct CheckedFile<'a> {
    text: &'a str,
    /// Used in messages (as given) and to resolve relative key file paths.
    path: &'a Path,
    raw: raw::RawNetwork,
    model: check::Model,
    file: String,
    sha256: String,
    errors: Vec<ManifestError>,
    warnings: Vec<ManifestError>,
    /// Where the network's own rules already found something: a derived
    /// manifest's finding there (a duplicate name, an overlap) adds nothing.
    said: HashSet<(usize, usize)>,
}

impl<'a> CheckedFile<'a> {
    fn new(text: &'a str, path: &'a Path) -> Result<CheckedFile<'a>, ManifestErrors> {
        let file = path.display().to_string();
        if text.len() > manifest::MAX_MANIFEST_BYTES {
            return Err(ManifestErrors::single(ManifestError::new(
                &file,
                Location::UNKNOWN,
                "",
                format!(
                    "network file is too large ({} bytes; at most {})",
                    text.len(),
                    manifest::MAX_MANIFEST_BYTES
                ),
            )));
        }
        let raw = raw_parse(text, &file)?;
        let checked = check::check(&raw, &file);
        let said = checked.errors.iter().map(|e| (e.line, e.column)).collect();
        Ok(CheckedFile {
            text,
            path,
            raw,
            model: checked.model,
            sha256: manifest::sha256_hex(text),
            file,
            errors: checked.errors,
            warnings: checked.warnings,
            said,
        })
    }

    /// The network, when neither its own rules nor any site's derived
    /// manifest found an error. Every site's manifest is derived and
    /// checked, spread over the cores (a fleet's file derives one manifest
    /// per site, each listing the others), and reduced with `keep` on the
    /// thread that derived it (so what is not kept is dropped at once);
    /// what is kept is the network's, in site order.
    fn network<K: Send>(
        &self,
        keep: impl Fn(Derived) -> K + Sync,
    ) -> Result<Network<K>, ManifestErrors> {
        let (mut errors, mut warnings) = (self.errors.clone(), self.warnings.clone());
        let sites: Vec<usize> = (0..self.raw.sites.value.len())
            .filter(|&i| self.model.derivable[i])
            .collect();
        let mut kept = Vec::with_capacity(sites.len());
        let outcomes = in_parallel(&sites, |i| {
            let o = self.site(i);
            (o.derived.map(&keep), o.warnings)
        });
        for (derived, site_warnings) in outcomes {
            warnings.extend(site_warnings);
            match derived {
                Ok(k) => kept.push(k),
                Err(errs) => errors.extend(errs),
            }
        }
        let errors = dedup(errors);
        if !errors.is_empty() {
            return Err(ManifestErrors(errors));
        }
        match self.model.sites(&self.raw) {
            Some(sites) if kept.len() == sites.len() => Ok(Network {
                name: self.raw.network.value.clone(),
                sites,
                links: self.model.links.clone(),
                hubs: self.model.hubs.clone(),
                source: Source {
                    path: manifest::absolute_path(self.path),
                    text: self.text.to_owned(),
                    sha256: self.sha256.clone(),
                    derived_from: None,
                },
                warnings: dedup(warnings),
                derived: kept,
            }),
            _ => Err(ManifestErrors::single(ManifestError::new(
                &self.file,
                Location::UNKNOWN,
                "",
                "internal error: network validation failed without a diagnostic",
            ))),
        }
    }
}

/// One site of a network file, as a gateway that applies it needs it:
/// every site's manifest is derived and checked, and only the key file of
/// each kept (to find this gateway's site) before the chosen site's
/// manifest is derived again. A fleet's file of 1,000 sites, whose
/// manifests list each other's subnets, derives about two million lines:
/// keeping every manifest whole took 315 MB, this keeps about 18.
pub(crate) fn site_manifest(
    text: &str,
    path: &Path,
    choice: SiteChoice<'_>,
    read_key: impl FnMut(&Path) -> Result<PublicKey, String>,
) -> Result<Result<Derived, SelectError>, ManifestErrors> {
    let checked = CheckedFile::new(text, path)?;
    let net = checked.network(|d| d.manifest.interface.private_key_file)?;
    let i = match net.choose(choice, PathBuf::as_path, read_key) {
        Ok(i) => i,
        Err(e) => return Ok(Err(e)),
    };
    // Without errors every site was derived: `i` is also its index in the
    // network file.
    match checked.site(i).derived {
        Ok(mut d) => {
            d.manifest.warnings = net.warnings;
            Ok(Ok(d))
        }
        // Derived once without a finding, it cannot have one now.
        _ => Err(ManifestErrors::single(ManifestError::new(
            &checked.file,
            Location::UNKNOWN,
            "",
            "internal error: a site's manifest changed between two derivations",
        ))),
    }
}

/// One site's manifest, or its findings (placed in the network file).
struct SiteOutcome {
    derived: Result<Derived, Vec<ManifestError>>,
    warnings: Vec<ManifestError>,
}

impl CheckedFile<'_> {
    /// Render site `i`'s manifest and parse it as any manifest is parsed;
    /// a finding in it is reported at the network file position that
    /// produced its line.
    fn site(&self, i: usize) -> SiteOutcome {
        let rendered = derive::render(&self.raw, &self.model, i);
        let site = &self.raw.sites.value[i].value;
        let fallback = Origin::at(site.name.referenced, format!("sites[{i}]"));
        let map = |e: &ManifestError| {
            let o = rendered
                .origins
                .get(e.line.wrapping_sub(1))
                .filter(|_| e.line > 0)
                .unwrap_or(&fallback);
            ManifestError {
                file: self.file.clone(),
                line: o.line,
                column: o.column,
                path: o.path.clone(),
                message: format!(
                    "{} (manifest of site {}: {})",
                    e.message, site.name.value, e.path
                ),
            }
        };
        match manifest::parse(&rendered.text, self.path) {
            Ok(mut m) => {
                let warnings = m.warnings.iter().map(map).collect();
                m.source.derived_from = Some(DerivedFrom {
                    network: self.raw.network.value.clone(),
                    site: site.name.value.clone(),
                    sha256: self.sha256.clone(),
                });
                SiteOutcome {
                    derived: Ok(Derived {
                        text: rendered.text,
                        manifest: m,
                        origins: rendered.origins,
                    }),
                    warnings,
                }
            }
            Err(errs) => SiteOutcome {
                derived: Err(errs
                    .0
                    .iter()
                    .map(map)
                    .filter(|e| !self.said.contains(&(e.line, e.column)))
                    .collect()),
                warnings: Vec::new(),
            },
        }
    }
}

/// `f` of every item, in order, computed on up to as many threads as the
/// machine has cores (one thread for a few items).
fn in_parallel<T, F>(items: &[usize], f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    /// Fewer items than this per thread are not worth a thread.
    const MIN_PER_THREAD: usize = 8;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = cores.min(items.len() / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return items.iter().map(|&i| f(i)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                scope.spawn(move || part.iter().map(|&i| f(i)).collect::<Vec<T>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A panic in a thread is a panic here, as without threads.
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    })
}

impl Origin {
    fn at(location: Location, path: String) -> Self {
        let (line, column) = error::line_col(location);
        Self { line, column, path }
    }
}

/// Sorted by position; a finding already made at the same place with the
/// same message (a site's key, seen from every other site's manifest) once.
fn dedup(mut findings: Vec<ManifestError>) -> Vec<ManifestError> {
    let mut seen = HashSet::new();
    findings.retain(|e| {
        let base = e
            .message
            .split(" (manifest of site ")
            .next()
            .unwrap_or_default()
            .to_owned();
        seen.insert((e.line, e.column, base))
    });
    findings.sort_by_key(|e| (e.line, e.column));
    findings
}

fn raw_parse(text: &str, file: &str) -> Result<raw::RawNetwork, ManifestErrors> {
    manifest::parse_document(text, file)
}

/// The network file's JSON Schema (draft-07), derived from [`raw`].
pub fn json_schema() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<raw::RawNetwork>()
        .to_value()
}
