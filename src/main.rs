use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use netman::cli::{Cli, Command, LogFormat, Output};
use netman::clock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netman::deploy::{self, DeployError, EngineStep};
use netman::engine::config::EngineConfig;
use netman::engine::control::{ControlError, Request, Response};
use netman::engine::{self};
use netman::firewall::FirewallError;
use netman::keys;
use netman::manifest::{self, Manifest};
use netman::netlink::Netlink;
use netman::reconcile::{self, ApplyOptions, ReconcileError};
use netman::state::StateDir;
use netman::watch;

/// `eprintln!` for errors, in the log format.
macro_rules! report_err {
    ($($arg:tt)*) => {
        report(3, &format!($($arg)*))
    };
}

/// Exit codes: the table "Commands and exit codes" in docs/operations.md is
/// the contract.
const EXIT_OK: u8 = 0;
/// The command failed (`apply`: and was reverted). Never used by `diff`.
const EXIT_FAILED: u8 = 1;
/// The manifest is invalid.
const EXIT_INVALID: u8 = 2;
/// `diff`: the live state differs from the manifest.
const EXIT_DIFF_CHANGES: u8 = 1;
/// `diff`: it could not tell (any error, an invalid manifest included), so
/// a failing `diff` never reads as "changes pending".
const EXIT_DIFF_ERROR: u8 = 2;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`netman status | head`), like other
    // command-line tools, instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_err!("netman: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// How messages for the operator (errors, notes) are printed: set only
/// when asked for (`--log-format`) or when stderr goes to the journal
/// (`JOURNAL_STREAM`); a plain `netman validate` in a CI job keeps plain
/// `FILE:LINE:COL: ...` lines.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Print a message for the operator on stderr in the log format: as is
/// (human), with the syslog priority on every line (journald), or as one
/// JSON object (json).
fn report(priority: u8, msg: &str) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Journald) => {
            for line in msg.lines() {
                eprintln!("<{priority}>{line}");
            }
        }
        Some(LogFormat::Json) if priority <= 3 => tracing::error!(target: "netman", "{msg}"),
        Some(LogFormat::Json) => tracing::warn!(target: "netman", "{msg}"),
        _ => eprintln!("{msg}"),
    }
}

fn init_logging(verbose: u8, format: Option<LogFormat>) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("NETMAN_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let tty = std::io::stderr().is_terminal();
    let explicit = format;
    let format = format.unwrap_or(if tty {
        LogFormat::Human
    } else {
        LogFormat::Journald
    });
    if explicit.is_some() || std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = LOG_FORMAT.set(format);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(tty).try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
    };
}

/// systemd-journald's stderr convention: a `<N>` syslog priority prefix,
/// no timestamp (the journal adds its own), no colours.
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("start async runtime: {e}"))
}

