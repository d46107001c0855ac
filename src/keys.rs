//! Key files: private and preshared keys live in files of mode 0600 in
//! `wg genkey` format. A key file is opened without following a symlink and
//! without blocking, and checked on the open descriptor (no check of a path
//! and then an open of it): a regular file, owned by root or by the user
//! running netman, with no group or other permission bits. It is read from
//! that descriptor into a fixed buffer that is zeroized when dropped.
//! Errors name the path, never the content.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use netman_proto::keys::{PresharedKey, PrivateKey};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::files::{self, ReadError};

/// How much of a key file is read (a key is one line of 44 characters).
const KEY_FILE_BYTES: usize = 256;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "key file {path}: mode {mode:04o} lets group or others access it; run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "key file {path}: not a key (expected one line of 44 base64 characters, as written by `wg genkey`)"
    )]
    Malformed { path: PathBuf },
    #[error("key file {path}: not a regular file ({kind})")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "key file {path}: is a symbolic link; key files are not read through links (name the file itself)"
    )]
    Symlink { path: PathBuf },
    #[error(
        "key file {path}: owned by uid {uid}; a key file must belong to {owners} (run `chown root {path}`)"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        owners: String,
    },
}

/// The text of a key file: a fixed buffer, zeroized when dropped.
struct SecretText {
    buf: Zeroizing<[u8; KEY_FILE_BYTES]>,
    len: usize,
}

impl SecretText {
    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.buf[..self.len]).ok()
    }
}

/// Open a key file and read (at most [`KEY_FILE_BYTES`] of) it after the
/// checks above, all on one descriptor.
fn read_secret_file(path: &Path) -> Result<SecretText, KeyFileError> {
    let p = || path.to_path_buf();
    let mut f = files::open_read(path, true).map_err(|e| match e {
        ReadError::Symlink => KeyFileError::Symlink { path: p() },
        ReadError::Io(source) => KeyFileError::Read { path: p(), source },
        other => KeyFileError::Read {
            path: p(),
            source: io::Error::other(other.to_string()),
        },
    })?;
    let meta = f
        .metadata()
        .map_err(|source| KeyFileError::Read { path: p(), source })?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotAFile {
            path: p(),
            kind: files::kind(&meta),
        });
    }
    if !files::trusted_owner(meta.uid()) {
        return Err(KeyFileError::Owner {
            path: p(),
            uid: meta.uid(),
            owners: files::trusted_owners(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: p(), mode });
    }
    read_secret(&mut f).map_err(|_| KeyFileError::Malformed { path: p() })
}

