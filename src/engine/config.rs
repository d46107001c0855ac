//! The engine's configuration: what a manifest asks of the data plane, with
//! hostnames resolved and key *paths* (never key material), as sent over the
//! control socket; and the live diff between two configurations.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use ipnet::IpNet;
use netman_proto::keys::{PresharedKey, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::ErrorKind;
use crate::keys::{self, KeyFileError};
use crate::manifest::{Endpoint, Manifest};

/// One peer as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    pub name: String,
    /// Base64 in JSON, as `wg pubkey` prints it.
    pub public_key: PublicKey,
    /// The endpoint as written in the manifest (`host:port` or address).
    pub endpoint_spec: Option<String>,
    /// The endpoint resolved at apply.
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key_file: Option<PathBuf>,
    /// For a hostname endpoint: the name, re-resolved while the engine runs
    /// (see `resolver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_name: Option<EndpointName>,
}

/// Re-resolve a hostname endpoint every this many seconds by default.
pub const DEFAULT_REFRESH_SECS: u32 = 300;
/// ... and while the latest handshake is older than this (wg-quick's
/// `reresolve-dns.sh` uses 135 s: a session's 120 s plus slack).
pub const DEFAULT_STALE_AFTER_SECS: u32 = 135;

/// A hostname endpoint and how often the engine re-resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointName {
    pub host: String,
    pub port: u16,
    pub refresh_secs: u32,
    pub stale_after_secs: u32,
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Everything the engine needs, without secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub deployment: String,
    pub interface: String,
    pub mtu: u32,
    pub listen_port: Option<u16>,
    pub private_key_file: PathBuf,
    pub peers: Vec<PeerSpec>,
    /// Follow the manifest file and repair drift (see `crate::watch`).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Prometheus endpoint, if any.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// SO_MARK of the UDP sockets (`interface.fwmark`, or chosen for a full
    /// tunnel, see `model::Routing`).
    #[serde(default)]
    pub fwmark: Option<u32>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("peer {peer}: endpoint {endpoint}: cannot resolve: {reason}")]
    Resolve {
        peer: String,
        endpoint: String,
        reason: String,
    },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("peer {peer}: its public key is this interface's own public key")]
    OwnKey { peer: String },
    #[error(
        "private key file {file}: its public key is {actual}, but interface.public_key declares {declared}"
    )]
    DeclaredKey {
        file: String,
        actual: String,
        declared: String,
    },
}

impl ConfigError {
    /// A name that does not resolve may resolve later; a bad key does not
    /// mend itself.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Resolve { .. } => ErrorKind::Transient,
            ConfigError::KeyFile(_)
            | ConfigError::OwnKey { .. }
            | ConfigError::DeclaredKey { .. } => ErrorKind::Invalid,
        }
    }
}

impl EngineConfig {
    /// The engine configuration a manifest asks for. Hostname endpoints
    /// are resolved here (at apply), preferring IPv4 like wg-quick does.
    pub fn from_manifest(m: &Manifest) -> Result<EngineConfig, ConfigError> {
        Self::from_manifest_with(m, &|_, _| None)
    }

