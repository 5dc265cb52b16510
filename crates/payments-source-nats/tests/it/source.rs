//! What the conformance suite cannot provoke: connections cut again and again with
//! acknowledgements in flight, a server out of reach for long, a consumer or stream deleted under
//! a running source, the consumer's settings, and what `close` guarantees in each ack mode.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::AckPolicy;
use libtest_mimic::Failed;
use payments_ports::DeliverySource;
use payments_source_nats::NatsSource;
use payments_test_support::nats::{self as test_nats, TestProxy};

use crate::support::{
    PATIENCE, Place, all_settled, body, consumer_info, context, create_stream, eventually, next_within,
    numbered, open, publish, with_streams,
};

/// Takes deliveries (acknowledging each) until the consumer has settled everything: what a lost
/// acknowledgement brought back comes again, and is acknowledged again.
async fn drain_until_settled(source: &mut NatsSource, place: &Place, consumer: &str) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if all_settled(&place.stream, consumer).await {
            return true;
        }
        if let Some(delivery) = next_within(source, Duration::from_millis(200)).await {
            delivery.receipt.ack();
        }
    }
    false
}

/// Four cuts, each right after an acknowledgement was enqueued, with more in flight: nothing is
/// lost, and the acknowledgements made on the old connection are harmless (at worst their message
/// comes again, and is acknowledged then).
pub(crate) fn a_connection_cut_mid_run_loses_nothing() -> Result<(), Failed> {
    with_streams("cut", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        let messages = numbered("k", 300);
        publish(&place.subject, &messages).await;
        let wanted: BTreeSet<Vec<u8>> = messages.into_iter().collect();
        let proxy = TestProxy::start().await?;
        let mut source = open(&place, &proxy.url(), "c", 32, "&ack-wait-ms=1000").await;
        let mut seen = BTreeSet::new();
        let mut cuts = 0;
        while seen.len() < wanted.len() {
            let Some(delivery) = next_within(&mut source, PATIENCE).await else { break };
            seen.insert(body(&delivery));
            delivery.receipt.ack();
            // After every 60th new message, once the client is connected again.
            if seen.len() >= 60 * (cuts + 1) && cuts < 4 {
                let connected = eventually(PATIENCE, || async { proxy.connections() > 0 }).await;
                assert!(connected, "the source reconnects through the proxy");
                proxy.cut(Duration::from_millis(200));
                cuts += 1;
            }
        }
        assert_eq!(cuts, 4, "the cuts must happen mid-run");
        let lost: Vec<_> =
            wanted.difference(&seen).map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert!(lost.is_empty(), "a cut connection must lose nothing; never came: {lost:?}");
        assert!(drain_until_settled(&mut source, &place, "c").await, "every message acknowledged in the end");
        source.close().await?;
        Ok(())
    })
}

/// A server out of reach for long: `next` says so (unavailable) rather than hang, again and again,
/// and once the server is back, delivers what was published meanwhile.
pub(crate) fn an_unreachable_server_is_reported_unavailable_then_recovered() -> Result<(), Failed> {
    with_streams("unreachable", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("before", 1)).await;
        let proxy = TestProxy::start().await?;
        let mut source = open(&place, &proxy.url(), "c", 8, "&ack-wait-ms=400").await;
        next_within(&mut source, PATIENCE).await.expect("delivered").receipt.ack();

        let outage = Duration::from_secs(6);
        let cut_at = Instant::now();
        proxy.cut(outage);
        let mut unavailable = 0;
        while cut_at.elapsed() < outage - Duration::from_secs(1) {
            match tokio::time::timeout(Duration::from_secs(4), source.next()).await {
                Err(_) => panic!("next must not hang while the server is out of reach"),
                Ok(Ok(delivery)) => panic!("nothing was published, yet {delivery:?} came"),
                Ok(Err(err)) => {
                    assert!(err.is_unavailable(), "a server out of reach is worth waiting for: {err}");
                    unavailable += 1;
                }
            }
        }
        assert!(unavailable >= 2, "told unavailable again and again, not once: {unavailable}");
        // Published directly, not through the proxy.
        publish(&place.subject, &numbered("after", 3)).await;
        // The acknowledgement sent just before the cut may have been lost with the connection:
        // then `before-000` comes again, which is allowed.
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let delivery =
                next_within(&mut source, PATIENCE).await.expect("delivered once the server is back");
            let body = String::from_utf8(body(&delivery))?;
            assert!(body.starts_with("after-") || body == "before-000", "unexpected {body}");
            if body != "before-000" {
                got.insert(body);
            }
            delivery.receipt.ack();
        }
        source.close().await?;
        Ok(())
    })
}