/// Read at most [`KEY_FILE_BYTES`] from `r` into a fixed zeroized buffer
/// (no growing buffer leaves copies behind).
fn read_secret(r: &mut impl Read) -> io::Result<SecretText> {
    let mut text = SecretText {
        buf: Zeroizing::new([0u8; KEY_FILE_BYTES]),
        len: 0,
    };
    while text.len < KEY_FILE_BYTES {
        match r.read(&mut text.buf[text.len..]) {
            Ok(0) => break,
            Ok(n) => text.len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(text)
}

/// A private key from `r` (`netman pubkey` reads standard input, unbuffered:
/// pass a descriptor, not a buffered reader, or the reader's buffer keeps
/// a copy). `None`: not a private key in base64.
pub fn read_private_key(mut r: impl Read) -> io::Result<Option<PrivateKey>> {
    let text = read_secret(&mut r)?;
    Ok(text
        .as_str()
        .and_then(|t| PrivateKey::from_base64(t.trim()).ok()))
}

/// The text of a key file as a string, or `Malformed` (not UTF-8).
fn key_text<'a>(text: &'a SecretText, path: &Path) -> Result<&'a str, KeyFileError> {
    text.as_str().ok_or_else(|| KeyFileError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Load a private key file.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let text = read_secret_file(path)?;
    PrivateKey::from_base64(key_text(&text, path)?.trim()).map_err(|_| KeyFileError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Load a preshared key file.
pub fn load_preshared_key(path: &Path) -> Result<PresharedKey, KeyFileError> {
    let text = read_secret_file(path)?;
    PresharedKey::from_base64(key_text(&text, path)?.trim()).map_err(|_| KeyFileError::Malformed {
        path: path.to_path_buf(),
    })
}

/// 32 bytes from the operating system's CSPRNG (`getrandom(2)`).
pub fn os_random() -> io::Result<Zeroizing<[u8; 32]>> {
    let mut buf = Zeroizing::new([0u8; 32]);
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe a live, writable buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf)
}

/// A fresh private key, like `wg genkey`.
pub fn generate_private_key() -> io::Result<PrivateKey> {
    Ok(PrivateKey::from_seed(*os_random()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("netman-keys-{}-{name}", std::process::id()))
    }

    fn write(path: &Path, text: &str, mode: u32) {
        let _ = fs::remove_file(path);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .expect("create");
        io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn good_key_loads_and_matches_wg() {
        // Known pair (from `wg genkey | tee k | wg pubkey`).
        let p = tmp("good");
        write(&p, "YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=\n", 0o600);
        let k = load_private_key(&p).expect("load");
        assert_eq!(
            k.public_key().to_base64(),
            "V4rUiYSmRyeAkPT7GM/ETiJGHx76LuE2faJytobSM0c="
        );
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn bad_files_are_refused_without_echoing_content() {
        let secret = "YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=";
        let p = tmp("world");
        write(&p, secret, 0o644);
        let e = load_private_key(&p).err().expect("refused").to_string();
        assert!(e.contains("mode 0644"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(!e.contains(secret), "{e}");
        write(&p, secret, 0o640);
        assert!(load_private_key(&p).is_err());

        write(&p, &secret[..40], 0o600);
        let e = load_private_key(&p).err().expect("malformed").to_string();
        assert!(e.contains("not a key"), "{e}");
        assert!(!e.contains(&secret[..40]), "{e}");
        let _ = fs::remove_file(&p);

        let e = load_private_key(&p).err().expect("missing").to_string();
        assert!(e.contains("No such file"), "{e}");
        assert!(load_preshared_key(&p).is_err());
    }

    #[test]
    fn symlinked_or_foreign_key_files_are_refused() {
        let secret = "YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=";
        let real = tmp("real");
        write(&real, secret, 0o600);
        assert!(load_private_key(&real).is_ok());

        // A symlink to a good key file is not followed.
        let link = tmp("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let e = load_private_key(&link).err().expect("symlink").to_string();
        assert!(e.contains(&link.display().to_string()), "{e}");
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!e.contains(secret), "{e}");
        assert!(load_preshared_key(&link).is_err());
        let _ = fs::remove_file(&link);

        // Owned by someone else than root or the user running netman (the
        // tests run as root: chown to nobody).
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            std::os::unix::fs::chown(&real, Some(65534), None).expect("chown");
            let e = load_private_key(&real).err().expect("foreign").to_string();
            assert!(e.contains(&real.display().to_string()), "{e}");
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(!e.contains(secret), "{e}");
            std::os::unix::fs::chown(&real, Some(0), None).expect("chown");
            assert!(load_private_key(&real).is_ok());
        }

        // A FIFO is refused without blocking.
        let fifo = tmp("fifo");
        let _ = fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load_private_key(&fifo).err().expect("fifo").to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let _ = fs::remove_file(&fifo);
        let _ = fs::remove_file(&real);
    }

    #[test]
    fn a_key_file_with_trailing_lines_still_loads() {
        // As before: only the first 256 bytes are read, and trimmed.
        let p = tmp("trailing");
        let text = format!(
            "YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=\n{}",
            "\n".repeat(400)
        );
        write(&p, &text, 0o600);
        assert!(load_private_key(&p).is_ok());
        write(&p, &format!("{}\n", "A".repeat(300)), 0o600);
        assert!(load_private_key(&p).is_err());
        write(
            &p,
            "  YNqHbfBQKaGvzefSSJ2ghnXHbpVdvt9mvsbAlOWm30U=\n\n",
            0o600,
        );
        assert!(load_private_key(&p).is_ok());
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_private_key().expect("gen");
        let b = generate_private_key().expect("gen");
        assert_ne!(a.public_key(), b.public_key());
    }
}