    /// [`EngineConfig::from_manifest`], where a hostname for which
    /// `known(public key, "host:port")` has an address takes it without a
    /// lookup: the running engine's address for the name, which its own
    /// resolver keeps current. The watcher's re-applies use this, so a
    /// resolver that hangs or a name that is down never holds up drift
    /// repair or a manifest change; a name new to the manifest is looked up
    /// as at apply.
    pub fn from_manifest_with(
        m: &Manifest,
        known: &dyn Fn(&PublicKey, &str) -> Option<SocketAddr>,
    ) -> Result<EngineConfig, ConfigError> {
        let mut peers = Vec::with_capacity(m.peers.len());
        for p in &m.peers {
            let endpoint = match &p.endpoint {
                None => None,
                Some(Endpoint::Addr(a)) => Some(*a),
                Some(Endpoint::Host { host, port }) => {
                    match known(&p.public_key, &format!("{host}:{port}")) {
                        Some(a) => Some(a),
                        None => Some(resolve(&p.name, host, *port)?),
                    }
                }
            };
            peers.push(PeerSpec {
                name: p.name.clone(),
                public_key: p.public_key,
                endpoint_spec: p.endpoint.as_ref().map(ToString::to_string),
                endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive,
                preshared_key_file: p.preshared_key_file.clone(),
                endpoint_name: match &p.endpoint {
                    Some(Endpoint::Host { host, port }) => Some(EndpointName {
                        host: host.clone(),
                        port: *port,
                        refresh_secs: p.endpoint_refresh.unwrap_or(DEFAULT_REFRESH_SECS),
                        stale_after_secs: p
                            .endpoint_stale_after
                            .unwrap_or(DEFAULT_STALE_AFTER_SECS),
                    }),
                    _ => None,
                },
            });
        }
        Ok(EngineConfig {
            deployment: m.name.clone(),
            interface: m.interface.name.clone(),
            mtu: m.interface.mtu,
            listen_port: m.interface.listen_port,
            private_key_file: m.interface.private_key_file.clone(),
            peers,
            watch: m.watch,
            metrics: m.metrics.as_ref().map(|x| x.listen),
            fwmark: crate::link::model::Routing::of(m).fwmark,
        })
    }

    /// Read every key file the configuration names (refusing bad ones).
    pub fn load_keys(&self) -> Result<LoadedKeys, ConfigError> {
        let private = keys::load_private_key(&self.private_key_file)?;
        let own = private.public_key();
        let mut peers = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let public = p.public_key;
            if public == own {
                return Err(ConfigError::OwnKey {
                    peer: p.name.clone(),
                });
            }
            let psk = match &p.preshared_key_file {
                Some(f) => Some(keys::load_preshared_key(f)?),
                None => None,
            };
            peers.push((public, psk));
        }
        Ok(LoadedKeys { private, peers })
    }
}

/// The keys a configuration names, loaded. Not `Debug`.
pub struct LoadedKeys {
    pub private: PrivateKey,
    /// Per `EngineConfig::peers` entry, in order.
    pub peers: Vec<(PublicKey, Option<PresharedKey>)>,
}

fn resolve(peer: &str, host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    resolve_host(host, port).map_err(|reason| ConfigError::Resolve {
        peer: peer.to_string(),
        endpoint: format!("{host}:{port}"),
        reason,
    })
}

/// Resolve `host:port` (getaddrinfo: blocks), preferring IPv4 like
/// wg-quick does.
pub fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| "no addresses".to_string())
}

/// A configuration for unit tests: deployment `site-a` on `nm0`, MTU
/// 1420, port 51820, no peers; tests change what they need with
/// `EngineConfig { .., ..EngineConfig::example() }`.
#[cfg(test)]
impl EngineConfig {
    pub(crate) fn example() -> EngineConfig {
        EngineConfig {
            deployment: "site-a".into(),
            interface: "nm0".into(),
            mtu: 1420,
            listen_port: Some(51820),
            private_key_file: "/k".into(),
            peers: Vec::new(),
            watch: true,
            metrics: None,
            fwmark: None,
        }
    }
}

/// One change the engine makes (or would make) to reach a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum EngineChange {
    Start {
        deployment: String,
    },
    Interface {
        from: String,
        to: String,
    },
    ListenPort {
        from: Option<u16>,
        to: Option<u16>,
    },
    PrivateKey {
        from: String,
        to: String,
    },
    Mtu {
        from: u32,
        to: u32,
    },
    Watch {
        from: bool,
        to: bool,
    },
    Metrics {
        from: Option<SocketAddr>,
        to: Option<SocketAddr>,
    },
    Fwmark {
        from: Option<u32>,
        to: Option<u32>,
    },
    AddPeer {
        name: String,
        public_key: PublicKey,
    },
    RemovePeer {
        name: String,
        public_key: PublicKey,
    },
    PeerName {
        from: String,
        to: String,
    },
    PeerEndpoint {
        name: String,
        from: Option<String>,
        to: Option<String>,
    },
    PeerAllowedIps {
        name: String,
        from: Vec<IpNet>,
        to: Vec<IpNet>,
    },
    PeerKeepalive {
        name: String,
        from: Option<u16>,
        to: Option<u16>,
    },
    PeerPresharedKey {
        name: String,
    },
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "none".to_string(), ToString::to_string)
}

