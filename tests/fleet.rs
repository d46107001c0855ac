//! A network file on real gateways (issue 14): each gateway applies the
//! same network file and finds its own site by its local key; `diff`,
//! `status` and `down` take the file too; `apply --confirm-when healthy`
//! keeps a change once the peers handshake again and reverts a broken
//! one (a wrong public key) by itself; the watcher's `rollout: {confirm:
//! healthy}` does the same for file changes and does not apply a reverted
//! file version again. Each test runs the real binary in its own uniquely
//! named namespaces (root required, as in CI); each gateway's directory
//! holds its copy of the network file and its `keys/local.key`, as the
//! same file checked out on two hosts would.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    KeyPair, OTHER_PUBLIC_KEY, Site, holds_for, underlay, wait_ping, wait_until, write_mode,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a test changes in the network file.
#[derive(Clone, Default)]
struct Opts {
    /// Site b's public key as the file says it (default: its real one).
    b_key: Option<String>,
    /// `defaults.rollout.timeout`.
    rollout: Option<u32>,
    /// Site a's probes.
    a_probes: Vec<&'static str>,
    /// Site a's persistent keepalive (a harmless change).
    a_keepalive: Option<u16>,
}

struct Fleet {
    a: Site,
    b: Site,
}

impl Fleet {
    fn new(tag: &str) -> Fleet {
        let a = Site::new(&format!("{tag}a"), "a");
        let b = Site::new(&format!("{tag}b"), "b");
        underlay(&a.ns, &b.ns);
        for s in [&a, &b] {
            std::fs::create_dir_all(s.dir.join("keys")).expect("mkdir keys");
            write_mode(
                &s.dir.join("keys/local.key"),
                &format!("{}\n", s.key.private),
                0o600,
            );
        }
        Fleet { a, b }
    }

    fn text(&self, o: &Opts) -> String {
        let mut t = String::from(
            "network: t\ndefaults:\n  listen_port: 51820\n  private_key_file: keys/local.key\n",
        );
        if let Some(secs) = o.rollout {
            t.push_str(&format!(
                "  rollout:\n    confirm: healthy\n    timeout: {secs}\n"
            ));
        }
        t.push_str(&format!(
            "sites:\n  - name: a\n    public_key: {}\n    addresses: [10.10.0.1/24, fd10::1/64]\n    endpoint: 192.0.2.1:51820\n",
            self.a.key.public
        ));
        if !o.a_probes.is_empty() {
            t.push_str("    probes:\n");
            for p in &o.a_probes {
                t.push_str(&format!("      - ping: {p}\n"));
            }
        }
        if let Some(k) = o.a_keepalive {
            t.push_str(&format!("    persistent_keepalive: {k}\n"));
        }
        t.push_str(&format!(
            "  - name: b\n    public_key: {}\n    addresses: [10.10.0.2/24, fd10::2/64]\n    endpoint: 192.0.2.2:51820\ntopology:\n  mesh: true\n",
            o.b_key.as_deref().unwrap_or(&self.b.key.public)
        ));
        t
    }

    /// Write the network file into `site`'s directory (by rename, as git
    /// does) and return its path.
    fn write(site: &Site, text: &str) -> PathBuf {
        let path = site.dir.join("network.yaml");
        let tmp = site.dir.join(".network.yaml.tmp");
        std::fs::write(&tmp, text).expect("write network file");
        std::fs::rename(&tmp, &path).expect("rename network file");
        path
    }

    /// Both gateways up from the same file, and talking.
    fn up(&self, o: &Opts) -> (PathBuf, PathBuf) {
        let text = self.text(o);
        let (fa, fb) = (Self::write(&self.a, &text), Self::write(&self.b, &text));
        for (s, f) in [(&self.a, &fa), (&self.b, &fb)] {
            let out = s.nm().ok(&["apply", s_(f)]);
            assert!(
                out.contains(&format!("applied: deployment {}", s.deployment)),
                "{out}"
            );
        }
        assert!(
            wait_ping(&self.a.ns, "10.10.0.2", Duration::from_secs(10)),
            "no traffic over the tunnel"
        );
        (fa, fb)
    }
}

fn s_(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `netman status -o json` of the site's deployment.
fn status(site: &Site) -> Value {
    let out = site
        .nm()
        .ok(&["status", &site.deployment, "--output", "json"]);
    let v: Value = serde_json::from_str(&out).expect("status json");
    v[0].clone()
}

fn state_file(site: &Site) -> Value {
    let path = site.state_dir().join(format!("{}.json", site.deployment));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("state file")).expect("state json")
}

/// The public key site `a`'s engine uses for peer `b`.
fn engine_key_of_b(a: &Site) -> Option<String> {
    status(a)["engine"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "b")
        .and_then(|p| p["public_key"].as_str().map(str::to_owned))
}

