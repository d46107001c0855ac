//! Exit codes: the table "Commands and exit codes" in docs/operations.md
//! is the contract; and how a failed apply maps onto it.

use crate::deploy::DeployError;
use crate::firewall::FirewallError;
use crate::reconcile::ReconcileError;

pub const OK: u8 = 0;
/// The command failed (`apply`: and was reverted). Never used by `diff`.
pub const FAILED: u8 = 1;
/// The manifest is invalid.
pub const INVALID: u8 = 2;
/// `diff`: the live state differs from the manifest.
pub const DIFF_CHANGES: u8 = 1;
/// `diff`: it could not tell (any error, an invalid manifest included), so
/// a failing `diff` never reads as "changes pending".
pub const DIFF_ERROR: u8 = 2;

/// A failed apply: its exit code and the message for stderr.
pub fn apply_failure(e: &DeployError) -> (u8, String) {
    match e {
        DeployError::Config(_) => (FAILED, format!("netman: {e}")),
        DeployError::Reconcile(e @ ReconcileError::Plan(_)) => {
            (FAILED, format!("netman: nothing applied: {e}"))
        }
        // Found while planning, before anything changed. A rule nft
        // rejects makes the manifest invalid.
        DeployError::Reconcile(ReconcileError::Firewall(e)) => (
            match e {
                FirewallError::Rejected(_) => INVALID,
                _ => FAILED,
            },
            format!("netman: nothing applied: {e}"),
        ),
        DeployError::Reconcile(e @ ReconcileError::PendingConfirm { .. }) => {
            (FAILED, format!("netman: {e}"))
        }
        e => (FAILED, format!("netman: apply failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_nft_rejects_makes_the_manifest_invalid() {
        let e = DeployError::Reconcile(ReconcileError::Firewall(FirewallError::Rejected(vec![
            "m.yaml:3:5: firewall.input.rules[0]: bad".to_string(),
        ])));
        let (code, msg) = apply_failure(&e);
        assert_eq!(code, INVALID);
        assert!(
            msg.starts_with("netman: nothing applied: nft rejected"),
            "{msg}"
        );
    }

    #[test]
    fn a_pending_confirmation_fails_without_saying_apply_failed() {
        let e = DeployError::Reconcile(ReconcileError::PendingConfirm {
            name: "a".to_string(),
            deadline_ms: 0,
        });
        let (code, msg) = apply_failure(&e);
        assert_eq!(code, FAILED);
        assert!(msg.starts_with("netman: an apply of deployment a"), "{msg}");
    }

    #[test]
    fn other_failures_say_apply_failed() {
        let e = DeployError::Reconcile(ReconcileError::DownFailed(vec!["x".to_string()]));
        let (code, msg) = apply_failure(&e);
        assert_eq!(code, FAILED);
        assert!(msg.starts_with("netman: apply failed: x"), "{msg}");
    }
}
