//! An apply as a transaction (nmstate's checkpoint pattern): the snapshot
//! and both plans are made and checked first ([`Transaction::begin`]), the
//! intent is recorded in the state file before the kernel is touched, then
//! each step runs in order — links (rtnetlink), firewall (one nft
//! transaction and the sysctls), engine — and is verified. Every step that
//! started is undone in reverse order if a later one fails
//! ([`Transaction::rollback`]); only [`Transaction::commit`] records the
//! new state. There is no way out of [`Transaction::forward`] but its
//! result: a kernel error, a failed verification, an nft error, the engine
//! or a signal all come back as [`StepError`]s for the rollback.
//!
//! The guard: a transaction dropped with neither commit nor rollback (a
//! panic, or an error saving the state file) leaves the intent recorded
//! with `in_progress` set, so the next apply or `down` still knows every
//! object it may have created; its `Drop` says so in the log.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;

use thiserror::Error;

use super::{
    Applied, ApplyOptions, Failure, FirewallPlanned, ReconcileError, link_names, observe,
    plan_firewall,
};
use crate::clock::now_unix_ms;
use crate::error::ErrorKind;
use crate::firewall::{self, FirewallError};
use crate::link::model::{Desired, Observed, Owned};
use crate::link::netlink::{Netlink, NetlinkError};
use crate::link::plan::{Plan, desired_from_snapshot, plan};
use crate::manifest::Manifest;
use crate::state::{ApplyOutcome, DeploymentState, ManifestRecord, StateDir};

/// Why one step of an apply failed.
#[derive(Debug, Error)]
pub enum StepError {
    /// A netlink request (or the observation before a verification).
    #[error(transparent)]
    Kernel(#[from] NetlinkError),
    /// The kernel does not show what was applied.
    #[error("verification failed: {0}")]
    Verify(String),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// The engine step (its error as the layer above reported it).
    #[error("{0}")]
    Engine(Box<dyn StdError + Send + Sync>),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl StepError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StepError::Kernel(e) => e.kind(),
            StepError::Firewall(e) => e.kind(),
            StepError::Verify(_) | StepError::Engine(_) | StepError::Interrupted => {
                ErrorKind::Transient
            }
        }
    }
}

/// The link step: the plan from the snapshot `before`, and what reverting
/// needs.
struct LinkStep {
    desired: Desired,
    names: BTreeSet<String>,
    before: Observed,
    owned_before: Owned,
    /// What the state file records while the step may be half done.
    intent: Owned,
    plan: Plan,
}

impl LinkStep {
    async fn apply(
        &self,
        nl: &Netlink,
        name: &str,
        opts: &ApplyOptions,
    ) -> Result<(), Vec<StepError>> {
        if self.plan.is_empty() {
            return Ok(());
        }
        match nl.execute(name, &self.plan.actions, || opts.stop()).await {
            Ok(()) => verify(nl, name, &self.desired, &self.names, &self.intent).await,
            Err(errs) => Err(errs.into_iter().map(StepError::from).collect()),
        }
    }

    /// Back to the snapshot: what was planned, and the errors met.
    async fn revert(&self, nl: &Netlink, name: &str) -> (Plan, Vec<String>) {
        let target = desired_from_snapshot(&self.before, &self.owned_before, name);
        converge(nl, name, &target, &self.names, &self.intent).await
    }
}

/// The firewall step: planned and checked by nft, with the sysctl values
/// to restore.
struct FirewallStep {
    planned: FirewallPlanned,
    /// The record while the step may be half done (`None`: nft untouched).
    intent: Option<firewall::Record>,
    /// Sysctl values found before netman changed them, with this apply's.
    saved: BTreeMap<String, String>,
}

impl FirewallStep {
    fn new(planned: FirewallPlanned) -> FirewallStep {
        let intent = planned.plan.touches_nft().then(|| {
            let mut r = planned.record.clone().unwrap_or_default();
            r.chains.extend(planned.desired.insert_chains());
            r
        });
        let mut saved = planned.saved.clone();
        if planned.desired.forwarding {
            for s in &planned.plan.sysctls {
                saved.entry(s.key.clone()).or_insert_with(|| s.from.clone());
            }
        }
        FirewallStep {
            planned,
            intent,
            saved,
        }
    }

    /// The sysctl values the state file keeps once this step is in force.
    fn sysctls_after(&self) -> BTreeMap<String, String> {
        if self.planned.desired.forwarding {
            self.saved.clone()
        } else {
            BTreeMap::new()
        }
    }

