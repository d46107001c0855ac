//! Orchestration of a reconcile: observe → plan → apply → verify, with a
//! revert to the snapshot on any failure, and ownership recorded ahead of
//! every kernel change so a crash never leaves objects netman forgot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use crate::clock::now_unix_ms;
use crate::firewall::{self, FirewallError};
use crate::link::model::{Desired, Observed, Owned};
use crate::link::netlink::{Netlink, NetlinkError};
use crate::link::plan::{Plan, PlanErrors, desired_from_snapshot, plan};
use crate::manifest::Manifest;
use crate::state::{DeploymentState, ManifestRecord, PendingConfirm, StateDir, StateError};

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Plan(#[from] PlanErrors),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("{0}")]
    Failed(Failure),
    #[error("no deployment named {0:?} is recorded in the state dir")]
    UnknownDeployment(String),
    #[error(
        "an apply of deployment {name} made with --confirm-timeout is waiting for `netman confirm {name}` (automatic revert {}); refusing another apply until it is confirmed or reverted",
        deadline_text(*deadline_ms)
    )]
    PendingConfirm { name: String, deadline_ms: u64 },
    #[error("{}\nwhat is left stays recorded; run `netman down` again once the cause is fixed", .0.join("\n"))]
    DownFailed(Vec<String>),
}

/// A failed apply and what the revert did about it.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong (kernel errors naming the object, or a failed
    /// verification).
    pub errors: Vec<String>,
    /// Errors while reverting; empty when the system is back as it was.
    pub revert_errors: Vec<String>,
    /// The revert plan that was carried out.
    pub reverted: Plan,
    /// Whether nftables or sysctls were changed and then restored.
    pub firewall_reverted: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.errors {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        if self.revert_errors.is_empty() && self.reverted.is_empty() && !self.firewall_reverted {
            write!(f, "\nnothing was changed")?;
        } else if self.revert_errors.is_empty() && self.reverted.is_empty() {
            write!(
                f,
                "\nreverted: the system is as it was before this apply (nftables and sysctls restored)"
            )?;
        } else if self.revert_errors.is_empty() {
            write!(
                f,
                "\nreverted: the system is as it was before this apply ({} action{} undone)",
                self.reverted.actions.len(),
                if self.reverted.actions.len() == 1 {
                    ""
                } else {
                    "s"
                }
            )?;
        } else {
            write!(f, "\nthe revert failed too; left as is:")?;
            for e in &self.revert_errors {
                write!(f, "\n  {e}")?;
            }
        }
        Ok(())
    }
}

impl ManifestRecord {
    pub fn of(m: &Manifest) -> Self {
        ManifestRecord {
            path: m.source.path.clone(),
            sha256: m.source.sha256.clone(),
            text: m.source.text.clone(),
        }
    }
}

fn deadline_text(deadline_ms: u64) -> String {
    let now = now_unix_ms();
    if deadline_ms > now {
        format!("in {:.1} s", (deadline_ms - now) as f64 / 1000.0)
    } else {
        "is due now".to_string()
    }
}

/// Every link name a reconcile must look at.
fn link_names(desired: &Desired, owned: &Owned) -> BTreeSet<String> {
    desired
        .links
        .keys()
        .chain(owned.links.keys())
        .cloned()
        .collect()
}

async fn observe(nl: &Netlink, names: &BTreeSet<String>) -> Result<Observed, NetlinkError> {
    nl.observe(names.iter().map(String::as_str)).await
}

/// What `diff` found: the link plan and the firewall plan.
#[derive(Debug, Default)]
pub struct Diff {
    pub kernel: Plan,
    pub firewall: firewall::Plan,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.firewall.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kernel, self.firewall)
    }
}

/// The firewall side of a reconcile, planned and checked by nft (nothing
/// changed yet).
struct FirewallPlanned {
    desired: firewall::Desired,
    record: Option<firewall::Record>,
    saved: BTreeMap<String, String>,
    before: firewall::Observed,
    plan: firewall::Plan,
    script: firewall::Script,
}

