//! Prometheus/OpenMetrics endpoint of the engine (`metrics.listen` in the
//! manifest): per-peer transfer and handshakes, drops by reason, and the
//! reconcile counters, rendered from a status snapshot at every scrape.
//!
//! The port may face hostile clients, so HTTP is hyper's (HTTP/1 only) on a
//! current-thread tokio runtime owned by the endpoint's thread, with every
//! resource bounded: the request head ([`MAX_HEAD`]), the time to send it
//! ([`HEAD_TIMEOUT`]) and the whole connection ([`DEADLINE`], one request
//! per connection), the connections at once ([`MAX_CONNECTIONS`], at most
//! [`MAX_PER_SOURCE`] from one address); extra connections are closed at
//! once. Moving or stopping the endpoint only tells its thread: the caller
//! (configure) never waits for it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use netman_proto::DropReason;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::control::EngineStatus;
pub use super::shared::ReconcileCounters;

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

/// Metrics clients the endpoint turned away or cut off, by reason: shared
/// between the endpoint's thread (which counts) and every scrape (which
/// reports them as `netman_metrics_connections_dropped_total`).
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// Closed at once: [`MAX_CONNECTIONS`] were being served.
    pub too_many: AtomicU64,
    /// Closed at once: [`MAX_PER_SOURCE`] from the same address were being
    /// served.
    pub too_many_from_source: AtomicU64,
    /// Cut off: the request head took over [`HEAD_TIMEOUT`], or the
    /// connection over [`DEADLINE`].
    pub timed_out: AtomicU64,
    /// `accept` failed (out of descriptors or the like).
    pub accept_failed: AtomicU64,
}

impl ClientCounters {
    /// `(reason, count)` for every reason, in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("too_many", n(&self.too_many)),
            ("too_many_from_source", n(&self.too_many_from_source)),
            ("timed_out", n(&self.timed_out)),
            ("accept_failed", n(&self.accept_failed)),
        ]
    }
}

