//! Orchestration of a reconcile: observe → plan → apply → verify, with a
//! revert to the snapshot on any failure, and ownership recorded ahead of
//! every kernel change so a crash never leaves objects netman forgot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use crate::clock::now_unix_ms;
use crate::error::ErrorKind;
use crate::firewall::{self, FirewallError};
use crate::link::model::{Desired, Observed, Owned};
use crate::link::netlink::{Netlink, NetlinkError};
use crate::link::plan::{Plan, PlanErrors, plan};
use crate::manifest::Manifest;
use crate::manifest::error::ManifestErrors;
use crate::state::{DeploymentState, ManifestRecord, StateDir, StateError};

mod txn;

pub use txn::StepError;
use txn::{Transaction, converge};

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
    pub errors: Vec<StepError>,
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
            derived_from: m.source.derived_from.clone(),
        }
    }

    /// The recorded manifest, parsed again (with its network origin).
    pub fn manifest(&self) -> Result<Manifest, ManifestErrors> {
        let mut m = crate::manifest::parse(&self.text, &self.path)?;
        m.source.derived_from = self.derived_from.clone();
        Ok(m)
    }
}

impl ReconcileError {
    /// What kind of failure this is (for the watcher's back-off).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReconcileError::State(e) => e.kind(),
            ReconcileError::Netlink(e) => e.kind(),
            ReconcileError::Plan(e) => e.kind(),
            ReconcileError::Firewall(e) => e.kind(),
            ReconcileError::Failed(f) => f.kind(),
            ReconcileError::UnknownDeployment(_) => ErrorKind::Invalid,
            ReconcileError::PendingConfirm { .. } => ErrorKind::Busy,
            ReconcileError::DownFailed(_) => ErrorKind::Transient,
        }
    }
}

impl Failure {
    /// The gravest kind among the errors.
    pub fn kind(&self) -> ErrorKind {
        self.errors
            .iter()
            .map(StepError::kind)
            .fold(ErrorKind::Transient, ErrorKind::worst)
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
    /// With `confirm_timeout`: confirm by itself once this gate is passed.
    pub health: Option<crate::state::HealthGate>,
    /// This apply is an automatic revert (`resolves_pending`): why.
    pub revert_reason: Option<String>,
}

impl ApplyOptions {
    fn stop(&self) -> bool {
        self.interrupted.is_some_and(|f| f())
    }
}

/// Make the live state match `manifest`: the kernel first (links, then
/// nftables and sysctls), then the data plane through `engine` (called once
/// the kernel is verified; it returns the changes it made, as lines), as
/// one [`txn::Transaction`]. If any step fails, the kernel is reverted to
/// the snapshot and the recorded state is left as it was. An empty plan
/// writes nothing to the kernel (no netlink request, no nft transaction, no
/// sysctl write).
pub async fn apply<F, E>(
    nl: &Netlink,
    sd: &StateDir,
    manifest: &Manifest,
    opts: ApplyOptions,
    engine: F,
) -> Result<Applied, ReconcileError>
where
    F: AsyncFnOnce() -> Result<Vec<String>, E>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
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
    let mut tx = Transaction::begin(nl, sd, manifest, prior).await?;
    match tx.forward(&opts, engine).await {
        Ok((fw_record, lines)) => tx.commit(&opts, fw_record, lines),
        Err(errors) => Err(tx.rollback(errors).await),
    }
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
pub async fn down<F, E>(
    nl: &Netlink,
    sd: &StateDir,
    name: &str,
    stop_engine: F,
) -> Result<Removed, ReconcileError>
where
    F: FnOnce() -> Result<(), E>,
    E: fmt::Display,
{
    let _lock = sd.lock()?;
    let Some(mut st) = sd.load(name)? else {
        return Err(ReconcileError::UnknownDeployment(name.to_string()));
    };
    stop_engine().map_err(|e| ReconcileError::DownFailed(vec![e.to_string()]))?;
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