/// Deleted while a pull waits at the server: the server ends the pull (409), and the source
/// creates the consumer again; the new consumer delivers the stream from its start, so what came
/// before comes again (the store answers it as a duplicate), and what comes after comes too.
pub(crate) fn a_consumer_deleted_during_a_pull_is_created_again() -> Result<(), Failed> {
    with_streams("deleted-pulling", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("before", 1)).await;
        // A long ack wait: pulls wait 5 s at the server, so the deletion finds one waiting.
        let mut source = open(&place, test_nats::url().as_str(), "c", 8, "&ack-wait-ms=60000").await;
        next_within(&mut source, PATIENCE).await.expect("delivered").receipt.ack();
        let reading = tokio::spawn(async move {
            let mut bodies = Vec::new();
            while !bodies.contains(&b"after-000".to_vec()) {
                let Some(delivery) = next_within(&mut source, PATIENCE).await else { break };
                bodies.push(body(&delivery));
                delivery.receipt.ack();
            }
            (source, bodies)
        });
        let waiting =
            eventually(PATIENCE, || async { consumer_info(&place.stream, "c").await.num_waiting > 0 }).await;
        assert!(waiting, "the source must have a pull waiting at the server");
        let stream = context().await.get_stream(&place.stream).await?;
        // The source creates the consumer again as soon as the server ends its pull, which can race
        // the server's removal of the old consumer's files: the deletion then answers 500
        // ("directory not empty") although the consumer was deleted.
        if let Err(err) = stream.delete_consumer("c").await {
            assert!(err.to_string().contains("code 500"), "deleting the consumer: {err}");
        }
        publish(&place.subject, &numbered("after", 1)).await;
        let (mut source, bodies) = reading.await?;
        assert!(
            bodies.contains(&b"after-000".to_vec()),
            "the source goes on after the deletion: got {bodies:?}"
        );
        // Acknowledged with an ack wait of a minute: only a new consumer delivers it again.
        assert!(
            bodies.contains(&b"before-000".to_vec()),
            "the consumer was created again, and delivered the stream from its start: got {bodies:?}"
        );
        let info = consumer_info(&place.stream, "c").await;
        assert_eq!(info.config.max_deliver, -1, "created again with its settings");
        source.close().await?;
        Ok(())
    })
}

/// Deleted while no pull waits: a 2.9 server leaves the next pull unanswered, without an error;
/// the source must not wait on it silently, but find the consumer gone and create it again.
pub(crate) fn a_consumer_deleted_between_pulls_is_created_again() -> Result<(), Failed> {
    with_streams("deleted-idle", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("before", 1)).await;
        // Pulls wait 500 ms at the server: an idle source soon holds none.
        let mut source = open(&place, test_nats::url().as_str(), "c", 8, "&ack-wait-ms=1000").await;
        next_within(&mut source, PATIENCE).await.expect("delivered").receipt.ack();
        let idle =
            eventually(PATIENCE, || async { consumer_info(&place.stream, "c").await.num_waiting == 0 }).await;
        assert!(idle, "the source's pull must have expired");
        context().await.get_stream(&place.stream).await?.delete_consumer("c").await?;
        publish(&place.subject, &numbered("after", 1)).await;
        let started = Instant::now();
        let mut bodies = Vec::new();
        while !bodies.contains(&b"after-000".to_vec()) {
            let delivery = next_within(&mut source, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("stalled on the deleted consumer; got {bodies:?}"));
            bodies.push(body(&delivery));
            delivery.receipt.ack();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "found out in {:?}", started.elapsed());
        source.close().await?;
        Ok(())
    })
}

/// The stream deleted under a running source: the source makes it again (with its consumer), and
/// reads what is published to it afterwards.
pub(crate) fn a_deleted_stream_is_created_again() -> Result<(), Failed> {
    with_streams("deleted-stream", |streams| async move {
        let place = Place::new(&streams);
        let mut source = open(&place, test_nats::url().as_str(), "c", 8, "&ack-wait-ms=1000").await;
        publish(&place.subject, &numbered("before", 1)).await;
        next_within(&mut source, PATIENCE).await.expect("delivered").receipt.ack();
        context().await.delete_stream(&place.stream).await?;
        let reading = tokio::spawn(async move {
            let delivery = next_within(&mut source, PATIENCE).await;
            (
                source,
                delivery.map(|d| {
                    let body = body(&d);
                    d.receipt.ack();
                    body
                }),
            )
        });
        let back =
            eventually(PATIENCE, || async { context().await.get_stream(&place.stream).await.is_ok() }).await;
        assert!(back, "the source creates the stream again");
        publish(&place.subject, &numbered("after", 1)).await;
        let (mut source, delivered) = reading.await?;
        assert_eq!(delivered.as_deref(), Some(&b"after-000"[..]));
        source.close().await?;
        Ok(())
    })
}

