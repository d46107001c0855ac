//! Key files: private and preshared keys live in files of mode 0600 in
//! `wg genkey` format. They are refused if missing, malformed or accessible
//! by group/other. Errors name the path, never the content.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use netman_proto::keys::{PresharedKey, PrivateKey};
use thiserror::Error;
use zeroize::Zeroizing;

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
    #[error("key file {path}: not a regular file")]
    NotAFile { path: PathBuf },
}

/// Read a key file after checking its permissions; the text is zeroized
/// when dropped.
fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut f = fs::File::open(path).map_err(err)?;
    let mut text = Zeroizing::new(String::new());
    // A key file is tiny; refuse to read more than a few lines.
    f.by_ref()
        .take(256)
        .read_to_string(&mut text)
        .map_err(|_| KeyFileError::Malformed {
            path: path.to_path_buf(),
        })?;
    Ok(text)
}

/// Load a private key file.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let text = read_secret_file(path)?;
    PrivateKey::from_base64(text.trim()).map_err(|_| KeyFileError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Load a preshared key file.
pub fn load_preshared_key(path: &Path) -> Result<PresharedKey, KeyFileError> {
    let text = read_secret_file(path)?;
    PresharedKey::from_base64(text.trim()).map_err(|_| KeyFileError::Malformed {
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
    use std::os::unix::fs::OpenOptionsExt;

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
    fn generated_keys_differ() {
        let a = generate_private_key().expect("gen");
        let b = generate_private_key().expect("gen");
        assert_ne!(a.public_key(), b.public_key());
    }
}
