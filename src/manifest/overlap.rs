//! Overlapping allowed IPs between peers.
//!
//! WireGuard routes a packet to the peer whose allowed IP is the longest
//! prefix containing the destination. Exact duplicates are refused during
//! validation (WireGuard would silently move the prefix to the last peer);
//! a prefix of one peer that *contains* another peer's is legal but easy
//! to get wrong, so it is a warning naming both entries; and an overlap
//! that leaves a peer with no address at all (every one of its prefixes
//! entirely covered by more specific ones) is an error: nothing could ever
//! be sent to that peer.
//!
//! Linear apart from nesting: entries are sorted by (family, start, prefix
//! length), so the entries inside a prefix directly follow it, and each
//! entry is visited once per prefix containing it (at most 33 for IPv4,
//! 129 for IPv6).

use ipnet::IpNet;
use serde_saphyr::Location;

use super::error::line_col;

/// How many contained entries a message names before "and N more".
const NAMED: usize = 3;

/// One validated allowed IP of one peer.
pub(super) struct Claim {
    pub net: IpNet,
    /// Index of the peer in `peers`.
    pub peer: usize,
    /// Index in the peer's `allowed_ips`.
    pub index: usize,
    pub location: Location,
}

/// What validation should report.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finding {
    /// A warning at `peers[peer].allowed_ips[index]`.
    Warning {
        peer: usize,
        index: usize,
        location: Location,
        message: String,
    },
    /// An error at `peers[peer].allowed_ips[index]`.
    Error {
        peer: usize,
        index: usize,
        location: Location,
        message: String,
    },
}

struct Item {
    v6: bool,
    start: u128,
    end: u128,
    len: u8,
    claim: usize,
}

fn item(claim: usize, net: &IpNet) -> Item {
    match net {
        IpNet::V4(n) => Item {
            v6: false,
            start: u128::from(u32::from(n.network())),
            end: u128::from(u32::from(n.broadcast())),
            len: n.prefix_len(),
            claim,
        },
        IpNet::V6(n) => Item {
            v6: true,
            start: u128::from(n.network()),
            end: u128::from(n.broadcast()),
            len: n.prefix_len(),
            claim,
        },
    }
}

