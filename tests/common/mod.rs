//! Shared helpers for the integration tests: network namespaces that clean
//! up after themselves, temp dirs, and running the netman binary inside a
//! namespace. These tests need root; without it they fail naming what is
//! missing (they never skip silently).

// Each test binary compiles this module and uses only a part of it, hence
// the allow; without it, `cargo test --no-run` names no helper that every
// binary leaves unused.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (Linux ifnames and netns
/// names are short, keep it under 15 chars where it is used as one).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Fail (not skip) when the test cannot run here.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, TUN devices); run it as root, as CI does"
    );
    {
        let tool = "ip";
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "this test needs `{tool}` (Debian package iproute2)");
    }
}

/// Require a command on PATH, failing with the package that provides it.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "this test needs `{tool}` (install {package})");
}

/// Run a command, returning its output; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted (with every process in it) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        require_root();
        let name = unique(&format!("nmt-{prefix}-"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A command to run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip ARGS` inside the namespace; must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip ARGS` inside the namespace, whatever the outcome.
    pub fn ip_try(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A stable textual picture of the namespace's links, addresses and
    /// routes (all tables), to compare before/after.
    pub fn snapshot(&self) -> String {
        let mut s = String::new();
        for args in [
            &["-d", "-o", "link", "show"][..],
            &["-o", "addr", "show"][..],
            &["route", "show", "table", "all"][..],
            &["-6", "route", "show", "table", "all"][..],
        ] {
            s.push_str(&self.ip(args));
            s.push_str("----\n");
        }
        s
    }

    /// PIDs of processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The transmit queue length (`qlen`) of link `ifname` in `ns`, as `ip
/// -o link show` prints it.
pub fn link_qlen(ns: &NetNs, ifname: &str) -> Option<u32> {
    let o = ns.ip(&["-o", "link", "show", ifname]);
    let mut w = o.split_whitespace();
    while let Some(x) = w.next() {
        if x == "qlen" {
            // `-o` ends the line with a backslash.
            return w.next().and_then(|q| q.trim_end_matches('\\').parse().ok());
        }
    }
    None
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("netman-{prefix}-")));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Write a file (creating parents) and return its path.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The netman binary under test.
pub fn netman_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netman")
}

/// netman run inside a namespace with its own state dir.
pub struct Netman<'a> {
    pub ns: &'a NetNs,
    pub state_dir: PathBuf,
}

impl<'a> Netman<'a> {
    pub fn new(ns: &'a NetNs, state_dir: PathBuf) -> Self {
        Netman { ns, state_dir }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ns.cmd(netman_bin());
        c.args(args).env("NETMAN_STATE_DIR", &self.state_dir);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    /// Run and return (exit code, stdout, stderr).
    pub fn out(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.run(args);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Run; must exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.out(args);
        assert_eq!(
            code, 0,
            "netman {args:?} failed\nstdout: {out}\nstderr: {err}"
        );
        out
    }
}

/// A syntactically valid WireGuard public key (not secret, for manifests).
pub const SOME_PUBLIC_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
pub const OTHER_PUBLIC_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

// ---------------------------------------------------------------------------
// Helpers for the forwarding-engine tests (tests/engine*.rs): links between
// namespaces, keys, background processes, ping/iperf3, userspace WireGuard
// peers and a faulty UDP relay.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Waiting on conditions: the suite never sleeps for a fixed time to let
// something happen; it polls for the condition with a deadline.

/// Poll `f` every `every` until it returns true (then: how long it took)
/// or `timeout` passes (then: `None`).
pub fn poll_until(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> bool,
) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        thread::sleep(every);
    }
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(50), f).is_some()
}

/// Whether `f` keeps holding for the whole of `window` (polled every
/// 50 ms), for tests whose assertion is that something does *not* happen:
/// there waiting is the assertion, and `window` is how long the code under
/// test would need to do it.
pub fn holds_for(window: Duration, mut f: impl FnMut() -> bool) -> bool {
    // The last check starts once `window` has passed.
    poll_until(window, Duration::from_millis(50), || !f()).is_none() && f()
}

/// Whether something in `ns` listens on TCP port `port`.
pub fn tcp_listening(ns: &NetNs, port: u16) -> bool {
    let out = run(ns.cmd("ss").args(["-Hltn", &format!("sport = :{port}")]));
    String::from_utf8_lossy(&out.stdout).contains("LISTEN")
}

