//! The binary's edge: parse the command line, run the command, turn the
//! outcome into output and an exit code. Everything a command does lives
//! in the library (`deploy`, `reconcile`, `engine`, `manifest`); how its
//! output looks lives in `netman::cli`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Parser;

use netman::cli::diff::DiffReport;
use netman::cli::exit::{self, DIFF_CHANGES, DIFF_ERROR, FAILED, INVALID, OK};
use netman::cli::log::{self, ERR, NOTICE, WARNING, report};
use netman::cli::signals::{interrupted, revert_on_signals};
use netman::cli::validate::{self, Severity};
use netman::cli::{Cli, Command, ConfirmWhen, GraphFormat, Output, SchemaKind, ValidateOutput};
use netman::clock;
use netman::deploy::{self, DeployError, EngineStep};
use netman::engine::config::EngineConfig;
use netman::engine::control::{ControlError, Request, Response};
use netman::engine::{self};
use netman::keys;
use netman::link::netlink::Netlink;
use netman::manifest::{self, Manifest};
use netman::network;
use netman::reconcile::{self, ApplyOptions, ReconcileError};
use netman::state::StateDir;
use netman::watch;

/// `eprintln!` for errors, in the log format.
macro_rules! report_err {
    ($($arg:tt)*) => {
        report(ERR, &format!($($arg)*))
    };
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`netman status | head`), like other
    // command-line tools, instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    log::init(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_err!("netman: {e}");
            ExitCode::from(FAILED)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("start async runtime: {e}"))
}

/// Load and validate a manifest, or a network file's manifest for this
/// gateway's site (`site`, else by the local private key), printing every
/// error; `None` if invalid.
///
/// With a state dir that exists and is safe to use (see
/// [`StateDir::check`]: not a link, root's, not open to others), validated
/// site manifests are cached there by content hash (`<state-dir>/cache/`),
/// so re-applying or diffing an unchanged large manifest does not parse it
/// again. Nothing is written into any other. Network files are not cached
/// (the site chosen depends on the local key).
fn load_manifest(path: &Path, site: Option<&str>, state_dir: &Path) -> Option<Manifest> {
    let network_file = || manifest::read_text(path).is_ok_and(|t| network::is_network(&t));
    let loaded =
        if site.is_none() && matches!(StateDir::at(state_dir).check(), Ok(true)) && !network_file()
        {
            manifest::load_cached(path, &StateDir::at(state_dir).cache_dir())
                .map_err(network::LoadError::Invalid)
        } else {
            network::load_manifest(path, site)
        };
    match loaded {
        Ok(m) => {
            report_warnings(&m);
            Some(m)
        }
        Err(errs) => {
            report_err!("{errs}");
            None
        }
    }
}