fn plan_firewall(
    manifest: &Manifest,
    prior: Option<&DeploymentState>,
) -> Result<FirewallPlanned, FirewallError> {
    let name = manifest.name.as_str();
    let desired = firewall::Desired::from_manifest(manifest);
    let record = prior.and_then(|s| s.firewall.clone());
    let saved = prior.map(|s| s.sysctls.clone()).unwrap_or_default();
    let before = firewall::observe(name, &desired, record.as_ref(), &saved)?;
    let plan = firewall::plan(name, &desired, &before, record.as_ref(), &saved)?;
    let script = firewall::script(name, &desired, &plan);
    // nft (and the kernel) check every rule before anything changes.
    firewall::check(&script)?;
    Ok(FirewallPlanned {
        desired,
        record,
        saved,
        before,
        plan,
        script,
    })
}

/// The plan that would bring the live state to `manifest`, without
/// changing anything (nft checks the firewall rules it would apply).
pub async fn diff(
    nl: &Netlink,
    sd: &StateDir,
    manifest: &Manifest,
) -> Result<Diff, ReconcileError> {
    let prior = sd.load(&manifest.name)?;
    let owned = prior.as_ref().map(|s| s.owned.clone()).unwrap_or_default();
    let desired = Desired::from_manifest(manifest);
    let observed = observe(nl, &link_names(&desired, &owned)).await?;
    let kernel = plan(&manifest.name, &desired, &observed, &owned)?;
    let fw = plan_firewall(manifest, prior.as_ref())?;
    Ok(Diff {
        kernel,
        firewall: fw.plan,
    })
}

/// What an apply did: the kernel actions, the firewall changes and the
/// engine changes (lines).
#[derive(Debug, Default)]
pub struct Applied {
    pub kernel: Plan,
    pub firewall: firewall::Plan,
    pub engine: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.firewall.is_empty() && self.engine.is_empty()
    }
}

/// How an apply behaves beyond reaching the manifest.
#[derive(Clone, Default)]
pub struct ApplyOptions {
    /// Record a pending confirmation: unless `netman confirm` arrives
    /// within this time, the previous configuration is restored.
    pub confirm_timeout: Option<std::time::Duration>,
    /// This apply resolves a pending confirmation (it is the revert): it
    /// runs although one is pending, and clears it.
    pub resolves_pending: bool,
    /// Polled between steps; once true the apply stops and reverts
    /// (SIGINT/SIGTERM).
    pub interrupted: Option<fn() -> bool>,
    /// `Some(true)`: the engine must not watch (`--no-watch`), recorded for
    /// later applies; `Some(false)`: watch as the manifest says; `None`:
    /// keep what is recorded.
    pub no_watch: Option<bool>,
    /// Only apply if the manifest in force is still this one (path,
    /// sha256): the watcher decides what to apply before it holds the
    /// lock, and must not apply a stale choice after another apply.
    pub if_in_force: Option<(std::path::PathBuf, String)>,
    /// The watcher applies (a changed manifest file, or drift).
    pub by_watcher: bool,
}

impl ApplyOptions {
    fn stop(&self) -> bool {
        self.interrupted.is_some_and(|f| f())
    }
}

