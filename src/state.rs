//! The state directory: one JSON file per deployment recording what netman
//! created (so `down` works without the manifest and after a crash) and the
//! manifest last applied (so `diff` without a file can report drift), plus a
//! lock file that serialises applies.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use std::collections::BTreeMap;

use crate::firewall;
use crate::model::Owned;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/netman";

const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path}: not a netman state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest a deployment was applied from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub path: PathBuf,
    pub sha256: String,
    pub text: String,
}

/// Everything netman remembers about one deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentState {
    pub version: u32,
    pub name: String,
    /// The manifest in force; `None` while the first apply is in progress.
    pub manifest: Option<ManifestRecord>,
    /// Unix time (seconds) of the last successful apply.
    pub applied_at: Option<u64>,
    /// What netman created (a superset while an apply is in progress: the
    /// intent is recorded before the kernel is touched).
    pub owned: Owned,
    /// True from the moment an apply starts changing the kernel until it
    /// has finished (or reverted); a crash leaves it set.
    #[serde(default)]
    pub in_progress: bool,
    /// netman's nftables state (its table as applied, the chains its
    /// inserted rules may be in); `None`: netman has nothing in nftables
    /// and runs no nft for this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<firewall::Record>,
    /// Sysctl values found before netman changed them (restored by `down`
    /// or when `forwarding` is turned off), by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// An apply made with `--confirm-timeout` that is not confirmed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// SHA-256 of a manifest reverted for want of `netman confirm`: the
    /// watcher does not apply a file with this content by itself again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_sha256: Option<String>,
    /// The manifest in force before the last change of manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_manifest: Option<ManifestRecord>,
    /// The manifest in force was applied by the watcher (a file change),
    /// and no command has applied it since: an `apply --confirm-timeout` of
    /// it then protects the change the watcher made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub applied_by_watcher: bool,
    /// The last apply asked for no watching (`--no-watch`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_watch: bool,
}

/// What to go back to unless `netman confirm` arrives in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// Unix time (milliseconds) of the automatic revert.
    pub deadline_ms: u64,
    /// The manifest in force before the unconfirmed apply (`None`: there
    /// was none, and the revert takes the deployment down).
    pub previous: Option<ManifestRecord>,
}

impl DeploymentState {
    pub fn new(name: &str) -> Self {
        DeploymentState {
            version: STATE_VERSION,
            name: name.to_string(),
            manifest: None,
            applied_at: None,
            owned: Owned::default(),
            in_progress: false,
            firewall: None,
            sysctls: BTreeMap::new(),
            pending_confirm: None,
            reverted_sha256: None,
            previous_manifest: None,
            applied_by_watcher: false,
            no_watch: false,
        }
    }
}

/// A handle on the state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while an apply or down runs; released on drop.
pub struct StateLock {
    _file: File,
}

impl StateDir {
    /// Use `path`, creating it (mode 0700) if needed.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if !path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_err(path))?;
        }
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Use `path` for reading only: it need not exist.
    pub fn at(path: &Path) -> Self {
        StateDir {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.json"))
    }

    /// Take the exclusive lock, waiting for another netman that holds it.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let p = self.path.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(io_err(&p))?;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(&p)(e));
            }
            tracing::info!(lock = %p.display(), "another netman holds the lock; waiting");
            // SAFETY: as above.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                return Err(io_err(&p)(io::Error::last_os_error()));
            }
        }
        Ok(StateLock { _file: file })
    }

    /// The recorded state of deployment `name`, if any.
    pub fn load(&self, name: &str) -> Result<Option<DeploymentState>, StateError> {
        let p = self.file(name);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&p)(e)),
        };
        let st: DeploymentState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if st.version != STATE_VERSION || st.name != name {
            return Err(StateError::Corrupt {
                path: p,
                reason: format!("version {} name {:?}", st.version, st.name),
            });
        }
        Ok(Some(st))
    }

    /// Write the state atomically (temp file, fsync, rename, fsync dir).
    pub fn save(&self, st: &DeploymentState) -> Result<(), StateError> {
        let p = self.file(&st.name);
        let tmp = self.path.join(format!(".{}.json.tmp", st.name));
        let data = serde_json::to_vec_pretty(st).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err(&tmp))?;
            f.write_all(&data).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        if let Ok(d) = File::open(&self.path) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Forget deployment `name`.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let p = self.file(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Names of all recorded deployments, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&self.path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".json")
                && !stem.contains('.')
            {
                out.push(stem.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let dir = std::env::temp_dir().join(format!("netman-state-test-{}", std::process::id()));
        let sd = StateDir::open(&dir).expect("open");
        assert_eq!(sd.list().expect("list"), Vec::<String>::new());
        let mut st = DeploymentState::new("site-a");
        st.owned.links.insert("nm0".into(), Default::default());
        sd.save(&st).expect("save");
        let mode = fs::metadata(dir.join("site-a.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(sd.load("site-a").expect("load"), Some(st));
        assert_eq!(sd.list().expect("list"), vec!["site-a".to_string()]);
        assert_eq!(sd.load("site-b").expect("load"), None);
        {
            let _l = sd.lock().expect("lock");
        }
        sd.remove("site-a").expect("remove");
        assert_eq!(sd.list().expect("list"), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("netman-state-bad-{}", std::process::id()));
        let sd = StateDir::open(&dir).expect("open");
        fs::write(dir.join("x.json"), "{not json").expect("write");
        let err = sd.load("x").expect_err("corrupt");
        assert!(err.to_string().contains("x.json"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
