//! The forwarding engine: a process per deployment that attaches to the
//! deployment's TUN device, binds its UDP port and drives the WireGuard
//! protocol core ([`dataplane`]), serving status and configuration on a
//! control socket ([`control`]) and, read-only, on WireGuard's userspace
//! API socket for `wg show` ([`uapi`]). `netman apply` starts it detached
//! ([`spawn_detached`]); `netman run` runs it in the foreground ([`serve`]).

pub mod config;
pub mod control;
pub mod dataplane;
pub mod drops;
pub mod fq;
pub mod handshake;
pub mod metrics;
pub mod pktio;
pub mod resolver;
pub mod shared;
pub mod tunrx;
pub mod uapi;
pub mod udp;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use thiserror::Error;

use crate::files;
use crate::state::StateDir;
use config::{EngineChange, EngineConfig};
use control::{ControlError, Request, Response};
use dataplane::{CONTROL_TIMEOUT, Command as DpCommand, Control, DataPlane, EngineError};
use shared::Shared;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("engine for deployment {name} is already running (pid {pid})")]
    AlreadyRunning { name: String, pid: u32 },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("engine config {path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },
    #[error("engine for deployment {name} did not start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("engine for deployment {name}: {reason}")]
    Signal { name: String, reason: String },
}

/// Why the running engine did not take a command from this process (the
/// watcher's configure or stop).
#[derive(Debug, Error)]
pub enum CtxError {
    #[error("this engine serves deployment {serves}, not {asked}")]
    WrongDeployment { serves: String, asked: String },
    /// The data plane thread has ended (the engine is stopping).
    #[error("the data plane has stopped")]
    Stopped,
    #[error("the data plane did not answer")]
    NoAnswer,
    /// The data plane refused the configuration (its reason).
    #[error("{0}")]
    Refused(String),
}

