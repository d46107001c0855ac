//! Fuzzing entry points for the parsers of untrusted bytes outside the
//! protocol core (whose own are in `netman_proto::fuzzing`): the manifest
//! parser and validator, the wg-quick import (round trip), the control
//! socket's request decoder, and the TUN offload paths (TSO/USO split of
//! what the kernel hands over, GRO coalescing of what peers send). Each
//! function is the whole body of one cargo-fuzz target in `fuzz/` and is
//! replayed over the committed corpora by `tests/fuzz_corpus.rs` under
//! plain `cargo test`. They panic only when an invariant is broken (that
//! is the finding); malformed input must simply be refused. Each returns
//! whether the input was accepted (so the corpus test can tell that the
//! seeds reach the checks).
//!
//! Not part of the API: no other code calls this module.

use std::io;
use std::path::Path;

use netman_proto::consts::{TUN_HEADROOM, TUN_TAILROOM};
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

use crate::engine::control;
use crate::engine::tunrx::{MAX_PACKET, TunRx};
use crate::{import, manifest};

/// The targets, as named in `fuzz/Cargo.toml` and under `fuzz/corpus/`.
pub const TARGETS: [&str; 5] = ["manifest", "import", "control", "tun_offload", "flow_queue"];

/// Run target `name` on `data`: whether the input got past the first
/// refusal into the checks (`None`: no such target). Seeds are meant to.
pub fn run_target(name: &str, data: &[u8]) -> Option<bool> {
    Some(match name {
        "manifest" => manifest(data),
        "import" => import(data),
        "control" => control(data),
        "tun_offload" => tun_offload(data),
        "flow_queue" => flow_queue(data),
        _ => return None,
    })
}

/// Manifest text (any bytes, as a file would hold them) through parsing
/// and validation: never a panic; a refusal always says something, at a
/// position inside the text; an accepted manifest is deterministic and
/// keeps the text it came from.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let path = Path::new("/fuzz/site.yaml");
    match manifest::parse(text, path) {
        Ok(m) => {
            assert_eq!(m.source.text, text);
            let again = manifest::parse(text, path);
            assert!(again.as_ref().is_ok_and(|m2| *m2 == m), "not deterministic");
            // Rule positions (found through the line index) point into the
            // text.
            let lines = yaml_lines(text);
            let rules = m.firewall.chains.iter().flat_map(|c| &c.rules);
            let inserts = m.firewall.insert.iter().map(|i| &i.rule);
            for r in rules.chain(inserts) {
                assert!(
                    (1..=lines).contains(&r.pos.line),
                    "rule at line {} of a {lines}-line text",
                    r.pos.line
                );
            }
            true
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "refused without an error");
            let lines = yaml_lines(text);
            for e in &errs.0 {
                assert!(!e.message.is_empty(), "an error without a message");
                assert!(
                    e.line <= lines,
                    "error at line {} of a {lines}-line text",
                    e.line
                );
            }
            false
        }
    }
}

/// The lines of `text` as YAML counts them (`\n`, `\r\n` and a lone `\r`
/// end a line), plus one for an error at the very end.
fn yaml_lines(text: &str) -> usize {
    let breaks =
        text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count();
    breaks + 2
}

/// A wg-quick file through `import`: what parses renders to a manifest
/// whose YAML holds only the sections import writes, and which, when it
/// validates, says exactly what the wg-quick file said (interface, every
/// peer's key, endpoint, allowed IPs, keepalive, preshared key).
pub fn import(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(imp) = import::parse(text, "fuzz.conf", "wg0") else {
        return false;
    };
    let Ok(out) = import::render(&imp, "site", "fuzz.conf") else {
        return false;
    };
    // Whatever the notes and values held, the YAML has no other section.
    let doc: serde_json::Value = match serde_saphyr::from_str(&out.manifest) {
        Ok(v) => v,
        Err(e) => panic!("import wrote YAML that does not parse: {e}"),
    };
    let Some(top) = doc.as_object() else {
        panic!("import wrote a manifest that is not a mapping");
    };
    for k in top.keys() {
        assert!(
            matches!(
                k.as_str(),
                "name" | "interface" | "peers" | "forwarding" | "firewall"
            ),
            "import wrote a {k:?} section"
        );
    }
    let Ok(m) = manifest::parse(&out.manifest, Path::new("/fuzz/site.yaml")) else {
        return false;
    };
    assert!(m.metrics.is_none() && m.routes.is_empty() && m.watch);
    assert_eq!(m.interface.name, imp.interface);
    assert_eq!(m.interface.addresses, imp.addresses);
    assert_eq!(m.interface.listen_port, imp.listen_port);
    if let Some(mtu) = imp.mtu {
        assert_eq!(m.interface.mtu, mtu);
    }
    assert_eq!(m.peers.len(), imp.peers.len());
    for (mp, ip) in m.peers.iter().zip(&imp.peers) {
        assert_eq!(mp.name, ip.name);
        assert!(mp.public_key == ip.public_key, "peer key");
        assert_eq!(mp.endpoint.as_ref().map(ToString::to_string), ip.endpoint);
        assert_eq!(mp.allowed_ips, ip.allowed_ips);
        assert_eq!(mp.persistent_keepalive, ip.persistent_keepalive);
        assert_eq!(mp.preshared_key_file.is_some(), ip.preshared_key.is_some());
    }
    true
}

