//! The exit codes of every command, as the "Commands and exit codes" table
//! of docs/operations.md promises them: one test per command, one case per documented
//! code. Commands that read or change the network run the real binary in
//! their own uniquely named network namespaces (root required, as in CI),
//! with their own temp and state dirs, all removed on drop; the others
//! (`validate`, `genkey`, `pubkey`, `import`, `schema`, `completions`,
//! `man`) touch no network and run directly.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Bg, SOME_PUBLIC_KEY, Site, TempDir, netman_bin, require_tool, wait_until};

/// (exit code, stdout, stderr) of a finished command.
fn outcome(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// netman with `args`, outside any namespace (commands that touch no
/// network), with `stdin` as its input.
fn netman(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(netman_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("netman {args:?}: {e}"));
    {
        let mut i = child.stdin.take().expect("stdin");
        let _ = i.write_all(stdin.as_bytes());
    }
    outcome(&child.wait_with_output().expect("netman"))
}

/// Assert an exit code, showing the output when it is another.
#[track_caller]
fn expect(what: &str, got: (i32, String, String), code: i32) -> (String, String) {
    let (c, out, err) = got;
    assert_eq!(
        c, code,
        "{what}: exit {c}, docs/operations.md says {code}\nstdout: {out}\nstderr: {err}"
    );
    (out, err)
}

/// A manifest of deployment `name` in `dir`: one address, one peer behind
/// an endpoint nobody answers at, and `extra` YAML appended.
fn manifest(name: &str, key: &Path, peer_key: &str, extra: &str) -> String {
    format!(
        "name: {name}\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  private_key_file: {}\npeers:\n  - name: b\n    public_key: \"{peer_key}\"\n    endpoint: 192.0.2.10:51820\n    allowed_ips: [10.10.0.2/32, 172.18.0.0/16]\n{extra}",
        key.display()
    )
}

/// A site with a good manifest `site-a.yaml` and an invalid one `bad.yaml`.
fn site(tag: &str) -> (Site, String, String) {
    let s = Site::new(tag, "site-a");
    let good = s
        .dir
        .write(
            "site-a.yaml",
            &manifest("site-a", &s.key.private_file, SOME_PUBLIC_KEY, ""),
        )
        .display()
        .to_string();
    let bad = s
        .dir
        .write(
            "bad.yaml",
            &manifest("site-a", &s.key.private_file, SOME_PUBLIC_KEY, "bogus: 1\n"),
        )
        .display()
        .to_string();
    (s, good, bad)
}

#[test]
fn validate_exits_0_valid_2_invalid() {
    let dir = TempDir::new("xvalid");
    let key = dir.join("a.key");
    let good = dir.write("good.yaml", &manifest("site-a", &key, SOME_PUBLIC_KEY, ""));
    let bad = dir.write(
        "bad.yaml",
        &manifest("site-a", &key, SOME_PUBLIC_KEY, "bogus: 1\n"),
    );
    let low = dir.write(
        "low.yaml",
        &manifest(
            "site-a",
            &key,
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "",
        ),
    );
    let p = |f: &Path| f.display().to_string();
    expect("validate good", netman(&["validate", &p(&good)], ""), 0);
    let (_, err) = expect("validate bad", netman(&["validate", &p(&bad)], ""), 2);
    assert!(err.contains("bogus"), "{err}");
    let (_, err) = expect(
        "validate low-order key",
        netman(&["validate", &p(&low)], ""),
        2,
    );
    assert!(err.contains("peers[0].public_key"), "{err}");
    // Overlapping allowed IPs: legal (longest prefix wins) is a warning on
    // stderr and exit 0; a peer left with no address at all is invalid.
    let c = |nets: &str| {
        format!(
            "  - name: c\n    public_key: \"mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=\"\n    allowed_ips: {nets}\n"
        )
    };
    let overlap = dir.write(
        "overlap.yaml",
        &manifest("site-a", &key, SOME_PUBLIC_KEY, &c("[172.18.5.0/24]")),
    );
    let (out, err) = expect(
        "validate overlapping allowed IPs",
        netman(&["validate", &p(&overlap)], ""),
        0,
    );
    assert!(out.contains("valid"), "{out}");
    assert!(
        err.contains(
            "peers[0].allowed_ips[1]: warning: 172.18.0.0/16 contains 172.18.5.0/24 of peer `c`"
        ),
        "{err}"
    );
    let shadowed = dir.write(
        "shadowed.yaml",
        &manifest(
            "site-a",
            &key,
            SOME_PUBLIC_KEY,
            &format!(
                "{}  - name: d\n    public_key: \"etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=\"\n    allowed_ips: [10.10.0.3/32]\n",
                c("[10.10.0.2/31]")
            ),
        ),
    );
    let (_, err) = expect(
        "validate a peer left unreachable",
        netman(&["validate", &p(&shadowed)], ""),
        2,
    );
    assert!(err.contains("peer `c` is unreachable"), "{err}");
    expect(
        "validate good and bad",
        netman(&["validate", &p(&good), &p(&bad)], ""),
        2,
    );
    expect(
        "validate a missing file",
        netman(&["validate", &p(&dir.join("nope.yaml"))], ""),
        2,
    );
}

/// `diff`: 0 in sync, 1 changes pending, 2 error (invalid manifest
/// included) — never 1 for an error.
#[test]
fn diff_exits_0_in_sync_1_changes_pending_2_error() {
    let (s, good, bad) = site("xdiff");
    let nm = s.nm();
    // 2: no manifest given and nothing applied yet.
    expect("diff without anything applied", nm.out(&["diff"]), 2);
    // 1: everything to create.
    let (out, _) = expect("diff before apply", nm.out(&["diff", &good]), 1);
    assert!(out.contains("+ link nm0"), "{out}");
    expect(
        "diff --output json before apply",
        nm.out(&["diff", &good, "--output", "json"]),
        1,
    );
    // 2: an invalid manifest.
    expect("diff of an invalid manifest", nm.out(&["diff", &bad]), 2);
    // 2: a manifest that only validation of the key finds wrong (it used
    // to show as changes pending, and apply then failed).
    let low = s
        .dir
        .write(
            "low.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "",
            ),
        )
        .display()
        .to_string();
    expect("diff with a low-order peer key", nm.out(&["diff", &low]), 2);

    nm.ok(&["apply", &good]);
    // 0: in sync, with and without the file.
    expect("diff after apply", nm.out(&["diff", &good]), 0);
    expect("diff (drift) after apply", nm.out(&["diff"]), 0);
    // 1: a changed manifest.
    let more = s
        .dir
        .write(
            "more.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                "routes:\n  - to: 192.168.50.0/24\n",
            ),
        )
        .display()
        .to_string();
    let (out, _) = expect("diff of a changed manifest", nm.out(&["diff", &more]), 1);
    assert!(out.contains("+ route 192.168.50.0/24 dev nm0"), "{out}");
    // Overlapping allowed IPs of two peers: the plan as usual (1) and a
    // warning naming both entries on stderr; `apply` warns the same way
    // and applies. A peer left with no address at all is an error (2).
    let c = |nets: &str, key: &str| {
        format!("  - name: c\n    public_key: \"{key}\"\n    allowed_ips: {nets}\n")
    };
    let other_key = "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=";
    let overlap = s
        .dir
        .write(
            "overlap.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                &c("[172.18.5.0/24]", other_key),
            ),
        )
        .display()
        .to_string();
    let warning =
        "peers[0].allowed_ips[1]: warning: 172.18.0.0/16 contains 172.18.5.0/24 of peer `c`";
    let (out, err) = expect(
        "diff with overlapping allowed IPs",
        nm.out(&["diff", &overlap]),
        1,
    );
    assert!(out.contains("+ route 172.18.5.0/24 dev nm0"), "{out}");
    assert!(err.contains(warning), "{err}");
    let (_, err) = expect(
        "apply with overlapping allowed IPs",
        nm.out(&["apply", &overlap]),
        0,
    );
    assert!(err.contains(warning), "{err}");
    let shadowed = s
        .dir
        .write(
            "shadowed.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                &format!(
                    "{}  - name: d\n    public_key: \"etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=\"\n    allowed_ips: [10.10.0.3/32]\n",
                    c("[10.10.0.2/31]", other_key)
                ),
            ),
        )
        .display()
        .to_string();
    let (_, err) = expect(
        "diff with a peer left unreachable",
        nm.out(&["diff", &shadowed]),
        2,
    );
    assert!(err.contains("peer `c` is unreachable"), "{err}");
    nm.ok(&["apply", &good]);

    // 2: runtime errors.
    // - nft cannot be run, and the manifest needs it;
    let fw = s
        .dir
        .write(
            "fw.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                "firewall:\n  chains:\n    - name: forward\n      hook: forward\n      rules:\n        - accept\n",
            ),
        )
        .display()
        .to_string();
    let o = common::run(
        nm.cmd(&["diff", &fw])
            .env("NETMAN_NFT", s.dir.join("no-such-nft")),
    );
    let (_, err) = expect("diff when nft cannot be run", outcome(&o), 2);
    assert!(err.contains("no-such-nft"), "{err}");
    // - the engine refuses the dry run (the peer has the interface's own
    //   public key, which only the key file tells);
    let own = s
        .dir
        .write(
            "own.yaml",
            &manifest("site-a", &s.key.private_file, &s.key.public, ""),
        )
        .display()
        .to_string();
    let (_, err) = expect(
        "diff with the interface's own key as a peer's",
        nm.out(&["diff", &own]),
        2,
    );
    assert!(err.contains("own public key"), "{err}");
    // - the recorded state cannot be read.
    let state = s.state_dir().join("site-a.json");
    let saved = std::fs::read(&state).expect("state file");
    std::fs::write(&state, b"{ not json").expect("corrupt the state file");
    expect(
        "diff with a corrupt state file",
        nm.out(&["diff", &good]),
        2,
    );
    expect(
        "diff (drift) with a corrupt state file",
        nm.out(&["diff"]),
        2,
    );
    std::fs::write(&state, saved).expect("restore the state file");
    expect(
        "diff once the state file is back",
        nm.out(&["diff", &good]),
        0,
    );
}

