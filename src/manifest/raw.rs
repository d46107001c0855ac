//! Raw deserialisation layer of the manifest: one plain serde struct per section.
//!
//! These types mirror the YAML document one-to-one (snake_case keys, unknown keys
//! rejected at every level) and carry source positions through
//! [`serde_saphyr::Spanned`]. They perform no semantic validation: that happens in
//! [`super::validate`], which turns a [`RawManifest`] into a [`super::Manifest`].
//!
//! Conventions that the error reporting relies on (keep them when adding sections):
//! - every field, and every sequence element, is a `Spanned<_>` (optional fields are
//!   `Option<Spanned<_>>`), so every node has a position and field paths can be
//!   recovered from `serde_path_to_error` (see `super::error::field_path`);
//! - every struct is `#[serde(deny_unknown_fields)]`;
//! - integers are [`Int`] (any integer, range-checked later) so that an out-of-range
//!   number is a semantic error reported together with all the others;
//! - no `#[serde(flatten)]` and no untagged enums (they lose span information);
//! - every field says with `#[schemars(...)]` what it looks like in YAML (the
//!   `Spanned`/`Int` wrappers are transparent there), so that `netman schema`
//!   derives the manifest's JSON Schema from these very types.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A netman manifest (v1): one site of a deployment.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "netman manifest v1")]
pub struct RawManifest {
    /// Names the deployment: 1 to 32 characters of a-z, 0-9 and '-'.
    #[schemars(with = "String", length(min = 1, max = 32), pattern(r"^[a-z0-9-]+$"))]
    pub name: Spanned<String>,
    /// The TUN interface of the site.
    #[schemars(with = "RawInterface")]
    pub interface: Spanned<RawInterface>,
    /// The remote sites.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawPeer>>")]
    pub peers: Option<Spanned<Vec<Spanned<RawPeer>>>>,
    /// Extra routes through the interface.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawRoute>>")]
    pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
    /// Set net.ipv4.ip_forward and net.ipv6.conf.all.forwarding to 1 while the deployment is up.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub forwarding: Option<Spanned<bool>>,
    /// nftables chains in netman's own table, and rules inserted into other chains.
    #[serde(default)]
    #[schemars(with = "Option<RawFirewall>")]
    pub firewall: Option<Spanned<RawFirewall>>,
    /// Follow this file and repair drift in the kernel while running (default true).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub watch: Option<Spanned<bool>>,
    /// Serve Prometheus metrics.
    #[serde(default)]
    #[schemars(with = "Option<RawMetrics>")]
    pub metrics: Option<Spanned<RawMetrics>>,
    /// Checks across the tunnel that `apply --confirm-when healthy` and
    /// `rollout: {confirm: healthy}` wait for (at most 16 in all, with the
    /// peers' own).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawProbe>>")]
    pub probes: Option<Spanned<Vec<Spanned<RawProbe>>>>,
    /// How the watcher applies a changed manifest file.
    #[serde(default)]
    #[schemars(with = "Option<RawRollout>")]
    pub rollout: Option<Spanned<RawRollout>>,
}

/// One entry of `probes:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// An address across the tunnel (inside a peer's allowed_ips) that
    /// must answer an ICMP echo.
    #[schemars(with = "String")]
    pub ping: Spanned<String>,
}

/// `rollout:` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// `healthy`: a changed file is applied on probation, kept once every
    /// peer that had a recent handshake handshakes again and every probe
    /// answers, and reverted otherwise when `timeout` expires.
    #[schemars(with = "RolloutConfirm")]
    pub confirm: Spanned<String>,
    /// Seconds the probation lasts, 5..=3600.
    #[schemars(with = "u32", range(min = 5, max = 3600))]
    pub timeout: Spanned<Int>,
}

/// The schema of `rollout.confirm`.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum RolloutConfirm {
    Healthy,
}

/// `metrics:` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// ADDRESS:PORT of the HTTP endpoint, e.g. 127.0.0.1:9586.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
}

