//! The control socket: `<state-dir>/<name>.sock` (mode 0600). One JSON
//! request per connection, one JSON response back. The CLI uses it to read
//! status and to push configuration; secrets never cross it (the engine
//! reads key files itself).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use netman_proto::PublicKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::{EngineChange, EngineConfig};

/// Longest request line the engine reads, newline included; a longer one
/// is refused unread. As large as the largest manifest (16 MiB), so any
/// valid manifest's configuration fits (1,000 peers with 10 allowed IPs
/// each are about 0.4 MB of JSON).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// The largest response read from a control socket (a status of 1,000
/// peers is a few hundred KiB).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    /// Reach `config` (or, with `dry_run`, report what that would change).
    Configure {
        config: EngineConfig,
        dry_run: bool,
    },
    Stop,
    /// Re-read the state file now (a new or cleared pending confirmation).
    Poke,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Pong { pid: u32, deployment: String },
    Status(Box<EngineStatus>),
    Configured { changes: Vec<EngineChange> },
    Stopping,
    Poked,
    Error { message: String },
}

/// What `netman status` shows for one deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub deployment: String,
    pub pid: u32,
    pub interface: String,
    pub listen_port: u16,
    pub public_key: PublicKey,
    /// Unix time the engine started.
    pub started_at: u64,
    pub peers: Vec<PeerStatus>,
    /// Dropped packets by reason: every reason of the protocol core and of
    /// the data plane's I/O, zeros included.
    pub drops: BTreeMap<String, u64>,
    /// UDP GSO sends the kernel refused (their datagrams went out one by
    /// one; GSO is tried again for that destination after a back-off).
    #[serde(default)]
    pub udp_gso_refused: u64,
    /// The configuration in force.
    pub config: EngineConfig,
    /// The watcher (manifest file and kernel drift).
    #[serde(default)]
    pub watch: Option<super::shared::WatchStatus>,
    /// How much work the watcher did (kept apart from `watch`, which stays
    /// still once the watcher has converged).
    #[serde(default)]
    pub watch_counters: Option<super::shared::WatchCounters>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: PublicKey,
    /// Current endpoint (configured, or learnt from the peer's last
    /// authenticated packet).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Unix time of the last completed handshake.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
    pub handshakes: u64,
    pub handshake_attempts: u64,
    pub preshared_key: bool,
    /// A hostname endpoint's name (`host:port`); the engine re-resolves it
    /// and `endpoint` is the address in use.
    #[serde(default)]
    pub endpoint_name: Option<String>,
    /// Why the last resolution of `endpoint_name` failed (the last good
    /// address stays in use), if it did.
    #[serde(default)]
    pub endpoint_error: Option<String>,
}

/// A peer's status for unit tests: nothing sent, received or configured
/// beyond its name and key; tests set what they need.
#[cfg(test)]
impl PeerStatus {
    pub(crate) fn example(name: &str, public_key: PublicKey) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            latest_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            handshakes: 0,
            handshake_attempts: 0,
            preshared_key: false,
            endpoint_name: None,
            endpoint_error: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ControlError {
    /// Nothing listens: the engine is not running.
    #[error("engine is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: bad response: {reason}")]
    Protocol { path: PathBuf, reason: String },
    #[error("engine: {0}")]
    Engine(String),
}

/// Why a request from a control connection was not taken.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("request too long (more than {MAX_REQUEST_BYTES} bytes)")]
    TooLong,
    #[error("not a control request: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("read: {0}")]
    Io(#[from] io::Error),
}

/// Who serves a control socket, as the kernel reports it (`SO_PEERCRED`:
/// the process that called `listen`, not what it says about itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
}

/// The credentials of the process at the other end of a Unix socket.
pub fn peer_cred(s: &UnixStream) -> Option<PeerCred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a live ucred with its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(PeerCred {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
    })
}

/// Send one request to the engine behind `path` and wait for the answer.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    request_peer(path, req, timeout).map(|(resp, _)| resp)
}

/// [`request`], also returning who served the socket.
pub fn request_peer(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<(Response, Option<PeerCred>), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path.to_path_buf()));
        }
        Err(e) => return Err(io_err(e)),
    };
    let cred = peer_cred(&s);
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ControlError::Protocol {
            path: path.to_path_buf(),
            reason: format!(
                "the request is {} bytes, more than the engine reads ({MAX_REQUEST_BYTES})",
                line.len()
            ),
        });
    }
    // An engine that dies with its socket still open resets the connection
    // or closes it without an answer: that is "not running" too.
    let gone = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    if let Err(e) = s.write_all(&line) {
        return Err(if gone(&e) {
            ControlError::NotRunning(path.to_path_buf())
        } else {
            io_err(e)
        });
    }
    // Bounded: whatever serves the socket does not get to fill our memory.
    let mut reader = BufReader::new(io::Read::take(s, MAX_RESPONSE_BYTES));
    let mut resp = String::new();
    match reader.read_line(&mut resp) {
        Ok(0) => return Err(ControlError::NotRunning(path.to_path_buf())),
        Ok(_) => {}
        Err(e) if gone(&e) => return Err(ControlError::NotRunning(path.to_path_buf())),
        Err(e) => return Err(io_err(e)),
    }
    let resp: Response = serde_json::from_str(&resp).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Response::Error { message } = resp {
        return Err(ControlError::Engine(message));
    }
    Ok((resp, cred))
}