/// The largest engine config read back (1,000 peers take about 1 MiB).
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Record `cfg` in `<state-dir>/<name>.engine.json` (mode 0600, through a
/// fresh temp file, never through a symlink).
pub fn write_config(sd: &StateDir, cfg: &EngineConfig) -> Result<(), ServeError> {
    let path = sd.engine_config(&cfg.deployment);
    let err = |reason: String| ServeError::ConfigFile {
        path: path.clone(),
        reason,
    };
    sd.check().map_err(|e| err(e.to_string()))?;
    let data = serde_json::to_vec_pretty(cfg).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    // The control thread and the watcher both record configs: one at a
    // time through the one temp file.
    static WRITING: Mutex<()> = Mutex::new(());
    let _one = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    files::write_atomic(&path, &tmp, &data, 0o600).map_err(|(p, e)| err(format!("{p}: {e}")))
}

/// The engine config recorded for `name` (not read through a symlink).
pub fn read_config(sd: &StateDir, name: &str) -> Result<EngineConfig, ServeError> {
    let path = sd.engine_config(name);
    let err = |reason: String| ServeError::ConfigFile {
        path: path.clone(),
        reason,
    };
    sd.check().map_err(|e| err(e.to_string()))?;
    let bytes = files::read_file(&path, true, MAX_CONFIG_BYTES).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
}

/// Ask the engine of `name` something.
pub fn request(sd: &StateDir, name: &str, req: &Request) -> Result<Response, ControlError> {
    control::request(&sd.control_socket(name), req, CONTROL_TIMEOUT)
}

/// The pid of the running engine of `name`, if one answers.
pub fn running_pid(sd: &StateDir, name: &str) -> Option<u32> {
    match request(sd, name, &Request::Ping) {
        Ok(Response::Pong { pid, .. }) => Some(pid),
        _ => None,
    }
}

/// Run the engine of `cfg.deployment` in this process until SIGTERM/SIGINT
/// or a stop request. Leaves the kernel state alone.
/// Started by [`serve`] once the engine is up (its control socket bound,
/// the data plane configured), before it reports ready: the layer above
/// hangs what drives the engine here (the watcher, `crate::watch`) without
/// the engine knowing it.
pub type ReadyHook = Box<dyn FnOnce(Arc<EngineCtx>) -> io::Result<()> + Send>;

pub fn serve(sd: &StateDir, cfg: EngineConfig, on_ready: ReadyHook) -> Result<(), ServeError> {
    let name = cfg.deployment.clone();
    let sock = sd.control_socket(&name);
    if let Some(pid) = running_pid(sd, &name) {
        return Err(ServeError::AlreadyRunning { name, pid });
    }
    let signals = dataplane::stop_signals().map_err(|source| ServeError::Socket {
        path: sock.clone(),
        source,
    })?;
    let watch = cfg.watch;
    let metrics_addr = cfg.metrics;
    let (mut dp, control) = DataPlane::new(cfg, Some(signals))?;
    write_config(sd, dp.config())?;
    let shared = Arc::new(Shared::default());
    shared.watch.store(watch, Ordering::Relaxed);

    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|source| ServeError::Socket {
        path: sock.clone(),
        source,
    })?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).map_err(|source| {
        ServeError::Socket {
            path: sock.clone(),
            source,
        }
    })?;
    // wg's socket: bound now, while the engine may still create the
    // directory; served once the capabilities are dropped. Not being able
    // to serve it (another process has it) costs `wg show`, not the tunnel.
    let interface = dp.config().interface.clone();
    let uapi_bound = match uapi::bind(Path::new(uapi::SOCKET_DIR), &interface) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "`wg show` will not see this interface");
            None
        }
    };
    // Capabilities are per thread and inherited: drop them before any other
    // thread exists.
    let port = dp.listen_port();
    let metrics_port = metrics_addr.map_or(0, |a| a.port());
    if let Err(e) = drop_privileges(&[port, metrics_port]) {
        tracing::warn!(error = %e, "could not drop privileges; the engine keeps them");
    }
    // Started only now: a thread spawned before the drop would keep every
    // capability (they are per thread). A privileged metrics port keeps
    // CAP_NET_BIND_SERVICE, like a privileged listen port.
    let metrics = Mutex::new(None);
    update_metrics(&metrics, metrics_addr, &control, &shared);
    let resolver = Arc::new(resolver::Resolver::default());
    resolver.set_config(dp.config(), Instant::now());
    {
        let (c1, c2) = (control.clone(), control.clone());
        let snapshot: resolver::Snapshot = Arc::new(move || {
            let (tx, rx) = mpsc::channel();
            c1.send(DpCommand::Status(tx)).ok()?;
            rx.recv_timeout(CONTROL_TIMEOUT).ok()
        });
        let set: resolver::SetEndpoint = Arc::new(move |key, name, addr| {
            let _ = c2.send(DpCommand::SetEndpoint {
                public_key: *key,
                name: name.to_string(),
                addr,
            });
        });
        let resolve: resolver::ResolveFn = Arc::new(config::resolve_host);
        if let Err(e) = resolver::spawn(&resolver, snapshot, set, resolve) {
            tracing::warn!(error = %e, "cannot start the resolver: hostname endpoints stay as resolved at apply");
        }
    }
    let ctx = Arc::new(EngineCtx {
        control,
        sd: sd.clone(),
        name: name.clone(),
        shared: shared.clone(),
        metrics,
        resolver,
    });
    let uapi_server = uapi_bound.and_then(|b| {
        let control = ctx.control.clone();
        let snapshot: uapi::Snapshot = Arc::new(move || {
            let (tx, rx) = mpsc::channel();
            control.send(DpCommand::Status(tx)).ok()?;
            rx.recv_timeout(CONTROL_TIMEOUT).ok()
        });
        b.serve(&interface, snapshot, 0)
            .map_err(|e| tracing::warn!(error = %e, "`wg show` will not see this interface"))
            .ok()
    });
    let ctx2 = ctx.clone();
    thread::Builder::new()
        .name("control".into())
        .spawn(move || control_loop(listener, ctx2))
        .map_err(|source| ServeError::Socket {
            path: sock.clone(),
            source,
        })?;
    on_ready(ctx).map_err(|source| ServeError::Socket {
        path: sock.clone(),
        source,
    })?;
    notify_systemd(&[NotifyState::Ready, NotifyState::MainPid(std::process::id())]);
    let result = dp.run();
    notify_systemd(&[NotifyState::Stopping]);
    // Removes wg's socket (if it is still this engine's).
    drop(uapi_server);
    // Remove the socket only if it is still ours.
    let _ = fs::remove_file(&sock);
    tracing::info!(deployment = %name, "engine stopped");
    result.map_err(ServeError::from)
}

