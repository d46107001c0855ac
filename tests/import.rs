//! `netman import` against hostile wg-quick files and hostile output
//! directories: text from the wg-quick file never becomes live manifest
//! settings (line breaks YAML knows but a terminal hides: CR, NEL, U+2028,
//! U+2029; quotes in endpoints), the output is never written through a
//! symbolic link, a refused import leaves nothing behind, and the input is
//! read with a bound; and the golden manifests of wg-quick hubs whose
//! forwarding and NAT import translates (each rule checked against
//! `iptables-translate`). These run the binary directly: import executes
//! nothing, so no network namespace (and no root) is needed.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    TempDir, golden_dirs, netman_bin, netman_genkey, netman_pubkey, require_tool, run, run_ok,
};

/// `netman import ARGS...`: (exit code, stdout, stderr).
fn import(args: &[&str]) -> (i32, String, String) {
    let out = run(Command::new(netman_bin()).arg("import").args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every file or symlink under `dir` (directories are walked, not listed).
fn walk(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                todo.push(p);
            } else {
                out.insert(p);
            }
        }
    }
    out
}

/// The top-level keys of a YAML mapping, as the manifest parser sees them.
fn top_level_keys(text: &str) -> BTreeSet<String> {
    let map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not a mapping: {e}\n{text:?}"));
    map.into_keys().collect()
}

/// Characters that end a line for YAML (or hide text on a terminal)
/// other than `\n`.
const HIDDEN_BREAKS: [char; 4] = ['\r', '\u{85}', '\u{2028}', '\u{2029}'];