/// Make the live state match `manifest`: the kernel first (links, then
/// nftables and sysctls), then the data plane through `engine` (called once
/// the kernel is verified; it returns the changes it made, as lines). If
/// any step fails, the kernel is reverted to the snapshot and the recorded
/// state is left as it was. An empty plan writes nothing to the kernel (no
/// netlink request, no nft transaction, no sysctl write).
pub async fn apply<F>(
    nl: &Netlink,
    sd: &StateDir,
    manifest: &Manifest,
    opts: ApplyOptions,
    engine: F,
) -> Result<Applied, ReconcileError>
where
    F: AsyncFnOnce() -> Result<Vec<String>, String>,
{
    let _lock = sd.lock()?;
    let name = manifest.name.as_str();
    let prior = sd.load(name)?;
    if let Some(p) = prior.as_ref().and_then(|s| s.pending_confirm.as_ref())
        && !opts.resolves_pending
    {
        return Err(ReconcileError::PendingConfirm {
            name: name.to_string(),
            deadline_ms: p.deadline_ms,
        });
    }
    if let Some((path, sha)) = &opts.if_in_force {
        let cur = prior.as_ref().and_then(|s| s.manifest.as_ref());
        if cur.is_none_or(|m| &m.path != path || &m.sha256 != sha) {
            return Ok(Applied::default());
        }
    }
    if opts.resolves_pending && prior.as_ref().is_none_or(|s| s.pending_confirm.is_none()) {
        // Confirmed (or reverted) while this revert waited for the lock.
        return Ok(Applied::default());
    }
    let owned_before = prior.as_ref().map(|s| s.owned.clone()).unwrap_or_default();
    let desired = Desired::from_manifest(manifest);
    let names = link_names(&desired, &owned_before);
    let before = observe(nl, &names).await?;
    let todo = plan(name, &desired, &before, &owned_before)?;
    // Planned and checked by nft before anything changes.
    let fw = plan_firewall(manifest, prior.as_ref())?;
    let record = ManifestRecord::of(manifest);

    // Record the intent before touching the kernel: the links, the chains
    // netman's rules may end up in, and the sysctl values about to change.
    let intent = owned_before.union(&Owned::from_desired(&desired));
    let fw_intent = fw.plan.touches_nft().then(|| {
        let mut r = fw.record.clone().unwrap_or_default();
        r.chains.extend(fw.desired.insert_chains());
        r
    });
    let mut saved = fw.saved.clone();
    if fw.desired.forwarding {
        for s in &fw.plan.sysctls {
            saved.entry(s.key.clone()).or_insert_with(|| s.from.clone());
        }
    }
    let changing = !todo.is_empty() || !fw.plan.is_empty();
    let mut st = prior.clone().unwrap_or_else(|| DeploymentState::new(name));
    if changing {
        st.owned = intent.clone();
        if fw_intent.is_some() {
            st.firewall = fw_intent.clone();
        }
        st.sysctls = saved.clone();
        st.in_progress = true;
        sd.save(&st)?;
    }

    let kernel = if todo.is_empty() {
        Ok(())
    } else {
        match nl.execute(name, &todo.actions, || opts.stop()).await {
            Ok(()) => verify(nl, name, &desired, &names, &intent).await,
            Err(errs) => Err(errs.iter().map(ToString::to_string).collect()),
        }
    };
    let mut fw_touched = false;
    let fw_outcome = match kernel {
        Ok(()) if opts.stop() => Err(vec!["interrupted by a signal".to_string()]),
        Ok(()) => {
            fw_touched = !fw.plan.is_empty();
            apply_firewall(name, &fw, &saved).map_err(|e| vec![e])
        }
        Err(e) => Err(e),
    };
    let outcome = match fw_outcome {
        Ok(_) if opts.stop() => Err(vec!["interrupted by a signal".to_string()]),
        Ok(fw_record) => engine()
            .await
            .map(|lines| (fw_record, lines))
            .map_err(|e| vec![e]),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((fw_record, engine)) => {
            let owned = Owned::from_desired(&desired);
            let sysctls = if fw.desired.forwarding {
                saved
            } else {
                BTreeMap::new()
            };
            let manifest_changed = st.manifest.as_ref() != Some(&record);
            let deadline =
                |t: std::time::Duration| now_unix_ms().saturating_add(t.as_millis() as u64);
            let pending = match opts.confirm_timeout {
                _ if opts.resolves_pending => None,
                Some(t) if manifest_changed || changing || !engine.is_empty() => {
                    Some(PendingConfirm {
                        deadline_ms: deadline(t),
                        previous: prior.as_ref().and_then(|p| p.manifest.clone()),
                    })
                }
                // The watcher applied this very file moments ago (the
                // operator saved it, then ran `apply --confirm-timeout`):
                // the timeout covers the watcher's change.
                Some(t) if st.applied_by_watcher && st.previous_manifest.is_some() => {
                    Some(PendingConfirm {
                        deadline_ms: deadline(t),
                        previous: st.previous_manifest.clone(),
                    })
                }
                _ => st.pending_confirm.clone(),
            };
            let by_watcher = if manifest_changed {
                opts.by_watcher
            } else {
                st.applied_by_watcher && opts.by_watcher
            };
            if changing
                || st.manifest.as_ref() != Some(&record)
                || st.in_progress
                || st.owned != owned
                || st.firewall != fw_record
                || st.sysctls != sysctls
                || st.pending_confirm != pending
                || (st.reverted_sha256.is_some() && st.manifest.as_ref() != Some(&record))
                || opts.resolves_pending
                || opts.no_watch.is_some_and(|v| v != st.no_watch)
                || st.applied_by_watcher != by_watcher
            {
                if manifest_changed {
                    st.previous_manifest = st.manifest.clone();
                }
                st.applied_by_watcher = by_watcher;
                st.reverted_sha256 = if opts.resolves_pending {
                    prior
                        .as_ref()
                        .and_then(|p| p.manifest.as_ref())
                        .map(|m| m.sha256.clone())
                } else if st.manifest.as_ref() == Some(&record) {
                    st.reverted_sha256.take()
                } else {
                    None
                };
                st.pending_confirm = pending;
                if let Some(v) = opts.no_watch {
                    st.no_watch = v;
                }
                st.owned = owned;
                st.firewall = fw_record;
                st.sysctls = sysctls;
                st.manifest = Some(record);
                st.applied_at = Some(crate::clock::now_unix_secs());
                st.in_progress = false;
                sd.save(&st)?;
            }
            Ok(Applied {
                kernel: todo,
                firewall: fw.plan,
                engine,
            })
        }
        Err(errors) => {
            let mut revert_errors = Vec::new();
            if !fw_touched {
                // nftables and sysctls were not touched: forget the intent.
                st.firewall = fw.record.clone();
                st.sysctls = fw.saved.clone();
            } else {
                match firewall::revert(
                    name,
                    &fw.desired,
                    &fw.before,
                    fw.record.as_ref(),
                    fw_intent.as_ref().or(fw.record.as_ref()),
                    &saved,
                ) {
                    Ok(rec) => {
                        st.firewall = rec;
                        st.sysctls = fw.saved.clone();
                    }
                    Err(errs) => revert_errors.extend(errs),
                }
            }
            let reverted = if todo.is_empty() {
                Plan::default()
            } else {
                let target = desired_from_snapshot(&before, &owned_before, name);
                let (reverted, errs) = converge(nl, name, &target, &names, &intent).await;
                revert_errors.extend(errs);
                reverted
            };
            if changing {
                if !todo.is_empty() {
                    let after = observe(nl, &names).await?;
                    st.owned = intent.retain_existing(&after, name);
                }
                st.in_progress = false;
                st.manifest = prior.as_ref().and_then(|p| p.manifest.clone());
                st.applied_at = prior.as_ref().and_then(|p| p.applied_at);
                if prior.is_none()
                    && st.owned.is_empty()
                    && st.firewall.is_none()
                    && st.sysctls.is_empty()
                {
                    sd.remove(name)?;
                } else {
                    sd.save(&st)?;
                }
            }
            Err(ReconcileError::Failed(Failure {
                errors,
                revert_errors,
                reverted,
                firewall_reverted: fw_touched,
            }))
        }
    }
}

