//! What kind of failure an error is, across the layers: each layer's
//! `thiserror` enum says it with a `kind()` method, so the watcher's
//! back-off (and anything else above) decides by kind, never by matching
//! an error's text.

/// How a caller should treat an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Another operation holds the deployment (an apply waiting for
    /// `netman confirm`): not a failure; what is pending resolves it.
    Busy,
    /// The input cannot work as it is (the manifest, a key file, a rule
    /// nft rejects, a conflict with what netman does not own): trying the
    /// same input again fails the same way until something changes.
    Invalid,
    /// The kernel, nft, the state dir or the engine failed on the way
    /// (netlink, a verification, the control socket, name resolution):
    /// trying again may succeed.
    Transient,
}

impl ErrorKind {
    /// The graver of two kinds (for an error made of several).
    pub fn worst(self, other: ErrorKind) -> ErrorKind {
        use ErrorKind::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Transient, _) | (_, Transient) => Transient,
            _ => Busy,
        }
    }
}
