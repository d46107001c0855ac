use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use netman::cli::{Cli, Command, Output};
use netman::manifest::{self, Manifest};
use netman::netlink::Netlink;
use netman::reconcile::{self, ReconcileError};
use netman::state::StateDir;

/// Exit codes shared by all commands.
const EXIT_OK: u8 = 0;
const EXIT_CHANGES: u8 = 1;
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("netman: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("NETMAN_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")
}

/// Load and validate a manifest, printing every error; `None` if invalid.
fn load_manifest(path: &Path) -> Option<Manifest> {
    match manifest::load(path) {
        Ok(m) => Some(m),
        Err(errs) => {
            eprintln!("{errs}");
            None
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { files } => {
            let mut ok = true;
            for f in &files {
                match manifest::load(f) {
                    Ok(m) => println!("{}: valid (deployment {})", f.display(), m.name),
                    Err(errs) => {
                        ok = false;
                        eprintln!("{errs}");
                    }
                }
            }
            Ok(if ok { EXIT_OK } else { EXIT_INVALID })
        }
        Command::Diff { file, output } => {
            let sd = StateDir::at(&cli.state_dir);
            let m = match file {
                Some(f) => match load_manifest(&f) {
                    Some(m) => m,
                    None => return Ok(EXIT_INVALID),
                },
                None => match last_applied(&sd) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("netman: {e:#}");
                        return Ok(EXIT_INVALID);
                    }
                },
            };
            let rt = runtime()?;
            let result = rt.block_on(async {
                let nl = Netlink::connect()?;
                reconcile::diff(&nl, &sd, &m).await
            });
            match result {
                Ok(plan) => {
                    match output {
                        Output::Text => {
                            if plan.is_empty() {
                                println!("in sync: deployment {}", m.name);
                            } else {
                                print!("{plan}");
                            }
                        }
                        Output::Json => {
                            let v = serde_json::json!({
                                "deployment": m.name,
                                "in_sync": plan.is_empty(),
                                "actions": plan.actions,
                                "text": plan.actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            });
                            println!("{}", serde_json::to_string_pretty(&v)?);
                        }
                    }
                    Ok(if plan.is_empty() {
                        EXIT_OK
                    } else {
                        EXIT_CHANGES
                    })
                }
                Err(e) => {
                    eprintln!("netman: {e}");
                    Ok(EXIT_INVALID)
                }
            }
        }
        Command::Apply { file } => {
            let Some(m) = load_manifest(&file) else {
                return Ok(EXIT_INVALID);
            };
            let sd = StateDir::open(&cli.state_dir)?;
            let rt = runtime()?;
            let result = rt.block_on(async {
                let nl = Netlink::connect()?;
                reconcile::apply(&nl, &sd, &m).await
            });
            match result {
                Ok(plan) if plan.is_empty() => {
                    println!("no changes");
                    Ok(EXIT_OK)
                }
                Ok(plan) => {
                    print!("{plan}");
                    println!("applied: deployment {}", m.name);
                    Ok(EXIT_OK)
                }
                Err(e @ ReconcileError::Plan(_)) => {
                    eprintln!("netman: nothing applied: {e}");
                    Ok(EXIT_FAILED)
                }
                Err(e) => {
                    eprintln!("netman: apply failed: {e}");
                    Ok(EXIT_FAILED)
                }
            }
        }
        Command::Down { target } => {
            let sd = StateDir::at(&cli.state_dir);
            let name = resolve_deployment(&sd, target.as_deref())?;
            let rt = runtime()?;
            let result = rt.block_on(async {
                let nl = Netlink::connect()?;
                reconcile::down(&nl, &sd, &name).await
            });
            match result {
                Ok(plan) => {
                    print!("{plan}");
                    println!("down: deployment {name}");
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("netman: down {name}: {e}");
                    Ok(EXIT_FAILED)
                }
            }
        }
    }
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
