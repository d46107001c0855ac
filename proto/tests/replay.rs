//! The anti-replay window against the Linux kernel's counter selftest
//! (drivers/net/wireguard/selftest/counter.c) and a naive model.

use std::collections::BTreeSet;

use netman_proto::ReplayFilter;
use netman_proto::consts::{COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES};
use proptest::prelude::*;

struct Case {
    filter: ReplayFilter,
    step: usize,
}

impl Case {
    fn new() -> Self {
        Self {
            filter: ReplayFilter::new(),
            step: 0,
        }
    }
    #[track_caller]
    fn t(&mut self, n: u64, expected: bool) {
        self.step += 1;
        let predicted = self.filter.would_accept(n);
        let got = self.filter.validate(n);
        assert_eq!(got, expected, "step {}: counter {n}", self.step);
        assert_eq!(predicted, expected, "step {}: would_accept({n})", self.step);
    }
}

#[test]
fn kernel_counter_selftest() {
    const T_LIM: u64 = COUNTER_WINDOW_SIZE + 1;
    let mut c = Case::new();
    c.t(0, true); // 1
    c.t(1, true); // 2
    c.t(1, false); // 3
    c.t(9, true); // 4
    c.t(8, true); // 5
    c.t(7, true); // 6
    c.t(7, false); // 7
    c.t(T_LIM, true); // 8
    c.t(T_LIM - 1, true); // 9
    c.t(T_LIM - 1, false); // 10
    c.t(T_LIM - 2, true); // 11
    c.t(2, true); // 12
    c.t(2, false); // 13
    c.t(T_LIM + 16, true); // 14
    c.t(3, false); // 15
    c.t(T_LIM + 16, false); // 16
    c.t(T_LIM * 4, true); // 17
    c.t(T_LIM * 4 - (T_LIM - 1), true); // 18
    c.t(10, false); // 19
    c.t(T_LIM * 4 - T_LIM, false); // 20
    c.t(T_LIM * 4 - (T_LIM + 1), false); // 21
    c.t(T_LIM * 4 - (T_LIM - 2), true); // 22
    c.t(T_LIM * 4 + 1 - T_LIM, false); // 23
    c.t(0, false); // 24
    c.t(REJECT_AFTER_MESSAGES, false); // 25
    c.t(REJECT_AFTER_MESSAGES - 1, true); // 26
    c.t(REJECT_AFTER_MESSAGES, false); // 27
    c.t(REJECT_AFTER_MESSAGES - 1, false); // 28
    c.t(REJECT_AFTER_MESSAGES - 2, true); // 29
    c.t(REJECT_AFTER_MESSAGES + 1, false); // 30
    c.t(REJECT_AFTER_MESSAGES + 2, false); // 31
    c.t(REJECT_AFTER_MESSAGES - 2, false); // 32
    c.t(REJECT_AFTER_MESSAGES - 3, true); // 33
    c.t(0, false); // 34

    let mut c = Case::new();
    for i in 1..=COUNTER_WINDOW_SIZE {
        c.t(i, true);
    }
    c.t(0, true);
    c.t(0, false);

    let mut c = Case::new();
    for i in 2..=COUNTER_WINDOW_SIZE + 1 {
        c.t(i, true);
    }
    c.t(1, true);
    c.t(0, false);

    let mut c = Case::new();
    for i in (0..=COUNTER_WINDOW_SIZE).rev() {
        c.t(i, true);
    }

    let mut c = Case::new();
    for i in (1..=COUNTER_WINDOW_SIZE + 1).rev() {
        c.t(i, true);
    }
    c.t(0, false);

    let mut c = Case::new();
    for i in (1..=COUNTER_WINDOW_SIZE).rev() {
        c.t(i, true);
    }
    c.t(COUNTER_WINDOW_SIZE + 1, true);
    c.t(0, false);

    let mut c = Case::new();
    for i in (1..=COUNTER_WINDOW_SIZE).rev() {
        c.t(i, true);
    }
    c.t(0, true);
    c.t(COUNTER_WINDOW_SIZE + 1, true);
}

#[test]
fn window_constants() {
    assert_eq!(COUNTER_WINDOW_SIZE, 8128);
    assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8128 - 1);
}

#[test]
fn reset_forgets() {
    let mut f = ReplayFilter::new();
    assert!(f.validate(5));
    assert!(!f.validate(5));
    f.reset();
    assert!(f.validate(5));
}

/// The specification, written as plainly as possible.
#[derive(Default)]
struct Naive {
    max: Option<u64>,
    seen: BTreeSet<u64>,
}

impl Naive {
    fn validate(&mut self, n: u64) -> bool {
        let in_window = match self.max {
            None => true,
            Some(max) => n >= max || max - n <= COUNTER_WINDOW_SIZE,
        };
        if n >= REJECT_AFTER_MESSAGES || !in_window || self.seen.contains(&n) {
            return false;
        }
        self.seen.insert(n);
        self.max = Some(self.max.map_or(n, |m| m.max(n)));
        true
    }
}

#[derive(Debug, Clone)]
enum Step {
    Forward(u16),
    Back(u16),
    Jump(u64),
    NearReject(u16),
    Repeat,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<u16>().prop_map(|d| Step::Forward(d % 200)),
        4 => any::<u16>().prop_map(|d| Step::Back(d % 9000)),
        1 => any::<u16>().prop_map(Step::Forward),
        1 => (0u64..100_000).prop_map(Step::Jump),
        1 => any::<u16>().prop_map(|d| Step::NearReject(d % 10_000)),
        2 => Just(Step::Repeat),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn matches_naive_model(steps in proptest::collection::vec(step(), 1..400)) {
        let mut filter = ReplayFilter::new();
        let mut model = Naive::default();
        let mut cur = 0u64;
        for s in steps {
            cur = match s {
                Step::Forward(d) => cur.saturating_add(u64::from(d)),
                Step::Back(d) => cur.saturating_sub(u64::from(d)),
                Step::Jump(n) => n,
                Step::NearReject(d) => REJECT_AFTER_MESSAGES - 5_000 + u64::from(d),
                Step::Repeat => cur,
            };
            let predicted = filter.would_accept(cur);
            let got = filter.validate(cur);
            let want = model.validate(cur);
            prop_assert_eq!(got, want, "counter {}", cur);
            prop_assert_eq!(predicted, want, "would_accept({})", cur);
        }
    }
}
