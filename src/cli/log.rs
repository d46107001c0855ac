//! Where the binary's messages go: `tracing` on stderr in the chosen log
//! format (human, journald's `<N>` priority prefixes, JSON), and
//! [`report`] for messages meant for the operator (errors, warnings,
//! notes) in the same format.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::LogFormat;

/// Syslog priorities of [`report`].
pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;

/// How messages for the operator (errors, notes) are printed: set only
/// when asked for (`--log-format`) or when stderr goes to the journal
/// (`JOURNAL_STREAM`); a plain `netman validate` in a CI job keeps plain
/// `FILE:LINE:COL: ...` lines.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Print a message for the operator on stderr in the log format: as is
/// (human), with the syslog priority on every line (journald), or as one
/// JSON object (json).
pub fn report(priority: u8, msg: &str) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Journald) => {
            for line in msg.lines() {
                eprintln!("<{priority}>{line}");
            }
        }
        Some(LogFormat::Json) if priority <= ERR => tracing::error!(target: "netman", "{msg}"),
        Some(LogFormat::Json) => tracing::warn!(target: "netman", "{msg}"),
        _ => eprintln!("{msg}"),
    }
}

/// Set up `tracing` for `-v` count `verbose` (or `NETMAN_LOG`) and the log
/// format (`--log-format`; by default human on a terminal, journald
/// otherwise).
pub fn init(verbose: u8, format: Option<LogFormat>) {
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