/// Carry out the firewall plan (one nft transaction, then the sysctls) and
/// verify it; returns the record of what is now in place.
fn apply_firewall(
    name: &str,
    fw: &FirewallPlanned,
    saved: &BTreeMap<String, String>,
) -> Result<Option<firewall::Record>, String> {
    let observed = if fw.plan.is_empty() {
        fw.before.clone()
    } else {
        firewall::execute(&fw.script, &fw.plan.sysctls).map_err(|e| e.to_string())?;
        let record = fw.record.clone().map(|mut r| {
            r.chains.extend(fw.desired.insert_chains());
            r
        });
        firewall::observe(name, &fw.desired, record.as_ref(), saved)
            .map_err(|e| format!("verification failed: {e}"))?
    };
    let new_record = firewall::record_after(&fw.desired, &observed)
        .map_err(|e| format!("verification failed: {e}"))?;
    let sysctls = if fw.desired.forwarding {
        saved.clone()
    } else {
        BTreeMap::new()
    };
    match firewall::plan(name, &fw.desired, &observed, new_record.as_ref(), &sysctls) {
        Ok(p) if p.is_empty() => Ok(new_record),
        Ok(p) => Err(format!(
            "verification failed: after applying, the firewall still differs:\n{}",
            p.to_string().trim_end()
        )),
        Err(e) => Err(format!("verification failed: {e}")),
    }
}

