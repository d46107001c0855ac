//! The operator's world: `netman schema`, shell completions and the man
//! page, `netman import` of wg-quick files (import → apply → traffic, a
//! hub's forwarding and NAT carried over), the
//! Prometheus/OpenMetrics endpoint, least privilege of the engine and its
//! root-only control socket, systemd readiness (`sd_notify`) and the log
//! formats. Tests that touch the network run the real binary in their own
//! uniquely named network namespaces (root required, as in CI) with their
//! own temp and state dirs, all removed on drop; a missing prerequisite
//! makes a test fail naming it, never skip. No traffic leaves the test
//! namespaces: metrics are scraped from a thread that entered the
//! namespace (`setns`), whose loopback is its own.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{
    Bg, KeyPair, NetNs, Netman, Site, TempDir, golden_dirs, netman_bin, netman_genkey,
    netman_pubkey, ping, ping_ok, require_tool, run, run_ok, underlay, unix_now, veth, wait_ping,
    wait_until,
};

/// Port every site listens on (each site has its own namespace).
const WG_PORT: u16 = 51820;
/// Where the metrics endpoint listens (inside the test namespace).
const METRICS: &str = "127.0.0.1:9586";
/// The unprivileged user that tries the control socket.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Helpers

fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `f` in a thread that entered `ns`'s network namespace (`setns`
/// changes only that thread; it ends with `f`).
fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(&ns.name);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: setns on a namespace fd we hold open; it changes only
        // this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Whether something accepts TCP connections on `a` inside `ns`.
fn port_open(ns: &NetNs, a: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
    })
}

/// `GET path` from `a` inside `ns`: (head, body).
fn http_get(ns: &NetNs, a: SocketAddr, path: &str) -> Result<(String, String), String> {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2))
            .map_err(|e| format!("connect {a}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {a}\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("send to {a}: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {a}: {e}"))?;
        let (head, body) = out
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP response: {out:?}"))?;
        Ok((head.to_string(), body.to_string()))
    })
}

/// A successful scrape of `/metrics` on `a` inside `ns`.
fn scrape(ns: &NetNs, a: SocketAddr) -> String {
    let (head, body) = http_get(ns, a, "/metrics").unwrap_or_else(|e| panic!("scrape: {e}"));
    assert!(head.starts_with("HTTP/1.1 200"), "scrape of {a}: {head}");
    body
}

/// The value of the sample `name{...}` whose labels include all of `want`.
fn sample(body: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let all = want.iter().all(|(k, v)| {
            labels
                .split(',')
                .any(|kv| kv == format!("{k}=\"{v}\"").as_str())
        });
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}

fn metric(body: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let v = sample(body, name, want)
        .unwrap_or_else(|| panic!("no sample {name}{want:?} in the scrape:\n{body}"));
    v as u64
}