/// The manifest's warnings (legal but suspicious values), on stderr.
fn report_warnings(m: &Manifest) {
    for w in &m.warnings {
        report(WARNING, &w.warning());
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { files, output } => {
            let mut ok = true;
            for r in validate::validate_all(&files) {
                ok &= r.valid.is_some();
                for finding in &r.findings {
                    match output {
                        ValidateOutput::Github => println!("{}", finding.github()),
                        ValidateOutput::Text => report(
                            match finding.severity {
                                Severity::Error => ERR,
                                Severity::Warning => WARNING,
                            },
                            &finding.text(),
                        ),
                    }
                }
                if let Some(v) = r.valid {
                    println!("{v}");
                }
            }
            Ok(if ok { OK } else { INVALID })
        }
        Command::Render { file, site } => match validate::render(&file, &site) {
            Ok((text, warnings)) => {
                for w in &warnings {
                    report(WARNING, &w.text());
                }
                print!("{text}");
                Ok(OK)
            }
            Err(e) => {
                report_err!("{e}");
                Ok(INVALID)
            }
        },
        Command::Graph {
            file,
            format,
            live,
            site,
        } => Ok(graph(&cli.state_dir, &file, format, live, site.as_deref())),
        Command::Diff { file, site, output } => {
            Ok(
                diff(&cli.state_dir, file, site.as_deref(), output).unwrap_or_else(|e| {
                    report_err!("netman: {e}");
                    DIFF_ERROR
                }),
            )
        }
        Command::Apply {
            file,
            site,
            confirm_timeout,
            confirm_when,
            no_watch,
        } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let Some(m) = load_manifest(&file, site.as_deref(), &cli.state_dir) else {
                return Ok(INVALID);
            };
            revert_on_signals();
            if let Some(code) = settle_pending(&sd, &m.name)? {
                return Ok(code);
            }
            let health = (confirm_when == ConfirmWhen::Healthy).then(|| {
                let before = match engine::request(&sd, &m.name, &Request::Status) {
                    Ok(Response::Status(s)) => Some(s.peers),
                    _ => None,
                };
                netman::health::gate(&m, before.as_deref(), clock::now_unix_ms())
            });
            let opts = ApplyOptions {
                confirm_timeout: confirm_timeout.map(Duration::from_secs),
                health,
                no_watch: Some(no_watch),
                interrupted: Some(interrupted),
                ..ApplyOptions::default()
            };
            let code = apply(&sd, &m, EngineStep::Detached, opts)?;
            if code == OK {
                // Let the watcher see a new pending confirmation at once.
                let _ = engine::request(&sd, &m.name, &Request::Poke);
                if let Ok(Some(st)) = sd.load(&m.name)
                    && let Some(p) = st.pending_confirm
                    && let Some(gate) = &p.health
                {
                    return wait_for_health(&sd, &m, gate.since_ms, p.deadline_ms);
                }
                if let Ok(Some(st)) = sd.load(&m.name)
                    && let Some(p) = st.pending_confirm
                {
                    println!(
                        "run `netman confirm {}` within {} s to keep this configuration; otherwise it is reverted",
                        m.name,
                        p.deadline_ms
                            .saturating_sub(clock::now_unix_ms())
                            .div_ceil(1000)
                    );
                }
            }
            Ok(code)
        }
        Command::Confirm { name } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let name = resolve_deployment(&sd, name.as_deref(), None)?;
            if deploy::confirm(&sd, &name)? {
                let _ = engine::request(&sd, &name, &Request::Poke);
                println!("confirmed: deployment {name} keeps its configuration");
                Ok(OK)
            } else {
                report_err!(
                    "netman: nothing to confirm for deployment {name}: no apply is waiting (it may already have been reverted)"
                );
                Ok(FAILED)
            }
        }
        Command::Run {
            file,
            site,
            no_watch,
        } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let Some(m) = load_manifest(&file, site.as_deref(), &cli.state_dir) else {
                return Ok(INVALID);
            };
            if let Some(pid) = engine::running_pid(&sd, &m.name) {
                bail!(
                    "the engine of deployment {} is already running (pid {pid}); use `netman apply` to update it or `netman down` first",
                    m.name
                );
            }
            let opts = ApplyOptions {
                no_watch: Some(no_watch),
                ..ApplyOptions::default()
            };
            let code = apply(&sd, &m, EngineStep::Skip, opts)?;
            if code != OK {
                return Ok(code);
            }
            let mut cfg = deploy::engine_config(&m)?;
            cfg.watch = deploy::watching(&sd, &m, Some(no_watch));
            engine::serve(&sd, cfg, watch::ready_hook())?;
            Ok(OK)
        }
        Command::Engine { name } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let cfg = engine::read_config(&sd, &name)?;
            engine::serve(&sd, cfg, watch::ready_hook())?;
            Ok(OK)
        }
        Command::Down { target, site } => {
            let sd = StateDir::at(&cli.state_dir);
            let name = resolve_deployment(&sd, target.as_deref(), site.as_deref())?;
            let rt = runtime()?;
            let result = rt.block_on(async {
                let nl = Netlink::connect()?;
                reconcile::down(&nl, &sd, &name, || {
                    if deploy::stop_engine(&sd, &name, EngineStep::Detached)? {
                        println!("- engine {name}");
                    }
                    Ok::<(), deploy::EngineStepError>(())
                })
                .await
            });
            match result {
                Ok(plan) => {
                    print!("{plan}");
                    println!("down: deployment {name}");
                    Ok(OK)
                }
                Err(e) => {
                    report_err!("netman: down {name}: {e}");
                    Ok(FAILED)
                }
            }
        }
        Command::Status { name, site, output } => status(&cli.state_dir, name, site, output),
        Command::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Manifest => manifest::json_schema(),
                SchemaKind::Network => netman::network::json_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(OK)
        }
        Command::Completions { shell } => {
            netman::cli::completions(shell, &mut std::io::stdout());
            Ok(OK)
        }
        Command::Man { command } => {
            netman::cli::man_page(command.as_deref(), &mut std::io::stdout())?;
            Ok(OK)
        }
        Command::Import {
            file,
            name,
            output_dir,
        } => import(&file, name.as_deref(), &output_dir),
        Command::Genkey => {
            let k = keys::generate_private_key().map_err(|e| anyhow!("read OS randomness: {e}"))?;
            println!("{}", k.to_base64().as_str());
            Ok(OK)
        }
        Command::Pubkey => {
            // A descriptor of its own: stdin's buffered reader would keep a
            // copy of the key in its buffer.
            use std::os::fd::AsFd;
            let fd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| anyhow!("read stdin: {e}"))?;
            let k = keys::read_private_key(std::fs::File::from(fd))
                .map_err(|e| anyhow!("read stdin: {e}"))?
                .ok_or_else(|| {
                    anyhow!(
                        "stdin is not a private key (44 base64 characters, as `wg genkey` prints)"
                    )
                })?;
            println!("{}", k.public_key().to_base64());
            Ok(OK)
        }
    }
}

