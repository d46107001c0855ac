//! Manifest v1: the declarative description of one site of a deployment.
//!
//! ```yaml
//! name: site-a
//! interface:
//!   name: nm0
//!   addresses: [10.10.0.1/24, fd10::1/64]
//!   mtu: 1420                       # default 1420
//!   listen_port: 51820              # optional
//!   private_key_file: keys/site-a.key
//!   public_key: "<base64>"          # optional: the key file's public key
//!   mss_clamp: auto                 # off | auto | MSS; default auto with forwarding
//! peers:                            # optional (default: none)
//!   - name: site-b
//!     public_key: "<base64 of 32 bytes>"
//!     endpoint: 192.0.2.2:51820     # optional; v4:port, "[v6]:port" or host:port
//!     allowed_ips: [10.10.0.2/32, 172.18.2.0/24]
//!     persistent_keepalive: 25      # optional
//!     endpoint_refresh: 300         # optional, hostname endpoints: re-resolve every N s
//!     endpoint_stale_after: 135     # optional, hostname endpoints: and when no handshake for N s
//!     preshared_key_file: keys/ab.psk   # optional
//! routes:                           # optional
//!   - to: 192.168.50.0/24
//!     metric: 100                   # optional
//! forwarding: true                  # optional (default false): IP forwarding while up
//! firewall:                         # optional
//!   chains:                         # base chains of `table inet netman_<name>`
//!     - name: forward
//!       hook: forward               # prerouting | input | forward | output | postrouting
//!       type: filter                # filter | nat (default filter)
//!       priority: 0                 # optional; default per type and hook
//!       policy: accept              # accept | drop (default accept)
//!       rules:                      # nft rule syntax, one rule per entry
//!         - iifname "nm0" oifname "lan0" accept
//!   insert:                         # rules placed into chains netman does not own
//!     - family: ip                  # ip | ip6 | inet
//!       table: filter
//!       chain: DOCKER-USER
//!       rule: iifname "nm0" oifname "docker0" accept
//! ```
//!
//! Parsing happens in two layers: [`raw`] deserialises the YAML into plain serde
//! structs carrying source positions (unknown keys, wrong types and missing fields
//! stop there, reported alone), then validation checks every semantic rule and
//! reports *all* violations at once, in document order, as
//! `FILE:LINE:COL: path.to.field: message`. See `validate.rs` for the rules.
//!
//! Parsing never reads any file other than the manifest itself (key files are only
//! resolved to absolute paths) and never puts key material into messages.

pub(crate) mod error;
mod firewall;
mod health;
mod interface;
mod locate;
mod overlap;
pub mod raw;
pub(crate) mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_saphyr::Location;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::files;

pub use error::{ManifestError, ManifestErrors};
pub use health::{Probe, Rollout};

/// Default interface MTU (WireGuard's usual 1420: 1500 minus IPv6 + UDP + WireGuard overhead).
pub const DEFAULT_MTU: u32 = 1420;
/// `interface.txqueuelen` when absent: the TUN device's transmit queue, in
/// packets. The kernel's own default for a TUN device; shorter queues were
/// measured to lose pings and UDP throughput without curing the latency a
/// bulk transfer adds (docs/performance.md, "Queueing").
pub const DEFAULT_TXQUEUELEN: u32 = 500;

/// Manifests larger than this are rejected before parsing.
pub const MAX_MANIFEST_BYTES: usize = limits::MAX_BYTES;

/// Parser budget. Generous for 10,000 routes or 1,000 peers × 10 allowed IPs (about
/// 60,000 events), bounded against alias amplification, deep nesting and huge input.
pub(crate) mod limits {
    pub const MAX_BYTES: usize = 16 * 1024 * 1024;
    pub const MAX_EVENTS: usize = 2_000_000;
    pub const MAX_NODES: usize = 1_000_000;
    pub const MAX_DEPTH: usize = 32;
    pub const MAX_ALIASES: usize = 10_000;
    pub const MAX_ANCHORS: usize = 10_000;
    pub const MAX_MERGE_KEYS: usize = 1_000;
    pub const MAX_REPLAYED_EVENTS: usize = 200_000;
    pub const MAX_REPLAY_DEPTH: usize = 32;
}