/// The metrics text (OpenMetrics) for one status snapshot.
pub fn render(
    status: &EngineStatus,
    reconcile: &ReconcileCounters,
    clients: &ClientCounters,
) -> String {
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
    let health_confirms = Family::<DeploymentLabels, Counter>::default();
    let health_reverts = Family::<DeploymentLabels, Counter>::default();
    let clients_dropped = Family::<DropLabels, Counter>::default();
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
    reg.register(
        "rollout_health_confirms",
        "Changes on probation kept because the deployment was healthy",
        health_confirms.clone(),
    );
    reg.register(
        "rollout_health_reverts",
        "Changes on probation reverted because the deployment was not healthy in time",
        health_reverts.clone(),
    );
    reg.register(
        "metrics_connections_dropped",
        "Metrics clients turned away or cut off, by reason",
        clients_dropped.clone(),
    );

    let dep = || DeploymentLabels {
        deployment: status.deployment.clone(),
    };
    for p in &status.peers {
        let l = PeerLabels {
            deployment: status.deployment.clone(),
            peer: p.name.clone(),
            public_key: p.public_key.to_string(),
        };
        rx.get_or_create(&l).inc_by(p.rx_bytes);
        tx.get_or_create(&l).inc_by(p.tx_bytes);
        hs.get_or_create(&l).inc_by(p.handshakes);
        attempts.get_or_create(&l).inc_by(p.handshake_attempts);
        latest
            .get_or_create(&l)
            .set(i64::try_from(p.latest_handshake.unwrap_or(0)).unwrap_or(i64::MAX));
    }
    // Every reason of the protocol core is a series from the start, at 0
    // until it happens (so that `rate()` works before the first drop).
    let zero = DropReason::ALL
        .iter()
        .filter(|r| !status.drops.contains_key(r.as_str()))
        .map(|r| (r.as_str().to_string(), 0));
    for (reason, n) in status
        .drops
        .iter()
        .map(|(r, n)| (r.clone(), *n))
        .chain(zero)
    {
        drops
            .get_or_create(&DropLabels {
                deployment: status.deployment.clone(),
                reason,
            })
            .inc_by(n);
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
    health_confirms
        .get_or_create(&dep())
        .inc_by(reconcile.health_confirms.load(Ordering::Relaxed));
    health_reverts
        .get_or_create(&dep())
        .inc_by(reconcile.health_reverts.load(Ordering::Relaxed));
    for (reason, n) in clients.by_reason() {
        clients_dropped
            .get_or_create(&DropLabels {
                deployment: status.deployment.clone(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// Largest request head (request line and headers) accepted; a larger
/// one is answered 431 and the connection closed.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head, however it paces it.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may last, request and answer included (one request
/// per connection: no keep-alive).
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one address (an IPv6 /64 counts as
/// one), so that one client cannot take every slot from the scraper.
pub const MAX_PER_SOURCE: usize = 8;
/// Read and write buffer of a connection (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 16 * 1024;
/// Threads that wait for the data plane's status at once.
const SNAPSHOT_THREADS: usize = 2;

/// Produces the text of one scrape (`None`: the engine did not answer).
/// Called on a blocking thread of the endpoint.
pub type Snapshot = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The metrics endpoint of an engine: a thread (`metrics`) running its own
/// tokio runtime, serving on the address last asked for. Create it only
/// after the engine dropped its capabilities: its threads inherit what the
/// creating thread has. Dropping it stops the endpoint (without waiting).
pub struct Endpoint {
    want: watch::Sender<Option<SocketAddr>>,
    bound: watch::Receiver<Option<SocketAddr>>,
}

impl Endpoint {
    /// Start the endpoint's thread, serving nothing until [`Endpoint::set`];
    /// the clients it turns away or cuts off are counted in `clients`.
    pub fn start(snapshot: Snapshot, clients: Arc<ClientCounters>) -> io::Result<Endpoint> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(SNAPSHOT_THREADS)
            .thread_name("metrics")
            .build()?;
        let (want, want_rx) = watch::channel(None);
        let (bound_tx, bound) = watch::channel(None);
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || rt.block_on(manage(want_rx, bound_tx, snapshot, clients)))?;
        Ok(Endpoint { want, bound })
    }

    /// Serve on `addr` (moving from the address served so far), or stop
    /// serving (`None`). Returns at once: the endpoint's thread closes the
    /// old listener, with its connections, before it binds the new one, so
    /// 127.0.0.1:9586 -> 0.0.0.0:9586 works. Asking again for the address
    /// in force retries a bind that failed.
    pub fn set(&self, addr: Option<SocketAddr>) {
        self.want.send_replace(addr);
    }

    /// The address the endpoint listens on now, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.bound.borrow()
    }
}

/// The endpoint's thread: follow `want` until the [`Endpoint`] is dropped.
async fn manage(
    mut want: watch::Receiver<Option<SocketAddr>>,
    bound: watch::Sender<Option<SocketAddr>>,
    snapshot: Snapshot,
    clients: Arc<ClientCounters>,
) {
    // (requested address, accept loop)
    let mut current: Option<(SocketAddr, JoinHandle<()>)> = None;
    loop {
        let addr = *want.borrow_and_update();
        if current.as_ref().map(|(a, _)| *a) != addr {
            if let Some((old, task)) = current.take() {
                // Aborting drops the listener and every connection of it;
                // awaiting makes sure the listener is closed before a bind
                // of the same port.
                task.abort();
                let _ = task.await;
                bound.send_replace(None);
                tracing::info!(addr = %old, "metrics endpoint stopped");
            }
            if let Some(addr) = addr {
                match listen(addr) {
                    Ok(listener) => {
                        bound.send_replace(listener.local_addr().ok());
                        tracing::info!(%addr, "metrics endpoint listening");
                        let task =
                            tokio::spawn(accept_loop(listener, snapshot.clone(), clients.clone()));
                        current = Some((addr, task));
                    }
                    Err(e) => tracing::error!(%addr, error = %e, "cannot serve metrics"),
                }
            }
        }
        if want.changed().await.is_err() {
            break;
        }
    }
    if let Some((_, task)) = current {
        task.abort();
        let _ = task.await;
    }
}

/// A listening socket on `addr` with SO_REUSEADDR: connections of a
/// listener just closed on the same port (TIME_WAIT, or still being torn
/// down) do not stop the bind.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    TcpListener::from_std(sock.into())
}

/// Connections in progress, in all and by source.
#[derive(Default)]
struct Slots {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its slot back when dropped (finished,
/// timed out or aborted).
struct Slot {
    slots: Arc<Mutex<Slots>>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.total = s.total.saturating_sub(1);
            if let Some(n) = s.by_source.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.by_source.remove(&self.source);
                }
            }
        }
    }
}

/// The address whose connections count together: an IPv4 address (also
/// IPv4-mapped), or the /64 of an IPv6 address.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    TooMany,
    TooManyFromSource,
}

