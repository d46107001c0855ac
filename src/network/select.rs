//! Which site of a network file is this gateway's: the same file is
//! deployed unchanged to every gateway, and each finds its own site by
//! `--site NAME` or by the public key of its local private key file
//! (issue 14). Also the one loader the commands share for "a manifest or a
//! network file": [`load_manifest`].
//!
//! The choice is pure ([`Network::select`] takes the key reader as a
//! parameter); only [`load_manifest`] reads key files.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{Derived, Network, UnknownSite};
use crate::error::ErrorKind;
use crate::keys;
use crate::manifest::error::ManifestErrors;
use crate::manifest::{self, Manifest, PublicKey};

/// How a gateway names its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteChoice<'a> {
    /// `--site NAME`.
    Named(&'a str),
    /// The site whose `public_key` is the public key of the private key
    /// file its derived manifest names (`private_key_file`) on this host.
    LocalKey,
}

/// What a key file gave when a site was looked for by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTried {
    pub path: PathBuf,
    /// The public key of the private key in the file, or why it could not
    /// be read.
    pub result: Result<PublicKey, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SelectError {
    #[error(transparent)]
    Unknown(#[from] UnknownSite),
    #[error(
        "no site of network {network} has this gateway's public key ({}); name the site with --site",
        tried_text(tried)
    )]
    NoMatch {
        network: String,
        tried: Vec<KeyTried>,
    },
    #[error(
        "several sites of network {network} match this gateway's private key files ({}); name one with --site",
        sites.join(", ")
    )]
    Several { network: String, sites: Vec<String> },
}