/// Read one request from a connection: one line of at most
/// [`MAX_REQUEST_BYTES`] (or what comes before the caller shuts its side).
/// A longer one is refused after reading just past the limit.
pub fn read_request(s: &UnixStream) -> Result<Request, RequestError> {
    let limit = u64::try_from(MAX_REQUEST_BYTES).unwrap_or(u64::MAX);
    let mut reader = BufReader::new(Read::take(s, limit.saturating_add(1)));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    decode_request(&line)
}

/// Decode one request line (pure: the fuzzing entry point of the control
/// protocol). Trailing whitespace, the newline included, is ignored.
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    Ok(serde_json::from_slice(line)?)
}

/// Write one response to a connection.
pub fn write_response(mut s: &UnixStream, resp: &Response) -> io::Result<()> {
    let mut line =
        serde_json::to_vec(resp).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    line.push(b'\n');
    s.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_request_takes_every_request_kind() {
        for (line, want) in [
            (&b"{\"cmd\":\"ping\"}\n"[..], "Ping"),
            (&b"{\"cmd\":\"status\"}"[..], "Status"),
            (&b"{\"cmd\":\"stop\"}\r\n"[..], "Stop"),
            (&b" {\"cmd\":\"poke\"}  \n"[..], "Poke"),
        ] {
            let r = decode_request(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(format!("{r:?}"), want);
        }
        let cfg = EngineConfig::example();
        let line = serde_json::to_vec(&Request::Configure {
            config: cfg.clone(),
            dry_run: true,
        })
        .expect("encode");
        match decode_request(&line) {
            Ok(Request::Configure { config, dry_run }) => {
                assert_eq!(config, cfg);
                assert!(dry_run);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_request_refuses_bad_input_without_panicking() {
        let deep = "[".repeat(100_000);
        let bad: Vec<&[u8]> = vec![
            &b""[..],
            &b"\n"[..],
            &b"{"[..],
            &b"null"[..],
            &b"{\"cmd\":\"launch\"}"[..],
            &b"{\"cmd\":\"configure\"}"[..],
            &b"{\"cmd\":\"status\"} {\"cmd\":\"stop\"}"[..],
            &b"\xff\xfe{\"cmd\":\"status\"}"[..],
            deep.as_bytes(),
        ];
        for line in bad {
            assert!(
                matches!(decode_request(line), Err(RequestError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            );
        }
        let mut long = b"{\"cmd\":\"status\"}".to_vec();
        long.resize(MAX_REQUEST_BYTES + 1, b' ');
        assert!(matches!(decode_request(&long), Err(RequestError::TooLong)));
        long.truncate(MAX_REQUEST_BYTES);
        assert!(matches!(decode_request(&long), Ok(Request::Status)));
    }

    /// Keys are typed: a configure request or a status whose public key
    /// is not one is refused when it is read, so no later step (the
    /// engine, `wg show`'s encoder, the metrics) ever sees it.
    #[test]
    fn a_public_key_that_is_not_one_is_refused_on_decode() {
        let cfg = crate::engine::config::EngineConfig::example();
        let mut v = serde_json::to_value(Request::Configure {
            config: cfg,
            dry_run: true,
        })
        .expect("encode");
        v["config"]["peers"] = serde_json::json!([{
            "name": "b",
            "public_key": "not base64",
            "endpoint_spec": null,
            "endpoint": null,
            "allowed_ips": [],
            "persistent_keepalive": null,
            "preshared_key_file": null,
        }]);
        let line = serde_json::to_vec(&v).expect("encode");
        assert!(matches!(
            decode_request(&line),
            Err(RequestError::Malformed(e)) if e.to_string().contains("not valid base64")
        ));
        // The same with a real key decodes.
        v["config"]["peers"][0]["public_key"] =
            serde_json::json!(PublicKey::from_bytes([7; 32]).to_base64());
        let line = serde_json::to_vec(&v).expect("encode");
        assert!(matches!(
            decode_request(&line),
            Ok(Request::Configure { .. })
        ));
        // A status with a bad peer key does not parse either.
        let mut st = serde_json::to_value(PeerStatus::example("b", PublicKey::from_bytes([7; 32])))
            .expect("encode");
        st["public_key"] = serde_json::json!("KEYB");
        assert!(serde_json::from_value::<PeerStatus>(st).is_err());
    }

    /// Over a real socket pair: a line just past the limit is refused
    /// after reading only that much; one at the limit is taken.
    #[test]
    fn read_request_stops_at_the_limit() {
        for (len, ok) in [(MAX_REQUEST_BYTES, true), (MAX_REQUEST_BYTES + 1, false)] {
            let (a, b) = UnixStream::pair().expect("socketpair");
            let writer = std::thread::spawn(move || {
                let mut line = b"{\"cmd\":\"ping\"}".to_vec();
                line.resize(len - 1, b' ');
                line.push(b'\n');
                // More after the line: never read.
                line.extend_from_slice(&[b'x'; 4096]);
                let _ = (&a).write_all(&line);
            });
            let r = read_request(&b);
            drop(b);
            let _ = writer.join();
            if ok {
                assert!(matches!(r, Ok(Request::Ping)), "{len}: {r:?}");
            } else {
                assert!(matches!(r, Err(RequestError::TooLong)), "{len}: {r:?}");
            }
        }
    }
}
