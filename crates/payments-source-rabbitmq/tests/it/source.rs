//! The source against a real server, in situations the conformance suite cannot make: connections
//! closed by the broker and cut by the network with deliveries held across, a broker that stays
//! away, queues declared by others, the delivery limit, and what the suite's `groups` capability
//! would check for consumers of one queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use libtest_mimic::Failed;
use payments_ports::{Delivery, DeliverySource, Payload};
use payments_source_rabbitmq::{QUEUE_DELIVERY_LIMIT, RabbitSource, parked_queue};
use payments_test_support::rabbitmq::{self as test_rabbitmq, Proxy, TestQueues};

use crate::support::{
    PATIENCE, body, drain, eventually, next_within, numbered, open, publish, queue, ready, source_config,
    with_queues,
};

/// How a test breaks the source's connection.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// `rabbitmqctl close_connection`: the broker closes it (`CONNECTION_FORCED`).
    ByTheBroker,
    /// The proxy in between drops both sockets: a network fault.
    ByTheNetwork,
}

/// Consumes 300 messages, breaking the connection twice with five deliveries held unacknowledged
/// across each break, and acknowledged only once the source has reconnected: on the new
/// connection those acknowledgements cannot be sent (lapin refuses them: counted as stale), and
/// must do no harm (the new channel goes on acknowledging). Every message must come. The held ones
/// come once more, with a higher attempt. Nothing else may come twice, except a message
/// acknowledged around a break whose acknowledgement did not reach RabbitMQ or was not applied yet
/// (a quorum queue applies them asynchronously): at most once more, and at most a prefetch of them
/// per break. The queue ends empty.
async fn survive(queues: TestQueues, how: Break) -> Result<(), Failed> {
    const PREFETCH: usize = 32;
    let queue = queue(&queues, "payments");
    let messages = numbered("k", 300);
    publish(&queues, &queue, &messages).await;
    let proxy = Proxy::start().await?;
    let url = match how {
        Break::ByTheBroker => test_rabbitmq::url(),
        Break::ByTheNetwork => proxy.url(),
    };
    let mut source = RabbitSource::connect(source_config(&queues, &url, &queue, PREFETCH)).await?;
    let mut seen: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    let mut held_across: BTreeSet<Vec<u8>> = BTreeSet::new();
    // Deliveries held across the last break, until the source has reconnected.
    let mut held: Vec<Delivery> = Vec::new();
    let mut breaks = 0;
    let mut taken = 0;
    while seen.len() < messages.len() || !held.is_empty() {
        let Some(delivery) = next_within(&mut source, PATIENCE).await else { break };
        taken += 1;
        seen.entry(body(&delivery)).or_default().push(delivery.attempt);
        if !held.is_empty() && source.stats().reconnects == breaks {
            // Reconnected: the held deliveries belong to a channel that is gone. Everything
            // acknowledged so far is handed over first, so that only their five are counted.
            source.flush(PATIENCE).await?;
            let before = source.stats().stale_settlements;
            for delivery in held.drain(..) {
                held_across.insert(body(&delivery));
                delivery.receipt.ack();
            }
            assert!(
                eventually(PATIENCE, || async { source.stats().stale_settlements == before + 5 }).await,
                "an acknowledgement from before the break is refused by lapin, never sent: {:?}",
                source.stats()
            );
        }
        if taken % 100 != 95 || breaks == 2 {
            delivery.receipt.ack();
            continue;
        }
        // Five deliveries held across the break: this one and the next four.
        held.push(delivery);
        while held.len() < 5 {
            let delivery = next_within(&mut source, PATIENCE).await.expect("delivered");
            seen.entry(body(&delivery)).or_default().push(delivery.attempt);
            held.push(delivery);
        }
        source.flush(PATIENCE).await?;
        match how {
            Break::ByTheBroker => {
                let closed = queues.close_connections().await?;
                assert_eq!(closed, 1, "the source's connection is found by its name");
            }
            Break::ByTheNetwork => {
                assert!(proxy.cut() >= 1, "the source's connection goes through the proxy")
            }
        }
        breaks += 1;
    }
    assert_eq!((breaks, held_across.len()), (2, 10), "the breaks must happen mid-stream");
    let lost: Vec<String> = messages
        .iter()
        .filter(|m| !seen.contains_key(*m))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert!(lost.is_empty(), "a broken connection must lose nothing; never came: {lost:?}");
    for held in &held_across {
        let attempts = &seen[held];
        assert_eq!(attempts.len(), 2, "each held message comes back once");
        assert!(attempts[1] > attempts[0], "and says a higher attempt: {attempts:?}");
    }
    let again: Vec<(&Vec<u8>, &Vec<u32>)> =
        seen.iter().filter(|(b, a)| a.len() > 1 && !held_across.contains(*b)).collect();
    assert!(
        again.iter().all(|(_, a)| a.len() == 2) && again.len() <= 2 * PREFETCH,
        "only a message acknowledged around a break may come again, once: {again:?}"
    );
    let stats = source.stats();
    assert_eq!(stats.reconnects, 2, "{stats:?}");
    // The stale acknowledgements did not break the new channel: it kept acknowledging, and
    // closing sends the last ones.
    source.close().await?;
    assert_eq!(ready(&queue).await, 0, "nothing is left in the queue");
    let mut after = open(&queues, &queue, 8).await;
    let came = next_within(&mut after, Duration::from_secs(1)).await;
    assert!(came.is_none(), "everything was acknowledged, yet came: {came:?}");
    after.close().await?;
    Ok(())
}