/// The `Key:\tvalue` lines of a `/proc/.../status` file.
fn proc_status(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn hex(v: Option<&String>) -> u64 {
    v.and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(u64::MAX)
}

/// Every thread of `pid` must have exactly `caps` effective, `caps` and
/// CAP_NET_RAW permitted and in its bounding set (permitted, not
/// effective: for the `ping` of health probes), nothing inheritable or
/// ambient, and no new privileges. Returns one line per violation.
fn privilege_violations(pid: u32, caps: u64) -> Vec<String> {
    const NET_RAW: u64 = 1 << 13;
    let mut bad = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list threads of {pid}: {e}"));
    let mut seen = 0;
    for t in tasks.flatten() {
        let st = proc_status(&t.path().join("status"));
        seen += 1;
        let who = format!(
            "thread {} ({})",
            t.file_name().to_string_lossy(),
            st.get("Name").map_or("?", String::as_str)
        );
        for (field, want) in [
            ("CapEff", caps),
            ("CapPrm", caps | NET_RAW),
            ("CapBnd", caps | NET_RAW),
            ("CapInh", 0),
            ("CapAmb", 0),
        ] {
            let got = hex(st.get(field));
            if got != want {
                bad.push(format!("{who}: {field} {got:#x}, expected {want:#x}"));
            }
        }
        if st.get("NoNewPrivs").map(String::as_str) != Some("1") {
            bad.push(format!("{who}: NoNewPrivs {:?}", st.get("NoNewPrivs")));
        }
    }
    assert!(seen > 0, "no threads found for pid {pid}");
    bad
}

/// `readlink /proc/PID/exe` by a root process without CAP_SYS_PTRACE: the
/// kernel allows it only if PID is dumpable (and its permitted
/// capabilities are a subset of the caller's).
fn readlink_exe_without_ptrace(pid: u32) -> Output {
    run(Command::new("setpriv").args([
        "--bounding-set=-sys_ptrace",
        "--inh-caps=-all",
        "readlink",
        &format!("/proc/{pid}/exe"),
    ]))
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on the pid of a child of this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
}

/// Lines `  name   description` of the `Commands:` section of `--help`.
fn visible_subcommands() -> Vec<String> {
    let help = run_ok(Command::new(netman_bin()).arg("--help"));
    let cmds: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(
        cmds.len() >= 10 && cmds.iter().any(|c| c == "import"),
        "cannot find the subcommands in --help:\n{help}"
    );
    cmds
}

fn completion_script(shell: &str, dir: &TempDir) -> PathBuf {
    let out = run(Command::new(netman_bin()).args(["completions", shell]));
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.len() > 1000,
        "netman completions {shell}: {}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    let path = dir.join(format!("netman.{shell}"));
    std::fs::write(&path, &out.stdout).expect("write completion script");
    path
}

/// What bash completes after `netman WORDS...` (the last word is the one
/// being completed).
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cur = words.last().copied().unwrap_or("");
    let prev = words.len().checked_sub(2).map_or("netman", |i| words[i]);
    let program = format!(
        "source '{}' || exit 3; COMP_WORDS=(netman {}); COMP_CWORD={}; COMP_LINE='netman {}'; COMP_POINT=${{#COMP_LINE}}; _netman netman '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len(),
        words.join(" "),
    );
    let out = run(Command::new("bash").args(["--norc", "--noprofile", "-c", &program]));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash completion of {words:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// What fish completes for the command line `line`.
fn fish_complete(script: &Path, line: &str) -> Vec<String> {
    let program = format!("source '{}'; complete -C '{line}'", script.display());
    let out = run(Command::new("fish").args(["--no-config", "-c", &program]));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "fish completion of {line:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Sites

const NO_PEERS: &str = "peers: []\n";

fn one_peer(name: &str, public_key: &str, endpoint: &str, allowed_ips: &[&str]) -> String {
    format!(
        "peers:\n  - name: {name}\n    public_key: \"{public_key}\"\n    endpoint: {endpoint}\n    allowed_ips: [{}]\n",
        allowed_ips.join(", ")
    )
}

/// A manifest: interface `ifname` with one address, listening on `port`,
/// with `peers` (a `peers:` block) and `extra` YAML appended.
fn manifest(
    name: &str,
    ifname: &str,
    address: &str,
    port: u16,
    key: &Path,
    peers: &str,
    extra: &str,
) -> String {
    format!(
        "name: {name}\ninterface:\n  name: {ifname}\n  addresses: [{address}]\n  listen_port: {port}\n  private_key_file: {}\n{peers}{extra}",
        key.display()
    )
}

fn metrics_at(listen: &str) -> String {
    format!("metrics:\n  listen: \"{listen}\"\n")
}

impl Site {
    /// `site-a.yaml`: deployment site-a on nm0 (10.10.0.1/24), no peers.
    fn write_lone_site(&self) -> String {
        self.write(
            "site-a.yaml",
            &manifest(
                "site-a",
                "nm0",
                "10.10.0.1/24",
                WG_PORT,
                &self.key.private_file,
                NO_PEERS,
                "",
            ),
        )
    }

    fn write(&self, file: &str, text: &str) -> String {
        self.dir.write(file, text).display().to_string()
    }

    fn apply(&self, file: &str) -> String {
        self.nm().ok(&["apply", file])
    }

    /// The `engine` object of `status NAME --output json`, if running.
    fn engine_of(&self, deployment: &str) -> Option<serde_json::Value> {
        let (code, out, _) = self.nm().out(&["status", deployment, "--output", "json"]);
        if code != 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let e = v[0]["engine"].clone();
        e.is_object().then_some(e)
    }

    /// The engine of this site's deployment (must be running).
    fn engine(&self) -> serde_json::Value {
        self.engine_of(&self.deployment).unwrap_or_else(|| {
            panic!(
                "the engine of {} is not running; log:\n{}",
                self.deployment,
                self.log()
            )
        })
    }

    fn pid_of(&self, deployment: &str) -> u32 {
        let e = self
            .engine_of(deployment)
            .unwrap_or_else(|| panic!("the engine of {deployment} is not running"));
        e["pid"].as_u64().expect("engine pid") as u32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join(format!("{}.log", self.deployment)))
            .unwrap_or_default()
    }
}

fn peer_of(engine: &serde_json::Value, name: &str) -> serde_json::Value {
    engine["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no peer {name} in {engine:#}"))
}

fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Two sites joined by a veth underlay 192.0.2.1/24 -- 192.0.2.2/24 with
/// overlay 10.10.0.1/24 and .2; A's peer entry for B also routes
/// 172.18.2.0/24 (an owned route to delete by hand). `a_extra` is appended
/// to A's manifest. Returns (a, b, a's manifest, b's manifest).
fn pair(tag: &str, a_extra: &str) -> (Site, Site, String, String) {
    let a = Site::new(&format!("{tag}a"), "site-a");
    let b = Site::new(&format!("{tag}b"), "site-b");
    underlay(&a.ns, &b.ns);
    let ma = a.write(
        "site-a.yaml",
        &manifest(
            "site-a",
            "nm0",
            "10.10.0.1/24",
            WG_PORT,
            &a.key.private_file,
            &one_peer(
                "site-b",
                &b.key.public,
                &format!("192.0.2.2:{WG_PORT}"),
                &["10.10.0.2/32", "172.18.2.0/24"],
            ),
            a_extra,
        ),
    );
    let mb = b.write(
        "site-b.yaml",
        &manifest(
            "site-b",
            "nm0",
            "10.10.0.2/24",
            WG_PORT,
            &b.key.private_file,
            &one_peer(
                "site-a",
                &a.key.public,
                &format!("192.0.2.1:{WG_PORT}"),
                &["10.10.0.1/32"],
            ),
            "",
        ),
    );
    (a, b, ma, mb)
}

/// `netman GLOBAL... run MANIFEST` in the foreground until its engine
/// answers, then SIGTERM; must exit 0. Returns its output.
fn run_then_stop(s: &Site, global: &[&str], manifest: &str) -> Output {
    let mut args = global.to_vec();
    args.extend(["run", manifest]);
    let fg = Bg::spawn("netman run", &mut s.nm().cmd(&args));
    let pid = fg.pid();
    let up = wait_until(Duration::from_secs(10), || {
        s.engine_of(&s.deployment)
            .is_some_and(|e| e["pid"].as_u64() == Some(u64::from(pid)))
    });
    sigterm(pid);
    let out = fg.finish(Duration::from_secs(10));
    assert!(
        up && out.status.success(),
        "netman {args:?}: engine up: {up}, exit {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------
// 1. Schema, completions, man page

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = run(Command::new(netman_bin()).arg("schema"));
    assert!(out.status.success(), "netman schema: {}", out.status);
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/netman-manifest.schema.json"),
    )
    .expect("read schema/netman-manifest.schema.json");
    assert_eq!(
        text(&out.stdout),
        committed,
        "`netman schema` differs from schema/netman-manifest.schema.json"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_are_accepted_by_their_shells() {
    require_tool("bash", "the Debian package bash");
    require_tool("zsh", "the Debian package zsh");
    require_tool("fish", "the Debian package fish");
    let dir = TempDir::new("compl");
    let cmds = visible_subcommands();

    // bash: parses, registers `_netman` for netman, and completes.
    let bash = completion_script("bash", &dir);
    let out = run(Command::new("bash").arg("-n").arg(&bash));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash -n rejects the script: {}",
        text(&out.stderr)
    );
    let reg = run_ok(Command::new("bash").args([
        "--norc",
        "-c",
        &format!("source '{}' && complete -p netman", bash.display()),
    ]));
    assert!(reg.contains("-F _netman"), "{reg}");
    let top = bash_complete(&bash, &[""]);
    for c in &cmds {
        assert!(top.contains(c), "bash does not offer `{c}`: {top:?}");
    }
    for o in ["--state-dir", "--log-format", "--verbose"] {
        assert!(
            top.iter().any(|w| w == o),
            "bash does not offer {o}: {top:?}"
        );
    }
    let import = bash_complete(&bash, &["import", "--"]);
    for o in ["--name", "--output-dir"] {
        assert!(
            import.iter().any(|w| w == o),
            "bash does not offer import {o}: {import:?}"
        );
    }
    let shells = bash_complete(&bash, &["completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == s), "{shells:?}");
    }
    let formats = bash_complete(&bash, &["--log-format", ""]);
    assert_eq!(formats, vec!["human", "journald", "json"]);

    // zsh: parses, and defines the completion function compinit binds.
    let zsh = completion_script("zsh", &dir);
    let out = run(Command::new("zsh").arg("-n").arg(&zsh));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "zsh -n rejects the script: {}",
        text(&out.stderr)
    );
    let out = run(Command::new("zsh").args([
        "-f",
        "-c",
        &format!(
            "autoload -U compinit && compinit -u -D && source '{}' && whence -w _netman && print -r -- $_comps[netman]",
            zsh.display()
        ),
    ]));
    let so = text(&out.stdout);
    assert!(
        out.status.success() && so.contains("_netman: function") && has_line(&so, "_netman"),
        "zsh does not load the completion: {}\nstdout: {so}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    let script = std::fs::read_to_string(&zsh).expect("read zsh script");
    for c in &cmds {
        assert!(
            script.contains(&format!("'{c}:")),
            "zsh script does not describe `{c}`"
        );
    }

    // fish: parses, and completes.
    let fish = completion_script("fish", &dir);
    let out = run(Command::new("fish").arg("--no-execute").arg(&fish));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "fish --no-execute rejects the script: {}",
        text(&out.stderr)
    );
    let top = fish_complete(&fish, "netman ");
    for c in &cmds {
        assert!(top.contains(c), "fish does not offer `{c}`: {top:?}");
    }
    let import = fish_complete(&fish, "netman import --");
    for o in ["--name", "--output-dir"] {
        assert!(
            import.iter().any(|w| w == o),
            "fish does not offer import {o}: {import:?}"
        );
    }
    assert_eq!(
        fish_complete(&fish, "netman status --output "),
        vec!["json", "text"]
    );
}

/// `engine` is an internal subcommand (`#[command(hide = true)]`): `--help`
/// and the man page hide it, the completions should not offer it either.
#[test]
fn completions_do_not_offer_the_hidden_engine_subcommand() {
    require_tool("bash", "the Debian package bash");
    require_tool("fish", "the Debian package fish");
    let dir = TempDir::new("hidden");
    assert!(!visible_subcommands().iter().any(|c| c == "engine"));
    let mut offered = Vec::new();
    let bash = completion_script("bash", &dir);
    if bash_complete(&bash, &[""]).iter().any(|w| w == "engine") {
        offered.push("bash (`netman <TAB>`)");
    }
    let fish = completion_script("fish", &dir);
    if fish_complete(&fish, "netman ")
        .iter()
        .any(|w| w == "engine")
    {
        offered.push("fish (`netman <TAB>`)");
    }
    let zsh = completion_script("zsh", &dir);
    if std::fs::read_to_string(&zsh)
        .expect("read zsh script")
        .contains("'engine:")
    {
        offered.push("zsh (listed in the subcommand descriptions)");
    }
    assert!(
        offered.is_empty(),
        "the hidden `engine` subcommand is offered by the completions of: {}",
        offered.join(", ")
    );
}

#[test]
fn man_page_renders_and_documents_every_subcommand() {
    require_tool("groff", "the Debian package groff-base");
    let out = run(Command::new(netman_bin()).arg("man"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "netman man: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    let roff = text(&out.stdout);
    let th = roff.lines().position(|l| l.starts_with(".TH netman 1"));
    let name = roff.lines().position(|l| l == ".SH NAME");
    assert!(
        th.is_some() && name.is_some() && th < name,
        "no `.TH netman 1` before `.SH NAME`:\n{roff}"
    );
    for section in [".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS"] {
        assert!(has_line(&roff, section), "no {section}:\n{roff}");
    }
    let dir = TempDir::new("man");
    // groff accepts a page without a single warning; the page as text.
    let groff = |file: &str, roff: &str| -> String {
        let page = dir.join(file);
        std::fs::write(&page, roff).expect("write man page");
        let check = run(Command::new("groff")
            .args(["-man", "-Tascii", "-ww", "-z"])
            .arg(&page));
        assert!(
            check.status.success() && check.stderr.is_empty(),
            "groff warns about {file}: {}",
            text(&check.stderr)
        );
        run_ok(
            Command::new("groff")
                .args(["-man", "-Tascii", "-P-cbou"])
                .arg(&page),
        )
    };
    // The rendered page names the program, every subcommand and the
    // global options (and not the hidden `engine`).
    let rendered = groff("netman.1", &roff);
    assert!(
        rendered.contains("netman - Declarative site-to-site VPN manager"),
        "{rendered}"
    );
    for c in visible_subcommands() {
        assert!(
            rendered.contains(&format!("netman-{c}(1)")),
            "the man page does not mention `{c}`:\n{rendered}"
        );
    }
    for o in ["--state-dir", "--verbose", "--log-format"] {
        assert!(rendered.contains(o), "the man page lacks {o}:\n{rendered}");
    }
    assert!(!rendered.contains("netman-engine"), "{rendered}");

    // Every netman-COMMAND(1) it refers to exists: `netman man COMMAND`.
    for c in visible_subcommands() {
        let out = run(Command::new(netman_bin()).args(["man", &c]));
        assert!(
            out.status.success(),
            "netman man {c}: {}",
            text(&out.stderr)
        );
        let roff = text(&out.stdout);
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH netman-{c} 1"))),
            "netman man {c} is not netman-{c}(1):\n{roff}"
        );
        let rendered = groff(&format!("netman-{c}.1"), &roff);
        // groff justifies lines with extra spaces.
        let words = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("SYNOPSIS netman {c}")),
            "netman-{c}(1) has no synopsis `netman {c} ...`:\n{rendered}"
        );
    }
    let out = run(Command::new(netman_bin()).args(["man", "engine"]));
    assert!(!out.status.success(), "the hidden `engine` has a page");
}

// ---------------------------------------------------------------------------
// 2. wg-quick import

/// `netman import ARGS...` run inside `ns` (so that a script that did run
/// could only touch the test namespace): (exit code, stdout, stderr).
fn import(ns: &NetNs, args: &[&str]) -> (i32, String, String) {
    let out = run(ns.cmd(netman_bin()).arg("import").args(args));
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `netman import CONF --name <site's deployment> -o <site dir>/imported`
/// in the site's namespace, which must succeed: the manifest's path and
/// the notes import printed on stderr.
fn import_site(s: &Site, conf: &str) -> (String, String) {
    let out_dir = s.dir.join("imported");
    let (code, out, err) = import(
        &s.ns,
        &[
            conf,
            "--name",
            &s.deployment,
            "-o",
            out_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "import {conf}: {out}{err}");
    let manifest = out_dir.join(format!("{}.yaml", s.deployment));
    (manifest.display().to_string(), err)
}

/// A `note: ...` line of import (with a `<N>` priority prefix when stderr
/// is in journald format).
fn is_note(l: &str) -> bool {
    let l = if journald_prefix(l).is_some() {
        &l[3..]
    } else {
        l
    };
    l.starts_with("note: ")
}

/// Expected result of importing one peer.
struct WantPeer {
    name: &'static str,
    public_key: String,
    endpoint: Option<&'static str>,
    allowed_ips: &'static [&'static str],
    keepalive: Option<u16>,
    psk: Option<String>,
}

/// One wg-quick file and what its import must give.
struct WantConf {
    file: &'static str,
    text: String,
    name_arg: Option<&'static str>,
    deployment: &'static str,
    ifname: &'static str,
    addresses: &'static [&'static str],
    listen_port: Option<u16>,
    mtu: u32,
    private_key: String,
    peers: Vec<WantPeer>,
    /// `forwarding: true`.
    forwarding: bool,
    /// `CHAIN: RULE` of each rule of `firewall.chains`, in order.
    rules: &'static [&'static str],
    /// Substrings of the notes printed on stderr.
    notes: &'static [&'static str],
}

fn key() -> (String, String) {
    let private = netman_genkey();
    let public = netman_pubkey(&private);
    (private, public)
}

