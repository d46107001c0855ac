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

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteAttribute;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::EngineCtx;
use super::metrics::ReconcileCounters;
use crate::clock::now_unix_ms;
use crate::deploy::{self, DeployError, EngineStep, Resolved};
use crate::manifest::{self, Manifest};
use crate::netlink::Netlink;
use crate::reconcile::{ApplyOptions, ReconcileError};
use crate::state::{DeploymentState, Stamp, StateDir};

/// Debounce after a kernel event (our own changes come as bursts).
const KERNEL_DEBOUNCE: Duration = Duration::from_millis(100);
/// Debounce after a manifest file event (editors write in several steps).
const FILE_DEBOUNCE: Duration = Duration::from_millis(200);
/// Full resync even without events.
const RESYNC: Duration = Duration::from_secs(10);

/// What `status` shows about the watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub enabled: bool,
    /// The last manifest file that could not be applied, and why.
    pub manifest_error: Option<String>,
    /// The last reconcile that failed, and why.
    pub last_error: Option<String>,
    pub applies: u64,
    pub drift_repairs: u64,
    pub failures: u64,
}

/// How much work the watcher did (`status --output json`:
/// `engine.watch_counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCounters {
    /// rtnetlink messages the watcher received.
    pub events: u64,
    /// Times the watcher read (and parsed) the state file: only when it
    /// changed, after a poke, a resync or a reconcile of its own.
    pub state_reads: u64,
}

/// State shared between the watcher, the control socket and metrics.
#[derive(Debug, Default)]
pub struct Shared {
    pub watch: AtomicBool,
    /// Wakes the watcher to re-read the state file.
    pub wake: tokio::sync::Notify,
    pub counters: ReconcileCounters,
    /// See [`WatchCounters`].
    pub events: AtomicU64,
    pub state_reads: AtomicU64,
    errors: Mutex<(Option<String>, Option<String>)>,
}

impl Shared {
    pub fn status(&self) -> WatchStatus {
        let (manifest_error, last_error) =
            self.errors.lock().map(|g| g.clone()).unwrap_or_default();
        WatchStatus {
            enabled: self.watch.load(Ordering::Relaxed),
            manifest_error,
            last_error,
            applies: self.counters.applies.load(Ordering::Relaxed),
            drift_repairs: self.counters.drift_repairs.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
    }

    pub fn counters(&self) -> WatchCounters {
        WatchCounters {
            events: self.events.load(Ordering::Relaxed),
            state_reads: self.state_reads.load(Ordering::Relaxed),
        }
    }

    fn set_manifest_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.errors.lock() {
            g.0 = e;
        }
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.errors.lock() {
            g.1 = e;
        }
    }
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
                    streak: 0,
                    quiet_until: None,
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
    /// Failed reconciles in a row, and until when kernel events and the
    /// pending deadline do not start another (the failed apply's own
    /// revert sends kernel events).
    streak: u32,
    quiet_until: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trigger {
    Start,
    /// An apply or confirm from the CLI finished.
    Poke,
    Kernel,
    File,
    Resync,
    Deadline,
}

impl Watcher {
    async fn run(&mut self) -> io::Result<()> {
        let nl = Netlink::connect().map_err(io::Error::other)?;
        let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
            rtnetlink::MulticastGroup::Ipv6Ifaddr,
            rtnetlink::MulticastGroup::Ipv4Route,
            rtnetlink::MulticastGroup::Ipv6Route,
            rtnetlink::MulticastGroup::Ipv4Rule,
            rtnetlink::MulticastGroup::Ipv6Rule,
        ])?;
        let conn_task = tokio::spawn(conn);
        let mut due: Option<(Instant, Trigger)> = Some((Instant::now(), Trigger::Start));
        let mut next_resync = Instant::now() + RESYNC;
        let result = loop {
            let pending_deadline = self.pending_deadline();
            let mut wake = next_resync;
            if let Some((t, _)) = due {
                wake = wake.min(t);
            }
            let pending_deadline = pending_deadline.map(|t| match self.quiet_until {
                Some(q) => t.max(q),
                None => t,
            });
            if let Some(t) = pending_deadline {
                wake = wake.min(t);
            }
            let watching = self.shared.watch.load(Ordering::Relaxed);
            tokio::select! {
                ev = events.next() => {
                    let Some((msg, _)) = ev else { break Ok(()) };
                    self.shared.events.fetch_add(1, Ordering::Relaxed);
                    if watching && self.relevant(&msg.payload) {
                        let mut at = Instant::now() + KERNEL_DEBOUNCE;
                        if let Some(q) = self.quiet_until {
                            at = at.max(q);
                        }
                        schedule(&mut due, at, Trigger::Kernel);
                    }
                }
                r = inotify_event(self.inotify.as_ref()) => {
                    match r {
                        Ok(true) if watching => {
                            schedule(&mut due, Instant::now() + FILE_DEBOUNCE, Trigger::File);
                        }
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
                    schedule(&mut due, Instant::now(), Trigger::Poke);
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if pending_deadline.is_some_and(|t| t <= now) {
                        self.reconcile(&nl, Trigger::Deadline).await;
                        continue;
                    }
                    if let Some((t, trig)) = due
                        && t <= now {
                            due = None;
                            self.reconcile(&nl, trig).await;
                            next_resync = Instant::now() + RESYNC;
                            continue;
                        }
                    if next_resync <= now {
                        next_resync = now + RESYNC;
                        self.state.invalidate();
                        if watching {
                            self.reconcile(&nl, Trigger::Resync).await;
                        }
                    }
                }
            }
        };
        conn_task.abort();
        result
    }