/// `apply`: 0 success, 1 failed (and reverted), 2 invalid manifest
/// (including a rule nft rejects).
#[test]
fn apply_exits_0_success_1_failed_2_invalid() {
    require_tool("nft", "the Debian package nftables");
    let (s, good, bad) = site("xapply");
    let nm = s.nm();
    expect("apply of an invalid manifest", nm.out(&["apply", &bad]), 2);
    let rejected = s
        .dir
        .write(
            "nft.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                "firewall:\n  chains:\n    - name: forward\n      hook: forward\n      rules:\n        - tcp dport 99999 accept\n",
            ),
        )
        .display()
        .to_string();
    let (_, err) = expect(
        "apply of a rule nft rejects",
        nm.out(&["apply", &rejected]),
        2,
    );
    assert!(err.contains("firewall.chains[0].rules[0]"), "{err}");
    assert!(
        !s.ns.ip_try(&["link", "show", "nm0"]).status.success(),
        "a rejected apply created the link"
    );
    // 1: the key file is missing (nothing applied).
    let missing = s
        .dir
        .write(
            "nokey.yaml",
            &manifest("site-a", &s.dir.join("missing.key"), SOME_PUBLIC_KEY, ""),
        )
        .display()
        .to_string();
    expect(
        "apply with a missing key file",
        nm.out(&["apply", &missing]),
        1,
    );
    // 0: applied; 0 again: nothing to do.
    expect("apply", nm.out(&["apply", &good]), 0);
    let (out, _) = expect("apply again", nm.out(&["apply", &good]), 0);
    assert_eq!(out, "no changes\n");
    // 1: the kernel refuses a route (a foreign blackhole route of the same
    // prefix and metric); reverted.
    s.ns.ip(&["route", "add", "blackhole", "192.168.50.0/24"]);
    let more = s
        .dir
        .write(
            "more.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                "routes:\n  - to: 192.168.50.0/24\n  - to: 192.168.60.0/24\n",
            ),
        )
        .display()
        .to_string();
    let (_, err) = expect("apply the kernel refuses", nm.out(&["apply", &more]), 1);
    assert!(err.contains("192.168.50.0/24"), "{err}");
    let routes = s.ns.ip(&["route", "show", "proto", "233"]);
    assert!(
        !routes.contains("192.168.60.0/24"),
        "the failed apply was not reverted: {routes}"
    );
    // 1: a second apply while one waits for `netman confirm` (a change
    // applied with --confirm-timeout; an apply that changes nothing leaves
    // nothing to confirm).
    std::fs::write(
        &more,
        manifest(
            "site-a",
            &s.key.private_file,
            SOME_PUBLIC_KEY,
            "routes:\n  - to: 192.168.70.0/24\n",
        ),
    )
    .expect("write manifest");
    expect(
        "apply --confirm-timeout",
        nm.out(&["apply", "--confirm-timeout", "60", &more]),
        0,
    );
    let (_, err) = expect(
        "apply while a confirmation is pending",
        nm.out(&["apply", &good]),
        1,
    );
    assert!(err.contains("netman confirm"), "{err}");
}