/// Import `want` inside `ns` into `dir/out-<deployment>` and check the
/// manifest, key files and notes against it.
fn check_import(ns: &NetNs, dir: &TempDir, want: &WantConf) {
    let conf = dir.write(want.file, &want.text);
    let out_dir = dir.join(format!("out-{}", want.deployment));
    let mut args = vec![
        conf.to_str().expect("utf-8 path"),
        "-o",
        out_dir.to_str().expect("utf-8 path"),
    ];
    if let Some(n) = want.name_arg {
        args.extend(["--name", n]);
    }
    let (code, out, err) = import(ns, &args);
    let what = want.file;
    assert_eq!(code, 0, "import {what}: stdout {out}\nstderr {err}");
    let yaml = out_dir.join(format!("{}.yaml", want.deployment));
    assert!(
        out.contains(&format!("wrote {}", yaml.display())),
        "import {what}: {out}"
    );
    for n in want.notes {
        assert!(
            err.lines().any(|l| is_note(l) && l.contains(n)),
            "import {what}: no note about {n:?}:\n{err}"
        );
    }
    let text = std::fs::read_to_string(&yaml).expect("read imported manifest");
    // No secret in the manifest or in what import printed.
    let mut secrets = vec![want.private_key.clone()];
    secrets.extend(want.peers.iter().filter_map(|p| p.psk.clone()));
    for s in &secrets {
        for (where_, hay) in [("manifest", &text), ("stdout", &out), ("stderr", &err)] {
            assert!(
                !hay.contains(s.as_str()),
                "import {what}: a key is in the {where_}"
            );
        }
    }
    // The manifest validates (also with the CLI) and matches the file.
    run_ok(Command::new(netman_bin()).arg("validate").arg(&yaml));
    let m = netman::manifest::load(&yaml)
        .unwrap_or_else(|e| panic!("import {what}: the manifest does not load: {e}\n{text}"));
    assert_eq!(m.name, want.deployment, "{what}");
    assert_eq!(m.interface.name, want.ifname, "{what}");
    let addrs: Vec<String> = m
        .interface
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addrs, want.addresses, "{what}");
    assert_eq!(m.interface.listen_port, want.listen_port, "{what}");
    assert_eq!(m.interface.mtu, want.mtu, "{what}");
    // wg-quick's `Table = off` is carried over (issue 13), not noted.
    if want.text.contains("Table = off") {
        assert_eq!(
            m.interface.table,
            Some(netman::manifest::RouteTable::Off),
            "{what}"
        );
        assert!(
            !err.contains("Table = off"),
            "import {what}: Table noted:\n{err}"
        );
    }
    let key_file = &m.interface.private_key_file;
    assert_eq!(
        key_file,
        &out_dir.join(format!("keys/{}.key", want.deployment)),
        "{what}"
    );
    assert_eq!(mode(key_file), 0o600, "{what}: {}", key_file.display());
    assert_eq!(
        std::fs::read_to_string(key_file).expect("read key").trim(),
        want.private_key,
        "{what}: private key file"
    );
    assert_eq!(m.forwarding, want.forwarding, "{what}: forwarding\n{text}");
    let rules: Vec<String> = m
        .firewall
        .chains
        .iter()
        .flat_map(|c| {
            c.rules
                .iter()
                .map(move |r| format!("{}: {}", c.name, r.text))
        })
        .collect();
    assert_eq!(rules, want.rules, "{what}: firewall rules\n{text}");
    assert!(m.firewall.insert.is_empty(), "{what}: inserted rules");
    let names: Vec<&str> = m.peers.iter().map(|p| p.name.as_str()).collect();
    let want_names: Vec<&str> = want.peers.iter().map(|p| p.name).collect();
    assert_eq!(names, want_names, "{what}: peer names\n{text}");
    for (mp, wp) in m.peers.iter().zip(&want.peers) {
        let ctx = format!("{what}: peer {}", wp.name);
        assert_eq!(mp.public_key.to_base64(), wp.public_key, "{ctx}");
        assert_eq!(
            mp.endpoint.as_ref().map(ToString::to_string).as_deref(),
            wp.endpoint,
            "{ctx}"
        );
        let ips: Vec<String> = mp.allowed_ips.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, wp.allowed_ips, "{ctx}");
        assert_eq!(mp.persistent_keepalive, wp.keepalive, "{ctx}");
        match (&mp.preshared_key_file, &wp.psk) {
            (None, None) => {}
            (Some(f), Some(psk)) => {
                assert_eq!(
                    f,
                    &out_dir.join(format!("keys/{}-{}.psk", want.deployment, wp.name)),
                    "{ctx}"
                );
                assert_eq!(mode(f), 0o600, "{ctx}: {}", f.display());
                assert_eq!(
                    std::fs::read_to_string(f).expect("read psk").trim(),
                    psk,
                    "{ctx}: preshared key file"
                );
            }
            (got, _) => panic!("{ctx}: preshared_key_file {got:?}, expected {:?}", wp.psk),
        }
    }
}

#[test]
fn import_round_trips_real_world_wg_quick_files() {
    let ns = NetNs::new("imprt");
    let dir = TempDir::new("imprt");

    // A hub with several peers, v4 + v6, MTU, scripts and ignored keys.
    let (hub, hub_pub) = key();
    let (_, alice) = key();
    let (_, branch) = key();
    let (_, third) = key();
    let hub_conf = WantConf {
        file: "wg0.conf",
        text: format!(
            "# wg0: hub of the office VPN\n\
             [Interface]\n\
             Address = 10.8.0.1/24, fd42:42:42::1/64\n\
             ListenPort = 51820\n\
             PrivateKey = {hub}\n\
             MTU = 1380\n\
             SaveConfig = false\n\
             Table = off\n\
             PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE\n\
             PostDown = iptables -D FORWARD -i %i -j ACCEPT; iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE\n\
             \n\
             # alice-laptop\n\
             [Peer]\n\
             PublicKey = {alice}\n\
             AllowedIPs = 10.8.0.2/32, fd42:42:42::2/128\n\
             \n\
             [Peer]\n\
             # Name = Branch Office #2\n\
             PublicKey = {branch}\n\
             Endpoint = branch.example.net:51820\n\
             AllowedIPs = 10.8.0.3/32, 192.168.20.5/24\n\
             PersistentKeepalive = 25\n\
             \n\
             [Peer]\n\
             PublicKey = {third}\n\
             AllowedIPs = 10.8.0.4/32\n"
        ),
        name_arg: None,
        deployment: "wg0",
        ifname: "wg0",
        addresses: &["10.8.0.1/24", "fd42:42:42::1/64"],
        listen_port: Some(51820),
        mtu: 1380,
        private_key: hub.clone(),
        peers: vec![
            WantPeer {
                name: "alice-laptop",
                public_key: alice,
                endpoint: None,
                allowed_ips: &["10.8.0.2/32", "fd42:42:42::2/128"],
                keepalive: None,
                psk: None,
            },
            WantPeer {
                name: "branch-office-2",
                public_key: branch,
                endpoint: Some("branch.example.net:51820"),
                allowed_ips: &["10.8.0.3/32", "192.168.20.0/24"],
                keepalive: Some(25),
                psk: None,
            },
            WantPeer {
                name: "peer-3",
                public_key: third,
                endpoint: None,
                allowed_ips: &["10.8.0.4/32"],
                keepalive: None,
                psk: None,
            },
        ],
        forwarding: true,
        rules: &[
            r#"forward: meta nfproto ipv4 iifname "wg0" accept"#,
            r#"postrouting: meta nfproto ipv4 oifname "eth0" masquerade"#,
        ],
        notes: &[
            r#"line 9: PostUp iptables -A FORWARD -i %i -j ACCEPT: not executed; imported into firewall chain forward: meta nfproto ipv4 iifname "wg0" accept"#,
            r#"line 9: PostUp iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE: not executed; imported into firewall chain postrouting: meta nfproto ipv4 oifname "eth0" masquerade"#,
            "line 10: PostDown iptables -D FORWARD -i %i -j ACCEPT: not executed; understood as the undo of line 9",
            "line 10: PostDown iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE: not executed; understood as the undo of line 9",
            "line 9: FORWARD rules need a host that forwards: imported as `forwarding: true`",
            "SaveConfig ignored",
            "AllowedIPs 192.168.20.5/24 has host bits set; imported as 192.168.20.0/24",
        ],
    };

    // A road-warrior client: DNS, everything through the tunnel, v6 endpoint.
    let (client, _) = key();
    let client_conf = WantConf {
        file: "client.conf",
        text: format!(
            "[Interface]\n\
             PrivateKey = {client}\n\
             Address = 10.8.0.2/32, fd42:42:42::2/128\n\
             DNS = 10.8.0.1, fd42:42:42::1\n\
             \n\
             [Peer]\n\
             PublicKey = {hub_pub}\n\
             Endpoint = [2001:db8::1]:51820\n\
             AllowedIPs = 0.0.0.0/0, ::/0\n\
             PersistentKeepalive = 15\n"
        ),
        name_arg: Some("laptop"),
        deployment: "laptop",
        ifname: "client",
        addresses: &["10.8.0.2/32", "fd42:42:42::2/128"],
        listen_port: None,
        mtu: 1420,
        private_key: client,
        peers: vec![WantPeer {
            name: "peer-1",
            public_key: hub_pub.clone(),
            endpoint: Some("[2001:db8::1]:51820"),
            allowed_ips: &["0.0.0.0/0", "::/0"],
            keepalive: Some(15),
            psk: None,
        }],
        forwarding: false,
        rules: &[],
        notes: &[
            "DNS = 10.8.0.1, fd42:42:42::1 is not managed by netman",
            "AllowedIPs 0.0.0.0/0 routes everything through the tunnel",
            "AllowedIPs ::/0 routes everything through the tunnel",
        ],
    };

    // Site to site with preshared keys (one per peer, each its own file).
    let (site, _) = key();
    let (_, pb) = key();
    let (_, pc) = key();
    let (psk_b, psk_c) = (netman_genkey(), netman_genkey());
    let psk_conf = WantConf {
        file: "site-a.conf",
        text: format!(
            "[Interface]\n\
             PrivateKey = {site}\n\
             Address = 10.9.0.1/24\n\
             ListenPort = 51821\n\
             \n\
             [Peer]\n\
             PublicKey = {pb}\n\
             PresharedKey = {psk_b}\n\
             Endpoint = 192.0.2.2:51820\n\
             AllowedIPs = 10.9.0.2/32, 172.18.2.0/24\n\
             \n\
             [Peer]\n\
             PublicKey = {pc}\n\
             PresharedKey = {psk_c}\n\
             Endpoint = 198.51.100.3:51820\n\
             AllowedIPs = 10.9.0.3/32\n"
        ),
        name_arg: None,
        deployment: "site-a",
        ifname: "site-a",
        addresses: &["10.9.0.1/24"],
        listen_port: Some(51821),
        mtu: 1420,
        private_key: site,
        peers: vec![
            WantPeer {
                name: "peer-1",
                public_key: pb,
                endpoint: Some("192.0.2.2:51820"),
                allowed_ips: &["10.9.0.2/32", "172.18.2.0/24"],
                keepalive: None,
                psk: Some(psk_b),
            },
            WantPeer {
                name: "peer-2",
                public_key: pc,
                endpoint: Some("198.51.100.3:51820"),
                allowed_ips: &["10.9.0.3/32"],
                keepalive: None,
                psk: Some(psk_c),
            },
        ],
        forwarding: false,
        rules: &[],
        notes: &[],
    };

    // Peers named by comments: above the section, inside it, and a
    // trailing comment on a value line.
    let (office, _) = key();
    let (_, berlin) = key();
    let (_, paris) = key();
    let (_, rome) = key();
    let comments_conf = WantConf {
        file: "office.conf",
        text: format!(
            "# Office gateway; each peer is named by the comment above it.\n\
             [Interface]\n\
             PrivateKey = {office}\n\
             Address = 10.7.0.1/24\n\
             ListenPort = 51822\n\
             \n\
             ### Site B (Berlin) ###\n\
             [Peer]\n\
             PublicKey = {berlin}\n\
             Endpoint = 203.0.113.2:51820\n\
             AllowedIPs = 10.7.0.2/32, 192.168.2.0/24 # the Berlin LAN\n\
             \n\
             [Peer]\n\
             # Name = Paris\n\
             PublicKey = {paris}\n\
             AllowedIPs = 10.7.0.3/32\n\
             \n\
             # rome-dc\n\
             [Peer]\n\
             PublicKey = {rome}\n\
             AllowedIPs = 10.7.0.4/32\n\
             PersistentKeepalive = off\n"
        ),
        name_arg: Some("office"),
        deployment: "office",
        ifname: "office",
        addresses: &["10.7.0.1/24"],
        listen_port: Some(51822),
        mtu: 1420,
        private_key: office,
        peers: vec![
            WantPeer {
                name: "site-b-berlin",
                public_key: berlin,
                endpoint: Some("203.0.113.2:51820"),
                allowed_ips: &["10.7.0.2/32", "192.168.2.0/24"],
                keepalive: None,
                psk: None,
            },
            WantPeer {
                name: "paris",
                public_key: paris,
                endpoint: None,
                allowed_ips: &["10.7.0.3/32"],
                keepalive: None,
                psk: None,
            },
            WantPeer {
                name: "rome-dc",
                public_key: rome,
                endpoint: None,
                allowed_ips: &["10.7.0.4/32"],
                keepalive: None,
                psk: None,
            },
        ],
        forwarding: false,
        rules: &[],
        notes: &[],
    };

    for want in [&hub_conf, &client_conf, &psk_conf, &comments_conf] {
        check_import(&ns, &dir, want);
    }
}

