//! The state directory: one JSON file per deployment recording what netman
//! created (so `down` works without the manifest and after a crash) and the
//! manifest last applied (so `diff` without a file can report drift), plus a
//! lock file that serialises applies.
//!
//! What is in it decides what netman deletes and which engine it signals, so
//! it is checked before use: a state dir that is a symlink, is not owned by
//! root (or the user running netman) or is writable by group or others is
//! refused. Its files are read without following a symlink and within a size
//! limit, and written through fresh temp files (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//! mode 0600) renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use std::collections::BTreeMap;

use crate::error::ErrorKind;
use crate::files;
use crate::firewall;
use crate::link::model::Owned;
use crate::manifest::DerivedFrom;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/netman";

const STATE_VERSION: u32 = 1;

/// A state file holds up to three manifests (in force, previous, pending
/// revert) of at most 16 MiB each, JSON-escaped, plus the records of what
/// netman owns.
const MAX_STATE_BYTES: u64 = 256 << 20;

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
    #[error("state file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("state dir {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
}

impl StateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::Io { .. } => ErrorKind::Transient,
            StateError::Corrupt { .. } | StateError::File { .. } | StateError::Untrusted { .. } => {
                ErrorKind::Invalid
            }
        }
    }
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
    /// The manifest's text: for a manifest derived from a network file,
    /// the derived v1 manifest (so a revert or a file-less `diff` needs
    /// only this), not the network file.
    pub text: String,
    /// The network file and site `text` was derived from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<DerivedFrom>,
}

impl ManifestRecord {
    /// The SHA-256 of the file at `path` when it was applied (the network
    /// file's for a derived manifest): what the watcher compares the file
    /// with.
    pub fn file_sha256(&self) -> &str {
        self.derived_from
            .as_ref()
            .map_or(self.sha256.as_str(), |d| d.sha256.as_str())
    }
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
    /// Why the last automatic revert happened (unset by the next change
    /// of manifest), e.g. which peer did not handshake again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_reason: Option<String>,
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
    /// Confirm by health instead of `netman confirm` (also accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthGate>,
}

/// What a change on probation must show to be kept by itself (`apply
/// --confirm-when healthy`, `rollout: {confirm: healthy}`): every peer
/// that had a recent handshake before the change handshakes again, and
/// every probe answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthGate {
    /// Unix time (milliseconds) of the change: what happens after counts.
    pub since_ms: u64,
    /// The peers to hear from again, as they were before the change.
    pub peers: Vec<GatePeer>,
    /// The new manifest's probes.
    #[serde(default)]
    pub probes: Vec<crate::manifest::Probe>,
}

/// A peer with a handshake in the [`RECENT_HANDSHAKE_SECS`] before a
/// change, still configured after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePeer {
    pub name: String,
    /// Its public key before the change (a new key is a new peer).
    pub public_key: crate::manifest::PublicKey,
    /// Its completed handshakes before the change.
    pub handshakes: u64,
}

/// A handshake at most this old (s) makes a peer one to hear from again
/// (WireGuard's REJECT_AFTER_TIME: its session was still usable).
pub const RECENT_HANDSHAKE_SECS: u64 = 180;

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
            reverted_reason: None,
            previous_manifest: None,
            applied_by_watcher: false,
            no_watch: false,
        }
    }
}

/// What a successful apply leaves in force, for
/// [`DeploymentState::record_apply`].
#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    pub manifest: ManifestRecord,
    /// What netman created (no longer the intent's superset).
    pub owned: Owned,
    pub firewall: Option<firewall::Record>,
    pub sysctls: BTreeMap<String, String>,
    /// The kernel or firewall plan was not empty (the intent was recorded).
    pub changed: bool,
    /// The engine changed something.
    pub engine_changed: bool,
    /// `--confirm-timeout`: when the automatic revert is due (Unix ms).
    pub confirm_deadline_ms: Option<u64>,
    /// `--confirm-when healthy`: what confirms by itself.
    pub health: Option<HealthGate>,
    /// This apply is an automatic revert: why.
    pub revert_reason: Option<String>,
    /// This apply is the revert of an unconfirmed one.
    pub resolves_pending: bool,
    /// `--no-watch` given (`Some(true)`), or watching asked for again.
    pub no_watch: Option<bool>,
    /// The watcher applied (a changed file, or drift).
    pub by_watcher: bool,
    /// Unix time (seconds) of the apply.
    pub now_secs: u64,
}

