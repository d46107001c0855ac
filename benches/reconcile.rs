//! Benchmarks of the pure pieces around the data plane and the reconciler:
//! packing encrypted datagrams into UDP GSO messages (the send path's
//! batching), planning 10,000 routes against an in-sync and an empty kernel,
//! and parsing + validating a manifest of 10,000 routes, and one of 10,000
//! firewall rules (which should cost about the same: rule positions are
//! found through a line index, not by rescanning the text per rule).
//!
//! `cargo bench --bench reconcile -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netman::engine::udp::TxQueue;
use netman::link::model::{Desired, Observed, ObservedLink, Owned, link_alias};
use netman::link::plan::plan;
use netman::manifest;

const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn manifest_text(routes: usize) -> String {
    let mut m = format!(
        "name: bench\ninterface:\n  name: nm0\n  addresses: [10.255.0.1/24]\n  private_key_file: k\npeers:\n  - name: b\n    public_key: \"{KEY}\"\n    allowed_ips: [10.255.0.2/32]\nroutes:\n"
    );
    for i in 0..routes {
        m.push_str(&format!("  - to: 10.{}.{}.0/24\n", i / 256, i % 256));
    }
    m
}

fn rules_manifest_text(rules: usize) -> String {
    let mut m = format!(
        "name: bench\ninterface:\n  name: nm0\n  addresses: [10.255.0.1/24]\n  private_key_file: k\npeers:\n  - name: b\n    public_key: \"{KEY}\"\n    allowed_ips: [10.255.0.2/32]\nfirewall:\n  chains:\n    - name: forward\n      hook: forward\n      rules:\n"
    );
    for i in 0..rules {
        m.push_str(&format!(
            "        - ip saddr 10.{}.{}.0/24 accept\n",
            i / 256,
            i % 256
        ));
    }
    m
}

fn tx_queue(c: &mut Criterion) {
    let dst: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
    let datagram = vec![0x42u8; 1452];
    let mut g = c.benchmark_group("tx_queue");
    g.throughput(Throughput::Elements(64));
    g.bench_function("push 64 x 1452-byte datagrams (GSO runs)", |b| {
        let mut q = TxQueue::new(128, 128 * 2048, true);
        b.iter(|| {
            for _ in 0..64 {
                black_box(q.push(black_box(&datagram), dst));
            }
            // Sending is not measured here.
            q.clear();
        });
    });
    g.finish();
}

fn planning(c: &mut Criterion) {
    let m = manifest::parse(&manifest_text(10_000), Path::new("/bench/m.yaml")).expect("valid");
    let desired = Desired::from_manifest(&m);
    let spec = &desired.links["nm0"];
    let in_sync = Observed {
        links: [(
            "nm0".to_string(),
            ObservedLink {
                index: 5,
                kind: Some("tun".into()),
                alias: Some(link_alias("bench")),
                mtu: spec.mtu,
                txqueuelen: spec.txqueuelen,
                up: true,
                addresses: spec.addresses.clone(),
                routes: spec.routes.clone(),
                foreign_routes: BTreeSet::new(),
            },
        )]
        .into(),
        rules: BTreeSet::new(),
    };
    let owned = Owned::from_desired(&desired);
    let mut g = c.benchmark_group("plan");
    g.bench_function("10k routes, in sync", |b| {
        b.iter(|| plan("bench", black_box(&desired), black_box(&in_sync), &owned))
    });
    g.bench_function("10k routes, from nothing", |b| {
        b.iter(|| {
            plan(
                "bench",
                black_box(&desired),
                black_box(&Observed::default()),
                &Owned::default(),
            )
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let text = manifest_text(10_000);
    let mut g = c.benchmark_group("manifest");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse + validate 10k routes", |b| {
        b.iter(|| manifest::parse(black_box(&text), Path::new("/bench/m.yaml")))
    });
    let rules = rules_manifest_text(10_000);
    g.throughput(Throughput::Bytes(rules.len() as u64));
    g.bench_function("parse + validate 10k firewall rules", |b| {
        b.iter(|| manifest::parse(black_box(&rules), Path::new("/bench/m.yaml")))
    });
    g.finish();
}

criterion_group!(benches, tx_queue, planning, parsing);
criterion_main!(benches);
