//! The metrics and health endpoints, served and scraped over HTTP as Prometheus and a kubelet
//! would, with the consumer's reports and the store's answers scripted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use payments_metrics::{Destination, Endpoints, Metrics, PROCESS_DURATION_BUCKETS};
use payments_ports::{
    Backlog, BacklogProbe, DeadLetterKind, MockPaymentsRepository, Observer, Outcome, PaymentsRepository,
    RepositoryError, RetryCause, SourceError, StoreAnswer,
};
use payments_test_support::scrape::{self, Response, Samples};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn destination() -> Destination {
    Destination { system: "redis".into(), name: "payments".into(), group: Some("ledger".into()) }
}

async fn serve(metrics: &Arc<Metrics>) -> (Endpoints, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let stop = CancellationToken::new();
    let endpoints = Endpoints::serve(listener, Arc::clone(metrics), stop.clone()).expect("serving");
    (endpoints, stop)
}

/// GETs `path`, off the runtime that serves it.
async fn get(address: SocketAddr, path: &'static str, accept: Option<&'static str>) -> Response {
    tokio::task::spawn_blocking(move || scrape::get(address, path, accept))
        .await
        .expect("the scraping thread")
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

async fn scrape_metrics(address: SocketAddr) -> Samples {
    let response = get(address, "/metrics", None).await;
    assert_eq!(response.status, 200, "{}", response.body);
    Samples::parse(&response.body).expect("the Prometheus text format")
}

/// The cumulative count of the bucket of `name` with `labels` whose upper bound is `le`.
fn bucket(samples: &Samples, name: &str, labels: &[(&str, &str)], le: f64) -> f64 {
    let mut found = samples.matching(name, labels).filter(|s| s.labels["le"].parse::<f64>().ok() == Some(le));
    let sample = found.next().unwrap_or_else(|| panic!("no bucket le={le} of {name}"));
    assert!(found.next().is_none(), "one bucket le={le} of {name} {labels:?}");
    sample.value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_of_the_consumer_shows_in_the_scrape_under_the_conventional_names() {
    let metrics = Arc::new(Metrics::new(destination(), "postgres"));
    metrics.delivered(1);
    metrics.settled(Outcome::Applied, Duration::from_millis(3));
    metrics.delivered(1);
    metrics.settled(Outcome::Duplicate, Duration::from_millis(30));
    metrics.delivered(4);
    metrics.retrying(RetryCause::Store);
    metrics.dead_letter(DeadLetterKind::Conflict, false);
    metrics.retrying(RetryCause::DeadLetters);
    metrics.dead_letter(DeadLetterKind::Conflict, true);
    metrics.settled(Outcome::Conflict, Duration::from_secs(2));
    metrics.heartbeat(Some(Duration::from_millis(1500)));
    metrics.set_backlog(Backlog { waiting: Some(42), unacknowledged: None });
    let (endpoints, stop) = serve(&metrics).await;
    let samples = scrape_metrics(endpoints.address()).await;

    let messaging = [
        ("messaging_system", "redis"),
        ("messaging_destination_name", "payments"),
        ("messaging_consumer_group_name", "ledger"),
    ];
    assert_eq!(samples.value("messaging_client_consumed_messages_total", &messaging), Some(3.0));
    // Successes carry no error_type; a conflict carries its outcome as one.
    let succeeded: Vec<_> = samples
        .matching("messaging_process_duration_seconds_count", &messaging)
        .filter(|sample| !sample.labels.contains_key("error_type"))
        .map(|sample| sample.value)
        .collect();
    assert_eq!(succeeded, [2.0]);
    let conflicted = [("error_type", "conflict")];
    assert_eq!(samples.value("messaging_process_duration_seconds_count", &conflicted), Some(1.0));
    // The convention's buckets, every one of them, then +Inf.
    let bounds: Vec<f64> = samples
        .matching("messaging_process_duration_seconds_bucket", &conflicted)
        .map(|sample| sample.labels["le"].parse().expect("a bound"))
        .collect();
    assert_eq!(bounds[..bounds.len() - 1], PROCESS_DURATION_BUCKETS);
    assert_eq!(bucket(&samples, "messaging_process_duration_seconds_bucket", &conflicted, 1.0), 0.0);
    assert_eq!(bucket(&samples, "messaging_process_duration_seconds_bucket", &conflicted, 2.5), 1.0);

    for (outcome, count) in [
        ("applied", 1.0),
        ("duplicate", 1.0),
        ("conflict", 1.0),
        ("invalid", 0.0),
        ("too_large", 0.0),
        ("unsettled", 0.0),
    ] {
        assert_eq!(
            samples.value("payments_deliveries_total", &[("outcome", outcome)]),
            Some(count),
            "{outcome}"
        );
    }
    assert_eq!(samples.value("payments_retries_total", &[("cause", "store")]), Some(1.0));
    assert_eq!(samples.value("payments_retries_total", &[("cause", "dead_letters")]), Some(1.0));
    assert_eq!(samples.value("payments_dead_letters_total", &[("kind", "conflict")]), Some(1.0));
    assert_eq!(samples.value("payments_dead_letters_total", &[("kind", "invalid")]), Some(0.0));
    assert_eq!(samples.value("payments_dead_letter_failures_total", &[("kind", "conflict")]), Some(1.0));
    assert_eq!(samples.value("payments_delivery_attempts_count", &[]), Some(3.0));
    assert_eq!(bucket(&samples, "payments_delivery_attempts_bucket", &[], 3.0), 2.0);
    assert_eq!(samples.value("payments_oldest_in_flight_seconds", &[]), Some(1.5));
    let last = samples.value("payments_last_delivery_timestamp_seconds", &[]).expect("set");
    assert!(last > 1.7e9, "a Unix time, not an uptime: {last}");
    assert_eq!(samples.value("payments_source_backlog_messages", &messaging), Some(42.0));
    assert_eq!(
        samples.value("payments_source_unacknowledged_messages", &[]),
        None,
        "a count the broker did not give stays absent"
    );
    stop.cancel();
    endpoints.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_are_timed_errors_counted_by_type_and_the_store_is_up_while_it_answers() {
    let metrics = Arc::new(Metrics::new(destination(), "postgres"));
    metrics.health().mark_started();
    let (endpoints, stop) = serve(&metrics).await;
    let address = endpoints.address();

    metrics.saved(Duration::from_micros(300), StoreAnswer::Answered);
    let samples = scrape_metrics(address).await;
    assert_eq!(samples.value("payments_store_up", &[("store", "postgres")]), Some(1.0));
    assert_eq!(get(address, "/readyz", None).await.status, 200);
    for error_type in ["unavailable", "failed"] {
        assert_eq!(
            samples
                .value("payments_store_errors_total", &[("operation", "save"), ("error_type", error_type)]),
            Some(0.0),
            "every error series exists from the start, so that increase() sees the first"
        );
    }

    metrics.saved(Duration::from_secs(3), StoreAnswer::Unavailable);
    metrics.store_pinged(Duration::from_millis(2), StoreAnswer::Failed);
    let samples = scrape_metrics(address).await;
    assert_eq!(samples.value("payments_store_up", &[("store", "postgres")]), Some(0.0));
    let save = [("store", "postgres"), ("operation", "save")];
    assert_eq!(samples.value("payments_store_operation_duration_seconds_count", &save), Some(2.0));
    assert_eq!(bucket(&samples, "payments_store_operation_duration_seconds_bucket", &save, 0.0005), 1.0);
    assert_eq!(bucket(&samples, "payments_store_operation_duration_seconds_bucket", &save, 2.5), 1.0);
    assert_eq!(bucket(&samples, "payments_store_operation_duration_seconds_bucket", &save, 5.0), 2.0);
    assert_eq!(
        samples.value("payments_store_errors_total", &[("operation", "save"), ("error_type", "unavailable")]),
        Some(1.0)
    );
    assert_eq!(
        samples.value("payments_store_errors_total", &[("operation", "ping"), ("error_type", "failed")]),
        Some(1.0)
    );
    let ready = get(address, "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("[-]store unreachable"), "{}", ready.body);
    let live = get(address, "/livez", None).await;
    assert_eq!(live.status, 200, "a store outage is not a reason to restart: {}", live.body);

    metrics.saved(Duration::from_micros(300), StoreAnswer::Answered);
    assert_eq!(get(address, "/readyz", None).await.status, 200);
    stop.cancel();
    endpoints.stopped().await;
}

struct ScriptedProbe(AtomicBool);

#[async_trait::async_trait]
impl BacklogProbe for ScriptedProbe {
    async fn backlog(&self) -> Result<Backlog, SourceError> {
        if self.0.load(Ordering::SeqCst) {
            Ok(Backlog { waiting: Some(7), unacknowledged: Some(3) })
        } else {
            Err(SourceError::unavailable("broker down"))
        }
    }
}

/// Polls `probe` until it holds, for at most ten seconds.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_pings_an_idle_store_and_asks_the_broker_for_its_backlog() {
    let metrics = Arc::new(Metrics::new(destination(), "postgres"));
    let store_up = Arc::new(AtomicBool::new(false));
    let mut mock = MockPaymentsRepository::new();
    let up = Arc::clone(&store_up);
    mock.expect_ping().returning(move || {
        if up.load(Ordering::SeqCst) { Ok(()) } else { Err(RepositoryError::unavailable("down")) }
    });
    let store: Arc<dyn PaymentsRepository> = Arc::new(mock);
    let probe = Arc::new(ScriptedProbe(AtomicBool::new(false)));
    metrics.health().mark_started();
    let stop = CancellationToken::new();
    let watching = payments_metrics::watch(
        Arc::clone(&metrics),
        store,
        Some(Arc::clone(&probe) as Arc<dyn BacklogProbe>),
        Duration::from_millis(20),
        stop.clone(),
    );
    let (endpoints, stop_serving) = serve(&metrics).await;
    let address = endpoints.address();

    eventually("the store and the broker are seen down", async || {
        let ready = get(address, "/readyz", None).await;
        ready.status == 503 && ready.body.contains("[-]store") && ready.body.contains("[-]source")
    })
    .await;
    store_up.store(true, Ordering::SeqCst);
    probe.0.store(true, Ordering::SeqCst);
    eventually("both come back, with the backlog", async || {
        let samples = scrape_metrics(address).await;
        get(address, "/readyz", None).await.status == 200
            && samples.value("payments_source_up", &[]) == Some(1.0)
            && samples.value("payments_source_backlog_messages", &[]) == Some(7.0)
            && samples.value("payments_source_unacknowledged_messages", &[]) == Some(3.0)
            && samples
                .value("payments_store_operation_duration_seconds_count", &[("operation", "ping")])
                .is_some_and(|pings| pings >= 2.0)
    })
    .await;
    stop.cancel();
    watching.await.expect("the watch ends when told");
    stop_serving.cancel();
    endpoints.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_speak_openmetrics_when_asked_and_refuse_what_they_do_not_serve() {
    let metrics = Arc::new(Metrics::new(destination(), "postgres"));
    let (endpoints, stop) = serve(&metrics).await;
    let address = endpoints.address();

    let plain = get(address, "/metrics", None).await;
    assert_eq!(plain.content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(!plain.body.contains("# EOF"));
    let open =
        get(address, "/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
    assert_eq!(open.status, 200);
    assert!(open.content_type.as_deref().is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);

    let not_ready = get(address, "/readyz", None).await;
    assert_eq!(not_ready.status, 503, "not started yet");
    assert!(not_ready.body.contains("[-]started"), "{}", not_ready.body);
    assert_eq!(get(address, "/nothing", None).await.status, 404);
    stop.cancel();
    endpoints.stopped().await;
}