/// A validated manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub interface: Interface,
    pub peers: Vec<Peer>,
    pub routes: Vec<Route>,
    /// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` set to 1
    /// while the deployment is up.
    pub forwarding: bool,
    /// nftables chains and rules (empty: netman does not touch nftables).
    pub firewall: Firewall,
    /// Whether the running deployment follows the manifest file and repairs
    /// drift in the kernel (default true).
    pub watch: bool,
    /// Where the engine serves Prometheus metrics, if anywhere.
    pub metrics: Option<Metrics>,
    /// What a health-gated confirmation checks besides handshakes: the
    /// top-level probes, then each peer's.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// How the watcher applies a changed file (`None`: at once, for good).
    #[serde(default)]
    pub rollout: Option<Rollout>,
    pub source: Source,
    /// Legal but suspicious values (overlapping allowed IPs), in document
    /// order; `validate`, `diff` and `apply` print them to stderr.
    #[serde(default)]
    pub warnings: Vec<ManifestError>,
}

/// The `metrics:` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// `ADDRESS:PORT` of the HTTP endpoint (`GET /metrics`).
    pub listen: SocketAddr,
}

/// The `firewall:` section: base chains in netman's own table
/// (`table inet netman_<name>`) and rules inserted into chains of others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    pub chains: Vec<Chain>,
    pub insert: Vec<Insert>,
}

impl Firewall {
    /// Whether the section asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.insert.is_empty()
    }
}

/// Where a value was written in the manifest, for diagnostics that come
/// later (e.g. nft rejecting a rule): `FILE:LINE:COL: PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    /// The manifest path as given by the user.
    pub file: String,
    /// Field path such as `firewall.chains[0].rules[2]`.
    pub path: String,
    /// 1-based line and column of the value (of its first character when
    /// `verbatim`).
    pub line: usize,
    pub column: usize,
    /// The value appears verbatim on that line from `column` on (a plain or
    /// escape-free quoted scalar), so `column + offset` points at the
    /// offset-th character of the value.
    pub verbatim: bool,
}

impl Pos {
    /// `FILE:LINE:COL: PATH` pointing at character `offset` of the value
    /// when that position is known exactly, at the value otherwise.
    pub fn at(&self, offset: usize) -> String {
        let column = if self.verbatim {
            self.column + offset
        } else {
            self.column
        };
        format!("{}:{}:{}: {}", self.file, self.line, column, self.path)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.at(0))
    }
}

/// A base chain in netman's table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub name: String,
    pub hook: Hook,
    pub kind: ChainType,
    /// Explicit, or the default of the type and hook.
    pub priority: i32,
    pub policy: Policy,
    pub rules: Vec<Rule>,
    /// Position of the chain's `name`.
    pub pos: Pos,
}

/// One rule in nft syntax, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub text: String,
    pub pos: Pos,
}

/// A rule netman inserts into a chain it does not own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insert {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub rule: Rule,
    /// Position of the `chain` value (for "no such chain" errors).
    pub pos: Pos,
}

macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The keyword as written in manifests and in nft syntax.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value named by `s`, if any.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// `a | b | c`, for messages.
            pub fn choices() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(" | ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// A netfilter hook.
    Hook {
        Prerouting => "prerouting",
        Input => "input",
        Forward => "forward",
        Output => "output",
        Postrouting => "postrouting",
    }
);

keyword_enum!(
    /// A base chain type.
    ChainType {
        Filter => "filter",
        Nat => "nat",
    }
);

keyword_enum!(
    /// A base chain's policy.
    Policy {
        Accept => "accept",
        Drop => "drop",
    }
);

keyword_enum!(
    /// The nftables family of a table netman inserts into.
    Family {
        Ip => "ip",
        Ip6 => "ip6",
        Inet => "inet",
    }
);

