//! netman: declarative site-to-site VPN manager.
//!
//! The shape: [`manifest`] (parse + validate) → [`link`] observe (live
//! kernel state into the [`link::model`]) → [`link::plan`] (a pure
//! function: desired × observed → ordered actions) → [`link::netlink`]
//! execute → verify → revert on failure, orchestrated by [`reconcile`] and
//! recorded in [`state`]. The
//! [`firewall`] (nftables rules, forwarding sysctls) follows the same shape.
//!
//! Layers point down only: [`cli`] and the binary → [`watch`] (follows the
//! manifest and the kernel) → [`deploy`] (apply, run, down) → [`reconcile`]
//! and [`engine`] (the data plane; it knows nothing above it and starts
//! the watcher through a ready hook) → [`manifest`], [`link`],
//! [`firewall`], [`state`] → `netman-proto`.

pub mod cli;
pub mod clock;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod files;
pub mod firewall;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod import;
pub mod keys;
pub mod link;
pub mod manifest;
pub mod network;
pub mod reconcile;
pub mod state;
pub mod watch;
