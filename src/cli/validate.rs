//! `netman validate` and `netman render`: which kind of document a file
//! is (a network file has a top-level `network:` key, anything else is a
//! v1 manifest), its findings, and how they are printed: as
//! `FILE:LINE:COL: path: message` lines, or as GitHub Actions annotations
//! (`--output github`) so that a pull request shows them on the right line.
//! Several v1 manifests given together are also checked against each
//! other where they name each other ([`cross_check`]).

use std::path::{Path, PathBuf};

use crate::manifest::{self, ManifestError};
use crate::network::{self, Checked, SelectError, SiteChoice};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, positioned in the file it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub error: ManifestError,
}

impl Finding {
    /// `FILE:LINE:COL: path: message` (`warning: ` before the message of a warning).
    pub fn text(&self) -> String {
        match self.severity {
            Severity::Error => self.error.to_string(),
            Severity::Warning => self.error.warning(),
        }
    }

    /// `::error file=F,line=L,col=C::path: message`, escaped as the
    /// workflow command syntax requires.
    pub fn github(&self) -> String {
        let e = &self.error;
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let message = if e.path.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.path, e.message)
        };
        format!(
            "::{kind} file={},line={},col={}::{}",
            escape_property(&e.file),
            e.line,
            e.column,
            escape_data(&message)
        )
    }
}

/// Escaping of a workflow command's message.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escaping of a workflow command's property value.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// What validating one file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `FILE: valid (...)` when the file is valid.
    pub valid: Option<String>,
    /// Errors (only when invalid) and warnings, in document order.
    pub findings: Vec<Finding>,
}

impl Report {
    fn from(
        result: Result<(String, Vec<ManifestError>), manifest::ManifestErrors>,
        file: &Path,
    ) -> Self {
        match result {
            Ok((what, warnings)) => Self {
                valid: Some(format!("{}: valid ({what})", file.display())),
                findings: as_warnings(&warnings),
            },
            Err(errs) => Self {
                valid: None,
                findings: errs
                    .0
                    .into_iter()
                    .map(|error| Finding {
                        severity: Severity::Error,
                        error,
                    })
                    .collect(),
            },
        }
    }
}

/// A parsed file of either kind.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<manifest::Manifest>),
    /// Checked as a whole: every site's manifest was derived and checked,
    /// none is kept.
    Network(Box<Checked>),
}

/// Read `path` and parse it as the kind it is.
pub fn load(path: &Path) -> Result<Document, manifest::ManifestErrors> {
    let text = manifest::read_text(path).map_err(|e| manifest::read_error(path, &e))?;
    if network::is_network(&text) {
        network::check(&text, path).map(|n| Document::Network(Box::new(n)))
    } else {
        manifest::parse(&text, path).map(|m| Document::Manifest(Box::new(m)))
    }
}

/// Validate one file, of either kind.
pub fn validate(path: &Path) -> Report {
    report(load(path), path)
}

fn report(doc: Result<Document, manifest::ManifestErrors>, path: &Path) -> Report {
    let result = doc.map(|doc| match doc {
        Document::Manifest(m) => (format!("deployment {}", m.name), m.warnings),
        Document::Network(n) => (
            format!(
                "network {}, {} site{}, {} link{}",
                n.name,
                n.sites.len(),
                if n.sites.len() == 1 { "" } else { "s" },
                n.links.len(),
                if n.links.len() == 1 { "" } else { "s" },
            ),
            n.warnings,
        ),
    });
    Report::from(result, path)
}

/// Validate every file, then cross-check the valid v1 manifests among
/// them that name each other (see [`cross_check`]); a file with a
/// cross-check error is invalid.
pub fn validate_all(paths: &[PathBuf]) -> Vec<Report> {
    let mut reports: Vec<Report> = Vec::with_capacity(paths.len());
    let mut manifests: Vec<(usize, Box<manifest::Manifest>)> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let doc = load(path);
        if let Ok(Document::Manifest(m)) = &doc {
            manifests.push((i, m.clone()));
        }
        reports.push(report(doc, path));
    }
    let named: Vec<(String, &manifest::Manifest)> = manifests
        .iter()
        .map(|(i, m)| (paths[*i].display().to_string(), m.as_ref()))
        .collect();
    for (k, error) in cross_check(&named) {
        let r = &mut reports[manifests[k].0];
        r.valid = None;
        r.findings.push(Finding {
            severity: Severity::Error,
            error,
        });
    }
    for r in &mut reports {
        r.findings.sort_by_key(|f| (f.error.line, f.error.column));
    }
    reports
}

