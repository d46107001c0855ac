//! One apply of a manifest, end to end: the engine configuration (endpoints
//! resolved, key files checked) before anything changes, then
//! [`reconcile::apply`] with the engine step. Shared by the CLI (`apply`,
//! `run`, `confirm`) and the running engine's watcher, so both do exactly
//! the same thing.

use thiserror::Error;

use crate::engine::config::{ConfigError, EngineChange, EngineConfig};
use crate::engine::control::{ControlError, Request, Response};
use crate::engine::{self, CtxError, EngineCtx, ServeError};
use crate::error::ErrorKind;
use crate::link::netlink::Netlink;
use crate::manifest::Manifest;
use crate::reconcile::{self, Applied, ApplyOptions, ReconcileError};
use crate::state::{StateDir, StateError};

/// How the data plane is brought to the manifest's configuration.
#[derive(Clone, Copy)]
pub enum EngineStep<'a> {
    /// Reconfigure the detached engine through its control socket, or start
    /// it if none runs (`netman apply`).
    Detached,
    /// Leave the engine alone (`netman run` starts it in-process after).
    Skip,
    /// The engine of this very process (the watcher).
    InProcess(&'a EngineCtx),
}

/// Why the engine step of an apply (or a stop) failed.
#[derive(Debug, Error)]
pub enum EngineStepError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Start(#[from] ServeError),
    #[error(transparent)]
    InProcess(#[from] CtxError),
    #[error("engine: unexpected answer {0}")]
    Unexpected(String),
}

#[derive(Debug, Error)]
pub enum DeployError {
    /// The manifest cannot work (endpoint, key file): nothing was changed.
    #[error("nothing applied: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("recorded manifest of deployment {name}: {reason}")]
    Recorded { name: String, reason: String },
}

impl DeployError {
    /// What kind of failure this is: the watcher backs off by it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeployError::Config(e) => e.kind(),
            DeployError::Reconcile(e) => e.kind(),
            DeployError::Recorded { .. } => ErrorKind::Invalid,
        }
    }
}

/// The engine configuration of `m`, with its key files read and checked.
pub fn engine_config(m: &Manifest) -> Result<EngineConfig, ConfigError> {
    let cfg = EngineConfig::from_manifest(m)?;
    check_declared_key(m, &cfg.load_keys()?)?;
    Ok(cfg)
}

/// The private key file's public key must be `interface.public_key`, when
/// the manifest declares one (a network file's derived manifests do).
fn check_declared_key(
    m: &Manifest,
    keys: &crate::engine::config::LoadedKeys,
) -> Result<(), ConfigError> {
    let actual = keys.private.public_key();
    match m.interface.public_key {
        Some(declared) if declared != actual => Err(ConfigError::DeclaredKey {
            file: m.interface.private_key_file.display().to_string(),
            actual: actual.to_base64(),
            declared: declared.to_base64(),
        }),
        _ => Ok(()),
    }
}

/// Whether the engine of `m` watches: the manifest's `watch`, unless
/// `--no-watch` was given now (`Some(true)`) or recorded by the last apply
/// that said anything (`None`: ask the state file).
pub fn watching(sd: &StateDir, m: &Manifest, no_watch: Option<bool>) -> bool {
    let no_watch =
        no_watch.unwrap_or_else(|| sd.load(&m.name).ok().flatten().is_some_and(|s| s.no_watch));
    m.watch && !no_watch
}

/// Apply `m` (see the module docs).
pub async fn apply(
    nl: &Netlink,
    sd: &StateDir,
    m: &Manifest,
    step: EngineStep<'_>,
    opts: ApplyOptions,
) -> Result<Applied, DeployError> {
    let mut cfg = match step {
        // The watcher's re-apply: a name the engine follows keeps the
        // address it uses, without a lookup (its resolver keeps that
        // current and reports errors).
        EngineStep::InProcess(engine) => {
            let cfg = EngineConfig::from_manifest_with(m, &|k, n| engine.last_endpoint(k, n))?;
            check_declared_key(m, &cfg.load_keys()?)?;
            cfg
        }
        _ => engine_config(m)?,
    };
    cfg.watch = watching(sd, m, opts.no_watch);
    let applied = reconcile::apply(nl, sd, m, opts, async || -> Result<_, EngineStepError> {
        let changes = match step {
            EngineStep::Skip => return Ok(Vec::new()),
            EngineStep::Detached => push_engine(sd, &cfg)?,
            EngineStep::InProcess(engine) => engine.configure(cfg.clone(), false)?,
        };
        Ok(changes.iter().map(ToString::to_string).collect())
    })
    .await?;
    Ok(applied)
}