pub(crate) fn a_connection_closed_by_the_broker_is_recovered_with_nothing_lost_or_doubled()
-> Result<(), Failed> {
    with_queues("closed", |queues| survive(queues, Break::ByTheBroker))
}

pub(crate) fn a_connection_cut_by_the_network_is_recovered_with_nothing_lost_or_doubled() -> Result<(), Failed>
{
    with_queues("cut", |queues| survive(queues, Break::ByTheNetwork))
}

/// A broker that cannot be reached is reported as unavailable, in bounded time, again and again;
/// once it is back, the source carries on, and the message held during the outage comes again.
pub(crate) fn a_broker_that_stays_away_is_reported_unavailable_not_waited_for() -> Result<(), Failed> {
    with_queues("away", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("a", 3)).await;
        let proxy = Proxy::start().await?;
        let mut source = RabbitSource::connect(source_config(&queues, &proxy.url(), &queue, 8)).await?;
        let first = next_within(&mut source, PATIENCE).await.expect("delivered");
        proxy.set_down(true);
        proxy.cut();
        // What lapin had buffered before it noticed the cut may still be handed out (it comes
        // again later anyway); then the source says the broker is unavailable, and says it again
        // at each call, each time within the connect timeout.
        let mut buffered = Vec::new();
        let mut unavailable = 0;
        while unavailable < 3 {
            let started = Instant::now();
            let answer = tokio::time::timeout(PATIENCE, source.next()).await.expect("an answer, not a hang");
            match answer {
                Ok(Some(delivery)) if buffered.len() < 2 => buffered.push(delivery),
                Ok(other) => panic!("the broker is away, yet: {other:?}"),
                Err(err) => {
                    assert!(err.is_unavailable(), "worth asking again: {err}");
                    assert!(
                        started.elapsed() < Duration::from_secs(11),
                        "reported within the connect timeout"
                    );
                    unavailable += 1;
                }
            }
        }
        drop(buffered);
        drop(first);
        proxy.set_down(false);
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let delivery =
                next_within(&mut source, PATIENCE).await.expect("delivered once the broker is back");
            got.insert(body(&delivery));
            delivery.receipt.ack();
        }
        source.close().await?;
        assert_eq!(ready(&queue).await, 0);
        Ok(())
    })
}

/// Opening again declares the queue again, with the same arguments: harmless, nothing is lost
/// or replayed. A queue that exists with other arguments (here a classic queue an operator made)
/// is used as it is; a classic queue only says whether a message was delivered before, so its
/// attempts are 1, then 2 for every redelivery.
pub(crate) fn declaring_again_is_harmless_and_a_queue_declared_otherwise_is_used_as_it_is()
-> Result<(), Failed> {
    with_queues("declared", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("d", 4)).await;
        for round in 0..2 {
            let mut source = open(&queues, &queue, 8).await;
            let delivery = next_within(&mut source, PATIENCE).await.expect("delivered");
            assert_eq!(body(&delivery), format!("d-{round:03}").into_bytes(), "in order, nothing replayed");
            assert_eq!(
                delivery.receipt.origin(),
                format!("rabbitmq queue {queue} delivery 1 message_id d-{round:03}")
            );
            delivery.receipt.ack();
            source.close().await?;
        }
        publish(&queues, &queue, &numbered("e", 1)).await;
        assert_eq!(ready(&queue).await, 3, "declaring again kept what the queue held");

        let classic = queues.queue("classic");
        let connection = test_rabbitmq::connect().await?;
        let channel = connection.create_channel().await?;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(classic.as_str().into(), durable, FieldTable::default()).await?;
        channel
            .basic_publish(
                "".into(),
                classic.as_str().into(),
                BasicPublishOptions::default(),
                b"c",
                BasicProperties::default(),
            )
            .await?;
        queues.track(&parked_queue(&classic));
        let mut source = open(&queues, &classic, 8).await;
        let mut attempts = Vec::new();
        for _ in 0..3 {
            let delivery = next_within(&mut source, PATIENCE).await.expect("delivered");
            attempts.push(delivery.attempt);
            drop(delivery);
        }
        assert_eq!(attempts, [1, 2, 2], "a classic queue has only the redelivered flag");
        source.close().await?;
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    })
}