    /// When the pending confirmation (if any) is due.
    fn pending_deadline(&mut self) -> Option<Instant> {
        let deadline_ms = self
            .state
            .get(&self.shared.state_reads)?
            .pending_confirm
            .as_ref()?
            .deadline_ms;
        let now_ms = now_unix_ms();
        Some(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
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
                            if u8::from(*p) == crate::model::ROUTE_PROTOCOL
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
        match deploy::resolve_pending(nl, &self.sd, &self.name, step, false).await {
            Ok(Some(Resolved::Reverted(applied))) => {
                self.streak = 0;
                self.quiet_until = None;
                tracing::warn!(
                    deployment = %self.name,
                    "no `netman confirm` before the deadline: reverted to the previous configuration"
                );
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
                self.failed();
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
        let current = match self.parsed(&in_force.text, &in_force.path, &in_force.sha256) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "the manifest in force does not parse any more");
                return;
            }
        };
        let mut target: Manifest = current;
        let mut from_file = false;
        if self.shared.watch.load(Ordering::Relaxed) {
            match manifest::read_text(&in_force.path) {
                Ok(text) => {
                    self.read_error = None;
                    let hash = manifest::sha256_hex(&text);
                    let changed = self.last_file_hash.as_deref() != Some(hash.as_str());
                    self.last_file_hash = Some(hash.clone());
                    let known = hash == in_force.sha256
                        || reverted_sha256.as_deref() == Some(hash.as_str());
                    if known {
                        if changed {
                            self.shared.set_manifest_error(None);
                        }
                    } else if changed {
                        match manifest::parse(&text, &in_force.path) {
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
                                self.memo = Some((hash.clone(), m.clone()));
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
        let opts = ApplyOptions {
            if_in_force: Some((in_force.path.clone(), in_force.sha256.clone())),
            by_watcher: true,
            ..ApplyOptions::default()
        };
        match deploy::apply(nl, &self.sd, &target, step, opts).await {
            Ok(applied) => {
                self.streak = 0;
                self.quiet_until = None;
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
                let pending = matches!(
                    e,
                    DeployError::Reconcile(ReconcileError::PendingConfirm { .. })
                );
                let e = e.to_string();
                if from_file {
                    self.shared.set_manifest_error(Some(e.clone()));
                }
                if pending {
                    return;
                }
                self.failed();
                tracing::error!(cause = ?trigger, "reconcile failed: {e}");
                self.shared.set_last_error(Some(e));
                self.shared
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Back off after a failure: 1 s, 2 s, 4 s ... up to the resync.
    fn failed(&mut self) {
        self.streak = self.streak.saturating_add(1);
        let d = Duration::from_secs(1u64 << self.streak.min(4).saturating_sub(1)).min(RESYNC);
        self.quiet_until = Some(Instant::now() + d);
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
    fn parsed(&mut self, text: &str, path: &Path, sha256: &str) -> Result<Manifest, String> {
        if let Some((h, m)) = &self.memo
            && h == sha256
            && m.source.path == path
        {
            return Ok(m.clone());
        }
        let m = manifest::parse(text, path).map_err(|e| e.to_string())?;
        self.memo = Some((sha256.to_string(), m.clone()));
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

fn schedule(due: &mut Option<(Instant, Trigger)>, at: Instant, t: Trigger) {
    match due {
        // Keep the earlier deadline. A file change wins over a kernel
        // event, and a kernel event over a poke or the start (whose
        // reconcile repairs nothing: it would swallow the event's drift).
        Some((when, trig)) => {
            let wins = match t {
                Trigger::File => true,
                Trigger::Kernel => matches!(*trig, Trigger::Poke | Trigger::Start),
                _ => false,
            };
            if wins {
                *trig = t;
            }
            *when = (*when).min(at);
        }
        None => *due = Some((at, t)),
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
/// concern that file (written, replaced by rename, created, deleted).
struct Inotify {
    fd: AsyncFd<OwnedFd>,
    name: Vec<u8>,
}

impl Inotify {
    fn new(path: &Path) -> io::Result<Inotify> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cdir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("path contains NUL"))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_ATTRIB;
        // SAFETY: valid descriptor and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cdir.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an owned inotify descriptor that stays open as
        // long as the AsyncFd holds it, and nothing else registers it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Inotify { fd, name })
    }

    /// Read pending events; true if one concerns the file.
    fn drain(&self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reading into a live buffer of its size.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(hit);
                }
                return Err(e);
            }
            let n = n as usize;
            let mut off = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while off + header <= n {
                // SAFETY: the kernel wrote whole events; read the header
                // unaligned from the buffer.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let len = ev.len as usize;
                let name_bytes = buf.get(off + header..off + header + len).unwrap_or(&[]);
                let name: Vec<u8> = name_bytes.iter().copied().take_while(|b| *b != 0).collect();
                if name == self.name || ev.mask & libc::IN_IGNORED != 0 {
                    hit = true;
                }
                off += header + len;
            }
        }
    }
}

/// Wait for an inotify event about the file (forever without a watch).
async fn inotify_event(i: Option<&Inotify>) -> io::Result<bool> {
    let Some(i) = i else {
        return std::future::pending().await;
    };
    let mut guard = i.fd.readable().await?;
    let hit = i.drain();
    guard.clear_ready();
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel event while a poke (or the start) is pending must still
    /// be repaired: a poke's reconcile repairs nothing (the apply that
    /// poked has just converged), so keeping `Poke` left drift right after
    /// an apply or confirm until the 10 s resync. A file change wins over
    /// both; the earlier deadline is kept.
    #[test]
    fn a_kernel_event_is_not_swallowed_by_a_pending_poke() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(100);
        for first in [Trigger::Poke, Trigger::Start] {
            let mut due = Some((later, first));
            schedule(&mut due, t0 + Duration::from_millis(200), Trigger::Kernel);
            assert_eq!(due, Some((later, Trigger::Kernel)), "{first:?} then Kernel");
        }
        let mut due = Some((later, Trigger::File));
        schedule(&mut due, t0, Trigger::Kernel);
        assert_eq!(due, Some((t0, Trigger::File)));
        let mut due = Some((later, Trigger::Kernel));
        schedule(&mut due, t0, Trigger::Poke);
        assert_eq!(
            due,
            Some((t0, Trigger::Kernel)),
            "a poke does not hide a kernel event"
        );
        let mut due = None;
        schedule(&mut due, later, Trigger::Poke);
        assert_eq!(due, Some((later, Trigger::Poke)));
    }

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
