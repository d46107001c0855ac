//! `netman diff` output: the plan against the live state, as text for
//! people or as JSON for scripts. Pure: the plan, the engine's changes and
//! the notes are parameters.

use std::fmt::Write as _;

use serde_json::Value;

use crate::engine::config::EngineChange;
use crate::reconcile::Diff;

/// What `diff` found for one deployment.
pub struct DiffReport<'a> {
    pub deployment: &'a str,
    pub plan: &'a Diff,
    pub engine: &'a [EngineChange],
    /// Why settings were chosen automatically (e.g. a full tunnel's table).
    pub notes: &'a [String],
}

impl DiffReport<'_> {
    /// Nothing to do: the live state matches the manifest.
    pub fn in_sync(&self) -> bool {
        self.plan.is_empty() && self.engine.is_empty()
    }

    /// The text form: the notes as `# ` lines, then `in sync: ...` or the
    /// actions, one per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in self.notes {
            let _ = writeln!(out, "# {n}");
        }
        if self.in_sync() {
            let _ = writeln!(out, "in sync: deployment {}", self.deployment);
        } else {
            let _ = write!(out, "{}", self.plan);
            for c in self.engine {
                let _ = writeln!(out, "{c}");
            }
        }
        out
    }

    /// The JSON form: the structured actions, plus each as the text line.
    pub fn json(&self) -> Value {
        let mut text: Vec<String> = self
            .plan
            .kernel
            .actions
            .iter()
            .map(ToString::to_string)
            .collect();
        text.extend(self.plan.firewall.changes.iter().map(ToString::to_string));
        text.extend(self.engine.iter().map(ToString::to_string));
        serde_json::json!({
            "deployment": self.deployment,
            "in_sync": self.in_sync(),
            "actions": self.plan.kernel.actions,
            "firewall": self.plan.firewall.changes,
            "engine": self.engine,
            "notes": self.notes,
            "text": text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_plan_reads_in_sync_after_the_notes() {
        let plan = Diff::default();
        let notes = vec!["table 51820 chosen".to_string()];
        let r = DiffReport {
            deployment: "site-a",
            plan: &plan,
            engine: &[],
            notes: &notes,
        };
        assert!(r.in_sync());
        assert_eq!(
            r.text(),
            "# table 51820 chosen\nin sync: deployment site-a\n"
        );
        let j = r.json();
        assert_eq!(j["in_sync"], true);
        assert_eq!(j["notes"][0], "table 51820 chosen");
        assert_eq!(j["text"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn engine_changes_alone_are_not_in_sync() {
        let plan = Diff::default();
        let engine = vec![crate::engine::start_change("site-a")];
        let r = DiffReport {
            deployment: "site-a",
            plan: &plan,
            engine: &engine,
            notes: &[],
        };
        assert!(!r.in_sync());
        let line = engine[0].to_string();
        assert_eq!(r.text(), format!("{line}\n"));
        assert_eq!(r.json()["text"][0], line.as_str());
        assert_eq!(r.json()["in_sync"], false);
    }
}
