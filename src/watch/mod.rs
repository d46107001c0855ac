//! The watcher of a running deployment: follows the manifest file (also
//! when it is replaced by rename, as git and editors do) and the kernel
//! (rtnetlink link/address/route events, plus a periodic full resync for
//! what sends no events, like nftables), and re-applies when either moves:
//! a new manifest converges by itself, and owned state changed by hand is
//! put back. It also carries out the automatic revert of an unconfirmed
//! `apply --confirm-timeout`, surviving engine restarts (the deadline is in
//! the state file).
//!
//! It does not fight: changes are debounced; a manifest that fails to parse
//! or validate is not applied (the running configuration stays, the error is
//! logged and shown by `status`); a file is applied when it *changes*, not
//! whenever it differs from what is in force (so an automatic revert is not
//! undone by the very file it reverted); nothing is applied while a
//! confirmation is pending except the revert; and its own changes cause at
//! most one more, empty, reconcile.
//!
//! It sits above both `deploy` (which it calls to apply) and the engine
//! (whose configuration it drives): the engine knows nothing of it, and
//! starts it through the ready hook `engine::serve` takes. What it reports
//! (`status`, metrics) goes into the engine's [`Shared`].

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteAttribute;

use crate::clock::now_unix_ms;
use crate::deploy::{self, EngineStep, Resolved};
use crate::engine::EngineCtx;
use crate::engine::shared::Shared;
use crate::error::ErrorKind;
use crate::health;
use crate::link::netlink::Netlink;
use crate::manifest::{self, Manifest};
use crate::network;
use crate::reconcile::ApplyOptions;
use crate::state::{DeploymentState, HealthGate, ManifestRecord, Stamp, StateDir};

mod policy;
mod probation;

pub use policy::{Policy, Step, Trigger};
use probation::{Look, Probation};

/// The engine's ready hook that starts its watcher.
pub fn ready_hook() -> crate::engine::ReadyHook {
    Box::new(|ctx: Arc<EngineCtx>| {
        let (sd, name, shared) = (
            ctx.state_dir().clone(),
            ctx.deployment().to_owned(),
            ctx.shared(),
        );
        spawn(sd, name, ctx, shared).map(drop)
    })
}

/// Run the watcher of deployment `name` in a thread of its own.
pub fn spawn(
    sd: StateDir,
    name: String,
    engine: Arc<EngineCtx>,
    shared: Arc<Shared>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "watcher: cannot start its runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let mut w = Watcher {
                    state: StateCache::new(sd.clone(), name.clone()),
                    sd,
                    name,
                    engine,
                    shared,
                    last_file_hash: None,
                    watched: None,
                    inotify: None,
                    link_index: None,
                    memo: None,
                    read_error: None,
                    policy: Policy::new(Instant::now()),
                    probation: None,
                    next_look: Instant::now(),
                };
                if let Err(e) = w.run().await {
                    tracing::error!(error = %e, "watcher stopped");
                }
            });
        })
}

struct Watcher {
    sd: StateDir,
    name: String,
    engine: Arc<EngineCtx>,
    shared: Arc<Shared>,
    /// Hash of the manifest file when last read (applied or not).
    last_file_hash: Option<String>,
    /// The manifest file watched, and its directory's inotify watch.
    watched: Option<PathBuf>,
    inotify: Option<Inotify>,
    /// The deployment's link, to filter kernel events.
    link_index: Option<u32>,
    /// The last manifest parsed, by SHA-256.
    memo: Option<(String, Manifest)>,
    /// The state file as last read.
    state: StateCache,
    /// Why the manifest file could not be read last time (logged once).
    read_error: Option<String>,
    /// When to reconcile (debounce, back-off, deadline, resync).
    policy: Policy,
    /// The change on probation (confirm by health), if one is.
    probation: Option<Probation>,
    /// When to look at it next.
    next_look: Instant,
}

