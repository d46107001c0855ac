//! Golden tests for the firewall planner and the nft scripts it renders
//! (pure: no nft, no root). Each directory under `tests/golden/firewall/`
//! holds:
//!
//! - `manifest.yaml` (absent: nothing desired, as for `down`);
//! - `observed.json`: what nft and /proc/sys showed ([`firewall::Observed`]);
//! - `record.json` (optional): the recorded [`firewall::Record`];
//! - `saved.json` (optional): recorded sysctl values from before netman;
//! - the expected `plan.txt` (plan lines, then the nft script) or
//!   `error.txt`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test firewall_plan` rewrites the expected
//! files; review the diff before committing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use netman::firewall::{self, Desired, Observed, Record};
use netman::manifest;

const DEPLOYMENT: &str = "site-a";

fn run_case(dir: &Path) -> Result<(&'static str, String), String> {
    let read = |f: &str| fs::read_to_string(dir.join(f));
    let desired = match read("manifest.yaml") {
        Ok(text) => {
            let m = manifest::parse(&text, Path::new("manifest.yaml"))
                .map_err(|e| format!("manifest: {e}"))?;
            if m.name != DEPLOYMENT {
                return Err(format!("manifest name must be {DEPLOYMENT}"));
            }
            Desired::from_manifest(&m)
        }
        Err(_) => Desired::default(),
    };
    let observed: Observed =
        serde_json::from_str(&read("observed.json").map_err(|e| format!("observed.json: {e}"))?)
            .map_err(|e| format!("observed.json: {e}"))?;
    let record: Option<Record> = match read("record.json") {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| format!("record.json: {e}"))?),
        Err(_) => None,
    };
    let saved: BTreeMap<String, String> = match read("saved.json") {
        Ok(t) => serde_json::from_str(&t).map_err(|e| format!("saved.json: {e}"))?,
        Err(_) => BTreeMap::new(),
    };
    let (file, actual) =
        match firewall::plan(DEPLOYMENT, &desired, &observed, record.as_ref(), &saved) {
            Ok(p) => {
                let script = firewall::script(DEPLOYMENT, &desired, &p);
                ("plan.txt", format!("{p}--- nft script\n{}", script.text()))
            }
            Err(e) => ("error.txt", format!("{e}\n")),
        };
    Ok((file, actual))
}

#[test]
fn firewall_plan_golden_files() {
    common::golden_cases("firewall", 10, run_case);
}