/// Tell systemd (Type=notify) about our state, if it is listening
/// (`NOTIFY_SOCKET`, a path or an abstract `@name`), through the
/// `sd-notify` crate.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Keep only what the running engine needs: CAP_NET_ADMIN (TUN queues,
/// netlink), and CAP_NET_BIND_SERVICE only for a privileged listen (or
/// metrics) port; CAP_NET_RAW permitted but not effective, only so that
/// the `ping` of a health probe (`probes:`, run by the watcher while a
/// change is on probation) can open its ICMP socket: with no new
/// privileges, a program run later gets no capability its parent does not
/// have permitted (without it every probe fails and every change on
/// probation with probes is reverted);
/// no new privileges on exec; not dumpable (no core dumps or ptrace
/// snooping of key material).
pub fn drop_privileges(ports: &[u16]) -> io::Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    // SAFETY: prctl with constant, valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_NET_ADMIN);
    if ports
        .iter()
        .any(|&p| p != 0 && u32::from(p) < unprivileged_port_start())
    {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    let mut permitted = keep.clone();
    permitted.insert(Capability::CAP_NET_RAW);
    let err = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    // The bounding set first, while CAP_SETPCAP is still effective: a
    // program run later (nft) cannot regain anything either.
    for cap in caps::all() {
        if !permitted.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(err)?;
    Ok(())
}

fn unprivileged_port_start() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// The uid of the process at the other end of a Unix socket.
fn peer_uid(conn: &std::os::unix::net::UnixStream) -> Option<u32> {
    control::peer_cred(conn).map(|c| c.uid)
}

/// The engine of this process as the control socket and the watcher see
/// it: one place that configures the data plane and what goes with it.
pub struct EngineCtx {
    control: Control,
    sd: StateDir,
    name: String,
    shared: Arc<Shared>,
    metrics: Mutex<Option<metrics::Endpoint>>,
    resolver: Arc<resolver::Resolver>,
}

impl EngineCtx {
    /// The state the watcher reports into.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.sd
    }

    pub fn deployment(&self) -> &str {
        &self.name
    }

    /// Reach `config` (or report what that would change), then record it,
    /// and follow its watch and metrics settings.
    pub fn configure(
        &self,
        config: EngineConfig,
        dry_run: bool,
    ) -> Result<Vec<EngineChange>, CtxError> {
        if config.deployment != self.name {
            return Err(CtxError::WrongDeployment {
                serves: self.name.clone(),
                asked: config.deployment,
            });
        }
        let (tx, rx) = mpsc::channel();
        let saved = config.clone();
        self.control
            .send(DpCommand::Configure {
                config: Box::new(config),
                dry_run,
                reply: tx,
            })
            .map_err(|_| CtxError::Stopped)?;
        let changes = rx
            .recv_timeout(CONTROL_TIMEOUT)
            .map_err(|_| CtxError::NoAnswer)?
            .map_err(CtxError::Refused)?;
        if !dry_run {
            if let Err(e) = write_config(&self.sd, &saved) {
                tracing::warn!(error = %e, "could not record the engine config");
            }
            self.shared.watch.store(saved.watch, Ordering::Relaxed);
            self.resolver.set_config(&saved, Instant::now());
            update_metrics(&self.metrics, saved.metrics, &self.control, &self.shared);
        }
        Ok(changes)
    }

    /// The address in use for the hostname endpoint `name` of the peer
    /// with `public_key`, as the resolver last had it.
    pub fn last_endpoint(
        &self,
        public_key: &netman_proto::PublicKey,
        name: &str,
    ) -> Option<std::net::SocketAddr> {
        let states = self.resolver.states();
        let (n, addr, _) = states.get(public_key)?;
        (n == name).then_some(*addr)?
    }

    /// The data plane's status now.
    pub fn status(&self) -> Result<control::EngineStatus, CtxError> {
        let (tx, rx) = mpsc::channel();
        self.control
            .send(DpCommand::Status(tx))
            .map_err(|_| CtxError::Stopped)?;
        rx.recv_timeout(CONTROL_TIMEOUT)
            .map_err(|_| CtxError::NoAnswer)
    }

    /// Start a handshake with each of the named peers now.
    pub fn rehandshake(&self, names: Vec<String>) -> Result<(), CtxError> {
        self.control
            .send(DpCommand::Rehandshake(names))
            .map_err(|_| CtxError::Stopped)
    }

    /// Stop the data plane (and so the engine).
    pub fn stop(&self) -> Result<(), CtxError> {
        self.control
            .send(DpCommand::Stop)
            .map_err(|_| CtxError::Stopped)
    }
}