impl ChainType {
    /// nft's standard priority for this type at `hook` (filter 0; nat:
    /// dstnat -100 before routing, srcnat 100 after).
    pub fn default_priority(self, hook: Hook) -> i32 {
        match (self, hook) {
            (ChainType::Filter, _) => 0,
            (ChainType::Nat, Hook::Prerouting | Hook::Output) => -100,
            (ChainType::Nat, _) => 100,
        }
    }
}

/// Where a manifest came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The path as given, made absolute (lexically: `.` components removed, no symlink
    /// resolution, `..` kept).
    pub path: PathBuf,
    /// The manifest text exactly as parsed.
    pub text: String,
    /// Lowercase hex SHA-256 of `text`.
    pub sha256: String,
    /// Set when `text` was derived from the network file at `path` (then
    /// `text` is the derived v1 manifest, not the file's content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<DerivedFrom>,
}

impl Source {
    /// The SHA-256 of the file at `path` as it was read: the network
    /// file's for a derived manifest, else the manifest's own.
    pub fn file_sha256(&self) -> &str {
        self.derived_from
            .as_ref()
            .map_or(self.sha256.as_str(), |d| d.sha256.as_str())
    }
}

/// Which site of which network file a manifest was derived from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedFrom {
    /// The network's name (`network:`).
    pub network: String,
    /// The site whose manifest this is (also the deployment's name).
    pub site: String,
    /// Lowercase hex SHA-256 of the network file's text.
    pub sha256: String,
}

/// The local WireGuard-compatible interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// Host addresses with their prefix length, in manifest order.
    pub addresses: Vec<ipnet::IpNet>,
    pub mtu: u32,
    /// The TUN device's transmit queue length, in packets (each may be a
    /// 64 KiB super-packet): what a bulk transfer can queue ahead of
    /// everything else in the tunnel.
    #[serde(default = "default_txqueuelen")]
    pub txqueuelen: u32,
    pub listen_port: Option<u16>,
    /// Absolute path of the private key file (resolved against the manifest's directory).
    pub private_key_file: PathBuf,
    /// TCP MSS clamping of forwarded traffic (the default already applied:
    /// `Auto` with `forwarding: true`, `Off` otherwise).
    #[serde(default)]
    pub mss_clamp: MssClamp,
    /// `interface.table` as written (`None`: automatic, see
    /// [`crate::link::model::Routing`]).
    #[serde(default)]
    pub table: Option<RouteTable>,
    /// `interface.fwmark` as written: the mark on the engine's UDP sockets.
    #[serde(default)]
    pub fwmark: Option<u32>,
    /// `interface.public_key`: the public key of `private_key_file`, as
    /// declared (checked against the file at apply).
    #[serde(default)]
    pub public_key: Option<PublicKey>,
}

fn default_txqueuelen() -> u32 {
    DEFAULT_TXQUEUELEN
}

/// `interface.mss_clamp`: the MSS of TCP SYNs forwarded into and out of
/// the tunnel, so hosts behind the gateway never send segments the tunnel
/// cannot carry (PMTU discovery fails silently wherever ICMP is dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MssClamp {
    #[default]
    Off,
    /// From the MTU: the route's (`rt mtu`) into the tunnel, the
    /// interface's out of it.
    Auto,
    /// A fixed MSS for both directions and both IP versions.
    Fixed(u16),
}

/// The chain of netman's table that holds the MSS clamping rules (a
/// manifest chain may not have this name).
pub const MSS_CLAMP_CHAIN: &str = "mss_clamp";

impl MssClamp {
    /// The smallest fixed MSS: 576 (the IPv4 minimum MTU) - 40.
    pub const MIN: u16 = 536;
    /// The largest: 65535 - 40.
    pub const MAX: u16 = 65495;
}