/// `netman graph`: print the drawing, or say why there is none.
fn graph(state_dir: &Path, file: &Path, format: GraphFormat, live: bool, site: Option<&str>) -> u8 {
    match draw_graph(state_dir, file, format, live, site) {
        Ok(text) => {
            print!("{text}");
            OK
        }
        Err(e) => {
            // Like `render`: a file's findings as they are, else prefixed.
            if e.code() == INVALID {
                report_err!("{e}");
            } else {
                report_err!("netman: {e}");
            }
            e.code()
        }
    }
}

/// The drawing of network file `file`; with `live`, its local site's
/// tunnels as that site's running engine sees them.
fn draw_graph(
    state_dir: &Path,
    file: &Path,
    format: GraphFormat,
    live: bool,
    site: Option<&str>,
) -> Result<String, netman::cli::graph::GraphError> {
    use netman::cli::graph as g;
    let (net, warnings) = g::load(file)?;
    for w in &warnings {
        report(WARNING, &w.text());
    }
    if !live {
        return Ok(g::draw(&net, format, None));
    }
    let sd = StateDir::at(state_dir);
    let recorded = if site.is_some() {
        Vec::new()
    } else {
        sd.list()?
    };
    let local = g::local_site(&net, site, &recorded, state_dir)?;
    let name = net.sites.get(local).map_or("", |s| s.name.as_str());
    let engine = g::engine_view(&sd, name)?;
    let (view, warning) = g::live(&net, local, &engine, clock::now_unix_secs());
    if let Some(w) = warning {
        report(WARNING, &w);
    }
    Ok(g::draw(&net, format, Some(&view)))
}

/// `netman import`: wg-quick file → manifest + key files (written by
/// `netman::import`); reports what was written and whether it validates.
fn import(file: &Path, name: Option<&str>, dir: &Path) -> Result<u8> {
    let done = netman::import::import_file(file, name, dir)?;
    println!(
        "wrote {} (keys under {})",
        done.manifest_path.display(),
        done.keys_dir.display()
    );
    for n in &done.notes {
        report(WARNING, &format!("note: {n}"));
    }
    // The result must validate.
    match done.validation {
        Ok(_) => Ok(OK),
        Err(e) => {
            report_err!("{e}");
            Ok(INVALID)
        }
    }
}

/// If an apply waits for confirmation: revert it when its deadline has
/// passed (the engine that should have did not), or refuse to go on (and
/// make sure an engine runs to carry out the revert on time).
fn settle_pending(sd: &StateDir, name: &str) -> Result<Option<u8>> {
    let Some(p) = sd.load(name)?.and_then(|s| s.pending_confirm) else {
        return Ok(None);
    };
    if p.deadline_ms <= clock::now_unix_ms() {
        let rt = runtime()?;
        let r = rt.block_on(async {
            let nl = Netlink::connect().map_err(|e| anyhow!("{e}"))?;
            let reason = "its deadline passed without `netman confirm`".to_owned();
            deploy::resolve_pending(&nl, sd, name, EngineStep::Detached, true, Some(reason))
                .await
                .map_err(|e| anyhow!("{e}"))
        })?;
        if r.is_some() {
            println!(
                "reverted the unconfirmed apply of deployment {name} (its deadline had passed)"
            );
        }
        return Ok(None);
    }
    if engine::running_pid(sd, name).is_none()
        && let Ok(cfg) = engine::read_config(sd, name)
        && engine::spawn_detached(sd, &cfg).is_ok()
    {
        report(
            NOTICE,
            &format!("netman: restarted the engine of {name} so that it reverts on time"),
        );
    }
    report_err!(
        "netman: {}",
        ReconcileError::PendingConfirm {
            name: name.to_string(),
            deadline_ms: p.deadline_ms
        }
    );
    Ok(Some(FAILED))
}

