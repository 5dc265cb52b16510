//! `payments-app`: applies `PaymentTaken` events exactly once, whatever the source redelivers.
//!
//! ```text
//! payments-app consume [--store STORE] [--input PATH|-] [--dead-letter PATH] [--concurrency N] [--report json]
//! payments-app export  [--store STORE]
//! payments-app simulate [--store STORE] [--payments N] [--duplicate-rate R] [--crash-rate C]
//!                       [--conflict-rate K] [--invalid-rate I] [--seed S] [--report json]
//! ```
//!
//! The command line is a contract that tests and users script against: flags are added, never
//! renamed or removed.

// A command-line program reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use payments_app::consumer::{Consumer, ConsumerConfig, Ending, RetryPolicy, Run, Shutdown, Summary};
use payments_app::handler::Handler;
use payments_app::simulate;
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
    /// Run the consumer against an in-process broker that redelivers, duplicates, reorders and
    /// crashes, then check that every payment was recorded exactly once.
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// The store to run against; it must be empty. Default: a new journal in a temporary
    /// directory, removed afterwards.
    #[arg(long)]
    store: Option<StoreSpec>,
    /// How many distinct payments to send.
    #[arg(long, default_value_t = 10_000)]
    payments: usize,
    /// The chance that a delivery is handed out twice at once.
    #[arg(long, default_value_t = 0.1, value_parser = rate)]
    duplicate_rate: f64,
    /// The chance that the consumer crashes after an effect, before its acknowledgement
    /// (at most 0.5, so that the run ends).
    #[arg(long, default_value_t = 0.01, value_parser = crash_rate)]
    crash_rate: f64,
    /// The share of payments also sent in a conflicting version.
    #[arg(long, default_value_t = 0.02, value_parser = rate)]
    conflict_rate: f64,
    /// Invalid messages, as a share of the payments.
    #[arg(long, default_value_t = 0.01, value_parser = rate)]
    invalid_rate: f64,
    /// Where all randomness comes from; the same seed publishes the same messages. Default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// How many deliveries are handled at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Also print the counts on stdout in this format.
    #[arg(long, value_enum)]
    report: Option<ReportFormat>,
}

fn rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) { Ok(rate) } else { Err(format!("{rate} is not between 0 and 1")) }
}

fn crash_rate(text: &str) -> Result<f64, String> {
    let rate = rate(text)?;
    if rate <= 0.5 { Ok(rate) } else { Err(format!("{rate} is above 0.5: the run might never end")) }
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
            Command::Simulate(args) => simulate(args).await,
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
        eprintln!("payments-app: error: {}", payments_ports::error_chain(reason));
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

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = simulate::Config {
        payments: args.payments,
        duplicate_rate: args.duplicate_rate,
        crash_rate: args.crash_rate,
        conflict_rate: args.conflict_rate,
        invalid_rate: args.invalid_rate,
        seed,
        concurrency: usize::from(args.concurrency),
        visibility_timeout: Duration::from_millis(5),
    };
    // Without --store, a journal of its own that nobody else sees, removed at the end.
    let scratch = match &args.store {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("cannot create a temporary directory for the journal")?),
    };
    let spec = match (&args.store, &scratch) {
        (Some(spec), _) => spec.clone(),
        (None, Some(dir)) => StoreSpec::File(dir.path().join("simulate.journal")),
        (None, None) => unreachable!("a scratch directory exists whenever --store is absent"),
    };
    let opener: simulate::Opener = match &spec {
        // A memory store cannot outlive a crash of its process: it stands for a store that lives
        // elsewhere, so the same instance is kept across simulated crashes.
        StoreSpec::Memory => {
            let store = store::open(&spec).await?;
            Box::new(move || {
                let store = Arc::clone(&store);
                Box::pin(async move { Ok(store) })
            })
        }
        // Any other store is opened again after each crash, from what it has on disk.
        _ => Box::new(move || {
            let spec = spec.clone();
            Box::pin(async move { store::open(&spec).await })
        }),
    };
    eprintln!(
        "payments-app: simulating {} payments with seed {seed} (rerun with --seed {seed})",
        args.payments
    );
    let progress = Arc::new(Progress::new());
    let shown = Arc::clone(&progress);
    let report = simulate::run(config, opener, Arc::new(move |settled| shown.settled(settled))).await?;
    progress.finish();
    drop(scratch);

    eprintln!(
        "  consumer:  {} deliveries, {} applied, {} duplicates, {} conflicts, {} invalid, {} retries",
        report.counts.deliveries,
        report.counts.applied,
        report.counts.duplicates,
        report.counts.conflicts,
        report.counts.invalid,
        report.counts.retries
    );
    eprintln!(
        "  faults:    {} crashes ({} consumer restarts), {} redeliveries, {} concurrent duplicate deliveries",
        report.crashes, report.restarts, report.redeliveries, report.concurrent_duplicates
    );
    eprintln!(
        "  anomalies: {} lost, {} duplicated effects, {} unexpected, {} missing dead letters",
        report.lost, report.duplicated_effects, report.unexpected, report.missing_dead_letters
    );
    let silent = report.faults_that_did_not_fire(&config);
    let code = if report.anomalies() > 0 {
        eprintln!("payments-app: FAILED: the store does not match what was sent");
        ExitCode::FAILURE
    } else if !silent.is_empty() {
        eprintln!(
            "payments-app: FAILED: no {} happened, so the run proved nothing about them; send more payments",
            silent.join(", no ")
        );
        ExitCode::FAILURE
    } else {
        eprintln!("payments-app: OK: every payment was recorded exactly once");
        ExitCode::SUCCESS
    };
    if let Some(ReportFormat::Json) = args.report {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &report).context("cannot write the report")?;
        writeln!(stdout).context("cannot write the report")?;
    }
    Ok(code)
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

    fn settled(&self, settled: u64) {
        if let Some(bar) = &self.0
            && settled.is_multiple_of(1024)
        {
            bar.set_message(format!("{settled} deliveries settled"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