fn list(v: &[IpNet]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

impl EngineChange {
    pub fn sign(&self) -> char {
        match self {
            EngineChange::Start { .. } | EngineChange::AddPeer { .. } => '+',
            EngineChange::RemovePeer { .. } => '-',
            _ => '~',
        }
    }
}

impl fmt::Display for EngineChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sign();
        match self {
            EngineChange::Start { deployment } => {
                write!(f, "{s} engine {deployment} (not running)")
            }
            EngineChange::Interface { from, to } => {
                write!(f, "{s} engine interface {from} -> {to}")
            }
            EngineChange::ListenPort { from, to } => {
                write!(f, "{s} engine listen_port {} -> {}", opt(from), opt(to))
            }
            EngineChange::PrivateKey { from, to } => {
                write!(f, "{s} engine private key (public key {from} -> {to})")
            }
            EngineChange::Mtu { from, to } => write!(f, "{s} engine mtu {from} -> {to}"),
            EngineChange::Watch { from, to } => {
                let w = |b: &bool| if *b { "on" } else { "off" };
                write!(f, "{s} engine watch {} -> {}", w(from), w(to))
            }
            EngineChange::Metrics { from, to } => {
                write!(f, "{s} engine metrics {} -> {}", opt(from), opt(to))
            }
            EngineChange::Fwmark { from, to } => {
                write!(f, "{s} engine fwmark {} -> {}", opt(from), opt(to))
            }
            EngineChange::AddPeer { name, public_key } => {
                write!(f, "{s} peer {name} ({public_key})")
            }
            EngineChange::RemovePeer { name, public_key } => {
                write!(f, "{s} peer {name} ({public_key})")
            }
            EngineChange::PeerName { from, to } => write!(f, "{s} peer {from} renamed {to}"),
            EngineChange::PeerEndpoint { name, from, to } => {
                write!(f, "{s} peer {name} endpoint {} -> {}", opt(from), opt(to))
            }
            EngineChange::PeerAllowedIps { name, from, to } => {
                write!(
                    f,
                    "{s} peer {name} allowed_ips {} -> {}",
                    list(from),
                    list(to)
                )
            }
            EngineChange::PeerKeepalive { name, from, to } => {
                write!(
                    f,
                    "{s} peer {name} persistent_keepalive {} -> {}",
                    opt(from),
                    opt(to)
                )
            }
            EngineChange::PeerPresharedKey { name } => {
                write!(f, "{s} peer {name} preshared key (changed)")
            }
        }
    }
}

