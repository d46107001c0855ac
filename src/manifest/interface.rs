//! Validation of the `interface:` section: the ifname, addresses, MTU,
//! listen port, key file, and the settings that shape what netman puts
//! around the device (`mss_clamp`, `table`, `fwmark`), and the declared
//! `public_key`. Called from
//! `validate.rs`, whose rules list covers these fields too.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use serde_saphyr::Spanned;

use super::raw::{Int, IntOrWord, RawInterface};
use super::validate::{Ctx, interface_address};
use super::{DEFAULT_MTU, DEFAULT_TXQUEUELEN, Interface, MssClamp, RouteTable};

const MAX_IFNAME_BYTES: usize = 15;
const MIN_MTU: i128 = 576;
const MIN_MTU_V6: i128 = 1280;
const MAX_MTU: i128 = 65535;
const MAX_TXQUEUELEN: i128 = 10_000;

pub(super) fn interface(
    ctx: &mut Ctx<'_>,
    raw: &Spanned<RawInterface>,
    forwarding: bool,
) -> Option<Interface> {
    let raw = &raw.value;
    let name = ctx.check(&raw.name, || "interface.name".to_owned(), |s| ifname(s));

    let mut addresses = Vec::with_capacity(raw.addresses.value.len());
    let mut all_ok = true;
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    let mut first_v6: Option<usize> = None;
    if raw.addresses.value.is_empty() {
        ctx.error(
            raw.addresses.referenced,
            "interface.addresses",
            "at least one address is required",
        );
        all_ok = false;
    }
    for (i, item) in raw.addresses.value.iter().enumerate() {
        let path = || format!("interface.addresses[{i}]");
        let Some(net) = ctx.check(item, path, |s| interface_address(s)) else {
            all_ok = false;
            continue;
        };
        if net.addr().is_ipv6() && first_v6.is_none() {
            first_v6 = Some(i);
        }
        match seen.entry(net.addr()) {
            Entry::Occupied(first) => {
                ctx.error(
                    item.referenced,
                    path(),
                    format!(
                        "duplicate address {} (already at interface.addresses[{}])",
                        net.addr(),
                        first.get()
                    ),
                );
                all_ok = false;
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
                addresses.push(net);
            }
        }
    }

    let mtu = match &raw.mtu {
        None => Some(DEFAULT_MTU),
        Some(mtu) => ctx.check(
            mtu,
            || "interface.mtu".to_owned(),
            |&n: &Int| {
                let v = n.get()?;
                if !(MIN_MTU..=MAX_MTU).contains(&v) {
                    Err(format!("MTU {v} is out of range ({MIN_MTU}..={MAX_MTU})"))
                } else if let (true, Some(i)) = (v < MIN_MTU_V6, first_v6) {
                    Err(format!(
                        "MTU {v} is below {MIN_MTU_V6}, the IPv6 minimum, and interface.addresses[{i}] is IPv6"
                    ))
                } else {
                    u32::try_from(v).map_err(|_| format!("MTU {v} is out of range"))
                }
            },
        ),
    };

    let txqueuelen = match &raw.txqueuelen {
        None => Some(DEFAULT_TXQUEUELEN),
        Some(q) => ctx.check(
            q,
            || "interface.txqueuelen".to_owned(),
            |&n: &Int| {
                let v = n.get()?;
                if (1..=MAX_TXQUEUELEN).contains(&v) {
                    u32::try_from(v).map_err(|_| format!("{v} is out of range"))
                } else {
                    Err(format!(
                        "txqueuelen {v} is out of range (1..={MAX_TXQUEUELEN} packets)"
                    ))
                }
            },
        ),
    };

    let listen_port = match &raw.listen_port {
        None => Some(None),
        Some(port) => ctx
            .check(port, || "interface.listen_port".to_owned(), |&n: &Int| {
                let v = n.get()?;
                match v {
                    0 => Err("port 0 is not allowed (1..=65535); omit listen_port to let the kernel pick one".to_owned()),
                    _ => u16::try_from(v).map_err(|_| format!("port {v} is out of range (1..=65535)")),
                }
            })
            .map(Some),
    };

    let private_key_file = ctx.key_path(&raw.private_key_file, || {
        "interface.private_key_file".to_owned()
    });

    let mss_clamp = match &raw.mss_clamp {
        None if forwarding => Some(MssClamp::Auto),
        None => Some(MssClamp::Off),
        Some(v) => ctx.check(v, || "interface.mss_clamp".to_owned(), mss_clamp),
    };

    // The clamp's rules name the interface between double quotes.
    if let (Some(c), Some(n)) = (mss_clamp, &name)
        && c != MssClamp::Off
        && !nft_safe_ifname(n)
    {
        let why = "the rules of interface.mss_clamp name the interface in nftables, which \
                   takes only A-Z, a-z, 0-9, '_', '.' and '-' there";
        match &raw.mss_clamp {
            Some(v) => ctx.error(v.referenced, "interface.mss_clamp", format!("{why}; rename the interface")),
            None => ctx.error(
                raw.name.referenced,
                "interface.name",
                format!("{why} (on by default with forwarding); rename the interface or set interface.mss_clamp: off"),
            ),
        }
        return None;
    }

    let table = match &raw.table {
        None => Some(None),
        Some(t) => ctx
            .check(t, || "interface.table".to_owned(), table_value)
            .map(Some),
    };
    let fwmark = match &raw.fwmark {
        None => Some(None),
        Some(m) => ctx
            .check(
                m,
                || "interface.fwmark".to_owned(),
                |&n: &Int| {
                    let v = n.get()?;
                    match u32::try_from(v) {
                        Ok(0) => Err(
                            "fwmark 0 means no mark (1..=4294967295); omit fwmark instead"
                                .to_owned(),
                        ),
                        Ok(v) => Ok(v),
                        Err(_) => Err(format!("fwmark {v} is out of range (1..=4294967295)")),
                    }
                },
            )
            .map(Some),
    };

    let public_key = match &raw.public_key {
        None => Some(None),
        Some(k) => ctx
            .check(
                k,
                || "interface.public_key".to_owned(),
                |s| super::validate::public_key(s),
            )
            .map(Some),
    };

    let addresses = all_ok.then_some(addresses);
    Some(Interface {
        name: name?,
        addresses: addresses?,
        mtu: mtu?,
        txqueuelen: txqueuelen?,
        listen_port: listen_port?,
        private_key_file: private_key_file?,
        mss_clamp: mss_clamp?,
        table: table?,
        fwmark: fwmark?,
        public_key: public_key?,
    })
}