#[test]
fn import_reports_scripts_without_running_them_and_never_overwrites() {
    require_tool("iptables", "the Debian package iptables");
    require_tool("nft", "the Debian package nftables");
    let ns = NetNs::new("imscr");
    let dir = TempDir::new("imscr");
    let (k, _) = key();
    let (_, p) = key();
    let psk = netman_genkey();
    let marker = |n: &str| dir.join(format!("{n}-ran"));
    let conf = dir.write(
        "wg0.conf",
        &format!(
            "[Interface]\n\
             Address = 10.5.0.1/24\n\
             ListenPort = 51820\n\
             PrivateKey = {k}\n\
             PreUp = touch {pre}; ip link add pwned0 type dummy\n\
             PostUp = iptables -A INPUT -s 203.0.113.7 -j DROP; nft add table inet pwned; touch {post}\n\
             PreDown = touch {predown}\n\
             PostDown = /usr/sbin/iptables -D INPUT -s 203.0.113.7 -j DROP; touch {postdown}\n\
             \n\
             [Peer]\n\
             PublicKey = {p}\n\
             PresharedKey = {psk}\n\
             AllowedIPs = 10.5.0.2/32\n",
            pre = marker("preup").display(),
            post = marker("postup").display(),
            predown = marker("predown").display(),
            postdown = marker("postdown").display(),
        ),
    );
    let conf = conf.to_str().expect("utf-8 path");
    let out_dir = dir.join("out");
    let o = out_dir.to_str().expect("utf-8 path");
    let (code, out, err) = import(&ns, &[conf, "-o", o]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");

    // Reported, one note per command, firewall commands singled out ...
    for (script, cmd, firewall) in [
        (
            "PreUp",
            format!("touch {}", marker("preup").display()),
            false,
        ),
        ("PreUp", "ip link add pwned0 type dummy".to_string(), false),
        (
            "PostUp",
            "iptables -A INPUT -s 203.0.113.7 -j DROP".to_string(),
            true,
        ),
        ("PostUp", "nft add table inet pwned".to_string(), true),
        (
            "PostUp",
            format!("touch {}", marker("postup").display()),
            false,
        ),
        (
            "PreDown",
            format!("touch {}", marker("predown").display()),
            false,
        ),
        (
            "PostDown",
            "/usr/sbin/iptables -D INPUT -s 203.0.113.7 -j DROP".to_string(),
            true,
        ),
    ] {
        // A firewall command import does not translate says why.
        let (what, end) = if firewall {
            (
                "firewall command, not executed, not translated (",
                format!("); declare it under `firewall:`: {cmd}"),
            )
        } else {
            ("command, not executed: ", cmd.clone())
        };
        let want = format!("{script} {what}");
        assert!(
            err.lines()
                .any(|l| is_note(l) && l.contains(&want) && l.ends_with(&end)),
            "no note {want:?}...{end:?} in:\n{err}"
        );
    }
    // ... and not run: no marker file, no link, no iptables rule, no table.
    for n in ["preup", "postup", "predown", "postdown"] {
        assert!(!marker(n).exists(), "the {n} script ran");
    }
    assert!(
        !ns.ip_try(&["link", "show", "pwned0"]).status.success(),
        "PreUp created a link"
    );
    let rules = run_ok(ns.cmd("iptables").args(["-S", "INPUT"]));
    assert!(!rules.contains("203.0.113.7"), "PostUp ran:\n{rules}");
    let ruleset = run_ok(ns.cmd("nft").args(["list", "tables"]));
    assert!(!ruleset.contains("pwned"), "PostUp ran:\n{ruleset}");

    // Secrets in their own 0600 files.
    let yaml = out_dir.join("wg0.yaml");
    let key_file = out_dir.join("keys/wg0.key");
    let psk_file = out_dir.join("keys/wg0-peer-1.psk");
    for f in [&key_file, &psk_file] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(std::fs::read_to_string(&psk_file).expect("psk").trim(), psk);
    let manifest_text = std::fs::read_to_string(&yaml).expect("manifest");
    assert!(!manifest_text.contains(&k) && !manifest_text.contains(&psk));
    run_ok(Command::new(netman_bin()).arg("validate").arg(&yaml));

    // Never overwrites: neither the whole set ...
    let before: Vec<(PathBuf, Vec<u8>, SystemTime)> = [&yaml, &key_file, &psk_file]
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).expect("stat");
            (
                f.to_path_buf(),
                std::fs::read(f).expect("read"),
                meta.modified().expect("mtime"),
            )
        })
        .collect();
    let (code, out2, err2) = import(&ns, &[conf, "-o", o]);
    assert_ne!(code, 0, "a second import succeeded: {out2}");
    assert!(
        err2.contains(&format!("{} exists; not overwriting", yaml.display())),
        "{err2}"
    );
    for (f, bytes, mtime) in &before {
        let meta = std::fs::metadata(f).expect("stat");
        assert_eq!(&std::fs::read(f).expect("read"), bytes, "{}", f.display());
        assert_eq!(&meta.modified().expect("mtime"), mtime, "{}", f.display());
    }
    // ... nor a lone key file of the same name (and then writes nothing).
    std::fs::remove_file(&yaml).expect("remove manifest");
    let (code, _, err3) = import(&ns, &[conf, "-o", o]);
    assert_ne!(code, 0);
    assert!(
        err3.contains(&format!("{} exists; not overwriting", key_file.display())),
        "{err3}"
    );
    assert!(
        !yaml.exists(),
        "import wrote the manifest next to an old key"
    );
    assert_eq!(std::fs::read(&key_file).expect("key"), before[1].1);
    // Another name is another set of files.
    let (code, out4, err4) = import(&ns, &[conf, "-o", o, "--name", "hub"]);
    assert_eq!(code, 0, "{out4}{err4}");
    assert!(out_dir.join("hub.yaml").is_file() && out_dir.join("keys/hub.key").is_file());
    for n in ["preup", "postup", "predown", "postdown"] {
        assert!(!marker(n).exists(), "the {n} script ran");
    }
}