/// `confirm`: 0 confirmed, 1 nothing pending.
#[test]
fn confirm_exits_0_confirmed_1_nothing_pending() {
    let (s, good, _) = site("xconf");
    let nm = s.nm();
    expect("confirm before anything", nm.out(&["confirm", "site-a"]), 1);
    nm.ok(&["apply", &good]);
    expect("confirm with nothing pending", nm.out(&["confirm"]), 1);
    // Applying the same again changes nothing: nothing to confirm.
    nm.ok(&["apply", "--confirm-timeout", "60", &good]);
    expect("confirm after a no-op apply", nm.out(&["confirm"]), 1);
    let more = s
        .dir
        .write(
            "more.yaml",
            &manifest(
                "site-a",
                &s.key.private_file,
                SOME_PUBLIC_KEY,
                "routes:\n  - to: 192.168.50.0/24\n",
            ),
        )
        .display()
        .to_string();
    nm.ok(&["apply", "--confirm-timeout", "60", &more]);
    let (out, _) = expect("confirm", nm.out(&["confirm"]), 0);
    assert!(out.contains("confirmed"), "{out}");
    expect("confirm twice", nm.out(&["confirm", "site-a"]), 1);
}

/// `run`: 0 clean stop, 1 failure, 2 invalid manifest.
#[test]
fn run_exits_0_clean_stop_1_failure_2_invalid() {
    let (s, good, bad) = site("xrun");
    let nm = s.nm();
    expect("run of an invalid manifest", nm.out(&["run", &bad]), 2);
    let missing = s
        .dir
        .write(
            "nokey.yaml",
            &manifest("site-a", &s.dir.join("missing.key"), SOME_PUBLIC_KEY, ""),
        )
        .display()
        .to_string();
    expect("run with a missing key file", nm.out(&["run", &missing]), 1);
    let fg = Bg::spawn("netman run", &mut nm.cmd(&["run", &good]));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (code, out, _) = nm.out(&["status", "site-a", "--output", "json"]);
            code == 0 && out.contains("\"pid\"")
        }),
        "netman run did not start its engine"
    );
    let (_, err) = expect("a second run while one serves", nm.out(&["run", &good]), 1);
    assert!(err.contains("already running"), "{err}");
    // SAFETY: kill(2) on the pid of our own child.
    assert_eq!(
        unsafe { libc::kill(fg.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    expect(
        "run stopped with SIGTERM",
        outcome(&fg.finish(Duration::from_secs(10))),
        0,
    );
}

/// `status`: 0, 1 unknown deployment.
#[test]
fn status_exits_0_or_1_for_an_unknown_deployment() {
    let (s, good, _) = site("xstat");
    let nm = s.nm();
    expect("status of nothing", nm.out(&["status", "site-a"]), 1);
    nm.ok(&["apply", &good]);
    expect("status", nm.out(&["status"]), 0);
    expect("status NAME", nm.out(&["status", "site-a"]), 0);
    expect(
        "status --output json",
        nm.out(&["status", "site-a", "--output", "json"]),
        0,
    );
    let (_, err) = expect(
        "status of an unknown deployment",
        nm.out(&["status", "site-x"]),
        1,
    );
    assert!(err.contains("site-x"), "{err}");
    // A recorded deployment whose engine is not running is still known.
    let pid = s
        .nm()
        .ok(&["status", "site-a", "--output", "json"])
        .split("\"pid\":")
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse::<i32>().ok())
        .expect("engine pid in the status");
    // SAFETY: kill(2) on the engine the test started (in its namespace).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(5), || nm
            .out(&["status", "site-a"])
            .1
            .contains("engine: not running")),
        "the killed engine still shows as running"
    );
    expect(
        "status with the engine not running",
        nm.out(&["status", "site-a"]),
        0,
    );
}