/// A control-socket request line: decoded or refused, never a panic; a
/// decoded request encodes and decodes again to the same request.
pub fn control(data: &[u8]) -> bool {
    let Ok(req) = control::decode_request(data) else {
        return false;
    };
    let first = match serde_json::to_value(&req) {
        Ok(v) => v,
        Err(e) => panic!("a decoded request does not encode: {e}"),
    };
    let line = first.to_string();
    match control::decode_request(line.as_bytes()) {
        Ok(again) => assert_eq!(serde_json::to_value(&again).ok(), Some(first)),
        Err(e) => panic!("an encoded request does not decode: {e}"),
    }
    true
}

/// The engine's flow queue (`engine::fq`) under any sequence of TUN reads
/// (any bytes, any length up to a 64 KiB read, behind a virtio-net header
/// or not), dequeues and clock steps, with a small memory limit so that
/// CoDel and the overflow drops both run: never a panic; every packet
/// comes out once, byte for byte, or is counted as dropped, and none is
/// invented; the memory held never exceeds the limit by more than one
/// read. Operations, one byte each (low 2 bits): 0 a read (2-byte length,
/// then the bytes), 1 one dequeue, 2 the clock moves by the next byte in
/// milliseconds, 3 dequeue until empty.
pub fn flow_queue(data: &[u8]) -> bool {
    use crate::engine::fq::{FlowQueues, Params};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    const READ: usize = VIRTIO_NET_HDR_LEN + MAX_PACKET;
    let params = Params {
        target: Duration::from_millis(5),
        interval: Duration::from_millis(100),
        limit: 256 << 10,
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut q = FlowQueues::new(params, READ, 0x5eed);
    let mut queued: HashMap<Vec<u8>, usize> = HashMap::new();
    let (mut enqueued, mut dequeued) = (0u64, 0u64);
    let mut rest = data;
    let take = |q: &mut FlowQueues, now: Instant, queued: &mut HashMap<Vec<u8>, usize>| {
        let Some(p) = q.dequeue(now) else {
            return false;
        };
        let got = p.buf[..p.len].to_vec();
        let n = queued
            .get_mut(&got)
            .expect("a packet that was never queued");
        *n -= 1;
        if *n == 0 {
            queued.remove(&got);
        }
        q.recycle(p.buf);
        true
    };
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op & 3 {
            0 => {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes(*len))
                    .min(tail.len())
                    .min(READ);
                let (pkt, tail) = tail.split_at(len);
                rest = tail;
                let mut buf = q.read_buffer();
                assert_eq!(buf.len(), READ);
                buf[..len].copy_from_slice(pkt);
                let l3 = if op & 4 != 0 { VIRTIO_NET_HDR_LEN } else { 0 };
                q.enqueue(buf, len, l3, now);
                *queued.entry(pkt.to_vec()).or_default() += 1;
                enqueued += 1;
                assert!(q.held() <= params.limit + READ, "holds {} B", q.held());
            }
            1 => dequeued += u64::from(take(&mut q, now, &mut queued)),
            2 => {
                let Some((&ms, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                now += Duration::from_millis(u64::from(ms));
            }
            _ => {
                while take(&mut q, now, &mut queued) {
                    dequeued += 1;
                }
                assert!(q.is_empty());
            }
        }
        let d = q.drops();
        assert_eq!(
            enqueued,
            dequeued + d.delay + d.full + q.len() as u64,
            "a packet lost uncounted or invented"
        );
    }
    while take(&mut q, now, &mut queued) {
        dequeued += 1;
    }
    assert_eq!((q.len(), q.held()), (0, 0));
    let d = q.drops();
    assert_eq!(enqueued, dequeued + d.delay + d.full);
    enqueued > 0
}

/// The TUN offload paths with arbitrary virtio-net headers. First byte:
/// bit 0 chooses the path, the rest sizes it.
///
/// - Split (bit 0 clear): the rest is one raw TUN read (virtio-net header
///   and packet), carried by [`TunRx`] with few slots so that super-packets
///   split in chunks. A refused read yields nothing; an accepted TSO/USO
///   read yields exactly its segments: each within the room, the original
///   headers with the length, IPv4 ID and TCP sequence number of its place,
///   and the payload, in order, byte for byte. The segments then go
///   through GRO as received packets would.
/// - Coalesce (bit 0 set): the rest is packets (2-byte length prefixes) as
///   peers could send them after decryption, laid out as the data plane
///   lays them out (headroom in front), through tun-rs's GRO, as the TUN
///   write does: never a panic, every buffer left with a valid header.
pub fn tun_offload(data: &[u8]) -> bool {
    let Some((&sel, rest)) = data.split_first() else {
        return false;
    };
    if sel & 1 == 0 {
        let batch = usize::from(sel >> 1 & 7) + 1;
        split(rest, batch)
    } else {
        let packets: Vec<&[u8]> = length_prefixed(rest).take(64).collect();
        coalesce(packets.iter().copied())
    }
}

fn length_prefixed(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (p, tail) = rest.split_at(len);
        data = tail;
        Some(p)
    })
}

