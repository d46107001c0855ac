//! Links, addresses, routes and policy rules, reconciled through rtnetlink.
//!
//! The same shape as [`crate::firewall`]: [`model`] (one schema for the
//! desired state from the manifest, the observed state from the kernel and
//! the recorded ownership from the state file) → [`plan`] (pure: desired ×
//! observed × owned → ordered actions) → [`netlink`] (the thin executor:
//! observe, and carry out each action) and [`tun`] (creating the persistent
//! TUN device). [`crate::reconcile`] orchestrates them with the firewall.

pub mod model;
pub mod netlink;
pub mod plan;
pub mod tun;
