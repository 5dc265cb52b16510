//! What the program says on stderr, in the format `--log-format` asks for: log events through
//! `tracing`, and the program's own lines (what it is doing, its summary, its error).
//!
//! In `text`, the program's lines are plain (`payments-app: consumed …`); in `json`, they are log
//! events like the rest, under the target `payments_app::report`, so that stderr is one JSON
//! object per line throughout.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The target of the program's own lines in JSON: always shown, whatever `RUST_LOG` says.
const REPORT: &str = "payments_app::report";

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Sets up logging on stderr: `RUST_LOG` filters (default: warnings and errors).
pub(crate) fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let filter = match format!("{REPORT}=info").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Whether stderr is JSON lines.
pub(crate) fn json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// One line of the program's own: what it is doing, or how it ended.
pub(crate) fn say(line: &str) {
    if json() {
        tracing::info!(target: REPORT, "{line}");
    } else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("payments-app: {line}");
        }
    }
}

/// The program's error, at the end.
pub(crate) fn error(line: &str) {
    if json() {
        tracing::error!(target: REPORT, "{line}");
    } else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("payments-app: error: {line}");
        }
    }
}

/// A line that continues the one before it (a simulation's counts), without the program's name.
pub(crate) fn detail(line: &str) {
    if json() {
        tracing::info!(target: REPORT, "{}", line.trim_start());
    } else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{line}");
        }
    }
}