#[test]
fn each_gateway_finds_its_site_by_key_and_diff_status_down_take_the_file() {
    let f = Fleet::new("fk");
    let (fa, _fb) = f.up(&Opts::default());
    let (a, fa_s) = (&f.a, s_(&fa));

    // In sync, with the file and without (the recorded derived manifest).
    let (code, out, err) = a.nm().out(&["diff", fa_s]);
    assert_eq!(code, 0, "diff of the network file:\n{out}{err}");
    let (code, out, err) = a.nm().out(&["diff"]);
    assert_eq!(code, 0, "diff of the recorded manifest:\n{out}{err}");

    // status by file, naming the site and the network.
    let out = a.nm().ok(&["status", fa_s]);
    assert!(out.starts_with("deployment: a\n"), "{out}");
    assert!(out.contains("  site: a of network t\n"), "{out}");
    let st = status(a);
    assert_eq!(st["site"]["site"], "a", "{st:#}");
    assert_eq!(st["site"]["network"], "t", "{st:#}");
    let text = std::fs::read_to_string(&fa).expect("read");
    assert_eq!(st["site"]["network_sha256"], sha256_hex(&text), "{st:#}");
    // The recorded text is the derived v1 manifest, as `render` prints it.
    let render = a.nm().ok(&["render", fa_s, "--site", "a"]);
    assert_eq!(state_file(a)["manifest"]["text"], render.as_str());

    // A site the file does not have, and --site with a site manifest.
    let (code, _, err) = a.nm().out(&["diff", "--site", "zz", fa_s]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("network t has no site named \"zz\""), "{err}");
    let manifest = a.dir.write("site.yaml", &render);
    let (code, _, err) = a.nm().out(&["diff", "--site", "a", s_(&manifest)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--site names a site of a network file"),
        "{err}"
    );

    // A host whose key is no site's: refused, naming the key file and key.
    let stranger = common::TempDir::new("fk-stranger");
    std::fs::create_dir_all(stranger.join("keys")).expect("mkdir");
    let kp = KeyPair::generate(&stranger.path, "x");
    write_mode(
        &stranger.join("keys/local.key"),
        &format!("{}\n", kp.private),
        0o600,
    );
    let fx = Fleet::write_to(&stranger.path, &text);
    let (code, _, err) = a.nm().out(&["apply", s_(&fx)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no site of network t has this gateway's public key"),
        "{err}"
    );
    assert!(
        err.contains(&format!("keys/local.key has public key {}", kp.public)),
        "{err}"
    );
    assert!(err.contains("name the site with --site"), "{err}");

    // graph --live on the gateway: its tunnel drawn as up, from the real
    // engine (the site found from the state dir).
    let out = a.nm().ok(&["graph", "--live", fa_s]);
    assert!(
        out.contains(
            "\"a\" -- \"b\" [penwidth=2, color=\"#2e8b57\", fontcolor=\"#2e8b57\", label=\"up\"];"
        ),
        "{out}"
    );

    // down by file removes the deployment.
    let out = a.nm().ok(&["down", fa_s]);
    assert!(out.contains("down: deployment a"), "{out}");
    assert!(a.ns.ip_try(&["link", "show", "nm0"]).status.code() != Some(0));
}

impl Fleet {
    fn write_to(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("network.yaml");
        std::fs::write(&path, text).expect("write");
        path
    }
}

#[test]
fn confirm_when_healthy_keeps_a_good_change_and_reverts_a_wrong_key() {
    let f = Fleet::new("fh");
    let (fa, _) = f.up(&Opts::default());
    let (a, fa_s) = (&f.a, s_(&fa));

    // A good change (a probe across the tunnel): kept by health, well
    // before the timeout.
    let good = Opts {
        a_probes: vec!["10.10.0.2", "fd10::2"],
        ..Opts::default()
    };
    Fleet::write(a, &f.text(&good));
    let (code, out, err) = a.nm().out(&[
        "apply",
        "--confirm-timeout",
        "60",
        "--confirm-when",
        "healthy",
        fa_s,
    ]);
    assert_eq!(code, 0, "good change:\n{out}{err}");
    assert!(out.contains("waiting up to"), "{out}");
    assert!(
        out.contains("confirmed: deployment a is healthy and keeps its configuration"),
        "{out}"
    );
    assert!(state_file(a)["pending_confirm"].is_null());

    // A wrong key for b: b never answers under it; reverted at the
    // timeout, with the reason, and traffic flows again.
    let broken = Opts {
        b_key: Some(OTHER_PUBLIC_KEY.to_owned()),
        ..good.clone()
    };
    Fleet::write(a, &f.text(&broken));
    let (code, out, err) = a.nm().out(&[
        "apply",
        "--confirm-timeout",
        "5",
        "--confirm-when",
        "healthy",
        fa_s,
    ]);
    assert_eq!(code, 1, "broken change:\n{out}{err}");
    assert!(
        err.contains(&format!(
            "reverted deployment a: not healthy before the deadline: peer b (new public key {OTHER_PUBLIC_KEY}) has not completed a handshake"
        )),
        "{err}"
    );
    assert_eq!(engine_key_of_b(a).as_deref(), Some(f.b.key.public.as_str()));
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(10)),
        "no traffic after the revert"
    );
    let out = a.nm().ok(&["status", "a"]);
    assert!(
        out.contains("  last revert: not healthy before the deadline: peer b (new public key"),
        "{out}"
    );
    let st = status(a);
    assert_eq!(st["engine"]["watch"]["health_confirms"], 1, "{st:#}");
    assert_eq!(st["engine"]["watch"]["health_reverts"], 1, "{st:#}");
    assert_eq!(
        st["reverted"]["sha256"],
        sha256_hex(&f.text(&broken)),
        "{st:#}"
    );
}

