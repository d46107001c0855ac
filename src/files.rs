//! Opening the files netman reads and writes without trusting them.
//!
//! Everything is decided on the open descriptor, never by checking a path
//! and then opening it: a file is opened without blocking (a FIFO cannot
//! hang the open), `fstat`ed, and read only if it is a regular file within
//! a size limit, and then at most limit + 1 bytes of it (a file that grows
//! meanwhile is still caught). Secrets and state are opened without
//! following a symlink. Files netman writes are created fresh
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) after removing a stale one, so
//! nothing is ever written through a planted link.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The path names a symlink and links are not followed.
    #[error("is a symbolic link (not followed)")]
    Symlink,
    /// A FIFO, device, directory or socket.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Larger than the limit (`size`: as `fstat` reported it, or what was
    /// read when the file grew while being read).
    #[error("too large ({size} bytes; at most {limit})")]
    TooLarge { size: u64, limit: u64 },
}

impl ReadError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// What kind of file `meta` describes, for messages (`a FIFO`).
pub fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading: close-on-exec, non-blocking (so that opening a
/// FIFO returns at once), and with `nofollow` refusing a symlink.
pub fn open_read(path: &Path, nofollow: bool) -> Result<File, ReadError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => Ok(f),
        Err(e) if nofollow && e.raw_os_error() == Some(libc::ELOOP) => Err(ReadError::Symlink),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// `fstat` of an open file, which must be a regular file.
pub fn regular(file: &File) -> Result<Metadata, ReadError> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(kind(&meta)));
    }
    Ok(meta)
}

/// Read an open regular file of at most `limit` bytes into a buffer sized
/// from `fstat` (never more than limit + 1 bytes are read).
pub fn read_limited(file: &mut File, limit: u64) -> Result<Vec<u8>, ReadError> {
    let meta = regular(file)?;
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    Read::by_ref(file).take(limit + 1).read_to_end(&mut buf)?;
    let read = buf.len() as u64;
    if read > limit {
        return Err(ReadError::TooLarge { size: read, limit });
    }
    Ok(buf)
}

/// Open `path` (following a symlink only when `nofollow` is false) and read
/// it as [`read_limited`] does.
pub fn read_file(path: &Path, nofollow: bool, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut f = open_read(path, nofollow)?;
    read_limited(&mut f, limit)
}

/// The real uid of this process (the user running netman).
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Whether files owned by `uid` may be trusted: root's or the invoking
/// user's.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == real_uid()
}

/// Who may own trusted files, for messages: `root` or `root or uid 1000`.
pub fn trusted_owners() -> String {
    match real_uid() {
        0 => "root".to_owned(),
        me => format!("root or uid {me} (the user running netman)"),
    }
}

/// Create `path` afresh for writing with `mode` (umask notwithstanding):
/// a stale file or symlink there is removed first (unlink does not follow
/// links), then the file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    for _ in 0..3 {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => {
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                return Ok(f);
            }
            // Someone created it between the unlink and the open: again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{} keeps reappearing", path.display()),
    ))
}

/// Write `data` to `path` atomically through the temp file `tmp` (created
/// with [`create_new`], fsynced, renamed over `path`; then the directory is
/// fsynced). Errors carry the path they concern.
pub fn write_atomic(
    path: &Path,
    tmp: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), (String, io::Error)> {
    fn at(p: &Path) -> impl FnOnce(io::Error) -> (String, io::Error) + '_ {
        move |e| (p.display().to_string(), e)
    }
    {
        let mut f = create_new(tmp, mode).map_err(at(tmp))?;
        f.write_all(data).map_err(at(tmp))?;
        f.sync_all().map_err(at(tmp))?;
    }
    std::fs::rename(tmp, path).map_err(at(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Open (creating it, mode 0600) a log file for appending, never through a
/// symlink; an existing log is made 0600 too.
pub fn open_log(path: &Path) -> Result<File, ReadError> {
    let f = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadError::Symlink),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let meta = regular(&f)?;
    if meta.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("netman-files-{}-{name}", std::process::id()))
    }

    #[test]
    fn limits_and_kinds() {
        let p = tmp("limit");
        std::fs::write(&p, b"12345").expect("write");
        assert_eq!(read_file(&p, true, 5).expect("at the limit"), b"12345");
        assert!(matches!(
            read_file(&p, true, 4),
            Err(ReadError::TooLarge { size: 5, limit: 4 })
        ));
        let link = tmp("limit-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        assert!(matches!(read_file(&link, true, 5), Err(ReadError::Symlink)));
        assert_eq!(read_file(&link, false, 5).expect("followed"), b"12345");
        assert!(matches!(
            read_file(Path::new("/dev/null"), false, 5),
            Err(ReadError::NotRegular("a character device"))
        ));
        assert!(matches!(
            read_file(&std::env::temp_dir(), false, 5),
            Err(ReadError::NotRegular("a directory"))
        ));
        assert!(read_file(&tmp("missing"), true, 5).is_err_and(|e| e.is_not_found()));
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn create_new_replaces_a_planted_symlink_and_sets_the_mode() {
        let victim = tmp("victim");
        std::fs::write(&victim, b"keep").expect("write");
        let p = tmp("created");
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&victim, &p).expect("symlink");
        let mut f = create_new(&p, 0o600).expect("create");
        f.write_all(b"new").expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&victim);
    }

    #[test]
    fn logs_are_0600_and_not_followed() {
        let p = tmp("log");
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, b"old\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut f = open_log(&p).expect("open");
        f.write_all(b"new\n").expect("append");
        assert_eq!(std::fs::read(&p).expect("read"), b"old\nnew\n");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o600);
        let link = tmp("log-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        assert!(matches!(open_log(&link), Err(ReadError::Symlink)));
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&p);
    }
}
