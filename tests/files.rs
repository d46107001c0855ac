//! The files netman reads and writes, treated as hostile input: manifests
//! that are not regular files or are huge are refused quickly with bounded
//! memory; a state dir that is a symlink, foreign or open to others is
//! refused; nothing is written through a planted symlink; and `down` only
//! signals the process that really serves an engine's control socket.
//! Runs as root (as in CI); nothing here touches the network.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bg, TempDir, netman_bin, require_root, require_tool, wait_until};
use netman::engine::{self, config::EngineConfig};
use netman::state::{DeploymentState, StateDir};

const NOBODY: u32 = 65534;

/// `netman validate PATH` with at most 512 MiB of address space; killed
/// (and the test failed) if it has not finished within 60 s.
fn validate_bounded(path: &Path) -> (i32, String, Duration) {
    let mut cmd = Command::new(netman_bin());
    cmd.arg("validate")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 512 << 20,
                rlim_max: 512 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn netman validate");
    let finished = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "netman validate {} did not finish within 60 s",
            path.display()
        );
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn validate_refuses_special_and_huge_files_quickly_with_bounded_memory() {
    let tmp = TempDir::new("files-validate");
    let fifo = tmp.join("fifo.yaml");
    mkfifo(&fifo);
    let dir = tmp.join("dir.yaml");
    std::fs::create_dir(&dir).expect("mkdir");
    // Sparse: 4 GiB that take no disk space.
    let huge = tmp.join("huge.yaml");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(4 << 30))
        .expect("sparse file");
    let cases: [(&Path, String); 4] = [
        (
            Path::new("/dev/zero"),
            "/dev/zero:1:1: cannot read: not a regular file (a character device)".to_owned(),
        ),
        (
            &fifo,
            format!(
                "{}:1:1: cannot read: not a regular file (a FIFO)",
                fifo.display()
            ),
        ),
        (
            &dir,
            format!(
                "{}:1:1: cannot read: not a regular file (a directory)",
                dir.display()
            ),
        ),
        (
            &huge,
            format!(
                "{}:1:1: manifest is too large (4294967296 bytes; at most 16777216)",
                huge.display()
            ),
        ),
    ];
    for (path, want) in cases {
        let (code, stderr, took) = validate_bounded(path);
        eprintln!("validate {}: {took:?}", path.display());
        assert_eq!(code, 2, "validate {}: {stderr}", path.display());
        assert_eq!(stderr.trim(), want, "validate {}", path.display());
    }
}

#[test]
fn a_manifest_just_over_the_limit_is_refused_and_one_at_it_is_read() {
    let tmp = TempDir::new("files-limit");
    let limit = netman::manifest::MAX_MANIFEST_BYTES;
    let p = tmp.join("big.yaml");
    // A comment padded to exactly the limit: read, then refused by the
    // parser as an empty document (not as too large).
    let mut text = "#".repeat(limit - 1);
    text.push('\n');
    std::fs::write(&p, &text).expect("write");
    let e = netman::manifest::load(&p).unwrap_err().to_string();
    assert!(!e.contains("too large"), "{e}");
    text.push('\n');
    std::fs::write(&p, &text).expect("write");
    let e = netman::manifest::load(&p).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:1:1: manifest is too large ({} bytes; at most {limit})",
            p.display(),
            limit + 1
        )
    );
}

// ---------------------------------------------------------------------------
// The state dir

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None)
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

