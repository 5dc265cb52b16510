//! The command line: every command, every flag, and the environment variable each flag may come
//! from instead (a flag wins over its variable). A contract: flags are added, never renamed or
//! removed.

use std::ffi::OsStr;
use std::io::Write as _;
use std::marker::PhantomData;
use std::str::FromStr;

use anyhow::Context as _;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use payments_app::adapters::{DEFAULT_STORE, DeadLetterSpec, InputSpec, StoreSpec, TargetSpec, store_help};
use payments_ports::error_chain;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "payments-app",
    version,
    about = "Applies PaymentTaken events exactly once over at-least-once delivery"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How to log on stderr: `text` for people, `json` for one object per line (timestamp, level,
    /// message, and fields such as payment_id, origin, attempt and outcome).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PAYMENTS_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Consume PaymentTaken events, one JSON object per line, and record each payment exactly once.
    Consume(Box<ConsumeArgs>),
    /// Print every recorded payment as one JSON line, in ascending payment ID order.
    Export(ExportArgs),
    /// Run the consumer against an in-process broker that redelivers, duplicates, reorders and
    /// crashes, then check that every payment was recorded exactly once.
    Simulate(SimulateArgs),
    /// Publish each line of a file (or stdin) as one message to a broker, confirmed by it: for
    /// demos, tests and benchmarks.
    Publish(Box<PublishArgs>),
    /// Publish the PaymentRecorded events of a store's outbox to a broker, each at least once and
    /// always under the same message ID, marking them published once the broker confirms.
    Relay(Box<RelayArgs>),
}

/// `--concurrency`, shared by the commands that run a consumer.
#[derive(Args, Debug)]
pub(crate) struct Concurrency {
    /// How many deliveries are handled at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..), env = "PAYMENTS_CONCURRENCY")]
    pub(crate) concurrency: u16,
}

/// `--report`, shared by the commands that count.
#[derive(Args, Debug)]
pub(crate) struct Reporting {
    /// Also print the counts on stdout in this format.
    #[arg(long, value_enum, env = "PAYMENTS_REPORT")]
    pub(crate) report: Option<ReportFormat>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ReportFormat {
    /// One JSON object with integer counts.
    Json,
}

impl Reporting {
    /// Prints `counts` on stdout, if a report was asked for.
    pub(crate) fn print(&self, counts: &impl Serialize) -> anyhow::Result<()> {
        let Some(ReportFormat::Json) = self.report else { return Ok(()) };
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, counts).context("cannot write the report")?;
        writeln!(stdout).context("cannot write the report")
    }
}

