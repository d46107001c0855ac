//! The WireGuard cross-platform userspace API socket
//! (`/var/run/wireguard/<ifname>.sock`, <https://www.wireguard.com/xplatform/>),
//! served read-only, so that `wg show`, `wg show all dump` and `wg
//! showconf` (and the monitoring built on them) work on a netman
//! interface as on any WireGuard one.
//!
//! Only `get=1` is answered, from the same live state `netman status`
//! reports. Secrets never cross the socket: no `private_key` (so `wg` shows
//! no interface key) and no `preshared_key`. `set=1` is read (bounded),
//! discarded and refused with `EPERM`: the manifest is the source of truth,
//! and a change made behind its back would be undone by the next apply.
//!
//! The socket is hostile input like the control socket: root only (mode
//! 0600 in a root-owned directory, and `SO_PEERCRED` uid 0), lines and
//! requests of bounded size, a deadline per connection, a few connections
//! at once, extra ones closed at once; nothing a client sends can panic.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::control::{EngineStatus, peer_cred};
use crate::files;

/// Where `wg(8)` looks for userspace interfaces (wireguard-tools, built
/// with `RUNSTATEDIR=/var/run`; on Debian `/var/run` is `/run`).
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Longest request line read (newline included). `wg` sends short
/// `key=value` lines; the longest is an `endpoint=` of a few dozen bytes.
pub const MAX_LINE: usize = 4096;
/// Most bytes of one `set=1` request read (and thrown away) before the
/// connection is closed without an answer: `wg setconf` of 1,000 peers
/// with 10 allowed IPs each is about 0.5 MB.
pub const MAX_SET_BYTES: usize = 1 << 20;
/// Time a client has for everything it does on one connection.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Operations on one connection (`wg` sends one; wireguard-go takes many).
const MAX_OPS: usize = 16;
/// Backlog of the listening socket.
const BACKLOG: i32 = 16;

/// The live state of the engine (`None`: the data plane did not answer).
/// Called on a connection's thread.
pub type Snapshot = Arc<dyn Fn() -> Option<EngineStatus> + Send + Sync>;

#[derive(Debug, Error)]
pub enum UapiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: {reason}; not serving wg's socket (the directory must be a real directory owned by root, writable only by it)"
    )]
    BadDir { path: PathBuf, reason: String },
    #[error(
        "{0}: another process serves it (wireguard-go, or a netman engine in another network namespace with an interface of the same name); not serving wg's socket"
    )]
    InUse(PathBuf),
    #[error("{path}: exists and is not a socket ({kind}); left alone, not serving wg's socket")]
    NotSocket { path: PathBuf, kind: &'static str },
    #[error("interface name {0:?} cannot name a socket file")]
    BadName(String),
}

/// `<dir>/<ifname>.sock`, if `ifname` can name a file there.
pub fn socket_path(dir: &Path, ifname: &str) -> Result<PathBuf, UapiError> {
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname.contains('/')
        || ifname.contains('\0')
        || ifname == "."
        || ifname == ".."
    {
        return Err(UapiError::BadName(ifname.to_string()));
    }
    Ok(dir.join(format!("{ifname}.sock")))
}

/// The text of a `get=1` answer for `status`: the device (listen port,
/// `fwmark` when not 0), then every peer, then `errno=0` and the blank
/// line. No private or preshared key.
pub fn encode_get(status: &EngineStatus, fwmark: u32) -> String {
    let mut out = String::with_capacity(256 + status.peers.len() * 256);
    // Writing to a String cannot fail.
    if status.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", status.listen_port);
    }
    if fwmark != 0 {
        let _ = writeln!(out, "fwmark={fwmark}");
    }
    for p in &status.peers {
        out.push_str("public_key=");
        for b in p.public_key.as_bytes() {
            let _ = write!(out, "{b:02x}");
        }
        out.push('\n');
        out.push_str("protocol_version=1\n");
        if let Some(e) = p.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        let _ = writeln!(
            out,
            "last_handshake_time_sec={}",
            p.latest_handshake.unwrap_or(0)
        );
        out.push_str("last_handshake_time_nsec=0\n");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive.unwrap_or(0)
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// The answer to a `set=1`: `EPERM`, negative as wireguard-go sends it
/// (wg(8) turns `errno=-1` into "Operation not permitted").
pub const SET_REFUSED: &str = "errno=-1\n\n";
/// The answer to a `get=1` when the data plane did not answer: `EIO`
/// (wg(8) reads a get's errno as a positive number).
const GET_FAILED: &str = "errno=5\n\n";
/// The answer to a malformed `get` (`EINVAL`).
const GET_INVALID: &str = "errno=22\n\n";

/// What one connection did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client closed after `gets` reads and `sets` refused writes.
    Done { gets: usize, sets: usize },
    /// Refused a `set=1` too large or a line too long; closed.
    TooLong { sets: usize },
    /// Something that is not the protocol; closed.
    Malformed,
    /// The deadline passed (or the socket failed); closed.
    Io(io::ErrorKind),
}

