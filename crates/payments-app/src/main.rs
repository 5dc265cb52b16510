//! `payments-app`: applies `PaymentTaken` events exactly once, whatever the source redelivers.
//!
//! ```text
//! payments-app consume  [--store STORE] [--input PATH|-|URL] [--dead-letter PATH|URL] [--concurrency N] [--report json]
//!                       [--max-message-bytes N] [--max-line-bytes N] [--retry-limit-secs S] [--stop-when-idle SECS]
//!                       [--metrics-addr HOST:PORT] [--publish-to URL] [--outbox] [--log-format text|json]
//! payments-app export   [--store STORE] [--log-format text|json]
//! payments-app simulate [--store STORE] [--payments N] [--duplicate-rate R] [--crash-rate C] [--conflict-rate K]
//!                       [--invalid-rate I] [--seed S] [--concurrency N] [--report json] [--log-format text|json]
//! payments-app publish  --to URL [--input PATH|-] [--max-message-bytes N] [--report json] [--log-format text|json]
//! payments-app relay    --to URL [--store STORE] [--stop-when-idle SECS] [--batch N] [--retry-limit-secs S]
//!                       [--metrics-addr HOST:PORT] [--report json] [--log-format text|json]
//! ```
//!
//! Every flag can also come from an environment variable, which `--help` names
//! (`PAYMENTS_STORE`, `PAYMENTS_INPUT`, …); a flag wins over its variable.
//!
//! The command line is a contract that tests and users script against: flags are added, never
//! renamed or removed. `cargo xtask test` checks that this usage, and the README's, list exactly the
//! flags `--help` shows.
//!
//! This is the composition root: it parses the command line (`cli`), and `adapters` turns specs
//! into adapters; everything else is the use case (`payments-consumer`) and the simulator.

// A command-line program reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod output;
mod progress;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use payments_app::adapters::{DEFAULT_MAX_MESSAGE_BYTES, InputSpec, Operations, SourceOptions, StoreSpec};
use payments_consumer::{
    Consumer, ConsumerConfig, Ending, Handler, Relay, RelayConfig, RelayControl, RelayEnding, RelayRun,
    RetryPolicy, Run,
};
use payments_ports::domain::event;
use payments_ports::{Outbox, OutgoingMessage, Payload, PaymentsRepository, RepositoryError, error_chain};
use payments_simulator::DEFAULT_VISIBILITY_TIMEOUT;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ConsumeArgs, ExportArgs, PublishArgs, RelayArgs, SimulateArgs};
use crate::output::{detail, say};
use crate::progress::Progress;

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Consume(args) => consume(*args).await,
            Command::Export(args) => export(args).await,
            Command::Simulate(args) => simulate(args).await,
            Command::Publish(args) => publish(*args).await,
            Command::Relay(args) => relay(*args).await,
        }
    });
    // Everything the command had to finish is finished; what is left is at most a read of stdin
    // parked on a blocking thread, which dropping the runtime would wait for until stdin closes.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    output::error(&format!("{err:#}"));
    ExitCode::FAILURE
}