/// `apply --confirm-when healthy`: wait for the engine's verdict on the
/// change on probation (it is the engine that confirms or reverts, also if
/// this command is interrupted). Exit 0 kept, 1 reverted.
fn wait_for_health(sd: &StateDir, m: &Manifest, since_ms: u64, deadline_ms: u64) -> Result<u8> {
    let secs = deadline_ms
        .saturating_sub(clock::now_unix_ms())
        .div_ceil(1000);
    println!(
        "waiting up to {secs} s for deployment {} to be healthy (`netman confirm {}` keeps it now)",
        m.name, m.name
    );
    // The engine reverts at the deadline; allow it a revert's time.
    let give_up = deadline_ms.saturating_add(30_000);
    loop {
        if interrupted() {
            report_err!(
                "netman: interrupted; the engine still confirms or reverts deployment {} by itself",
                m.name
            );
            return Ok(FAILED);
        }
        let st = sd.load(&m.name)?;
        let still = st
            .as_ref()
            .and_then(|s| s.pending_confirm.as_ref())
            .and_then(|p| p.health.as_ref())
            .is_some_and(|h| h.since_ms == since_ms);
        if !still {
            let Some(st) = st else {
                println!(
                    "reverted: deployment {} was not healthy in time and had no previous configuration; it was taken down",
                    m.name
                );
                return Ok(FAILED);
            };
            let reverted = st.reverted_sha256.as_deref() == Some(m.source.file_sha256())
                && st.manifest.as_ref().map(|r| r.sha256.as_str()) != Some(&m.source.sha256);
            if reverted {
                report_err!(
                    "netman: reverted deployment {}: {}",
                    m.name,
                    st.reverted_reason
                        .as_deref()
                        .unwrap_or("not healthy in time")
                );
                return Ok(FAILED);
            }
            println!(
                "confirmed: deployment {} is healthy and keeps its configuration",
                m.name
            );
            return Ok(OK);
        }
        if clock::now_unix_ms() > give_up {
            report_err!(
                "netman: deployment {}: the engine neither confirmed nor reverted the change in time (is it running? see `netman status`)",
                m.name
            );
            return Ok(FAILED);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Apply `m` and print what was done.
fn apply(sd: &StateDir, m: &Manifest, step: EngineStep<'_>, opts: ApplyOptions) -> Result<u8> {
    let rt = runtime()?;
    let result = rt.block_on(async {
        let nl = Netlink::connect().map_err(|e| DeployError::Reconcile(e.into()))?;
        deploy::apply(&nl, sd, m, step, opts).await
    });
    match result {
        Ok(done) if done.is_empty() => {
            println!("no changes");
            Ok(OK)
        }
        Ok(done) => {
            print!("{}{}", done.kernel, done.firewall);
            for line in &done.engine {
                println!("{line}");
            }
            println!("applied: deployment {}", m.name);
            Ok(OK)
        }
        Err(e) => {
            let (code, msg) = exit::apply_failure(&e);
            report_err!("{msg}");
            Ok(code)
        }
    }
}

fn diff(state_dir: &Path, file: Option<PathBuf>, site: Option<&str>, output: Output) -> Result<u8> {
    let sd = StateDir::at(state_dir);
    let m = match file {
        Some(f) => match load_manifest(&f, site, state_dir) {
            Some(m) => m,
            None => return Ok(DIFF_ERROR),
        },
        None => match last_applied(&sd) {
            Ok(m) => m,
            Err(e) => {
                report_err!("netman: {e}");
                return Ok(DIFF_ERROR);
            }
        },
    };
    let rt = runtime()?;
    let result = rt.block_on(async {
        let nl = Netlink::connect()?;
        reconcile::diff(&nl, &sd, &m).await
    });
    let plan = match result {
        Ok(p) => p,
        Err(e) => {
            report_err!("netman: {e}");
            return Ok(DIFF_ERROR);
        }
    };
    let engine = match EngineConfig::from_manifest(&m)
        .map_err(anyhow::Error::from)
        .and_then(|mut cfg| {
            cfg.watch = deploy::watching(&sd, &m, None);
            Ok(deploy::engine_diff(&sd, &cfg)?)
        }) {
        Ok(c) => c,
        Err(e) => {
            report_err!("netman: {e}");
            return Ok(DIFF_ERROR);
        }
    };
    // Why table and fwmark were chosen automatically (a full tunnel).
    let notes: Vec<String> = netman::link::model::Routing::of(&m)
        .note
        .into_iter()
        .collect();
    let report = DiffReport {
        deployment: &m.name,
        plan: &plan,
        engine: &engine,
        notes: &notes,
    };
    match output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report.json())?),
    }
    Ok(if report.in_sync() { OK } else { DIFF_CHANGES })
}

