//! The flow queue in simulated time: who goes first, what CoDel and the
//! memory limit drop, and what the buffers cost.

use super::*;

const READ: usize = 10 + 65535;

/// An IPv4 packet of `len` bytes (at least 28) from `sport` to `dport`
/// (`proto` 6 or 17), behind a 10-byte virtio-net header.
fn pkt(proto: u8, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; READ];
    let p = &mut b[10..10 + len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = proto;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    b
}

/// An 84-byte ICMP echo request (no ports), behind a virtio-net header.
fn ping() -> Vec<u8> {
    let mut p = pkt(1, 0, 0, 84);
    p[10 + 20] = 8;
    p
}

fn sport_of(p: &Packet) -> u16 {
    u16::from_be_bytes([p.buf[30], p.buf[31]])
}

fn fq(limit: usize) -> FlowQueues {
    FlowQueues::new(
        Params {
            limit,
            ..Params::default()
        },
        READ,
        7,
    )
}

/// A 1 ms target and a 20 ms interval, no memory limit to speak of.
fn codel_1ms_20ms() -> Params {
    Params {
        target: Duration::from_millis(1),
        interval: Duration::from_millis(20),
        limit: 64 << 20,
    }
}

fn push(q: &mut FlowQueues, proto: u8, sport: u16, len: usize, now: Instant) {
    q.enqueue(pkt(proto, sport, 80, len), 10 + len, 10, now);
}

#[test]
fn a_ping_queued_behind_a_bulk_backlog_goes_out_first() {
    let t = Instant::now();
    let mut q = fq(64 << 20);
    // A bulk TCP flow with 40 super-packets (2.6 MB) waiting...
    for _ in 0..40 {
        push(&mut q, 6, 5001, 65_000, t);
    }
    // ...one goes out, then a ping (ICMP, no ports) arrives.
    let first = q.dequeue(t).expect("bulk");
    assert_eq!(sport_of(&first), 5001);
    q.recycle(first.buf);
    q.enqueue(ping(), 10 + 84, 10, t);
    let next = q.dequeue(t).expect("ping");
    assert_eq!(
        next.len,
        10 + 84,
        "the ping, not the 39 super-packets in front"
    );
    assert_eq!(next.buf[10 + 9], 1);
    q.recycle(next.buf);
    assert_eq!(q.len(), 39);
}

#[test]
fn bulk_flows_share_by_bytes_and_a_new_flow_cannot_starve_them() {
    let t = Instant::now();
    let mut q = fq(64 << 20);
    // Flow 1 sends super-packets of 15 kB, flow 2 MTU-sized packets.
    for _ in 0..20 {
        push(&mut q, 6, 1, 15_000, t);
    }
    for _ in 0..400 {
        push(&mut q, 6, 2, 1_500, t);
    }
    let mut bytes = [0usize; 3];
    let mut served = 0;
    while bytes[1] < 150_000 {
        let p = q.dequeue(t).expect("packet");
        bytes[usize::from(sport_of(&p))] += p.len;
        q.recycle(p.buf);
        served += 1;
        assert!(served < 1000);
    }
    // Within one super-packet of an equal share.
    let (a, b) = (bytes[1] as i64, bytes[2] as i64);
    assert!((a - b).abs() <= 16_000, "flow 1 {a} B, flow 2 {b} B");

    // A flow that keeps arriving "new" after emptying gets no more than
    // its share: it re-enters behind the old flows.
    let mut q = fq(64 << 20);
    for _ in 0..100 {
        push(&mut q, 6, 1, 1_500, t);
    }
    let mut old = 0;
    for _ in 0..50 {
        push(&mut q, 17, 2, 1_500, t);
        for _ in 0..2 {
            let p = q.dequeue(t).expect("packet");
            old += usize::from(sport_of(&p) == 1);
            q.recycle(p.buf);
        }
    }
    assert!(old >= 45, "the bulk flow got {old} of 100 turns");
}

#[test]
fn codel_drops_from_a_standing_queue_and_never_from_a_short_one() {
    let p = codel_1ms_20ms();
    let mut q = FlowQueues::new(p, READ, 1);
    let t0 = Instant::now();
    // A flow that arrives at 2 packets per ms and is served at 1 per ms:
    // its queue (and its packets' wait) only grows.
    let mut now = t0;
    let mut served = 0u64;
    for ms in 0..200u64 {
        now = t0 + Duration::from_millis(ms);
        push(&mut q, 6, 9, 1_400, now);
        push(&mut q, 6, 9, 1_400, now);
        if let Some(p) = q.dequeue(now) {
            served += 1;
            q.recycle(p.buf);
        }
    }
    let d = q.drops();
    assert!(d.delay > 0, "CoDel never dropped ({served} served)");
    assert_eq!(d.full, 0);
    // Not a tail drop of everything: most packets still go out.
    assert!(served >= 190, "{served}");
    let _ = now;

    // Served as fast as it arrives: the wait stays under the target.
    let mut q = FlowQueues::new(p, READ, 1);
    for ms in 0..500u64 {
        let now = t0 + Duration::from_micros(ms * 500);
        push(&mut q, 6, 9, 1_400, now);
        push(&mut q, 6, 9, 1_400, now);
        while let Some(p) = q.dequeue(now + Duration::from_micros(400)) {
            q.recycle(p.buf);
        }
    }
    assert_eq!(q.drops(), FqDrops::default());
}