/// Where v1 manifests name each other, that they agree: `manifests[k]`
/// is `(FILE, manifest)`; each finding is `(k, error in FILE)`. A manifest
/// B is named by A when one of A's peers has B's `interface.public_key`:
/// - that peer's `allowed_ips` must cover each of B's interface addresses;
/// - B must have a peer with A's `interface.public_key` (when A declares
///   one): otherwise the tunnel is one-sided.
///
/// And a peer of A named like B's deployment but with another key than B
/// declares is a mistyped or stale key.
pub fn cross_check(manifests: &[(String, &manifest::Manifest)]) -> Vec<(usize, ManifestError)> {
    let mut out = Vec::new();
    for (a, (file_a, ma)) in manifests.iter().enumerate() {
        let at = |peer: usize, field: &str, message: String| {
            let (line, column) = manifest::peer_field_position(&ma.source.text, peer, field);
            ManifestError {
                file: file_a.clone(),
                line,
                column,
                path: format!("peers[{peer}].{field}"),
                message,
            }
        };
        for (b, (file_b, mb)) in manifests.iter().enumerate() {
            let Some(kb) = mb.interface.public_key else {
                continue;
            };
            if a == b {
                continue;
            }
            for (i, p) in ma.peers.iter().enumerate() {
                if p.public_key != kb {
                    if p.name == mb.name {
                        out.push((
                            a,
                            at(i, "public_key", format!(
                                "peer `{}` has another key than {file_b} (deployment {}) declares as its interface.public_key",
                                p.name, mb.name
                            )),
                        ));
                    }
                    continue;
                }
                for addr in &mb.interface.addresses {
                    let host = addr.addr();
                    if !p.allowed_ips.iter().any(|n| n.contains(&host)) {
                        out.push((
                            a,
                            at(i, "allowed_ips", format!(
                                "{host}, an address of {file_b} (deployment {}), is not in this peer's allowed_ips: its packets would be dropped",
                                mb.name
                            )),
                        ));
                    }
                }
                if let Some(ka) = ma.interface.public_key
                    && !mb.peers.iter().any(|q| q.public_key == ka)
                {
                    out.push((
                        a,
                        at(i, "public_key", format!(
                            "{file_b} (deployment {}) has no peer with this manifest's interface.public_key: the tunnel is one-sided",
                            mb.name
                        )),
                    ));
                }
            }
        }
    }
    out
}

/// Why `netman render` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Invalid(manifest::ManifestErrors),
    #[error(
        "{0}: not a network file (no top-level `network:` key); render derives a site's manifest from one"
    )]
    NotNetwork(String),
    #[error("{0}")]
    UnknownSite(network::UnknownSite),
    /// Not for a site named on the command line; kept for completeness.
    #[error("{0}")]
    Select(SelectError),
}

/// A network file and its warnings as findings.
pub type NetworkAndWarnings = (Box<Checked>, Vec<Finding>);

/// The network file at `path` and its warnings as findings; `None` when
/// the file is a (valid) site manifest instead (`render` and `graph`
/// refuse it, each saying why).
pub fn load_network(path: &Path) -> Result<Option<NetworkAndWarnings>, manifest::ManifestErrors> {
    let net = match load(path)? {
        Document::Network(n) => n,
        Document::Manifest(_) => return Ok(None),
    };
    let warnings = as_warnings(&net.warnings);
    Ok(Some((net, warnings)))
}

/// Warnings as findings.
fn as_warnings(warnings: &[ManifestError]) -> Vec<Finding> {
    warnings
        .iter()
        .map(|w| Finding {
            severity: Severity::Warning,
            error: w.clone(),
        })
        .collect()
}

/// The derived manifest of `site` in network file `path`, and the
/// network's warnings.
pub fn render(path: &Path, site: &str) -> Result<(String, Vec<Finding>), RenderError> {
    let text = manifest::read_text(path)
        .map_err(|e| RenderError::Invalid(manifest::read_error(path, &e)))?;
    if !network::is_network(&text) {
        // A valid site manifest is refused as not a network file.
        manifest::parse(&text, path).map_err(RenderError::Invalid)?;
        return Err(RenderError::NotNetwork(path.display().to_string()));
    }
    let derived = match network::site_manifest(&text, path, SiteChoice::Named(site), |_| {
        Err("a site named on the command line needs no key".to_owned())
    })
    .map_err(RenderError::Invalid)?
    {
        Ok(d) => d,
        Err(SelectError::Unknown(u)) => return Err(RenderError::UnknownSite(u)),
        Err(e) => return Err(RenderError::Select(e)),
    };
    let warnings = as_warnings(&derived.manifest.warnings);
    Ok((derived.text, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_annotations_escape_what_the_syntax_needs() {
        let f = Finding {
            severity: Severity::Error,
            error: ManifestError {
                file: "a,b:c.yaml".to_owned(),
                line: 3,
                column: 7,
                path: "peers[0].name".to_owned(),
                message: "50% bad\nreally".to_owned(),
            },
        };
        assert_eq!(
            f.github(),
            "::error file=a%2Cb%3Ac.yaml,line=3,col=7::peers[0].name: 50%25 bad%0Areally"
        );
        let w = Finding {
            severity: Severity::Warning,
            ..f
        };
        assert!(w.github().starts_with("::warning file="));
    }
}
