//! Regenerates the seed corpora under `fuzz/corpus/<target>/` from
//! `netman_proto::fuzzing::seed_corpus` (deterministic output).
//!
//! `cargo run -p netman-proto --example write_fuzz_corpus [-- <corpus dir>]`

use std::path::PathBuf;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"));
    let mut n = 0;
    for (target, name, data) in netman_proto::fuzzing::seed_corpus(Instant::now()) {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), data)?;
        n += 1;
    }
    println!("wrote {n} files under {}", root.display());
    Ok(())
}