/// Serve one connection until the client closes, the deadline passes, it
/// sends something else than the protocol, or [`MAX_OPS`] operations.
pub fn serve_conn(
    conn: &UnixStream,
    snapshot: &Snapshot,
    fwmark: u32,
    deadline: Instant,
    on_set: &dyn Fn(),
) -> Outcome {
    let mut reader = BufReader::with_capacity(MAX_LINE, conn);
    let (mut gets, mut sets) = (0, 0);
    for _ in 0..MAX_OPS {
        let op = match read_line(&mut reader, conn, deadline) {
            Ok(Line::Eof) => return Outcome::Done { gets, sets },
            Ok(Line::TooLong) => return Outcome::TooLong { sets },
            Ok(Line::Text(l)) => l,
            Err(e) => return Outcome::Io(e.kind()),
        };
        let answer: std::borrow::Cow<'static, str> = match op.as_slice() {
            b"get=1" => {
                match read_line(&mut reader, conn, deadline) {
                    Ok(Line::Text(l)) if l.is_empty() => {}
                    Ok(Line::Text(_)) => {
                        let _ = write_all(conn, GET_INVALID.as_bytes(), deadline);
                        return Outcome::Malformed;
                    }
                    Ok(Line::Eof) => return Outcome::Done { gets, sets },
                    Ok(Line::TooLong) => return Outcome::TooLong { sets },
                    Err(e) => return Outcome::Io(e.kind()),
                }
                gets += 1;
                match snapshot() {
                    // The mark in force, live (a configure may change it).
                    Some(status) => {
                        encode_get(&status, status.config.fwmark.unwrap_or(fwmark)).into()
                    }
                    None => GET_FAILED.into(),
                }
            }
            b"set=1" => {
                // Read the whole request first: closing while wg still
                // writes would hand it EPIPE instead of the answer.
                let mut total = 0usize;
                loop {
                    match read_line(&mut reader, conn, deadline) {
                        Ok(Line::Text(l)) if l.is_empty() => break,
                        Ok(Line::Text(l)) => {
                            total = total.saturating_add(l.len() + 1);
                            if total > MAX_SET_BYTES {
                                on_set();
                                return Outcome::TooLong { sets: sets + 1 };
                            }
                        }
                        Ok(Line::Eof) => return Outcome::Done { gets, sets },
                        Ok(Line::TooLong) => {
                            on_set();
                            return Outcome::TooLong { sets: sets + 1 };
                        }
                        Err(e) => return Outcome::Io(e.kind()),
                    }
                }
                sets += 1;
                on_set();
                SET_REFUSED.into()
            }
            _ => return Outcome::Malformed,
        };
        if let Err(e) = write_all(conn, answer.as_bytes(), deadline) {
            return Outcome::Io(e.kind());
        }
    }
    Outcome::Done { gets, sets }
}

enum Line {
    /// One line, without its newline.
    Text(Vec<u8>),
    /// The client closed (a partial last line counts as closed).
    Eof,
    TooLong,
}

/// Read one line of at most [`MAX_LINE`] bytes before `deadline`.
fn read_line(
    reader: &mut BufReader<&UnixStream>,
    conn: &UnixStream,
    deadline: Instant,
) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        let room = (MAX_LINE + 1).saturating_sub(line.len());
        let limit = u64::try_from(room).unwrap_or(u64::MAX);
        match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) => return Ok(Line::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(Line::Text(line));
        }
        if line.len() > MAX_LINE {
            return Ok(Line::TooLong);
        }
    }
}

fn write_all(mut conn: &UnixStream, data: &[u8], deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    conn.set_write_timeout(Some(left))?;
    conn.write_all(data)
}

/// The socket, bound and listening, not served yet (bind it while the
/// engine may still create files in the socket directory; serve it once
/// the threads may start).
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