/// Load and validate a manifest, printing every error; `None` if invalid.
///
/// With a state dir that exists and is safe to use (see
/// [`StateDir::check`]: not a link, root's, not open to others), validated
/// manifests are cached there by content hash (`<state-dir>/cache/`), so
/// re-applying or diffing an unchanged large manifest does not parse it
/// again. Nothing is written into any other.
fn load_manifest(path: &Path, state_dir: &Path) -> Option<Manifest> {
    let loaded = if matches!(StateDir::at(state_dir).check(), Ok(true)) {
        manifest::load_cached(path, &StateDir::at(state_dir).cache_dir())
    } else {
        manifest::load(path)
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
        report(4, &w.warning());
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on SIGINT and SIGTERM make a running apply stop and revert
/// what it had done, instead of killing the process half way.
fn revert_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { files } => {
            let mut ok = true;
            for f in &files {
                match manifest::load(f) {
                    Ok(m) => {
                        report_warnings(&m);
                        println!("{}: valid (deployment {})", f.display(), m.name);
                    }
                    Err(errs) => {
                        ok = false;
                        report_err!("{errs}");
                    }
                }
            }
            Ok(if ok { EXIT_OK } else { EXIT_INVALID })
        }
        Command::Diff { file, output } => {
            Ok(diff(&cli.state_dir, file, output).unwrap_or_else(|e| {
                report_err!("netman: {e}");
                EXIT_DIFF_ERROR
            }))
        }
        Command::Apply {
            file,
            confirm_timeout,
            no_watch,
        } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let Some(m) = load_manifest(&file, &cli.state_dir) else {
                return Ok(EXIT_INVALID);
            };
            revert_on_signals();
            if let Some(code) = settle_pending(&sd, &m.name)? {
                return Ok(code);
            }
            let opts = ApplyOptions {
                confirm_timeout: confirm_timeout.map(Duration::from_secs),
                no_watch: Some(no_watch),
                interrupted: Some(interrupted),
                ..ApplyOptions::default()
            };
            let code = apply(&sd, &m, EngineStep::Detached, opts)?;
            if code == EXIT_OK {
                // Let the watcher see a new pending confirmation at once.
                let _ = engine::request(&sd, &m.name, &Request::Poke);
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
            let name = resolve_deployment(&sd, name.as_deref())?;
            let confirmed = {
                let _lock = sd.lock()?;
                match sd.load(&name)? {
                    Some(mut st) if st.pending_confirm.is_some() => {
                        st.pending_confirm = None;
                        sd.save(&st)?;
                        true
                    }
                    _ => false,
                }
            };
            if confirmed {
                let _ = engine::request(&sd, &name, &Request::Poke);
                println!("confirmed: deployment {name} keeps its configuration");
                Ok(EXIT_OK)
            } else {
                report_err!(
                    "netman: nothing to confirm for deployment {name}: no apply is waiting (it may already have been reverted)"
                );
                Ok(EXIT_FAILED)
            }
        }
        Command::Run { file, no_watch } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let Some(m) = load_manifest(&file, &cli.state_dir) else {
                return Ok(EXIT_INVALID);
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
            if code != EXIT_OK {
                return Ok(code);
            }
            let mut cfg = deploy::engine_config(&m)?;
            cfg.watch = deploy::watching(&sd, &m, Some(no_watch));
            engine::serve(&sd, cfg, watch::ready_hook())?;
            Ok(EXIT_OK)
        }
        Command::Engine { name } => {
            let sd = StateDir::open(&cli.state_dir)?;
            let cfg = engine::read_config(&sd, &name)?;
            engine::serve(&sd, cfg, watch::ready_hook())?;
            Ok(EXIT_OK)
        }
        Command::Down { target } => {
            let sd = StateDir::at(&cli.state_dir);
            let name = resolve_deployment(&sd, target.as_deref())?;
            let rt = runtime()?;
            let result = rt.block_on(async {
                let nl = Netlink::connect()?;
                reconcile::down(&nl, &sd, &name, || {
                    if deploy::stop_engine(&sd, &name, EngineStep::Detached)? {
                        println!("- engine {name}");
                    }
                    Ok(())
                })
                .await
            });
            match result {
                Ok(plan) => {
                    print!("{plan}");
                    println!("down: deployment {name}");
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    report_err!("netman: down {name}: {e}");
                    Ok(EXIT_FAILED)
                }
            }
        }
        Command::Status { name, output } => status(&cli.state_dir, name, output),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&manifest::json_schema())?
            );
            Ok(EXIT_OK)
        }
        Command::Completions { shell } => {
            // clap_complete offers hidden subcommands too (clap-rs/clap#1335):
            // complete a copy of the CLI without them.
            let full = <Cli as clap::CommandFactory>::command();
            let mut cmd = clap::Command::new("netman")
                .version(env!("CARGO_PKG_VERSION"))
                .args(full.get_arguments().cloned())
                .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
            clap_complete::generate(shell, &mut cmd, "netman", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Man { command } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            if let Some(name) = command {
                // Built, so that the page is titled netman-NAME and its
                // synopsis reads `netman NAME ...` (and `help`, which
                // netman(1) lists too, exists).
                cmd.build();
                let sub = cmd
                    .get_subcommands()
                    .find(|c| c.get_name() == name && !c.is_hide_set())
                    .cloned();
                cmd = sub.ok_or_else(|| anyhow!("no subcommand {name:?} (see `netman --help`)"))?;
            }
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| anyhow!("write man page: {e}"))?;
            Ok(EXIT_OK)
        }
        Command::Import {
            file,
            name,
            output_dir,
        } => import(&file, name.as_deref(), &output_dir),
        Command::Genkey => {
            let k = keys::generate_private_key().map_err(|e| anyhow!("read OS randomness: {e}"))?;
            println!("{}", k.to_base64().as_str());
            Ok(EXIT_OK)
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
            Ok(EXIT_OK)
        }
    }
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
        report(4, &format!("note: {n}"));
    }
    // The result must validate.
    match done.validation {
        Ok(_) => Ok(EXIT_OK),
        Err(e) => {
            report_err!("{e}");
            Ok(EXIT_INVALID)
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
            deploy::resolve_pending(&nl, sd, name, EngineStep::Detached, true)
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
            5,
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
    Ok(Some(EXIT_FAILED))
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
            Ok(EXIT_OK)
        }
        Ok(done) => {
            print!("{}{}", done.kernel, done.firewall);
            for line in &done.engine {
                println!("{line}");
            }
            println!("applied: deployment {}", m.name);
            Ok(EXIT_OK)
        }
        Err(e @ DeployError::Config(_)) => {
            report_err!("netman: {e}");
            Ok(EXIT_FAILED)
        }
        Err(DeployError::Reconcile(e @ ReconcileError::Plan(_))) => {
            report_err!("netman: nothing applied: {e}");
            Ok(EXIT_FAILED)
        }
        // Found while planning, before anything changed. A rule nft
        // rejects makes the manifest invalid.
        Err(DeployError::Reconcile(ReconcileError::Firewall(e))) => {
            report_err!("netman: nothing applied: {e}");
            Ok(match e {
                FirewallError::Rejected(_) => EXIT_INVALID,
                _ => EXIT_FAILED,
            })
        }
        Err(DeployError::Reconcile(e @ ReconcileError::PendingConfirm { .. })) => {
            report_err!("netman: {e}");
            Ok(EXIT_FAILED)
        }
        Err(e) => {
            report_err!("netman: apply failed: {e}");
            Ok(EXIT_FAILED)
        }
    }
}

