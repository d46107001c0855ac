//! Replays every committed corpus of netman's own fuzz targets (`manifest`,
//! `import`, `control`, `tun_offload`, `flow_queue`; see `fuzz/README.md`) through the
//! functions the cargo-fuzz targets call, so the corpora (seeds and what
//! the fuzzer found worth keeping) run under plain `cargo test` on stable.
//! The protocol core's corpora replay in `proto/tests/fuzz_corpus.rs`.

use std::path::PathBuf;

use netman::fuzzing::{TARGETS, run_target};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dir entry");
            let data = std::fs::read(e.path()).expect("corpus file");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_replays_without_a_broken_invariant() {
    for target in TARGETS {
        let files = corpus(target);
        assert!(
            files.len() >= 4,
            "corpus for {target} has only {} files",
            files.len()
        );
        for (name, data) in files {
            let r = std::panic::catch_unwind(|| run_target(target, &data));
            match r {
                Ok(known) => assert!(known.is_some(), "unknown target {target}"),
                Err(_) => panic!("fuzz/corpus/{target}/{name} breaks an invariant (see above)"),
            }
        }
    }
}

/// The hand-written seeds get past the first refusal into the checks
/// (a corpus the parsers all refuse at once would test nothing).
#[test]
fn the_seeds_reach_the_checks() {
    let seeds: &[(&str, &[&str])] = &[
        (
            "manifest",
            &["site-a.yaml", "site-b.yaml", "full.yaml", "firewall-1.yaml"],
        ),
        (
            "import",
            &[
                "hub.conf",
                "client.conf",
                "cr-payload.conf",
                "nel-payload.conf",
            ],
        ),
        ("control", &["ping", "status", "stop", "poke", "configure"]),
        (
            "tun_offload",
            &[
                "split-tcp4-mss100",
                "split-tcp4-mss536-fin",
                "split-tcp6-mss1220",
                "split-udp4-uso300",
                "split-none-csum",
                "split-ecn-tcp4",
                "coalesce-tcp4-flow",
                "coalesce-tcp6-flow",
                "coalesce-udp4-flow",
                "coalesce-mixed",
            ],
        ),
    ];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, names) in seeds {
        for name in *names {
            let data = std::fs::read(dir.join(target).join(name))
                .unwrap_or_else(|e| panic!("fuzz/corpus/{target}/{name}: {e}"));
            assert_eq!(
                run_target(target, &data),
                Some(true),
                "fuzz/corpus/{target}/{name} is refused before the checks"
            );
        }
    }
    assert_eq!(run_target("no-such-target", b""), None);
}