#[test]
fn codel_waits_a_whole_interval_above_target_before_the_first_drop() {
    let p = codel_1ms_20ms();
    let mut q = FlowQueues::new(p, READ, 1);
    let t0 = Instant::now();
    for _ in 0..100 {
        push(&mut q, 17, 3, 1_400, t0);
    }
    // 5 ms late: above the target, but not yet for an interval.
    let late = t0 + Duration::from_millis(5);
    for _ in 0..10 {
        let p = q.dequeue(late).expect("packet");
        q.recycle(p.buf);
    }
    assert_eq!(q.drops().delay, 0);
    let later = late + Duration::from_millis(21);
    let p = q.dequeue(later).expect("packet");
    q.recycle(p.buf);
    assert_eq!(q.drops().delay, 1, "one drop once the interval has passed");
}

#[test]
fn over_the_limit_the_fattest_flow_loses_packets_and_the_ping_survives() {
    let t = Instant::now();
    let limit = 2 << 20;
    let mut q = fq(limit);
    q.enqueue(ping(), 10 + 84, 10, t);
    // A flood of super-packets, far more than the limit.
    for _ in 0..200 {
        push(&mut q, 17, 4, 60_000, t);
        assert!(q.held() <= limit, "holds {} B", q.held());
    }
    assert!(q.drops().full > 100, "{:?}", q.drops());
    assert_eq!(q.drops().delay, 0);
    let first = q.dequeue(t).expect("ping");
    assert_eq!(first.len, 10 + 84, "the ping was kept and goes first");
}

#[test]
fn small_packets_hold_small_buffers_and_buffers_are_reused() {
    let t = Instant::now();
    let mut q = fq(64 << 20);
    for i in 0..100 {
        push(&mut q, 17, i, 100, t);
    }
    assert_eq!(
        q.held(),
        100 * SMALL,
        "a small packet holds {SMALL} B, not 64 KiB"
    );
    push(&mut q, 6, 7, 30_000, t);
    assert_eq!(q.held(), 100 * SMALL + READ);
    // Bytes survive the copy.
    let mut seen = 0;
    while let Some(p) = q.dequeue(t) {
        assert_eq!(p.buf[10], 0x45);
        assert_eq!(
            u16::from_be_bytes([p.buf[12], p.buf[13]]) as usize + 10,
            p.len
        );
        q.recycle(p.buf);
        seen += 1;
    }
    assert_eq!(seen, 101);
    assert_eq!((q.held(), q.len()), (0, 0));
    // The pools are bounded and hand buffers out again.
    assert!(q.small.len() <= KEEP_SMALL && q.big.len() <= KEEP_BIG);
    let b = q.read_buffer();
    assert_eq!(b.len(), READ);
}

#[test]
fn flows_are_told_apart_by_their_five_tuple_and_anything_hashes() {
    let a = pkt(6, 1000, 80, 60);
    let b = pkt(6, 1001, 80, 60);
    let key = 42;
    assert_eq!(flow_of(&a[10..70], key), flow_of(&a[10..70], key));
    let mut differ = 0;
    for k in 0..16 {
        differ += usize::from(flow_of(&a[10..70], k) != flow_of(&b[10..70], k));
    }
    assert!(differ >= 14, "ports ignored? {differ}/16");
    // A later fragment (offset set) of the same datagram: no ports read.
    let mut f1 = pkt(17, 1, 2, 60);
    let mut f2 = pkt(17, 9, 9, 60);
    f1[10 + 6] = 0x00;
    f1[10 + 7] = 0x10;
    f2[10 + 6] = 0x00;
    f2[10 + 7] = 0x20;
    assert_eq!(flow_of(&f1[10..70], key), flow_of(&f2[10..70], key));
    // Short, empty, IPv6, garbage: a bucket, no panic.
    for p in [
        &[][..],
        &[0x45][..],
        &[0x60; 39][..],
        &[0x60; 44][..],
        &[0xff; 9][..],
    ] {
        assert!(flow_of(p, key) < BUCKETS);
    }
    let mut q = fq(1 << 20);
    q.enqueue(vec![0xff; READ], 3, 10, Instant::now());
    q.enqueue(vec![0xff; READ], READ + 5, 10, Instant::now());
    assert_eq!(q.len(), 2);
}