/// `interface:` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// A Linux interface name (1 to 15 characters).
    #[schemars(with = "String", length(min = 1, max = 15), pattern(r"^[^/:\s]+$"))]
    pub name: Spanned<String>,
    /// Host addresses with prefix length, IPv4 and IPv6, e.g. 10.10.0.1/24.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub addresses: Spanned<Vec<Spanned<String>>>,
    /// 576..=65535 (at least 1280 with an IPv6 address); default 1420.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 576, max = 65535))]
    pub mtu: Option<Spanned<Int>>,
    /// The TUN device's transmit queue, in packets, 1..=10000 (default 500):
    /// how much a bulk transfer can queue ahead of everything else in the
    /// tunnel.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 10000))]
    pub txqueuelen: Option<Spanned<Int>>,
    /// UDP port; random when absent.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 1, max = 65535))]
    pub listen_port: Option<Spanned<Int>>,
    /// File with the private key (wg genkey format, mode 0600), relative to the manifest's directory.
    #[schemars(with = "String", length(min = 1))]
    pub private_key_file: Spanned<String>,
    /// TCP MSS clamping of forwarded traffic into and out of the tunnel:
    /// off, auto (from the route MTU) or a fixed MSS (536..=65495). Default:
    /// auto when forwarding is true, off otherwise.
    #[serde(default)]
    #[schemars(with = "Option<MssClampSchema>")]
    pub mss_clamp: Option<Spanned<IntOrWord>>,
    /// Routing table of the routes: `main` (default), `off` (no routes) or
    /// a number (1..=4294967295 except 253, 254, 255). Automatic when absent
    /// and a peer's allowed_ips hold a default route.
    #[serde(default)]
    #[schemars(with = "Option<RawTableSchema>")]
    pub table: Option<Spanned<IntOrWord>>,
    /// Firewall mark (1..=4294967295) on the engine's UDP sockets.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub fwmark: Option<Spanned<Int>>,
    /// This site's own public key (wg pubkey of the private key file):
    /// checked against the key file at apply, and lets `netman validate
    /// a.yaml b.yaml` check that manifests naming each other agree.
    #[serde(default)]
    #[schemars(
        with = "Option<String>",
        pattern(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
    )]
    pub public_key: Option<Spanned<String>>,
}

/// The schema of `interface.mss_clamp` (documentation only).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum MssClampSchema {
    Word(MssClampWord),
    Size(#[schemars(range(min = 536, max = 65495))] u16),
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum MssClampWord {
    Off,
    Auto,
}

/// The schema of `interface.table`: a word or a number.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum RawTableSchema {
    Word(RawTableWord),
    Id(u32),
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum RawTableWord {
    Main,
    Off,
}

/// One entry of `peers:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// Unique within the manifest.
    #[schemars(
        with = "String",
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9._-]+$")
    )]
    pub name: Spanned<String>,
    /// The peer's public key: 44 characters of base64 (wg pubkey).
    #[schemars(with = "String", pattern(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))]
    pub public_key: Spanned<String>,
    /// v4:port, [v6]:port or hostname:port.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<Spanned<String>>,
    /// Prefixes routed to and accepted from the peer (no host bits set).
    #[schemars(with = "Vec<String>")]
    pub allowed_ips: Spanned<Vec<Spanned<String>>>,
    /// Seconds, 1..=65535.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 1, max = 65535))]
    pub persistent_keepalive: Option<Spanned<Int>>,
    /// File with a preshared key (wg genpsk format, mode 0600).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub preshared_key_file: Option<Spanned<String>>,
    /// Seconds between re-resolutions of a hostname endpoint, 1..=86400
    /// (default 300). Only with a hostname endpoint.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 86400))]
    pub endpoint_refresh: Option<Spanned<Int>>,
    /// Re-resolve a hostname endpoint also while the peer's latest
    /// handshake is older than this many seconds, 1..=86400 (default 135).
    /// Only with a hostname endpoint.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 86400))]
    pub endpoint_stale_after: Option<Spanned<Int>>,
    /// Checks across this peer's tunnel (addresses inside its allowed_ips).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawProbe>>")]
    pub probes: Option<Spanned<Vec<Spanned<RawProbe>>>>,
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Destination prefix (no host bits set).
    #[schemars(with = "String")]
    pub to: Spanned<String>,
    /// Route metric (priority).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub metric: Option<Spanned<Int>>,
}

/// `firewall:` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    /// Base chains in `table inet netman_<name>`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawChain>>")]
    pub chains: Option<Spanned<Vec<Spanned<RawChain>>>>,
    /// Rules netman places into chains it does not own.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawInsert>>")]
    pub insert: Option<Spanned<Vec<Spanned<RawInsert>>>>,
}

