//! When the watcher reconciles: debounce, failure back-off, the pending
//! confirmation's deadline and the periodic resync, as a pure state
//! machine. Time is a parameter (`now`), so every rule is unit-tested
//! without root, sockets or sleeps; the watcher's loop only feeds it events
//! and sleeps until [`Policy::wake_at`].

use std::time::{Duration, Instant};

use crate::error::ErrorKind;

/// Debounce after a kernel event (our own changes come as bursts).
pub const KERNEL_DEBOUNCE: Duration = Duration::from_millis(100);
/// Debounce after a manifest file event (editors write in several steps).
pub const FILE_DEBOUNCE: Duration = Duration::from_millis(200);
/// Full resync even without events.
pub const RESYNC: Duration = Duration::from_secs(10);

/// Why a reconcile runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trigger {
    Start,
    /// An apply or confirm from the CLI finished.
    Poke,
    Kernel,
    File,
    Resync,
    /// The pending confirmation's deadline passed.
    Deadline,
}

/// What the watcher should do now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// Reconcile for this reason.
    Reconcile(Trigger),
    /// The periodic resync: re-read the state file, and reconcile when
    /// `reconcile` (the deployment is watched).
    Resync { reconcile: bool },
}

#[derive(Debug)]
pub struct Policy {
    /// The next reconcile scheduled by an event, and why.
    due: Option<(Instant, Trigger)>,
    next_resync: Instant,
    /// Failed reconciles in a row, and until when kernel events and the
    /// pending deadline do not start another (the failed apply's own
    /// revert sends kernel events).
    streak: u32,
    quiet_until: Option<Instant>,
}

impl Policy {
    /// A watcher starting at `now` reconciles at once.
    pub fn new(now: Instant) -> Policy {
        Policy {
            due: Some((now, Trigger::Start)),
            next_resync: now + RESYNC,
            streak: 0,
            quiet_until: None,
        }
    }

    /// A kernel event that may concern the deployment.
    pub fn kernel_event(&mut self, now: Instant) {
        let mut at = now + KERNEL_DEBOUNCE;
        if let Some(q) = self.quiet_until {
            at = at.max(q);
        }
        self.schedule(at, Trigger::Kernel);
    }

    /// The manifest file changed.
    pub fn file_event(&mut self, now: Instant) {
        self.schedule(now + FILE_DEBOUNCE, Trigger::File);
    }

    /// The CLI finished an apply or confirm (and changed the state file).
    pub fn poke(&mut self, now: Instant) {
        self.schedule(now, Trigger::Poke);
    }

    /// When a pending confirmation at `pending` may be resolved: not
    /// before the back-off after a failure ends.
    fn deadline(&self, pending: Option<Instant>) -> Option<Instant> {
        pending.map(|t| match self.quiet_until {
            Some(q) => t.max(q),
            None => t,
        })
    }

    /// When to wake up next, with a confirmation pending until `pending`.
    pub fn wake_at(&self, pending: Option<Instant>) -> Instant {
        let mut wake = self.next_resync;
        if let Some((t, _)) = self.due {
            wake = wake.min(t);
        }
        if let Some(t) = self.deadline(pending) {
            wake = wake.min(t);
        }
        wake
    }

    /// What is due at `now` (the deadline first, then an event's
    /// reconcile, then the resync), and the bookkeeping for it.
    pub fn step(&mut self, now: Instant, pending: Option<Instant>, watching: bool) -> Option<Step> {
        if self.deadline(pending).is_some_and(|t| t <= now) {
            return Some(Step::Reconcile(Trigger::Deadline));
        }
        if let Some((t, trigger)) = self.due
            && t <= now
        {
            self.due = None;
            self.next_resync = now + RESYNC;
            return Some(Step::Reconcile(trigger));
        }
        if self.next_resync <= now {
            self.next_resync = now + RESYNC;
            return Some(Step::Resync {
                reconcile: watching,
            });
        }
        None
    }

    /// A reconcile (or automatic revert) succeeded: no back-off.
    pub fn succeeded(&mut self) {
        self.streak = 0;
        self.quiet_until = None;
    }

