//! Raw deserialisation layer of the network file: plain serde structs with
//! source spans, no semantics (that is `check.rs`), following the
//! conventions of `manifest/raw.rs` (every node `Spanned`, unknown keys
//! refused, integers as [`Int`], no flatten, no untagged enums, a
//! `schemars` description per field so `netman schema --kind network`
//! derives the JSON Schema from these types).
//!
//! The per-site settings that a v1 manifest can say appear twice, in
//! `defaults:` and in each site (no `#[serde(flatten)]`: it loses spans);
//! [`RawSettings`] gives both the same accessors.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::manifest::raw::{
    Int, IntOrWord, MssClampSchema, RawFirewall, RawMetrics, RawProbe, RawRollout, RawRoute,
    RawTableSchema,
};

/// A netman network file: every site of a network and how they connect.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "netman network")]
pub struct RawNetwork {
    /// Names the network: 1 to 32 characters of a-z, 0-9 and '-'.
    #[schemars(with = "String", length(min = 1, max = 32), pattern(r"^[a-z0-9-]+$"))]
    pub network: Spanned<String>,
    /// Settings of every site unless the site says otherwise.
    #[serde(default)]
    #[schemars(with = "Option<RawDefaults>")]
    pub defaults: Option<Spanned<RawDefaults>>,
    /// The sites (gateways) of the network.
    #[schemars(with = "Vec<RawSite>", length(min = 1))]
    pub sites: Spanned<Vec<Spanned<RawSite>>>,
    /// Which sites have a tunnel between them: exactly one of `mesh`,
    /// `hub_and_spoke` or `links`.
    #[schemars(with = "RawTopology")]
    pub topology: Spanned<RawTopology>,
}

/// Declares one `Option<Spanned<_>>` settings field per line, with its
/// schema, in both `defaults:` and `sites[]` (kept in one place).
macro_rules! settings_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $vis:vis $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* $vis $field: $ty,)*
            /// Name of the TUN interface (default nm0).
            #[serde(default)]
            #[schemars(with = "Option<String>", length(min = 1, max = 15), pattern(r"^[^/:\s]+$"))]
            pub interface: Option<Spanned<String>>,
            /// 576..=65535 (at least 1280 where IPv6 is used); default 1420.
            #[serde(default)]
            #[schemars(with = "Option<u32>", range(min = 576, max = 65535))]
            pub mtu: Option<Spanned<Int>>,
            /// The TUN device's transmit queue, in packets, 1..=10000 (default 500).
            #[serde(default)]
            #[schemars(with = "Option<u32>", range(min = 1, max = 10000))]
            pub txqueuelen: Option<Spanned<Int>>,
            /// UDP port; random when absent (then the site cannot have an endpoint).
            #[serde(default)]
            #[schemars(with = "Option<u16>", range(min = 1, max = 65535))]
            pub listen_port: Option<Spanned<Int>>,
            /// Seconds, 1..=65535: keepalives to every peer that has an endpoint.
            #[serde(default)]
            #[schemars(with = "Option<u16>", range(min = 1, max = 65535))]
            pub persistent_keepalive: Option<Spanned<Int>>,
            /// The private key file on the gateway (mode 0600); relative paths
            /// resolve against the network file's directory.
            #[serde(default)]
            #[schemars(with = "Option<String>", length(min = 1))]
            pub private_key_file: Option<Spanned<String>>,
            /// IP forwarding while the deployment is up.
            #[serde(default)]
            #[schemars(with = "Option<bool>")]
            pub forwarding: Option<Spanned<bool>>,
            /// TCP MSS clamping: off, auto or a fixed MSS (536..=65495).
            #[serde(default)]
            #[schemars(with = "Option<MssClampSchema>")]
            pub mss_clamp: Option<Spanned<IntOrWord>>,
            /// Routing table: main, off or a number.
            #[serde(default)]
            #[schemars(with = "Option<RawTableSchema>")]
            pub table: Option<Spanned<IntOrWord>>,
            /// Firewall mark (1..=4294967295) on the engine's UDP sockets.
            #[serde(default)]
            #[schemars(with = "Option<u32>", range(min = 1))]
            pub fwmark: Option<Spanned<Int>>,
            /// Follow the file and repair drift while running (default true).
            #[serde(default)]
            #[schemars(with = "Option<bool>")]
            pub watch: Option<Spanned<bool>>,
            /// Serve Prometheus metrics.
            #[serde(default)]
            #[schemars(with = "Option<RawMetrics>")]
            pub metrics: Option<Spanned<RawMetrics>>,
            /// nftables chains and inserted rules, as in a v1 manifest.
            #[serde(default)]
            #[schemars(with = "Option<RawFirewall>")]
            pub firewall: Option<Spanned<RawFirewall>>,
            /// Extra routes through the interface, as in a v1 manifest.
            #[serde(default)]
            #[schemars(with = "Option<Vec<RawRoute>>")]
            pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
            /// Addresses across the tunnel that must answer a ping for a
            /// change to be kept by health, as `probes:` in a v1 manifest.
            #[serde(default)]
            #[schemars(with = "Option<Vec<RawProbe>>")]
            pub probes: Option<Spanned<Vec<Spanned<RawProbe>>>>,
            /// How the watcher applies a changed file, as in a v1 manifest
            /// (`{confirm: healthy, timeout: SECS}`).
            #[serde(default)]
            #[schemars(with = "Option<RawRollout>")]
            pub rollout: Option<Spanned<RawRollout>>,
        }
    };
}