/// A wg-quick file often keeps settings commented out (`#DNS = ...`,
/// `#PersistentKeepalive = 25`). Such a line is not a name for the peer
/// that follows: only `# Name = ...` or a plain `# name` comment is.
#[test]
fn import_does_not_name_peers_after_commented_out_settings() {
    let ns = NetNs::new("imcmt");
    let dir = TempDir::new("imcmt");
    let (k, _) = key();
    let (_, p1) = key();
    let (_, p2) = key();
    let conf = dir.write(
        "wg0.conf",
        &format!(
            "[Interface]\n\
             PrivateKey = {k}\n\
             Address = 10.6.0.1/24\n\
             ListenPort = 51820\n\
             # DNS = 1.1.1.1\n\
             \n\
             [Peer]\n\
             PublicKey = {p1}\n\
             AllowedIPs = 10.6.0.2/32\n\
             #PersistentKeepalive = 25\n\
             \n\
             [Peer]\n\
             PublicKey = {p2}\n\
             AllowedIPs = 10.6.0.3/32\n"
        ),
    );
    let out_dir = dir.join("out");
    let (code, out, err) = import(
        &ns,
        &[
            conf.to_str().expect("utf-8"),
            "-o",
            out_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let m = netman::manifest::load(&out_dir.join("wg0.yaml")).expect("imported manifest loads");
    let names: Vec<&str> = m.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["peer-1", "peer-2"],
        "commented-out settings became peer names"
    );
}

/// `--name` becomes file names (`NAME.yaml`, `keys/NAME.key`): a name that
/// is not a valid deployment name must be refused before anything is
/// written (and must never write outside the output directory).
#[test]
fn import_refuses_an_invalid_name_before_writing_anything() {
    let ns = NetNs::new("imnam");
    let dir = TempDir::new("imnam");
    let (k, _) = key();
    let conf = dir.write(
        "wg0.conf",
        &format!("[Interface]\nPrivateKey = {k}\nAddress = 10.6.0.1/24\n"),
    );
    let out_dir = dir.join("a/b/out");
    let mut problems = Vec::new();
    for name in ["../../escape", "Site A"] {
        let (code, out, err) = import(
            &ns,
            &[
                conf.to_str().expect("utf-8"),
                "-o",
                out_dir.to_str().expect("utf-8"),
                "--name",
                name,
            ],
        );
        let written: Vec<String> = walk(&dir.path)
            .into_iter()
            .filter(|p| p != &conf)
            .map(|p| p.display().to_string())
            .collect();
        if code == 0 || !written.is_empty() {
            problems.push(format!(
                "--name {name:?}: exit {code}, wrote {written:?}\n  stdout: {}  stderr: {}",
                out.trim_end(),
                err.trim_end()
            ));
        }
        for p in walk(&dir.path).into_iter().filter(|p| p != &conf) {
            let _ = std::fs::remove_file(p);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The strongest check: the wg-quick files of a hub and of a road-warrior
/// client (DNS, everything through the tunnel, preshared key), imported in
/// their namespaces and applied as they are, give a working tunnel, also
/// through the client's imported default route.
#[test]
fn imported_wg_quick_configs_of_two_sites_carry_traffic() {
    require_tool("iptables", "the Debian package iptables");
    // The hub's FORWARD and MASQUERADE become rules of netman's table.
    require_tool("nft", "the Debian package nftables");
    let hub = Site::new("ihub", "hub");
    let rw = Site::new("irw", "roadwarrior");
    underlay(&hub.ns, &rw.ns);
    // A LAN address behind the hub, reached through the client's 0.0.0.0/0.
    hub.ns.ip(&["addr", "add", "172.16.5.1/32", "dev", "lo"]);
    let psk = netman_genkey();
    let (_, laptop) = key();
    let marker = hub.dir.join("postup-ran");
    let hub_conf = hub.write(
        "wg0.conf",
        &format!(
            "# hub\n\
             [Interface]\n\
             Address = 10.20.0.1/24\n\
             ListenPort = {WG_PORT}\n\
             PrivateKey = {}\n\
             SaveConfig = false\n\
             PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o ul0 -j MASQUERADE; touch {m}\n\
             PostDown = iptables -D FORWARD -i %i -j ACCEPT; iptables -t nat -D POSTROUTING -o ul0 -j MASQUERADE\n\
             \n\
             # road-warrior\n\
             [Peer]\n\
             PublicKey = {}\n\
             PresharedKey = {psk}\n\
             AllowedIPs = 10.20.0.2/32\n\
             \n\
             [Peer]\n\
             # Name = laptop (offline)\n\
             PublicKey = {laptop}\n\
             AllowedIPs = 10.20.0.3/32\n",
            hub.key.private,
            rw.key.public,
            m = marker.display(),
        ),
    );
    let rw_conf = rw.write(
        "wg-client.conf",
        &format!(
            "[Interface]\n\
             PrivateKey = {}\n\
             Address = 10.20.0.2/32\n\
             DNS = 10.20.0.1\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             PresharedKey = {psk}\n\
             Endpoint = 192.0.2.1:{WG_PORT}\n\
             AllowedIPs = 0.0.0.0/0, ::/0\n\
             PersistentKeepalive = 25\n",
            rw.key.private, hub.key.public,
        ),
    );
    let (hub_yaml, _) = import_site(&hub, &hub_conf);
    let (rw_yaml, _) = import_site(&rw, &rw_conf);

    let out = hub.apply(&hub_yaml);
    assert!(has_line(&out, "+ link wg0 (tun, mtu 1420)"), "{out}");
    assert!(has_line(&out, "applied: deployment hub"), "{out}");
    let out = rw.apply(&rw_yaml);
    assert!(has_line(&out, "+ link wg-client (tun, mtu 1420)"), "{out}");
    // A full tunnel: the default routes go into table 51820 (no listen
    // port), with netman's policy rules (issue 13).
    assert!(
        has_line(&out, "+ route 0.0.0.0/0 dev wg-client table 51820")
            && has_line(
                &out,
                "+ policy rule ipv4 32765: not fwmark 51820 lookup 51820"
            ),
        "the client's default route is not applied:\n{out}"
    );

    // The client initiates (the hub has no endpoint for it).
    assert!(
        wait_ping(&rw.ns, "10.20.0.1", Duration::from_secs(15)),
        "no tunnel from the imported client to the imported hub; hub log:\n{}\nclient log:\n{}",
        hub.log(),
        rw.log()
    );
    ping_ok(&rw.ns, "10.20.0.1", 3);
    ping_ok(&hub.ns, "10.20.0.2", 3);
    // Through the imported 0.0.0.0/0: the hub's LAN address.
    ping_ok(&rw.ns, "172.16.5.1", 3);

    let h = hub.engine();
    let p = peer_of(&h, "road-warrior");
    assert_eq!(p["preshared_key"], true, "{p:#}");
    assert!(
        u64_of(&p["rx_bytes"]) > 0 && u64_of(&p["tx_bytes"]) > 0,
        "{p:#}"
    );
    let now = unix_now();
    let hs = u64_of(&p["latest_handshake"]);
    assert!(now.saturating_sub(hs) <= 60, "handshake {hs}, now {now}");
    assert_eq!(
        peer_of(&h, "laptop-offline")["latest_handshake"],
        serde_json::Value::Null
    );
    let c = rw.engine();
    assert_eq!(peer_of(&c, "peer-1")["preshared_key"], true, "{c:#}");

    // The hub's scripts never ran, neither at import nor at apply.
    assert!(!marker.exists(), "the PostUp script ran");
    let rules = run_ok(hub.ns.cmd("iptables").args(["-S"]))
        + &run_ok(hub.ns.cmd("iptables").args(["-t", "nat", "-S"]));
    assert!(
        !rules.contains("wg0") && !rules.contains("MASQUERADE"),
        "PostUp ran:\n{rules}"
    );
}

/// The address a TCP client in `client` is seen from by a listener on
/// `listen` in `server` (both namespaces), or `None` when no connection
/// arrives in time. Bounded: the listener polls with a deadline.
fn tcp_source_seen(server: &NetNs, listen: SocketAddr, client: &NetNs) -> Option<IpAddr> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = PathBuf::from("/var/run/netns").join(&server.name);
    let accepting = std::thread::spawn(move || -> Option<IpAddr> {
        let file = std::fs::File::open(&path).ok()?;
        // SAFETY: setns on a namespace fd we hold open; it changes only
        // this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let l = std::net::TcpListener::bind(listen).ok()?;
        l.set_nonblocking(true).ok()?;
        let _ = ready_tx.send(());
        let mut seen = None;
        wait_until(Duration::from_secs(10), || {
            seen = l.accept().ok().map(|(_, peer)| peer.ip());
            seen.is_some()
        });
        seen
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).ok()?;
    let connected = in_netns(client, move || {
        TcpStream::connect_timeout(&listen, Duration::from_secs(5)).is_ok()
    });
    let seen = accepting.join().ok().flatten();
    connected.then_some(seen).flatten()
}

/// The firewall half of a wg-quick hub (FORWARD accepts in and out of the
/// tunnel, MASQUERADE out of the uplink, for iptables and ip6tables) is
/// carried over: the hub imported from the file and applied with netman
/// forwards a branch peer's traffic to a host on its uplink side, and that
/// host sees the hub's uplink address as the source (it has no route back
/// to the tunnel's prefixes, so without the NAT no reply would come back).
/// Nothing from the scripts runs; `down` takes it all away again.
#[test]
fn imported_hub_forwards_and_masquerades_like_wg_quick() {
    require_tool("nft", "the Debian package nftables");
    require_tool("iptables", "the Debian package iptables");
    let hub = Site::new("ifwhub", "hub");
    let branch = Site::new("ifwbr", "branch");
    // The host on the hub's uplink side (the "internet").
    let far = NetNs::new("ifwfar");
    underlay(&hub.ns, &branch.ns);
    // The hub's uplink, `eth0` in the guides.
    veth(
        &hub.ns,
        "up0",
        Some("198.51.100.1/24"),
        &far,
        "up0",
        Some("198.51.100.2/24"),
    );
    hub.ns
        .ip(&["addr", "add", "2001:db8:51::1/64", "dev", "up0", "nodad"]);
    far.ip(&["addr", "add", "2001:db8:51::2/64", "dev", "up0", "nodad"]);
    let marker = hub.dir.join("postup-ran");
    let hub_conf = hub.write(
        "wg0.conf",
        &format!(
            "[Interface]\n\
             Address = 10.30.0.1/24, fd30::1/64\n\
             ListenPort = {WG_PORT}\n\
             PrivateKey = {}\n\
             PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -A FORWARD -o %i -j ACCEPT; iptables -t nat -A POSTROUTING -o up0 -j MASQUERADE\n\
             PostUp = ip6tables -A FORWARD -i %i -j ACCEPT; ip6tables -A FORWARD -o %i -j ACCEPT; ip6tables -t nat -A POSTROUTING -o up0 -j MASQUERADE; touch {m}\n\
             PostDown = iptables -D FORWARD -i %i -j ACCEPT; iptables -D FORWARD -o %i -j ACCEPT; iptables -t nat -D POSTROUTING -o up0 -j MASQUERADE\n\
             PostDown = ip6tables -D FORWARD -i %i -j ACCEPT; ip6tables -D FORWARD -o %i -j ACCEPT; ip6tables -t nat -D POSTROUTING -o up0 -j MASQUERADE\n\
             \n\
             # branch\n\
             [Peer]\n\
             PublicKey = {}\n\
             AllowedIPs = 10.30.0.2/32, fd30::2/128\n",
            hub.key.private,
            branch.key.public,
            m = marker.display(),
        ),
    );
    let branch_conf = branch.write(
        "wg0.conf",
        &format!(
            "[Interface]\n\
             PrivateKey = {}\n\
             Address = 10.30.0.2/32, fd30::2/128\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = 192.0.2.1:{WG_PORT}\n\
             AllowedIPs = 10.30.0.0/24, fd30::/64, 198.51.100.0/24, 2001:db8:51::/64\n\
             PersistentKeepalive = 25\n",
            branch.key.private, hub.key.public,
        ),
    );
    // What the hub's forwarding sysctls were before netman (a new
    // namespace copies IPv4's from the host's): `down` puts them back.
    let sysctls = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];
    let before: Vec<String> = sysctls
        .iter()
        .map(|key| run_ok(hub.ns.cmd("sysctl").args(["-n", key])))
        .collect();
    let (hub_yaml, hub_notes) = import_site(&hub, &hub_conf);
    let (branch_yaml, _) = import_site(&branch, &branch_conf);
    let hub_text = std::fs::read_to_string(&hub_yaml).expect("read hub manifest");

    hub.apply(&hub_yaml);
    branch.apply(&branch_yaml);
    assert!(
        wait_ping(&branch.ns, "10.30.0.1", Duration::from_secs(15)),
        "no tunnel from the branch to the hub; hub log:\n{}\nbranch log:\n{}",
        hub.log(),
        branch.log()
    );
    // Through the hub to the far host, which has no route to 10.30.0.0/24
    // or fd30::/64: only the hub's NAT brings the replies back.
    for (target, hub_uplink) in [
        ("198.51.100.2", "198.51.100.1"),
        ("2001:db8:51::2", "2001:db8:51::1"),
    ] {
        assert!(
            wait_ping(&branch.ns, target, Duration::from_secs(10)),
            "the branch cannot reach {target} through the imported hub:\n{hub_text}\nhub notes:\n{hub_notes}\nhub ruleset:\n{}",
            text(&run(hub.ns.cmd("nft").args(["list", "ruleset"])).stdout)
        );
        ping_ok(&branch.ns, target, 3);
        let listen = SocketAddr::new(target.parse().expect("address"), 7007);
        let seen = tcp_source_seen(&far, listen, &branch.ns);
        assert_eq!(
            seen,
            Some(hub_uplink.parse().expect("address")),
            "the far host does not see the hub's uplink address as the source"
        );
    }

    // Nothing of the scripts ran: no marker, no iptables rule.
    assert!(!marker.exists(), "the PostUp script ran");
    for bin in ["iptables", "ip6tables"] {
        let rules = run_ok(hub.ns.cmd(bin).args(["-S"]))
            + &run_ok(hub.ns.cmd(bin).args(["-t", "nat", "-S"]));
        assert!(
            !rules.contains("wg0") && !rules.contains("MASQUERADE"),
            "{bin} ran:\n{rules}"
        );
    }

    // `down` takes the forwarding and the NAT away with the tunnel.
    hub.nm().ok(&["down", "hub"]);
    let tables = run_ok(hub.ns.cmd("nft").args(["list", "tables"]));
    assert!(!tables.contains("netman"), "{tables}");
    for (key, was) in sysctls.iter().zip(&before) {
        let v = run_ok(hub.ns.cmd("sysctl").args(["-n", key]));
        assert_eq!(v.trim(), was.trim(), "{key} after down");
    }
}

/// The manifests import writes for the golden wg-quick hubs
/// (`tests/golden/import/`) pass nft's own check: `netman diff` in a fresh
/// namespace hands the exact transaction it would run to `nft --check`,
/// and plans every imported rule.
#[test]
fn imported_golden_hub_manifests_pass_nft_check() {
    require_tool("nft", "the Debian package nftables");
    let ns = NetNs::new("imnft");
    let dir = TempDir::new("imnft");
    let (_, cases) = golden_dirs("import");
    let mut rules_planned = 0;
    for case in &cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .expect("case name");
        let conf = dir.write(
            &format!("{name}/wg0.conf"),
            &std::fs::read_to_string(case.join("wg0.conf")).expect("read wg0.conf"),
        );
        let out_dir = dir.join(format!("{name}/out"));
        let (code, out, err) = import(
            &ns,
            &[
                conf.to_str().expect("utf-8"),
                "-o",
                out_dir.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, 0, "import {name}: {out}{err}");
        let yaml = out_dir.join("wg0.yaml");
        let m = netman::manifest::load(&yaml).expect("imported manifest loads");
        let nm = Netman::new(&ns, dir.join(format!("{name}/state")));
        let (code, plan, err) = nm.out(&["diff", yaml.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "diff {name}: changes expected\n{plan}{err}");
        for c in &m.firewall.chains {
            for r in &c.rules {
                let line = format!("+ rule {}: {}", c.name, r.text);
                assert!(has_line(&plan, &line), "{name}: no {line:?} in\n{plan}");
                rules_planned += 1;
            }
        }
        if m.forwarding {
            assert!(
                plan.contains("sysctl net.ipv4.ip_forward"),
                "{name}: forwarding not planned\n{plan}"
            );
        }
    }
    assert!(rules_planned >= 10, "only {rules_planned} rules planned");
}

// ---------------------------------------------------------------------------
// 3. Metrics

#[test]
fn metrics_report_traffic_handshakes_drops_and_reconcile_counters() {
    let (a, b, ma, mb) = pair("met", &metrics_at(METRICS));
    let m = addr(METRICS);
    a.apply(&ma);
    b.apply(&mb);
    assert!(
        wait_until(Duration::from_secs(5), || port_open(&a.ns, m)),
        "no metrics endpoint on {METRICS} in {}; log:\n{}",
        a.ns.name,
        a.log()
    );
    // Only in A's namespace: B's loopback has nothing there.
    assert!(!port_open(&b.ns, m));
    let peer = [("deployment", "site-a"), ("peer", "site-b")];

    // Before any traffic.
    let (head, body) = http_get(&a.ns, m, "/metrics").expect("scrape");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("content-type: application/openmetrics-text")),
        "{head}"
    );
    assert_eq!(body.lines().last(), Some("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE netman_peer_receive_bytes counter"),
        "{body}"
    );
    assert_eq!(
        metric(&body, "netman_peers", &[("deployment", "site-a")]),
        1
    );
    assert_eq!(metric(&body, "netman_peer_receive_bytes_total", &peer), 0);
    assert_eq!(
        metric(&body, "netman_peer_latest_handshake_seconds", &peer),
        0
    );
    assert!(
        sample(
            &body,
            "netman_peer_transmit_bytes_total",
            &[("public_key", b.key.public.as_str())]
        )
        .is_some(),
        "the peer's public key is not a label:\n{body}"
    );
    let (head, _) = http_get(&a.ns, m, "/").expect("GET /");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Traffic (A initiates), and drops: 10.10.0.9 is in nm0's prefix but
    // in no peer's allowed IPs.
    assert!(
        wait_ping(&a.ns, "10.10.0.2", Duration::from_secs(10)),
        "no tunnel"
    );
    ping_ok(&a.ns, "10.10.0.2", 3);
    let lost = ping(&a.ns, "10.10.0.9", 2, "0.2");
    assert_eq!(lost.received, 0, "{}", lost.output);

    // The scrape agrees with `status --output json` (taken around it).
    let mut last = String::new();
    let consistent = wait_until(Duration::from_secs(5), || {
        let before = a.engine();
        let body = scrape(&a.ns, m);
        let after = a.engine();
        if before["peers"] != after["peers"] || before["drops"] != after["drops"] {
            return false;
        }
        let p = peer_of(&after, "site-b");
        let ok = [
            ("netman_peer_receive_bytes_total", &p["rx_bytes"]),
            ("netman_peer_transmit_bytes_total", &p["tx_bytes"]),
            ("netman_peer_handshakes_total", &p["handshakes"]),
            (
                "netman_peer_handshake_attempts_total",
                &p["handshake_attempts"],
            ),
            (
                "netman_peer_latest_handshake_seconds",
                &p["latest_handshake"],
            ),
        ]
        .iter()
        .all(|(name, v)| sample(&body, name, &peer) == v.as_u64().map(|n| n as f64))
            && sample(
                &body,
                "netman_packets_dropped_total",
                &[("deployment", "site-a"), ("reason", "no_route")],
            ) == after["drops"]["no_route"].as_u64().map(|n| n as f64);
        last = format!("{after:#}\n{body}");
        ok
    });
    assert!(consistent, "metrics and status disagree:\n{last}");
    let body = scrape(&a.ns, m);
    assert!(metric(&body, "netman_peer_receive_bytes_total", &peer) > 0);
    assert!(metric(&body, "netman_peer_transmit_bytes_total", &peer) > 0);
    assert!(metric(&body, "netman_peer_handshakes_total", &peer) >= 1);
    assert!(metric(&body, "netman_peer_handshake_attempts_total", &peer) >= 1);
    let now = unix_now();
    let hs = metric(&body, "netman_peer_latest_handshake_seconds", &peer);
    assert!(
        hs <= now + 1 && now - hs <= 60,
        "latest handshake {hs} is not recent (now {now})"
    );
    let no_route = [("deployment", "site-a"), ("reason", "no_route")];
    assert!(
        metric(&body, "netman_packets_dropped_total", &no_route) >= 2,
        "{body}"
    );
    let dep = [("deployment", "site-a")];
    assert_eq!(
        metric(&body, "netman_reconcile_drift_repairs_total", &dep),
        0
    );
    assert_eq!(metric(&body, "netman_reconcile_failures_total", &dep), 0);

    // Drift: delete an owned route by hand; the watcher puts it back and
    // the repair counter grows.
    a.ns.ip(&["route", "del", "172.18.2.0/24", "dev", "nm0"]);
    let mut body = String::new();
    let repaired = wait_until(Duration::from_secs(10), || {
        body = scrape(&a.ns, m);
        metric(&body, "netman_reconcile_drift_repairs_total", &dep) >= 1
    });
    assert!(
        repaired,
        "no drift repair counted:\n{body}\nlog:\n{}",
        a.log()
    );
    let routes = a.ns.ip(&["route", "show", "172.18.2.0/24"]);
    assert!(routes.contains("dev nm0"), "route not repaired: {routes}");
    let repairs = metric(&body, "netman_reconcile_drift_repairs_total", &dep);
    let applies = metric(&body, "netman_reconcile_applies_total", &dep);
    assert!(applies >= repairs, "{body}");
    let watch = &a.engine()["watch"];
    assert_eq!(u64_of(&watch["drift_repairs"]), repairs, "{watch:#}");
    assert_eq!(u64_of(&watch["applies"]), applies, "{watch:#}");
}

#[test]
fn metrics_endpoint_follows_metrics_listen_and_stops_without_it() {
    let s = Site::new("mmv", "site-a");
    let with = |listen: Option<&str>| {
        manifest(
            "site-a",
            "nm0",
            "10.10.0.1/24",
            WG_PORT,
            &s.key.private_file,
            NO_PEERS,
            &listen.map(metrics_at).unwrap_or_default(),
        )
    };
    let m1 = s.write("m1.yaml", &with(Some("127.0.0.1:9586")));
    let m2 = s.write("m2.yaml", &with(Some("127.0.0.1:9587")));
    let m3 = s.write("m3.yaml", &with(None));
    let (p1, p2) = (addr("127.0.0.1:9586"), addr("127.0.0.1:9587"));

    s.apply(&m1);
    let pid = s.pid_of("site-a");
    assert!(
        wait_until(Duration::from_secs(5), || port_open(&s.ns, p1)),
        "no endpoint on {p1}; log:\n{}",
        s.log()
    );
    assert!(!port_open(&s.ns, p2));

    let out = s.apply(&m2);
    assert!(
        has_line(&out, "~ engine metrics 127.0.0.1:9586 -> 127.0.0.1:9587"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || port_open(&s.ns, p2)
            && !port_open(&s.ns, p1)),
        "the endpoint did not move from {p1} to {p2}; log:\n{}",
        s.log()
    );
    assert!(
        scrape(&s.ns, p2).contains("netman_peers{deployment=\"site-a\"} 0"),
        "scrape of the moved endpoint"
    );

    let out = s.apply(&m3);
    assert!(
        has_line(&out, "~ engine metrics 127.0.0.1:9587 -> none"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || !port_open(&s.ns, p2)
            && !port_open(&s.ns, p1)),
        "the endpoint still serves after metrics was removed"
    );
    assert_eq!(s.engine()["config"]["metrics"], serde_json::Value::Null);
    // All of it live, in the same engine.
    assert_eq!(s.pid_of("site-a"), pid);
}

/// The usual next step after trying metrics on loopback: expose them to
/// the Prometheus server by widening `metrics.listen` to all addresses,
/// same port.
#[test]
fn metrics_listen_can_widen_to_all_addresses_on_the_same_port() {
    let s = Site::new("mwd", "site-a");
    let with = |listen: &str| {
        manifest(
            "site-a",
            "nm0",
            "10.10.0.1/24",
            WG_PORT,
            &s.key.private_file,
            NO_PEERS,
            &metrics_at(listen),
        )
    };
    let m1 = s.write("m1.yaml", &with("127.0.0.1:9586"));
    let m2 = s.write("m2.yaml", &with("0.0.0.0:9586"));
    s.apply(&m1);
    assert!(wait_until(Duration::from_secs(5), || port_open(
        &s.ns,
        addr("127.0.0.1:9586")
    )));
    let out = s.apply(&m2);
    assert!(
        has_line(&out, "~ engine metrics 127.0.0.1:9586 -> 0.0.0.0:9586"),
        "{out}"
    );
    let served = wait_until(Duration::from_secs(3), || {
        port_open(&s.ns, addr("10.10.0.1:9586")) && port_open(&s.ns, addr("127.0.0.1:9586"))
    });
    assert!(
        served,
        "`apply` reported the move to 0.0.0.0:9586, but nothing serves there; engine log:\n{}",
        s.log()
    );
}

// ---------------------------------------------------------------------------
// 4. Least privilege

#[test]
fn engine_keeps_only_cap_net_admin_no_new_privs_and_is_not_dumpable() {
    require_tool("setpriv", "the Debian package util-linux");
    let s = Site::new("cap", "site-a");
    let kp = KeyPair::generate(&s.dir.path, "site-p");
    let ma = s.write_lone_site();
    // A privileged listen port keeps CAP_NET_BIND_SERVICE too.
    let mp = s.write(
        "site-p.yaml",
        &manifest(
            "site-p",
            "nm1",
            "10.11.0.1/24",
            500,
            &kp.private_file,
            NO_PEERS,
            "",
        ),
    );
    s.apply(&ma);
    s.apply(&mp);
    const NET_ADMIN: u64 = 1 << 12;
    const NET_BIND_SERVICE: u64 = 1 << 10;
    let pa = s.pid_of("site-a");
    let pp = s.pid_of("site-p");
    assert_eq!(
        u64_of(&s.engine_of("site-p").expect("site-p")["listen_port"]),
        500
    );
    for (pid, caps, what) in [
        (pa, NET_ADMIN, "site-a (port 51820)"),
        (pp, NET_ADMIN | NET_BIND_SERVICE, "site-p (port 500)"),
    ] {
        let st = proc_status(Path::new(&format!("/proc/{pid}/status")));
        assert_eq!(st.get("Uid").map(String::as_str), Some("0\t0\t0\t0"));
        let bad = privilege_violations(pid, caps);
        assert!(bad.is_empty(), "engine {what}:\n{}", bad.join("\n"));
    }

    // Not dumpable: a root process without CAP_SYS_PTRACE cannot look
    // into the engine, though it can into a dumpable process with fewer
    // capabilities than itself; full root still can.
    let control = Bg::spawn(
        "setpriv sleep",
        Command::new("setpriv").args(["--bounding-set=-all", "--inh-caps=-all", "sleep", "30"]),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/comm", control.pid()))
            .is_ok_and(|c| c.trim() == "sleep")
    }));
    let o = readlink_exe_without_ptrace(control.pid());
    assert!(
        o.status.success(),
        "the check itself does not work here: {}",
        text(&o.stderr)
    );
    for pid in [pa, pp] {
        let o = readlink_exe_without_ptrace(pid);
        assert!(
            !o.status.success() && text(&o.stdout).is_empty(),
            "engine {pid} is dumpable: /proc/{pid}/exe -> {}",
            text(&o.stdout)
        );
        let full = std::fs::read_link(format!("/proc/{pid}/exe")).expect("readlink as root");
        assert!(full.ends_with("netman"), "{}", full.display());
    }
}