    /// Carry out the firewall plan (one nft transaction, then the sysctls)
    /// and verify it; the record of what is now in place.
    fn apply(&self, name: &str) -> Result<Option<firewall::Record>, StepError> {
        let fw = &self.planned;
        let observed = if fw.plan.is_empty() {
            fw.before.clone()
        } else {
            firewall::execute(&fw.script, &fw.plan.sysctls)?;
            let record = fw.record.clone().map(|mut r| {
                r.chains.extend(fw.desired.insert_chains());
                r
            });
            firewall::observe(name, &fw.desired, record.as_ref(), &self.saved)
                .map_err(verify_failed)?
        };
        let new_record = firewall::record_after(&fw.desired, &observed).map_err(verify_failed)?;
        match firewall::plan(
            name,
            &fw.desired,
            &observed,
            new_record.as_ref(),
            &self.sysctls_after(),
        ) {
            Ok(p) if p.is_empty() => Ok(new_record),
            Ok(p) => Err(StepError::Verify(format!(
                "after applying, the firewall still differs:\n{}",
                p.to_string().trim_end()
            ))),
            Err(e) => Err(verify_failed(e)),
        }
    }

    /// Back to the snapshot: the record of what is in place then.
    fn revert(&self, name: &str) -> Result<Option<firewall::Record>, Vec<String>> {
        let fw = &self.planned;
        firewall::revert(
            name,
            &fw.desired,
            &fw.before,
            fw.record.as_ref(),
            self.intent.as_ref().or(fw.record.as_ref()),
            &self.saved,
        )
    }
}

/// One apply in flight (see the module docs).
pub(super) struct Transaction<'a> {
    nl: &'a Netlink,
    sd: &'a StateDir,
    name: String,
    prior: Option<DeploymentState>,
    /// The state file's content as this transaction last wrote it (or
    /// found it).
    st: DeploymentState,
    record: ManifestRecord,
    links: LinkStep,
    firewall: FirewallStep,
    /// The intent was recorded (the kernel or firewall plan is not empty).
    changing: bool,
    /// The firewall step started (nft or sysctls may have changed).
    firewall_started: bool,
    finished: bool,
}