/// Start, move or stop the metrics endpoint to match `want`. Only tells
/// the endpoint's thread (started here the first time it is needed, so
/// after the capabilities were dropped) and returns: configure never waits
/// for a listener to close or a slow client to go.
fn update_metrics(
    slot: &Mutex<Option<metrics::Endpoint>>,
    want: Option<std::net::SocketAddr>,
    control: &Control,
    shared: &Arc<Shared>,
) {
    let Ok(mut cur) = slot.lock() else { return };
    if cur.is_none() {
        if want.is_none() {
            return;
        }
        let control = control.clone();
        let shared = shared.clone();
        let clients = Arc::new(metrics::ClientCounters::default());
        let counted = clients.clone();
        let snapshot: metrics::Snapshot = Arc::new(move || {
            let (tx, rx) = mpsc::channel();
            control.send(DpCommand::Status(tx)).ok()?;
            let status = rx.recv_timeout(CONTROL_TIMEOUT).ok()?;
            Some(metrics::render(&status, &shared.counters, &counted))
        });
        match metrics::Endpoint::start(snapshot, clients) {
            Ok(endpoint) => *cur = Some(endpoint),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the metrics endpoint");
                return;
            }
        }
    }
    if let Some(endpoint) = cur.as_ref() {
        endpoint.set(want);
    }
}

fn control_loop(listener: UnixListener, ctx: Arc<EngineCtx>) {
    let (control, name) = (&ctx.control, ctx.name.as_str());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        match peer_uid(&conn) {
            Some(0) => {}
            other => {
                tracing::warn!(uid = ?other, "refused a control connection from a non-root user");
                // Read its request first (bounded, briefly), as for root:
                // closing while the caller still writes would hand it
                // EPIPE instead of this answer.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(std::io::Read::take(&conn, 64 * 1024)),
                    &mut line,
                );
                let _ = control::write_response(
                    &conn,
                    &Response::Error {
                        message: format!(
                            "permission denied: the control socket of deployment {name} accepts only root (uid 0){}",
                            other.map(|u| format!(", not uid {u}")).unwrap_or_default()
                        ),
                    },
                );
                continue;
            }
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let req = match control::read_request(&conn) {
            Ok(r) => r,
            Err(e) => {
                let _ = control::write_response(
                    &conn,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                );
                continue;
            }
        };
        let resp = handle(&ctx, req);
        let stopping = matches!(resp, Response::Stopping);
        let _ = control::write_response(&conn, &resp);
        if stopping {
            let _ = control.send(DpCommand::Stop);
        }
    }
}

fn handle(ctx: &EngineCtx, req: Request) -> Response {
    let (control, name) = (&ctx.control, ctx.name.as_str());
    let err = |message: String| Response::Error { message };
    match req {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            deployment: name.to_string(),
        },
        Request::Stop => Response::Stopping,
        Request::Poke => {
            ctx.shared.wake.notify_one();
            Response::Poked
        }
        Request::Status => {
            let (tx, rx) = mpsc::channel();
            if let Err(e) = control.send(DpCommand::Status(tx)) {
                return err(e);
            }
            match rx.recv_timeout(CONTROL_TIMEOUT) {
                Ok(mut s) => {
                    ctx.resolver.annotate(&mut s);
                    s.watch = Some(ctx.shared.status());
                    s.watch_counters = Some(ctx.shared.counters());
                    Response::Status(Box::new(s))
                }
                Err(_) => err("the data plane did not answer".into()),
            }
        }
        Request::Configure { config, dry_run } => match ctx.configure(config, dry_run) {
            Ok(changes) => Response::Configured { changes },
            Err(e) => err(e.to_string()),
        },
    }
}

