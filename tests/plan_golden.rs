//! Golden tests for the planner: each directory under `tests/golden/plan/`
//! holds a manifest (absent: the desired state is empty, as for `down`), the
//! observed kernel state and the recorded ownership as JSON, and the expected
//! plan (`plan.txt`) or planning error (`error.txt`).
//!
//! `UPDATE_GOLDEN=1 cargo test --test plan_golden` rewrites the expected
//! files; review the diff before committing.

use std::fs;
use std::path::Path;

use netman::manifest;
use netman::model::{Desired, Observed, Owned};
use netman::plan::plan;

fn run_case(dir: &Path) -> Result<(), String> {
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
    let other = if file == "plan.txt" {
        "error.txt"
    } else {
        "plan.txt"
    };
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(dir.join(file), &actual).map_err(|e| e.to_string())?;
        let _ = fs::remove_file(dir.join(other));
        return Ok(());
    }
    if dir.join(other).exists() {
        return Err(format!("expected {other}, got {file}:\n{actual}"));
    }
    let expected = read(file).map_err(|e| format!("{file}: {e}"))?;
    if expected != actual {
        return Err(format!(
            "{file} differs\n--- expected\n{expected}--- actual\n{actual}"
        ));
    }
    Ok(())
}

#[test]
fn plan_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/plan");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "golden cases missing");
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| run_case(d).err().map(|e| format!("{}: {e}", d.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
