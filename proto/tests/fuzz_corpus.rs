//! Replays every committed fuzz corpus file through the same functions the
//! cargo-fuzz targets call, so the corpora run under plain `cargo test`.

use std::path::PathBuf;
use std::time::Instant;

use netman_proto::fuzzing::{self, TARGETS};
use netman_proto::{DropReason, NetResult};

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_replays_without_panic() {
    for target in TARGETS {
        let files = files(target);
        assert!(
            files.len() >= 4,
            "corpus for {target} has only {} files",
            files.len()
        );
        for (name, data) in files {
            let ok = fuzzing::run_target(target, Instant::now(), &data);
            assert!(ok, "unknown target {target} ({name})");
        }
    }
}

#[test]
fn committed_corpus_contains_every_generated_seed() {
    for (target, name, _) in fuzzing::seed_corpus(Instant::now()) {
        let path = corpus_root().join(target).join(&name);
        assert!(
            path.exists(),
            "{} missing: run `cargo run -p netman-proto --example write_fuzz_corpus`",
            path.display()
        );
    }
}

fn trace(name: &str) -> Vec<NetResult> {
    let data = std::fs::read(corpus_root().join("responder").join(name)).unwrap();
    fuzzing::responder_trace(Instant::now(), &data)
}

#[test]
fn responder_seeds_reach_the_paths_they_are_named_after() {
    let reply = |n| matches!(n, NetResult::Reply { len: 92, .. });
    let cookie = |n| matches!(n, NetResult::Reply { len: 64, .. });

    let t = trace("initiation");
    assert!(t.len() == 1 && reply(t[0]), "{t:?}");

    let t = trace("initiation_keepalive_data");
    assert!(reply(t[0]), "{t:?}");
    assert_eq!(t[1], NetResult::Done);
    assert!(matches!(t[2], NetResult::ToTun { .. }), "{t:?}");

    let t = trace("spoofed_source");
    assert_eq!(t[2], NetResult::Drop(DropReason::SourceCheck));

    let t = trace("replayed_initiation");
    assert!(reply(t[0]));
    assert_eq!(t[1], NetResult::Drop(DropReason::ReplayedInitiation));

    let t = trace("under_load_cookie");
    assert!(cookie(t[0]), "{t:?}");

    let t = trace("under_load_mac2");
    assert!(cookie(t[0]) && reply(t[1]), "{t:?}");

    assert_eq!(
        trace("bad_mac1"),
        vec![NetResult::Drop(DropReason::BadMac1)]
    );
    assert_eq!(
        trace("low_order_ephemeral"),
        vec![NetResult::Drop(DropReason::LowOrderPoint)]
    );
    assert_eq!(
        trace("unexpected_response"),
        vec![NetResult::Drop(DropReason::UnknownIndex)]
    );
    assert_eq!(
        trace("unexpected_cookie"),
        vec![NetResult::Drop(DropReason::UnknownIndex)]
    );
}
