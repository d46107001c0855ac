//! Command-line interface definition (clap derive). Kept apart from the
//! command implementations so completions and the man page can be
//! generated from it; the output formats of the commands live beside it
//! ([`status`], [`diff`]), with the exit codes ([`exit`]), the log set-up
//! ([`log`]), the signal flag an apply polls ([`signals`]), what
//! `validate` and `render` find and print ([`validate`]) and what
//! `graph` reads and asks before it draws ([`graph`]).

pub mod diff;
pub mod exit;
pub mod graph;
pub mod log;
pub mod signals;
pub mod status;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::state::DEFAULT_STATE_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "netman",
    version,
    about = "Declarative site-to-site VPN manager with a WireGuard-compatible data plane",
    long_about = None,
)]
pub struct Cli {
    /// Where netman records what it created, and its lock.
    #[arg(long, global = true, env = "NETMAN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format on stderr: human (default on a terminal), journald
    /// (default otherwise: level prefixes, no timestamps) or json.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Journald,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How `validate` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateOutput {
    /// `FILE:LINE:COL: path: message` on stderr.
    Text,
    /// GitHub Actions annotations (`::error file=F,line=L,col=C::message`) on stdout.
    Github,
}

/// The language `graph` draws in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT (`netman graph net.yaml | dot -Tsvg > net.svg`).
    Dot,
    /// A Mermaid flowchart (paste into a ```mermaid block of a README).
    Mermaid,
}

/// Which document's JSON Schema `schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// The v1 site manifest.
    Manifest,
    /// The network file.
    Network,
}

