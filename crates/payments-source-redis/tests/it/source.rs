//! The source against a real server, in situations the conformance suite cannot make.

use std::collections::BTreeSet;
use std::time::Duration;

use libtest_mimic::Failed;
use payments_ports::{DeliverySource, Payload};

use crate::support::{
    CLAIM_IDLE_MS, add, body, connection, eventually, next_within, numbered, open, open_with, pending_count,
    with_keys,
};

const PATIENCE: Duration = Duration::from_secs(10);

/// Acknowledgements enqueued just before the kill go out on a connection that is being killed:
/// some may be lost (their entries come again), none may make an entry disappear unhandled.
pub(crate) fn a_killed_connection_with_acknowledgements_in_flight_loses_nothing() -> Result<(), Failed> {
    with_keys("killed", |keys| async move {
        let stream = keys.key("stream");
        let messages = numbered("k", 300);
        add(&stream, &messages).await;
        let wanted: BTreeSet<Vec<u8>> = messages.into_iter().collect();
        let mut source = open(&keys, "g", "c", 32).await;
        let mut seen = BTreeSet::new();
        let mut kills = 0;
        while seen.len() < wanted.len() {
            let Some(delivery) = next_within(&mut source, PATIENCE).await else { break };
            seen.insert(body(&delivery));
            delivery.receipt.ack();
            // Every 60 deliveries, right after an acknowledgement was enqueued.
            if seen.len() % 60 == 0 && kills < 4 {
                let killed = keys.kill_clients().await?;
                assert!(killed >= 1, "the source's connections must be found by their name");
                kills += 1;
            }
        }
        assert_eq!(kills, 4, "the kills must happen mid-stream");
        let lost: Vec<_> =
            wanted.difference(&seen).map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert!(lost.is_empty(), "a killed connection must lose nothing; never came: {lost:?}");
        source.close().await?;
        assert_eq!(pending_count(&stream, "g").await, 0, "every entry acknowledged in the end");
        Ok(())
    })
}

/// Entries deleted from the stream while pending (XDEL, XTRIM) can never be delivered: each path
/// that meets one (the own pending list, a dropped receipt claimed back, a takeover) must
/// acknowledge it rather than stall on it or leave it pending for ever.
pub(crate) fn trimmed_entries_are_acknowledged_and_do_not_block() -> Result<(), Failed> {
    with_keys("trimmed", |keys| async move {
        let stream = keys.key("stream");
        let ids = add(&stream, &numbered("t", 12)).await;
        let mut redis = connection().await;

        // 1. The own pending list: "a" takes 4 and crashes; 2 of them are deleted, and the stream
        // is trimmed below the third; "a" comes back.
        let mut a = open(&keys, "g", "a", 4).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(next_within(&mut a, PATIENCE).await.expect("delivered"));
        }
        drop(a);
        drop(held);
        redis::cmd("XDEL").arg(&stream).arg(&ids[1]).exec_async(&mut redis).await?;
        redis::cmd("XTRIM").arg(&stream).arg("MINID").arg(&ids[3]).exec_async(&mut redis).await?;
        // One in flight: nothing waits in the buffer, so that a dropped receipt is claimed back
        // by the very next call (part 2).
        let mut a = open(&keys, "g", "a", 1).await;
        let mut got = Vec::new();
        while let Some(delivery) = next_within(&mut a, Duration::from_secs(1)).await {
            got.push(String::from_utf8(body(&delivery))?);
            delivery.receipt.ack();
        }
        let expected: Vec<String> = (3..12).map(|i| format!("t-{i:03}")).collect();
        assert_eq!(got, expected, "deleted entries are skipped; the rest come, none blocked");

        // 2. A dropped receipt whose entry is deleted before it is claimed back.
        let more = add(&stream, &numbered("u", 2)).await;
        let first = next_within(&mut a, PATIENCE).await.expect("delivered");
        assert_eq!(body(&first), b"u-000");
        redis::cmd("XDEL").arg(&stream).arg(&more[0]).exec_async(&mut redis).await?;
        drop(first);
        let second = next_within(&mut a, PATIENCE).await.expect("the next one is not blocked");
        assert_eq!(body(&second), b"u-001");
        second.receipt.ack();

        // 3. A takeover: "b" holds one and goes silent, it is deleted, "c" takes over.
        let last = add(&stream, &numbered("v", 1)).await;
        let mut b = open(&keys, "g", "b", 1).await;
        let silent = next_within(&mut b, PATIENCE).await.expect("delivered");
        redis::cmd("XDEL").arg(&stream).arg(&last[0]).exec_async(&mut redis).await?;
        let mut c = open(&keys, "g", "c", 1).await;
        let taken_over = next_within(&mut c, Duration::from_millis(CLAIM_IDLE_MS * 4)).await;
        assert!(taken_over.is_none(), "a deleted entry cannot be delivered: {taken_over:?}");
        assert!(
            eventually(PATIENCE, || async { pending_count(&stream, "g").await == 0 }).await,
            "nothing stays pending: {} entries are",
            pending_count(&stream, "g").await
        );
        drop(silent);
        a.close().await?;
        b.close().await?;
        c.close().await?;
        Ok(())
    })
}