/// Start the engine of `cfg.deployment` as a detached process (its own
/// session, output to `<state-dir>/<name>.log`) and wait until it answers.
pub fn spawn_detached(sd: &StateDir, cfg: &EngineConfig) -> Result<u32, ServeError> {
    let name = cfg.deployment.clone();
    write_config(sd, cfg)?;
    let log = sd.engine_log(&name);
    let fail = |reason: String| ServeError::StartFailed {
        name: name.clone(),
        reason,
    };
    let out =
        files::open_log(&log).map_err(|e| fail(format!("open log {}: {e}", log.display())))?;
    let err_out = out
        .try_clone()
        .map_err(|e| fail(format!("open log {}: {e}", log.display())))?;
    let exe = std::env::current_exe().map_err(|e| fail(format!("find own executable: {e}")))?;
    let log_offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(sd.path())
        .arg("--log-format")
        .arg("human")
        .arg("engine")
        .arg(&name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out);
    if let Ok(v) = std::env::var("NETMAN_LOG") {
        cmd.env("NETMAN_LOG", v);
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // session so it outlives this command and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("spawn: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = running_pid(sd, &name) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!("{status}: {}", log_tail(&log, log_offset))));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(fail(format!(
                "no answer within 10 s: {}",
                log_tail(&log, log_offset)
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The last line the engine logged after offset `from` (reading at most
/// the last 64 KiB of the log, never through a symlink).
fn log_tail(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 << 10;
    let read = || -> Option<String> {
        let mut f = files::open_read(path, true).ok()?;
        let len = files::regular(&f).ok()?.len();
        let start = from.max(len.saturating_sub(TAIL)).min(len);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::new();
        f.take(TAIL).read_to_end(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = read().unwrap_or_default();
    let tail = text.trim();
    if tail.is_empty() {
        format!("see {}", path.display())
    } else {
        tail.lines().last().unwrap_or(tail).to_string()
    }
}

/// Stop the engine of `name` (if running) and wait for it to exit.
///
/// The process signalled is the one the kernel says serves the control
/// socket (`SO_PEERCRED`), never the pid the engine reports, and only if it
/// runs as root (or as the user running netman).
pub fn stop(sd: &StateDir, name: &str) -> Result<bool, ServeError> {
    let sock = sd.control_socket(name);
    let (reported, cred) = match control::request_peer(&sock, &Request::Ping, CONTROL_TIMEOUT) {
        Ok((Response::Pong { pid, .. }, cred)) => (pid, cred),
        _ => {
            let _ = fs::remove_file(&sock);
            remove_stale_uapi(sd, name);
            return Ok(false);
        }
    };
    let refuse = |reason: String| ServeError::Signal {
        name: name.to_string(),
        reason,
    };
    let Some(cred) = cred else {
        return Err(refuse(format!(
            "cannot tell which process serves {}; not signalling anything",
            sock.display()
        )));
    };
    if !files::trusted_owner(cred.uid) {
        return Err(refuse(format!(
            "its control socket {} is served by pid {} of uid {}, not by {}; not signalling it",
            sock.display(),
            cred.pid,
            cred.uid,
            files::trusted_owners()
        )));
    }
    if cred.pid == 0 || cred.pid == std::process::id() {
        return Err(refuse(format!(
            "its control socket {} is served by {}; not signalling it",
            sock.display(),
            if cred.pid == 0 {
                "a process outside this pid namespace".to_owned()
            } else {
                "this very process".to_owned()
            }
        )));
    }
    if reported != cred.pid {
        tracing::warn!(
            deployment = %name,
            reported,
            serving = cred.pid,
            "the engine reports another pid than the process serving its socket; stopping the latter"
        );
    }
    let pid = cred.pid;
    // A pidfd pins the process: a pid reused after it exits is never hit.
    let pidfd = Pidfd::open(pid);
    let _ = request(sd, name, &Request::Stop);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let gone = match &pidfd {
            Some(fd) => fd.exited(),
            None => !pid_alive(pid),
        };
        if gone {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(10));
    }
    match &pidfd {
        Some(fd) => fd.kill(),
        // SAFETY: kill with the pid the kernel reported for the socket.
        None => unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        },
    }
    let _ = fs::remove_file(&sock);
    remove_stale_uapi(sd, name);
    Ok(true)
}

/// Remove the `wg show` socket a killed engine of `name` left behind (only
/// a socket that nothing serves any more).
fn remove_stale_uapi(sd: &StateDir, name: &str) {
    if let Ok(cfg) = read_config(sd, name) {
        uapi::remove_stale(Path::new(uapi::SOCKET_DIR), &cfg.interface);
    }
}

/// A pidfd (`pidfd_open(2)`): a handle on one process that a recycled pid
/// cannot alias.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Option<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Some(Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Whether the process has exited (a zombie counts as exited).
    fn exited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd, without waiting.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc > 0
    }

    fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a live pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Changes shown when no engine runs.
pub fn start_change(name: &str) -> EngineChange {
    EngineChange::Start {
        deployment: name.to_string(),
    }
}