/// What a [`Monitor`] watches.
#[derive(Clone, Copy)]
enum MonitorKind {
    /// `ip -o monitor OBJECTS` (one line per message).
    Ip,
    /// `nft monitor`.
    Nft,
}

/// `ip monitor` or `nft monitor` running in a namespace, its output
/// collected line by line. Neither has a readiness signal, so `start`
/// makes marker changes (a bridge link added and deleted; an nftables
/// table added and deleted) until the monitor reports one; `during` puts
/// a marker before and after what it runs and returns what came in
/// between: the kernel reports events to a monitor in order, so once the
/// second marker is in, everything before it is too. Killed on drop.
pub struct Monitor {
    kind: MonitorKind,
    ns: String,
    child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    /// `ip -o monitor OBJECTS` in `ns`; `objects` must include `link`
    /// (the markers are links).
    pub fn ip(ns: &NetNs, objects: &[&str]) -> Monitor {
        assert!(
            objects.contains(&"link"),
            "the markers need `ip monitor link`"
        );
        let mut cmd = Command::new("ip");
        cmd.args(["-o", "-n", &ns.name, "monitor"]).args(objects);
        Monitor::start(MonitorKind::Ip, ns, cmd)
    }

    /// `nft monitor` in `ns`.
    pub fn nft(ns: &NetNs) -> Monitor {
        require_tool("nft", "the Debian package nftables");
        let mut cmd = ns.cmd("nft");
        cmd.arg("monitor");
        Monitor::start(MonitorKind::Nft, ns, cmd)
    }

