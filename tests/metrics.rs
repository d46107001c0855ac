//! The engine's metrics endpoint (`metrics.listen`) against hostile and
//! slow clients: an endless request line, a client trickling one byte per
//! second, a crowd of idle connections, a move of the endpoint while a
//! slow client is connected, and what a fresh engine exports (every drop
//! reason, at 0). The real binary runs in its own uniquely named network
//! namespace; every client is a thread that entered that namespace
//! (`setns`), so its loopback is the namespace's own and no port of the
//! host is touched. Every client loop is bounded in bytes and time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Site, wait_until};

/// Port every site listens on (each site has its own namespace).
const WG_PORT: u16 = 51820;
/// Where the metrics endpoint listens (inside the test namespace).
const METRICS: &str = "127.0.0.1:9586";
/// How long a scrape may take while hostile clients are connected: a
/// loopback scrape takes milliseconds, and this stays below the 5 s a
/// client could hold the old endpoint per read.
const PROMPT: Duration = Duration::from_secs(4);
/// By when a hostile connection must have been closed, counted from its
/// connect: the endpoint's whole-request deadline (10 s) plus margin for a
/// busy machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);
/// How much the engine's peak resident memory (VmHWM) may grow while
/// hostile clients are connected.
const MEMORY_SLACK_KB: u64 = 4 * 1024;
/// How long a hostile client keeps trying before it gives up on its own.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn manifest(s: &Site, listen: &str) -> String {
    format!(
        "name: {}\ninterface:\n  name: nm0\n  addresses: [10.10.0.1/24]\n  listen_port: {WG_PORT}\n  private_key_file: {}\npeers: []\nmetrics:\n  listen: \"{listen}\"\n",
        s.deployment,
        s.key.private_file.display()
    )
}

/// Apply a manifest with the endpoint on `listen` and wait until it
/// accepts connections. Returns the engine's pid.
fn start(s: &Site, listen: &str, connect_to: SocketAddr) -> u32 {
    let m = s.dir.write("site.yaml", &manifest(s, listen));
    s.nm().ok(&["apply", &m.display().to_string()]);
    let ns = s.ns.name.clone();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let ns = ns.clone();
            in_netns(&ns, move || {
                TcpStream::connect_timeout(&connect_to, Duration::from_secs(1)).is_ok()
            })
        }),
        "no metrics endpoint on {connect_to}; log:\n{}",
        log(s)
    );
    pid(s)
}

fn log(s: &Site) -> String {
    std::fs::read_to_string(s.state_dir().join(format!("{}.log", s.deployment))).unwrap_or_default()
}