fn diff(state_dir: &Path, file: Option<PathBuf>, output: Output) -> Result<u8> {
    let sd = StateDir::at(state_dir);
    let m = match file {
        Some(f) => match load_manifest(&f, state_dir) {
            Some(m) => m,
            None => return Ok(EXIT_DIFF_ERROR),
        },
        None => match last_applied(&sd) {
            Ok(m) => m,
            Err(e) => {
                report_err!("netman: {e}");
                return Ok(EXIT_DIFF_ERROR);
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
            return Ok(EXIT_DIFF_ERROR);
        }
    };
    let engine = match EngineConfig::from_manifest(&m)
        .map_err(|e| e.to_string())
        .and_then(|mut cfg| {
            cfg.watch = deploy::watching(&sd, &m, None);
            deploy::engine_diff(&sd, &cfg)
        }) {
        Ok(c) => c,
        Err(e) => {
            report_err!("netman: {e}");
            return Ok(EXIT_DIFF_ERROR);
        }
    };
    let in_sync = plan.is_empty() && engine.is_empty();
    // Why table and fwmark were chosen automatically (a full tunnel).
    let notes: Vec<String> = netman::model::Routing::of(&m).note.into_iter().collect();
    match output {
        Output::Text => {
            for n in &notes {
                println!("# {n}");
            }
            if in_sync {
                println!("in sync: deployment {}", m.name);
            } else {
                print!("{plan}");
                for c in &engine {
                    println!("{c}");
                }
            }
        }
        Output::Json => {
            let mut text: Vec<String> = plan
                .kernel
                .actions
                .iter()
                .map(ToString::to_string)
                .collect();
            text.extend(plan.firewall.changes.iter().map(ToString::to_string));
            text.extend(engine.iter().map(ToString::to_string));
            let v = serde_json::json!({
                "deployment": m.name,
                "in_sync": in_sync,
                "actions": plan.kernel.actions,
                "firewall": plan.firewall.changes,
                "engine": engine,
                "notes": notes,
                "text": text,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(if in_sync { EXIT_OK } else { EXIT_DIFF_CHANGES })
}

fn status(state_dir: &Path, name: Option<String>, output: Output) -> Result<u8> {
    let sd = StateDir::at(state_dir);
    let names = match name {
        Some(n) => vec![n],
        None => sd.list()?,
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
            let v: Vec<serde_json::Value> = all
                .iter()
                .map(|(n, st, engine)| {
                    serde_json::json!({
                        "deployment": n,
                        "manifest": st.as_ref().and_then(|s| s.manifest.as_ref()).map(|m| serde_json::json!({
                            "path": m.path,
                            "sha256": m.sha256,
                        })),
                        "applied_at": st.as_ref().and_then(|s| s.applied_at),
                        "engine": engine,
                    })
                })
                .collect();
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
    Ok(EXIT_OK)
}

/// The manifest recorded by the last apply of the only deployment.
fn last_applied(sd: &StateDir) -> Result<Manifest> {
    let name = resolve_deployment(sd, None)?;
    let st = sd
        .load(&name)?
        .ok_or_else(|| anyhow!("deployment {name} vanished from the state dir"))?;
    let rec = st
        .manifest
        .ok_or_else(|| anyhow!("deployment {name} has no completed apply yet"))?;
    manifest::parse(&rec.text, &rec.path).map_err(|e| anyhow!("recorded manifest of {name}: {e}"))
}

/// Turn `down`'s argument into a deployment name: a manifest file (its
/// `name`), a deployment name, or nothing (the only recorded deployment).
fn resolve_deployment(sd: &StateDir, target: Option<&str>) -> Result<String> {
    match target {
        Some(t) => {
            let p = PathBuf::from(t);
            if p.is_file() {
                let m = manifest::load(&p).map_err(|e| anyhow!("{e}"))?;
                Ok(m.name)
            } else {
                Ok(t.to_string())
            }
        }
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