/// A flag's number of seconds as a duration.
fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("{flag} {secs} is not a duration"))
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let retry_limit = seconds("--retry-limit-secs", args.retry_limit_secs)?;
    let stop_when_idle = args.stop_when_idle.map(|secs| seconds("--stop-when-idle", secs)).transpose()?;
    // Serving first, so that a probe gets "still starting" while the store and the broker are
    // reached, rather than no answer.
    let mut operations =
        Operations::start(args.metrics_addr.as_deref(), &args.input, &args.store, args.publish_to.is_some())
            .await?;
    if let Some(address) = operations.address() {
        say(&format!("serving /metrics, /livez and /readyz on http://{address}"));
    }
    let repository = args.store.open().await?;
    // The outbox is on before the first save, so that every payment this run records has its event.
    let outbox = if args.publish_to.is_some() || args.outbox {
        Some(open_outbox(repository.as_ref(), &args.store).await?)
    } else {
        None
    };
    let publisher = match &args.publish_to {
        Some(target) => Some(target.open().await?),
        None => None,
    };
    let dead_letter_spec = args.dead_letter.clone().unwrap_or_else(|| args.store.default_dead_letters());
    let dead_letters = dead_letter_spec.open().await?;
    let concurrency = usize::from(args.concurrency.concurrency);
    let options = SourceOptions {
        max_message_bytes: args
            .max_message_bytes
            .or(args.max_line_bytes)
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        // The engine handles `concurrency` deliveries at once; the source reads one batch ahead, so
        // that the next batch is there when one is settled (the channel between them holds as many).
        in_flight: concurrency * 2,
    };
    let source = args.input.open(options).await?;
    operations.started(Arc::clone(&repository), source.backlog_probe());
    let config = ConsumerConfig {
        concurrency,
        retry: RetryPolicy { give_up_after: retry_limit, ..RetryPolicy::default() },
        max_attempts: args.input.max_deliveries(),
        stop_when_idle,
    };
    let mut consumer =
        Consumer::new(Handler::new(Arc::clone(&repository)), Arc::clone(&dead_letters), config);
    if let Some(observer) = operations.observer() {
        consumer = consumer.with_observer(observer);
    }

    let shutdown = shutdown_on_signals()?;
    operations.stop_being_ready_on(&shutdown);
    // The relay runs beside the consumer. A relay that gives up stops the consumer too: events
    // piling up unpublished are a failure for the supervisor to see, not to hide.
    let consumer_stop = shutdown.child_token();
    // The relay is stopped once the consumer has finished, not at the signal: what the consumer
    // records while it drains is then counted among the events left for the next relay.
    let relay_control = RelayControl::default();
    let relaying = match (outbox, publisher.clone()) {
        (Some(outbox), Some(publisher)) => {
            let config = RelayConfig {
                retry: RetryPolicy { give_up_after: retry_limit, ..RetryPolicy::default() },
                ..RelayConfig::default()
            };
            let mut relay = Relay::new(outbox, publisher, config);
            if let Some(observer) = operations.relay_observer() {
                relay = relay.with_observer(observer);
            }
            let (control, stop) = (relay_control.clone(), consumer_stop.clone());
            Some(tokio::spawn(async move {
                let run = relay.run(control).await;
                if let RelayEnding::Stopped(err) = &run.ending {
                    output::error(&format!("the outbox relay stopped: {}", error_chain(err)));
                    stop.cancel();
                }
                run
            }))
        }
        // `--outbox` alone: on, for another process to relay.
        (outbox, _) => {
            drop(outbox);
            None
        }
    };
    let progress = Progress::new(!output::json());
    let run = consumer.run(source, consumer_stop, &mut |summary| progress.update(summary)).await;
    progress.finish();
    // A finite input ended: publish what it recorded before exiting. Otherwise leave it.
    match run.ending {
        Ending::Exhausted | Ending::Idle => {
            relay_control.drain.cancel();
            // A signal while the relay drains stops it too, leaving the rest for the next relay.
            let (signal, stop) = (shutdown.clone(), relay_control.shutdown.clone());
            tokio::spawn(async move {
                signal.cancelled().await;
                stop.cancel();
            });
        }
        Ending::ShutDown | Ending::Stopped(_) => relay_control.shutdown.cancel(),
    }
    let relayed = match relaying {
        Some(task) => Some(task.await.context("the outbox relay panicked")?),
        None => None,
    };
    operations.stopping();
    // What the store and the sink accepted is finished before the process says it is done.
    let closed = (repository.close().await, dead_letters.close().await);
    if let Some(publisher) = publisher {
        close_publisher(publisher.as_ref()).await;
    }
    operations.stop().await;
    let mut code = report(&run);
    if let (Some(relayed), Some(target)) = (&relayed, &args.publish_to)
        && report_relay(relayed, target) != ExitCode::SUCCESS
    {
        code = ExitCode::FAILURE;
    }
    args.reporting.print(&run.summary)?;
    closed.0.context("cannot close the store")?;
    closed.1.context("cannot close the dead-letter sink")?;
    Ok(code)
}

/// How long closing a relay's publisher may take: a broker that is down would otherwise hold the
/// exit of a process that has nothing left to send.
const PUBLISHER_CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Closes a relay's publisher. Everything it published is confirmed already, and marked or left
/// for the next relay, so a close that fails or hangs loses nothing: it is said, not fatal.
async fn close_publisher(publisher: &dyn payments_ports::Publisher) {
    match tokio::time::timeout(PUBLISHER_CLOSE_WITHIN, publisher.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %error_chain(&err), "could not close the publisher"),
        Err(_) => {
            tracing::warn!("the publisher did not close within {PUBLISHER_CLOSE_WITHIN:?}; exiting anyway")
        }
    }
}