/// The stream deleted under a running source: a read blocked at that moment is told `UNBLOCKED`,
/// the next one `NOGROUP`. Either way the source creates the group again and reads what comes.
pub(crate) fn a_deleted_and_recreated_stream_is_read_again() -> Result<(), Failed> {
    with_keys("recreated", |keys| async move {
        let stream = keys.key("stream");
        add(&stream, &numbered("before", 1)).await;
        // A long claim timeout: reads block for 2 s, so the deletion finds one blocked.
        let mut source = open_with(&keys, "g", "c", 8, 10_000).await;
        let first = next_within(&mut source, PATIENCE).await.expect("delivered");
        first.receipt.ack();

        // Deleted while a read is blocked.
        let reading = tokio::spawn(async move {
            let delivery = next_within(&mut source, PATIENCE).await;
            (source, delivery)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut redis = connection().await;
        redis::cmd("DEL").arg(&stream).exec_async(&mut redis).await?;
        add(&stream, &numbered("after-unblocked", 1)).await;
        let (mut source, delivery) = reading.await?;
        let delivery = delivery.expect("the source reads the new stream");
        assert_eq!(body(&delivery), b"after-unblocked-000");
        delivery.receipt.ack();

        // Deleted between reads, then recreated by a producer (no group).
        redis::cmd("DEL").arg(&stream).exec_async(&mut redis).await?;
        add(&stream, &numbered("after-nogroup", 2)).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let delivery = next_within(&mut source, PATIENCE).await.expect("delivered after NOGROUP");
            got.push(String::from_utf8(body(&delivery))?);
            delivery.receipt.ack();
        }
        assert_eq!(got, ["after-nogroup-000", "after-nogroup-001"]);
        source.close().await?;
        assert_eq!(pending_count(&stream, "g").await, 0);
        Ok(())
    })
}

pub(crate) fn an_entry_without_a_payload_is_unreadable() -> Result<(), Failed> {
    with_keys("unreadable", |keys| async move {
        let stream = keys.key("stream");
        let mut redis = connection().await;
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("body")
            .arg("{}")
            .arg("n")
            .arg(7)
            .query_async(&mut redis)
            .await?;
        let mut source = open(&keys, "g", "c", 8).await;
        let delivery = next_within(&mut source, PATIENCE).await.expect("delivered, not dropped");
        let Payload::Unreadable { reason, raw } = &delivery.payload else {
            panic!("an entry without a payload field is unreadable, got {:?}", delivery.payload)
        };
        assert_eq!(reason, &format!("stream entry {id} has no `payload` field (its fields: body, n)"));
        assert_eq!(&raw[..], b"body={}\nn=7\n");
        assert_eq!(delivery.receipt.origin(), format!("redis stream {stream} entry {id}"));
        delivery.receipt.ack();
        source.close().await?;
        Ok(())
    })
}

/// `close` returns once every acknowledgement enqueued before it is sent: nothing is pending
/// the moment it returns, without waiting; and the consumer, holding nothing, leaves the group.
pub(crate) fn close_sends_every_acknowledgement() -> Result<(), Failed> {
    with_keys("close", |keys| async move {
        let stream = keys.key("stream");
        add(&stream, &numbered("c", 200)).await;
        let mut source = open(&keys, "g", "c", 200).await;
        let mut deliveries = Vec::new();
        while deliveries.len() < 200 {
            deliveries.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        assert_eq!(pending_count(&stream, "g").await, 200);
        for delivery in deliveries {
            delivery.receipt.ack();
        }
        source.close().await?;
        assert_eq!(pending_count(&stream, "g").await, 0, "close sent every acknowledgement");
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("g")
            .query_async(&mut connection().await)
            .await?;
        assert!(consumers.is_empty(), "a consumer that holds nothing leaves the group: {consumers:?}");
        Ok(())
    })
}

/// The backlog probe reads the group's lag and pending count on a connection of its own: entries
/// not read yet wait, entries read and held are unacknowledged, and both drain to zero.
pub(crate) fn the_backlog_probe_counts_what_waits_and_what_is_unacknowledged() -> Result<(), Failed> {
    with_keys("backlog", |keys| async move {
        let stream = keys.key("stream");
        add(&stream, &numbered("b", 10)).await;
        let mut source = open(&keys, "g", "c", 3).await;
        let probe = source.backlog_probe().expect("Redis can tell its backlog");
        let before = probe.backlog().await?;
        assert_eq!((before.waiting, before.unacknowledged), (Some(10), Some(0)), "nothing read yet");

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        let reading = probe.backlog().await?;
        let (waiting, unacknowledged) =
            (reading.waiting.expect("a lag"), reading.unacknowledged.expect("a pending count"));
        assert!(unacknowledged >= 3, "three held: {reading:?}");
        assert_eq!(waiting + unacknowledged, 10, "every entry either waits or is pending: {reading:?}");

        for delivery in held.drain(..) {
            delivery.receipt.ack();
        }
        while let Some(delivery) = next_within(&mut source, Duration::from_millis(500)).await {
            delivery.receipt.ack();
        }
        let drained = eventually(PATIENCE, || async {
            probe.backlog().await.is_ok_and(|b| b.waiting == Some(0) && b.unacknowledged == Some(0))
        })
        .await;
        assert!(
            drained,
            "all read and acknowledged, the probe must say 0 and 0: {:?}",
            probe.backlog().await
        );
        source.close().await?;
        Ok(())
    })
}