fn admit(slots: &Arc<Mutex<Slots>>, peer: SocketAddr) -> Result<Slot, Refused> {
    let source = source_of(peer.ip());
    // A poisoned lock (a panic elsewhere): serve no one rather than panic.
    let mut s = slots.lock().map_err(|_| Refused::TooMany)?;
    let n = s.by_source.get(&source).copied().unwrap_or(0);
    if s.total >= MAX_CONNECTIONS {
        return Err(Refused::TooMany);
    }
    if n >= MAX_PER_SOURCE {
        return Err(Refused::TooManyFromSource);
    }
    s.total += 1;
    s.by_source.insert(source, n + 1);
    Ok(Slot {
        slots: slots.clone(),
        source,
    })
}

/// Accept and serve connections until aborted; aborting also ends every
/// connection (the [`JoinSet`] aborts its tasks when dropped).
async fn accept_loop(listener: TcpListener, snapshot: Snapshot, clients: Arc<ClientCounters>) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut conns = JoinSet::new();
    // Clients decide how often these happen: log them once a minute.
    let mut warned: Option<Instant> = None;
    let mut warn = |what: &dyn Fn()| {
        if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            what();
            warned = Some(Instant::now());
        }
    };
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => match admit(&slots, peer) {
                Ok(slot) => {
                    conns.spawn(connection(stream, snapshot.clone(), slot, clients.clone()));
                }
                Err(why) => {
                    let counter = match why {
                        Refused::TooMany => &clients.too_many,
                        Refused::TooManyFromSource => &clients.too_many_from_source,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    warn(
                        &|| tracing::warn!(%peer, "metrics: too many connections, closing new ones"),
                    );
                    drop(stream);
                }
            },
            Err(e) => {
                clients.accept_failed.fetch_add(1, Ordering::Relaxed);
                // Out of descriptors or the like: do not spin.
                warn(&|| tracing::warn!(error = %e, "metrics: accept failed"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request on `stream`, within [`HEAD_TIMEOUT`] and [`DEADLINE`].
async fn connection(
    stream: TcpStream,
    snapshot: Snapshot,
    _slot: Slot,
    clients: Arc<ClientCounters>,
) {
    let service = service_fn(move |req| respond(req, snapshot.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_BUF)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // Past the deadline the connection is dropped, and so closed.
    let timed_out = match tokio::time::timeout(DEADLINE, conn).await {
        Err(_elapsed) => true,
        Ok(Err(e)) => e.is_timeout(),
        Ok(Ok(())) => false,
    };
    if timed_out {
        clients.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET /metrics` (any query) answers the snapshot; anything else 404 or
/// 405.
async fn respond(
    req: Request<Incoming>,
    snapshot: Snapshot,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, ctype, body) = if req.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, TEXT, "try /metrics\n".to_string())
    } else if req.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET only\n".to_string(),
        )
    } else {
        match tokio::task::spawn_blocking(move || snapshot()).await {
            Ok(Some(text)) => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "engine not answering\n".to_string(),
            ),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::EngineConfig;
    use crate::engine::control::PeerStatus;
    use netman_proto::PublicKey;
    use std::io::{Read, Write};

    fn keyb() -> PublicKey {
        PublicKey::from_bytes([0xb; 32])
    }

    fn status() -> EngineStatus {
        EngineStatus {
            deployment: "site-a".into(),
            pid: 1,
            interface: "nm0".into(),
            listen_port: 51820,
            public_key: PublicKey::from_bytes([0xa; 32]),
            started_at: 0,
            peers: vec![PeerStatus {
                name: "site-b".into(),
                public_key: keyb(),
                endpoint: None,
                allowed_ips: vec![],
                latest_handshake: Some(1_700_000_000),
                rx_bytes: 1234,
                tx_bytes: 5678,
                persistent_keepalive: Some(25),
                handshakes: 3,
                handshake_attempts: 4,
                preshared_key: false,
                endpoint_name: None,
                endpoint_error: None,
            }],
            drops: [("replay".to_string(), 7u64)].into(),
            udp_gso_refused: 0,
            config: EngineConfig {
                listen_port: None,
                ..EngineConfig::example()
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
        c.health_reverts.store(5, Ordering::Relaxed);
        let text = render(&status(), &c, &ClientCounters::default());
        let keyb = keyb();
        for want in [
            format!(
                "netman_peer_receive_bytes_total{{deployment=\"site-a\",peer=\"site-b\",public_key=\"{keyb}\"}} 1234"
            ),
            format!(
                "netman_peer_transmit_bytes_total{{deployment=\"site-a\",peer=\"site-b\",public_key=\"{keyb}\"}} 5678"
            ),
            format!(
                "netman_peer_handshakes_total{{deployment=\"site-a\",peer=\"site-b\",public_key=\"{keyb}\"}} 3"
            ),
            format!(
                "netman_peer_handshake_attempts_total{{deployment=\"site-a\",peer=\"site-b\",public_key=\"{keyb}\"}} 4"
            ),
            format!(
                "netman_peer_latest_handshake_seconds{{deployment=\"site-a\",peer=\"site-b\",public_key=\"{keyb}\"}} 1700000000"
            ),
            "netman_packets_dropped_total{deployment=\"site-a\",reason=\"replay\"} 7".to_string(),
            "netman_reconcile_applies_total{deployment=\"site-a\"} 2".to_string(),
            "netman_reconcile_drift_repairs_total{deployment=\"site-a\"} 1".to_string(),
            "netman_reconcile_failures_total{deployment=\"site-a\"} 0".to_string(),
            "netman_rollout_health_confirms_total{deployment=\"site-a\"} 0".to_string(),
            "netman_rollout_health_reverts_total{deployment=\"site-a\"} 5".to_string(),
            "netman_peers{deployment=\"site-a\"} 1".to_string(),
            "# EOF".to_string(),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
    }

    #[test]
    fn render_has_every_drop_reason_at_zero_for_a_fresh_engine() {
        let mut st = status();
        st.drops.clear();
        st.drops.insert("engine_only".into(), 0);
        let text = render(
            &st,
            &ReconcileCounters::default(),
            &ClientCounters::default(),
        );
        for r in DropReason::ALL {
            let want = format!(
                "netman_packets_dropped_total{{deployment=\"site-a\",reason=\"{}\"}} 0\n",
                r.as_str()
            );
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        assert!(text.contains("reason=\"engine_only\"} 0\n"), "{text}");
    }

    #[test]
    fn connections_are_capped_in_all_and_per_source() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let a: SocketAddr = "192.0.2.1:40000".parse().expect("addr");
        let mut held: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| admit(&slots, a).expect("under the per-source cap"))
            .collect();
        assert_eq!(
            admit(&slots, a).err(),
            Some(Refused::TooManyFromSource),
            "per-source cap"
        );
        // The same IPv4 address mapped into IPv6 is the same source, and
        // so is another address of the same IPv6 /64.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:1".parse().expect("addr");
        assert_eq!(
            admit(&slots, mapped).err(),
            Some(Refused::TooManyFromSource)
        );
        let v6a: SocketAddr = "[2001:db8:1:2::1]:1".parse().expect("addr");
        let v6b: SocketAddr = "[2001:db8:1:2:ffff::9]:1".parse().expect("addr");
        held.extend((0..MAX_PER_SOURCE).map(|_| admit(&slots, v6a).expect("v6")));
        assert_eq!(
            admit(&slots, v6b).err(),
            Some(Refused::TooManyFromSource),
            "one /64 is one source"
        );
        // A slot given back is free again.
        drop(held.remove(0));
        held.push(admit(&slots, a).expect("a slot was given back"));
        assert_eq!(
            admit(&slots, a).err(),
            Some(Refused::TooManyFromSource),
            "8 from 192.0.2.1 again"
        );
        // The total cap, over many sources.
        let mut n = held.len();
        for i in 0..=255u8 {
            let s = SocketAddr::from(([198, 51, 100, i], 1));
            if let Ok(slot) = admit(&slots, s) {
                held.push(slot);
                n += 1;
            }
        }
        assert_eq!(n, MAX_CONNECTIONS);
        assert_eq!(
            admit(&slots, "203.0.113.1:1".parse().expect("addr")).err(),
            Some(Refused::TooMany),
            "the total cap"
        );
        drop(held);
        let s = slots.lock().expect("lock");
        assert_eq!((s.total, s.by_source.len()), (0, 0));
    }

    /// Serve `endpoint` on a free loopback port; its address once bound.
    fn serve_on_loopback(endpoint: &Endpoint) -> SocketAddr {
        endpoint.set(Some("127.0.0.1:0".parse().expect("addr")));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(a) = endpoint.local_addr() {
                return a;
            }
            assert!(std::time::Instant::now() < deadline, "never listened");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn http_endpoint_serves_metrics_and_404_and_stops() {
        let endpoint = Endpoint::start(
            Arc::new(|| Some("hello 1\n# EOF\n".to_string())),
            Arc::default(),
        )
        .expect("start");
        let addr = serve_on_loopback(&endpoint);
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{ok}"
        );
        assert!(ok.ends_with("hello 1\n# EOF\n"), "{ok}");
        assert!(get("/metrics?x=1").starts_with("HTTP/1.1 200 OK"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
        endpoint.set(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still serving after set(None)"
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(endpoint.local_addr(), None);
    }

    /// A client over the per-source cap is closed at once and counted, and
    /// the count is in the metrics text.
    #[test]
    fn refused_clients_are_counted_and_reported() {
        let clients = Arc::new(ClientCounters::default());
        let endpoint = Endpoint::start(Arc::new(|| Some("# EOF\n".to_string())), clients.clone())
            .expect("start");
        let addr = serve_on_loopback(&endpoint);
        // Connections that send nothing hold every slot of 127.0.0.1.
        let held: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            while !f() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                thread::sleep(Duration::from_millis(10));
            }
        };
        let mut extra = std::net::TcpStream::connect(addr).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(4)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        // Closed at once (before HEAD_TIMEOUT), not served.
        assert_eq!(extra.read(&mut buf).map_err(|e| e.kind()), Ok(0));
        wait_for("the refused client was not counted", &|| {
            clients.too_many_from_source.load(Ordering::Relaxed) == 1
        });
        assert_eq!(clients.too_many.load(Ordering::Relaxed), 0);
        let text = render(&status(), &ReconcileCounters::default(), &clients);
        assert!(
            text.contains(
                "netman_metrics_connections_dropped_total{deployment=\"site-a\",reason=\"too_many_from_source\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "netman_metrics_connections_dropped_total{deployment=\"site-a\",reason=\"timed_out\"} 0\n"
            ),
            "{text}"
        );
        drop(held);
    }
}
