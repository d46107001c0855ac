//! Forwarding sysctls under `/proc/sys` (per network namespace: the files
//! show the namespace of the process that opens them).

use std::io::ErrorKind;
use std::path::PathBuf;

use super::FirewallError;

/// The sysctls `forwarding: true` sets to 1.
pub const FORWARDING_KEYS: [&str; 2] = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// The value of `key`, or `None` if this kernel has no such sysctl (e.g. no
/// IPv6).
pub fn read(key: &str) -> Result<Option<String>, FirewallError> {
    let p = path(key);
    match std::fs::read_to_string(&p) {
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FirewallError::Sysctl {
            key: key.to_owned(),
            reason: format!("cannot read {}: {e}", p.display()),
        }),
    }
}

/// Set `key` to `value`.
pub fn write(key: &str, value: &str) -> Result<(), FirewallError> {
    let p = path(key);
    std::fs::write(&p, format!("{value}\n")).map_err(|e| FirewallError::Sysctl {
        key: key.to_owned(),
        reason: format!("cannot write {value} to {}: {e}", p.display()),
    })
}