/// `down`: 0 success, 1 failure.
#[test]
fn down_exits_0_success_1_failure() {
    let (s, good, _) = site("xdown");
    let nm = s.nm();
    let (_, err) = expect("down with nothing recorded", nm.out(&["down"]), 1);
    assert!(err.contains("nothing to do"), "{err}");
    nm.ok(&["apply", &good]);
    expect("down", nm.out(&["down", &good]), 0);
    expect("down again", nm.out(&["down"]), 1);
}

/// `genkey`/`pubkey`: 0; `pubkey` of something that is not a private key: 1.
#[test]
fn genkey_and_pubkey_exit_0_and_pubkey_1_on_bad_input() {
    let (out, _) = expect("genkey", netman(&["genkey"], ""), 0);
    let (public, _) = expect("pubkey", netman(&["pubkey"], &out), 0);
    assert_eq!(public.trim().len(), 44, "{public}");
    let (_, err) = expect("pubkey of garbage", netman(&["pubkey"], "not a key\n"), 1);
    assert!(err.contains("not a private key"), "{err}");
}

/// `import`: 0, 1 error, 2 result invalid.
#[test]
fn import_exits_0_1_error_2_result_invalid() {
    let dir = TempDir::new("ximport");
    let (private, _) = expect("genkey", netman(&["genkey"], ""), 0);
    let conf = |peers: &str| {
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.10.0.1/24\nListenPort = 51820\n{peers}",
            private.trim()
        )
    };
    let peer = |key: &str, ips: &str| format!("\n[Peer]\nPublicKey = {key}\nAllowedIPs = {ips}\n");
    let good = dir.write("wg0.conf", &conf(&peer(SOME_PUBLIC_KEY, "10.10.0.2/32")));
    let p = |f: &Path| f.display().to_string();
    let out_dir = p(&dir.join("out"));
    expect(
        "import",
        netman(&["import", &p(&good), "-o", &out_dir], ""),
        0,
    );
    // 1: refuses to overwrite; cannot read the file; not a wg-quick file.
    expect(
        "import over an earlier import",
        netman(&["import", &p(&good), "-o", &out_dir], ""),
        1,
    );
    expect(
        "import of a missing file",
        netman(&["import", &p(&dir.join("nope.conf")), "-o", &out_dir], ""),
        1,
    );
    let junk = dir.write("junk.conf", "this is not a wg-quick file\n");
    expect(
        "import of junk",
        netman(&["import", &p(&junk), "-o", &out_dir], ""),
        1,
    );
    // 2: converted, but the manifest does not validate (two peers claim
    // the same prefix, which wg-quick allows and netman does not).
    let dup = dir.write(
        "wg1.conf",
        &conf(&format!(
            "{}{}",
            peer(SOME_PUBLIC_KEY, "10.10.0.2/32"),
            peer(common::OTHER_PUBLIC_KEY, "10.10.0.2/32")
        )),
    );
    let (_, err) = expect(
        "import whose result is invalid",
        netman(&["import", &p(&dup), "-o", &out_dir], ""),
        2,
    );
    assert!(err.contains("allowed_ips"), "{err}");
}

#[test]
fn schema_completions_and_man_exit_0() {
    let (out, _) = expect("schema", netman(&["schema"], ""), 0);
    assert!(out.contains("\"$schema\""), "{out}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (out, _) = expect(shell, netman(&["completions", shell], ""), 0);
        assert!(out.contains("netman"), "{shell}: {out}");
    }
    let (out, _) = expect("man", netman(&["man"], ""), 0);
    assert!(out.contains(".TH"), "{out}");
}

/// A command line that does not parse exits 2, whatever the command (as
/// docs/operations.md says under the table).
#[test]
fn a_command_line_that_does_not_parse_exits_2() {
    for args in [
        &["status", "--bogus"][..],
        &["diff", "--output", "xml"],
        &["apply"],
        &["confirm", "a", "b"],
        &["no-such-command"],
    ] {
        expect(&format!("netman {args:?}"), netman(args, ""), 2);
    }
}