impl fmt::Display for MssClamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MssClamp::Off => f.write_str("off"),
            MssClamp::Auto => f.write_str("auto"),
            MssClamp::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Where the routes of a deployment go (`interface.table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTable {
    /// The main table (254).
    Main,
    /// No routes at all.
    Off,
    /// A numbered table, 1..=2^32-1 except 253, 254 and 255.
    Id(u32),
}

/// A remote site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    /// Networks (no host bits set), in manifest order.
    pub allowed_ips: Vec<ipnet::IpNet>,
    pub persistent_keepalive: Option<u16>,
    /// Absolute path of the preshared key file, if any.
    pub preshared_key_file: Option<PathBuf>,
    /// Seconds between re-resolutions of a hostname endpoint (set only
    /// with one; the engine's default when absent).
    #[serde(default)]
    pub endpoint_refresh: Option<u32>,
    /// Re-resolve a hostname endpoint also while the latest handshake is
    /// older than this many seconds.
    #[serde(default)]
    pub endpoint_stale_after: Option<u32>,
}

/// A peer's UDP endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// A literal address: `192.0.2.1:51820` or `[2001:db8::1]:51820`.
    Addr(SocketAddr),
    /// A DNS name to resolve: `vpn.example.net:51820`.
    Host { host: String, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(addr) => write!(f, "{addr}"),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// An extra route through the interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Destination network (no host bits set).
    pub to: ipnet::IpNet,
    pub metric: Option<u32>,
}

/// The one public-key type (netman-proto's): base64 in and out, like
/// `wg pubkey`; low-order points are refused at validation.
pub use netman_proto::keys::{KeyError, PublicKey};

/// Whether `name` is a deployment name (1 to 32 of `a-z`, `0-9` and `-`):
/// the manifest's `name` rule, for names that come from elsewhere
/// (`import --name`).
pub fn is_deployment_name(name: &str) -> bool {
    validate::deployment_name(name).is_ok()
}

/// A peer endpoint as the manifest reads `endpoint:` (`IPV4:PORT`,
/// `[IPV6]:PORT` or `HOSTNAME:PORT`).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    validate::endpoint(s)
}

/// Parse and validate manifest `text`.
///
/// `path` is used in error messages (as given) and to resolve relative key file
/// paths against its directory (after making it absolute). No file is read.
pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestErrors> {
    let file = path.display().to_string();
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestErrors::single(ManifestError::new(
            &file,
            Location::UNKNOWN,
            "",
            format!(
                "manifest is too large ({} bytes; at most {MAX_MANIFEST_BYTES})",
                text.len()
            ),
        )));
    }
    let raw = raw_parse(text, &file)?;
    let abs_path = absolute(path);
    let base_dir = abs_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let source = Source {
        path: abs_path,
        text: text.to_owned(),
        sha256: sha256_hex(text),
        derived_from: None,
    };
    validate::validate(raw, source, &base_dir, &file)
}

/// Read the manifest file at `path` (a symlink to it is fine): opened
/// without blocking (a FIFO cannot hang it), `fstat`ed, and read only if it
/// is a regular file of at most [`MAX_MANIFEST_BYTES`], and then at most one
/// byte more than that.
pub fn read_text(path: &Path) -> Result<String, files::ReadError> {
    let bytes = files::read_file(path, false, MAX_MANIFEST_BYTES as u64)?;
    String::from_utf8(bytes).map_err(|_| {
        files::ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// The diagnostic for a manifest file that [`read_text`] refused:
/// `FILE:1:1: cannot read: REASON` or `FILE:1:1: manifest is too large ...`.
pub fn read_error(path: &Path, e: &files::ReadError) -> ManifestErrors {
    let message = match e {
        files::ReadError::TooLarge { size, limit } => {
            format!("manifest is too large ({size} bytes; at most {limit})")
        }
        other => format!("cannot read: {other}"),
    };
    ManifestErrors::single(ManifestError::new(
        &path.display().to_string(),
        Location::UNKNOWN,
        "",
        message,
    ))
}

/// Read and parse the manifest at `path`.
///
/// An unreadable file yields the single error `FILE:1:1: cannot read: <os reason>`
/// (`not a regular file (a FIFO)` and the like for what is not a file).
pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
    let text = read_text(path).map_err(|e| read_error(path, &e))?;
    parse(&text, path)
}

/// Parser options: strict about tags, generous enough for 10,000 routes or
/// 1,000 peers × 10 allowed IPs, and bounded against alias bombs and deep nesting.
pub(crate) fn parser_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = limits::MAX_EVENTS;
    budget.max_nodes = limits::MAX_NODES;
    budget.max_depth = limits::MAX_DEPTH;
    budget.max_documents = 1;
    budget.max_aliases = limits::MAX_ALIASES;
    budget.max_anchors = limits::MAX_ANCHORS;
    budget.max_merge_keys = limits::MAX_MERGE_KEYS;
    budget.max_total_scalar_bytes = limits::MAX_BYTES;
    budget.max_recorded_anchor_events = limits::MAX_REPLAYED_EVENTS;
    budget.max_recorded_anchor_bytes = limits::MAX_BYTES;

    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = limits::MAX_REPLAYED_EVENTS;
    alias_limits.max_replay_stack_depth = limits::MAX_REPLAY_DEPTH;

    serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        with_snippet: false,
        reject_unsupported_tags: true,
        strict_booleans: true,
    }
}

/// 1-based line and column of `peers[peer].FIELD` in manifest `text`
/// (of the peer entry when the field is absent; 1:1 if none is found).
pub fn peer_field_position(text: &str, peer: usize, field: &str) -> (usize, usize) {
    use error::Seg;
    let at = |segs: &[Seg]| locate::locate(text, segs);
    let entry = [Seg::Key("peers".to_owned()), Seg::Index(peer)];
    let mut full = entry.to_vec();
    full.push(Seg::Key(field.to_owned()));
    at(&full)
        .or_else(|| at(&entry))
        .map_or((1, 1), error::line_col)
}

pub(crate) fn absolute_path(path: &Path) -> PathBuf {
    absolute(path)
}

fn raw_parse(text: &str, file: &str) -> Result<raw::RawManifest, ManifestErrors> {
    parse_document(text, file)
}

/// Deserialise a YAML document of netman's (a manifest, a network file)
/// with the parser's budgets; a failure is one positioned error naming the
/// field path.
pub(crate) fn parse_document<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ManifestErrors> {
    let mut failed_path: Option<Vec<error::Seg>> = None;
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(text, parser_options(), |de| {
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(raw) => Ok(raw),
                Err(e) => {
                    failed_path = Some(error::field_segments(e.path()));
                    Err(e.into_inner())
                }
            }
        });
    result.map_err(|e| {
        let segments = failed_path.unwrap_or_default();
        ManifestErrors::single(error::from_serde(file, text, &e, &segments))
    })
}

/// `path` made absolute against the current directory, with `.` components removed.
fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    normalize(&abs)
}

/// Drop `.` components (lexical; `..` is kept because of symlinks).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Lowercase hex SHA-256 of `text` (how manifests are identified).
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest's JSON Schema (draft-07), derived from the manifest types,
/// for editors (`# yaml-language-server: $schema=...`) and CI.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<raw::RawManifest>();
    schema.to_value()
}

