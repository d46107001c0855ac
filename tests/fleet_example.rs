//! `examples/fleet.sh` runs to the end with the netman under test: a hub
//! and branches in namespaces, one network file applied unchanged on every
//! gateway, a site added while continuous pings lose nothing, a broken
//! change reverted by health (docs/fleet.md). The script checks every step
//! itself and exits non-zero on the first failure; this test only runs it
//! (with its own namespace prefix) and shows its output when it fails.

mod common;

use std::process::Command;

use common::{require_root, require_tool, unique};

#[test]
fn fleet_example_script_passes() {
    require_root();
    require_tool("ping", "the Debian package iputils-ping");
    require_tool("awk", "the Debian package gawk or mawk");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fleet.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("NETMAN_BIN", env!("CARGO_BIN_EXE_netman"))
        .env("DEMO_PREFIX", unique("nmfl"))
        .env_remove("KEEP")
        .output()
        .expect("run bash examples/fleet.sh");
    assert!(
        out.status.success(),
        "examples/fleet.sh failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