/// Explicit acknowledgements, the URL's ack wait (and the receipts' lease), `max_ack_pending` =
/// the in-flight bound, and `max_deliver = -1`: the server never drops a message by itself.
/// Opening again with other settings updates the consumer and keeps its progress.
pub(crate) fn the_consumer_has_the_settings_the_contract_needs() -> Result<(), Failed> {
    with_streams("settings", |streams| async move {
        let place = Place::new(&streams);
        let mut source = open(&place, test_nats::url().as_str(), "c", 16, "&ack-wait-ms=2500").await;
        let info = consumer_info(&place.stream, "c").await;
        assert_eq!(info.config.durable_name.as_deref(), Some("c"));
        assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
        assert_eq!(info.config.ack_wait, Duration::from_millis(2500));
        assert_eq!(info.config.max_ack_pending, 16);
        assert_eq!(info.config.max_deliver, -1);
        assert_eq!(info.config.filter_subject, place.subject);
        publish(&place.subject, &numbered("m", 3)).await;
        for _ in 0..3 {
            let delivery = next_within(&mut source, PATIENCE).await.expect("delivered");
            assert_eq!(
                delivery.receipt.lease(),
                Some(Duration::from_millis(2500)),
                "the lease is the ack wait"
            );
            assert!(
                delivery.receipt.origin().starts_with(&format!("nats stream {} sequence ", place.stream)),
                "{}",
                delivery.receipt.origin()
            );
            delivery.receipt.ack();
        }
        source.close().await?;

        let mut again = open(&place, test_nats::url().as_str(), "c", 4, "&ack-wait-ms=2000").await;
        let info = consumer_info(&place.stream, "c").await;
        assert_eq!(
            (info.config.max_ack_pending, info.config.ack_wait),
            (4, Duration::from_secs(2)),
            "updated"
        );
        assert_eq!(info.ack_floor.stream_sequence, 3, "progress kept");
        assert!(next_within(&mut again, Duration::from_secs(1)).await.is_none(), "nothing comes again");
        again.close().await?;
        Ok(())
    })
}

/// `close` returns once every acknowledgement enqueued before it is written to the connection:
/// with a long ack wait, only those acknowledgements can settle the messages, and they do.
pub(crate) fn close_sends_every_acknowledgement() -> Result<(), Failed> {
    with_streams("close", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("c", 200)).await;
        let mut source = open(&place, test_nats::url().as_str(), "c", 200, "&ack-wait-ms=60000").await;
        let mut deliveries = Vec::new();
        while deliveries.len() < 200 {
            deliveries.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        assert_eq!(consumer_info(&place.stream, "c").await.num_ack_pending, 200);
        for delivery in deliveries {
            delivery.receipt.ack();
        }
        source.close().await?;
        // Sent, but applied by the server in its own time.
        let settled = eventually(Duration::from_secs(5), || all_settled(&place.stream, "c")).await;
        assert!(settled, "close sent every acknowledgement: {:?}", consumer_info(&place.stream, "c").await);
        Ok(())
    })
}

/// With `double-ack=true`, `close` returns once the server confirmed every acknowledgement: the
/// consumer has nothing pending the moment it returns, without waiting.
pub(crate) fn double_acks_are_confirmed_before_close_returns() -> Result<(), Failed> {
    with_streams("double-ack", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("d", 200)).await;
        let mut source =
            open(&place, test_nats::url().as_str(), "c", 200, "&ack-wait-ms=60000&double-ack=true").await;
        let mut deliveries = Vec::new();
        while deliveries.len() < 200 {
            deliveries.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        for delivery in deliveries {
            delivery.receipt.ack();
        }
        source.close().await?;
        let info = consumer_info(&place.stream, "c").await;
        assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "confirmed before close returned");
        Ok(())
    })
}

/// The backlog probe reads the consumer's `num_pending` and `num_ack_pending`: messages not pulled
/// yet wait, messages held are unacknowledged, and both drain to zero.
pub(crate) fn the_backlog_probe_counts_what_waits_and_what_is_unacknowledged() -> Result<(), Failed> {
    with_streams("backlog", |streams| async move {
        let place = Place::new(&streams);
        create_stream(&place).await;
        publish(&place.subject, &numbered("b", 10)).await;
        let mut source = open(&place, test_nats::url().as_str(), "c", 3, "&ack-wait-ms=60000").await;
        let probe = source.backlog_probe().expect("JetStream can tell its backlog");
        let before = probe.backlog().await?;
        assert_eq!((before.waiting, before.unacknowledged), (Some(10), Some(0)), "nothing pulled yet");

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        let reading = probe.backlog().await?;
        let (waiting, unacknowledged) =
            (reading.waiting.expect("num_pending"), reading.unacknowledged.expect("num_ack_pending"));
        assert!(unacknowledged >= 3, "three held: {reading:?}");
        assert_eq!(waiting + unacknowledged, 10, "every message either waits or is pending: {reading:?}");

        for delivery in held.drain(..) {
            delivery.receipt.ack();
        }
        while let Some(delivery) = next_within(&mut source, Duration::from_secs(1)).await {
            delivery.receipt.ack();
        }
        let drained = eventually(PATIENCE, || async {
            probe.backlog().await.is_ok_and(|b| b.waiting == Some(0) && b.unacknowledged == Some(0))
        })
        .await;
        assert!(
            drained,
            "all pulled and acknowledged, the probe must say 0 and 0: {:?}",
            probe.backlog().await
        );
        source.close().await?;
        Ok(())
    })
}
