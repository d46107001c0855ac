//! Hostname endpoints, kept current: `endpoint: hub.example.net:51820` is
//! resolved at apply, and then again by this thread every
//! `endpoint_refresh` seconds (default 300) and, while the peer's latest
//! handshake is older than `endpoint_stale_after` seconds (default 135, or
//! there is none), every 30 s (or every `endpoint_stale_after` if that is
//! shorter). When the name resolves to another address, the peer's
//! endpoint moves there like a roaming peer's: its session and every
//! other peer are untouched. A name that fails to resolve keeps the last
//! good address; the error is logged once and shown by `status` until a
//! resolution succeeds again.
//!
//! getaddrinfo blocks, so it runs off the data plane, on this thread, and
//! each call is bounded by [`RESOLVE_TIMEOUT`] (a hung resolver is left to
//! finish on a thread of its own, at most one per name, and counts as a
//! failure).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use netman_proto::PublicKey;

use super::config::{EndpointName, EngineConfig};
use super::control::EngineStatus;

/// Longest wait for one resolution.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// While a peer has no recent handshake, re-resolve at most this often.
pub const STALE_RETRY: Duration = Duration::from_secs(30);
/// How often the thread looks at what is due.
const TICK: Duration = Duration::from_secs(1);
/// How often, at most, it asks the data plane for the handshake times
/// (only while some peer's stale retry time has come).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Resolve `host:port` (blocking).
pub type ResolveFn = Arc<dyn Fn(&str, u16) -> Result<SocketAddr, String> + Send + Sync>;
/// The live state (`None`: the data plane did not answer).
pub type Snapshot = Arc<dyn Fn() -> Option<EngineStatus> + Send + Sync>;
/// Point the peer (public key, endpoint name) at a new address.
pub type SetEndpoint = Arc<dyn Fn(&PublicKey, &str, SocketAddr) + Send + Sync>;

/// One hostname endpoint.
struct Target {
    public_key: PublicKey,
    peer: String,
    name: EndpointName,
    /// The address in use: resolved at apply, then by this thread.
    address: Option<SocketAddr>,
    /// Why the last resolution failed.
    error: Option<String>,
    last_try: Instant,
    /// A resolution of this name is still running (timed out).
    busy: Arc<AtomicBool>,
}

/// What is due: one name to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub public_key: PublicKey,
    pub name: EndpointName,
}

/// The hostname endpoints of the configuration in force and what became
/// of their last resolution.
#[derive(Default)]
pub struct Resolver {
    targets: Mutex<Vec<Target>>,
}

impl Resolver {
    /// Follow the configuration in force: its hostname endpoints. A name
    /// already followed keeps its state (the address the configuration
    /// resolved at apply wins when it differs: the engine took it).
    pub fn set_config(&self, cfg: &EngineConfig, now: Instant) {
        let Ok(mut targets) = self.targets.lock() else {
            return;
        };
        let mut old: HashMap<(PublicKey, String), Target> = targets
            .drain(..)
            .map(|t| ((t.public_key, t.name.to_string()), t))
            .collect();
        for p in &cfg.peers {
            let Some(name) = &p.endpoint_name else {
                continue;
            };
            let key = (p.public_key, name.to_string());
            let t = match old.remove(&key) {
                Some(mut t) => {
                    if p.endpoint.is_some() && p.endpoint != t.address {
                        t.address = p.endpoint;
                        t.error = None;
                    }
                    t.peer = p.name.clone();
                    t.name = name.clone();
                    t
                }
                None => Target {
                    public_key: p.public_key,
                    peer: p.name.clone(),
                    name: name.clone(),
                    address: p.endpoint,
                    error: None,
                    last_try: now,
                    busy: Arc::new(AtomicBool::new(false)),
                },
            };
            targets.push(t);
        }
    }

    /// Whether a status snapshot could make something due now (a stale
    /// peer's retry time has come).
    fn wants_status(&self, now: Instant) -> bool {
        self.targets.lock().is_ok_and(|ts| {
            ts.iter()
                .any(|t| now >= t.last_try + stale_retry(&t.name) && !t.busy.load(Ordering::SeqCst))
        })
    }

