//! Prometheus/OpenMetrics endpoint of the engine (`metrics.listen` in the
//! manifest): per-peer transfer and handshakes, drops by reason, and the
//! reconcile counters, rendered from a status snapshot at every scrape.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::control::EngineStatus;

/// Counters of the reconcile loop, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct ReconcileCounters {
    pub applies: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    deployment: String,
    peer: String,
    public_key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    deployment: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    deployment: String,
}

/// The metrics text (OpenMetrics) for one status snapshot.
pub fn render(status: &EngineStatus, reconcile: &ReconcileCounters) -> String {
    let mut reg = <Registry>::with_prefix("netman");
    let rx = Family::<PeerLabels, Counter>::default();
    let tx = Family::<PeerLabels, Counter>::default();
    let hs = Family::<PeerLabels, Counter>::default();
    let attempts = Family::<PeerLabels, Counter>::default();
    let latest = Family::<PeerLabels, Gauge>::default();
    let drops = Family::<DropLabels, Counter>::default();
    let peers = Family::<DeploymentLabels, Gauge>::default();
    let applies = Family::<DeploymentLabels, Counter>::default();
    let repairs = Family::<DeploymentLabels, Counter>::default();
    let failures = Family::<DeploymentLabels, Counter>::default();
    reg.register(
        "peer_receive_bytes",
        "Bytes received from the peer",
        rx.clone(),
    );
    reg.register("peer_transmit_bytes", "Bytes sent to the peer", tx.clone());
    reg.register(
        "peer_handshakes",
        "Handshakes completed with the peer",
        hs.clone(),
    );
    reg.register(
        "peer_handshake_attempts",
        "Handshake initiations sent to the peer",
        attempts.clone(),
    );
    reg.register(
        "peer_latest_handshake_seconds",
        "Unix time of the latest completed handshake (0: none)",
        latest.clone(),
    );
    reg.register(
        "packets_dropped",
        "Packets dropped, by reason",
        drops.clone(),
    );
    reg.register("peers", "Configured peers", peers.clone());
    reg.register(
        "reconcile_applies",
        "Reconciles that changed something",
        applies.clone(),
    );
    reg.register(
        "reconcile_drift_repairs",
        "Reconciles that repaired drift in the kernel",
        repairs.clone(),
    );
    reg.register(
        "reconcile_failures",
        "Reconciles that failed",
        failures.clone(),
    );

    let dep = || DeploymentLabels {
        deployment: status.deployment.clone(),
    };
    for p in &status.peers {
        let l = PeerLabels {
            deployment: status.deployment.clone(),
            peer: p.name.clone(),
            public_key: p.public_key.clone(),
        };
        rx.get_or_create(&l).inc_by(p.rx_bytes);
        tx.get_or_create(&l).inc_by(p.tx_bytes);
        hs.get_or_create(&l).inc_by(p.handshakes);
        attempts.get_or_create(&l).inc_by(p.handshake_attempts);
        latest
            .get_or_create(&l)
            .set(i64::try_from(p.latest_handshake.unwrap_or(0)).unwrap_or(i64::MAX));
    }
    for (reason, n) in &status.drops {
        drops
            .get_or_create(&DropLabels {
                deployment: status.deployment.clone(),
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    peers
        .get_or_create(&dep())
        .set(i64::try_from(status.peers.len()).unwrap_or(i64::MAX));
    applies
        .get_or_create(&dep())
        .inc_by(reconcile.applies.load(Ordering::Relaxed));
    repairs
        .get_or_create(&dep())
        .inc_by(reconcile.drift_repairs.load(Ordering::Relaxed));
    failures
        .get_or_create(&dep())
        .inc_by(reconcile.failures.load(Ordering::Relaxed));
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// A running metrics endpoint; stops (and frees its port) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wait for the thread (one poll interval, or a scrape in progress)
        // so that its listening socket is closed when this returns: the
        // next endpoint may bind the same port (e.g. 127.0.0.1:9586 ->
        // 0.0.0.0:9586).
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve `GET /metrics` on `addr` in a background thread; `snapshot`
/// produces the text of one scrape.
pub fn serve(
    addr: SocketAddr,
    snapshot: Arc<dyn Fn() -> Option<String> + Send + Sync>,
) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = handle(conn, snapshot.as_ref());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut p = libc::pollfd {
                            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, 200) };
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(Server {
        addr: local,
        stop,
        thread: Some(thread),
    })
}

fn handle(mut conn: TcpStream, snapshot: &dyn Fn() -> Option<String>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Drain the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match snapshot() {
            Some(body) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "engine not answering\n".to_string(),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::EngineConfig;
    use crate::engine::control::PeerStatus;
    use std::io::Read;

    fn status() -> EngineStatus {
        EngineStatus {
            deployment: "site-a".into(),
            pid: 1,
            interface: "nm0".into(),
            listen_port: 51820,
            public_key: "PUB".into(),
            started_at: 0,
            peers: vec![PeerStatus {
                name: "site-b".into(),
                public_key: "KEYB".into(),
                endpoint: None,
                allowed_ips: vec![],
                latest_handshake: Some(1_700_000_000),
                rx_bytes: 1234,
                tx_bytes: 5678,
                persistent_keepalive: Some(25),
                handshakes: 3,
                handshake_attempts: 4,
                preshared_key: false,
            }],
            drops: [("replay".to_string(), 7u64)].into(),
            config: EngineConfig {
                deployment: "site-a".into(),
                interface: "nm0".into(),
                mtu: 1420,
                listen_port: None,
                private_key_file: "/k".into(),
                peers: vec![],
                watch: true,
                metrics: None,
            },
            watch: None,
            watch_counters: None,
        }
    }

    #[test]
    fn render_has_every_family_with_values() {
        let c = ReconcileCounters::default();
        c.applies.store(2, Ordering::Relaxed);
        c.drift_repairs.store(1, Ordering::Relaxed);
        let text = render(&status(), &c);
        for want in [
            "netman_peer_receive_bytes_total{deployment=\"site-a\",peer=\"site-b\",public_key=\"KEYB\"} 1234",
            "netman_peer_transmit_bytes_total{deployment=\"site-a\",peer=\"site-b\",public_key=\"KEYB\"} 5678",
            "netman_peer_handshakes_total{deployment=\"site-a\",peer=\"site-b\",public_key=\"KEYB\"} 3",
            "netman_peer_handshake_attempts_total{deployment=\"site-a\",peer=\"site-b\",public_key=\"KEYB\"} 4",
            "netman_peer_latest_handshake_seconds{deployment=\"site-a\",peer=\"site-b\",public_key=\"KEYB\"} 1700000000",
            "netman_packets_dropped_total{deployment=\"site-a\",reason=\"replay\"} 7",
            "netman_reconcile_applies_total{deployment=\"site-a\"} 2",
            "netman_reconcile_drift_repairs_total{deployment=\"site-a\"} 1",
            "netman_reconcile_failures_total{deployment=\"site-a\"} 0",
            "netman_peers{deployment=\"site-a\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }

    #[test]
    fn http_endpoint_serves_metrics_and_404() {
        let server = serve(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(|| Some("hello 1\n# EOF\n".to_string())),
        )
        .expect("serve");
        let addr = server.addr;
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("hello 1\n# EOF\n"), "{ok}");
        assert!(get("/").starts_with("HTTP/1.1 404"));
        drop(server);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            TcpStream::connect(addr).is_err(),
            "still serving after drop"
        );
    }
}
