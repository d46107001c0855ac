//! Minimal, panic-free inspection of the inner IP packets carried in the tunnel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

fn arr<const N: usize>(p: &[u8], off: usize) -> Option<[u8; N]> {
    p.get(off..off + N).and_then(|s| s.try_into().ok())
}

/// Destination address of an IPv4/IPv6 packet, if the header is long enough.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= IPV4_MIN_HEADER => {
            Some(IpAddr::V4(Ipv4Addr::from(arr::<4>(packet, 16)?)))
        }
        6 if packet.len() >= IPV6_HEADER => {
            Some(IpAddr::V6(Ipv6Addr::from(arr::<16>(packet, 24)?)))
        }
        _ => None,
    }
}

/// Source address and total length (from the header) of a decrypted packet.
/// Returns `None` if the header is malformed or claims more bytes than
/// present; trailing bytes (WireGuard padding) are allowed.
pub fn source_and_len(packet: &[u8]) -> Option<(IpAddr, usize)> {
    match packet.first()? >> 4 {
        4 => {
            if packet.len() < IPV4_MIN_HEADER {
                return None;
            }
            let total = usize::from(u16::from_be_bytes(arr::<2>(packet, 2)?));
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if total < IPV4_MIN_HEADER
                || ihl < IPV4_MIN_HEADER
                || ihl > total
                || total > packet.len()
            {
                return None;
            }
            Some((IpAddr::V4(Ipv4Addr::from(arr::<4>(packet, 12)?)), total))
        }
        6 => {
            if packet.len() < IPV6_HEADER {
                return None;
            }
            let total = IPV6_HEADER + usize::from(u16::from_be_bytes(arr::<2>(packet, 4)?));
            if total > packet.len() {
                return None;
            }
            Some((IpAddr::V6(Ipv6Addr::from(arr::<16>(packet, 8)?)), total))
        }
        _ => None,
    }
}