    /// The names due at `now` (and mark them tried): the refresh interval
    /// passed, or the peer's latest handshake (unix seconds, by public key,
    /// from `handshakes`; absent: none) is older than `stale_after` and the
    /// stale retry time passed.
    pub fn due(
        &self,
        now: Instant,
        now_unix: u64,
        handshakes: &HashMap<PublicKey, Option<u64>>,
    ) -> Vec<Due> {
        let Ok(mut targets) = self.targets.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in targets.iter_mut() {
            if t.busy.load(Ordering::SeqCst) {
                continue;
            }
            let since = now.saturating_duration_since(t.last_try);
            let periodic = since >= Duration::from_secs(u64::from(t.name.refresh_secs));
            let stale = since >= stale_retry(&t.name)
                && handshakes.get(&t.public_key).is_some_and(|hs| {
                    hs.is_none_or(|h| {
                        now_unix.saturating_sub(h) >= u64::from(t.name.stale_after_secs)
                    })
                });
            if periodic || stale {
                t.last_try = now;
                out.push(Due {
                    public_key: t.public_key,
                    name: t.name.clone(),
                });
            }
        }
        out
    }

    /// Record a resolution of `due`; returns the address to move the peer
    /// to when it changed. A failure keeps the address in use.
    pub fn record(&self, due: &Due, result: Result<SocketAddr, String>) -> Option<SocketAddr> {
        let Ok(mut targets) = self.targets.lock() else {
            return None;
        };
        let t = targets
            .iter_mut()
            .find(|t| t.public_key == due.public_key && t.name == due.name)?;
        match result {
            Ok(addr) => {
                if t.error.take().is_some() {
                    tracing::info!(peer = %t.peer, endpoint = %t.name, %addr, "the endpoint name resolves again");
                }
                if t.address == Some(addr) {
                    return None;
                }
                tracing::info!(
                    peer = %t.peer,
                    endpoint = %t.name,
                    from = ?t.address,
                    to = %addr,
                    "the endpoint name resolves to a new address; moving the peer's endpoint"
                );
                t.address = Some(addr);
                Some(addr)
            }
            Err(e) => {
                if t.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        peer = %t.peer,
                        endpoint = %t.name,
                        error = %e,
                        kept = ?t.address,
                        "cannot resolve the endpoint name; keeping the last good address"
                    );
                }
                t.error = Some(e);
                None
            }
        }
    }

    /// Per peer (public key): its endpoint name, the address in use and
    /// the last resolution error.
    pub fn states(&self) -> HashMap<PublicKey, (String, Option<SocketAddr>, Option<String>)> {
        self.targets
            .lock()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        (
                            t.public_key,
                            (t.name.to_string(), t.address, t.error.clone()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn busy_flag(&self, due: &Due) -> Option<Arc<AtomicBool>> {
        let targets = self.targets.lock().ok()?;
        targets
            .iter()
            .find(|t| t.public_key == due.public_key && t.name == due.name)
            .map(|t| t.busy.clone())
    }

    /// Add the resolver's view to a status: the last resolution error of
    /// each peer with a hostname endpoint.
    pub fn annotate(&self, status: &mut EngineStatus) {
        let states = self.states();
        for p in &mut status.peers {
            if let Some((name, _, error)) = states.get(&p.public_key)
                && p.endpoint_name.as_deref() == Some(name.as_str())
            {
                p.endpoint_error.clone_from(error);
            }
        }
    }
}

fn stale_retry(name: &EndpointName) -> Duration {
    STALE_RETRY.min(Duration::from_secs(u64::from(name.stale_after_secs)))
}

/// Resolve with `resolve` on a thread of its own, waiting at most
/// `timeout`. `busy` is set while that thread runs (it may outlive the
/// wait).
pub fn resolve_bounded(
    resolve: &ResolveFn,
    host: &str,
    port: u16,
    timeout: Duration,
    busy: &Arc<AtomicBool>,
) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel();
    let (r, h, b) = (resolve.clone(), host.to_string(), busy.clone());
    busy.store(true, Ordering::SeqCst);
    let spawned = thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let out = r(&h, port);
            b.store(false, Ordering::SeqCst);
            let _ = tx.send(out);
        });
    if let Err(e) = spawned {
        busy.store(false, Ordering::SeqCst);
        return Err(format!("cannot start a resolver thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {} s (the resolver hangs)",
            timeout.as_secs()
        )),
    }
}