/// Version of the parse cache format; bump when validation changes meaning.
const CACHE_FORMAT: u32 = 3;

/// The cache's secret key (32 random bytes, mode 0600) in the cache dir.
const CACHE_KEY_FILE: &str = "key";

/// A cache entry holds the manifest text and its parsed form.
const MAX_CACHE_ENTRY_BYTES: u64 = 8 * limits::MAX_BYTES as u64 + (1 << 20);

/// How many entries the cache keeps.
const CACHE_ENTRIES: usize = 16;

type CacheMac = Hmac<Sha256>;

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    format: u32,
    /// Identity of the netman binary that wrote it (size and mtime).
    binary: String,
    /// The path as given (errors quote it).
    given: String,
    manifest: Manifest,
}

fn binary_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| format!("{}-{}.{}", m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default()
}

/// [`load`], remembering validated manifests in `cache_dir` by content hash:
/// a manifest already seen (same text, same path, same netman binary) is not
/// parsed again. Parsing a YAML manifest of 10,000 routes costs tens of
/// milliseconds; reading the cached result a few. The cache is an
/// optimisation only: any problem with it means a normal parse.
///
/// An entry cannot let a manifest skip validation: each is authenticated
/// (HMAC-SHA256) with a secret key kept in the cache dir (`key`, mode 0600,
/// made on first use), and one whose authenticator does not verify, planted
/// or stale, is ignored. The cache dir must be a real directory owned by
/// root (or the user running netman) and not writable by group or others.
pub fn load_cached(path: &Path, cache_dir: &Path) -> Result<Manifest, ManifestErrors> {
    let text = read_text(path).map_err(|e| read_error(path, &e))?;
    let sha = sha256_hex(&text);
    let given = path.display().to_string();
    let binary = binary_identity();
    let key = cache_key(cache_dir);
    if let Some(key) = &key
        && let Some(m) = cache_get(cache_dir, key, &sha, &given, &binary, path, &text)
    {
        return Ok(m);
    }
    let m = parse(&text, path)?;
    let Some(key) = key else {
        return Ok(m);
    };
    if binary.is_empty() {
        return Ok(m);
    }
    let entry = CacheEntry {
        format: CACHE_FORMAT,
        binary,
        given,
        manifest: m,
    };
    cache_put(cache_dir, &key, &sha, &entry);
    Ok(entry.manifest)
}