impl Watcher {
    async fn run(&mut self) -> io::Result<()> {
        let nl = Netlink::connect().map_err(io::Error::other)?;
        let (mut conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
            rtnetlink::MulticastGroup::Ipv6Ifaddr,
            rtnetlink::MulticastGroup::Ipv4Route,
            rtnetlink::MulticastGroup::Ipv6Route,
            rtnetlink::MulticastGroup::Ipv4Rule,
            rtnetlink::MulticastGroup::Ipv6Rule,
        ])?;
        // An apply of thousands of routes sends an event for each, in one
        // burst: the default receive buffer (rmem_default, about 200 KiB)
        // overflows while this thread waits for a core, and the kernel
        // drops the rest (an overrun, handled below).
        {
            use std::os::fd::AsRawFd;
            if let Err(e) = force_rcvbuf(conn.socket_mut().as_raw_fd(), EVENTS_RCVBUF) {
                tracing::warn!(error = %e, "cannot enlarge the kernel event socket's buffer");
            }
        }
        let conn_task = tokio::spawn(conn);
        let result = loop {
            let (pending, gated) = match self.pending() {
                Some((due, gated)) => (Some(due), gated),
                None => (None, false),
            };
            let wake = self.policy.wake_at(pending);
            let watching = self.shared.watch.load(Ordering::Relaxed);
            let on_probation = gated || self.probation.is_some();
            tokio::select! {
                _ = tokio::time::sleep_until(self.next_look.into()), if on_probation => {
                    self.look_at_probation();
                }
                ev = events.next() => {
                    let Some((msg, _)) = ev else { break Ok(()) };
                    self.shared.events.fetch_add(1, Ordering::Relaxed);
                    // Events were lost: any of them may have been drift.
                    let overrun = matches!(msg.payload, NetlinkPayload::Overrun(_));
                    if overrun {
                        tracing::warn!("kernel events were lost (netlink overrun); reconciling");
                    }
                    if watching && (overrun || self.relevant(&msg.payload)) {
                        self.policy.kernel_event(Instant::now());
                    }
                }
                r = inotify_event(self.inotify.as_mut()) => {
                    match r {
                        Ok(true) if watching => self.policy.file_event(Instant::now()),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "manifest watch failed; relying on resyncs");
                            self.inotify = None;
                        }
                    }
                }
                _ = self.shared.wake.notified() => {
                    // Whoever poked has just changed the state file.
                    self.state.invalidate();
                    self.policy.poke(Instant::now());
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    match self.policy.step(Instant::now(), pending, watching) {
                        Some(Step::Reconcile(trigger)) => self.reconcile(&nl, trigger).await,
                        Some(Step::Resync { reconcile }) => {
                            self.state.invalidate();
                            if reconcile {
                                self.reconcile(&nl, Trigger::Resync).await;
                            }
                        }
                        None => {}
                    }
                }
            }
        };
        conn_task.abort();
        result
    }

    /// When the pending confirmation (if any) is due, and whether it is
    /// confirmed by health (one look at the state per loop turn).
    fn pending(&mut self) -> Option<(Instant, bool)> {
        let p = self
            .state
            .get(&self.shared.state_reads)?
            .pending_confirm
            .as_ref()?;
        let (deadline_ms, gated) = (p.deadline_ms, p.health.is_some());
        let now_ms = now_unix_ms();
        let due = Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        Some((due, gated))
    }

    /// The health gate of the pending confirmation, if it has one.
    fn pending_gate(&mut self) -> Option<HealthGate> {
        self.state
            .get(&self.shared.state_reads)?
            .pending_confirm
            .as_ref()?
            .health
            .clone()
    }

    /// Look at the change on probation: confirm it once healthy, ask for
    /// handshakes, report what it waits for.
    fn look_at_probation(&mut self) {
        self.next_look = Instant::now() + probation::TICK;
        let Some(gate) = self.pending_gate() else {
            // Confirmed, reverted or replaced.
            self.probation = None;
            self.shared.set_probation(Vec::new());
            return;
        };
        if self.probation.as_ref().map(|p| p.gate.since_ms) != Some(gate.since_ms) {
            tracing::warn!(
                deployment = %self.name,
                peers = ?gate.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                probes = ?gate.probes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "a change is on probation: it is kept once every peer with a recent handshake handshakes again and every probe answers"
            );
            self.probation = Some(Probation::new(gate));
        }
        let peers = self.engine.status().ok().map(|s| s.peers);
        let Some(p) = self.probation.as_mut() else {
            return;
        };
        match p.look(peers.as_deref(), Instant::now()) {
            Look::Healthy => {
                let since_ms = p.gate.since_ms;
                match deploy::confirm_healthy(&self.sd, &self.name, since_ms) {
                    Ok(true) => {
                        tracing::warn!(
                            deployment = %self.name,
                            "healthy: every peer handshook again and every probe answered; the change is kept"
                        );
                        self.shared
                            .counters
                            .health_confirms
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot confirm the healthy change");
                        return;
                    }
                }
                self.probation = None;
                self.shared.set_probation(Vec::new());
                self.state.invalidate();
            }
            Look::Waiting { rehandshake } => {
                self.shared.set_probation(health::lines(&p.unmet));
                if !rehandshake.is_empty()
                    && let Err(e) = self.engine.rehandshake(rehandshake)
                {
                    tracing::warn!(error = %e, "cannot ask the engine for handshakes");
                }
            }
        }
    }

    /// Why a due pending confirmation is reverted, and whether it was
    /// on probation (confirmed by health).
    fn revert_reason(&mut self) -> (String, bool) {
        let gate = self.pending_gate();
        let by_health = gate.is_some();
        let reason = match (&self.probation, gate) {
            (Some(p), Some(g)) if p.gate.since_ms == g.since_ms => format!(
                "not healthy before the deadline: {}",
                health::lines(&p.unmet).join("; ")
            ),
            (_, Some(_)) => "not healthy before the deadline".to_owned(),
            _ => "no `netman confirm` before the deadline".to_owned(),
        };
        (reason, by_health)
    }

    /// Whether a kernel event may concern this deployment.
    fn relevant(&self, payload: &NetlinkPayload<RouteNetlinkMessage>) -> bool {
        let NetlinkPayload::InnerMessage(m) = payload else {
            return false;
        };
        let Some(idx) = self.link_index else {
            return true;
        };
        match m {
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                l.header.index == idx
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                a.header.index == idx
            }
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(o) if *o == idx)),
            // Policy rules are not tied to the link: any of netman's
            // (full tunnel, see `model::Routing`).
            RouteNetlinkMessage::NewRule(r) | RouteNetlinkMessage::DelRule(r) => {
                r.attributes.iter().any(|a| {
                    matches!(
                        a,
                        netlink_packet_route::rule::RuleAttribute::Protocol(p)
                            if u8::from(*p) == crate::link::model::ROUTE_PROTOCOL
                    )
                })
            }
            _ => false,
        }
    }

    /// One reconcile: resolve a due confirmation, or apply the manifest to
    /// follow (the file if it changed and is valid, else the one in force).
    async fn reconcile(&mut self, nl: &Netlink, trigger: Trigger) {
        self.reconcile_inner(nl, trigger).await;
        // What it did changed the state file (a rename may even reuse the
        // inode of the file read before, within one timestamp tick).
        self.state.invalidate();
    }

    async fn reconcile_inner(&mut self, nl: &Netlink, trigger: Trigger) {
        let engine = self.engine.clone();
        let step = EngineStep::InProcess(&engine);
        let (reason, by_health) = self.revert_reason();
        match deploy::resolve_pending(nl, &self.sd, &self.name, step, false, Some(reason.clone()))
            .await
        {
            Ok(Some(Resolved::Reverted(applied))) => {
                self.policy.succeeded();
                tracing::warn!(
                    deployment = %self.name,
                    "{reason}: reverted to the previous configuration"
                );
                if by_health {
                    self.shared
                        .counters
                        .health_reverts
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .set_last_error(Some(format!("reverted: {reason}")));
                }
                self.probation = None;
                self.shared.set_probation(Vec::new());
                log_plan(&applied);
                self.shared.counters.applies.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Some(Resolved::TakenDown)) => {
                tracing::warn!(
                    deployment = %self.name,
                    "no `netman confirm` before the deadline: there was no previous configuration, so the deployment was taken down"
                );
                return;
            }
            Ok(None) => {}
            Err(e) => {
                self.policy.failed_as(Instant::now(), e.kind());
                tracing::error!(error = %e, "automatic revert failed");
                self.shared
                    .set_last_error(Some(format!("automatic revert: {e}")));
                self.shared
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !self.shared.watch.load(Ordering::Relaxed) {
            // Not watching: nothing is applied by itself (a deadline was
            // settled above).
            return;
        }
        // Settling a pending confirmation may have changed it just now.
        self.state.invalidate();
        let Some(st) = self.state.get(&self.shared.state_reads) else {
            return; // gone (down in progress)
        };
        let Some(in_force) = st.manifest.clone() else {
            return;
        };
        let pending = st.pending_confirm.is_some();
        let reverted_sha256 = st.reverted_sha256.clone();
        if self.watched.as_deref() != Some(in_force.path.as_path()) {
            self.watch_file(&in_force.path);
        }
        let current = match self.parsed(&in_force) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "the manifest in force does not parse any more");
                return;
            }
        };
        let in_force_rollout = current.rollout.clone();
        let mut target: Manifest = current;
        let mut from_file = false;
        if self.shared.watch.load(Ordering::Relaxed) {
            match manifest::read_text(&in_force.path) {
                Ok(text) => {
                    self.read_error = None;
                    let hash = manifest::sha256_hex(&text);
                    let changed = self.last_file_hash.as_deref() != Some(hash.as_str());
                    self.last_file_hash = Some(hash.clone());
                    let known = hash == in_force.file_sha256()
                        || reverted_sha256.as_deref() == Some(hash.as_str());
                    if known {
                        if changed {
                            self.shared.set_manifest_error(None);
                        }
                    } else if changed {
                        // A network file: this deployment's site of it.
                        let site = in_force.derived_from.as_ref().map(|d| d.site.as_str());
                        match network::manifest_of(&text, &in_force.path, site) {
                            Ok(m) if m.name != self.name => {
                                let e = format!(
                                    "{}: names deployment {:?}, but this engine serves {:?}; not applied",
                                    in_force.path.display(),
                                    m.name,
                                    self.name
                                );
                                tracing::error!("{e}");
                                self.shared.set_manifest_error(Some(e));
                            }
                            Ok(_) if pending => {
                                tracing::warn!(
                                    "the manifest file changed while an apply waits for `netman confirm`; not applied"
                                );
                            }
                            Ok(m) => {
                                self.memo = Some((m.source.sha256.clone(), m.clone()));
                                target = m;
                                from_file = true;
                            }
                            Err(e) => {
                                let e = e.to_string();
                                tracing::error!(
                                    "the manifest file is invalid; the running configuration stays:\n{e}"
                                );
                                self.shared.set_manifest_error(Some(e));
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() => {
                    if trigger == Trigger::File {
                        tracing::warn!(path = %in_force.path.display(), error = %e, "cannot read the manifest file");
                    }
                }
                Err(e) => {
                    // Not a regular file (a FIFO, a device ...) or too
                    // large: refused without reading it; the running
                    // configuration stays. Once it is a file again, it is
                    // read as a change.
                    let e = manifest::read_error(&in_force.path, &e).to_string();
                    self.last_file_hash = None;
                    if self.read_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(
                            "the manifest file cannot be read; the running configuration stays:\n{e}"
                        );
                        self.read_error = Some(e.clone());
                    }
                    self.shared.set_manifest_error(Some(e));
                }
            }
        }
        if !from_file && matches!(trigger, Trigger::Start | Trigger::Poke) {
            // The apply that started or poked this engine has just brought
            // everything to the manifest in force: nothing to repair (kernel
            // events and the resync catch anything later).
            self.refresh_link_index(nl, &target.interface.name).await;
            return;
        }
        let mut opts = ApplyOptions {
            if_in_force: Some((in_force.path.clone(), in_force.sha256.clone())),
            by_watcher: true,
            ..ApplyOptions::default()
        };
        // `rollout: {confirm: healthy}` (of the manifest in force, or of
        // the new file): a changed file is applied on probation.
        if from_file && let Some(r) = in_force_rollout.or_else(|| target.rollout.clone()) {
            let before = self.engine.status().ok().map(|s| s.peers);
            opts.confirm_timeout = Some(Duration::from_secs(r.timeout_secs));
            opts.health = Some(health::gate(&target, before.as_deref(), now_unix_ms()));
        }
        match deploy::apply(nl, &self.sd, &target, step, opts).await {
            Ok(applied) => {
                self.policy.succeeded();
                self.refresh_link_index(nl, &target.interface.name).await;
                if from_file {
                    self.shared.set_manifest_error(None);
                }
                self.shared.set_last_error(None);
                if !applied.is_empty() {
                    self.shared.counters.applies.fetch_add(1, Ordering::Relaxed);
                    if !from_file {
                        self.shared
                            .counters
                            .drift_repairs
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(
                        deployment = %self.name,
                        cause = ?trigger,
                        "{}",
                        if from_file { "applied the changed manifest" } else { "repaired drift" }
                    );
                    log_plan(&applied);
                }
            }
            Err(e) => {
                // Refused while an apply waits for `netman confirm`: no
                // failure, the revert or the confirmation comes later.
                let kind = e.kind();
                let e = e.to_string();
                if from_file {
                    self.shared.set_manifest_error(Some(e.clone()));
                }
                if kind == ErrorKind::Busy {
                    return;
                }
                self.policy.failed_as(Instant::now(), kind);
                tracing::error!(cause = ?trigger, "reconcile failed: {e}");
                self.shared.set_last_error(Some(e));
                self.shared
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Remember the deployment's link index, to filter kernel events.
    async fn refresh_link_index(&mut self, nl: &Netlink, ifname: &str) {
        self.link_index = nl
            .link_by_name(ifname)
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index);
    }

    /// The manifest of `text`, parsed once per content (a manifest of
    /// 10,000 routes takes tens of milliseconds to parse).
    fn parsed(&mut self, rec: &ManifestRecord) -> Result<Manifest, String> {
        if let Some((h, m)) = &self.memo
            && h == &rec.sha256
            && m.source.path == rec.path
            && m.source.derived_from == rec.derived_from
        {
            return Ok(m.clone());
        }
        let m = rec.manifest().map_err(|e| e.to_string())?;
        self.memo = Some((rec.sha256.clone(), m.clone()));
        Ok(m)
    }

    fn watch_file(&mut self, path: &Path) {
        self.watched = Some(path.to_path_buf());
        self.inotify = match Inotify::new(path) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the manifest file; relying on resyncs");
                None
            }
        };
    }
}

/// The receive buffer of the watcher's kernel event socket: room for
/// about ten thousand events of one burst.
const EVENTS_RCVBUF: libc::c_int = 8 << 20;

/// `SO_RCVBUFFORCE` (past `rmem_max`; the engine has CAP_NET_ADMIN), else
/// `SO_RCVBUF` (capped at `rmem_max`).
fn force_rcvbuf(fd: std::os::fd::RawFd, bytes: libc::c_int) -> io::Result<()> {
    let set = |opt| {
        // SAFETY: setsockopt on a live socket with a c_int value and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 || set(libc::SO_RCVBUF) == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The deployment's state file as last read: read (and parsed) again only
/// when it changed since (its inode, size or times: every save renames a
/// new file into place) or after [`StateCache::invalidate`] (a poke, a
/// resync, a reconcile of the watcher's own), not for every kernel event.
struct StateCache {
    sd: StateDir,
    name: String,
    /// The file's identity when last read (`None`: there was none) and the
    /// state then (`None`: none, or unreadable).
    loaded: Option<(Option<Stamp>, Option<DeploymentState>)>,
    stale: bool,
}

impl StateCache {
    fn new(sd: StateDir, name: String) -> StateCache {
        StateCache {
            sd,
            name,
            loaded: None,
            stale: true,
        }
    }

    /// Read the file again at the next [`StateCache::get`].
    fn invalidate(&mut self) {
        self.stale = true;
    }

    /// The recorded state (one `stat`; a read counted in `reads` only when
    /// the file changed or the cache was invalidated).
    fn get(&mut self, reads: &AtomicU64) -> Option<&DeploymentState> {
        let now = self.sd.stamp(&self.name);
        let fresh = !self.stale && matches!(&self.loaded, Some((seen, _)) if *seen == now);
        if !fresh {
            self.stale = false;
            self.loaded = Some(match now {
                None => (None, None),
                Some(_) => {
                    reads.fetch_add(1, Ordering::Relaxed);
                    match self.sd.load_stamped(&self.name) {
                        Ok(Some((st, stamp))) => (Some(stamp), Some(st)),
                        Ok(None) => (None, None),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the state file");
                            (now, None)
                        }
                    }
                }
            });
        }
        self.loaded.as_ref().and_then(|(_, st)| st.as_ref())
    }
}

fn log_plan(applied: &crate::reconcile::Applied) {
    let text = format!("{}{}", applied.kernel, applied.firewall);
    for line in text
        .lines()
        .chain(applied.engine.iter().map(String::as_str))
    {
        tracing::warn!("  {line}");
    }
}

/// An inotify watch on the directory of one file, reporting events that
/// concern that file (written, replaced by rename, created, deleted),
/// through the `inotify` crate's tokio event stream.
struct Inotify {
    events: inotify::EventStream<[u8; 4096]>,
    name: std::ffi::OsString,
}

impl Inotify {
    fn new(path: &Path) -> io::Result<Inotify> {
        use inotify::WatchMask;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
        let watch = inotify::Inotify::init()?;
        watch.watches().add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::ATTRIB,
        )?;
        let events = watch.into_event_stream([0u8; 4096])?;
        Ok(Inotify { events, name })
    }
}

/// Wait for the next inotify event (forever without a watch): true if it
/// concerns the file (or the watch itself went away).
async fn inotify_event(i: Option<&mut Inotify>) -> io::Result<bool> {
    let Some(i) = i else {
        return std::future::pending().await;
    };
    match i.events.next().await {
        Some(Ok(ev)) => Ok(ev.name.as_deref() == Some(i.name.as_os_str())
            || ev.mask.contains(inotify::EventMask::IGNORED)),
        Some(Err(e)) => Err(e),
        None => Err(io::Error::other("inotify stream ended")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_read_again_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("netman-state-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sd = StateDir::open(&dir).expect("state dir");
        let reads = AtomicU64::new(0);
        let n = || reads.load(Ordering::Relaxed);
        let mut cache = StateCache::new(sd.clone(), "site-a".to_owned());

        // No state file: nothing to read, however often asked.
        for _ in 0..100 {
            assert!(cache.get(&reads).is_none());
        }
        assert_eq!(n(), 0);

        let mut st = DeploymentState::new("site-a");
        sd.save(&st).expect("save");
        assert_eq!(cache.get(&reads), Some(&st));
        // 10,000 kernel events: one read in all.
        for _ in 0..10_000 {
            assert!(cache.get(&reads).is_some());
        }
        assert_eq!(n(), 1);

        // Saved by someone else (a rename of a new file into place).
        st.applied_at = Some(42);
        sd.save(&st).expect("save");
        assert_eq!(cache.get(&reads).and_then(|s| s.applied_at), Some(42));
        assert_eq!(n(), 2);

        // A poke reads it again even if nothing seems to have changed.
        cache.invalidate();
        assert!(cache.get(&reads).is_some());
        assert_eq!(n(), 3);

        // Changed in place into something unreadable: read once, not per
        // event.
        std::fs::write(dir.join("site-a.json"), "{not json").expect("write");
        for _ in 0..100 {
            assert!(cache.get(&reads).is_none());
        }
        assert_eq!(n(), 4);

        // Removed.
        sd.remove("site-a").expect("remove");
        assert!(cache.get(&reads).is_none());
        assert_eq!(n(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