/// Capabilities are per thread: every thread of the engine must have
/// dropped them, including the metrics endpoint's, which parses requests
/// from the network.
#[test]
fn every_engine_thread_drops_privileges_also_with_metrics() {
    let s = Site::new("capm", "site-a");
    let m = s.write(
        "site-a.yaml",
        &manifest(
            "site-a",
            "nm0",
            "10.10.0.1/24",
            WG_PORT,
            &s.key.private_file,
            NO_PEERS,
            &metrics_at(METRICS),
        ),
    );
    s.apply(&m);
    assert!(wait_until(Duration::from_secs(5), || port_open(
        &s.ns,
        addr(METRICS)
    )));
    let bad = privilege_violations(s.pid_of("site-a"), 1 << 12);
    assert!(
        bad.is_empty(),
        "threads of the engine keep privileges:\n{}",
        bad.join("\n")
    );
}

/// The control socket of a running engine, opened up by hand (directory
/// and socket), so a non-root user can connect.
fn open_up_control_socket(s: &Site) -> PathBuf {
    let sd = s.state_dir();
    let sock = sd.join(format!("{}.sock", s.deployment));
    assert_eq!(mode(&sd), 0o700, "{}", sd.display());
    assert_eq!(mode(&sock), 0o600, "{}", sock.display());
    let meta = std::fs::metadata(&sock).expect("stat socket");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    chmod(&sd, 0o755);
    chmod(&sock, 0o666);
    sock
}