/// Whether `dir` may hold cache entries: a directory (not a symlink) owned
/// by root or the user running netman, not writable by group or others.
fn cache_dir_ok(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) => m.is_dir() && files::trusted_owner(m.uid()) && m.mode() & 0o022 == 0,
        Err(_) => false,
    }
}

/// The cache's secret key, made on first use; `None` (no caching) if the
/// cache dir or the key file cannot be trusted.
fn cache_key(dir: &Path) -> Option<Zeroizing<[u8; 32]>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::fs::symlink_metadata(dir).is_err() {
        // Not there yet: create it (only it: its parent is the state dir).
        std::fs::DirBuilder::new().mode(0o700).create(dir).ok()?;
    }
    if !cache_dir_ok(dir) {
        tracing::debug!(dir = %dir.display(), "parse cache dir not trusted; not caching");
        return None;
    }
    let path = dir.join(CACHE_KEY_FILE);
    for _ in 0..2 {
        match files::open_read(&path, true) {
            Ok(mut f) => {
                let meta = files::regular(&f).ok()?;
                if !files::trusted_owner(meta.uid()) || meta.mode() & 0o077 != 0 || meta.len() != 32
                {
                    tracing::debug!(path = %path.display(), "parse cache key not trusted; not caching");
                    return None;
                }
                let mut key = Zeroizing::new([0u8; 32]);
                std::io::Read::read_exact(&mut f, &mut key[..]).ok()?;
                return Some(key);
            }
            Err(e) if e.is_not_found() => {
                // Made complete under a temp name, then linked into place:
                // a concurrent netman sees the whole key or none.
                let key = crate::keys::os_random().ok()?;
                let tmp = dir.join(format!(".{CACHE_KEY_FILE}.{}.tmp", std::process::id()));
                let written = files::create_new(&tmp, 0o600).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, &key[..])?;
                    f.sync_all()
                });
                let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => return Some(key),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(_) => return None,
                }
            }
            Err(_) => return None,
        }
    }
    None
}

fn cache_tag(key: &[u8; 32], body: &[u8]) -> Option<CacheMac> {
    let mut mac = CacheMac::new_from_slice(key).ok()?;
    mac.update(body);
    Some(mac)
}

