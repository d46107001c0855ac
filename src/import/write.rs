//! Writing an import's files: the output directory and `keys/` opened
//! without following links, every file created afresh (`O_CREAT|O_EXCL|
//! O_NOFOLLOW`) relative to those descriptors, the manifest read back from
//! the disk, and everything created removed again if the import fails.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ImportError;
use crate::files;

/// Refuse `path` if anything is there, a symbolic link (even dangling)
/// included.
pub(super) fn refuse_existing(path: &Path) -> Result<(), ImportError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(ImportError::Symlink {
            path: path.display().to_string(),
        }),
        Ok(_) => Err(ImportError::Exists {
            path: path.display().to_string(),
        }),
        Err(_) => Ok(()),
    }
}

/// Which directory a file goes into.
#[derive(Clone, Copy)]
pub(super) enum Where {
    Dir,
    Keys,
}

/// Writes files relative to the output directory's descriptor and removes
/// everything it created (files, `keys/`, the output directory and its
/// missing parents) on drop unless committed.
pub(super) struct Writer {
    dir_path: PathBuf,
    dir: OwnedFd,
    keys: Option<OwnedFd>,
    /// Files created, in order.
    files: Vec<(Where, CString)>,
    keys_created: bool,
    /// Directories created for `-o DIR`, outermost first.
    dirs_created: Vec<PathBuf>,
    committed: bool,
}