/// `netman --state-dir SD status NAME` as uid/gid 65534 (no groups); with
/// `busy_cpu`, on that CPU only and at the lowest priority (see
/// `crowd_onto`).
fn status_as_nobody(s: &Site, busy_cpu: Option<usize>) -> (i32, String, String) {
    let mut cmd = s.ns.cmd("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        netman_bin(),
        "--state-dir",
        s.state_dir().to_str().expect("utf-8"),
        "status",
        &s.deployment,
        "--output",
        "json",
    ]);
    if let Some(cpu) = busy_cpu {
        // SAFETY: only raw syscalls (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                pin_to_cpu(0, cpu)?;
                if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = run(&mut cmd);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The first CPU this process may run on.
fn first_cpu() -> usize {
    // SAFETY: sched_getaffinity into a zeroed cpu_set_t of its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("no CPU allowed")
    }
}

/// Restrict thread (or process) `tid` (0: the caller) to `cpu`.
fn pin_to_cpu(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t with one CPU set, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A busy machine, as far as the engine `pid` and its callers are
/// concerned: every thread of the engine runs on `cpu` only, at a high
/// priority, so that a caller on the same CPU at a low priority is
/// preempted as soon as its connection wakes the engine up.
fn crowd_onto(pid: u32, cpu: usize) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list threads of {pid}: {e}"));
    for t in tasks.flatten() {
        let tid: libc::pid_t = t.file_name().to_string_lossy().parse().expect("thread id");
        pin_to_cpu(tid, cpu).unwrap_or_else(|e| panic!("pin thread {tid}: {e}"));
        // SAFETY: setpriority on a thread id of the engine.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10) };
        assert_eq!(rc, 0, "renice {tid}: {}", std::io::Error::last_os_error());
    }
}