/// What confirms an apply made with `--confirm-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfirmWhen {
    /// `netman confirm`.
    Manual,
    /// The deployment being healthy (or `netman confirm`): every peer with
    /// a handshake in the last 180 s handshakes again, every probe answers.
    Healthy,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests and network files without touching the system (exit
    /// 0 valid, 2 invalid). A file with a top-level `network:` key is a
    /// network file, checked as a whole.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = ValidateOutput::Text)]
        output: ValidateOutput,
    },
    /// Print the v1 manifest a network file derives for one site (exit 0,
    /// 2 invalid or no such site).
    Render {
        /// The network file.
        file: PathBuf,
        /// The site whose manifest to print.
        #[arg(long)]
        site: String,
    },
    /// Draw a network file: its sites, the subnets behind them and its
    /// tunnels, as Graphviz DOT or Mermaid (exit 0, 1 `--live` cannot see
    /// the engine, 2 invalid file or no such site).
    Graph {
        /// The network file.
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Colour this gateway's tunnels by the handshake state its running
        /// engine reports: up (within 180 s), stale, no handshake, unknown.
        #[arg(long)]
        live: bool,
        /// With --live: the site this gateway is (default: the one site of
        /// the network recorded as a deployment in the state dir).
        #[arg(long, requires = "live")]
        site: Option<String>,
    },
    /// Show what `apply` would change (exit 0 in sync, 1 changes pending, 2 error).
    ///
    /// Without FILE, compares the live state with the last applied manifest.
    Diff {
        file: Option<PathBuf>,
        /// With a network file: this gateway's site (default: the site whose
        /// `public_key` is that of the local private key file).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make the live state match the manifest (and start or update its engine).
    Apply {
        file: PathBuf,
        /// With a network file: this gateway's site (default: the site whose
        /// `public_key` is that of the local private key file).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// Revert to the previous configuration automatically unless
        /// `netman confirm` arrives within SECS seconds (like `netplan try`).
        #[arg(long, value_name = "SECS")]
        confirm_timeout: Option<u64>,
        /// With --confirm-timeout: `healthy` keeps the change by itself once
        /// every peer that had a recent handshake handshakes again and every
        /// probe answers (else it is reverted at the timeout); `apply` waits
        /// for the verdict and exits 1 on a revert.
        #[arg(long, value_enum, default_value_t = ConfirmWhen::Manual, requires = "confirm_timeout")]
        confirm_when: ConfirmWhen,
        /// Do not follow the manifest file or repair drift (overrides the
        /// manifest's `watch`).
        #[arg(long)]
        no_watch: bool,
    },
    /// Keep a configuration applied with `--confirm-timeout`.
    Confirm {
        /// The deployment (default: the only recorded one).
        name: Option<String>,
    },
    /// Remove everything netman created for a deployment (and stop its engine).
    ///
    /// The argument is a manifest file, a network file, or a deployment
    /// name; without it, the only recorded deployment.
    Down {
        target: Option<String>,
        /// With a network file: this gateway's site (default: the site whose
        /// `public_key` is that of the local private key file).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
    },
    /// Apply, then run the forwarding engine in the foreground (for systemd
    /// and containers). SIGTERM stops the engine and leaves the kernel state
    /// for `netman down`.
    Run {
        file: PathBuf,
        /// With a network file: this gateway's site (default: the site whose
        /// `public_key` is that of the local private key file).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// Do not follow the manifest file or repair drift.
        #[arg(long)]
        no_watch: bool,
    },
    /// Show deployments like `wg show`: interface, listen port, public key,
    /// and per peer endpoint, allowed IPs, latest handshake and transfer.
    Status {
        /// A deployment name, or a manifest or network file (default: all
        /// recorded deployments).
        name: Option<String>,
        /// With a network file: this gateway's site (default: the site whose
        /// `public_key` is that of the local private key file).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print a new private key (like `wg genkey`). Write it with umask 077.
    Genkey,
    /// Read a private key on stdin, print its public key (like `wg pubkey`).
    Pubkey,
    /// Print the JSON Schema (draft-07) of the manifest or the network
    /// file, for editors and CI.
    Schema {
        #[arg(long, value_enum, default_value_t = SchemaKind::Manifest)]
        kind: SchemaKind,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): netman(1), or netman-COMMAND(1).
    Man {
        /// A subcommand whose page to print (e.g. `apply`).
        command: Option<String>,
    },
    /// Convert a wg-quick configuration (wg0.conf) into a manifest.
    ///
    /// Writes DIR/<name>.yaml and the keys to DIR/keys/ (mode 0600); scripts
    /// (PostUp, ...) are reported, never run.
    Import {
        file: PathBuf,
        /// Deployment name (default: from the file name).
        #[arg(long)]
        name: Option<String>,
        /// Where to write the manifest and keys.
        #[arg(long, short = 'o', default_value = ".")]
        output_dir: PathBuf,
    },
    /// Run the engine of a recorded deployment (started by `apply`).
    #[command(hide = true)]
    Engine { name: String },
}

/// The completion script for `shell`. clap_complete offers hidden
/// subcommands too (clap-rs/clap#1335): it completes a copy of the CLI
/// without them.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let full = <Cli as clap::CommandFactory>::command();
    let mut cmd = clap::Command::new("netman")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut cmd, "netman", out);
}

/// Why `netman man` wrote no page.
#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("no subcommand {0:?} (see `netman --help`)")]
    NoSuchCommand(String),
    #[error("write man page: {0}")]
    Write(#[from] std::io::Error),
}

/// The man page netman(1), or netman-`command`(1).
pub fn man_page(command: Option<&str>, out: &mut dyn std::io::Write) -> Result<(), ManError> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    if let Some(name) = command {
        // Built, so that the page is titled netman-NAME and its synopsis
        // reads `netman NAME ...` (and `help`, which netman(1) lists too,
        // exists).
        cmd.build();
        let sub = cmd
            .get_subcommands()
            .find(|c| c.get_name() == name && !c.is_hide_set())
            .cloned();
        cmd = sub.ok_or_else(|| ManError::NoSuchCommand(name.to_string()))?;
    }
    clap_mangen::Man::new(cmd).render(out)?;
    Ok(())
}