impl<'a> Transaction<'a> {
    /// Snapshot the kernel, plan both steps (nft checks its script), and
    /// record the intent: the links, the chains netman's rules may end up
    /// in, and the sysctl values about to change. Nothing in the kernel has
    /// changed when this fails.
    pub(super) async fn begin(
        nl: &'a Netlink,
        sd: &'a StateDir,
        manifest: &Manifest,
        prior: Option<DeploymentState>,
    ) -> Result<Transaction<'a>, ReconcileError> {
        let name = manifest.name.as_str();
        let owned_before = prior.as_ref().map(|s| s.owned.clone()).unwrap_or_default();
        let desired = Desired::from_manifest(manifest);
        let names = link_names(&desired, &owned_before);
        let before = observe(nl, &names).await?;
        let todo = plan(name, &desired, &before, &owned_before)?;
        let fw = FirewallStep::new(plan_firewall(manifest, prior.as_ref())?);
        let intent = owned_before.union(&Owned::from_desired(&desired));
        let changing = !todo.is_empty() || !fw.planned.plan.is_empty();
        let mut st = prior.clone().unwrap_or_else(|| DeploymentState::new(name));
        if changing {
            st.owned = intent.clone();
            if fw.intent.is_some() {
                st.firewall = fw.intent.clone();
            }
            st.sysctls = fw.saved.clone();
            st.in_progress = true;
            sd.save(&st)?;
        }
        Ok(Transaction {
            nl,
            sd,
            name: name.to_string(),
            prior,
            st,
            record: ManifestRecord::of(manifest),
            links: LinkStep {
                desired,
                names,
                before,
                owned_before,
                intent,
                plan: todo,
            },
            firewall: fw,
            changing,
            firewall_started: false,
            finished: false,
        })
    }

    /// Run the steps in order: links, firewall, then `engine` (its
    /// changes, as lines). The firewall record and the engine's lines, or
    /// every error of the step that failed.
    pub(super) async fn forward<F, E>(
        &mut self,
        opts: &ApplyOptions,
        engine: F,
    ) -> Result<(Option<firewall::Record>, Vec<String>), Vec<StepError>>
    where
        F: AsyncFnOnce() -> Result<Vec<String>, E>,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.links.apply(self.nl, &self.name, opts).await?;
        if opts.stop() {
            return Err(vec![StepError::Interrupted]);
        }
        self.firewall_started = !self.firewall.planned.plan.is_empty();
        let fw_record = self.firewall.apply(&self.name).map_err(|e| vec![e])?;
        if opts.stop() {
            return Err(vec![StepError::Interrupted]);
        }
        let lines = engine()
            .await
            .map_err(|e| vec![StepError::Engine(e.into())])?;
        Ok((fw_record, lines))
    }

    /// Every step succeeded: record the new state (if anything in it
    /// changed, see [`DeploymentState::record_apply`]).
    pub(super) fn commit(
        mut self,
        opts: &ApplyOptions,
        fw_record: Option<firewall::Record>,
        engine: Vec<String>,
    ) -> Result<Applied, ReconcileError> {
        let outcome = ApplyOutcome {
            manifest: self.record.clone(),
            owned: Owned::from_desired(&self.links.desired),
            firewall: fw_record,
            sysctls: self.firewall.sysctls_after(),
            changed: self.changing,
            engine_changed: !engine.is_empty(),
            confirm_deadline_ms: opts
                .confirm_timeout
                .map(|t| now_unix_ms().saturating_add(t.as_millis() as u64)),
            health: opts.health.clone(),
            revert_reason: opts.revert_reason.clone(),
            resolves_pending: opts.resolves_pending,
            no_watch: opts.no_watch,
            by_watcher: opts.by_watcher,
            now_secs: crate::clock::now_unix_secs(),
        };
        if self.st.record_apply(outcome) {
            // On an error here the guard below logs: the intent stays.
            self.sd.save(&self.st)?;
        }
        self.finished = true;
        Ok(Applied {
            kernel: std::mem::take(&mut self.links.plan),
            firewall: std::mem::take(&mut self.firewall.planned.plan),
            engine,
        })
    }

    /// A step failed with `errors`: undo every step that started, in
    /// reverse order (firewall, then links), and put the state file back
    /// to what is in force now.
    pub(super) async fn rollback(mut self, errors: Vec<StepError>) -> ReconcileError {
        self.finished = true;
        let name = self.name.clone();
        let mut revert_errors = Vec::new();
        if !self.firewall_started {
            // nftables and sysctls were not touched: forget the intent.
            self.st.firewall = self.firewall.planned.record.clone();
            self.st.sysctls = self.firewall.planned.saved.clone();
        } else {
            match self.firewall.revert(&name) {
                Ok(rec) => {
                    self.st.firewall = rec;
                    self.st.sysctls = self.firewall.planned.saved.clone();
                }
                Err(errs) => revert_errors.extend(errs),
            }
        }
        let reverted = if self.links.plan.is_empty() {
            Plan::default()
        } else {
            let (reverted, errs) = self.links.revert(self.nl, &name).await;
            revert_errors.extend(errs);
            reverted
        };
        if self.changing
            && let Err(e) = self.restore_record().await
        {
            return e;
        }
        ReconcileError::Failed(Failure {
            errors,
            revert_errors,
            reverted,
            firewall_reverted: self.firewall_started,
        })
    }

    /// After a rollback: the state file records what still exists, and
    /// the manifest that was in force before.
    async fn restore_record(&mut self) -> Result<(), ReconcileError> {
        let name = self.name.as_str();
        if !self.links.plan.is_empty() {
            let after = observe(self.nl, &self.links.names).await?;
            self.st.owned = self.links.intent.retain_existing(&after, name);
        }
        self.st.in_progress = false;
        self.st.manifest = self.prior.as_ref().and_then(|p| p.manifest.clone());
        self.st.applied_at = self.prior.as_ref().and_then(|p| p.applied_at);
        if self.prior.is_none()
            && self.st.owned.is_empty()
            && self.st.firewall.is_none()
            && self.st.sysctls.is_empty()
        {
            self.sd.remove(name)?;
        } else {
            self.sd.save(&self.st)?;
        }
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished && self.changing {
            tracing::error!(
                deployment = %self.name,
                "an apply ended without commit or revert; the state file keeps its intent (in progress), so the next apply or `netman down` finds every object it may have created"
            );
        }
    }
}

fn verify_failed(e: impl std::fmt::Display) -> StepError {
    StepError::Verify(e.to_string())
}

/// Re-observe and check that nothing is left to do.
async fn verify(
    nl: &Netlink,
    name: &str,
    desired: &Desired,
    names: &BTreeSet<String>,
    owned: &Owned,
) -> Result<(), Vec<StepError>> {
    let after = observe(nl, names).await.map_err(|e| vec![e.into()])?;
    match plan(name, desired, &after, owned) {
        Ok(p) if p.is_empty() => Ok(()),
        Ok(p) => Err(vec![StepError::Verify(format!(
            "after applying, the kernel still differs:\n{}",
            p.to_string().trim_end()
        ))]),
        Err(e) => Err(vec![StepError::Verify(e.to_string())]),
    }
}

/// Best effort: plan towards `target` and carry it out, continuing past
/// failures. Returns what was planned and the errors met.
pub(super) async fn converge(
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