/// Whether an interface name can go into an nft rule between quotes.
fn nft_safe_ifname(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `interface.mss_clamp`: `off`, `auto` or an MSS.
fn mss_clamp(v: &IntOrWord) -> Result<MssClamp, String> {
    let range = || format!("{}..={}", MssClamp::MIN, MssClamp::MAX);
    match v {
        IntOrWord::Word(w) if w == "off" => Ok(MssClamp::Off),
        IntOrWord::Word(w) if w == "auto" => Ok(MssClamp::Auto),
        IntOrWord::Int(Int::Value(n)) => u16::try_from(*n)
            .ok()
            .filter(|n| (MssClamp::MIN..=MssClamp::MAX).contains(n))
            .map(MssClamp::Fixed)
            .ok_or_else(|| format!("MSS {n} is out of range ({})", range())),
        IntOrWord::Word(w) => Err(format!(
            "expected off, auto or an MSS ({}), found {w:?}",
            range()
        )),
        IntOrWord::Int(Int::NotInteger(kind)) => Err(format!(
            "expected off, auto or an MSS ({}), found {kind}",
            range()
        )),
    }
}

/// `interface.table`: `main`, `off` or a table number that is not one of
/// the kernel's reserved ones.
fn table_value(v: &IntOrWord) -> Result<RouteTable, String> {
    match v {
        IntOrWord::Word(w) if w == "main" => Ok(RouteTable::Main),
        IntOrWord::Word(w) if w == "off" => Ok(RouteTable::Off),
        IntOrWord::Word(w) => Err(format!("expected main, off or a table number, found {w:?}")),
        IntOrWord::Int(Int::NotInteger(kind)) => Err(format!(
            "expected main, off or a table number, found {kind}"
        )),
        IntOrWord::Int(Int::Value(v)) => {
            let v = *v;
            match u32::try_from(v) {
                Ok(0) => Err(
                    "table 0 is not a table (1..=4294967295); omit table for the automatic choice"
                        .to_owned(),
                ),
                Ok(253) => Err(
                    "table 253 is the kernel's `default` table; choose another number".to_owned(),
                ),
                Ok(254) => Err("table 254 is the main table; write `main`".to_owned()),
                Ok(255) => {
                    Err("table 255 is the kernel's `local` table; choose another number".to_owned())
                }
                Ok(t) => Ok(RouteTable::Id(t)),
                Err(_) => Err(format!("table {v} is out of range (1..=4294967295)")),
            }
        }
    }
}

fn ifname(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > MAX_IFNAME_BYTES {
        return Err(format!(
            "too long ({} bytes; Linux interface names are at most {MAX_IFNAME_BYTES})",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        return Err(format!(
            "invalid character {c:?} in interface name ('/', ':', NUL and whitespace are not allowed)"
        ));
    }
    Ok(s.to_owned())
}