impl Writer {
    /// Create `dir` (and missing parents) if needed and open it.
    pub(super) fn open(dir: &Path) -> Result<Writer, ImportError> {
        let mut missing = Vec::new();
        let mut p = dir;
        while matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound)
        {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => break,
            }
        }
        missing.reverse();
        let io_err = |action, source| ImportError::Io {
            action,
            path: dir.display().to_string(),
            source,
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            remove_dirs(&missing);
            return Err(io_err("create", e));
        }
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map(OwnedFd::from);
        match fd {
            Ok(fd) => Ok(Writer {
                dir_path: dir.to_path_buf(),
                dir: fd,
                keys: None,
                files: Vec::new(),
                keys_created: false,
                dirs_created: missing,
                committed: false,
            }),
            Err(e) => {
                remove_dirs(&missing);
                Err(io_err("open", e))
            }
        }
    }

    /// Create `keys/` (mode 0700) unless it is there, and open it without
    /// following a symbolic link.
    pub(super) fn open_keys_dir(&mut self) -> Result<(), ImportError> {
        let path = self.dir_path.join("keys");
        let label = path.display().to_string();
        let io_err = |action, source| ImportError::Io {
            action,
            path: label.clone(),
            source,
        };
        match at::mkdir(self.dir.as_fd(), c"keys", 0o700) {
            Ok(()) => self.keys_created = true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io_err("create", e)),
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        match at::open(self.dir.as_fd(), c"keys", flags, 0) {
            Ok(fd) => {
                // An existing `keys/` holds the key files from now on: it
                // must be as private as one import creates.
                let meta = std::fs::File::from(fd.try_clone().map_err(|e| io_err("open", e))?)
                    .metadata()
                    .map_err(|e| io_err("stat", e))?;
                let untrusted = |reason: String| ImportError::UntrustedKeysDir {
                    path: label.clone(),
                    reason,
                };
                if !files::trusted_owner(meta.uid()) {
                    return Err(untrusted(format!(
                        "owned by uid {} (not {})",
                        meta.uid(),
                        files::trusted_owners()
                    )));
                }
                if meta.mode() & 0o022 != 0 {
                    return Err(untrusted(format!(
                        "writable by group or others (mode {:o}; run `chmod go-w {label}`)",
                        meta.mode() & 0o7777
                    )));
                }
                self.keys = Some(fd);
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP)) => {
                Err(ImportError::Symlink { path: label })
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR)) => {
                // ENOTDIR for a link too on some kernels: say which.
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        Err(ImportError::Symlink { path: label })
                    }
                    _ => Err(ImportError::NotADir { path: label }),
                }
            }
            Err(e) => Err(io_err("open", e)),
        }
    }

    fn fd(&self, place: Where) -> Result<BorrowedFd<'_>, ImportError> {
        match place {
            Where::Dir => Ok(self.dir.as_fd()),
            Where::Keys => self
                .keys
                .as_ref()
                .map(AsFd::as_fd)
                .ok_or_else(|| ImportError::Io {
                    action: "open",
                    path: self.dir_path.join("keys").display().to_string(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                }),
        }
    }

    fn path(&self, place: Where, name: &str) -> PathBuf {
        match place {
            Where::Dir => self.dir_path.join(name),
            Where::Keys => self.dir_path.join("keys").join(name),
        }
    }

    /// Create the new file `name` (never over anything, never through a
    /// link), give it exactly `mode` (the umask still applies to 0666), and
    /// write `bytes` to it.
    pub(super) fn create(
        &mut self,
        place: Where,
        name: &str,
        mode: u32,
        bytes: &[u8],
    ) -> Result<(), ImportError> {
        let path = self.path(place, name);
        let label = path.display().to_string();
        let io_err = |action, source| ImportError::Io {
            action,
            path: label.clone(),
            source,
        };
        let c_name = CString::new(name)
            .map_err(|_| io_err("create", io::Error::from(io::ErrorKind::InvalidInput)))?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = match at::open(self.fd(place)?, &c_name, flags, mode) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => ImportError::Symlink { path: label },
                    _ => ImportError::Exists { path: label },
                });
            }
            Err(e) => return Err(io_err("create", e)),
        };
        self.files.push((place, c_name));
        let mut f = File::from(fd);
        if mode != 0o666 {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| io_err("chmod", e))?;
        }
        f.write_all(bytes).map_err(|e| io_err("write", e))?;
        f.sync_all().map_err(|e| io_err("sync", e))
    }

    /// Read `name` back (without following a link), at most `len + 1`
    /// bytes.
    pub(super) fn read_back(&self, name: &str, len: usize) -> Result<Vec<u8>, ImportError> {
        let path = self.path(Where::Dir, name);
        let io_err = |source| ImportError::Io {
            action: "read back",
            path: path.display().to_string(),
            source,
        };
        let c_name =
            CString::new(name).map_err(|_| io_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = at::open(self.dir.as_fd(), &c_name, flags, 0).map_err(io_err)?;
        let mut text = Vec::with_capacity(len + 1);
        File::from(fd)
            .take(len as u64 + 1)
            .read_to_end(&mut text)
            .map_err(io_err)?;
        Ok(text)
    }

    pub(super) fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (place, name) in self.files.iter().rev() {
            let dir = match place {
                Where::Dir => Some(self.dir.as_fd()),
                Where::Keys => self.keys.as_ref().map(AsFd::as_fd),
            };
            if let Some(dir) = dir {
                let _ = at::unlink(dir, name, 0);
            }
        }
        if self.keys_created {
            self.keys = None;
            let _ = at::unlink(self.dir.as_fd(), c"keys", libc::AT_REMOVEDIR);
        }
        remove_dirs(&self.dirs_created);
    }
}

/// Remove directories (only if empty), innermost first.
fn remove_dirs(outermost_first: &[PathBuf]) {
    for d in outermost_first.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// The `*at(2)` calls std does not offer, on descriptors (no path is
/// resolved through a link the caller did not ask for).
mod at {
    use super::*;

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    pub(super) fn open(
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: libc::c_int,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated
        // string that outlives the call; the new descriptor is owned here.
        let fd = check(unsafe {
            libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint)
        })?;
        // SAFETY: `fd` was just returned by openat and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(super) fn mkdir(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
        // SAFETY: as in `open`; no descriptor is created.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
            .map(drop)
    }

    pub(super) fn unlink(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: as in `mkdir`.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
    }
}