#[derive(Args, Debug)]
pub(crate) struct ConsumeArgs {
    #[arg(long, default_value = DEFAULT_STORE, help = store_help(), env = "PAYMENTS_STORE", hide_env_values = true, value_parser = Secret::<StoreSpec>::new())]
    pub(crate) store: StoreSpec,
    /// The input: a path, `-` for stdin, or a broker:
    /// `redis://HOST:PORT[/DB]?stream=NAME&group=NAME[&consumer=NAME][&claim-idle-ms=N][&batch=N][&max-deliveries=N]`,
    /// `nats://HOST:PORT?stream=NAME&subject=SUBJECT&consumer=NAME[&ack-wait-ms=N][&batch=N][&max-deliveries=N][&double-ack=true]`,
    /// `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME[&prefetch=N][&max-deliveries=N]`
    /// (`rediss://`, `tls://` and `amqps://` for TLS).
    #[arg(long, default_value = "-", env = "PAYMENTS_INPUT", hide_env_values = true, value_parser = Secret::<InputSpec>::new())]
    pub(crate) input: InputSpec,
    /// Where dead letters go: a file of JSON lines, synced before the acknowledgement, or a broker,
    /// confirmed before it: `redis://HOST:PORT[/DB]?stream=NAME`,
    /// `nats://HOST:PORT?stream=NAME&subject=SUBJECT`, `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME`.
    /// Default: beside a file store, or stderr for the memory store.
    #[arg(long, env = "PAYMENTS_DEAD_LETTER", hide_env_values = true, value_parser = Secret::<DeadLetterSpec>::new())]
    pub(crate) dead_letter: Option<DeadLetterSpec>,
    #[command(flatten)]
    pub(crate) concurrency: Concurrency,
    #[command(flatten)]
    pub(crate) reporting: Reporting,
    /// The largest message, in bytes (default 64 KiB); a larger one is dead-lettered as too large,
    /// and a line over it is never read whole.
    #[arg(long, env = "PAYMENTS_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// The same limit under its older name, for JSON lines; `--max-message-bytes` wins.
    #[arg(long, env = "PAYMENTS_MAX_LINE_BYTES")]
    pub(crate) max_line_bytes: Option<usize>,
    /// Exit (status 0) once nothing has arrived for this many seconds and nothing is in flight:
    /// for batch runs and tests against a broker, which never runs out by itself.
    #[arg(long, env = "PAYMENTS_STOP_WHEN_IDLE")]
    pub(crate) stop_when_idle: Option<f64>,
    /// How long, in seconds, one delivery may find the store unavailable before the consumer stops.
    #[arg(long, default_value_t = 60.0, env = "PAYMENTS_RETRY_LIMIT_SECS")]
    pub(crate) retry_limit_secs: f64,
    /// Serve Prometheus metrics at `/metrics`, and health at `/livez` and `/readyz`, on this
    /// `HOST:PORT` (port 0: any free one, printed at start). Off by default.
    #[arg(long, env = "PAYMENTS_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Relay the store's outbox from this process: publish the PaymentRecorded event of every
    /// payment recorded to this target (same forms as `publish --to`), marked published once the
    /// broker confirms. Turns the outbox on. At the end of a finite input, everything recorded is
    /// published before exit; on a signal, what is left is said and left for the next relay.
    #[arg(long, env = "PAYMENTS_RELAY_TO", hide_env_values = true, value_parser = Secret::<TargetSpec>::new())]
    pub(crate) publish_to: Option<TargetSpec>,
    /// Turn the store's outbox on (for good, for every process using the store) without relaying
    /// here: for consumers whose events a separate `payments-app relay` publishes.
    #[arg(long, env = "PAYMENTS_OUTBOX")]
    pub(crate) outbox: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    #[arg(long, default_value = DEFAULT_STORE, help = store_help(), env = "PAYMENTS_STORE", hide_env_values = true, value_parser = Secret::<StoreSpec>::new())]
    pub(crate) store: StoreSpec,
}

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// Where to publish: `redis://HOST:PORT[/DB]?stream=NAME`,
    /// `nats://HOST:PORT?stream=NAME&subject=SUBJECT` (the stream is created if missing), or
    /// `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME` (or `?exchange=NAME&routing-key=KEY`).
    #[arg(long, env = "PAYMENTS_PUBLISH_TO", hide_env_values = true, value_parser = Secret::<TargetSpec>::new())]
    pub(crate) to: TargetSpec,
    /// The lines to publish: a path, or `-` for stdin.
    #[arg(long, default_value = "-", env = "PAYMENTS_PUBLISH_INPUT")]
    pub(crate) input: String,
    /// The longest line, in bytes (default 64 KiB); a longer one stops the run, named.
    #[arg(long, env = "PAYMENTS_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    #[command(flatten)]
    pub(crate) reporting: Reporting,
}

#[derive(Args, Debug)]
pub(crate) struct RelayArgs {
    #[arg(long, default_value = DEFAULT_STORE, help = store_help(), env = "PAYMENTS_STORE", hide_env_values = true, value_parser = Secret::<StoreSpec>::new())]
    pub(crate) store: StoreSpec,
    /// Where the events go, in the forms of `publish --to`: `redis://HOST:PORT[/DB]?stream=NAME`,
    /// `nats://HOST:PORT?stream=NAME&subject=SUBJECT` (the message ID goes in `Nats-Msg-Id`, so
    /// JetStream drops republications within its duplicate window), or
    /// `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME`.
    #[arg(long, env = "PAYMENTS_RELAY_TO", hide_env_values = true, value_parser = Secret::<TargetSpec>::new())]
    pub(crate) to: TargetSpec,
    /// Exit (status 0) once the outbox has been empty for this many seconds. Default: run until
    /// a signal.
    #[arg(long, env = "PAYMENTS_STOP_WHEN_IDLE")]
    pub(crate) stop_when_idle: Option<f64>,
    /// How many events are claimed, published and marked at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u16).range(1..), env = "PAYMENTS_RELAY_BATCH")]
    pub(crate) batch: u16,
    /// How long, in seconds, the broker or the store may stay unavailable before the relay stops.
    #[arg(long, default_value_t = 60.0, env = "PAYMENTS_RETRY_LIMIT_SECS")]
    pub(crate) retry_limit_secs: f64,
    /// Serve Prometheus metrics at `/metrics`, and health at `/livez` and `/readyz`, on this
    /// `HOST:PORT` (port 0: any free one, printed at start). Off by default.
    #[arg(long, env = "PAYMENTS_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    #[command(flatten)]
    pub(crate) reporting: Reporting,
}