/// The changes from the configuration `cur` (with its loaded keys) to `new`
/// (with its). Pure: peers are matched by public key; an unchanged peer
/// produces nothing (and keeps its session when applied).
pub fn diff_configs(
    cur: &EngineConfig,
    cur_keys: &LoadedKeys,
    new: &EngineConfig,
    new_keys: &LoadedKeys,
) -> Vec<EngineChange> {
    let mut out = Vec::new();
    if cur.interface != new.interface {
        out.push(EngineChange::Interface {
            from: cur.interface.clone(),
            to: new.interface.clone(),
        });
    }
    if cur.listen_port != new.listen_port {
        out.push(EngineChange::ListenPort {
            from: cur.listen_port,
            to: new.listen_port,
        });
    }
    if cur_keys.private != new_keys.private {
        out.push(EngineChange::PrivateKey {
            from: cur_keys.private.public_key().to_base64(),
            to: new_keys.private.public_key().to_base64(),
        });
    }
    if cur.fwmark != new.fwmark {
        out.push(EngineChange::Fwmark {
            from: cur.fwmark,
            to: new.fwmark,
        });
    }
    if cur.mtu != new.mtu {
        out.push(EngineChange::Mtu {
            from: cur.mtu,
            to: new.mtu,
        });
    }
    if cur.watch != new.watch {
        out.push(EngineChange::Watch {
            from: cur.watch,
            to: new.watch,
        });
    }
    if cur.metrics != new.metrics {
        out.push(EngineChange::Metrics {
            from: cur.metrics,
            to: new.metrics,
        });
    }
    // Index both sides by public key (1,000 peers: no quadratic scans).
    fn index(keys: &LoadedKeys) -> std::collections::HashMap<[u8; 32], usize> {
        keys.peers
            .iter()
            .enumerate()
            .map(|(i, (pk, _))| (pk.to_bytes(), i))
            .collect()
    }
    let (cur_index, new_index) = (index(cur_keys), index(new_keys));
    fn find<'a>(
        cfg: &'a EngineConfig,
        keys: &'a LoadedKeys,
        idx: &std::collections::HashMap<[u8; 32], usize>,
        k: &PublicKey,
    ) -> Option<(&'a PeerSpec, &'a Option<PresharedKey>)> {
        let i = *idx.get(&k.to_bytes())?;
        Some((cfg.peers.get(i)?, &keys.peers.get(i)?.1))
    }
    for (i, (pk, _)) in cur_keys.peers.iter().enumerate() {
        let Some(p) = cur.peers.get(i) else { continue };
        if find(new, new_keys, &new_index, pk).is_none() {
            out.push(EngineChange::RemovePeer {
                name: p.name.clone(),
                public_key: p.public_key,
            });
        }
    }
    for (i, (pk, psk)) in new_keys.peers.iter().enumerate() {
        let Some(n) = new.peers.get(i) else { continue };
        let Some((c, cpsk)) = find(cur, cur_keys, &cur_index, pk) else {
            out.push(EngineChange::AddPeer {
                name: n.name.clone(),
                public_key: n.public_key,
            });
            continue;
        };
        if c.name != n.name {
            out.push(EngineChange::PeerName {
                from: c.name.clone(),
                to: n.name.clone(),
            });
        }
        if c.endpoint != n.endpoint || c.endpoint_spec != n.endpoint_spec {
            out.push(EngineChange::PeerEndpoint {
                name: n.name.clone(),
                from: c.endpoint_spec.clone(),
                to: n.endpoint_spec.clone(),
            });
        }
        if c.allowed_ips != n.allowed_ips {
            out.push(EngineChange::PeerAllowedIps {
                name: n.name.clone(),
                from: c.allowed_ips.clone(),
                to: n.allowed_ips.clone(),
            });
        }
        if c.persistent_keepalive != n.persistent_keepalive {
            out.push(EngineChange::PeerKeepalive {
                name: n.name.clone(),
                from: c.persistent_keepalive,
                to: n.persistent_keepalive,
            });
        }
        if cpsk != psk {
            out.push(EngineChange::PeerPresharedKey {
                name: n.name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_seed([seed; 32])
    }

    fn peer(name: &str, k: &PrivateKey) -> PeerSpec {
        PeerSpec {
            name: name.to_string(),
            public_key: k.public_key(),
            endpoint_spec: Some("192.0.2.2:51820".into()),
            endpoint: Some("192.0.2.2:51820".parse().expect("addr")),
            allowed_ips: vec!["10.10.0.2/32".parse().expect("net")],
            persistent_keepalive: Some(25),
            preshared_key_file: None,
            endpoint_name: None,
        }
    }

    fn config(peers: Vec<PeerSpec>) -> EngineConfig {
        EngineConfig {
            deployment: "a".into(),
            peers,
            ..EngineConfig::example()
        }
    }

    fn loaded(own: &PrivateKey, peers: &[(&PrivateKey, Option<[u8; 32]>)]) -> LoadedKeys {
        LoadedKeys {
            private: own.clone(),
            peers: peers
                .iter()
                .map(|(k, psk)| (k.public_key(), psk.map(PresharedKey::from_bytes)))
                .collect(),
        }
    }

    fn lines(c: &[EngineChange]) -> Vec<String> {
        c.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn identical_configs_have_no_changes() {
        let (own, b) = (key(1), key(2));
        let cfg = config(vec![peer("b", &b)]);
        let k = loaded(&own, &[(&b, None)]);
        assert!(diff_configs(&cfg, &k, &cfg.clone(), &loaded(&own, &[(&b, None)])).is_empty());
    }

    #[test]
    fn peers_are_matched_by_key_and_every_field_is_compared() {
        let (own, b, c, d) = (key(1), key(2), key(3), key(4));
        let cur = config(vec![peer("b", &b), peer("c", &c)]);
        let cur_k = loaded(&own, &[(&b, None), (&c, None)]);
        let mut b2 = peer("bee", &b);
        b2.endpoint_spec = Some("192.0.2.9:51820".into());
        b2.endpoint = Some("192.0.2.9:51820".parse().expect("addr"));
        b2.allowed_ips.push("172.18.0.0/16".parse().expect("net"));
        b2.persistent_keepalive = None;
        let mut new = config(vec![peer("d", &d), b2]);
        new.listen_port = None;
        new.mtu = 1400;
        let new_k = loaded(&own, &[(&d, None), (&b, Some([7; 32]))]);
        assert_eq!(
            lines(&diff_configs(&cur, &cur_k, &new, &new_k)),
            vec![
                "~ engine listen_port 51820 -> none",
                "~ engine mtu 1420 -> 1400",
                format!("- peer c ({})", c.public_key().to_base64()).as_str(),
                format!("+ peer d ({})", d.public_key().to_base64()).as_str(),
                "~ peer b renamed bee",
                "~ peer bee endpoint 192.0.2.2:51820 -> 192.0.2.9:51820",
                "~ peer bee allowed_ips [10.10.0.2/32] -> [10.10.0.2/32, 172.18.0.0/16]",
                "~ peer bee persistent_keepalive 25 -> none",
                "~ peer bee preshared key (changed)",
            ]
        );
    }

    #[test]
    fn private_key_change_shows_public_keys_only() {
        let (a, a2, b) = (key(1), key(9), key(2));
        let cfg = config(vec![peer("b", &b)]);
        let ch = diff_configs(
            &cfg,
            &loaded(&a, &[(&b, None)]),
            &cfg,
            &loaded(&a2, &[(&b, None)]),
        );
        let l = lines(&ch);
        assert_eq!(l.len(), 1);
        assert!(l[0].contains(&a2.public_key().to_base64()), "{l:?}");
        assert!(
            !l[0].contains(a2.to_base64().as_str()),
            "private key leaked"
        );
    }

    /// The watcher's re-apply takes the address the engine follows for a
    /// name without a lookup; only a name it does not know is looked up.
    #[test]
    fn a_known_name_is_not_looked_up_again() {
        let b = key(2).public_key().to_base64();
        let text = format!(
            "name: a
interface:
  name: nm0
  addresses: [10.0.0.1/24]
  private_key_file: /k
peers:
  - name: b
    public_key: {b}
    endpoint: localhost:51820
    allowed_ips: [10.0.0.2/32]
"
        );
        let m = crate::manifest::parse(&text, std::path::Path::new("/a.yaml")).expect("valid");
        let followed: SocketAddr = "192.0.2.7:51820".parse().expect("addr");
        let asked = std::cell::RefCell::new(Vec::new());
        let known = |k: &PublicKey, name: &str| {
            asked.borrow_mut().push((k.to_base64(), name.to_owned()));
            Some(followed)
        };
        let cfg = EngineConfig::from_manifest_with(&m, &known).expect("config");
        // `localhost` would have resolved to a loopback address.
        assert_eq!(cfg.peers[0].endpoint, Some(followed));
        assert_eq!(*asked.borrow(), [(b, "localhost:51820".to_owned())]);
        // Not known: looked up.
        let cfg = EngineConfig::from_manifest_with(&m, &|_, _| None).expect("config");
        assert!(
            cfg.peers[0].endpoint.is_some_and(|a| a.ip().is_loopback()),
            "{:?}",
            cfg.peers[0].endpoint
        );
    }
}