/// Send one raw request line to `sock` from a thread whose (own, per
/// thread) credentials are uid/gid 65534; returns what came back.
fn raw_request_as_nobody(sock: &Path, line: &str) -> String {
    let (sock, line) = (sock.to_path_buf(), line.to_string());
    std::thread::spawn(move || {
        // SAFETY: raw set*id syscalls change only the calling thread's
        // credentials (glibc's wrappers would change every thread's); the
        // thread ends right after.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
        }
        let mut s = UnixStream::connect(&sock)
            .unwrap_or_else(|e| panic!("connect {} as nobody: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(line.as_bytes());
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    })
    .join()
    .expect("nobody thread")
}

#[test]
fn control_socket_is_root_only_and_the_engine_refuses_other_users() {
    require_tool("setpriv", "the Debian package util-linux");
    let s = Site::new("ctl", "site-a");
    let m = s.write_lone_site();
    s.apply(&m);
    let pid = s.pid_of("site-a");
    let sock = open_up_control_socket(&s);

    // The CLI as nobody learns nothing.
    let (code, out, err) = status_as_nobody(&s, None);
    assert_ne!(code, 0, "status as nobody succeeded: {out}");
    assert!(
        !out.contains(&s.key.public) && !err.contains(&s.key.public),
        "status as nobody shows the engine:\n{out}{err}"
    );
    // A raw `stop` from nobody is refused: the engine keeps running.
    let resp = raw_request_as_nobody(&sock, "{\"cmd\":\"stop\"}\n");
    assert!(
        resp.is_empty() || resp.contains("permission denied"),
        "{resp}"
    );
    // No window to wait out: the engine serves one control connection at
    // a time and hands its data plane a stop before it takes the next one,
    // which the data plane handles in order; so this status request (the
    // next connection) goes unanswered if that request stopped the engine.
    assert_eq!(
        s.pid_of("site-a"),
        pid,
        "the engine stopped on a request from nobody"
    );
    let refused = s
        .log()
        .lines()
        .filter(|l| {
            l.contains("refused a control connection from a non-root user")
                && l.contains(&NOBODY.to_string())
        })
        .count();
    assert!(refused >= 2, "refusals not logged:\n{}", s.log());
    // Root still works.
    assert_eq!(s.engine()["public_key"], s.key.public.as_str());
}

/// The engine reads a control request of at most
/// `control::MAX_REQUEST_BYTES`: a longer one (here a valid `status`
/// request padded with blanks, which JSON alone would accept) is refused
/// with an error answer, without waiting for the rest, and the engine
/// goes on serving; one just under the limit is answered.
#[test]
fn an_oversized_control_request_is_refused_and_the_engine_keeps_serving() {
    use std::io::BufRead;
    let cap = netman::engine::control::MAX_REQUEST_BYTES;
    let s = Site::new("ctlbig", "site-a");
    let m = s.write_lone_site();
    s.apply(&m);
    let pid = s.pid_of("site-a");
    let sock = s.state_dir().join("site-a.sock");
    // One raw request of `len` bytes (newline included); the answer line.
    let ask = |len: usize| -> String {
        let mut line = b"{\"cmd\":\"status\"}".to_vec();
        line.resize(len - 1, b' ');
        line.push(b'\n');
        let conn = UnixStream::connect(&sock)
            .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut w = conn.try_clone().expect("clone");
        // The engine may answer and close before all of it is written.
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&line);
        });
        let mut resp = String::new();
        let _ = std::io::BufReader::new(&conn).read_line(&mut resp);
        drop(conn);
        let _ = writer.join();
        resp
    };
    let resp = ask(cap + 1);
    assert!(
        resp.contains("\"result\":\"error\"") && resp.contains("too long"),
        "a request of {} bytes was not refused: {}",
        cap + 1,
        &resp[..resp.len().min(300)]
    );
    let resp = ask(cap);
    assert!(
        resp.contains("\"result\":\"status\""),
        "a request of {cap} bytes was not answered: {}",
        &resp[..resp.len().min(300)]
    );
    assert_eq!(s.pid_of("site-a"), pid, "the engine restarted");
    assert_eq!(s.engine()["public_key"], s.key.public.as_str());
}

/// The refusal is only useful if the caller gets to read it: every time,
/// not only when it wins the race against the engine, which answers and
/// closes the connection without waiting for the request (the caller's
/// write then fails with EPIPE and the answer is never read). On a busy
/// or single-CPU machine the engine wins that race: the caller and the
/// engine share one CPU here, the engine at a higher priority.
#[test]
fn every_refused_caller_gets_the_permission_denied_message() {
    require_tool("setpriv", "the Debian package util-linux");
    let s = Site::new("ctm", "site-a");
    let m = s.write_lone_site();
    s.apply(&m);
    open_up_control_socket(&s);
    let cpu = first_cpu();
    crowd_onto(s.pid_of("site-a"), cpu);
    let want = format!(
        "permission denied: the control socket of deployment site-a accepts only root (uid 0), not uid {NOBODY}"
    );
    let mut other = Vec::new();
    for _ in 0..10 {
        let (code, _, err) = status_as_nobody(&s, Some(cpu));
        assert_ne!(code, 0);
        if !err.contains(&want) {
            other.push(err);
        }
    }
    assert!(
        other.is_empty(),
        "{} of 10 non-root callers did not get {want:?}; they got:\n{}",
        other.len(),
        other.join("---\n")
    );
    // Root is not refused, on the same busy CPU either.
    assert_eq!(s.engine()["public_key"], s.key.public.as_str());
}

// ---------------------------------------------------------------------------
// 5. systemd readiness and logs

#[test]
fn run_notifies_systemd_ready_once_serving_and_stopping_on_sigterm() {
    let s = Site::new("ntf", "site-a");
    let m = s.write_lone_site();
    let path = s.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut cmd = s.nm().cmd(&["run", &m]);
    cmd.env("NOTIFY_SOCKET", &path);
    let fg = Bg::spawn("netman run", &mut cmd);
    let pid = fg.pid();
    let mut buf = [0u8; 4096];
    let ready = match notify.recv(&mut buf) {
        Ok(n) => text(&buf[..n]),
        Err(e) => {
            sigterm(pid);
            let o = fg.finish(Duration::from_secs(10));
            panic!(
                "no notification within 15 s ({e}): {}\n{}",
                text(&o.stdout),
                text(&o.stderr)
            );
        }
    };
    // Ready means serving: the engine answers at once, the link is up.
    let engine = s.engine_of("site-a");
    assert_eq!(
        ready.lines().collect::<Vec<_>>(),
        vec!["READY=1".to_string(), format!("MAINPID={pid}")],
        "{ready:?}"
    );
    let engine = engine.expect("READY=1 came before the engine answered");
    assert_eq!(u64_of(&engine["pid"]), u64::from(pid));
    let link = s.ns.ip(&["link", "show", "nm0"]);
    assert!(link.contains(",UP"), "{link}");
    notify.set_nonblocking(true).expect("nonblocking");
    assert!(
        notify.recv(&mut buf).is_err(),
        "a second notification before SIGTERM"
    );
    notify.set_nonblocking(false).expect("blocking");

    sigterm(pid);
    let stopping = notify
        .recv(&mut buf)
        .map(|n| text(&buf[..n]))
        .expect("no STOPPING=1 within 15 s of SIGTERM");
    // One assignment per line, as sd_notify(3) reads them (the crate ends
    // each with a newline), compared like READY=1 above.
    assert_eq!(
        stopping.lines().collect::<Vec<_>>(),
        ["STOPPING=1"],
        "{stopping:?}"
    );
    let o = fg.finish(Duration::from_secs(10));
    assert!(o.status.success(), "{}: {}", o.status, text(&o.stderr));
    notify.set_nonblocking(true).expect("nonblocking");
    assert!(notify.recv(&mut buf).is_err(), "more notifications");
}

fn starts_with_timestamp(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
}

fn journald_prefix(l: &str) -> Option<u8> {
    let b = l.as_bytes();
    (b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[1] <= b'7' && b[2] == b'>')
        .then(|| b[1] - b'0')
}

#[test]
fn log_formats_json_journald_and_human() {
    let s = Site::new("log", "site-a");
    let m = s.write_lone_site();

    // json: every line one object.
    let err = text(&run_then_stop(&s, &["-v", "--log-format", "json"], &m).stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{err}"));
            assert!(
                v.is_object() && v["timestamp"].is_string() && v["level"].is_string(),
                "{l}"
            );
            v
        })
        .collect();
    for msg in ["engine started", "engine stopped"] {
        assert!(
            lines
                .iter()
                .any(|v| v["level"] == "INFO" && v["fields"]["message"] == msg),
            "no INFO {msg:?} in:\n{err}"
        );
    }
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "engine started")
        .expect("engine started");
    assert_eq!(started["fields"]["deployment"], "site-a");
    assert_eq!(started["fields"]["port"], WG_PORT);

    // Default with stderr captured (not a terminal): journald.
    let err = text(&run_then_stop(&s, &["-v"], &m).stderr);
    assert!(!err.is_empty());
    for l in err.lines() {
        assert!(
            journald_prefix(l).is_some(),
            "no <N> priority prefix: {l:?}\n{err}"
        );
        assert!(!starts_with_timestamp(&l[3..]), "a timestamp: {l:?}");
    }
    assert!(
        err.lines().any(|l| l.starts_with("<6>engine started")),
        "{err}"
    );

    // human: timestamps and levels, no colours off a terminal.
    let err = text(&run_then_stop(&s, &["-v", "--log-format", "human"], &m).stderr);
    assert!(!err.is_empty());
    for l in err.lines() {
        assert!(starts_with_timestamp(l), "no timestamp: {l:?}\n{err}");
        assert!(!l.contains('\u{1b}'), "terminal escapes: {l:?}");
    }
    assert!(
        err.lines()
            .any(|l| l.contains(" INFO ") && l.contains("engine started")),
        "{err}"
    );
}

/// journald stores what it gets: the journald format must not carry
/// terminal colour codes (it is the default off a terminal, e.g. under
/// systemd).
#[test]
fn journald_log_lines_carry_no_terminal_escapes() {
    let s = Site::new("logj", "site-a");
    let m = s.write_lone_site();
    let err = text(&run_then_stop(&s, &["-v", "--log-format", "journald"], &m).stderr);
    let bad: Vec<&str> = err.lines().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        bad.is_empty(),
        "journald lines with terminal escapes:\n{}",
        bad.join("\n").replace('\u{1b}', "\\e")
    );
}

/// A failing command is what an operator most needs to see in the logs:
/// its error must be a JSON line in json format and carry an error
/// priority (`<3>`) in journald format, like every other line.
#[test]
fn errors_of_a_failing_apply_follow_the_log_format() {
    let ns = NetNs::new("logerr");
    let dir = TempDir::new("logerr");
    let nm = Netman::new(&ns, dir.join("state"));
    let invalid = dir.write(
        "invalid.yaml",
        "name: site-a\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/33]\n  private_key_file: k.key\nbogus: 1\n",
    );
    let no_key = dir.write(
        "nokey.yaml",
        "name: site-a\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  private_key_file: missing.key\npeers: []\n",
    );
    let mut bad = Vec::new();
    for m in [&invalid, &no_key] {
        let m = m.to_str().expect("utf-8");
        let (code, _, err) = nm.out(&["--log-format", "json", "apply", m]);
        assert_ne!(code, 0);
        assert!(!err.trim().is_empty());
        for l in err.lines() {
            if !serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object()) {
                bad.push(format!("json, apply {m}: {l}"));
            }
        }
        let (code, _, err) = nm.out(&["--log-format", "journald", "apply", m]);
        assert_ne!(code, 0);
        if !err.lines().any(|l| journald_prefix(l) == Some(3)) {
            bad.push(format!("journald, apply {m}: no <3> line"));
        }
        for l in err.lines() {
            if journald_prefix(l).is_none() {
                bad.push(format!("journald, apply {m}: {l}"));
            }
        }
    }
    // Nothing was applied.
    assert!(!ns.ip_try(&["link", "show", "nm0"]).status.success());
    assert!(
        bad.is_empty(),
        "stderr lines outside the log format:\n{}",
        bad.join("\n")
    );
}