/// The overlap findings for `claims` (no two equal nets), in claim order.
/// `peer_name(p)` names peer `p` in messages.
pub(super) fn check(claims: &[Claim], peer_name: impl Fn(usize) -> String) -> Vec<Finding> {
    let mut items: Vec<Item> = claims
        .iter()
        .enumerate()
        .map(|(k, c)| item(k, &c.net))
        .collect();
    items.sort_by_key(|i| (i.v6, i.start, i.len));

    // Per claim: the other peers' entries strictly inside it (in address
    // order), and whether more specific entries of anyone cover it whole.
    let mut inside: Vec<Vec<usize>> = vec![Vec::new(); claims.len()];
    let mut covered = vec![false; claims.len()];
    for (k, p) in items.iter().enumerate() {
        let owner = claims[p.claim].peer;
        // The first address of `p` not yet covered by an entry inside it;
        // `None` once covered up to the top of the address space.
        let mut next = Some(p.start);
        let mut gap = false;
        for q in items[k + 1..]
            .iter()
            .take_while(|q| q.v6 == p.v6 && q.start <= p.end)
        {
            // Sorted by start then length, and prefixes nest or are
            // disjoint: every entry starting inside `p` lies inside it.
            if claims[q.claim].peer != owner {
                inside[p.claim].push(q.claim);
            }
            if let Some(n) = next {
                if q.start > n {
                    gap = true;
                } else {
                    next = q.end.checked_add(1).map(|e| e.max(n));
                }
            }
        }
        covered[p.claim] = !gap && next.is_none_or(|n| n > p.end);
    }

    // A peer with allowed IPs all of which are covered is unreachable.
    let peers = claims.iter().map(|c| c.peer).max().map_or(0, |m| m + 1);
    let mut reachable = vec![false; peers];
    for (k, c) in claims.iter().enumerate() {
        if !covered[k] {
            reachable[c.peer] = true;
        }
    }

    let describe = |list: &[usize]| -> String {
        let mut parts: Vec<String> = list
            .iter()
            .take(NAMED)
            .map(|&q| {
                let c = &claims[q];
                let (line, _) = line_col(c.location);
                format!(
                    "{} of peer `{}` (peers[{}].allowed_ips[{}], line {line})",
                    c.net,
                    peer_name(c.peer),
                    c.peer,
                    c.index
                )
            })
            .collect();
        if list.len() > NAMED {
            parts.push(format!("and {} more", list.len() - NAMED));
        }
        parts.join(", ")
    };

    let mut out = Vec::new();
    let mut reported = vec![false; peers];
    for (k, c) in claims.iter().enumerate() {
        if !reachable[c.peer] {
            if !reported[c.peer] {
                reported[c.peer] = true;
                let list: Vec<usize> = claims
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.peer == c.peer)
                    .flat_map(|(j, _)| inside[j].iter().copied())
                    .collect();
                out.push(Finding::Error {
                    peer: c.peer,
                    index: c.index,
                    location: c.location,
                    message: format!(
                        "peer `{}` is unreachable: each of its allowed IPs is entirely covered by \
                         more specific ones ({}), and the longest prefix wins",
                        peer_name(c.peer),
                        describe(&list)
                    ),
                });
            }
        } else if covered[k] {
            out.push(Finding::Warning {
                peer: c.peer,
                index: c.index,
                location: c.location,
                message: format!(
                    "{} never receives traffic: it is entirely covered by more specific entries \
                     ({}), and the longest prefix wins",
                    c.net,
                    describe(&inside[k])
                ),
            });
        } else if !inside[k].is_empty() {
            out.push(Finding::Warning {
                peer: c.peer,
                index: c.index,
                location: c.location,
                message: format!(
                    "{} contains {}: traffic to those goes to that peer, not to `{}` (the longest \
                     prefix wins)",
                    c.net,
                    describe(&inside[k]),
                    peer_name(c.peer)
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(list: &[(usize, &str)]) -> Vec<Claim> {
        let mut per_peer = std::collections::HashMap::new();
        list.iter()
            .map(|&(peer, net)| {
                let index = per_peer.entry(peer).or_insert(0usize);
                let c = Claim {
                    net: net.parse().unwrap(),
                    peer,
                    index: *index,
                    location: Location::UNKNOWN,
                };
                *index += 1;
                c
            })
            .collect()
    }

    fn kinds(list: &[(usize, &str)]) -> Vec<(char, usize, usize)> {
        check(&claims(list), |p| format!("p{p}"))
            .into_iter()
            .map(|f| match f {
                Finding::Warning { peer, index, .. } => ('W', peer, index),
                Finding::Error { peer, index, .. } => ('E', peer, index),
            })
            .collect()
    }

    type Case<'a> = (&'a str, &'a [(usize, &'a str)], &'a [(char, usize, usize)]);

    #[test]
    fn overlaps_table() {
        let cases: &[Case<'_>] = &[
            ("disjoint", &[(0, "10.0.0.0/24"), (1, "10.0.1.0/24")], &[]),
            (
                "v4 and v6 never overlap",
                &[(0, "0.0.0.0/0"), (1, "::/0"), (2, "fd00::/64")],
                &[('W', 1, 0)],
            ),
            (
                "contains another peer's prefix",
                &[(0, "10.0.0.0/8"), (1, "10.1.0.0/16")],
                &[('W', 0, 0)],
            ),
            (
                "a peer's own more specific prefix is no warning",
                &[(0, "10.0.0.0/8"), (0, "10.1.0.0/16")],
                &[],
            ),
            (
                "default route and a branch",
                &[(0, "0.0.0.0/0"), (1, "192.168.1.0/24")],
                &[('W', 0, 0)],
            ),
            (
                "covered whole: peer unreachable",
                &[(0, "10.0.0.0/24"), (1, "10.0.0.0/25"), (1, "10.0.0.128/25")],
                &[('E', 0, 0)],
            ),
            (
                "covered whole by two peers",
                &[(0, "10.0.0.0/24"), (1, "10.0.0.0/25"), (2, "10.0.0.128/25")],
                &[('E', 0, 0)],
            ),
            (
                "covered whole but reachable through another entry",
                &[
                    (0, "10.0.0.0/24"),
                    (0, "172.16.0.0/12"),
                    (1, "10.0.0.0/25"),
                    (1, "10.0.0.128/25"),
                ],
                &[('W', 0, 0)],
            ),
            (
                "half covered: still reachable",
                &[(0, "10.0.0.0/24"), (1, "10.0.0.0/25")],
                &[('W', 0, 0)],
            ),
            (
                "nested coverage counts",
                &[
                    (0, "10.0.0.0/24"),
                    (1, "10.0.0.0/25"),
                    (2, "10.0.0.0/26"),
                    (1, "10.0.0.128/25"),
                ],
                &[('E', 0, 0), ('W', 1, 0)],
            ),
            (
                "the whole v6 space covered",
                &[(0, "::/0"), (1, "::/1"), (1, "8000::/1")],
                &[('E', 0, 0)],
            ),
            (
                "the whole v4 space covered by the split default route",
                &[(0, "0.0.0.0/0"), (1, "0.0.0.0/1"), (1, "128.0.0.0/1")],
                &[('E', 0, 0)],
            ),
            (
                "a gap at the top",
                &[(0, "::/0"), (1, "::/1"), (1, "8000::/2")],
                &[('W', 0, 0)],
            ),
            (
                "unreachable peer reported once, at its first entry",
                &[
                    (0, "10.0.0.0/25"),
                    (0, "10.0.0.128/25"),
                    (1, "10.0.0.0/26"),
                    (1, "10.0.0.64/26"),
                    (1, "10.0.0.128/26"),
                    (1, "10.0.0.192/26"),
                ],
                &[('E', 0, 0)],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(&kinds(input), want, "{name}");
        }
    }

    #[test]
    fn messages_name_both_peers_and_cut_long_lists() {
        let mut list = vec![(0, "10.0.0.0/16".to_owned())];
        for i in 0..5 {
            list.push((1, format!("10.0.{i}.0/24")));
        }
        let list: Vec<(usize, &str)> = list.iter().map(|(p, n)| (*p, n.as_str())).collect();
        let found = check(&claims(&list), |p| ["hub", "branch"][p].to_owned());
        let [Finding::Warning { message, .. }] = found.as_slice() else {
            panic!("{found:?}");
        };
        assert!(
            message.starts_with(
                "10.0.0.0/16 contains 10.0.0.0/24 of peer `branch` (peers[1].allowed_ips[0], line 1), "
            ),
            "{message}"
        );
        assert!(message.contains("and 2 more"), "{message}");
        assert!(message.contains("not to `hub`"), "{message}");
    }

    #[test]
    fn a_prefix_with_many_entries_inside() {
        // 65,536 /32s of another peer cover a /16 whole: one error (the
        // pass is linear, so this is quick in a debug build too).
        let mut list = vec![(0usize, "10.0.0.0/16".to_owned())];
        for i in 0..=u16::MAX {
            list.push((1, format!("10.0.{}.{}/32", i >> 8, i & 0xff)));
        }
        let list: Vec<(usize, &str)> = list.iter().map(|(p, n)| (*p, n.as_str())).collect();
        let found = kinds(&list);
        assert_eq!(found, vec![('E', 0, 0)]);
    }
}