/// A relay's handle on the store's outbox, which this turns on.
async fn open_outbox(
    repository: &dyn PaymentsRepository,
    store: &StoreSpec,
) -> anyhow::Result<Box<dyn Outbox>> {
    repository.outbox().await.with_context(|| format!("cannot open the outbox of {store}"))?.with_context(
        || {
            format!(
                "the {} store keeps no outbox: use a file, postgres or memory store to relay",
                store.entry().name
            )
        },
    )
}

/// Says what the relay did and how it ended, and chooses its exit status.
fn report_relay(run: &RelayRun, target: &impl std::fmt::Display) -> ExitCode {
    let left = match run.left {
        Some(0) => String::new(),
        Some(left) => format!("; {left} events left in the outbox for the next relay"),
        None => "; the outbox could not say how many events are left".to_owned(),
    };
    say(&format!("relayed {} events to {target}{left}", run.published));
    match &run.ending {
        RelayEnding::Stopped(err) => {
            output::error(&format!("the outbox relay stopped: {}", error_chain(err)));
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

async fn relay(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let retry_limit = seconds("--retry-limit-secs", args.retry_limit_secs)?;
    let stop_when_idle = args.stop_when_idle.map(|secs| seconds("--stop-when-idle", secs)).transpose()?;
    if args.store.entry().in_process {
        anyhow::bail!(
            "the {} store lives in the process that consumes into it: relay it from there, with consume --publish-to",
            args.store.entry().name
        );
    }
    let operations = Operations::start_relay(args.metrics_addr.as_deref(), &args.store).await?;
    if let Some(address) = operations.address() {
        say(&format!("serving /metrics, /livez and /readyz on http://{address}"));
    }
    let repository = args.store.open().await?;
    let outbox = open_outbox(repository.as_ref(), &args.store).await?;
    let publisher = args.to.open().await?;
    let mut operations = operations;
    operations.started(Arc::clone(&repository), None);
    let config = RelayConfig {
        batch: usize::from(args.batch),
        retry: RetryPolicy { give_up_after: retry_limit, ..RetryPolicy::default() },
        stop_when_idle,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(outbox, Arc::clone(&publisher), config);
    if let Some(observer) = operations.relay_observer() {
        relay = relay.with_observer(observer);
    }
    let shutdown = shutdown_on_signals()?;
    operations.stop_being_ready_on(&shutdown);
    let run = relay.run(RelayControl { shutdown, drain: CancellationToken::new() }).await;
    operations.stopping();
    close_publisher(publisher.as_ref()).await;
    let closed = repository.close().await;
    operations.stop().await;
    let code = report_relay(&run, &args.to);
    args.reporting.print(&serde_json::json!({ "published": run.published, "left": run.left }))?;
    closed.context("cannot close the store")?;
    Ok(code)
}

/// Prints the summary on stderr and chooses the exit status.
fn report(run: &Run) -> ExitCode {
    let Run { summary, ending } = run;
    let (verb, code) = match ending {
        Ending::Exhausted | Ending::Idle => ("consumed", ExitCode::SUCCESS),
        Ending::ShutDown => ("shut down after", ExitCode::SUCCESS),
        Ending::Stopped(_) => ("stopped after", ExitCode::FAILURE),
    };
    say(&format!("{verb} {summary}"));
    if let Ending::Stopped(reason) = ending {
        output::error(&error_chain(reason));
        say("nothing unsettled was acknowledged; run again to resume");
    }
    code
}

/// How many payments one page of an export holds: large enough that a database answers in few
/// round trips, small enough that a page of 64-byte IDs stays around a megabyte.
const EXPORT_PAGE: usize = 10_000;

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let repository = args.store.open().await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::with_capacity(128);
    payments_ports::export_all(repository.as_ref(), EXPORT_PAGE, |payment| {
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
    repository.close().await.context("cannot close the store")?;
    Ok(ExitCode::SUCCESS)
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let config = payments_simulator::Config {
        payments: args.payments,
        duplicate_rate: args.duplicate_rate,
        crash_rate: args.crash_rate,
        conflict_rate: args.conflict_rate,
        invalid_rate: args.invalid_rate,
        seed,
        concurrency: usize::from(args.concurrency.concurrency),
        visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
    };
    // Without --store, a journal of its own that nobody else sees, removed at the end.
    let (spec, scratch) = match args.store {
        Some(spec) => (spec, None),
        None => {
            let dir = payments_simulator::scratch_dir()
                .context("cannot create a temporary directory for the journal")?;
            (StoreSpec::journal(&dir.path().join("simulate.journal")), Some(dir))
        }
    };
    let opener = spec.simulation_opener().await?;
    say(&format!("simulating {} payments with seed {seed} (rerun with --seed {seed})", args.payments));
    let progress = std::sync::Arc::new(Progress::new(!output::json()));
    let shown = std::sync::Arc::clone(&progress);
    let report =
        payments_simulator::run(config, opener, std::sync::Arc::new(move |settled| shown.settled(settled)))
            .await
            .context("the simulation could not run")?;
    progress.finish();
    drop(scratch);

    let counts = &report.counts;
    detail(&format!(
        "  consumer:  {} deliveries, {} applied, {} duplicates, {} conflicts, {} invalid, {} retries",
        counts.deliveries,
        counts.applied,
        counts.duplicates,
        counts.conflicts,
        counts.invalid,
        counts.retries
    ));
    detail(&format!(
        "  faults:    {} crashes ({} consumer restarts), {} redeliveries, {} concurrent duplicate deliveries",
        report.crashes, report.restarts, report.redeliveries, report.concurrent_duplicates
    ));
    detail(&format!(
        "  anomalies: {} lost, {} duplicated effects, {} unexpected, {} missing dead letters",
        report.lost, report.duplicated_effects, report.unexpected, report.missing_dead_letters
    ));
    let verdict = report.verdict(&config);
    say(&verdict.to_string());
    args.reporting.print(&report)?;
    Ok(if verdict.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How many lines go out in one confirmed batch: enough to fill a round trip, few enough that a
/// failed batch is cheap to send again.
const PUBLISH_BATCH: usize = 512;

/// How long `publish` waits for more input before it sends a partial batch (stdin, typed slowly).
const PUBLISH_LINGER: Duration = Duration::from_millis(20);

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let max = args.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let mut lines = InputSpec::Lines(args.input.clone())
        .open(SourceOptions { max_message_bytes: max, in_flight: PUBLISH_BATCH })
        .await?;
    let publisher = args.to.open().await?;
    let retry = RetryPolicy::default();
    let (mut published, mut ended) = (0u64, false);
    while !ended {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while batch.len() < PUBLISH_BATCH {
            let next = if batch.is_empty() {
                lines.next().await
            } else {
                match tokio::time::timeout(PUBLISH_LINGER, lines.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let Some(delivery) = next.context("cannot read the input")? else {
                ended = true;
                break;
            };
            let origin = delivery.receipt.origin();
            match delivery.payload {
                Payload::Complete(body) => batch.push(OutgoingMessage { id: None, payload: body }),
                Payload::TooLarge { len, limit, .. } => {
                    anyhow::bail!(
                        "{origin} is {len} bytes long, over --max-message-bytes {limit}: nothing after it was published"
                    )
                }
                Payload::Unreadable { reason, .. } => anyhow::bail!("{origin} is unreadable: {reason}"),
            }
        }
        if batch.is_empty() {
            continue;
        }
        // An unavailable broker is waited out, as the consumer waits out its store; messages of a
        // batch that failed half-way go out again, which the next consumer answers as duplicates.
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            match publisher.publish(&batch).await {
                Ok(()) => break,
                Err(err) if err.is_unavailable() && started.elapsed() < retry.give_up_after => {
                    attempt += 1;
                    tracing::warn!(error = %error_chain(&err), attempt, "broker unavailable, publishing again");
                    tokio::time::sleep(retry.delay(attempt)).await;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(format!(
                        "published {published} messages, then the broker refused the rest"
                    )));
                }
            }
        }
        published += batch.len() as u64;
    }
    publisher.close().await.context("cannot close the publisher")?;
    say(&format!("published {published} messages to {}", args.to));
    args.reporting.print(&serde_json::json!({ "published": published }))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM asks the consumer to finish what is in flight and stop; a second one exits
/// at once (still safe: whatever was not acknowledged is delivered again).
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        say("shutting down: finishing deliveries in flight (signal again to exit at once)");
        trigger.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        say("exiting at once; unacknowledged deliveries will be delivered again");
        std::process::exit(130);
    });
    Ok(shutdown)
}
