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
//! - no `#[serde(flatten)]` and no untagged enums (they lose span information).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Top level of a manifest document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub name: Spanned<String>,
    pub interface: Spanned<RawInterface>,
    #[serde(default)]
    pub peers: Option<Spanned<Vec<Spanned<RawPeer>>>>,
    #[serde(default)]
    pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
    #[serde(default)]
    pub forwarding: Option<Spanned<bool>>,
    #[serde(default)]
    pub firewall: Option<Spanned<RawFirewall>>,
    #[serde(default)]
    pub watch: Option<Spanned<bool>>,
    #[serde(default)]
    pub metrics: Option<Spanned<RawMetrics>>,
}

/// `metrics:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Spanned<String>,
}

/// `interface:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub name: Spanned<String>,
    pub addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub mtu: Option<Spanned<Int>>,
    #[serde(default)]
    pub listen_port: Option<Spanned<Int>>,
    pub private_key_file: Spanned<String>,
}

/// One entry of `peers:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub name: Spanned<String>,
    pub public_key: Spanned<String>,
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    pub allowed_ips: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub persistent_keepalive: Option<Spanned<Int>>,
    #[serde(default)]
    pub preshared_key_file: Option<Spanned<String>>,
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub to: Spanned<String>,
    #[serde(default)]
    pub metric: Option<Spanned<Int>>,
}

/// `firewall:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    #[serde(default)]
    pub chains: Option<Spanned<Vec<Spanned<RawChain>>>>,
    #[serde(default)]
    pub insert: Option<Spanned<Vec<Spanned<RawInsert>>>>,
}

/// One entry of `firewall.chains:`: a base chain in netman's own table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    pub name: Spanned<String>,
    pub hook: Spanned<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub priority: Option<Spanned<Int>>,
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    #[serde(default)]
    pub rules: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One entry of `firewall.insert:`: a rule placed into a chain netman does not own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInsert {
    pub family: Spanned<String>,
    pub table: Spanned<String>,
    pub chain: Spanned<String>,
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
