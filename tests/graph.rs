//! `netman graph`: the real binary draws each network under
//! `tests/golden/graph/<case>/network.yaml` exactly as `graph.dot` and
//! `graph.mmd` say (byte-stable; `UPDATE_GOLDEN=1` rewrites them), the
//! Mermaid example in docs/operations.md is the first case's, and `--live`
//! refuses clearly when it cannot tell which site this gateway is or its
//! engine is not running, and colours the tunnels as the engine answering
//! on the state dir's control socket reports them (`live.dot`, `live.mmd`).
//! No network namespace: `--live` is pointed at a temp state dir (which,
//! like any state dir, must be root's) where no engine runs, or where the
//! test itself answers the one status request.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, golden_dirs, netman_bin};
use netman::engine::config::EngineConfig;
use netman::engine::control::{self, EngineStatus, PeerStatus, Request, Response};
use netman::manifest::PublicKey;

/// (exit code, stdout, stderr) of netman with `args`.
fn netman(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(netman_bin())
        .args(args)
        .env_remove("NETMAN_STATE_DIR")
        .output()
        .expect("run netman");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/graph")
        .join(name)
        .join("network.yaml")
}

#[test]
fn graph_golden_files() {
    let (root, cases) = golden_dirs("graph");
    assert!(
        cases.len() >= 3,
        "golden cases missing in {}",
        root.display()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let file = case.join("network.yaml").display().to_string();
        for (args, golden) in [
            (vec!["graph", file.as_str()], "graph.dot"),
            (
                vec!["graph", file.as_str(), "--format", "mermaid"],
                "graph.mmd",
            ),
        ] {
            let (code, out, err) = netman(&args);
            assert_eq!(code, 0, "netman {args:?}: {err}");
            // Twice the same bytes.
            assert_eq!(netman(&args).1, out, "netman {args:?} is not stable");
            let golden = case.join(golden);
            if update {
                std::fs::write(&golden, &out).expect("write golden");
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != out {
                failures.push(format!(
                    "{}: drawn differently (UPDATE_GOLDEN=1 to accept)\n--- got ---\n{out}",
                    golden.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The default format is DOT; a site in no link is drawn, and warned about.
#[test]
fn dot_is_the_default_and_warnings_go_to_stderr() {
    let file = case("03-links").display().to_string();
    let (code, default, err) = netman(&["graph", &file]);
    assert_eq!(code, 0, "{err}");
    let (_, dot, _) = netman(&["graph", &file, "-f", "dot"]);
    assert_eq!(default, dot);
    assert!(dot.starts_with("// network ops-net: "), "{dot}");
    assert!(dot.contains("\n  \"spare\" ["), "{dot}");
    assert!(err.contains("site `spare` is in no link"), "{err}");
}

/// docs/operations.md shows the hub-and-spoke case's Mermaid drawing as it is.
#[test]
fn the_documented_mermaid_example_is_the_golden_one() {
    let golden = std::fs::read_to_string(case("01-hub-and-spoke").with_file_name("graph.mmd"))
        .expect("golden graph.mmd");
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .expect("docs/operations.md");
    assert!(
        docs.contains(&format!("```mermaid\n{golden}```\n")),
        "docs/operations.md lacks the Mermaid drawing of tests/golden/graph/01-hub-and-spoke:\n{golden}"
    );
}

#[test]
fn an_invalid_file_is_reported_like_render_does() {
    let dir = TempDir::new("graph-invalid");
    let text = std::fs::read_to_string(case("02-mesh")).expect("network.yaml");
    let bad = dir.write("net.yaml", &text.replace("10.20.0.2/24", "10.20.0.1/24"));
    let bad = bad.display().to_string();
    let (code, out, err) = netman(&["graph", &bad]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.starts_with(&format!("{bad}:")), "{err}");
    let site_a = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/site-a.yaml");
    let (code, out, err) = netman(&["graph", &site_a.display().to_string()]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("not a network file"), "{err}");
}

/// `--live` needs the local site and its running engine; without either it
/// draws nothing and says what is missing.
#[test]
fn live_refuses_clearly_without_a_site_or_an_engine() {
    let file = case("01-hub-and-spoke").display().to_string();
    let state = TempDir::new("graph-live");
    let sd = state.path.display().to_string();
    let live = |extra: &[&str]| {
        let mut args = vec!["--state-dir", &sd, "graph", &file, "--live"];
        args.extend_from_slice(extra);
        netman(&args)
    };

    // Nothing recorded: which site is this?
    let (code, out, err) = live(&[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains(&format!(
            "netman: --live: no site of network corp is a deployment recorded in {sd} (recorded: none); say which site this gateway is with --site NAME"
        )),
        "{err}"
    );

    // Named, but no engine runs for it.
    let (code, out, err) = live(&["--site", "branch-1"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("netman: --live: the engine of deployment branch-1 is not running"),
        "{err}"
    );

    // A site the network does not have: the file cannot be drawn that way.
    let (code, out, err) = live(&["--site", "nope"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("network corp has no site named \"nope\""),
        "{err}"
    );

    // One site recorded in the state dir: that one, and its engine is down.
    state.write("hq.json", "{}");
    state.write("other.json", "{}");
    let (code, out, err) = live(&[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("netman: --live: the engine of deployment hq is not running"),
        "{err}"
    );

    // Two sites recorded: ambiguous.
    state.write("branch-2.json", "{}");
    let (code, out, err) = live(&[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("several sites of network corp are deployments recorded in")
            && err.contains(": hq, branch-2; say which site this gateway is with --site NAME"),
        "{err}"
    );

    // --site is about --live only.
    let (code, _, err) = netman(&["graph", &file, "--site", "hq"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--live"), "{err}");
}

fn key(b64: &str) -> PublicKey {
    PublicKey::from_base64(b64).expect("key")
}

fn peer(name: &str, public_key: &str, latest_handshake: Option<u64>) -> PeerStatus {
    PeerStatus {
        name: name.to_owned(),
        public_key: key(public_key),
        endpoint: None,
        allowed_ips: Vec::new(),
        latest_handshake,
        rx_bytes: 0,
        tx_bytes: 0,
        persistent_keepalive: None,
        handshakes: u64::from(latest_handshake.is_some()),
        handshake_attempts: 1,
        preshared_key: false,
        endpoint_name: None,
        endpoint_error: None,
    }
}

/// `graph --live` on dc-2 of the explicit-links case, its engine played by
/// this test on `<state-dir>/dc-2.sock`: dc-1 handshook 5 s ago (up),
/// office 10 min ago (stale), lab never; the drawing is
/// `03-links/live.{dot,mmd}`. The site comes from the state dir (dc-2 is
/// its only deployment that is a site of the network).
#[test]
fn live_colours_the_tunnels_as_the_engine_reports_them() {
    let file = case("03-links");
    let text = std::fs::read_to_string(&file).expect("network.yaml");
    let net = netman::network::parse(&text, &file).expect("valid");
    let site = |name: &str| net.site(name).expect("site").public_key.to_base64();
    let state = TempDir::new("graph-engine");
    state.write("dc-2.json", "{}");
    state.write("elsewhere.json", "{}");
    let sd = state.path.display().to_string();
    let file = file.display().to_string();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (format, golden) in [("dot", "live.dot"), ("mermaid", "live.mmd")] {
        let listener = UnixListener::bind(state.join("dc-2.sock")).expect("bind control socket");
        let now = netman::clock::now_unix_secs();
        let status = EngineStatus {
            deployment: "dc-2".to_owned(),
            pid: std::process::id(),
            interface: "nm0".to_owned(),
            listen_port: 51820,
            public_key: key(&site("dc-2")),
            started_at: now - 3600,
            peers: vec![
                peer("lab", &site("lab"), None),
                peer("dc-1", &site("dc-1"), Some(now - 5)),
                peer("office", &site("office"), Some(now - 600)),
            ],
            drops: BTreeMap::new(),
            udp_gso_refused: 0,
            config: EngineConfig {
                deployment: "dc-2".to_owned(),
                interface: "nm0".to_owned(),
                mtu: 1420,
                listen_port: Some(51820),
                private_key_file: PathBuf::from("/etc/netman/private.key"),
                peers: Vec::new(),
                watch: false,
                metrics: None,
                fwmark: None,
            },
            watch: None,
            watch_counters: None,
        };
        let engine = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let req = control::read_request(&conn).expect("request");
            assert!(matches!(req, Request::Status), "{req:?}");
            control::write_response(&conn, &Response::Status(Box::new(status))).expect("answer");
        });
        let (code, out, err) = netman(&[
            "--state-dir",
            &sd,
            "graph",
            &file,
            "--live",
            "--format",
            format,
        ]);
        engine.join().expect("the fake engine was asked once");
        std::fs::remove_file(state.join("dc-2.sock")).expect("remove socket");
        assert_eq!(code, 0, "{err}");
        // The site in no link is still warned about; nothing else.
        assert_eq!(
            err.lines().filter(|l| !l.contains("is in no link")).count(),
            0,
            "{err}"
        );
        let golden = Path::new(&file).with_file_name(golden);
        if update {
            std::fs::write(&golden, &out).expect("write golden");
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(
            out,
            want,
            "{}: drawn differently (UPDATE_GOLDEN=1 to accept)",
            golden.display()
        );
    }
}
