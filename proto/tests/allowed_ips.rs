//! Cryptokey routing table against a naive longest-prefix oracle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netman_proto::{AllowedIps, IpPrefix, PrefixError};
use proptest::prelude::*;

fn p(s: &str) -> IpPrefix {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn longest_prefix_wins() {
    let mut t = AllowedIps::new();
    t.insert(p("0.0.0.0/0"), 0);
    t.insert(p("10.0.0.0/8"), 1);
    t.insert(p("10.1.0.0/16"), 2);
    t.insert(p("10.1.2.3/32"), 3);
    t.insert(p("::/0"), 10);
    t.insert(p("fd00::/8"), 11);
    t.insert(p("fd00:1::/32"), 12);
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(3));
    assert_eq!(t.lookup(ip("10.1.2.4")), Some(2));
    assert_eq!(t.lookup(ip("10.2.0.1")), Some(1));
    assert_eq!(t.lookup(ip("192.168.1.1")), Some(0));
    assert_eq!(t.lookup(ip("fd00:1::5")), Some(12));
    assert_eq!(t.lookup(ip("fd00:2::5")), Some(11));
    assert_eq!(t.lookup(ip("2001:db8::1")), Some(10));
    assert_eq!(t.len(), 7);
    assert_eq!(t.remove(p("10.1.0.0/16")), Some(2));
    assert_eq!(t.lookup(ip("10.1.2.4")), Some(1));
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(3));
    assert_eq!(t.remove(p("10.1.0.0/16")), None);
}

#[test]
fn families_are_separate() {
    let mut t = AllowedIps::new();
    t.insert(p("0.0.0.0/0"), 4);
    assert_eq!(t.lookup(ip("::1")), None);
    assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None, "v4-mapped v6 is v6");
    t.insert(p("::/0"), 6);
    assert_eq!(t.lookup(ip("::1")), Some(6));
    assert_eq!(t.lookup(ip("1.2.3.4")), Some(4));
}

#[test]
fn insert_replaces_owner_and_masks_host_bits() {
    let mut t = AllowedIps::new();
    assert_eq!(t.insert(p("10.0.0.7/24"), 1), None);
    assert_eq!(t.insert(p("10.0.0.0/24"), 2), Some(1));
    assert_eq!(t.len(), 1);
    assert_eq!(t.entries(), vec![(p("10.0.0.0/24"), 2)]);
    assert_eq!(p("10.0.0.7/24").to_string(), "10.0.0.0/24");
    assert_eq!(p("fd00::1:2/112").to_string(), "fd00::1:0/112");
    assert_eq!(p("fd00::1:2/96").to_string(), "fd00::/96");
    assert_eq!(p("10.0.0.7").len(), 32);
    assert_eq!(p("fd00::1").len(), 128);
}

#[test]
fn prefix_errors() {
    assert_eq!(
        IpPrefix::new(ip("10.0.0.0"), 33),
        Err(PrefixError::TooLong { len: 33, max: 32 })
    );
    assert!(IpPrefix::new(ip("::"), 129).is_err());
    assert!("10.0.0.0/x".parse::<IpPrefix>().is_err());
    assert!("nonsense".parse::<IpPrefix>().is_err());
    assert!("10.0.0.0/".parse::<IpPrefix>().is_err());
}

#[test]
fn retain_and_compaction_keep_lookups_right() {
    let mut t = AllowedIps::new();
    for i in 0..=255u8 {
        t.insert(
            IpPrefix::new(IpAddr::V4(Ipv4Addr::new(10, i, 0, 0)), 16).unwrap(),
            u32::from(i % 4),
        );
    }
    assert_eq!(t.retain(|v| *v != 1), 64);
    assert_eq!(t.len(), 192);
    for i in 0..=255u8 {
        let want = (i % 4 != 1).then_some(u32::from(i % 4));
        assert_eq!(t.lookup(IpAddr::V4(Ipv4Addr::new(10, i, 1, 1))), want);
    }
    // Removing most entries triggers a rebuild; lookups stay correct.
    assert_eq!(t.retain(|v| *v == 3), 128);
    assert_eq!(t.len(), 64);
    for i in 0..=255u8 {
        let want = (i % 4 == 3).then_some(3);
        assert_eq!(t.lookup(IpAddr::V4(Ipv4Addr::new(10, i, 1, 1))), want);
    }
    t.clear();
    assert!(t.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Insert(IpPrefix, u8),
    Remove(IpPrefix),
    Retain(u8),
}

/// Addresses from a small space so that prefixes nest and collide often.
fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Ipv4Addr::new(
            10,
            a % 4,
            b,
            b.wrapping_mul(7)
        )),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(a, b)| Ipv6Addr::new(
            0xfd00,
            u16::from(a % 4),
            b,
            0,
            0,
            0,
            0,
            b
        )),
        any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn prefix() -> impl Strategy<Value = IpPrefix> {
    prop_oneof![
        (v4(), 0u8..=32).prop_map(|(a, l)| IpPrefix::new(IpAddr::V4(a), l).unwrap()),
        (v6(), 0u8..=128).prop_map(|(a, l)| IpPrefix::new(IpAddr::V6(a), l).unwrap()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prefix(), 0u8..6).prop_map(|(p, v)| Op::Insert(p, v)),
        2 => prefix().prop_map(Op::Remove),
        1 => (0u8..6).prop_map(Op::Retain),
    ]
}

fn oracle_lookup(entries: &[(IpPrefix, u8)], a: IpAddr) -> Option<u8> {
    entries
        .iter()
        .filter(|(p, _)| p.contains(a))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| *v)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn matches_naive_oracle(ops in proptest::collection::vec(op(), 1..120),
                            probes4 in proptest::collection::vec(v4(), 50),
                            probes6 in proptest::collection::vec(v6(), 50)) {
        let mut t = AllowedIps::new();
        let mut oracle: Vec<(IpPrefix, u8)> = Vec::new();
        let mut probes: Vec<IpAddr> = probes4.into_iter().map(IpAddr::V4)
            .chain(probes6.into_iter().map(IpAddr::V6)).collect();
        for op in ops {
            match op {
                Op::Insert(p, v) => {
                    let old = oracle.iter().find(|(q, _)| *q == p).map(|(_, v)| *v);
                    prop_assert_eq!(t.insert(p, v), old);
                    oracle.retain(|(q, _)| *q != p);
                    oracle.push((p, v));
                    probes.push(p.addr());
                }
                Op::Remove(p) => {
                    let old = oracle.iter().find(|(q, _)| *q == p).map(|(_, v)| *v);
                    prop_assert_eq!(t.remove(p), old);
                    oracle.retain(|(q, _)| *q != p);
                }
                Op::Retain(v) => {
                    let before = oracle.len();
                    oracle.retain(|(_, x)| *x != v);
                    prop_assert_eq!(t.retain(|x| *x != v), before - oracle.len());
                }
            }
            prop_assert_eq!(t.len(), oracle.len());
        }
        for a in probes {
            prop_assert_eq!(t.lookup(a), oracle_lookup(&oracle, a), "lookup {}", a);
        }
        for (p, v) in &oracle {
            prop_assert_eq!(t.get(*p), Some(*v));
        }
        let mut got = t.entries();
        got.sort();
        oracle.sort();
        prop_assert_eq!(got, oracle);
    }
}