fn split(read: &[u8], batch: usize) -> bool {
    // What one read can return; the rest would be cut off by the device.
    let read = &read[..read.len().min(VIRTIO_NET_HDR_LEN + MAX_PACKET)];
    let mut rx = TunRx::new(batch, 1280, TUN_HEADROOM, TUN_TAILROOM, true);
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut given = false;
    let st = rx.drain(
        usize::MAX,
        |buf| {
            if given {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            given = true;
            let n = read.len().min(buf.len());
            buf[..n].copy_from_slice(&read[..n]);
            Ok(n)
        },
        |slots, sizes| {
            assert_eq!(slots.len(), sizes.len());
            assert!(!slots.is_empty(), "an empty batch");
            for (s, &n) in slots.iter().zip(sizes) {
                assert!(TUN_HEADROOM + n + TUN_TAILROOM <= s.len(), "no tailroom");
                segments.push(s[TUN_HEADROOM..TUN_HEADROOM + n].to_vec());
            }
        },
    );
    assert_eq!(st.reads, 1);
    assert_eq!(st.read_errors, 0);
    assert_eq!(st.segments, segments.len());
    if st.bad_packets > 0 {
        assert!(segments.is_empty(), "a refused read yielded segments");
        return false;
    }
    assert!(!segments.is_empty(), "an accepted read yielded nothing");
    check_split(read, &segments);
    coalesce(segments.iter().map(Vec::as_slice));
    true
}

/// An accepted TSO/USO read came out as its segments (see [`tun_offload`]).
fn check_split(read: &[u8], segments: &[Vec<u8>]) {
    let Ok(hdr) = VirtioNetHdr::decode(&read[..VIRTIO_NET_HDR_LEN]) else {
        panic!("accepted a read whose virtio header does not decode");
    };
    let pkt = &read[VIRTIO_NET_HDR_LEN..];
    if hdr.gso_type == 0 {
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].len(), pkt.len());
        return;
    }
    let v6 = pkt[0] >> 4 == 6;
    let cs = usize::from(hdr.csum_start);
    let tcp = hdr.gso_type & 0x7f != 5;
    let hdr_len = if tcp {
        cs + usize::from(pkt[cs + 12] >> 4) * 4
    } else {
        cs + 8
    };
    let gso = usize::from(hdr.gso_size);
    let payload = &pkt[hdr_len..];
    assert_eq!(segments.len(), payload.len().div_ceil(gso), "segment count");
    let seq0 = |p: &[u8]| u32::from_be_bytes([p[cs + 4], p[cs + 5], p[cs + 6], p[cs + 7]]);
    for (i, (seg, chunk)) in segments.iter().zip(payload.chunks(gso)).enumerate() {
        assert_eq!(seg.len(), hdr_len + chunk.len(), "segment {i} length");
        assert_eq!(&seg[hdr_len..], chunk, "segment {i} payload");
        if v6 {
            let plen = u16::from_be_bytes([seg[4], seg[5]]);
            assert_eq!(usize::from(plen), seg.len() - 40, "segment {i} IPv6 length");
        } else {
            let tot = u16::from_be_bytes([seg[2], seg[3]]);
            assert_eq!(usize::from(tot), seg.len(), "segment {i} IPv4 length");
            let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
            let id = u16::from_be_bytes([seg[4], seg[5]]);
            assert_eq!(id, id0.wrapping_add(i as u16), "segment {i} IPv4 ID");
        }
        if tcp {
            let want = seq0(pkt).wrapping_add((i * gso) as u32);
            assert_eq!(seq0(seg), want, "segment {i} TCP sequence number");
        }
    }
}

fn coalesce<'a>(packets: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut bufs: Vec<Vec<u8>> = packets
        .map(|p| {
            let mut b = vec![0u8; TUN_HEADROOM];
            b.extend_from_slice(p);
            b
        })
        .collect();
    if bufs.is_empty() {
        return false;
    }
    let mut gro = GROTable::new();
    if gro.apply_gro(&mut bufs, TUN_HEADROOM, true).is_err() {
        return false;
    }
    for b in &bufs {
        let at = TUN_HEADROOM - VIRTIO_NET_HDR_LEN;
        assert!(
            VirtioNetHdr::decode(&b[at..TUN_HEADROOM]).is_ok(),
            "GRO left a buffer without a valid virtio header"
        );
    }
    true
}