    /// A reconcile failed at `now`: back off 1 s, 2 s, 4 s, 8 s ... up to
    /// the resync interval.
    pub fn failed(&mut self, now: Instant) {
        self.streak = self.streak.saturating_add(1);
        let d = Duration::from_secs(1u64 << self.streak.min(4).saturating_sub(1)).min(RESYNC);
        self.quiet_until = Some(now + d);
    }

    /// A reconcile failed at `now` with an error of `kind`: a transient
    /// one backs off as [`Policy::failed`]; an invalid input (the manifest,
    /// a key file, a rule nft rejects) cannot succeed before something
    /// changes, so kernel events wait the longest back-off at once (a file
    /// change still applies at once); `Busy` (an apply waits for `netman
    /// confirm`) is no failure.
    pub fn failed_as(&mut self, now: Instant, kind: ErrorKind) {
        match kind {
            ErrorKind::Busy => {}
            ErrorKind::Transient => self.failed(now),
            ErrorKind::Invalid => {
                self.streak = self.streak.saturating_add(1);
                self.quiet_until = Some(now + RESYNC);
            }
        }
    }

    /// Keep the earlier time. A file change wins over a kernel event, and a
    /// kernel event over a poke or the start (whose reconcile repairs
    /// nothing: it would swallow the event's drift).
    fn schedule(&mut self, at: Instant, t: Trigger) {
        match &mut self.due {
            Some((when, trig)) => {
                let wins = match t {
                    Trigger::File => true,
                    Trigger::Kernel => matches!(*trig, Trigger::Poke | Trigger::Start),
                    _ => false,
                };
                if wins {
                    *trig = t;
                }
                *when = (*when).min(at);
            }
            None => self.due = Some((at, t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A policy at `t0` whose start reconcile has run.
    fn started(t0: Instant) -> Policy {
        let mut p = Policy::new(t0);
        assert_eq!(
            p.step(t0, None, true),
            Some(Step::Reconcile(Trigger::Start))
        );
        p
    }

    #[test]
    fn the_start_reconciles_at_once_then_nothing_until_the_resync() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        assert_eq!(p.wake_at(None), t0);
        assert_eq!(
            p.step(t0, None, true),
            Some(Step::Reconcile(Trigger::Start))
        );
        assert_eq!(p.step(t0 + ms(1), None, true), None);
        assert_eq!(p.wake_at(None), t0 + RESYNC);
        assert_eq!(
            p.step(t0 + RESYNC, None, true),
            Some(Step::Resync { reconcile: true })
        );
        assert_eq!(p.wake_at(None), t0 + RESYNC + RESYNC);
        // Not watched: the resync only re-reads the state.
        assert_eq!(
            p.step(t0 + RESYNC + RESYNC, None, false),
            Some(Step::Resync { reconcile: false })
        );
    }

    #[test]
    fn events_are_debounced_and_a_burst_is_one_reconcile() {
        let t0 = Instant::now();
        let mut p = started(t0);
        p.kernel_event(t0);
        p.kernel_event(t0 + ms(50));
        assert_eq!(p.wake_at(None), t0 + KERNEL_DEBOUNCE);
        assert_eq!(p.step(t0 + ms(99), None, true), None);
        assert_eq!(
            p.step(t0 + ms(100), None, true),
            Some(Step::Reconcile(Trigger::Kernel))
        );
        assert_eq!(
            p.step(t0 + ms(101), None, true),
            None,
            "one reconcile for the burst"
        );
        // A reconcile pushes the resync back.
        assert_eq!(p.wake_at(None), t0 + ms(100) + RESYNC);

        p.file_event(t0 + ms(200));
        assert_eq!(p.wake_at(None), t0 + ms(200) + FILE_DEBOUNCE);
        assert_eq!(
            p.step(t0 + ms(400), None, true),
            Some(Step::Reconcile(Trigger::File))
        );
    }

    /// A kernel event while a poke (or the start) is pending must still
    /// be repaired: a poke's reconcile repairs nothing (the apply that
    /// poked has just converged), so keeping `Poke` left drift right after
    /// an apply or confirm until the 10 s resync. A file change wins over
    /// both; the earlier deadline is kept.
    #[test]
    fn a_kernel_event_is_not_swallowed_by_a_pending_poke() {
        let t0 = Instant::now();
        let later = t0 + ms(100);
        for first in [Trigger::Poke, Trigger::Start] {
            let mut p = Policy::new(t0);
            p.due = Some((later, first));
            p.schedule(t0 + ms(200), Trigger::Kernel);
            assert_eq!(
                p.due,
                Some((later, Trigger::Kernel)),
                "{first:?} then Kernel"
            );
        }
        let mut p = Policy::new(t0);
        p.due = Some((later, Trigger::File));
        p.schedule(t0, Trigger::Kernel);
        assert_eq!(p.due, Some((t0, Trigger::File)));
        p.due = Some((later, Trigger::Kernel));
        p.schedule(t0, Trigger::Poke);
        assert_eq!(
            p.due,
            Some((t0, Trigger::Kernel)),
            "a poke does not hide a kernel event"
        );
        p.due = None;
        p.schedule(later, Trigger::Poke);
        assert_eq!(p.due, Some((later, Trigger::Poke)));
        // Through the public surface: a poke, then a kernel event before
        // the poke's reconcile ran.
        let mut p = started(t0);
        p.poke(t0 + ms(10));
        p.kernel_event(t0 + ms(10));
        assert_eq!(
            p.step(t0 + ms(10), None, true),
            Some(Step::Reconcile(Trigger::Kernel))
        );
    }

    #[test]
    fn failures_back_off_kernel_events_and_the_deadline_but_not_files() {
        let t0 = Instant::now();
        let mut p = started(t0);
        let mut now = t0;
        for (n, secs) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)] {
            // Fail until the n-th failure in a row.
            while p.streak < n {
                p.failed(now);
            }
            let quiet = now + Duration::from_secs(secs);
            assert_eq!(p.quiet_until, Some(quiet), "after {n} failures");
            // A kernel event (the failed apply's own revert) waits.
            p.kernel_event(now);
            assert_eq!(p.wake_at(None), quiet);
            assert_eq!(p.step(quiet - ms(1), None, true), None);
            // So does a confirmation deadline that is already due.
            assert_eq!(p.step(quiet - ms(1), Some(now), true), None);
            assert_eq!(
                p.step(quiet, Some(now), true),
                Some(Step::Reconcile(Trigger::Deadline)),
                "the deadline comes first"
            );
            assert_eq!(
                p.step(quiet, None, true),
                Some(Step::Reconcile(Trigger::Kernel))
            );
            now = quiet;
        }
        // A file change is what the user wants applied: no back-off.
        p.file_event(now);
        assert_eq!(p.wake_at(None), now + FILE_DEBOUNCE);
        // Success ends the back-off.
        p.succeeded();
        assert_eq!(p.quiet_until, None);
        p.failed(now);
        assert_eq!(p.quiet_until, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn an_invalid_input_backs_off_the_longest_at_once_and_busy_not_at_all() {
        let t0 = Instant::now();
        let mut p = started(t0);
        p.failed_as(t0, ErrorKind::Busy);
        assert_eq!(
            p.quiet_until, None,
            "waiting for a confirmation is no failure"
        );
        p.failed_as(t0, ErrorKind::Transient);
        assert_eq!(p.quiet_until, Some(t0 + Duration::from_secs(1)));
        p.failed_as(t0, ErrorKind::Invalid);
        assert_eq!(p.quiet_until, Some(t0 + RESYNC));
        // Kernel events wait for it; a file change (the fix) does not.
        p.kernel_event(t0);
        assert_eq!(p.step(t0 + RESYNC - ms(1), None, true), None);
        p.file_event(t0);
        assert_eq!(
            p.step(t0 + FILE_DEBOUNCE, None, true),
            Some(Step::Reconcile(Trigger::File))
        );
        p.succeeded();
        assert_eq!(p.quiet_until, None);
    }

    #[test]
    fn a_pending_deadline_wakes_the_watcher() {
        let t0 = Instant::now();
        let mut p = started(t0);
        let deadline = t0 + Duration::from_secs(3);
        assert_eq!(p.wake_at(Some(deadline)), deadline);
        assert_eq!(p.step(deadline - ms(1), Some(deadline), true), None);
        assert_eq!(
            p.step(deadline, Some(deadline), true),
            Some(Step::Reconcile(Trigger::Deadline))
        );
        // A deadline later than the resync does not delay it.
        let far = t0 + RESYNC + RESYNC;
        assert_eq!(p.wake_at(Some(far)), t0 + RESYNC);
    }
}