/// Start the resolver's thread (`resolver`). It stops when `resolver` is
/// dropped everywhere else.
pub fn spawn(
    resolver: &Arc<Resolver>,
    snapshot: Snapshot,
    set: SetEndpoint,
    resolve: ResolveFn,
) -> std::io::Result<()> {
    let weak: Weak<Resolver> = Arc::downgrade(resolver);
    thread::Builder::new()
        .name("resolver".into())
        .spawn(move || {
            let mut last_status: Option<Instant> = None;
            loop {
                thread::sleep(TICK);
                let Some(r) = weak.upgrade() else { return };
                let now = Instant::now();
                let ask = r.wants_status(now)
                    && last_status.is_none_or(|t| now.saturating_duration_since(t) >= STATUS_EVERY);
                let handshakes: HashMap<PublicKey, Option<u64>> = if ask {
                    last_status = Some(now);
                    snapshot()
                        .map(|s| {
                            s.peers
                                .into_iter()
                                .map(|p| (p.public_key, p.latest_handshake))
                                .collect()
                        })
                        .unwrap_or_default()
                } else {
                    HashMap::new()
                };
                let now_unix = crate::clock::now_unix_secs();
                for due in r.due(now, now_unix, &handshakes) {
                    let Some(busy) = r.busy_flag(&due) else {
                        continue;
                    };
                    let result = resolve_bounded(
                        &resolve,
                        &due.name.host,
                        due.name.port,
                        RESOLVE_TIMEOUT,
                        &busy,
                    );
                    if let Some(addr) = r.record(&due, result) {
                        set(&due.public_key, &due.name.to_string(), addr);
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::PeerSpec;

    fn k1() -> PublicKey {
        PublicKey::from_bytes([1; 32])
    }

    fn k2() -> PublicKey {
        PublicKey::from_bytes([2; 32])
    }

    fn cfg(endpoint: &str, refresh: u32, stale: u32) -> EngineConfig {
        EngineConfig {
            deployment: "a".into(),
            listen_port: None,
            peers: vec![
                PeerSpec {
                    name: "hub".into(),
                    public_key: k1(),
                    endpoint_spec: Some("hub.test:51820".into()),
                    endpoint: Some(endpoint.parse().expect("addr")),
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                    preshared_key_file: None,
                    endpoint_name: Some(EndpointName {
                        host: "hub.test".into(),
                        port: 51820,
                        refresh_secs: refresh,
                        stale_after_secs: stale,
                    }),
                },
                PeerSpec {
                    name: "literal".into(),
                    public_key: k2(),
                    endpoint_spec: Some("192.0.2.9:51820".into()),
                    endpoint: Some("192.0.2.9:51820".parse().expect("addr")),
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                    preshared_key_file: None,
                    endpoint_name: None,
                },
            ],
            ..EngineConfig::example()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_failure_keeps_the_last_good_address_and_is_reported() {
        let r = Resolver::default();
        let t0 = Instant::now();
        r.set_config(&cfg("192.0.2.1:51820", 300, 135), t0);
        let due = r.due(t0 + Duration::from_secs(300), 1_000, &HashMap::new());
        assert_eq!(due.len(), 1, "only the hostname endpoint is followed");
        let d = &due[0];
        // Same address: nothing to move.
        assert_eq!(r.record(d, Ok(addr("192.0.2.1:51820"))), None);
        // The name stops resolving: the address stays, the error shows.
        assert_eq!(r.record(d, Err("Name or service not known".into())), None);
        let (name, address, error) = r.states()[&k1()].clone();
        assert_eq!(name, "hub.test:51820");
        assert_eq!(address, Some(addr("192.0.2.1:51820")));
        assert_eq!(error.as_deref(), Some("Name or service not known"));
        let mut st = EngineStatus {
            deployment: "a".into(),
            pid: 1,
            interface: "nm0".into(),
            listen_port: 1,
            public_key: PublicKey::from_bytes([0; 32]),
            started_at: 0,
            peers: vec![crate::engine::control::PeerStatus {
                endpoint: Some(addr("192.0.2.1:51820")),
                endpoint_name: Some("hub.test:51820".into()),
                ..crate::engine::control::PeerStatus::example("hub", k1())
            }],
            drops: Default::default(),
            udp_gso_refused: 0,
            config: cfg("192.0.2.1:51820", 300, 135),
            watch: None,
            watch_counters: None,
        };
        r.annotate(&mut st);
        assert_eq!(
            st.peers[0].endpoint_error.as_deref(),
            Some("Name or service not known")
        );
        // It resolves again, elsewhere: move, and the error is gone.
        assert_eq!(
            r.record(d, Ok(addr("198.51.100.2:51820"))),
            Some(addr("198.51.100.2:51820"))
        );
        let (_, address, error) = r.states()[&k1()].clone();
        assert_eq!((address, error), (Some(addr("198.51.100.2:51820")), None));
        // A re-apply that resolved the same keeps that state; one that
        // resolved another address takes it.
        r.set_config(&cfg("198.51.100.2:51820", 300, 135), t0);
        assert_eq!(r.states()[&k1()].1, Some(addr("198.51.100.2:51820")));
        r.set_config(&cfg("203.0.113.5:51820", 300, 135), t0);
        assert_eq!(r.states()[&k1()].1, Some(addr("203.0.113.5:51820")));
    }

    #[test]
    fn names_are_due_by_interval_and_while_the_peer_has_no_recent_handshake() {
        let r = Resolver::default();
        let t0 = Instant::now();
        r.set_config(&cfg("192.0.2.1:51820", 300, 135), t0);
        let none = HashMap::new();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(r.due(at(299), 0, &none).is_empty());
        assert_eq!(r.due(at(300), 0, &none).len(), 1);
        // Just tried: not due again before the next interval.
        assert!(r.due(at(301), 0, &none).is_empty());
        // A fresh handshake: not stale.
        let fresh: HashMap<PublicKey, Option<u64>> = [(k1(), Some(10_000))].into();
        assert!(r.due(at(340), 10_100, &fresh).is_empty());
        // Older than 135 s: due every 30 s.
        assert_eq!(r.due(at(340), 10_135, &fresh).len(), 1);
        assert!(r.due(at(350), 10_145, &fresh).is_empty());
        assert_eq!(r.due(at(370), 10_165, &fresh).len(), 1);
        // No handshake at all counts as stale too.
        let never: HashMap<PublicKey, Option<u64>> = [(k1(), None)].into();
        assert_eq!(r.due(at(400), 0, &never).len(), 1);
        // A short stale_after shortens the retry.
        let r = Resolver::default();
        r.set_config(&cfg("192.0.2.1:51820", 300, 5), t0);
        assert_eq!(r.due(at(5), 0, &never).len(), 1);
        assert_eq!(r.due(at(10), 0, &never).len(), 1);
    }

    #[test]
    fn a_hung_resolver_is_cut_off_and_not_started_twice() {
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().expect("lock");
        let g = gate.clone();
        let hung: ResolveFn = Arc::new(move |_, _| {
            let _wait = g.lock();
            Err("late".into())
        });
        let busy = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let r = resolve_bounded(&hung, "h", 1, Duration::from_millis(100), &busy);
        assert!(r.is_err_and(|e| e.contains("no answer")));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(busy.load(Ordering::SeqCst), "still running");
        drop(hold);
        let done = (0..200).any(|_| {
            thread::sleep(Duration::from_millis(10));
            !busy.load(Ordering::SeqCst)
        });
        assert!(done, "busy flag not cleared");
        let ok: ResolveFn = Arc::new(|_, p| Ok(SocketAddr::from(([192, 0, 2, 1], p))));
        assert_eq!(
            resolve_bounded(&ok, "h", 7, Duration::from_secs(5), &busy),
            Ok(addr("192.0.2.1:7"))
        );
    }
}