#[test]
fn the_watchers_rollout_reverts_a_broken_file_once_and_keeps_a_good_one() {
    let f = Fleet::new("fw");
    let base = Opts {
        rollout: Some(10),
        ..Opts::default()
    };
    let (_fa, _) = f.up(&base);
    let a = &f.a;

    // The broken file arrives (a `git pull`): applied on probation, then
    // reverted by health.
    let broken = Opts {
        b_key: Some(OTHER_PUBLIC_KEY.to_owned()),
        ..base.clone()
    };
    let broken_text = f.text(&broken);
    Fleet::write(a, &broken_text);
    assert!(
        wait_until(Duration::from_secs(5), || engine_key_of_b(a).as_deref()
            == Some(OTHER_PUBLIC_KEY)),
        "the watcher did not apply the changed file"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            state_file(a)["reverted_sha256"] == sha256_hex(&broken_text)
        }),
        "not reverted: {:#}",
        state_file(a)
    );
    assert_eq!(engine_key_of_b(a).as_deref(), Some(f.b.key.public.as_str()));
    assert!(wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(10)));
    // That file version stays unapplied.
    assert!(
        holds_for(Duration::from_millis(1500), || engine_key_of_b(a)
            .as_deref()
            == Some(f.b.key.public.as_str())),
        "the reverted file was applied again"
    );
    let st = status(a);
    assert_eq!(st["engine"]["watch"]["health_reverts"], 1, "{st:#}");
    assert!(
        st["reverted"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("not healthy before the deadline: peer b")),
        "{st:#}"
    );

    // A good change: kept by health (the handshake confirms it, not the
    // timeout).
    let good = Opts {
        a_keepalive: Some(7),
        ..base
    };
    let good_text = f.text(&good);
    Fleet::write(a, &good_text);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = state_file(a);
            s["manifest"]["derived_from"]["sha256"] == sha256_hex(&good_text)
                && s["pending_confirm"].is_null()
        }),
        "the good file was not applied and confirmed: {:#}",
        state_file(a)
    );
    let st = status(a);
    assert_eq!(st["engine"]["watch"]["health_confirms"], 1, "{st:#}");
    assert!(st["reverted"].is_null(), "{st:#}");
}

/// `netman run NETWORK --site NAME` serves the site in the foreground and
/// follows the network file like `apply`'s engine does.
#[test]
fn run_serves_a_site_of_a_network_file_in_the_foreground() {
    let f = Fleet::new("fr");
    let text = f.text(&Opts::default());
    let (fa, fb) = (Fleet::write(&f.a, &text), Fleet::write(&f.b, &text));
    f.b.nm().ok(&["apply", s_(&fb)]);
    let _run = common::Bg::spawn(
        "netman run",
        &mut f.a.nm().cmd(&["run", "--site", "a", s_(&fa)]),
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            f.a.nm()
                .out(&["status", "a", "--output", "json"])
                .1
                .contains("\"watch\"")
        }),
        "netman run does not serve"
    );
    assert_eq!(status(&f.a)["site"]["site"], "a");
    assert!(wait_ping(&f.a.ns, "10.10.0.2", Duration::from_secs(10)));
    // The network file changes: the foreground engine follows it.
    let changed = Opts {
        a_keepalive: Some(9),
        ..Opts::default()
    };
    Fleet::write(&f.a, &f.text(&changed));
    assert!(
        wait_until(Duration::from_secs(5), || {
            status(&f.a)["engine"]["peers"][0]["persistent_keepalive"] == 9
        }),
        "{:#}",
        status(&f.a)
    );
}