/// The cached manifest for text `sha`, if an authentic entry matches.
#[allow(clippy::too_many_arguments)]
fn cache_get(
    dir: &Path,
    key: &[u8; 32],
    sha: &str,
    given: &str,
    binary: &str,
    path: &Path,
    text: &str,
) -> Option<Manifest> {
    let bytes = files::read_file(
        &dir.join(format!("{sha}.json")),
        true,
        MAX_CACHE_ENTRY_BYTES,
    )
    .ok()?;
    // `<64 hex digits of HMAC-SHA256(key, json)>\n<json>`
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let (tag_hex, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let tag = hex_decode(tag_hex)?;
    cache_tag(key, body)?.verify_slice(&tag).ok()?;
    let e: CacheEntry = serde_json::from_slice(body).ok()?;
    (e.format == CACHE_FORMAT
        && e.binary == binary
        && e.given == given
        && e.manifest.source.path == absolute(path)
        && e.manifest.source.text == text)
        .then_some(e.manifest)
}

/// Record `entry` (best effort), then prune the cache.
fn cache_put(dir: &Path, key: &[u8; 32], sha: &str, entry: &CacheEntry) {
    let Ok(body) = serde_json::to_vec(entry) else {
        return;
    };
    let Some(mac) = cache_tag(key, &body) else {
        return;
    };
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut data = Vec::with_capacity(tag.len() + 1 + body.len());
    data.extend_from_slice(tag.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(&body);
    let tmp = dir.join(format!(".{sha}.{}.tmp", std::process::id()));
    if let Err((p, e)) = files::write_atomic(&dir.join(format!("{sha}.json")), &tmp, &data, 0o600) {
        tracing::debug!(path = %p, error = %e, "cannot write a parse cache entry");
        let _ = std::fs::remove_file(&tmp);
    }
    prune_cache(dir, CACHE_ENTRIES);
}

fn hex_decode(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Keep the `keep` most recently written cache entries.
fn prune_cache(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= keep {
        return;
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(keep) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: cache\ninterface:\n  name: nm0\n  addresses: [10.255.0.1/24]\n  private_key_file: k\n";

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netman-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn a_planted_cache_entry_does_not_bypass_validation() {
        let dir = tmpdir("planted");
        let path = dir.join("m.yaml");
        std::fs::write(&path, TEXT).expect("write");
        let cache = dir.join("cache");
        let m = load_cached(&path, &cache).expect("valid");
        assert_eq!(m.interface.mtu, DEFAULT_MTU);

        // An entry for this text whose manifest would never validate.
        let mut bad = m.clone();
        bad.interface.mtu = 1;
        let entry = serde_json::json!({
            "format": 1,
            "binary": binary_identity(),
            "given": path.display().to_string(),
            "manifest": bad,
        });
        let json = serde_json::to_string(&entry).expect("json");
        let mut current = entry.clone();
        current["format"] = serde_json::json!(CACHE_FORMAT);
        let current = serde_json::to_string(&current).expect("json");
        let entry_path = cache.join(format!("{}.json", sha256_hex(TEXT)));
        let planted = [
            json,
            current.clone(),
            format!("{}\n{current}", "0".repeat(64)),
            format!("{}\n{current}", "zz".repeat(32)),
            format!("\n{current}"),
        ];
        for p in planted {
            std::fs::write(&entry_path, &p).expect("plant");
            let m = load_cached(&path, &cache).expect("valid");
            assert_eq!(m.interface.mtu, DEFAULT_MTU, "planted entry used: {p:.80}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn authentic_entries_are_used_and_the_cache_is_root_only() {
        let dir = tmpdir("authentic");
        let path = dir.join("m.yaml");
        std::fs::write(&path, TEXT).expect("write");
        let cache = dir.join("cache");
        let m = load_cached(&path, &cache).expect("valid");
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&cache.join(CACHE_KEY_FILE)), 0o600);
        let entry_path = cache.join(format!("{}.json", sha256_hex(TEXT)));
        assert_eq!(mode(&entry_path), 0o600);
        let key = cache_key(&cache).expect("key");
        let sha = sha256_hex(TEXT);
        let given = path.display().to_string();
        let binary = binary_identity();
        assert_eq!(
            cache_get(&cache, &key, &sha, &given, &binary, &path, TEXT),
            Some(m.clone())
        );
        // Another key (say, a cache copied from elsewhere) verifies nothing.
        assert_eq!(
            cache_get(&cache, &[7u8; 32], &sha, &given, &binary, &path, TEXT),
            None
        );
        // A key file open to others, or a symlinked one, disables the cache.
        use std::os::unix::fs::PermissionsExt;
        let kf = cache.join(CACHE_KEY_FILE);
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(cache_key(&cache).is_none());
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(cache_key(&cache).is_some());
        // A cache dir writable by others is not used.
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(cache_key(&cache).is_none());
        assert_eq!(load_cached(&path, &cache).expect("valid"), m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