/// One entry of `firewall.chains:`: a base chain in netman's own table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    #[schemars(with = "String", length(min = 1))]
    pub name: Spanned<String>,
    #[schemars(
        with = "String",
        extend("enum" = ["prerouting", "input", "forward", "output", "postrouting"])
    )]
    pub hook: Spanned<String>,
    /// filter (default) or nat.
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<String>", extend("enum" = ["filter", "nat", null]))]
    pub kind: Option<Spanned<String>>,
    /// Default: filter 0; nat 100 for postrouting, -100 for prerouting.
    #[serde(default)]
    #[schemars(with = "Option<i32>")]
    pub priority: Option<Spanned<Int>>,
    /// accept (default) or drop.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("enum" = ["accept", "drop", null]))]
    pub policy: Option<Spanned<String>>,
    /// nft rule syntax, one rule per entry.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub rules: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One entry of `firewall.insert:`: a rule placed into a chain netman does not own.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInsert {
    #[schemars(with = "String", extend("enum" = ["ip", "ip6", "inet"]))]
    pub family: Spanned<String>,
    #[schemars(with = "String")]
    pub table: Spanned<String>,
    #[schemars(with = "String")]
    pub chain: Spanned<String>,
    /// nft rule syntax; netman adds the comment marking it as its own.
    #[schemars(with = "String")]
    pub rule: Spanned<String>,
}

/// A YAML integer of any size (saturated to the `i128` range), or what was found instead.
///
/// Only genuine integer scalars are integers: a quoted `"1420"` is a string. A
/// non-integer is not a deserialisation error but [`Int::NotInteger`], so that
/// validation reports it at the value's position together with every other error
/// (and range checks happen there too). The found value is never kept, only its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int {
    Value(i128),
    /// The kind of node found instead: "string", "list", ...
    NotInteger(&'static str),
}

impl Int {
    /// The integer, or the message "expected an integer, found KIND".
    pub fn get(self) -> Result<i128, String> {
        match self {
            Int::Value(v) => Ok(v),
            Int::NotInteger(kind) => Err(format!("expected an integer, found {kind}")),
        }
    }
}

/// An integer or a word (`interface.table`, `interface.mss_clamp`; a YAML
/// 1.1 boolean read as `on`/`off`), any other node kept as its
/// kind for a positioned error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrWord {
    Int(Int),
    Word(String),
}

impl<'de> Deserialize<'de> for IntOrWord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;

        impl<'de> Visitor<'de> for V {
            type Value = IntOrWord;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a word")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Word(v.chars().take(64).collect()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::Value(i128::from(v))))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::Value(i128::from(v))))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::Value(v)))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::Value(
                    i128::try_from(v).unwrap_or(i128::MAX),
                )))
            }

            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::NotInteger("floating point number")))
            }

            // YAML 1.1 reads a plain `off` as false, `on` as true.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Word(if v { "on" } else { "off" }.to_owned()))
            }

            fn visit_unit<E: de::Error>(self) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::NotInteger("null")))
            }

            fn visit_none<E: de::Error>(self) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::NotInteger("null")))
            }

            fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<IntOrWord, E> {
                Ok(IntOrWord::Int(Int::NotInteger("binary")))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IntOrWord, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IntOrWord::Int(Int::NotInteger("list")))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IntOrWord, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IntOrWord::Int(Int::NotInteger("mapping")))
            }
        }

        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl<'de> Visitor<'de> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int::Value(i128::from(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int::Value(i128::from(v)))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
                Ok(Int::Value(v))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
                Ok(Int::Value(i128::try_from(v).unwrap_or(i128::MAX)))
            }

            fn visit_str<E: de::Error>(self, _v: &str) -> Result<Int, E> {
                Ok(Int::NotInteger("string"))
            }

            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Int, E> {
                Ok(Int::NotInteger("floating point number"))
            }

            fn visit_bool<E: de::Error>(self, _v: bool) -> Result<Int, E> {
                Ok(Int::NotInteger("boolean"))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Int, E> {
                Ok(Int::NotInteger("null"))
            }

            fn visit_none<E: de::Error>(self) -> Result<Int, E> {
                Ok(Int::NotInteger("null"))
            }

            fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Int, E> {
                Ok(Int::NotInteger("binary"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Int, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Int::NotInteger("list"))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Int, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Int::NotInteger("mapping"))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}