#[test]
fn a_state_dir_that_is_a_symlink_foreign_or_open_to_others_is_refused() {
    require_root();
    let tmp = TempDir::new("files-sd");
    let real = tmp.join("real");
    StateDir::open(&real).expect("a fresh state dir");
    assert_eq!(
        std::fs::metadata(&real).expect("stat").mode() & 0o7777,
        0o700
    );
    let st = DeploymentState::new("site-a");
    StateDir::open(&real)
        .and_then(|sd| sd.save(&st))
        .expect("save");

    // A symlink to a perfectly good state dir.
    let link = tmp.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let e = StateDir::open(&link)
        .expect_err("symlink refused")
        .to_string();
    assert!(e.contains(&link.display().to_string()), "{e}");
    assert!(e.contains("symbolic link"), "{e}");
    let e = StateDir::at(&link)
        .load("site-a")
        .expect_err("symlink refused for reading too")
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");

    // Writable by group or others.
    for mode in [0o777, 0o770, 0o702, 0o1777] {
        chmod(&real, mode);
        let e = StateDir::open(&real)
            .expect_err("writable by others")
            .to_string();
        assert!(e.contains(&real.display().to_string()), "{mode:o}: {e}");
        assert!(e.contains("chmod go-w"), "{mode:o}: {e}");
        assert!(StateDir::at(&real).list().is_err(), "{mode:o}");
        assert!(StateDir::at(&real).load("site-a").is_err(), "{mode:o}");
    }
    // Readable by others is fine (an operator may open it up for status).
    chmod(&real, 0o755);
    assert_eq!(
        StateDir::at(&real).load("site-a").expect("load"),
        Some(st.clone())
    );

    // Owned by someone else than root (or the user running netman).
    chown(&real, NOBODY);
    let e = StateDir::open(&real)
        .expect_err("foreign owner")
        .to_string();
    assert!(e.contains(&real.display().to_string()), "{e}");
    assert!(e.contains(&format!("uid {NOBODY}")), "{e}");
    assert!(StateDir::at(&real).load("site-a").is_err());
    chown(&real, 0);
    assert_eq!(StateDir::at(&real).load("site-a").expect("load"), Some(st));

    // A state dir that does not exist yet is fine for reading.
    let none = tmp.join("none");
    assert_eq!(StateDir::at(&none).load("x").expect("load"), None);
    assert_eq!(
        StateDir::at(&none).list().expect("list"),
        Vec::<String>::new()
    );
}

/// A file outside the state dir that a planted symlink points at.
fn victim(tmp: &TempDir) -> PathBuf {
    let v = tmp.join("victim");
    std::fs::write(&v, "precious\n").expect("write victim");
    v
}

#[test]
fn nothing_is_written_through_a_planted_symlink() {
    require_root();
    let tmp = TempDir::new("files-tmp");
    let sd = StateDir::open(&tmp.join("state")).expect("open");
    let v = victim(&tmp);

    // The state file's temp file.
    let planted = sd.path().join(".site-a.json.tmp");
    std::os::unix::fs::symlink(&v, &planted).expect("symlink");
    let st = DeploymentState::new("site-a");
    sd.save(&st).expect("save despite a stale temp symlink");
    assert_eq!(std::fs::read_to_string(&v).expect("victim"), "precious\n");
    assert_eq!(sd.load("site-a").expect("load"), Some(st));
    let meta = std::fs::symlink_metadata(sd.path().join("site-a.json")).expect("stat");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600);

    // The engine config's temp file.
    let cfg = EngineConfig {
        deployment: "site-a".into(),
        interface: "nm0".into(),
        mtu: 1420,
        listen_port: None,
        private_key_file: tmp.join("k"),
        peers: Vec::new(),
        watch: true,
        metrics: None,
        fwmark: None,
    };
    let planted = sd.engine_config("site-a").with_extension("json.tmp");
    std::os::unix::fs::symlink(&v, &planted).expect("symlink");
    engine::write_config(&sd, &cfg).expect("write config despite a stale temp symlink");
    assert_eq!(std::fs::read_to_string(&v).expect("victim"), "precious\n");
    let meta = std::fs::symlink_metadata(sd.engine_config("site-a")).expect("stat");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        engine::read_config(&sd, "site-a")
            .expect("read config")
            .private_key_file,
        tmp.join("k")
    );

    // The state file and the engine config themselves are not read through
    // a symlink either.
    let cfg_path = sd.engine_config("site-a");
    std::fs::remove_file(&cfg_path).expect("rm");
    std::os::unix::fs::symlink(&v, &cfg_path).expect("symlink");
    let e = engine::read_config(&sd, "site-a")
        .expect_err("symlinked config")
        .to_string();
    assert!(e.contains(&cfg_path.display().to_string()), "{e}");
    let state_path = sd.path().join("site-b.json");
    std::os::unix::fs::symlink(&v, &state_path).expect("symlink");
    let e = sd.load("site-b").expect_err("symlinked state").to_string();
    assert!(e.contains(&state_path.display().to_string()), "{e}");
}

// ---------------------------------------------------------------------------
// Signalling an engine

/// The system's python (runnable by any user, unlike one in root's home).
fn python() -> &'static str {
    const PYTHON: &str = "/usr/bin/python3";
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install the Debian package python3-minimal"
    );
    PYTHON
}