/// Make `<dir>/<ifname>.sock`: `dir` is created (mode 0755) if missing and
/// must be a directory (not a symlink) that only root can write; a stale
/// socket there (nothing accepts on it) is replaced, a live one or
/// anything that is not a socket is left alone (an error). The socket is
/// created with mode 0600 (set before `bind`, so it never exists with a
/// wider one).
pub fn bind(dir: &Path, ifname: &str) -> Result<Bound, UapiError> {
    let path = socket_path(dir, ifname)?;
    ensure_dir(dir)?;
    let io_err = |source| UapiError::Io {
        path: path.clone(),
        source,
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(&path) {
            Ok(_) => return Err(UapiError::InUse(path)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // A socket nothing serves: left by an engine that was
                // killed. unlink does not follow links.
                fs::remove_file(&path).map_err(io_err)?;
                tracing::info!(path = %path.display(), "removed a stale WireGuard socket");
            }
            Err(e) => return Err(io_err(e)),
        },
        Ok(m) => {
            return Err(UapiError::NotSocket {
                path,
                kind: files::kind(&m),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM.cloexec(), None)
        .map_err(io_err)?;
    // The mode bind(2) gives the socket file is the socket inode's (less
    // the umask): set it first, so there is no moment with a wider one.
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(sock.as_raw_fd(), 0o600) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    // bind(2) creates the file and fails if anything (a symlink too) is
    // already there: nothing is followed.
    let addr = socket2::SockAddr::unix(&path).map_err(io_err)?;
    sock.bind(&addr).map_err(io_err)?;
    let listener: UnixListener = sock.into();
    let meta = fs::symlink_metadata(&path).map_err(io_err)?;
    let id = (meta.dev(), meta.ino());
    let cleanup = |e: io::Error| {
        let _ = remove_if(&path, id);
        io_err(e)
    };
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(cleanup)?;
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(cleanup(io::Error::last_os_error()));
    }
    Ok(Bound { listener, path, id })
}

/// Create `dir` (0755) if missing; refuse it unless it is a directory (a
/// symlink is not followed) owned by root and writable by nobody else.
fn ensure_dir(dir: &Path) -> Result<(), UapiError> {
    let bad = |reason: String| UapiError::BadDir {
        path: dir.to_path_buf(),
        reason,
    };
    let io_err = |source| UapiError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(0o755).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(e) => return Err(io_err(e)),
        Ok(_) => {}
    }
    let m = fs::symlink_metadata(dir).map_err(io_err)?;
    if !m.file_type().is_dir() {
        return Err(bad(format!("is a {}", files::kind(&m))));
    }
    if !files::trusted_owner(m.uid()) {
        return Err(bad(format!("owned by uid {}", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "writable by group or others (mode {:o})",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Remove `path` if it is still the socket `id` (device, inode) made.
fn remove_if(path: &Path, id: (u64, u64)) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    if m.file_type().is_socket() && (m.dev(), m.ino()) == id {
        fs::remove_file(path)?;
    }
    Ok(())
}

/// Remove `<dir>/<ifname>.sock` if it is a socket that nothing serves (an
/// engine killed before it could remove it). Returns whether it did.
pub fn remove_stale(dir: &Path, ifname: &str) -> bool {
    let Ok(path) = socket_path(dir, ifname) else {
        return false;
    };
    let Ok(m) = fs::symlink_metadata(&path) else {
        return false;
    };
    if !m.file_type().is_socket() {
        return false;
    }
    match UnixStream::connect(&path) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(&path).is_ok(),
        _ => false,
    }
}

/// The socket being served: a thread (`wg-uapi`) accepting connections, a
/// thread per connection (at most [`MAX_CONNECTIONS`]). Dropping it stops
/// accepting and removes the socket file (if it is still this one).
pub struct Server {
    listener: Arc<UnixListener>,
    path: PathBuf,
    id: (u64, u64),
    stop: Arc<AtomicBool>,
}

impl Bound {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve the socket for interface `ifname`. Start it only after the
    /// engine dropped its capabilities: its threads inherit the creator's.
    pub fn serve(self, ifname: &str, snapshot: Snapshot, fwmark: u32) -> io::Result<Server> {
        let listener = Arc::new(self.listener);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, name) = (listener.clone(), stop.clone(), ifname.to_string());
        let spawned = thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || accept_loop(&l, &s, &name, snapshot, fwmark));
        let server = Server {
            listener,
            path: self.path,
            id: self.id,
            stop,
        };
        // On failure the server is dropped: the socket file goes too.
        spawned?;
        tracing::info!(path = %server.path.display(), "serving `wg show` (read-only)");
        Ok(server)
    }
}

impl Server {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = remove_if(&self.path, self.id);
        // Wake the accept loop (accept(2) on a shut-down socket fails).
        // SAFETY: shutdown on a descriptor the Arc keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Gives a connection slot back when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &AtomicBool,
    ifname: &str,
    snapshot: Snapshot,
    fwmark: u32,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut failures = 0u32;
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok((c, _)) => {
                failures = 0;
                c
            }
            Err(e) => {
                // EMFILE and the like: do not spin.
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(error = %e, "wg socket: accept failed");
                }
                thread::sleep(Duration::from_millis(100).saturating_mul(failures.min(10)));
                continue;
            }
        };
        match peer_cred(&conn).map(|c| c.uid) {
            Some(0) => {}
            other => {
                // The socket's mode lets only root connect; this is a
                // process that got a descriptor some other way.
                tracing::warn!(uid = ?other, "wg socket: refused a connection from a non-root user");
                continue;
            }
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!("wg socket: too many connections at once; closed one");
            continue;
        }
        let slot = Slot(active.clone());
        let (snapshot, name) = (snapshot.clone(), ifname.to_string());
        let spawned = thread::Builder::new()
            .name("wg-uapi-conn".into())
            .spawn(move || {
                let _slot = slot;
                let on_set = || {
                    tracing::warn!(
                        interface = %name,
                        "refused a `wg set`: netman's manifest is the source of truth for this interface; change the manifest and run `netman apply`"
                    );
                };
                let outcome = serve_conn(
                    &conn,
                    &snapshot,
                    fwmark,
                    Instant::now() + DEADLINE,
                    &on_set,
                );
                match outcome {
                    Outcome::Done { .. } => {}
                    other => tracing::debug!(outcome = ?other, "wg socket: connection closed"),
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "wg socket: cannot start a connection thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::control::PeerStatus;
    use netman_proto::PublicKey;
    use std::collections::BTreeMap;

    fn status() -> EngineStatus {
        let cfg = crate::engine::config::EngineConfig::example();
        let peer =
            |name: &str, key: [u8; 32]| PeerStatus::example(name, PublicKey::from_bytes(key));
        let mut b = peer("site-b", [0x11; 32]);
        b.endpoint = Some("192.0.2.2:51820".parse().expect("addr"));
        b.allowed_ips = vec![
            "10.10.0.2/32".parse().expect("net"),
            "fd10::2/128".parse().expect("net"),
            "172.18.2.0/24".parse().expect("net"),
        ];
        b.latest_handshake = Some(1_764_633_600);
        b.rx_bytes = 1_268_777;
        b.tx_bytes = 3_565_158;
        b.persistent_keepalive = Some(25);
        b.handshakes = 3;
        b.preshared_key = true;
        let mut c = peer("site-c", [0xab; 32]);
        c.endpoint = Some("[2001:db8::7]:4500".parse().expect("addr"));
        EngineStatus {
            deployment: "site-a".into(),
            pid: 1,
            interface: "nm0".into(),
            listen_port: 51820,
            public_key: PublicKey::from_bytes([0x22; 32]),
            started_at: 0,
            peers: vec![b, c, peer("site-d", [0; 32])],
            drops: BTreeMap::new(),
            udp_gso_refused: 0,
            config: cfg,
            watch: None,
            watch_counters: None,
        }
    }

    /// Golden: the exact text wg(8) reads, in wireguard-go's order, with
    /// no private or preshared key.
    #[test]
    fn get_answer_is_the_documented_text_without_secrets() {
        let want = "\
listen_port=51820
public_key=1111111111111111111111111111111111111111111111111111111111111111
protocol_version=1
endpoint=192.0.2.2:51820
last_handshake_time_sec=1764633600
last_handshake_time_nsec=0
tx_bytes=3565158
rx_bytes=1268777
persistent_keepalive_interval=25
allowed_ip=10.10.0.2/32
allowed_ip=fd10::2/128
allowed_ip=172.18.2.0/24
public_key=abababababababababababababababababababababababababababababababab
protocol_version=1
endpoint=[2001:db8::7]:4500
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
public_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

";
        let got = encode_get(&status(), 0);
        assert_eq!(got, want);
        assert!(!got.contains("private_key") && !got.contains("preshared_key"));
        // A fwmark appears only when set; no listen port, no line.
        let mut s = status();
        s.listen_port = 0;
        s.peers.clear();
        assert_eq!(encode_get(&s, 0x1234), "fwmark=4660\nerrno=0\n\n");
        // A key that is not one cannot reach this encoder any more: the
        // status carries `PublicKey`s, and one that does not decode is
        // refused when the status is read (control.rs tests).
    }

    fn snapshot(s: Option<EngineStatus>) -> Snapshot {
        Arc::new(move || s.clone())
    }

    /// Run `serve_conn` on one end of a socket pair, send `input` on the
    /// other and close our writing side; returns what came back, the
    /// outcome and how many sets were reported.
    fn exchange(input: Vec<u8>, snap: Snapshot, deadline: Duration) -> (String, Outcome, usize) {
        let (client, server) = UnixStream::pair().expect("socketpair");
        let sets = Arc::new(AtomicUsize::new(0));
        let s2 = sets.clone();
        let t = thread::spawn(move || {
            let on_set = || {
                s2.fetch_add(1, Ordering::SeqCst);
            };
            serve_conn(&server, &snap, 0, Instant::now() + deadline, &on_set)
        });
        let writer = {
            let c = client.try_clone().expect("clone");
            thread::spawn(move || {
                let _ = (&c).write_all(&input);
                let _ = c.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut out = Vec::new();
        let _ = (&client).take(1 << 22).read_to_end(&mut out);
        let outcome = t.join().expect("serve_conn panicked");
        let _ = writer.join();
        (
            String::from_utf8_lossy(&out).into_owned(),
            outcome,
            sets.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn get_set_and_bad_input_over_a_socket() {
        let snap = snapshot(Some(status()));
        let long = Duration::from_secs(5);
        // get, as wg sends it; then a set, refused, its request read.
        let (out, o, sets) = exchange(
            b"get=1\n\nset=1\nprivate_key=aa\nlisten_port=1\n\nget=1\n\n".to_vec(),
            snap.clone(),
            long,
        );
        let get = encode_get(&status(), 0);
        assert_eq!(out, format!("{get}{SET_REFUSED}{get}"));
        assert_eq!(o, Outcome::Done { gets: 2, sets: 1 });
        assert_eq!(sets, 1);
        // The data plane does not answer: EIO, not a partial state.
        let (out, _, _) = exchange(b"get=1\n\n".to_vec(), snapshot(None), long);
        assert_eq!(out, "errno=5\n\n");
        // Closing at once (wg's probe of the socket) is fine.
        let (out, o, _) = exchange(Vec::new(), snap.clone(), long);
        assert_eq!((out.as_str(), o), ("", Outcome::Done { gets: 0, sets: 0 }));
        // Not the protocol: closed without an answer.
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"get=2\n\n",
            b"\n",
            b"\xff\xfe\n",
        ] {
            let (out, o, _) = exchange(bad.to_vec(), snap.clone(), long);
            assert_eq!((out.as_str(), o), ("", Outcome::Malformed), "{bad:?}");
        }
        // A get with something after it: EINVAL.
        let (out, o, _) = exchange(b"get=1\nx=1\n\n".to_vec(), snap.clone(), long);
        assert_eq!((out.as_str(), o), ("errno=22\n\n", Outcome::Malformed));
        // A line over the limit, as op or inside a set.
        let mut line = vec![b'a'; MAX_LINE + 10];
        line.push(b'\n');
        let (out, o, _) = exchange(line.clone(), snap.clone(), long);
        assert_eq!((out.as_str(), o), ("", Outcome::TooLong { sets: 0 }));
        let mut set = b"set=1\n".to_vec();
        set.extend_from_slice(&line);
        let (out, o, sets) = exchange(set, snap.clone(), long);
        assert_eq!(
            (out.as_str(), o, sets),
            ("", Outcome::TooLong { sets: 1 }, 1)
        );
        // A set larger than MAX_SET_BYTES in lines that are each fine.
        let mut big = b"set=1\n".to_vec();
        while big.len() <= MAX_SET_BYTES + 100 {
            big.extend_from_slice(b"allowed_ip=10.0.0.0/8\n");
        }
        big.push(b'\n');
        let (out, o, _) = exchange(big, snap.clone(), long);
        assert_eq!((out.as_str(), o), ("", Outcome::TooLong { sets: 1 }));
        // A line at the limit is taken (and is not the protocol).
        let mut at = vec![b'a'; MAX_LINE - 1];
        at.push(b'\n');
        let (_, o, _) = exchange(at, snap.clone(), long);
        assert_eq!(o, Outcome::Malformed);
    }

    /// A client that sends half a request and waits is cut off at the
    /// deadline.
    #[test]
    fn a_silent_client_is_cut_off_at_the_deadline() {
        let (client, server) = UnixStream::pair().expect("socketpair");
        (&client).write_all(b"get=1\n").expect("write");
        let snap = snapshot(Some(status()));
        let t0 = Instant::now();
        let o = serve_conn(
            &server,
            &snap,
            0,
            Instant::now() + Duration::from_millis(200),
            &|| {},
        );
        assert_eq!(o, Outcome::Io(io::ErrorKind::TimedOut));
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        drop(client);
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("netman-uapi-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).expect("temp dir");
        Dir(d)
    }

    #[test]
    fn bind_creates_a_private_socket_and_drop_removes_it() {
        let base = temp_dir("bind");
        let dir = base.0.join("wireguard");
        let bound = bind(&dir, "nmtest0").expect("bind");
        let m = fs::metadata(&dir).expect("dir");
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o777 & !0o755, 0, "{:o}", m.mode());
        let path = dir.join("nmtest0.sock");
        let m = fs::symlink_metadata(&path).expect("socket");
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600, "{:o}", m.mode());
        let server = bound
            .serve("nmtest0", snapshot(Some(status())), 0)
            .expect("serve");
        // wg's exchange over the real socket.
        let mut c = UnixStream::connect(&path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"get=1\n\n").expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        assert_eq!(out, encode_get(&status(), 0));
        // A second engine with the same interface name: in use.
        assert!(matches!(bind(&dir, "nmtest0"), Err(UapiError::InUse(_))));
        drop(server);
        assert!(!path.exists(), "socket left behind");
        // The accept loop stopped: nothing listens.
        assert!(UnixStream::connect(&path).is_err());
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_leaves_anything_else_alone() {
        let base = temp_dir("stale");
        let dir = base.0.join("wireguard");
        fs::DirBuilder::new().mode(0o755).create(&dir).expect("dir");
        let path = dir.join("nmtest1.sock");
        // A socket nothing accepts on (its listener closed).
        drop(UnixListener::bind(&path).expect("stale"));
        assert!(remove_stale(&dir, "nmtest1"));
        drop(UnixListener::bind(&path).expect("stale"));
        let b = bind(&dir, "nmtest1").expect("bind over a stale socket");
        // A live one is not stale.
        assert!(!remove_stale(&dir, "nmtest1"));
        drop(b);
        // The Bound was never served: its file stays until a later bind
        // (or `down`) finds it stale.
        assert!(remove_stale(&dir, "nmtest1"));
        // A regular file, a symlink: left alone.
        fs::write(&path, "x").expect("file");
        assert!(matches!(
            bind(&dir, "nmtest1"),
            Err(UapiError::NotSocket { kind, .. }) if kind == "a regular file"
        ));
        assert!(!remove_stale(&dir, "nmtest1"));
        assert_eq!(fs::read_to_string(&path).expect("kept"), "x");
        fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(base.0.join("target"), &path).expect("symlink");
        assert!(matches!(
            bind(&dir, "nmtest1"),
            Err(UapiError::NotSocket { .. })
        ));
        assert!(!base.0.join("target").exists(), "followed the symlink");
        // Bad interface names never make a path.
        for bad in ["", "a/b", "..", "0123456789abcdef"] {
            assert!(
                matches!(bind(&dir, bad), Err(UapiError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bind_refuses_a_symlinked_or_open_directory() {
        let base = temp_dir("dir");
        let real = base.0.join("real");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&real)
            .expect("dir");
        let link = base.0.join("wireguard");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(
            bind(&link, "nmtest2"),
            Err(UapiError::BadDir { .. })
        ));
        assert!(fs::read_dir(&real).expect("read").next().is_none());
        let open = base.0.join("open");
        fs::create_dir(&open).expect("dir");
        fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        assert!(matches!(
            bind(&open, "nmtest2"),
            Err(UapiError::BadDir { .. })
        ));
        let file = base.0.join("file");
        fs::write(&file, "").expect("file");
        assert!(matches!(
            bind(&file, "nmtest2"),
            Err(UapiError::BadDir { .. })
        ));
    }
}
