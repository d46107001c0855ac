//! The steady-state hot path (encrypt a TUN packet, decrypt a datagram)
//! performs no heap allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use netman_proto::*;

struct Counting;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    let _ = ENABLED.try_with(|e| {
        if e.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count_allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ENABLED.with(|e| e.set(true));
    f();
    ENABLED.with(|e| e.set(false));
    COUNT.with(|c| c.get())
}

#[test]
fn encrypt_and_decrypt_allocate_nothing() {
    // The counter itself works.
    assert_eq!(
        count_allocations(|| drop(std::hint::black_box(vec![1u8; 10]))),
        1
    );
    let mut sim = Sim::pair();
    sim.send(0, 1, b"establish");
    sim.run();
    sim.send(1, 0, b"confirm");
    sim.run();
    let a_addr = sim.nodes[0].addr;
    let b_addr = sim.nodes[1].addr;
    let mut now = sim.now;
    let (a_ip, b_ip) = (sim.nodes[0].tun_ip, sim.nodes[1].tun_ip);
    let (mut a, mut b) = {
        let mut it = sim.nodes.drain(..);
        (it.next().unwrap().dev, it.next().unwrap().dev)
    };
    let pkt_ab = ipv4_packet(a_ip, b_ip, &[0x11; 1400]);
    let pkt_ba = ipv4_packet(b_ip, a_ip, &[0x22; 64]);
    let mut buf = vec![0u8; 2048];
    let mut delivered = 0;

    let mut one_way = |tx: &mut Device, rx: &mut Device, pkt: &[u8], src, now| {
        buf[TUN_HEADROOM..TUN_HEADROOM + pkt.len()].copy_from_slice(pkt);
        let TunResult::Send { len, .. } = tx.handle_tun_packet(&mut buf, pkt.len(), now) else {
            panic!("no session");
        };
        match rx.handle_datagram(src, &mut buf, len, now) {
            NetResult::ToTun { offset, len, .. } => {
                assert_eq!(&buf[offset..offset + len], pkt);
                delivered += 1;
            }
            other => panic!("{other:?}"),
        }
    };
    let mut round = |a: &mut Device, b: &mut Device, now: std::time::Instant| {
        one_way(a, b, &pkt_ab, a_addr, now);
        one_way(b, a, &pkt_ba, b_addr, now);
    };
    // Warm up (first use of lazily grown queues is not the steady state).
    for _ in 0..10 {
        round(&mut a, &mut b, now);
    }
    let n = count_allocations(|| {
        for _ in 0..2000 {
            now += std::time::Duration::from_millis(1);
            round(&mut a, &mut b, now);
        }
    });
    assert_eq!(n, 0, "hot path allocated {n} times");
    assert_eq!(delivered, 2 * 2010);
}
