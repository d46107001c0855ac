//! Golden tests for the planner: each directory under `tests/golden/plan/`
//! holds a manifest (absent: the desired state is empty, as for `down`), the
//! observed kernel state and the recorded ownership as JSON, and the expected
//! plan (`plan.txt`) or planning error (`error.txt`).
//!
//! `UPDATE_GOLDEN=1 cargo test --test plan_golden` rewrites the expected
//! files; review the diff before committing.

mod common;

use std::fs;
use std::path::Path;

use netman::link::model::{Desired, Observed, Owned};
use netman::link::plan::plan;
use netman::manifest;

fn run_case(dir: &Path) -> Result<(&'static str, String), String> {
    let read = |f: &str| fs::read_to_string(dir.join(f));
    let (deployment, desired) = match read("manifest.yaml") {
        Ok(text) => {
            let m = manifest::parse(&text, &dir.join("manifest.yaml"))
                .map_err(|e| format!("manifest: {e}"))?;
            (m.name.clone(), Desired::from_manifest(&m))
        }
        Err(_) => ("site-a".to_string(), Desired::default()),
    };
    let observed: Observed =
        serde_json::from_str(&read("observed.json").map_err(|e| e.to_string())?)
            .map_err(|e| format!("observed.json: {e}"))?;
    let owned: Owned = serde_json::from_str(&read("owned.json").map_err(|e| e.to_string())?)
        .map_err(|e| format!("owned.json: {e}"))?;
    let (file, actual) = match plan(&deployment, &desired, &observed, &owned) {
        Ok(p) => ("plan.txt", p.to_string()),
        Err(e) => ("error.txt", format!("{e}\n")),
    };
    Ok((file, actual))
}

#[test]
fn plan_golden_files() {
    common::golden_cases("plan", 10, run_case);
}