fn tried_text(tried: &[KeyTried]) -> String {
    tried
        .iter()
        .map(|t| match &t.result {
            Ok(k) => format!("{} has public key {}", t.path.display(), k.to_base64()),
            Err(e) => format!("{}: {e}", t.path.display()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl SelectError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl<D> Network<D> {
    /// The index of the site `choice` names. By key, each distinct
    /// private key file (`key_file` of what was kept of each site's
    /// derived manifest: its `private_key_file`) is read once with
    /// `read_key`; exactly one site may match.
    pub(crate) fn choose(
        &self,
        choice: SiteChoice<'_>,
        key_file: impl Fn(&D) -> &Path,
        mut read_key: impl FnMut(&Path) -> Result<PublicKey, String>,
    ) -> Result<usize, SelectError> {
        let name = match choice {
            SiteChoice::Named(name) => return Ok(self.index_of(name)?),
            SiteChoice::LocalKey => {
                let mut tried: Vec<KeyTried> = Vec::new();
                let mut matching: Vec<&str> = Vec::new();
                for (site, d) in self.sites.iter().zip(&self.derived) {
                    let path = key_file(d);
                    let known = tried.iter().position(|t| t.path == path);
                    let i = match known {
                        Some(i) => i,
                        None => {
                            tried.push(KeyTried {
                                path: path.to_path_buf(),
                                result: read_key(path),
                            });
                            tried.len() - 1
                        }
                    };
                    if tried[i].result.as_ref() == Ok(&site.public_key) {
                        matching.push(&site.name);
                    }
                }
                match matching.as_slice() {
                    [one] => (*one).to_owned(),
                    [] => {
                        return Err(SelectError::NoMatch {
                            network: self.name.clone(),
                            tried,
                        });
                    }
                    many => {
                        return Err(SelectError::Several {
                            network: self.name.clone(),
                            sites: many.iter().map(|s| (*s).to_owned()).collect(),
                        });
                    }
                }
            }
        };
        Ok(self.index_of(&name)?)
    }
}

impl Network {
    /// The derived manifest of the site `choice` names (see
    /// [`Network::choose`]).
    pub fn select(
        &self,
        choice: SiteChoice<'_>,
        read_key: impl FnMut(&Path) -> Result<PublicKey, String>,
    ) -> Result<&Derived, SelectError> {
        let i = self.choose(
            choice,
            |d: &Derived| d.manifest.interface.private_key_file.as_path(),
            read_key,
        )?;
        Ok(&self.derived[i])
    }
}

/// Why [`load_manifest`] gave no manifest.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file is not valid (every finding, positioned).
    #[error("{0}")]
    Invalid(ManifestErrors),
    /// A valid network file, but this gateway's site cannot be found.
    #[error("{path}: {source}")]
    Select {
        path: PathBuf,
        #[source]
        source: SelectError,
    },
    /// `--site` given with a site manifest.
    #[error("{0}: --site names a site of a network file, but this is a site manifest")]
    SiteForManifest(PathBuf),
}

impl LoadError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

/// The manifest of the file at `path`: a v1 site manifest as it is, or a
/// network file's derived manifest of the site `site` names (`None`: the
/// site of the local private key). A derived manifest carries the
/// network's warnings (positioned in the network file) and
/// [`manifest::DerivedFrom`] in its source.
pub fn load_manifest(path: &Path, site: Option<&str>) -> Result<Manifest, LoadError> {
    let text = manifest::read_text(path)
        .map_err(|e| LoadError::Invalid(manifest::read_error(path, &e)))?;
    manifest_of(&text, path, site)
}

/// [`load_manifest`] of text already read.
pub fn manifest_of(text: &str, path: &Path, site: Option<&str>) -> Result<Manifest, LoadError> {
    if !super::is_network(text) {
        if site.is_some() {
            return Err(LoadError::SiteForManifest(path.to_path_buf()));
        }
        return manifest::parse(text, path).map_err(LoadError::Invalid);
    }
    let choice = site.map_or(SiteChoice::LocalKey, SiteChoice::Named);
    super::site_manifest(text, path, choice, local_public_key)
        .map_err(LoadError::Invalid)?
        .map(|d| d.manifest)
        .map_err(|source| LoadError::Select {
            path: path.to_path_buf(),
            source,
        })
}

/// The public key of the private key file at `path` (checked like the
/// engine checks it: owner, mode, no symlink).
fn local_public_key(path: &Path) -> Result<PublicKey, String> {
    keys::load_private_key(path)
        .map(|k| k.public_key())
        .map_err(|e| match e {
            keys::KeyFileError::Read { source, .. } => source.to_string(),
            e => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "network: n
defaults:
  listen_port: 51820
  private_key_file: /k/private.key
sites:
  - name: a
    public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=
    addresses: [10.10.0.1/24]
    endpoint: 192.0.2.1:51820
  - name: b
    public_key: mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=
    addresses: [10.10.0.2/24]
  - name: c
    public_key: BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=
    addresses: [10.10.0.3/24]
    private_key_file: /k/c.key
topology:
  hub_and_spoke: { hubs: [a] }
";

    fn key(b64: &str) -> PublicKey {
        PublicKey::from_base64(b64).expect("key")
    }

    fn net() -> Network {
        super::super::parse(NET, Path::new("/r/net.yaml")).expect("valid")
    }

    #[test]
    fn by_name_and_unknown_name() {
        let n = net();
        let d = n
            .select(SiteChoice::Named("b"), |_| unreachable!())
            .expect("b");
        assert_eq!(d.manifest.name, "b");
        let e = n
            .select(SiteChoice::Named("z"), |_| unreachable!())
            .expect_err("no z");
        assert!(e.to_string().contains("no site named \"z\""), "{e}");
    }

    #[test]
    fn by_local_key_reads_each_key_file_once() {
        let n = net();
        let mut reads = Vec::new();
        let d = n
            .select(SiteChoice::LocalKey, |p| {
                reads.push(p.to_path_buf());
                if p == Path::new("/k/c.key") {
                    Err("No such file or directory".into())
                } else {
                    Ok(key("mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg="))
                }
            })
            .expect("b by key");
        assert_eq!(d.manifest.name, "b");
        assert_eq!(
            reads,
            [PathBuf::from("/k/private.key"), PathBuf::from("/k/c.key")]
        );
        let from = d.manifest.source.derived_from.as_ref().expect("derived");
        assert_eq!((from.network.as_str(), from.site.as_str()), ("n", "b"));
        assert_eq!(from.sha256, manifest::sha256_hex(NET));
    }

    #[test]
    fn no_matching_key_names_each_file_and_key() {
        let n = net();
        let e = n
            .select(SiteChoice::LocalKey, |p| {
                if p == Path::new("/k/c.key") {
                    Err("No such file or directory".into())
                } else {
                    Ok(key("PbYgh6ZbrnudY1tSbXmGVZ4ktwGgkLA8SS+pIrwMaFM="))
                }
            })
            .expect_err("none");
        let msg = e.to_string();
        assert!(
            msg.starts_with("no site of network n has this gateway's public key"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "/k/private.key has public key PbYgh6ZbrnudY1tSbXmGVZ4ktwGgkLA8SS+pIrwMaFM="
            ),
            "{msg}"
        );
        assert!(msg.contains("/k/c.key: No such file or directory"), "{msg}");
        assert!(msg.ends_with("name the site with --site"), "{msg}");
    }

    #[test]
    fn two_sites_matching_is_refused() {
        // a's key file holds a's key and c's holds c's: two sites are this host.
        let n = net();
        let e = n
            .select(SiteChoice::LocalKey, |p| {
                Ok(if p == Path::new("/k/c.key") {
                    key("BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=")
                } else {
                    key("etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=")
                })
            })
            .expect_err("several");
        assert_eq!(
            e,
            SelectError::Several {
                network: "n".into(),
                sites: vec!["a".into(), "c".into()]
            }
        );
    }

    #[test]
    fn site_flag_with_a_manifest_is_refused() {
        let text = "name: x
interface:
  name: nm0
  addresses: [10.0.0.1/24]
  private_key_file: /k/p.key
";
        let e = manifest_of(text, Path::new("/r/x.yaml"), Some("a")).expect_err("refused");
        assert!(matches!(e, LoadError::SiteForManifest(_)), "{e}");
        let m = manifest_of(text, Path::new("/r/x.yaml"), None).expect("a manifest");
        assert!(m.source.derived_from.is_none());
    }
}