    fn start(kind: MonitorKind, ns: &NetNs, mut cmd: Command) -> Monitor {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("monitor stdout");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = lines.clone();
        let reader = thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (v, cv) = &*sink;
                v.lock().expect("monitor lines").push(line);
                cv.notify_all();
            }
        });
        let me = Monitor {
            kind,
            ns: ns.name.clone(),
            child,
            lines,
            reader: Some(reader),
        };
        // Until it is subscribed, the monitor misses markers: make new ones
        // until one is reported.
        let ready = wait_until(Duration::from_secs(10), || {
            me.mark(Duration::from_millis(200)).is_some()
        });
        assert!(ready, "{cmd:?} reported none of its marker changes in 10 s");
        me
    }

    /// How many lines the monitor has printed so far.
    pub fn len(&self) -> usize {
        self.lines.0.lock().expect("monitor lines").len()
    }

    /// Wait until `f` holds for the lines printed so far (woken by each
    /// new line), at most `timeout`.
    pub fn wait(&self, timeout: Duration, mut f: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (v, cv) = &*self.lines;
        let mut lines = v.lock().expect("monitor lines");
        loop {
            if f(&lines) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = cv
                .wait_timeout(lines, deadline - now)
                .expect("monitor lines")
                .0;
        }
    }

    /// Make a marker change and wait at most `timeout` for the monitor to
    /// report all of it: the index of its first line and the index just
    /// past its last line.
    fn mark(&self, timeout: Duration) -> Option<(usize, usize)> {
        // Short: a link name has at most 15 characters.
        let name = unique("nmk");
        match self.kind {
            MonitorKind::Ip => {
                run_ok(
                    Command::new("ip")
                        .args(["-n", &self.ns, "link", "add", &name, "type", "bridge"]),
                );
                run_ok(Command::new("ip").args(["-n", &self.ns, "link", "del", &name]));
            }
            MonitorKind::Nft => {
                // One transaction: two lines, then its generation line.
                run_ok(Command::new("ip").args([
                    "netns",
                    "exec",
                    &self.ns,
                    "nft",
                    &format!("add table inet {name}; delete table inet {name}"),
                ]));
            }
        }
        let kind = self.kind;
        let ours = format!("{name}:");
        let (add, del) = (
            format!("add table inet {name}"),
            format!("delete table inet {name}"),
        );
        let mut found = None;
        self.wait(timeout, |lines| {
            let first = match kind {
                MonitorKind::Ip => lines.iter().position(|l| l.contains(&ours)),
                MonitorKind::Nft => lines.iter().position(|l| l.trim() == add),
            };
            let last = match kind {
                MonitorKind::Ip => lines
                    .iter()
                    .position(|l| l.starts_with("Deleted") && l.contains(&ours)),
                MonitorKind::Nft => lines.iter().position(|l| l.trim() == del).and_then(|d| {
                    lines[d..]
                        .iter()
                        .position(|l| l.starts_with("# new generation"))
                        .map(|g| d + g)
                }),
            };
            if let (Some(first), Some(last)) = (first, last) {
                found = Some((first, last + 1));
                true
            } else {
                false
            }
        });
        found
    }

    /// What the monitor reported while `f` ran (one line per event).
    pub fn during(&self, f: impl FnOnce()) -> String {
        let (_, from) = self
            .mark(Duration::from_secs(10))
            .expect("the monitor missed the marker before");
        f();
        let (to, _) = self
            .mark(Duration::from_secs(10))
            .expect("the monitor missed the marker after");
        let lines = self.lines.0.lock().expect("monitor lines");
        lines[from..to].iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A veth pair between two namespaces (created directly inside them, so
/// the names only need to be unique per namespace), with optional
/// addresses (CIDR), both ends up.
pub fn veth(
    a: &NetNs,
    a_if: &str,
    a_addr: Option<&str>,
    b: &NetNs,
    b_if: &str,
    b_addr: Option<&str>,
) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if let Some(addr) = addr {
            ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// The underlay of a pair of sites: a veth `ul0` with 192.0.2.1/24 in `a`
/// and 192.0.2.2/24 in `b`.
pub fn underlay(a: &NetNs, b: &NetNs) {
    veth(
        a,
        "ul0",
        Some("192.0.2.1/24"),
        b,
        "ul0",
        Some("192.0.2.2/24"),
    );
}

/// Write `contents` to a new file of mode `mode` (umask notwithstanding).
pub fn write_mode(path: &Path, contents: &str, mode: u32) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    // The mode given to open() is filtered by the umask; set it exactly.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A key pair made with `netman genkey` / `netman pubkey`, the private key
/// in a file of mode 0600.
pub struct KeyPair {
    pub private_file: PathBuf,
    pub private: String,
    pub public: String,
}

/// `netman genkey` (one line of base64).
pub fn netman_genkey() -> String {
    let out = run_ok(Command::new(netman_bin()).arg("genkey"));
    let key = out.trim().to_string();
    assert_eq!(key.len(), 44, "netman genkey printed {out:?}");
    key
}

/// `netman pubkey` of a private key.
pub fn netman_pubkey(private: &str) -> String {
    let mut child = Command::new(netman_bin())
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netman pubkey");
    {
        let mut stdin = child.stdin.take().expect("pubkey stdin");
        std::io::Write::write_all(&mut stdin, format!("{private}\n").as_bytes())
            .expect("write pubkey stdin");
    }
    let out = child.wait_with_output().expect("netman pubkey");
    assert!(
        out.status.success(),
        "netman pubkey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(public.len(), 44, "netman pubkey printed {public:?}");
    public
}

impl KeyPair {
    /// Generate a key pair; the private key goes to `dir/<name>.key` (0600).
    pub fn generate(dir: &Path, name: &str) -> KeyPair {
        let private = netman_genkey();
        let public = netman_pubkey(&private);
        let private_file = dir.join(format!("{name}.key"));
        write_mode(&private_file, &format!("{private}\n"), 0o600);
        KeyPair {
            private_file,
            private,
            public,
        }
    }
}

/// A background process, killed (by its pid) and reaped on drop.
pub struct Bg {
    child: Option<Child>,
    what: String,
}

impl Bg {
    /// Start `cmd` with stdout/stderr piped (read them with `finish`).
    pub fn spawn(what: &str, cmd: &mut Command) -> Bg {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Bg {
            child: Some(child),
            what: what.to_string(),
        }
    }

    /// Start `cmd` with its output going to `log` (for daemons).
    pub fn spawn_logged(what: &str, cmd: &mut Command, log: &Path) -> Bg {
        let out =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Bg {
            child: Some(child),
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait at most `timeout` for the process to exit (killing it after
    /// that, and panicking) and return its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("process already finished");
        let mut so = child.stdout.take();
        let mut se = child.stderr.take();
        let t_out = thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_end(&mut v);
            }
            v
        });
        let t_err = thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_end(&mut v);
            }
            v
        });
        let mut status = None;
        poll_until(timeout, Duration::from_millis(20), || {
            match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            }
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "{} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                self.what,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first (daemons clean up their sockets), then SIGKILL.
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let exited = poll_until(Duration::from_secs(2), Duration::from_millis(20), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if exited.is_some() {
                return;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `ping` reported.
#[derive(Debug)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
    /// Duplicate replies (`DUP!` lines / `+N duplicates`).
    pub duplicates: u32,
    pub output: String,
}

/// Parse ping's output (iputils).
pub fn parse_ping(output: &str) -> PingStats {
    let mut s = PingStats {
        transmitted: 0,
        received: 0,
        duplicates: 0,
        output: output.to_string(),
    };
    let dup_lines = output.lines().filter(|l| l.contains("DUP!")).count() as u32;
    for line in output.lines() {
        if line.contains("packets transmitted") {
            for part in line.split(',') {
                let mut words = part.split_whitespace();
                let n: u32 = words
                    .next()
                    .and_then(|w| w.trim_start_matches('+').parse().ok())
                    .unwrap_or(0);
                match words.next() {
                    Some("packets") => s.transmitted = n,
                    Some("received") => s.received = n,
                    Some("duplicates") => s.duplicates = n,
                    _ => {}
                }
            }
        }
    }
    s.duplicates = s.duplicates.max(dup_lines);
    s
}

/// `ping -c COUNT -i INTERVAL TARGET` inside `ns`, bounded by a deadline.
pub fn ping(ns: &NetNs, target: &str, count: u32, interval: &str) -> PingStats {
    require_tool("ping", "the Debian package iputils-ping");
    // Bounded from outside: ping's own -w would keep sending past COUNT
    // when replies are lost.
    let limit = (f64::from(count) * interval.parse::<f64>().unwrap_or(1.0)).ceil() as u32 + 10;
    let out = run(ns.cmd("timeout").args([
        &limit.to_string(),
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        interval,
        "-W",
        "2",
        target,
    ]));
    parse_ping(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Ping that must get every reply back (and no duplicate).
pub fn ping_ok(ns: &NetNs, target: &str, count: u32) {
    let s = ping(ns, target, count, "0.2");
    assert!(
        s.transmitted == count && s.received == count && s.duplicates == 0,
        "ping {target} from {}: expected {count} replies, no duplicates:\n{}",
        ns.name,
        s.output
    );
}

/// Ping that must get no reply at all.
pub fn ping_fails(ns: &NetNs, target: &str, count: u32) {
    let s = ping(ns, target, count, "0.5");
    assert!(
        s.received == 0 && s.transmitted > 0,
        "ping {target} from {} was expected to fail:\n{}",
        ns.name,
        s.output
    );
}

/// A WireGuard-protocol handshake may take a moment: retry a single ping
/// until one comes back (bounded).
pub fn wait_ping(ns: &NetNs, target: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let s = ping(ns, target, 1, "0.2");
        s.received == 1
    })
}

/// Bytes moved by one iperf3 TCP run.
#[derive(Debug)]
pub struct IperfResult {
    /// `end.sum_sent.bytes` (from the sender).
    pub sent_bytes: u64,
    /// `end.sum_received.bytes` (at the receiver).
    pub received_bytes: u64,
    pub json: serde_json::Value,
}

/// A one-off iperf3 server (`-s -1`) in `server` bound to `addr:port`, a
/// client in `client` running `iperf3 -c addr -p port -J ARGS`, paced so the
/// load stays bounded unless ARGS say otherwise. Both must succeed.
pub fn iperf_tcp(
    client: &NetNs,
    server: &NetNs,
    addr: &str,
    port: u16,
    args: &[&str],
) -> IperfResult {
    require_tool("iperf3", "the Debian package iperf3");
    let port_s = port.to_string();
    let srv = Bg::spawn(
        "iperf3 server",
        server
            .cmd("timeout")
            .args(["60", "iperf3", "-s", "-1", "-B", addr, "-p", &port_s]),
    );
    let listening = wait_until(Duration::from_secs(10), || tcp_listening(server, port));
    assert!(
        listening,
        "iperf3 server on {addr}:{port} in {} did not start",
        server.name
    );
    let mut c = client.cmd("timeout");
    c.args([
        "60",
        "iperf3",
        "-c",
        addr,
        "-p",
        &port_s,
        "-J",
        "--connect-timeout",
        "10000",
    ]);
    c.args(args);
    let out = run(&mut c);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let srv_out = srv.finish(Duration::from_secs(15));
    assert!(
        out.status.success(),
        "iperf3 client in {} -> {addr}:{port} failed ({}):\n{text}\n{}\nserver: {}{}",
        client.name,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&srv_out.stdout),
        String::from_utf8_lossy(&srv_out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 -J output is not JSON ({e}): {text}"));
    let sent_bytes = json["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received_bytes = json["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        sent_bytes > 0 && received_bytes > 0,
        "iperf3 moved nothing: {text}"
    );
    IperfResult {
        sent_bytes,
        received_bytes,
        json,
    }
}

/// The directory userspace WireGuard implementations put their UAPI
/// sockets in (shared by all network namespaces).
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// Which userspace WireGuard to run as a peer.
#[derive(Clone, Copy, Debug)]
pub enum Userspace {
    WireguardGo,
    Boringtun,
}

/// Path of boringtun-cli: `$BORINGTUN_BIN`, PATH, or ~/.cargo/bin.
pub fn boringtun_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BORINGTUN_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("boringtun-cli"))
            .find(|f| f.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let p = home.join(".cargo/bin/boringtun-cli");
    assert!(
        p.is_file(),
        "this test needs `boringtun-cli` (cargo install boringtun-cli --locked; or set BORINGTUN_BIN)"
    );
    p
}

/// Removes `UAPI_DIR/<ifname>.sock` on drop if it is still a socket: a
/// netman engine killed with its namespace (SIGKILL) cannot remove the
/// `wg show` socket it serves. Declare it before the site, so it is
/// dropped after the namespace and its processes.
pub struct UapiSocketGuard {
    pub path: PathBuf,
}

impl UapiSocketGuard {
    pub fn new(ifname: &str) -> UapiSocketGuard {
        UapiSocketGuard {
            path: Path::new(UAPI_DIR).join(format!("{ifname}.sock")),
        }
    }
}

impl Drop for UapiSocketGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A wireguard-go or boringtun-cli daemon serving interface `ifname` in a
/// namespace; stopped and its UAPI socket removed on drop.
pub struct UserspaceWg {
    pub ifname: String,
    daemon: Bg,
}

impl UserspaceWg {
    /// Start the daemon (log in `log`) and wait for its UAPI socket and
    /// interface. `ifname` must be unique machine-wide (see UAPI_DIR).
    pub fn start(kind: Userspace, ns: &NetNs, ifname: &str, log: &Path) -> UserspaceWg {
        require_tool("wg", "the Debian package wireguard-tools");
        let mut cmd = match kind {
            Userspace::WireguardGo => {
                require_tool("wireguard-go", "the Debian package wireguard-go");
                let mut c = ns.cmd("env");
                c.args([
                    "LOG_LEVEL=error",
                    "WG_PROCESS_FOREGROUND=1",
                    "wireguard-go",
                    "-f",
                    ifname,
                ]);
                c
            }
            Userspace::Boringtun => {
                let bin = boringtun_bin();
                let mut c = ns.cmd(bin.to_str().expect("boringtun path is UTF-8"));
                let out = log.with_extension("out");
                c.args([ifname, "--foreground", "--disable-drop-privileges", "--log"])
                    .arg(out);
                c
            }
        };
        let proc = Bg::spawn_logged(&format!("{kind:?} {ifname}"), &mut cmd, log);
        let me = UserspaceWg {
            ifname: ifname.to_string(),
            daemon: proc,
        };
        let sock = Path::new(UAPI_DIR).join(format!("{ifname}.sock"));
        let up = wait_until(Duration::from_secs(10), || {
            sock.exists() && ns.ip_try(&["link", "show", "dev", ifname]).status.success()
        });
        assert!(
            up,
            "{kind:?} did not create {ifname} and {} within 10 s; log: {}",
            sock.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        me
    }
}

impl Drop for UserspaceWg {
    fn drop(&mut self) {
        // Stop the daemon first (Bg's drop runs after this body, so do it
        // here by hand), then remove what it may have left behind.
        if let Some(mut c) = self.daemon.child.take() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        for ext in ["sock", "name"] {
            let _ =
                std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.{ext}", self.ifname)));
        }
    }
}

/// What the faulty relay did.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub forwarded: AtomicU64,
    pub held_back: AtomicU64,
    pub duplicated: AtomicU64,
    pub ignored: AtomicU64,
}

/// Faults the relay injects.
#[derive(Clone, Copy, Debug)]
pub struct RelayFaults {
    /// Percentage of datagrams held back (delivered late, out of order).
    pub reorder_pct: u32,
    /// How long a held-back datagram waits (at most).
    pub hold: Duration,
    /// Percentage of datagrams sent twice.
    pub duplicate_pct: u32,
}

/// A UDP relay between two sites, running in a thread that entered a test
/// namespace (`setns` affects only that thread). Datagrams from `a_peer`
/// arriving on `a_listen` go to `b_peer` from `b_listen`, and the other
/// way round; anything from elsewhere is ignored. It reorders and
/// duplicates per `faults`, and stops on drop or after `lifetime`.
pub struct Relay {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub counters: Arc<RelayCounters>,
}

impl Relay {
    pub fn start(
        netns: &NetNs,
        a_listen: SocketAddr,
        a_peer: SocketAddr,
        b_listen: SocketAddr,
        b_peer: SocketAddr,
        faults: RelayFaults,
        lifetime: Duration,
    ) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns_path = PathBuf::from("/var/run/netns").join(&netns.name);
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let handle = thread::Builder::new()
            .name("udp-relay".into())
            .spawn(move || {
                let setup = || -> Result<(UdpSocket, UdpSocket), String> {
                    let f = std::fs::File::open(&ns_path)
                        .map_err(|e| format!("open {}: {e}", ns_path.display()))?;
                    // SAFETY: setns on a namespace fd we hold open; it changes
                    // only this thread's network namespace.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(format!(
                            "setns {}: {}",
                            ns_path.display(),
                            std::io::Error::last_os_error()
                        ));
                    }
                    let sa =
                        UdpSocket::bind(a_listen).map_err(|e| format!("bind {a_listen}: {e}"))?;
                    let sb =
                        UdpSocket::bind(b_listen).map_err(|e| format!("bind {b_listen}: {e}"))?;
                    sa.set_nonblocking(true).map_err(|e| e.to_string())?;
                    sb.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok((sa, sb))
                };
                let (sa, sb) = match setup() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                relay_loop(
                    &sa,
                    a_peer,
                    &sb,
                    b_peer,
                    faults,
                    &stop2,
                    &counters2,
                    Instant::now() + lifetime,
                );
            })
            .expect("spawn relay thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("UDP relay in {}: {e}", netns.name),
            Err(_) => panic!("UDP relay in {} did not start", netns.name),
        }
        Relay {
            stop,
            handle: Some(handle),
            counters,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn relay_loop(
    sa: &UdpSocket,
    a_peer: SocketAddr,
    sb: &UdpSocket,
    b_peer: SocketAddr,
    faults: RelayFaults,
    stop: &AtomicBool,
    counters: &RelayCounters,
    deadline: Instant,
) {
    // xorshift64*, seeded from the clock: no need for good randomness.
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rand = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    // (release time, to b?, datagram)
    let mut held: VecDeque<(Instant, bool, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    let send = |to_b: bool, data: &[u8]| {
        let _ = if to_b {
            sb.send_to(data, b_peer)
        } else {
            sa.send_to(data, a_peer)
        };
    };
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let now = Instant::now();
        // Release held datagrams that are due (they are out of order now).
        while held.front().is_some_and(|(t, _, _)| *t <= now) {
            if let Some((_, to_b, d)) = held.pop_front() {
                send(to_b, &d);
            }
        }
        let wait_ms = held.front().map_or(10, |(t, _, _)| {
            t.saturating_duration_since(now).as_millis().clamp(1, 10) as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: sa.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sb.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid array of two pollfd structures.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        for (sock, from, to_b) in [(sa, a_peer, true), (sb, b_peer, false)] {
            for _ in 0..256 {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    break;
                };
                if src != from {
                    counters.ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let data = &buf[..n];
                let dup = (rand() % 100) < u64::from(faults.duplicate_pct);
                if (rand() % 100) < u64::from(faults.reorder_pct) {
                    counters.held_back.fetch_add(1, Ordering::Relaxed);
                    let max = faults.hold.as_micros().max(1) as u64;
                    let hold = Duration::from_micros(max / 2 + rand() % (max / 2 + 1));
                    let t = Instant::now() + hold;
                    // Keep the queue sorted by release time.
                    let pos = held
                        .iter()
                        .position(|(r, _, _)| *r > t)
                        .unwrap_or(held.len());
                    held.insert(pos, (t, to_b, data.to_vec()));
                    if dup {
                        counters.duplicated.fetch_add(1, Ordering::Relaxed);
                        held.insert(pos + 1, (t, to_b, data.to_vec()));
                    }
                } else {
                    send(to_b, data);
                    if dup {
                        counters.duplicated.fetch_add(1, Ordering::Relaxed);
                        send(to_b, data);
                    }
                }
            }
        }
    }
}

/// A site of a test: its namespace, a temp dir (key, manifests, state dir)
/// and its key pair. Test files add what they need with `impl Site` blocks
/// of their own.
pub struct Site {
    pub deployment: String,
    pub key: KeyPair,
    // Dropped in this order: the namespace (and every process in it, the
    // engine included) before the directory.
    pub ns: NetNs,
    pub dir: TempDir,
}

impl Site {
    pub fn new(tag: &str, deployment: &str) -> Site {
        let ns = NetNs::new(tag);
        let dir = TempDir::new(tag);
        let key = KeyPair::generate(&dir.path, deployment);
        Site {
            deployment: deployment.to_string(),
            key,
            ns,
            dir,
        }
    }

    /// netman in this site's namespace with its own state dir.
    pub fn nm(&self) -> Netman<'_> {
        Netman::new(&self.ns, self.state_dir())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// The case folders of the golden set `tests/golden/<set>/`, sorted, and
/// the set's folder (for messages).
pub fn golden_dirs(set: &str) -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(set);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    (root, dirs)
}

/// Run every case directory under `tests/golden/<kind>/` through `case`,
/// which returns the file name of its outcome (`plan.txt` or `error.txt`)
/// and the text. With `UPDATE_GOLDEN` set the expected files are
/// rewritten; otherwise every mismatch is reported at once.
pub fn golden_cases(
    kind: &str,
    min_cases: usize,
    case: impl Fn(&Path) -> Result<(&'static str, String), String>,
) {
    let (root, dirs) = golden_dirs(kind);
    assert!(
        dirs.len() >= min_cases,
        "golden cases missing in {}",
        root.display()
    );
    let check = |dir: &Path| -> Result<(), String> {
        let (file, actual) = case(dir)?;
        let other = if file == "plan.txt" {
            "error.txt"
        } else {
            "plan.txt"
        };
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(dir.join(file), &actual).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(dir.join(other));
            return Ok(());
        }
        if dir.join(other).exists() {
            return Err(format!("expected {other}, got {file}:\n{actual}"));
        }
        let expected =
            std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
        if expected != actual {
            return Err(format!(
                "{file} differs\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
        Ok(())
    };
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| check(d).err().map(|e| format!("{}: {e}", d.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Move this thread into the network namespace `ns` (only this thread:
/// `setns` is per thread).
fn enter_netns(ns: &str) -> Result<(), String> {
    let path = PathBuf::from("/var/run/netns").join(ns);
    let f = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: setns on a namespace fd we hold open; it changes only this
    // thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// What one [`tcp_transfer`] moved.
#[derive(Debug)]
pub struct TcpTransfer {
    /// Bytes the client wrote (all of them acknowledged: it waited for the
    /// server to close after reading everything).
    pub sent: u64,
    /// Bytes the server read before the client's end of stream.
    pub received: u64,
    /// The bytes read were the bytes written, in order.
    pub intact: bool,
    /// Segments the client retransmitted (`tcpi_total_retrans`, what
    /// iperf3 reports as retransmits).
    pub retransmits: u32,
    /// The MSS the client's connection used (`TCP_MAXSEG` after connect).
    pub mss: u32,
    pub elapsed: Duration,
}

impl TcpTransfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.received as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-6) / 1e6
    }
}

/// Byte `i` of the stream [`tcp_transfer`] sends.
const PATTERN_PERIOD: usize = 251;

/// One TCP connection from namespace `client` to `addr` (a listener this
/// starts in namespace `server`), with the client's MSS set to `mss`
/// (`TCP_MAXSEG`, like `iperf3 -M`): the client writes a known byte pattern
/// as fast as it can for `duration`, closes its side and waits for the
/// server, which reads everything (checking every byte) and then closes.
/// Unlike iperf3, whose receiver stops counting when the test time is up,
/// this tells whether every byte written arrived. Bounded: every socket
/// operation times out, and the whole transfer must end within `duration`
/// plus 60 s.
pub fn tcp_transfer(
    client: &NetNs,
    server: &NetNs,
    addr: SocketAddr,
    mss: u32,
    duration: Duration,
) -> TcpTransfer {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    const IO_TIMEOUT: Duration = Duration::from_secs(20);
    let pattern: Arc<Vec<u8>> = Arc::new(
        (0..PATTERN_PERIOD + 65536)
            .map(|i| (i % PATTERN_PERIOD) as u8)
            .collect(),
    );
    let deadline = Instant::now() + duration + Duration::from_secs(60);

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let server_ns = server.name.clone();
    let pat = pattern.clone();
    let srv = thread::spawn(move || -> Result<(u64, bool), String> {
        let listener = (|| {
            enter_netns(&server_ns)?;
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(l)
        })();
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection arrived".into());
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        let (mut got, mut intact) = (0u64, true);
        loop {
            if Instant::now() > deadline {
                return Err(format!("still reading at the deadline ({got} bytes)"));
            }
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("read after {got} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            let at = (got % PATTERN_PERIOD as u64) as usize;
            intact &= buf[..n] == pat[at..at + n];
            got += n as u64;
        }
        // Closing tells the client that everything arrived.
        drop(s);
        Ok((got, intact))
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("TCP receiver in {}: {e}", server.name),
        Err(_) => panic!("TCP receiver in {} did not start", server.name),
    }

    let client_ns = client.name.clone();
    let cli = thread::spawn(move || -> Result<(u64, u32, u32, Duration), String> {
        enter_netns(&client_ns)?;
        let domain = socket2::Domain::for_address(addr);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        sock.set_tcp_mss(mss)
            .map_err(|e| format!("TCP_MAXSEG {mss}: {e}"))?;
        sock.connect_timeout(&addr.into(), Duration::from_secs(10))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let used_mss = sock.tcp_mss().unwrap_or(0);
        let mut s: TcpStream = sock.into();
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let at = (sent % PATTERN_PERIOD as u64) as usize;
            let n = s
                .write(&pattern[at..at + 65536])
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += n as u64;
        }
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        // Wait for the server to have read everything and closed.
        let mut one = [0u8; 1];
        match s.read(&mut one) {
            Ok(0) => {}
            Ok(_) => return Err("the server sent data".into()),
            Err(e) => return Err(format!("waiting for the server to close: {e}")),
        }
        let elapsed = start.elapsed();
        // SAFETY: getsockopt(TCP_INFO) into a zeroed tcp_info of the size
        // we pass; the kernel fills at most that much.
        let retrans = unsafe {
            let mut ti: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut ti as *mut libc::tcp_info).cast(),
                &mut len,
            );
            if rc != 0 {
                return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
            }
            ti.tcpi_total_retrans
        };
        Ok((sent, retrans, used_mss, elapsed))
    });
    let c = cli.join().expect("TCP sender thread panicked");
    let r = srv.join().expect("TCP receiver thread panicked");
    let (sent, retransmits, used_mss, elapsed) =
        c.unwrap_or_else(|e| panic!("TCP sender in {} -> {addr}: {e}", client.name));
    let (received, intact) =
        r.unwrap_or_else(|e| panic!("TCP receiver in {} ({addr}): {e}", server.name));
    TcpTransfer {
        sent,
        received,
        intact,
        retransmits,
        mss: used_mss,
        elapsed,
    }
}