/// A fake engine: a python process serving `<sd>/<name>.sock` that answers
/// every request with a `pong` reporting `pid` (someone else's) and never
/// stops.
fn fake_engine(sd: &StateDir, name: &str, pid: u32) -> Bg {
    let sock = sd.path().join(format!("{name}.sock"));
    let script = format!(
        r#"
import json, os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind({sock:?})
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        if c.recv(65536):
            c.sendall((json.dumps({{"result": "pong", "pid": {pid}, "deployment": {name:?}}}) + "\n").encode())
    except OSError:
        pass
    c.close()
"#,
        sock = sock.display().to_string(),
    );
    let bg = Bg::spawn("fake engine", Command::new(python()).args(["-c", &script]));
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }),
        "the fake engine does not serve {}",
        sock.display()
    );
    bg
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn stop_signals_only_the_process_serving_the_socket() {
    require_root();
    let tmp = TempDir::new("files-stop");
    let sd = StateDir::open(&tmp.join("state")).expect("open");
    // An innocent process the fake engine claims to be.
    let mut innocent = Bg::spawn("innocent", Command::new("sleep").arg("600"));
    let innocent_pid = innocent.pid();
    let mut fake = fake_engine(&sd, "site-a", innocent_pid);
    let fake_pid = fake.pid();

    let r = engine::stop(&sd, "site-a");
    // (A process just sent SIGKILL may still look alive for a moment.)
    let killed = wait_until(Duration::from_secs(2), || {
        innocent.try_status().is_some() || !alive(innocent_pid)
    });
    assert!(
        !killed,
        "stop killed pid {innocent_pid}, which only claimed to be the engine: {r:?}"
    );
    // The process really serving the socket (root's) is what was stopped.
    assert!(
        wait_until(Duration::from_secs(5), || fake.try_status().is_some()),
        "the process serving the socket (pid {fake_pid}) was not stopped: {r:?}"
    );
    assert!(matches!(r, Ok(true)), "{r:?}");
}

#[test]
fn stop_does_not_signal_an_engine_socket_served_by_another_user() {
    require_root();
    require_tool("setpriv", "the Debian package util-linux");
    let tmp = TempDir::new("files-stop-uid");
    let sd = StateDir::open(&tmp.join("state")).expect("open");
    // The socket served by uid 65534 (it may bind in a dir opened up for it).
    chmod(sd.path(), 0o755);
    let sub = tmp.join("nobody");
    std::fs::create_dir(&sub).expect("mkdir");
    chown(&sub, NOBODY);
    let sock_real = sub.join("site-a.sock");
    let script = format!(
        r#"
import json, os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind({sock:?})
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        if c.recv(65536):
            c.sendall((json.dumps({{"result": "pong", "pid": os.getpid(), "deployment": "site-a"}}) + "\n").encode())
    except OSError:
        pass
    c.close()
"#,
        sock = sock_real.display().to_string(),
    );
    let mut fake = Bg::spawn(
        "fake engine as nobody",
        Command::new("setpriv").args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            python(),
            "-c",
            &script,
        ]),
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock_real).is_ok()
        }),
        "the fake engine does not serve {}",
        sock_real.display()
    );
    // Root moves it into place (a symlink would do the same to connect()).
    std::fs::hard_link(&sock_real, sd.path().join("site-a.sock")).expect("link socket");
    let r = engine::stop(&sd, "site-a");
    let e = r.expect_err("refused").to_string();
    assert!(e.contains(&format!("uid {NOBODY}")), "{e}");
    assert!(
        !wait_until(Duration::from_secs(2), || fake.try_status().is_some()),
        "the foreign process was signalled"
    );
}

/// `validate` and `diff` cache validated manifests in the state dir: a
/// state dir that is a symlink or open to others gets nothing written
/// into it (no `cache/`), `validate` still validates, and `diff` refuses
/// it (exit 2) naming it.
#[test]
fn validate_and_diff_write_nothing_into_an_untrusted_state_dir() {
    require_root();
    let tmp = TempDir::new("files-cache");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/site-a.yaml");
    let real = tmp.join("real");
    std::fs::create_dir(&real).expect("mkdir");
    chmod(&real, 0o700);
    let link = tmp.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let open = tmp.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    for (sd, empty) in [(&link, &real), (&open, &open)] {
        let run = |cmd: &str| {
            let out = common::run(
                Command::new(netman_bin())
                    .arg("--state-dir")
                    .arg(sd)
                    .arg(cmd)
                    .arg(&manifest),
            );
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, err) = run("validate");
        assert_eq!(code, 0, "validate with state dir {}: {err}", sd.display());
        let (code, err) = run("diff");
        assert_eq!(code, 2, "diff with state dir {}: {err}", sd.display());
        assert!(err.contains(&sd.display().to_string()), "{err}");
        let left: Vec<_> = std::fs::read_dir(empty)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "written into the untrusted state dir {}: {left:?}",
            sd.display()
        );
    }
}