#[derive(Args, Debug)]
pub(crate) struct SimulateArgs {
    /// The store to run against; it must be empty. Default: a new journal in a temporary
    /// directory, removed afterwards. Its variable is not PAYMENTS_STORE, so that a simulation
    /// never runs on a production store by accident.
    #[arg(long, env = "PAYMENTS_SIMULATE_STORE", hide_env_values = true, value_parser = Secret::<StoreSpec>::new())]
    pub(crate) store: Option<StoreSpec>,
    /// How many distinct payments to send.
    #[arg(long, default_value_t = 10_000, env = "PAYMENTS_SIMULATE_PAYMENTS")]
    pub(crate) payments: usize,
    /// The chance that a delivery is handed out twice at once.
    #[arg(long, default_value_t = 0.1, value_parser = rate, env = "PAYMENTS_SIMULATE_DUPLICATE_RATE")]
    pub(crate) duplicate_rate: f64,
    /// The chance that the consumer crashes after an effect, before its acknowledgement
    /// (at most 0.5, so that the run ends).
    #[arg(long, default_value_t = 0.01, value_parser = crash_rate, env = "PAYMENTS_SIMULATE_CRASH_RATE")]
    pub(crate) crash_rate: f64,
    /// The share of payments also sent in a conflicting version.
    #[arg(long, default_value_t = 0.02, value_parser = rate, env = "PAYMENTS_SIMULATE_CONFLICT_RATE")]
    pub(crate) conflict_rate: f64,
    /// Invalid messages, as a share of the payments.
    #[arg(long, default_value_t = 0.01, value_parser = rate, env = "PAYMENTS_SIMULATE_INVALID_RATE")]
    pub(crate) invalid_rate: f64,
    /// Where all randomness comes from; the same seed publishes the same messages. Default: random.
    #[arg(long, env = "PAYMENTS_SIMULATE_SEED")]
    pub(crate) seed: Option<u64>,
    #[command(flatten)]
    pub(crate) concurrency: Concurrency,
    #[command(flatten)]
    pub(crate) reporting: Reporting,
}

/// Parses a value that may hold a password (a URL) without ever echoing it: clap's own errors
/// quote the value as given, so a refused one is reported by the spec's own error, which shows
/// the URL with its password hidden.
#[derive(Clone, Debug)]
pub(crate) struct Secret<T>(PhantomData<fn() -> T>);

impl<T> Secret<T> {
    pub(crate) const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> TypedValueParser for Secret<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.map(|arg| format!("--{}", arg.get_long().unwrap_or_default())).unwrap_or_default();
        let Some(text) = value.to_str() else {
            return Err(clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("the value of {name} is not UTF-8\n"),
            )
            .with_cmd(command));
        };
        text.parse().map_err(|err: T::Err| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {name}: {}\n", error_chain(&err)),
            )
            .with_cmd(command)
        })
    }
}

/// Why a rate on the command line is not one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RateError {
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("{0} is not between 0 and 1")]
    OutOfRange(f64),
    #[error("{0} is above 0.5: the run might never end")]
    TooManyCrashes(f64),
}

fn rate(text: &str) -> Result<f64, RateError> {
    let rate: f64 = text.parse().map_err(|_| RateError::NotANumber(text.to_owned()))?;
    if (0.0..=1.0).contains(&rate) { Ok(rate) } else { Err(RateError::OutOfRange(rate)) }
}

fn crash_rate(text: &str) -> Result<f64, RateError> {
    let rate = rate(text)?;
    if rate <= 0.5 { Ok(rate) } else { Err(RateError::TooManyCrashes(rate)) }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag of every command names its environment variable, so that `--help` shows it.
    #[test]
    fn every_flag_can_come_from_the_environment() {
        let cli = Cli::command();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments().filter(|arg| arg.get_long().is_some()) {
                let long = arg.get_long().unwrap_or_default();
                if matches!(long, "help" | "version") {
                    continue;
                }
                let env = arg.get_env().and_then(|env| env.to_str());
                assert!(
                    env.is_some_and(|env| env.starts_with("PAYMENTS_")),
                    "`payments-app {} --{long}` has no PAYMENTS_ variable",
                    command.get_name()
                );
            }
        }
    }
}