/// The queue deleted under a running source: RabbitMQ cancels the consumer; the source declares
/// the queue again and consumes what is published to it afterwards.
pub(crate) fn a_deleted_queue_is_declared_again() -> Result<(), Failed> {
    with_queues("deleted", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("before", 1)).await;
        let mut source = open(&queues, &queue, 8).await;
        next_within(&mut source, PATIENCE).await.expect("delivered").receipt.ack();
        source.flush(PATIENCE).await?;
        let connection = test_rabbitmq::connect().await?;
        connection
            .create_channel()
            .await?
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        let reading = tokio::spawn(async move {
            let delivery = next_within(&mut source, PATIENCE).await;
            (source, delivery.map(|d| (body(&d), d)))
        });
        // The source must have declared the queue again before anything published reaches it.
        assert!(
            eventually(PATIENCE, || async {
                test_rabbitmq::ready_messages(&queue).await.ok().flatten().is_some()
            })
            .await,
            "the queue is declared again"
        );
        publish(&queues, &queue, &numbered("after", 1)).await;
        let (mut source, delivery) = reading.await?;
        let (got, delivery) = delivery.expect("delivered after the queue came back");
        assert_eq!(got, b"after-000");
        delivery.receipt.ack();
        assert_eq!(source.stats().reconnects, 1);
        source.close().await?;
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    })
}

/// A message delivered more often than the queue's delivery limit is moved to the parking queue
/// by RabbitMQ, whole, never dropped; the source saw every one of its attempts, in order.
pub(crate) fn a_message_past_the_delivery_limit_is_parked_not_dropped() -> Result<(), Failed> {
    with_queues("parked", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("poison", 1)).await;
        let mut source = open(&queues, &queue, 1).await;
        let mut attempts = Vec::new();
        while let Some(delivery) = next_within(&mut source, Duration::from_secs(2)).await {
            attempts.push(delivery.attempt);
            // Dropped: rejected with requeue, counted.
        }
        let expected: Vec<u32> = (1..=QUEUE_DELIVERY_LIMIT + 1).collect();
        assert_eq!(attempts, expected, "delivered up to the limit, each attempt counted");
        source.close().await?;
        let parked = drain(&parked_queue(&queue)).await;
        assert_eq!(parked.len(), 1, "the message is parked, not dropped");
        assert_eq!(parked[0].delivery.data, b"poison-000");
        assert_eq!(
            parked[0].delivery.properties.message_id().as_ref().map(|id| id.as_str()),
            Some("poison-000")
        );
        Ok(())
    })
}

/// `close` returns once every acknowledgement enqueued before it is sent: nothing is left in the
/// queue the moment it returns, and nothing comes again.
pub(crate) fn close_sends_every_acknowledgement() -> Result<(), Failed> {
    with_queues("close", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("c", 200)).await;
        let mut source = open(&queues, &queue, 200).await;
        let mut deliveries = Vec::new();
        while deliveries.len() < 200 {
            deliveries.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        for delivery in deliveries {
            delivery.receipt.ack();
        }
        source.close().await?;
        let mut again = open(&queues, &queue, 200).await;
        let came = next_within(&mut again, Duration::from_secs(1)).await;
        assert!(came.is_none(), "nothing came again: {came:?}");
        again.close().await?;
        assert_eq!(ready(&queue).await, 0);
        Ok(())
    })
}