settings_struct!(
    /// `defaults:` the settings of every site that does not set its own.
    RawDefaults {}
);

settings_struct!(
    /// One entry of `sites:`: a gateway of the network.
    RawSite {
        /// Unique; the deployment name of the site (1 to 32 of a-z, 0-9, '-').
        #[schemars(with = "String", length(min = 1, max = 32), pattern(r"^[a-z0-9-]+$"))]
        pub name: Spanned<String>,
        /// The site's public key: 44 characters of base64 (wg pubkey).
        #[schemars(with = "String", pattern(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))]
        pub public_key: Spanned<String>,
        /// Overlay addresses of the site's interface, with prefix length
        /// (e.g. 10.10.0.1/24); other sites route the host address to it.
        #[schemars(with = "Vec<String>", length(min = 1))]
        pub addresses: Spanned<Vec<Spanned<String>>>,
        /// Networks behind the site (its LANs), no host bits set.
        #[serde(default)]
        #[schemars(with = "Option<Vec<String>>")]
        pub subnets: Option<Spanned<Vec<Spanned<String>>>>,
        /// Where other sites reach it: v4:port, [v6]:port or hostname:port.
        #[serde(default)]
        #[schemars(with = "Option<String>")]
        pub endpoint: Option<Spanned<String>>,
    }
);

/// `topology:` exactly one of its keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTopology {
    /// `mesh: true`: a tunnel between every two sites.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub mesh: Option<Spanned<bool>>,
    /// Every spoke (each site that is not a hub) has a tunnel to every hub,
    /// the hubs one to each other; spokes reach each other through the
    /// first hub.
    #[serde(default)]
    #[schemars(with = "Option<RawHubAndSpoke>")]
    pub hub_and_spoke: Option<Spanned<RawHubAndSpoke>>,
    /// Explicit tunnels, each a pair of site names: `[a, b]`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Vec<String>>>")]
    pub links: Option<Spanned<Vec<Spanned<RawLink>>>>,
}

/// One entry of `topology.links`: two site names.
pub type RawLink = Vec<Spanned<String>>;

/// `topology.hub_and_spoke:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHubAndSpoke {
    /// Names of the hub sites (at least one; each needs an endpoint).
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub hubs: Spanned<Vec<Spanned<String>>>,
}

/// Only to read whether a YAML document is a network file (its top-level
/// `network:` key); every other key is ignored.
#[derive(Deserialize)]
pub(crate) struct Probe {
    #[serde(default)]
    pub network: Option<serde::de::IgnoredAny>,
}