impl DeploymentState {
    /// Fold a successful apply into the record. Whether anything in it
    /// changed (then the state file must be saved; an apply that changed
    /// nothing writes nothing).
    pub fn record_apply(&mut self, o: ApplyOutcome) -> bool {
        let manifest_changed = self.manifest.as_ref() != Some(&o.manifest);
        let pending = match o.confirm_deadline_ms {
            _ if o.resolves_pending => None,
            Some(deadline_ms) if manifest_changed || o.changed || o.engine_changed => {
                Some(PendingConfirm {
                    deadline_ms,
                    previous: self.manifest.clone(),
                    health: o.health.clone(),
                })
            }
            // The watcher applied this very file moments ago (the operator
            // saved it, then ran `apply --confirm-timeout`): the timeout
            // covers the watcher's change.
            Some(deadline_ms) if self.applied_by_watcher && self.previous_manifest.is_some() => {
                Some(PendingConfirm {
                    deadline_ms,
                    previous: self.previous_manifest.clone(),
                    health: o.health.clone(),
                })
            }
            _ => self.pending_confirm.clone(),
        };
        let by_watcher = if manifest_changed {
            o.by_watcher
        } else {
            self.applied_by_watcher && o.by_watcher
        };
        let unchanged = !o.changed
            && !manifest_changed
            && !self.in_progress
            && self.owned == o.owned
            && self.firewall == o.firewall
            && self.sysctls == o.sysctls
            && self.pending_confirm == pending
            && !o.resolves_pending
            && o.no_watch.is_none_or(|v| v == self.no_watch)
            && self.applied_by_watcher == by_watcher;
        if unchanged {
            return false;
        }
        if manifest_changed {
            self.previous_manifest = self.manifest.clone();
        }
        self.applied_by_watcher = by_watcher;
        (self.reverted_sha256, self.reverted_reason) = if o.resolves_pending {
            (
                self.manifest.as_ref().map(|m| m.file_sha256().to_owned()),
                o.revert_reason.clone(),
            )
        } else if manifest_changed {
            (None, None)
        } else {
            (self.reverted_sha256.take(), self.reverted_reason.take())
        };
        self.pending_confirm = pending;
        if let Some(v) = o.no_watch {
            self.no_watch = v;
        }
        self.owned = o.owned;
        self.firewall = o.firewall;
        self.sysctls = o.sysctls;
        self.manifest = Some(o.manifest);
        self.applied_at = Some(o.now_secs);
        self.in_progress = false;
        true
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

/// The identity of a state file as `stat` sees it: it changes whenever the
/// file is replaced (every save renames a new file into place) or modified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Refuse a state dir that is a symlink, not a directory, not owned by root
/// (or the user running netman) or writable by group or others. `Ok(false)`:
/// it does not exist.
fn check_dir(path: &Path) -> Result<bool, StateError> {
    let untrusted = |reason: String| StateError::Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    let shown = path.display();
    if meta.file_type().is_symlink() {
        return Err(untrusted(format!(
            "is a symbolic link; netman does not use a state dir through a link (pass the directory itself with --state-dir, e.g. --state-dir {})",
            fs::canonicalize(path)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "DIR".to_owned())
        )));
    }
    if !meta.is_dir() {
        return Err(untrusted(format!(
            "not a directory ({})",
            files::kind(&meta)
        )));
    }
    if !files::trusted_owner(meta.uid()) {
        return Err(untrusted(format!(
            "owned by uid {}; a state dir must belong to {} (run `chown root {shown}`)",
            meta.uid(),
            files::trusted_owners()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(untrusted(format!(
            "mode {mode:04o} lets group or others write to it; run `chmod go-w {shown}`"
        )));
    }
    Ok(true)
}

impl StateDir {
    /// Use `path`, creating it (mode 0700) if needed; refuse it if it cannot
    /// be trusted (see the module docs).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if !check_dir(path)? {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_err(path))?;
            check_dir(path)?;
        }
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Use `path` for reading only: it need not exist (it is checked, like
    /// [`StateDir::open`] does, whenever it is used).
    pub fn at(path: &Path) -> Self {
        StateDir {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.state_file(name)
    }

    // Every path under the state dir is named here.

    /// `<dir>/<name>.json`: what deployment `name` created (the state file).
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.json"))
    }

    /// `<dir>/<name>.engine.json`: the engine configuration in force.
    pub fn engine_config(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.engine.json"))
    }

    /// `<dir>/<name>.log`: a detached engine's log.
    pub fn engine_log(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }

    /// `<dir>/<name>.sock`: the engine's control socket.
    pub fn control_socket(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.sock"))
    }

    /// `<dir>/lock`: serialises netman commands.
    pub fn lock_file(&self) -> PathBuf {
        self.path.join("lock")
    }

    /// `<dir>/cache`: the authenticated parse cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.path.join("cache")
    }

    /// Refuse the directory if it cannot be trusted; `Ok(false)`: it does
    /// not exist.
    pub fn check(&self) -> Result<bool, StateError> {
        check_dir(&self.path)
    }

    /// Take the exclusive lock, waiting for another netman that holds it.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.check()?;
        let p = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&p)
            .map_err(io_err(&p))?;
        if !file.metadata().map_err(io_err(&p))?.is_file() {
            return Err(StateError::File {
                path: p,
                reason: "not a regular file".to_owned(),
            });
        }
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
        Ok(self.load_stamped(name)?.map(|(st, _)| st))
    }

    /// [`StateDir::load`], with the identity of the file read (compare it
    /// with [`StateDir::stamp`] to know whether the file changed since).
    pub fn load_stamped(&self, name: &str) -> Result<Option<(DeploymentState, Stamp)>, StateError> {
        if !self.check()? {
            return Ok(None);
        }
        let p = self.file(name);
        let file_err = |reason: String| StateError::File {
            path: p.clone(),
            reason,
        };
        let mut f = match files::open_read(&p, true) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(files::ReadError::Io(e)) => return Err(io_err(&p)(e)),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let meta = files::regular(&f).map_err(|e| file_err(e.to_string()))?;
        let stamp = Stamp::of(&meta);
        let bytes =
            files::read_limited(&mut f, MAX_STATE_BYTES).map_err(|e| file_err(e.to_string()))?;
        let st: DeploymentState =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        if st.version != STATE_VERSION || st.name != name {
            return Err(StateError::Corrupt {
                path: p,
                reason: format!("version {} name {:?}", st.version, st.name),
            });
        }
        Ok(Some((st, stamp)))
    }

    /// The identity of the state file of `name` now (`None`: there is none).
    pub fn stamp(&self, name: &str) -> Option<Stamp> {
        fs::symlink_metadata(self.file(name))
            .ok()
            .map(|m| Stamp::of(&m))
    }

    /// Write the state atomically (a fresh temp file, fsync, rename, fsync
    /// of the dir).
    pub fn save(&self, st: &DeploymentState) -> Result<(), StateError> {
        self.check()?;
        let p = self.file(&st.name);
        let tmp = self.path.join(format!(".{}.json.tmp", st.name));
        let data = serde_json::to_vec_pretty(st).map_err(|e| StateError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        files::write_atomic(&p, &tmp, &data, 0o600).map_err(|(path, source)| StateError::Io {
            path: PathBuf::from(path),
            source,
        })
    }

    /// Forget deployment `name`.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        self.check()?;
        let p = self.file(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Names of all recorded deployments, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        if !self.check()? {
            return Ok(Vec::new());
        }
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
    use std::os::unix::fs::PermissionsExt;

    fn rec(text: &str) -> ManifestRecord {
        ManifestRecord {
            path: PathBuf::from("/etc/netman/a.yaml"),
            sha256: format!("sha-{text}"),
            text: text.to_string(),
            derived_from: None,
        }
    }

    /// An apply of `m` that changed nothing in the kernel, with what a
    /// state already holding `st`'s ownership would record.
    fn outcome(st: &DeploymentState, m: &ManifestRecord) -> ApplyOutcome {
        ApplyOutcome {
            manifest: m.clone(),
            owned: st.owned.clone(),
            firewall: st.firewall.clone(),
            sysctls: st.sysctls.clone(),
            changed: false,
            engine_changed: false,
            confirm_deadline_ms: None,
            health: None,
            revert_reason: None,
            resolves_pending: false,
            no_watch: None,
            by_watcher: false,
            now_secs: 1_000,
        }
    }

    fn applied(m: &ManifestRecord) -> DeploymentState {
        let mut st = DeploymentState::new("a");
        assert!(st.record_apply(outcome(&st, m)));
        st
    }

    #[test]
    fn an_apply_that_changes_nothing_writes_nothing() {
        let m = rec("v1");
        let mut st = applied(&m);
        let before = st.clone();
        let mut o = outcome(&st, &m);
        o.now_secs = 2_000;
        assert!(!st.record_apply(o), "same manifest, nothing changed");
        assert_eq!(st, before, "not even applied_at moves");
        // An interrupted apply's flag is cleared, though.
        st.in_progress = true;
        assert!(st.record_apply(outcome(&st, &m)));
        assert!(!st.in_progress);
    }

    #[test]
    fn a_new_manifest_becomes_the_previous_one_later() {
        let (v1, v2) = (rec("v1"), rec("v2"));
        let mut st = applied(&v1);
        assert_eq!(st.applied_at, Some(1_000));
        let mut o = outcome(&st, &v2);
        o.by_watcher = true;
        assert!(st.record_apply(o));
        assert_eq!(st.manifest.as_ref(), Some(&v2));
        assert_eq!(st.previous_manifest.as_ref(), Some(&v1));
        assert!(st.applied_by_watcher);
        // The same file applied by a command: no longer the watcher's.
        assert!(st.record_apply(outcome(&st, &v2)));
        assert!(!st.applied_by_watcher);
    }

    #[test]
    fn confirm_timeout_records_what_to_go_back_to() {
        let (v1, v2) = (rec("v1"), rec("v2"));
        let mut st = applied(&v1);
        let mut o = outcome(&st, &v2);
        o.confirm_deadline_ms = Some(5_000);
        assert!(st.record_apply(o));
        assert_eq!(
            st.pending_confirm,
            Some(PendingConfirm {
                deadline_ms: 5_000,
                previous: Some(v1.clone()),
                health: None,
            })
        );
        // Nothing changed and no new manifest: the pending one stays.
        let mut o = outcome(&st, &v2);
        o.confirm_deadline_ms = Some(9_000);
        assert!(!st.record_apply(o));
        assert_eq!(
            st.pending_confirm.as_ref().map(|p| p.deadline_ms),
            Some(5_000)
        );
        // The revert resolves it and remembers what was reverted.
        let mut o = outcome(&st, &v1);
        o.resolves_pending = true;
        assert!(st.record_apply(o));
        assert_eq!(st.pending_confirm, None);
        assert_eq!(st.reverted_sha256.as_deref(), Some("sha-v2"));
        assert_eq!(st.manifest.as_ref(), Some(&v1));
    }

    #[test]
    fn confirm_timeout_after_the_watcher_applied_the_file_covers_its_change() {
        let (v1, v2) = (rec("v1"), rec("v2"));
        let mut st = applied(&v1);
        let mut o = outcome(&st, &v2);
        o.by_watcher = true;
        assert!(st.record_apply(o));
        // `apply --confirm-timeout` of the file the watcher just applied.
        let mut o = outcome(&st, &v2);
        o.confirm_deadline_ms = Some(7_000);
        assert!(st.record_apply(o));
        assert_eq!(
            st.pending_confirm
                .as_ref()
                .and_then(|p| p.previous.as_ref()),
            Some(&v1)
        );
    }

    #[test]
    fn a_revert_of_a_derived_manifest_records_the_network_file_and_why() {
        let v1 = rec("v1");
        let mut v2 = rec("v2");
        v2.derived_from = Some(DerivedFrom {
            network: "corp".into(),
            site: "a".into(),
            sha256: "sha-network-v2".into(),
        });
        assert_eq!(v2.file_sha256(), "sha-network-v2");
        assert_eq!(v1.file_sha256(), "sha-v1");
        let mut st = applied(&v1);
        let mut o = outcome(&st, &v2);
        o.confirm_deadline_ms = Some(5_000);
        assert!(st.record_apply(o));
        // The health-gated revert, back to v1.
        let mut o = outcome(&st, &v1);
        o.resolves_pending = true;
        o.revert_reason = Some("peer b has not completed a handshake".into());
        assert!(st.record_apply(o));
        assert_eq!(st.reverted_sha256.as_deref(), Some("sha-network-v2"));
        assert_eq!(
            st.reverted_reason.as_deref(),
            Some("peer b has not completed a handshake")
        );
        // The next change of manifest forgets both.
        assert!(st.record_apply(outcome(&st, &rec("v3"))));
        assert_eq!((st.reverted_sha256, st.reverted_reason), (None, None));
    }

    #[test]
    fn no_watch_is_recorded_only_when_said() {
        let m = rec("v1");
        let mut st = applied(&m);
        let mut o = outcome(&st, &m);
        o.no_watch = Some(true);
        assert!(st.record_apply(o));
        assert!(st.no_watch);
        assert!(!st.record_apply(outcome(&st, &m)), "None keeps it");
        assert!(st.no_watch);
    }

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