fn status(
    state_dir: &Path,
    name: Option<String>,
    site: Option<String>,
    output: Output,
) -> Result<u8> {
    let sd = StateDir::at(state_dir);
    let names = match (name, site) {
        (None, None) => sd.list()?,
        (name, site) => vec![resolve_deployment(&sd, name.as_deref(), site.as_deref())?],
    };
    let mut all = Vec::new();
    for n in &names {
        let st = match sd.load(n) {
            Ok(st) => st,
            Err(e) => {
                report_err!("netman: {e}");
                None
            }
        };
        let engine = match engine::request(&sd, n, &Request::Status) {
            Ok(Response::Status(s)) => Some(*s),
            Ok(_) | Err(ControlError::NotRunning(_)) => None,
            Err(e) => {
                report_err!("netman: deployment {n}: {e}");
                None
            }
        };
        if st.is_none() && engine.is_none() {
            bail!("no deployment named {n:?} in {}", sd.path().display());
        }
        all.push((n.clone(), st, engine));
    }
    match output {
        Output::Json => {
            let v = netman::cli::status::json(&all);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            let now = clock::now_unix_secs();
            for (i, (n, st, engine)) in all.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!(
                    "{}",
                    netman::cli::status::text(n, st.as_ref(), engine.as_ref(), now)
                );
            }
        }
    }
    Ok(OK)
}

/// The manifest recorded by the last apply of the only deployment.
fn last_applied(sd: &StateDir) -> Result<Manifest> {
    let name = resolve_deployment(sd, None, None)?;
    let st = sd
        .load(&name)?
        .ok_or_else(|| anyhow!("deployment {name} vanished from the state dir"))?;
    let rec = st
        .manifest
        .ok_or_else(|| anyhow!("deployment {name} has no completed apply yet"))?;
    rec.manifest()
        .map_err(|e| anyhow!("recorded manifest of {name}: {e}"))
}

/// Turn `down`'s or `status`'s argument into a deployment name: a
/// manifest file (its `name`), a network file (this gateway's site, by
/// `site` or by the local key), a deployment name, or nothing (the only
/// recorded deployment).
fn resolve_deployment(sd: &StateDir, target: Option<&str>, site: Option<&str>) -> Result<String> {
    match target {
        Some(t) => {
            let p = PathBuf::from(t);
            if p.is_file() {
                let m = network::load_manifest(&p, site).map_err(|e| anyhow!("{e}"))?;
                Ok(m.name)
            } else if site.is_some() {
                bail!("--site needs a network file, and {t:?} is not a file")
            } else {
                Ok(t.to_string())
            }
        }
        None if site.is_some() => bail!("--site needs a network file argument"),
        None => {
            let names = sd.list()?;
            match names.as_slice() {
                [one] => Ok(one.clone()),
                [] => bail!(
                    "no deployment is recorded in {}; nothing to do",
                    sd.path().display()
                ),
                many => bail!(
                    "several deployments are recorded in {}: {}; name one",
                    sd.path().display(),
                    many.join(", ")
                ),
            }
        }
    }
}