/// Re-observe and check that nothing is left to do.
async fn verify(
    nl: &Netlink,
    name: &str,
    desired: &Desired,
    names: &BTreeSet<String>,
    owned: &Owned,
) -> Result<(), Vec<String>> {
    let after = observe(nl, names).await.map_err(|e| vec![e.to_string()])?;
    match plan(name, desired, &after, owned) {
        Ok(p) if p.is_empty() => Ok(()),
        Ok(p) => Err(vec![format!(
            "verification failed: after applying, the kernel still differs:\n{}",
            p.to_string().trim_end()
        )]),
        Err(e) => Err(vec![format!("verification failed: {e}")]),
    }
}

/// Best effort: plan towards `target` and carry it out, continuing past
/// failures. Returns what was planned and the errors met.
async fn converge(
    nl: &Netlink,
    name: &str,
    target: &Desired,
    names: &BTreeSet<String>,
    owned: &Owned,
) -> (Plan, Vec<String>) {
    let now = match observe(nl, names).await {
        Ok(o) => o,
        Err(e) => return (Plan::default(), vec![e.to_string()]),
    };
    let p = match plan(name, target, &now, owned) {
        Ok(p) => p,
        Err(e) => return (Plan::default(), vec![e.to_string()]),
    };
    let mut errors = Vec::new();
    // One action at a time, so that one failure does not stop the rest.
    for a in &p.actions {
        if let Err(errs) = nl.execute(name, std::slice::from_ref(a), || false).await {
            errors.extend(errs.iter().map(ToString::to_string));
        }
    }
    (p, errors)
}

/// What `down` removed: the link actions and the firewall changes.
#[derive(Debug, Default)]
pub struct Removed {
    pub kernel: Plan,
    pub firewall: firewall::Plan,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kernel, self.firewall)
    }
}

/// Remove everything deployment `name` created, from the recorded state
/// alone (no manifest, no DNS): its links, its nftables table and inserted
/// rules, and the sysctls it changed (restored). Returns what was done.
pub async fn down<F>(
    nl: &Netlink,
    sd: &StateDir,
    name: &str,
    stop_engine: F,
) -> Result<Removed, ReconcileError>
where
    F: FnOnce() -> Result<(), String>,
{
    let _lock = sd.lock()?;
    let Some(mut st) = sd.load(name)? else {
        return Err(ReconcileError::UnknownDeployment(name.to_string()));
    };
    stop_engine().map_err(|e| ReconcileError::DownFailed(vec![e]))?;
    let names = link_names(&Desired::default(), &st.owned);
    let before = observe(nl, &names).await?;
    for (link, obs) in &before.links {
        for r in &obs.foreign_routes {
            if let ipnet::IpNet::V6(v6) = r.dst
                && v6.addr().is_unicast_link_local()
            {
                continue;
            }
            if obs.addresses.iter().any(|a| a.trunc() == r.dst) {
                continue; // the kernel's own connected route
            }
            tracing::warn!(
                "route {r} dev {link} was not created by netman; it goes away with the link"
            );
        }
    }
    let (done, mut errors) = converge(nl, name, &Desired::default(), &names, &st.owned).await;
    let mut fw_done = firewall::Plan::default();
    if st.firewall.is_some() || !st.sysctls.is_empty() {
        match down_firewall(name, st.firewall.as_ref(), &st.sysctls) {
            Ok(p) => {
                fw_done = p;
                st.firewall = None;
                st.sysctls.clear();
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let after = observe(nl, &names).await?;
    let remaining = st.owned.retain_existing(&after, name);
    if remaining.is_empty() && errors.is_empty() {
        sd.remove(name)?;
        Ok(Removed {
            kernel: done,
            firewall: fw_done,
        })
    } else {
        st.owned = remaining;
        st.in_progress = false;
        sd.save(&st)?;
        Err(ReconcileError::DownFailed(errors))
    }
}

/// Remove netman's table and inserted rules (one nft transaction) and
/// restore the recorded sysctls.
fn down_firewall(
    name: &str,
    record: Option<&firewall::Record>,
    saved: &BTreeMap<String, String>,
) -> Result<firewall::Plan, FirewallError> {
    let nothing = firewall::Desired::default();
    let observed = firewall::observe(name, &nothing, record, saved)?;
    let p = firewall::plan(name, &nothing, &observed, record, saved)?;
    let script = firewall::script(name, &nothing, &p);
    firewall::execute(&script, &p.sysctls)?;
    Ok(p)
}
