//! `payments-app`: applies `PaymentTaken` events exactly once, whatever the source redelivers.
//!
//! ```text
//! payments-app consume [--store STORE] [--input PATH|-] [--dead-letter PATH] [--concurrency N] [--report json]
//! payments-app export  [--store STORE]
//! ```
//!
//! The command line is a contract that tests and users script against: flags are added, never
//! renamed or removed.

// A command-line program reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use payments_app::consumer::{Consumer, ConsumerConfig, Ending, RetryPolicy, Run, Shutdown, Summary, chain};
use payments_app::handler::Handler;
use payments_app::source::lines::{DEFAULT_MAX_LINE, LinesSource};
use payments_app::store::{self, DEFAULT_STORE, StoreSpec};
use payments_ports::RepositoryError;
use payments_ports::domain::event;

#[derive(Parser, Debug)]
#[command(
    name = "payments-app",
    version,
    about = "Applies PaymentTaken events exactly once over at-least-once delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume PaymentTaken events, one JSON object per line, and record each payment exactly once.
    Consume(ConsumeArgs),
    /// Print every recorded payment as one JSON line, in ascending payment ID order.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    /// Where payments are recorded: `memory`, `file:<path>` or `postgres://…`.
    #[arg(long, default_value = DEFAULT_STORE)]
    store: StoreSpec,
    /// The input: a path, or `-` for stdin.
    #[arg(long, default_value = "-")]
    input: String,
    /// Where dead letters go (JSON lines, synced before the acknowledgement). Default: beside a
    /// file store, or stderr for the memory store.
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// How many deliveries are handled at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Also print the counts on stdout in this format.
    #[arg(long, value_enum)]
    report: Option<ReportFormat>,
    /// The longest line, in bytes; a longer one is dead-lettered as too large without being read whole.
    #[arg(long, default_value_t = DEFAULT_MAX_LINE)]
    max_line_bytes: usize,
    /// How long, in seconds, one delivery may find the store unavailable before the consumer stops.
    #[arg(long, default_value_t = 60.0)]
    retry_limit_secs: f64,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Where payments are recorded: `memory`, `file:<path>` or `postgres://…`.
    #[arg(long, default_value = DEFAULT_STORE)]
    store: StoreSpec,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReportFormat {
    /// One JSON object with integer counts.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Consume(args) => consume(args).await,
            Command::Export(args) => export(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("payments-app: error: {err:#}");
    ExitCode::FAILURE
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let retry_limit = Duration::try_from_secs_f64(args.retry_limit_secs)
        .with_context(|| format!("--retry-limit-secs {} is not a duration", args.retry_limit_secs))?;
    let repository = store::open(&args.store).await?;
    let dead_letter_path = args.dead_letter.clone().or_else(|| store::default_dead_letters(&args.store));
    let dead_letters = store::open_dead_letters(dead_letter_path.as_deref()).await?;
    let config = ConsumerConfig {
        concurrency: usize::from(args.concurrency),
        retry: RetryPolicy { give_up_after: retry_limit, ..RetryPolicy::default() },
    };
    let consumer = Consumer::new(Handler::new(repository), dead_letters, config);

    let shutdown = shutdown_on_signals()?;
    let progress = Progress::new();
    let mut on_progress = |summary: &Summary| progress.update(summary);
    let run = if args.input == "-" {
        let source = LinesSource::new(tokio::io::stdin(), "stdin", args.max_line_bytes);
        consumer.run(source, shutdown, &mut on_progress).await
    } else {
        let file = tokio::fs::File::open(&args.input)
            .await
            .with_context(|| format!("cannot open input {}", args.input))?;
        let source = LinesSource::new(file, args.input.clone(), args.max_line_bytes);
        consumer.run(source, shutdown, &mut on_progress).await
    };
    progress.finish();
    report(&run, args.report)
}

/// Prints the summary (stderr, and stdout in the report format) and chooses the exit status.
fn report(run: &Run, format: Option<ReportFormat>) -> anyhow::Result<ExitCode> {
    let Run { summary, ending } = run;
    let (verb, code) = match ending {
        Ending::Exhausted => ("consumed", ExitCode::SUCCESS),
        Ending::ShutDown => ("shut down after", ExitCode::SUCCESS),
        Ending::Stopped(_) => ("stopped after", ExitCode::FAILURE),
    };
    eprintln!("payments-app: {verb} {summary}");
    if let Ending::Stopped(reason) = ending {
        eprintln!("payments-app: error: {}", chain(reason));
        eprintln!("payments-app: nothing unsettled was acknowledged; run again to resume");
    }
    if let Some(ReportFormat::Json) = format {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, summary).context("cannot write the report")?;
        writeln!(stdout).context("cannot write the report")?;
    }
    Ok(code)
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let repository = store::open(&args.store).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::with_capacity(128);
    payments_ports::export_all(repository.as_ref(), 10_000, |payment| {
        line.clear();
        event::encode(&payment, &mut line);
        line.push(b'\n');
        out.write_all(&line).context("cannot write the export")
    })
    .await
    .map_err(|err: anyhow::Error| match err.downcast::<RepositoryError>() {
        Ok(store) => anyhow::Error::new(store).context(format!("cannot export from {}", args.store)),
        Err(other) => other,
    })?;
    out.flush().context("cannot write the export")?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM asks the consumer to finish what is in flight and stop; a second one exits
/// at once (still safe: whatever was not acknowledged is delivered again).
fn shutdown_on_signals() -> anyhow::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    let (trigger, shutdown) = Shutdown::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!(
            "payments-app: shutting down: finishing deliveries in flight (signal again to exit at once)"
        );
        trigger.trigger();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("payments-app: exiting at once; unacknowledged deliveries will be delivered again");
        std::process::exit(130);
    });
    Ok(shutdown)
}

/// A progress line on stderr when it is a terminal; nothing otherwise.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(Some(bar))
    }

    fn update(&self, summary: &Summary) {
        if let Some(bar) = &self.0 {
            // Redrawing is rate-limited by indicatif; formatting the message is not, so skip most.
            if summary.deliveries.is_multiple_of(1024) {
                bar.set_message(summary.to_string());
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