/// A `PostUp` (and DNS, Table, FwMark, a peer's name) carrying YAML after
/// each kind of line break must import into a manifest where none of it is
/// live: same sections as any import (`name`, `interface`, `peers`), no
/// forwarding, firewall, metrics, routes or `watch: false`, peers exactly
/// as in the file; and the notes printed on stderr carry no raw line break.
#[test]
fn import_keeps_line_break_payloads_out_of_the_manifest() {
    let dir = TempDir::new("imhostile");
    let k = netman_genkey();
    let p1 = netman_pubkey(&netman_genkey());
    let p2 = netman_pubkey(&netman_genkey());
    for (what, br) in [
        ("CR", "\r"),
        ("NEL", "\u{85}"),
        ("LS", "\u{2028}"),
        ("PS", "\u{2029}"),
        ("CR+NEL", "\r\u{85}"),
    ] {
        // Top-level keys, each one a section import never writes, spread
        // over several notes (each key once: a duplicate key would make
        // the manifest invalid instead of hostile).
        let post_up = [
            "echo x",
            "metrics:",
            "  listen: 0.0.0.0:9586",
            "routes:",
            "  - to: 0.0.0.0/1",
            "firewall:",
            "  insert:",
            "    - family: ip",
            "      table: filter",
            "      chain: INPUT",
            "      rule: accept",
            "",
        ]
        .join(br);
        let pre_down = format!("iptables -D INPUT -j ACCEPT{br}watch: false{br}");
        let dns = format!("1.1.1.1{br}forwarding: true{br}#");
        let comment = format!("1{br}# x");
        let conf = dir.write(
            &format!("{what}/wg0.conf"),
            &format!(
                "[Interface]\n\
                 PrivateKey = {k}\n\
                 Address = 10.6.0.1/24\n\
                 ListenPort = 51820\n\
                 PostUp = {post_up}\n\
                 PreDown = {pre_down}\n\
                 DNS = {dns}\n\
                 Table = {comment}\n\
                 FwMark = {comment}\n\
                 \n\
                 # Name = \"a{br}forwarding: true{br}b\"\n\
                 [Peer]\n\
                 PublicKey = {p1}\n\
                 Endpoint = vpn.example.net:51820\n\
                 AllowedIPs = 10.6.0.2/32\n\
                 \n\
                 [Peer]\n\
                 # Name = c{br}forwarding: true\n\
                 PublicKey = {p2}\n\
                 AllowedIPs = 10.6.0.3/32\n"
            ),
        );
        let out_dir = dir.join(format!("{what}/out"));
        let (code, out, err) = import(&[s(&conf), "-o", s(&out_dir)]);
        assert_eq!(code, 0, "{what}: stdout {out}\nstderr {err}");
        let yaml = out_dir.join("wg0.yaml");
        let text = std::fs::read_to_string(&yaml).expect("read manifest");
        let keys = top_level_keys(&text);
        assert_eq!(
            keys,
            BTreeSet::from(["name".to_string(), "interface".into(), "peers".into()]),
            "{what}: payload keys are live in the manifest:\n{text:?}"
        );
        run_ok(Command::new(netman_bin()).arg("validate").arg(&yaml));
        let m = netman::manifest::load(&yaml).expect("manifest loads");
        assert!(!m.forwarding, "{what}: forwarding is on");
        assert!(m.watch, "{what}: watch is off");
        assert!(m.metrics.is_none(), "{what}: metrics listener");
        assert!(m.routes.is_empty(), "{what}: routes");
        assert!(m.firewall.is_empty(), "{what}: firewall rules");
        let names: Vec<&str> = m.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{what}: {names:?}");
        assert!(
            names.iter().all(|n| n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')),
            "{what}: {names:?}"
        );
        assert_eq!(m.interface.listen_port, Some(51820), "{what}");
        assert!(
            m.peers
                .iter()
                .all(|p| p.persistent_keepalive.is_none() && p.preshared_key_file.is_none()),
            "{what}"
        );
        // Notes still say what was not carried over, on one visible line.
        assert!(
            err.lines()
                .any(|l| l.contains("PostUp command, not executed")),
            "{what}: {err}"
        );
        assert!(
            !err.contains(HIDDEN_BREAKS),
            "{what}: a raw line break in what import printed: {err:?}"
        );
        for l in text.lines() {
            assert!(
                !l.contains(HIDDEN_BREAKS),
                "{what}: a line break YAML knows inside a manifest line: {l:?}"
            );
        }
    }
}

/// An `Endpoint` is formatted into the manifest: quotes and line breaks in
/// it must not end the value. Such an endpoint is no endpoint at all:
/// import refuses it, naming the line, and writes nothing.
#[test]
fn import_refuses_endpoints_that_are_not_host_and_port() {
    let dir = TempDir::new("imendp");
    let k = netman_genkey();
    let p = netman_pubkey(&netman_genkey());
    let mut problems = Vec::new();
    for (i, endpoint) in [
        // Closes the quotes, adds peer settings (a key file of the
        // attacker's choosing), reopens them.
        "192.0.2.1:51820\"\r    persistent_keepalive: 7\r    preshared_key_file: \"/etc/hostname",
        "192.0.2.1:51820\"\u{2028}    persistent_keepalive: 7\u{2028}#",
        "192.0.2.1:51820\"\u{85}    persistent_keepalive: 7\u{85}#",
        "a\"b:51820",
        "vpn.example.net:51820\u{2029}x",
        "vpn example net:51820",
    ]
    .iter()
    .enumerate()
    {
        let conf = dir.write(
            &format!("{i}/wg0.conf"),
            &format!(
                "[Interface]\n\
                 PrivateKey = {k}\n\
                 Address = 10.6.0.1/24\n\
                 \n\
                 [Peer]\n\
                 PublicKey = {p}\n\
                 Endpoint = {endpoint}\n\
                 AllowedIPs = 10.6.0.2/32\n"
            ),
        );
        let out_dir = dir.join(format!("{i}/out"));
        let (code, out, err) = import(&[s(&conf), "-o", s(&out_dir)]);
        let written = walk(&out_dir);
        if code != 1
            || !written.is_empty()
            || !err.contains(&format!("{}:7: Endpoint ", conf.display()))
        {
            let text = std::fs::read_to_string(out_dir.join("wg0.yaml")).unwrap_or_default();
            problems.push(format!(
                "Endpoint {endpoint:?}: exit {code}, wrote {written:?}\n  stdout: {out}  stderr: {err:?}\n  manifest: {text:?}"
            ));
        }
        assert!(
            !err.contains(HIDDEN_BREAKS),
            "a raw line break in the error: {err:?}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A wg-quick file with one peer with a preshared key.
fn conf_with_psk(dir: &TempDir) -> PathBuf {
    let k = netman_genkey();
    let p = netman_pubkey(&netman_genkey());
    dir.write(
        "wg0.conf",
        &format!(
            "[Interface]\n\
             PrivateKey = {k}\n\
             Address = 10.6.0.1/24\n\
             \n\
             [Peer]\n\
             PublicKey = {p}\n\
             PresharedKey = {psk}\n\
             AllowedIPs = 10.6.0.2/32\n",
            psk = netman_genkey(),
        ),
    )
}

/// A symbolic link where import writes (the manifest, the `keys/`
/// directory, a key file), dangling or not: import refuses, writes nothing
/// through the link and leaves nothing half-written behind.
#[test]
fn import_never_writes_through_symlinks_and_leaves_nothing_behind() {
    let dir = TempDir::new("imlink");
    let conf = conf_with_psk(&dir);
    let mut problems = Vec::new();
    // (what, link inside the output dir, its target, whether the target
    // is a directory that exists)
    let cases: [(&str, &str, &str, bool); 6] = [
        ("dangling manifest link", "wg0.yaml", "victim.yaml", false),
        ("manifest link to a file", "wg0.yaml", "victim.yaml", true),
        ("keys dir link", "keys", "victim-dir", true),
        (
            "dangling private key link",
            "keys/wg0.key",
            "victim.key",
            false,
        ),
        (
            "dangling psk link",
            "keys/wg0-peer-1.psk",
            "victim.psk",
            false,
        ),
        ("dangling keys dir link", "keys", "victim-dir", false),
    ];
    for (i, (what, link, target, exists)) in cases.iter().enumerate() {
        let case = dir.join(format!("case{i}"));
        let out_dir = case.join("out");
        std::fs::create_dir_all(out_dir.join("keys")).expect("mkdir");
        if *link == "keys" {
            std::fs::remove_dir(out_dir.join("keys")).expect("rmdir");
        }
        let target = case.join(target);
        if *exists {
            if target.extension().is_some() {
                std::fs::write(&target, "victim\n").expect("write victim");
            } else {
                std::fs::create_dir(&target).expect("mkdir victim");
            }
        }
        symlink(&target, out_dir.join(link)).expect("symlink");
        let before = walk(&case);
        let (code, out, err) = import(&[s(&conf), "-o", s(&out_dir)]);
        let after = walk(&case);
        let victim = if target.is_dir() {
            walk(&target).into_iter().collect::<Vec<_>>()
        } else {
            std::fs::read_to_string(&target)
                .ok()
                .filter(|t| t != "victim\n")
                .map(|_| vec![target.clone()])
                .unwrap_or_default()
        };
        if code != 1 || after != before || !victim.is_empty() {
            problems.push(format!(
                "{what}: exit {code}; new files {:?}; written through the link: {victim:?}\n  stdout: {out}  stderr: {err}",
                after.difference(&before).collect::<Vec<_>>()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// An existing `keys/` that others may write (or that belongs to someone
/// else) would let them swap the key files later: import refuses it,
/// naming it, and writes nothing.
#[test]
fn import_refuses_a_keys_dir_others_may_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("imkeysdir");
    let conf = conf_with_psk(&dir);
    let mut cases: Vec<(&str, u32, Option<u32>)> = vec![
        ("group-writable", 0o770, None),
        ("world-writable", 0o1777, None),
    ];
    // A foreign owner can be set up only by root (as in CI).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cases.push(("owned by nobody", 0o700, Some(65534)));
    }
    for (i, (what, mode, owner)) in cases.into_iter().enumerate() {
        let out_dir = dir.join(format!("case{i}"));
        let keys = out_dir.join("keys");
        std::fs::create_dir_all(&keys).expect("mkdir");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some(uid) = owner {
            std::os::unix::fs::lchown(&keys, Some(uid), None).expect("chown");
        }
        let before = walk(&out_dir);
        let (code, _, err) = import(&[s(&conf), "-o", s(&out_dir)]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains(s(&keys)), "{what}: {err}");
        assert!(err.contains("not writing key files"), "{what}: {err}");
        assert_eq!(walk(&out_dir), before, "{what}: files written");
    }
}

/// The wg-quick file is read with a bound: a huge file is refused with an
/// error naming it, and nothing is written.
#[test]
fn import_refuses_an_oversized_wg_quick_file() {
    let dir = TempDir::new("imbig");
    let k = netman_genkey();
    let filler = "# padding padding padding padding padding padding padding\n".repeat(40_000);
    let conf = dir.write(
        "wg0.conf",
        &format!("{filler}[Interface]\nPrivateKey = {k}\nAddress = 10.6.0.1/24\n"),
    );
    assert!(std::fs::metadata(&conf).expect("stat").len() > 2 * 1024 * 1024);
    let out_dir = dir.join("out");
    let (code, out, err) = import(&[s(&conf), "-o", s(&out_dir)]);
    assert_eq!(code, 1, "stdout {out}\nstderr {err}");
    assert!(
        err.contains(&conf.display().to_string()) && err.contains("too large"),
        "{err}"
    );
    assert!(walk(&out_dir).is_empty(), "{:?}", walk(&out_dir));
}

/// The golden cases of `tests/golden/import/<case>/`: `wg0.conf` imported
/// (as `wg0.conf` from the case's copy, so the text names no temp path)
/// must give exactly `manifest.yaml` and the notes of `notes.txt`. With
/// `UPDATE_GOLDEN` set the expected files are rewritten. The cases: a
/// typical guide hub (FORWARD in and out of the tunnel, MASQUERADE, for
/// iptables and ip6tables, undone in PostDown), the other recognised forms
/// (sysctls, state matches, SNAT, `-I`, a full path), and scripts that are
/// not translated (each stays a note; no firewall, no forwarding).
#[test]
fn import_golden_manifests_of_wg_quick_hubs() {
    let (root, cases) = golden_dirs("import");
    assert!(
        cases.len() >= 3,
        "golden cases missing in {}",
        root.display()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let dir = TempDir::new(&format!("imgold{}", &name[..2]));
        let conf = std::fs::read_to_string(case.join("wg0.conf")).expect("read wg0.conf");
        dir.write("wg0.conf", &conf);
        let out = run(Command::new(netman_bin())
            .current_dir(&dir.path)
            .args(["import", "wg0.conf", "-o", "out"]));
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(code, 0, "{name}: exit {code}\n{stderr}");
        let manifest =
            std::fs::read_to_string(dir.join("out/wg0.yaml")).expect("read imported manifest");
        for (file, actual) in [("manifest.yaml", &manifest), ("notes.txt", &stderr)] {
            let path = case.join(file);
            if update {
                std::fs::write(&path, actual).expect("write golden file");
                continue;
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_default();
            if &expected != actual {
                failures.push(format!(
                    "{name}/{file} differs\n--- expected\n{expected}--- actual\n{actual}"
                ));
            }
        }
        run_ok(
            Command::new(netman_bin())
                .arg("validate")
                .arg(dir.join("out/wg0.yaml")),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `ct state a,b` with its states sorted (iptables-translate keeps the
/// order of `--state`; import writes them in one order).
fn sorted_states(rule: &str) -> String {
    let mut words: Vec<String> = rule.split(' ').map(str::to_string).collect();
    for i in 1..words.len() {
        if words[i - 1] == "state" {
            let mut s: Vec<&str> = words[i].split(',').collect();
            s.sort_unstable();
            words[i] = s.join(",");
        }
    }
    words.join(" ")
}

/// Every rule import wrote in the golden manifests is what
/// `iptables-translate` / `ip6tables-translate` make of its source command
/// (named by the rule's comment, `%i` being the tunnel), but for the
/// counter iptables always keeps, the `meta nfproto` that confines it to
/// its family in netman's `inet` table, and the family `snat` needs there.
#[test]
fn imported_rules_match_iptables_translate() {
    require_tool("iptables-translate", "the Debian package iptables");
    require_tool("ip6tables-translate", "the Debian package iptables");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/import");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("golden dir").flatten() {
        let Ok(manifest) = std::fs::read_to_string(entry.path().join("manifest.yaml")) else {
            continue;
        };
        for line in manifest.lines() {
            let Some((rule, source)) = line.trim_start().strip_prefix("- ").and_then(|l| {
                let (rule, comment) = l.split_once(" # from line ")?;
                Some((rule, comment.split_once(": ")?.1))
            }) else {
                continue;
            };
            let mut words: Vec<String> = source
                .split_whitespace()
                .skip(1)
                .map(|w| w.replace("%i", "wg0"))
                .collect();
            let program = words.remove(0);
            let (translate, nfproto) = if program.contains("ip6tables") {
                ("ip6tables-translate", "meta nfproto ipv6 ")
            } else {
                ("iptables-translate", "meta nfproto ipv4 ")
            };
            let out = run_ok(Command::new(translate).args(&words));
            // nft 'add rule ip filter FORWARD iifname "wg0" counter accept'
            let body = out
                .trim()
                .trim_start_matches("nft ")
                .trim_matches('\'')
                .splitn(6, ' ')
                .nth(5)
                .unwrap_or_else(|| panic!("{translate} {words:?}: {out}"))
                .replace(" counter", "");
            let ours = rule
                .strip_prefix(nfproto)
                .unwrap_or_else(|| panic!("{rule:?} does not start with {nfproto:?}"))
                .replace("snat ip to", "snat to")
                .replace("snat ip6 to", "snat to");
            assert_eq!(
                sorted_states(&ours),
                sorted_states(&body),
                "{source}: import wrote {rule:?}, {translate} {out}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} rules checked");
}