/// Bring the detached engine to `cfg`: configure it in place, or start it.
pub fn push_engine(
    sd: &StateDir,
    cfg: &EngineConfig,
) -> Result<Vec<EngineChange>, EngineStepError> {
    let req = Request::Configure {
        config: cfg.clone(),
        dry_run: false,
    };
    match engine::request(sd, &cfg.deployment, &req) {
        Ok(Response::Configured { changes }) => Ok(changes),
        Ok(other) => Err(EngineStepError::Unexpected(format!("{other:?}"))),
        Err(ControlError::NotRunning(_)) => {
            engine::spawn_detached(sd, cfg)?;
            Ok(vec![engine::start_change(&cfg.deployment)])
        }
        Err(e) => Err(e.into()),
    }
}

/// What the engine would change to reach `cfg` (a dry run), or its start
/// if none runs.
pub fn engine_diff(
    sd: &StateDir,
    cfg: &EngineConfig,
) -> Result<Vec<EngineChange>, EngineStepError> {
    let req = Request::Configure {
        config: cfg.clone(),
        dry_run: true,
    };
    match engine::request(sd, &cfg.deployment, &req) {
        Ok(Response::Configured { changes }) => Ok(changes),
        Ok(other) => Err(EngineStepError::Unexpected(format!("{other:?}"))),
        Err(ControlError::NotRunning(_)) => Ok(vec![engine::start_change(&cfg.deployment)]),
        Err(e) => Err(e.into()),
    }
}

/// What resolving a pending confirmation did.
pub enum Resolved {
    /// The previous manifest is in force again.
    Reverted(Applied),
    /// There was no previous manifest: the deployment was taken down.
    TakenDown,
}

/// Undo an unconfirmed `apply --confirm-timeout` whose deadline has passed:
/// re-apply the manifest that was in force before it, or take the
/// deployment down if there was none. `None` when nothing is pending (or
/// not yet due, unless `force`).
pub async fn resolve_pending(
    nl: &Netlink,
    sd: &StateDir,
    name: &str,
    step: EngineStep<'_>,
    force: bool,
    reason: Option<String>,
) -> Result<Option<Resolved>, DeployError> {
    let Some(st) = sd.load(name).map_err(ReconcileError::from)? else {
        return Ok(None);
    };
    let Some(p) = st.pending_confirm else {
        return Ok(None);
    };
    if !force && p.deadline_ms > crate::clock::now_unix_ms() {
        return Ok(None);
    }
    match p.previous {
        Some(rec) => {
            let m = rec.manifest().map_err(|e| DeployError::Recorded {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
            let opts = ApplyOptions {
                resolves_pending: true,
                revert_reason: reason,
                ..ApplyOptions::default()
            };
            Ok(Some(Resolved::Reverted(
                apply(nl, sd, &m, step, opts).await?,
            )))
        }
        None => {
            reconcile::down(nl, sd, name, || stop_engine(sd, name, step).map(drop)).await?;
            Ok(Some(Resolved::TakenDown))
        }
    }
}

/// `netman confirm`: keep the configuration of an apply made with
/// `--confirm-timeout`. Whether one was waiting (`false`: nothing to
/// confirm, it may already have been reverted).
pub fn confirm(sd: &StateDir, name: &str) -> Result<bool, StateError> {
    confirm_if(sd, name, |_| true)
}

/// Confirm by health: keep the configuration waiting for confirmation if
/// it is still the one whose gate was passed (`since_ms`: another apply
/// may have replaced it meanwhile). Whether it was confirmed.
pub fn confirm_healthy(sd: &StateDir, name: &str, since_ms: u64) -> Result<bool, StateError> {
    confirm_if(sd, name, |p| {
        p.health.as_ref().is_some_and(|h| h.since_ms == since_ms)
    })
}

/// Clear the pending confirmation of `name` if there is one and `which`
/// says it is the one to confirm, under the state dir's lock.
fn confirm_if(
    sd: &StateDir,
    name: &str,
    which: impl FnOnce(&crate::state::PendingConfirm) -> bool,
) -> Result<bool, StateError> {
    let _lock = sd.lock()?;
    match sd.load(name)? {
        Some(mut st) if st.pending_confirm.as_ref().is_some_and(which) => {
            st.pending_confirm = None;
            sd.save(&st)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Stop the engine of `name` (for `down`) and forget its files. Whether
/// an engine was running (and is stopped now).
pub fn stop_engine(
    sd: &StateDir,
    name: &str,
    step: EngineStep<'_>,
) -> Result<bool, EngineStepError> {
    let stopped = match step {
        EngineStep::InProcess(engine) => {
            engine.stop()?;
            true
        }
        EngineStep::Detached | EngineStep::Skip => engine::stop(sd, name)?,
    };
    let _ = std::fs::remove_file(sd.engine_config(name));
    let _ = std::fs::remove_file(sd.engine_log(name));
    Ok(stopped)
}