/// What the suite's `groups` capability checks, as far as it holds for consumers of one queue
/// (the suite bundles it with independent groups, which a queue is not): consumers split the
/// messages with none lost and none twice, and a consumer that crashes holding deliveries loses
/// nothing, because closing its connection gives them to the others.
pub(crate) fn consumers_of_one_queue_split_it_and_take_over_from_a_crashed_one() -> Result<(), Failed> {
    with_queues("shared", |queues| async move {
        let queue = queue(&queues, "payments");
        let messages = numbered("s", 100);
        publish(&queues, &queue, &messages).await;
        let mut crashing = open(&queues, &queue, 10).await;
        let mut held: Vec<Delivery> = Vec::new();
        for _ in 0..10 {
            held.push(next_within(&mut crashing, PATIENCE).await.expect("delivered"));
        }
        let acked: Vec<Vec<u8>> = held
            .drain(..4)
            .map(|d| {
                let b = body(&d);
                d.receipt.ack();
                b
            })
            .collect();
        crashing.flush(PATIENCE).await?;
        // The crash: the source goes first, then what it held; nothing is closed.
        drop(crashing);
        drop(held);
        let (mut left, mut right) = (open(&queues, &queue, 8).await, open(&queues, &queue, 8).await);
        let mut by: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        let deadline = Instant::now() + PATIENCE;
        while by[0].len() + by[1].len() + acked.len() < messages.len() && Instant::now() < deadline {
            for (side, source) in [&mut left, &mut right].into_iter().enumerate() {
                if let Some(delivery) = next_within(source, Duration::from_millis(200)).await {
                    by[side].push(body(&delivery));
                    delivery.receipt.ack();
                }
            }
        }
        let all: Vec<Vec<u8>> = by.iter().flatten().cloned().chain(acked).collect();
        let distinct: BTreeSet<&Vec<u8>> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "no message went to two consumers, nor came twice");
        assert_eq!(distinct.len(), messages.len(), "none lost, the crashed consumer's included");
        assert!(
            !by[0].is_empty() && !by[1].is_empty(),
            "both consumers got some: {} and {}",
            by[0].len(),
            by[1].len()
        );
        left.close().await?;
        right.close().await?;
        Ok(())
    })
}

/// A body over the size limit is delivered as too large, with its length and first KiB.
pub(crate) fn a_body_over_the_limit_is_delivered_as_too_large() -> Result<(), Failed> {
    with_queues("large", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &[vec![b'z'; 70_000]]).await;
        let mut source = RabbitSource::connect(
            source_config(&queues, &test_rabbitmq::url(), &queue, 8).with_max_message_bytes(65_536),
        )
        .await?;
        let delivery = next_within(&mut source, PATIENCE).await.expect("delivered, not dropped");
        let Payload::TooLarge { len, limit, head } = &delivery.payload else {
            panic!("expected too large, got {:?}", delivery.payload)
        };
        assert_eq!((*len, *limit, head.len()), (70_000, 65_536, 1024));
        assert_eq!(delivery.receipt.origin(), format!("rabbitmq queue {queue} delivery 1"));
        delivery.receipt.ack();
        source.close().await?;
        Ok(())
    })
}

/// The backlog probe counts the queue's ready messages on a connection of its own: all of them
/// before any is delivered, fewer while the source holds some (prefetched messages are not
/// ready), none once all are acknowledged. It does not claim an unacknowledged count.
pub(crate) fn the_backlog_probe_counts_the_ready_messages() -> Result<(), Failed> {
    with_queues("backlog", |queues| async move {
        let queue = queue(&queues, "payments");
        publish(&queues, &queue, &numbered("b", 10)).await;
        let mut source = open(&queues, &queue, 3).await;
        let probe = source.backlog_probe().expect("RabbitMQ can tell its ready count");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next_within(&mut source, PATIENCE).await.expect("delivered"));
        }
        let reading = probe.backlog().await?;
        assert_eq!(reading.unacknowledged, None, "AMQP does not tell it: absent, not a made-up 0");
        assert_eq!(reading.waiting, Some(7), "ten published, three prefetched and held");
        for delivery in held.drain(..) {
            delivery.receipt.ack();
        }
        while let Some(delivery) = next_within(&mut source, Duration::from_secs(1)).await {
            delivery.receipt.ack();
        }
        let drained =
            eventually(PATIENCE, || async { probe.backlog().await.is_ok_and(|b| b.waiting == Some(0)) })
                .await;
        assert!(drained, "all acknowledged, none may be ready: {:?}", probe.backlog().await);
        drop(probe);
        source.close().await?;
        Ok(())
    })
}
