//! State shared between the engine (its control socket and metrics, which
//! report it) and the watcher above it (`crate::watch`, which fills it
//! in): whether the deployment is watched, what went wrong last, and how
//! much work the watcher did. The engine owns these types so that it
//! depends on nothing above it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What `status` shows about the watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub enabled: bool,
    /// The last manifest file that could not be applied, and why.
    pub manifest_error: Option<String>,
    /// The last reconcile that failed, and why.
    pub last_error: Option<String>,
    pub applies: u64,
    pub drift_repairs: u64,
    pub failures: u64,
    /// A change on probation (confirm by health): what it still waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probation: Vec<String>,
    /// Changes on probation kept because the deployment was healthy.
    #[serde(default)]
    pub health_confirms: u64,
    /// Changes on probation reverted because it was not healthy in time.
    #[serde(default)]
    pub health_reverts: u64,
}

/// How much work the watcher did (`status --output json`:
/// `engine.watch_counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCounters {
    /// rtnetlink messages the watcher received.
    pub events: u64,
    /// Times the watcher read (and parsed) the state file: only when it
    /// changed, after a poke, a resync or a reconcile of its own.
    pub state_reads: u64,
}

/// State shared between the watcher, the control socket and metrics.
#[derive(Debug, Default)]
pub struct Shared {
    pub watch: AtomicBool,
    /// Wakes the watcher to re-read the state file.
    pub wake: tokio::sync::Notify,
    pub counters: ReconcileCounters,
    /// See [`WatchCounters`].
    pub events: AtomicU64,
    pub state_reads: AtomicU64,
    errors: Mutex<(Option<String>, Option<String>)>,
    probation: Mutex<Vec<String>>,
}

impl Shared {
    pub fn status(&self) -> WatchStatus {
        let (manifest_error, last_error) =
            self.errors.lock().map(|g| g.clone()).unwrap_or_default();
        WatchStatus {
            enabled: self.watch.load(Ordering::Relaxed),
            manifest_error,
            last_error,
            applies: self.counters.applies.load(Ordering::Relaxed),
            drift_repairs: self.counters.drift_repairs.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            probation: self.probation.lock().map(|g| g.clone()).unwrap_or_default(),
            health_confirms: self.counters.health_confirms.load(Ordering::Relaxed),
            health_reverts: self.counters.health_reverts.load(Ordering::Relaxed),
        }
    }

    /// What a change on probation still waits for (empty: none is).
    pub fn set_probation(&self, unmet: Vec<String>) {
        if let Ok(mut g) = self.probation.lock() {
            *g = unmet;
        }
    }

    pub fn counters(&self) -> WatchCounters {
        WatchCounters {
            events: self.events.load(Ordering::Relaxed),
            state_reads: self.state_reads.load(Ordering::Relaxed),
        }
    }

    pub fn set_manifest_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.errors.lock() {
            g.0 = e;
        }
    }

    pub fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.errors.lock() {
            g.1 = e;
        }
    }
}

/// Counters of the reconcile loop, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct ReconcileCounters {
    pub applies: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub failures: AtomicU64,
    pub health_confirms: AtomicU64,
    pub health_reverts: AtomicU64,
}
