//! Orchestration of a reconcile: observe → plan → apply → verify, with a
//! revert to the snapshot on any failure, and ownership recorded ahead of
//! every kernel change so a crash never leaves objects netman forgot.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::manifest::Manifest;
use crate::model::{Desired, Observed, Owned};
use crate::netlink::{Netlink, NetlinkError};
use crate::plan::{Plan, PlanErrors, desired_from_snapshot, plan};
use crate::state::{DeploymentState, ManifestRecord, StateDir, StateError};

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Plan(#[from] PlanErrors),
    #[error("{0}")]
    Failed(Failure),
    #[error("no deployment named {0:?} is recorded in the state dir")]
    UnknownDeployment(String),
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
        if self.revert_errors.is_empty() && self.reverted.is_empty() {
            write!(f, "\nnothing was changed")?;
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// The plan that would bring the live state to `manifest`, without
/// changing anything.
pub async fn diff(
    nl: &Netlink,
    sd: &StateDir,
    manifest: &Manifest,
) -> Result<Plan, ReconcileError> {
    let owned = sd
        .load(&manifest.name)?
        .map(|s| s.owned)
        .unwrap_or_default();
    let desired = Desired::from_manifest(manifest);
    let observed = observe(nl, &link_names(&desired, &owned)).await?;
    Ok(plan(&manifest.name, &desired, &observed, &owned)?)
}

/// What an apply did: the kernel actions and the engine changes (lines).
#[derive(Debug, Default)]
pub struct Applied {
    pub kernel: Plan,
    pub engine: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.engine.is_empty()
    }
}

/// Make the live state match `manifest`: the kernel first, then the data
/// plane through `engine` (called once the kernel is verified; it returns
/// the changes it made, as lines). If either step fails, the kernel is
/// reverted to the snapshot and the recorded state is left as it was.
/// An empty kernel plan writes nothing to the kernel.
pub async fn apply<F>(
    nl: &Netlink,
    sd: &StateDir,
    manifest: &Manifest,
    engine: F,
) -> Result<Applied, ReconcileError>
where
    F: AsyncFnOnce() -> Result<Vec<String>, String>,
{
    let _lock = sd.lock()?;
    let name = manifest.name.as_str();
    let prior = sd.load(name)?;
    let owned_before = prior.as_ref().map(|s| s.owned.clone()).unwrap_or_default();
    let desired = Desired::from_manifest(manifest);
    let names = link_names(&desired, &owned_before);
    let before = observe(nl, &names).await?;
    let todo = plan(name, &desired, &before, &owned_before)?;
    let record = ManifestRecord::of(manifest);

    // Record the intent before touching the kernel.
    let intent = owned_before.union(&Owned::from_desired(&desired));
    let mut st = prior.clone().unwrap_or_else(|| DeploymentState::new(name));
    if !todo.is_empty() {
        st.owned = intent.clone();
        st.in_progress = true;
        sd.save(&st)?;
    }

    let kernel = if todo.is_empty() {
        Ok(())
    } else {
        match nl.execute(name, &todo.actions, |_| {}).await {
            Ok(()) => verify(nl, name, &desired, &names, &intent).await,
            Err(errs) => Err(errs.iter().map(ToString::to_string).collect()),
        }
    };
    let outcome = match kernel {
        Ok(()) => engine().await.map_err(|e| vec![e]),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(engine) => {
            let owned = Owned::from_desired(&desired);
            if !todo.is_empty()
                || st.manifest.as_ref() != Some(&record)
                || st.in_progress
                || st.owned != owned
            {
                st.owned = owned;
                st.manifest = Some(record);
                st.applied_at = Some(now_unix());
                st.in_progress = false;
                sd.save(&st)?;
            }
            Ok(Applied {
                kernel: todo,
                engine,
            })
        }
        Err(errors) => {
            let (reverted, revert_errors) = if todo.is_empty() {
                (Plan::default(), Vec::new())
            } else {
                let target = desired_from_snapshot(&before, &owned_before, name);
                converge(nl, name, &target, &names, &intent).await
            };
            if !todo.is_empty() {
                let after = observe(nl, &names).await?;
                st.owned = intent.retain_existing(&after, name);
                st.in_progress = false;
                st.manifest = prior.as_ref().and_then(|p| p.manifest.clone());
                st.applied_at = prior.as_ref().and_then(|p| p.applied_at);
                if prior.is_none() && st.owned.is_empty() {
                    sd.remove(name)?;
                } else {
                    sd.save(&st)?;
                }
            }
            Err(ReconcileError::Failed(Failure {
                errors,
                revert_errors,
                reverted,
            }))
        }
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
        if let Err(errs) = nl.execute(name, std::slice::from_ref(a), |_| {}).await {
            errors.extend(errs.iter().map(ToString::to_string));
        }
    }
    (p, errors)
}

/// Remove everything deployment `name` created, from the recorded state
/// alone (no manifest, no DNS). Returns what was done.
pub async fn down<F>(
    nl: &Netlink,
    sd: &StateDir,
    name: &str,
    stop_engine: F,
) -> Result<Plan, ReconcileError>
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
    let (done, errors) = converge(nl, name, &Desired::default(), &names, &st.owned).await;
    let after = observe(nl, &names).await?;
    let remaining = st.owned.retain_existing(&after, name);
    if remaining.is_empty() && errors.is_empty() {
        sd.remove(name)?;
        Ok(done)
    } else {
        st.owned = remaining;
        st.in_progress = false;
        sd.save(&st)?;
        Err(ReconcileError::DownFailed(errors))
    }
}