/// The `engine` object of `status --output json`.
fn engine(s: &Site) -> serde_json::Value {
    let out = s.nm().ok(&["status", &s.deployment, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    v[0]["engine"].clone()
}

fn pid(s: &Site) -> u32 {
    let e = engine(s);
    u32::try_from(e["pid"].as_u64().expect("engine pid")).expect("pid")
}

/// Enter the network namespace `ns` in this thread (only this thread).
fn enter(ns: &str) {
    let path = PathBuf::from("/var/run/netns").join(ns);
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a namespace fd we hold open; it changes only this
    // thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Run `f` in a thread inside `ns` and wait for it.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns, f)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Run `f` in a thread inside `ns`, in the background.
fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// Peak and current resident memory of `pid`, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{st}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One request on a fresh connection to `a` from inside `ns`: how long it
/// took and the whole response, or what went wrong (connect 2 s, answer
/// within 10 s).
fn request(ns: &str, a: SocketAddr, raw: String) -> (Duration, Result<String, String>) {
    in_netns(ns, move || {
        let start = Instant::now();
        let result = (|| {
            let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2))
                .map_err(|e| format!("connect {a}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(raw.as_bytes())
                .map_err(|e| format!("send to {a}: {e}"))?;
            let mut out = Vec::new();
            s.take(1 << 20)
                .read_to_end(&mut out)
                .map_err(|e| format!("read from {a}: {e} (after {:?})", start.elapsed()))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })();
        (start.elapsed(), result)
    })
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// A scrape of `/metrics` on `a`: (time taken, body), or what went wrong.
fn scrape(ns: &str, a: SocketAddr) -> (Duration, Result<String, String>) {
    let (took, r) = request(ns, a, get("/metrics"));
    let r = r.and_then(|out| match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("not a 200 response: {out:?}")),
    });
    (took, r)
}

/// The value of `name{...}` whose labels include all of `want`.
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

/// What a hostile client saw.
#[derive(Debug)]
struct Hostile {
    /// Bytes it got out before the connection failed or it gave up.
    sent: usize,
    /// When (since its connect) the engine closed the connection, if it
    /// did before the client gave up.
    closed_after: Option<Duration>,
    /// The start of what the engine answered.
    answer: String,
}

/// Read what is there (waiting up to the socket's read timeout): whether
/// the connection is closed. Keeps the first bytes of the answer.
fn closed(s: &mut TcpStream, answer: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            if answer.len() < 4096 {
                answer.extend_from_slice(&buf[..n]);
            }
            false
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// `GET /` and then 10 MB of path, never a newline; then wait (up to
/// [`CLIENT_LIMIT`]) for the engine to close the connection.
fn endless_request_line(a: SocketAddr, progress: Arc<AtomicUsize>) -> Hostile {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut sent = 0;
    let mut answer = Vec::new();
    let mut closed_after = None;
    let mut chunk = vec![b'a'; 64 * 1024];
    chunk[..5].copy_from_slice(b"GET /");
    while sent < 10 << 20 && start.elapsed() < CLIENT_LIMIT {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(start.elapsed());
                break;
            }
        }
        chunk[..5].fill(b'a');
        progress.store(sent, Ordering::Relaxed);
    }
    progress.store(usize::MAX, Ordering::Relaxed);
    while closed_after.is_none() && start.elapsed() < CLIENT_LIMIT {
        if closed(&mut s, &mut answer) {
            closed_after = Some(start.elapsed());
        }
    }
    Hostile {
        sent,
        closed_after,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// The start of a request, then one byte of an endless header per second
/// until the engine closes the connection (or [`CLIENT_LIMIT`]).
fn trickle(a: SocketAddr, progress: Arc<AtomicUsize>) -> Hostile {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let text = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
    let mut sent = 0;
    let mut answer = Vec::new();
    let mut closed_after = None;
    while start.elapsed() < CLIENT_LIMIT {
        let byte = text.get(sent).copied().unwrap_or(b'z');
        if s.write_all(&[byte]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        sent += 1;
        progress.store(sent, Ordering::Relaxed);
        // Also the pace: one byte per second.
        if closed(&mut s, &mut answer) {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    Hostile {
        sent,
        closed_after,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

fn wait_progress(p: &AtomicUsize, at_least: usize) -> bool {
    wait_until(Duration::from_secs(10), || {
        p.load(Ordering::Relaxed) >= at_least
    })
}

#[test]
fn a_fresh_engine_exports_every_drop_reason_at_zero_and_answers_only_get_metrics() {
    let s = Site::new("mfr", "site-a");
    let m = addr(METRICS);
    start(&s, METRICS, m);
    let ns = s.ns.name.clone();
    let (_, body) = scrape(&ns, m);
    let body = body.unwrap_or_else(|e| panic!("scrape: {e}"));
    let drops = engine(&s)["drops"].clone();
    let mut missing = Vec::new();
    for r in netman_proto::DropReason::ALL {
        let want = [("deployment", "site-a"), ("reason", r.as_str())];
        if sample(&body, "netman_packets_dropped_total", &want) != Some(0.0) {
            missing.push(format!("metrics: {}", r.as_str()));
        }
        if drops[r.as_str()].as_u64() != Some(0) {
            missing.push(format!("status: {}", r.as_str()));
        }
    }
    assert!(
        missing.is_empty(),
        "drop reasons not exported at 0 by a fresh engine: {missing:?}\nstatus drops: {drops}\n{body}"
    );
    // Every reason the engine counts is there, and all are 0.
    for l in body
        .lines()
        .filter(|l| l.starts_with("netman_packets_dropped_total{"))
    {
        assert!(l.ends_with(" 0"), "a fresh engine dropped something: {l}");
    }

    // Only GET /metrics.
    let answer = |raw: String| {
        let (_, r) = request(&ns, m, raw);
        r.unwrap_or_else(|e| panic!("request: {e}"))
    };
    let out = answer(get("/"));
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let out = answer(
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .into(),
    );
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    // A request head above the limit (16 KiB of one header).
    let out = answer(format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(16 * 1024)
    ));
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Still serving.
    let (_, body) = scrape(&ns, m);
    assert!(body.is_ok(), "{body:?}");
}

#[test]
fn a_10mb_request_line_neither_grows_the_engine_nor_delays_a_scrape() {
    let s = Site::new("mbig", "site-a");
    let m = addr(METRICS);
    let pid = start(&s, METRICS, m);
    let ns = s.ns.name.clone();
    // Warm up (first scrape), then the baseline.
    let (_, first) = scrape(&ns, m);
    assert!(first.is_ok(), "{first:?}");
    let (hwm0, rss0) = memory_kb(pid);

    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let hostile = spawn_in(&ns, move || endless_request_line(m, p));
    // Scrape once the engine has had 1 MB of the line.
    assert!(wait_progress(&progress, 1 << 20), "the client sent nothing");
    let (took, body) = scrape(&ns, m);
    let hostile = hostile.join().expect("client thread");
    let (hwm1, rss1) = memory_kb(pid);

    let report = format!(
        "scrape took {took:?}: {}; client: {hostile:?}; engine VmHWM {hwm0} -> {hwm1} kB, VmRSS {rss0} -> {rss1} kB",
        body.as_ref().map_or_else(|e| e.clone(), |_| "ok".into())
    );
    eprintln!("{report}");
    assert!(
        body.is_ok() && took <= PROMPT,
        "scrape not served promptly: {report}"
    );
    assert!(
        hostile.closed_after.is_some_and(|t| t <= CLOSED_WITHIN),
        "the engine did not close the connection within {CLOSED_WITHIN:?}: {report}"
    );
    assert!(
        hwm1.saturating_sub(hwm0) <= MEMORY_SLACK_KB,
        "the engine grew by more than {MEMORY_SLACK_KB} kB: {report}"
    );
    assert!(
        hostile.sent < 10 << 20,
        "the engine took all 10 MB of the line: {report}"
    );
    assert!(
        !hostile.answer.starts_with("HTTP/1.1 200"),
        "an endless request line was answered as a scrape: {report}"
    );
}

#[test]
fn a_trickling_client_is_cut_off_and_does_not_delay_a_scrape() {
    let s = Site::new("mslo", "site-a");
    let m = addr(METRICS);
    let pid = start(&s, METRICS, m);
    let ns = s.ns.name.clone();
    let (_, first) = scrape(&ns, m);
    assert!(first.is_ok(), "{first:?}");
    let (hwm0, _) = memory_kb(pid);

    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let hostile = spawn_in(&ns, move || trickle(m, p));
    assert!(wait_progress(&progress, 2), "the client sent nothing");
    let (took, body) = scrape(&ns, m);
    let hostile = hostile.join().expect("client thread");
    let (hwm1, _) = memory_kb(pid);
    let report = format!(
        "scrape took {took:?}: {}; client: {hostile:?}; engine VmHWM {hwm0} -> {hwm1} kB",
        body.as_ref().map_or_else(|e| e.clone(), |_| "ok".into())
    );
    eprintln!("{report}");
    assert!(
        body.is_ok() && took <= PROMPT,
        "scrape not served promptly: {report}"
    );
    assert!(
        hostile.closed_after.is_some_and(|t| t <= CLOSED_WITHIN),
        "the engine did not close the trickling connection within {CLOSED_WITHIN:?}: {report}"
    );
    assert!(
        !hostile.answer.starts_with("HTTP/1.1 200"),
        "an unfinished request was answered as a scrape: {report}"
    );
    assert!(
        hwm1.saturating_sub(hwm0) <= MEMORY_SLACK_KB,
        "the engine grew by more than {MEMORY_SLACK_KB} kB: {report}"
    );
}

/// Idle connections beyond the per-source cap are closed at once, the rest
/// at the deadline; a scraper from another address is served meanwhile.
#[test]
fn a_crowd_of_idle_connections_is_capped_and_does_not_delay_a_scrape() {
    const CROWD: usize = 40;
    let s = Site::new("mcrd", "site-a");
    // All addresses: the crowd comes from 127.0.0.1, the scraper from
    // 10.10.0.1 (the interface's address).
    let pid = start(&s, "0.0.0.0:9586", addr("127.0.0.1:9586"));
    let ns = s.ns.name.clone();
    let scraper = addr("10.10.0.1:9586");
    let (_, first) = scrape(&ns, scraper);
    assert!(first.is_ok(), "{first:?}");
    let (hwm0, _) = memory_kb(pid);

    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let crowd = spawn_in(&ns, move || {
        let start = Instant::now();
        let mut conns: Vec<(TcpStream, Option<Duration>)> = (0..CROWD)
            .map(|_| {
                let c = TcpStream::connect_timeout(&addr(METRICS), Duration::from_secs(2))
                    .expect("connect");
                c.set_read_timeout(Some(Duration::from_millis(10)))
                    .expect("timeout");
                (c, None)
            })
            .collect();
        let mut scratch = Vec::new();
        while start.elapsed() < CLIENT_LIMIT && conns.iter().any(|(_, t)| t.is_none()) {
            for (c, t) in conns.iter_mut().filter(|(_, t)| t.is_none()) {
                if closed(c, &mut scratch) {
                    *t = Some(start.elapsed());
                }
            }
            p.store(CROWD, Ordering::Relaxed);
        }
        conns.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
    });
    assert!(wait_progress(&progress, CROWD), "the crowd did not connect");
    let (took, body) = scrape(&ns, scraper);
    let closed_at = crowd.join().expect("crowd thread");
    let (hwm1, _) = memory_kb(pid);
    let at_once = closed_at
        .iter()
        .filter(|t| t.is_some_and(|t| t <= Duration::from_secs(2)))
        .count();
    let report = format!(
        "scrape took {took:?}: {}; {CROWD} idle connections closed after {closed_at:?}; engine VmHWM {hwm0} -> {hwm1} kB",
        body.as_ref().map_or_else(|e| e.clone(), |_| "ok".into())
    );
    eprintln!("{report}");
    assert!(
        body.is_ok() && took <= PROMPT,
        "scrape not served promptly: {report}"
    );
    assert!(
        at_once >= CROWD - 8,
        "connections beyond the cap of 8 per source were not closed at once: {report}"
    );
    assert!(
        closed_at
            .iter()
            .all(|t| t.is_some_and(|t| t <= CLOSED_WITHIN)),
        "idle connections outlived the deadline: {report}"
    );
    assert!(
        hwm1.saturating_sub(hwm0) <= MEMORY_SLACK_KB,
        "the engine grew by more than {MEMORY_SLACK_KB} kB: {report}"
    );
}

/// `metrics.listen` 127.0.0.1:9586 -> 0.0.0.0:9586 by re-apply while a
/// slow client holds a connection: the apply returns promptly, and the
/// endpoint serves on the new address (same port).
#[test]
fn moving_the_endpoint_with_a_slow_client_connected_does_not_block_apply() {
    let s = Site::new("mmov", "site-a");
    let m = addr(METRICS);
    start(&s, METRICS, m);
    let ns = s.ns.name.clone();
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let hostile = spawn_in(&ns, move || trickle(m, p));
    assert!(wait_progress(&progress, 2), "the client sent nothing");

    let m2 = s.dir.write("moved.yaml", &manifest(&s, "0.0.0.0:9586"));
    let t = Instant::now();
    let (code, out, err) = s.nm().out(&["apply", &m2.display().to_string()]);
    let took = t.elapsed();
    eprintln!("apply moving the endpoint took {took:?}");
    assert!(
        code == 0 && took <= Duration::from_secs(8),
        "apply took {took:?}, exit {code}\nstdout: {out}\nstderr: {err}\nlog:\n{}",
        log(&s)
    );
    assert!(
        out.lines()
            .any(|l| l == "~ engine metrics 127.0.0.1:9586 -> 0.0.0.0:9586"),
        "{out}"
    );
    let mut last = Vec::new();
    let served = wait_until(Duration::from_secs(5), || {
        last = ["10.10.0.1:9586", "127.0.0.1:9586"]
            .iter()
            .map(|a| scrape(&ns, addr(a)).1.map(|_| ()))
            .collect();
        last.iter().all(Result::is_ok)
    });
    assert!(
        served,
        "the moved endpoint does not serve on 0.0.0.0:9586: {last:?}\nlog:\n{}",
        log(&s)
    );
    let hostile = hostile.join().expect("client thread");
    assert!(
        hostile.closed_after.is_some_and(|t| t <= CLOSED_WITHIN),
        "the slow client outlived the deadline: {hostile:?}"
    );
}
