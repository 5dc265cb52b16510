//! [`RedisSource`]: a consumer in a Redis Streams consumer group, as a [`DeliverySource`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use payments_ports::{BacklogProbe, Delivery, DeliverySource, Payload, Receipt, SourceError};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::acker::{Acker, Command};
use crate::backlog::RedisBacklog;
use crate::config::RedisSourceConfig;
use crate::errors::{self, Class};
use crate::link::Link;
use crate::reply::{self, Body, Entry};

/// The longest a read blocks in Redis (`BLOCK`): a dropped receipt waits at most this long for the
/// next read to end before it is claimed again, when nothing else wakes the source first.
const MAX_BLOCK: Duration = Duration::from_secs(2);
/// How long a read may wait for its reply beyond its `BLOCK`, before the connection counts as
/// dead. Not redis's 500 ms default, which would cut every longer `BLOCK` short and throw away
/// what the server then delivers; but not unbounded either, so that a silent network cannot hang
/// [`RedisSource::next`] for ever. A reply lost this way is not a loss: see `resync`.
const READ_MARGIN: Duration = Duration::from_secs(10);
/// The acker's bound on one round trip; its commands are idempotent, so a timeout only means
/// sending them again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resync waits for the acknowledgements enqueued before it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending entries listed per command when a closing source gives back what it holds.
const GIVE_BACK_PAGE: usize = 1000;

/// What the source and its receipts share.
struct Shared {
    /// The stream, for origins and logs.
    stream: String,
    lease: Duration,
    /// One permit per delivery in flight: a receipt holds it until it is acknowledged or dropped.
    permits: Arc<Semaphore>,
    /// The IDs of deliveries in flight.
    held: Mutex<HashSet<String>>,
    /// The IDs of receipts dropped unacknowledged, for the source to claim again.
    released: Mutex<Vec<String>>,
    /// To the acker.
    commands: mpsc::UnboundedSender<Command>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An entry ready to hand out.
struct Ready {
    id: String,
    payload: Payload,
    attempt: u32,
}

/// A consumer in a Redis Streams consumer group: see the crate's documentation for how it keeps
/// each sentence of the source contract.
pub struct RedisSource {
    config: RedisSourceConfig,
    shared: Arc<Shared>,
    /// The connection [`next`](DeliverySource::next) uses, for blocking reads and everything else
    /// it sends (never shared with the acker: a blocked read holds up a connection's other commands).
    reader: Link,
    /// Entries taken from Redis, in this consumer's pending list, not handed out yet.
    buffer: VecDeque<Ready>,
    /// Where the replay of this consumer's own pending entries goes on from, while it runs.
    replay: Option<String>,
    /// Where the takeover pass (XAUTOCLAIM) goes on from, while one runs.
    takeover: Option<String>,
    /// When the next takeover pass is due.
    takeover_due: Instant,
    /// Set while a step that takes entries from Redis is under way: if `next` is dropped there,
    /// the next call resyncs.
    dirty: bool,
    acker: Option<JoinHandle<()>>,
    closed: bool,
}

impl fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSource").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RedisSource {
    /// Connects, creates the group if it is missing (at the start of the stream, creating the
    /// stream too), and starts the acker.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] when the server cannot be reached, [`SourceError::Failed`]
    /// when the group cannot be made (the key is not a stream) or the URL needs a feature this
    /// build lacks.
    pub async fn connect(config: RedisSourceConfig) -> Result<Self, SourceError> {
        let client = client(&config)?;
        let name = config.client_name();
        let mut reader =
            Link::new(client.clone(), name.clone(), Some(block_for(config.claim_idle) + READ_MARGIN));
        let mut connection = reader.get().await.map_err(|err| source_error(&config, "connect", err))?;
        ensure_group(&mut connection, &config)
            .await
            .map_err(|err| source_error(&config, "create the group", err))?;
        let (commands, queue) = mpsc::unbounded_channel();
        let acker = Acker {
            link: Link::new(client, name, Some(ACK_TIMEOUT)),
            stream: config.stream.clone(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
        };
        let acker = tokio::spawn(acker.run(queue));
        let shared = Arc::new(Shared {
            stream: config.stream.clone(),
            lease: config.claim_idle,
            permits: Arc::new(Semaphore::new(config.in_flight)),
            held: Mutex::default(),
            released: Mutex::default(),
            commands,
        });
        Ok(Self {
            config,
            shared,
            reader,
            buffer: VecDeque::new(),
            replay: Some("0".to_owned()),
            takeover: None,
            takeover_due: Instant::now(),
            dirty: false,
            acker: Some(acker),
            closed: false,
        })
    }

    /// How the source was configured.
    pub fn config(&self) -> &RedisSourceConfig {
        &self.config
    }

    /// Takes entries from Redis into the buffer, one step: entries of dropped receipts, a page of
    /// this consumer's own pending list, a step of the takeover pass, or new entries (waiting for
    /// them up to the next takeover pass).
    async fn fill(&mut self, room: usize) -> Result<(), RedisError> {
        let released = self.take_released();
        let mut connection = self.reader.get().await?;
        if !released.is_empty() {
            return self.claim_released(&mut connection, released).await;
        }
        if let Some(cursor) = self.replay.clone() {
            return self.replay_page(&mut connection, &cursor, room).await;
        }
        if self.takeover.is_some() || Instant::now() >= self.takeover_due {
            return self.takeover_step(&mut connection, room).await;
        }
        self.read_new(&mut connection, room).await
    }

    /// The IDs of dropped receipts that are not back in hand already.
    fn take_released(&self) -> Vec<String> {
        let released = std::mem::take(&mut *lock(&self.shared.released));
        if released.is_empty() {
            return released;
        }
        let held = lock(&self.shared.held);
        released.into_iter().filter(|id| !held.contains(id) && !self.buffered(id)).collect()
    }

    fn buffered(&self, id: &str) -> bool {
        self.buffer.iter().any(|ready| ready.id == id)
    }

    /// Whether `id` is in hand: handed out or buffered.
    fn in_hand(&self, id: &str) -> bool {
        self.buffered(id) || lock(&self.shared.held).contains(id)
    }

    /// Claims the entries of dropped receipts back for this consumer, counting a delivery
    /// (`XCLAIM` without `JUSTID`), so that they come again at once with a higher attempt. An
    /// entry another consumer took over meanwhile is left to it.
    async fn claim_released(
        &mut self,
        connection: &mut MultiplexedConnection,
        released: Vec<String>,
    ) -> Result<(), RedisError> {
        let pending = pending(connection, &self.config, &released, &[]).await?;
        let ours: Vec<&String> = released
            .iter()
            .filter(|id| pending.get(*id).is_some_and(|p| p.consumer == self.config.consumer))
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(0)
            .arg(&ours)
            .query_async(connection)
            .await?;
        let claimed = reply::entries(claimed);
        let gone: Vec<&String> =
            ours.iter().copied().filter(|id| !claimed.iter().any(|e| &e.id == *id)).collect();
        self.acknowledge_deleted(connection, &gone).await?;
        for entry in claimed {
            // The claim counted one more delivery than XPENDING said before it.
            let deliveries = pending.get(&entry.id).map_or(1, |p| p.deliveries + 1);
            self.buffer_entry(connection, entry, deliveries).await?;
        }
        Ok(())
    }

    /// One page of this consumer's own pending list (`XREADGROUP … 0`, then from the last ID),
    /// which counts a delivery for each entry read; their attempts come from XPENDING.
    async fn replay_page(
        &mut self,
        connection: &mut MultiplexedConnection,
        cursor: &str,
        room: usize,
    ) -> Result<(), RedisError> {
        let entries = self.xreadgroup(connection, cursor, room, None).await?;
        let Some(last) = entries.last() else {
            self.replay = None;
            return Ok(());
        };
        self.replay = Some(last.id.clone());
        self.take_counted(connection, entries).await
    }

    /// One step of the takeover pass: `XAUTOCLAIM` of entries idle for the claim timeout, from
    /// any consumer (a crashed one, or one that went silent), walking the whole pending list with
    /// the cursor until it comes back to `0-0`.
    async fn takeover_step(
        &mut self,
        connection: &mut MultiplexedConnection,
        room: usize,
    ) -> Result<(), RedisError> {
        let cursor = self.takeover.take().unwrap_or_else(|| "0-0".to_owned());
        let answer: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(millis(self.config.claim_idle))
            .arg(&cursor)
            .arg("COUNT")
            .arg(room)
            .query_async(connection)
            .await?;
        let Some(answer) = reply::autoclaim(answer) else {
            return Err(RedisError::from((redis::ErrorKind::Parse, "unexpected XAUTOCLAIM reply")));
        };
        if answer.cursor == "0-0" {
            self.takeover_due = Instant::now() + self.config.claim_idle / 2;
        } else {
            self.takeover = Some(answer.cursor);
        }
        if !answer.deleted.is_empty() {
            // Redis has removed them from the pending list itself: nothing to acknowledge.
            tracing::warn!(
                stream = %self.config.stream,
                group = %self.config.group,
                ids = ?answer.deleted,
                "pending entries were deleted from the stream (trimmed?) before they were acknowledged; they are dropped"
            );
        }
        self.take_counted(connection, answer.claimed).await
    }

    /// New entries (`>`), waiting up to the next takeover pass (and at most [`MAX_BLOCK`]).
    async fn read_new(
        &mut self,
        connection: &mut MultiplexedConnection,
        room: usize,
    ) -> Result<(), RedisError> {
        let block = self.takeover_due.saturating_duration_since(Instant::now()).min(MAX_BLOCK);
        // BLOCK 0 would wait for ever.
        let block = millis(block).max(1);
        let entries = self.xreadgroup(connection, ">", room, Some(block)).await?;
        for entry in entries {
            self.buffer_entry(connection, entry, 1).await?;
        }
        Ok(())
    }

    /// Entries whose read or claim counted a delivery: XPENDING says how many (pipelined, one
    /// round trip); entries in hand already are left there, entries no longer pending
    /// (acknowledged meanwhile) are dropped.
    async fn take_counted(
        &mut self,
        connection: &mut MultiplexedConnection,
        entries: Vec<Entry>,
    ) -> Result<(), RedisError> {
        let (deleted, live): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().filter(|e| !self.in_hand(&e.id)).partition(|e| e.body == Body::Deleted);
        let deleted: Vec<&String> = deleted.iter().map(|e| &e.id).collect();
        let ids: Vec<String> = live.iter().map(|e| e.id.clone()).collect();
        let pending = pending(connection, &self.config, &ids, &deleted).await?;
        if !deleted.is_empty() {
            warn_deleted(&self.config, &deleted);
        }
        for entry in live {
            if let Some(deliveries) = pending.get(&entry.id).map(|p| p.deliveries) {
                self.buffer_entry(connection, entry, deliveries).await?;
            }
        }
        Ok(())
    }

    /// Buffers `entry` as its `deliveries`-th delivery; one deleted from the stream is
    /// acknowledged instead.
    async fn buffer_entry(
        &mut self,
        connection: &mut MultiplexedConnection,
        entry: Entry,
        deliveries: u64,
    ) -> Result<(), RedisError> {
        let attempt = u32::try_from(deliveries).unwrap_or(u32::MAX).max(1);
        let payload = match entry.body {
            Body::Payload(body) => Payload::bounded(Bytes::from(body), self.config.max_message_bytes),
            Body::Fields(fields) => unreadable(&entry.id, fields),
            Body::Deleted => return self.acknowledge_deleted(connection, &[&entry.id]).await,
        };
        self.buffer.push_back(Ready { id: entry.id, payload, attempt });
        Ok(())
    }

    /// Acknowledges pending entries that are no longer in the stream, so that they do not stay
    /// pending for ever: their messages are gone, nothing can deliver them.
    async fn acknowledge_deleted(
        &self,
        connection: &mut MultiplexedConnection,
        ids: &[&String],
    ) -> Result<(), RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        warn_deleted(&self.config, ids);
        redis::cmd("XACK")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(ids)
            .exec_async(connection)
            .await
    }

    async fn xreadgroup(
        &self,
        connection: &mut MultiplexedConnection,
        from: &str,
        count: usize,
        block_ms: Option<u64>,
    ) -> Result<Vec<Entry>, RedisError> {
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(&self.config.group).arg(&self.config.consumer).arg("COUNT").arg(count);
        if let Some(ms) = block_ms {
            command.arg("BLOCK").arg(ms);
        }
        command.arg("STREAMS").arg(&self.config.stream).arg(from);
        Ok(reply::read(command.query_async(connection).await?))
    }

    /// After a `next` that was dropped half-way, or a failure: whatever its reply held is in this
    /// consumer's pending list, so it is read again from there. The acknowledgements enqueued so
    /// far are sent first, so that the replay does not bring back what is settled; the
    /// connection is made anew, so that a read still blocked on the old one cannot take entries
    /// no one will see.
    async fn resync(&mut self) {
        self.reader.reset();
        if let Some(given_up) = self.flush(FLUSH_TIMEOUT).await
            && given_up > 0
        {
            tracing::warn!(stream = %self.config.stream, given_up, "acknowledgements could not be sent; their entries come again");
        }
        self.buffer.clear();
        lock(&self.shared.released).clear();
        self.replay = Some("0".to_owned());
        self.dirty = false;
    }

    /// Sends every acknowledgement enqueued so far; `None` if the acker did not answer in time.
    async fn flush(&self, within: Duration) -> Option<usize> {
        let (reply, answer) = oneshot::channel();
        self.shared.commands.send(Command::Flush(reply)).ok()?;
        tokio::time::timeout(within, answer).await.ok()?.ok()
    }

    /// What a failed step means for the caller; the group is created again when it is gone.
    async fn recover(&mut self, err: RedisError, recreated: &mut bool) -> Result<(), SourceError> {
        match errors::classify(&err) {
            Class::GroupGone if !*recreated => {
                *recreated = true;
                tracing::warn!(
                    stream = %self.config.stream,
                    group = %self.config.group,
                    "the stream or its group is gone (deleted?); creating the group again at the start of the stream"
                );
                let mut connection = self.reader.get().await.map_err(|err| self.fail("connect", err))?;
                ensure_group(&mut connection, &self.config)
                    .await
                    .map_err(|err| self.fail("create the group", err))
            }
            Class::GroupGone => Err(SourceError::unavailable_because(
                format!("the group {} on {} keeps disappearing", self.config.group, self.config),
                err,
            )),
            _ => Err(self.fail("read", err)),
        }
    }

    fn fail(&mut self, action: &str, err: RedisError) -> SourceError {
        if errors::classify(&err) == Class::Connection {
            self.reader.reset();
        }
        self.dirty = true;
        source_error(&self.config, action, err)
    }

    fn hand_out(&self, ready: Ready, permit: OwnedSemaphorePermit) -> Delivery {
        lock(&self.shared.held).insert(ready.id.clone());
        Delivery {
            payload: ready.payload,
            attempt: ready.attempt,
            receipt: Box::new(RedisReceipt {
                id: ready.id,
                shared: Arc::clone(&self.shared),
                permit: Some(permit),
            }),
        }
    }

    /// Makes what this consumer has pending but not in hand (buffered entries, dropped receipts,
    /// what a dropped `next` had read) claimable by the group's other consumers at once:
    /// `XCLAIM … IDLE <claim idle> JUSTID` sets their idle time as if the claim timeout had
    /// passed, without counting a delivery. They stay this consumer's, so a source opened again
    /// under the same identity replays them too.
    async fn give_back(&mut self) -> Result<(), RedisError> {
        let mut connection = self.reader.get().await?;
        let mut from = "-".to_owned();
        loop {
            let rows: Value = redis::cmd("XPENDING")
                .arg(&self.config.stream)
                .arg(&self.config.group)
                .arg(&from)
                .arg("+")
                .arg(GIVE_BACK_PAGE)
                .arg(&self.config.consumer)
                .query_async(&mut connection)
                .await?;
            let ids = reply::pending_ids(rows);
            let Some(last) = ids.last() else { return Ok(()) };
            from = format!("({last}");
            let full = ids.len() >= GIVE_BACK_PAGE;
            let ids: Vec<String> = {
                let held = lock(&self.shared.held);
                ids.into_iter().filter(|id| !held.contains(id)).collect()
            };
            if !ids.is_empty() {
                redis::cmd("XCLAIM")
                    .arg(&self.config.stream)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(0)
                    .arg(&ids)
                    .arg("IDLE")
                    .arg(millis(self.config.claim_idle))
                    .arg("JUSTID")
                    .exec_async(&mut connection)
                    .await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Removes this consumer from the group when it has nothing pending, so that processes named
    /// after their pid do not pile up in `XINFO CONSUMERS`. Deleting a consumer drops its pending
    /// entries, which would lose them; so the check and the deletion are one script, atomic in
    /// Redis: no read (by another process misconfigured with the same name, say) can slip an
    /// entry in between.
    async fn forget_consumer_if_idle(&mut self) -> Result<(), RedisError> {
        const SCRIPT: &str = "if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then \
                              return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end \
                              return -1";
        let mut connection = self.reader.get().await?;
        redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .exec_async(&mut connection)
            .await
    }
}

#[async_trait]
impl DeliverySource for RedisSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        if self.closed {
            return Err(SourceError::failed(format!("the source on {} is closed", self.config)));
        }
        // Waiting here is safe to drop: nothing is taken from Redis before a delivery can go out.
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| SourceError::failed(format!("the source on {} is closed", self.config)))?;
        let mut recreated = false;
        loop {
            if self.dirty {
                self.resync().await;
            }
            if let Some(ready) = self.buffer.pop_front() {
                return Ok(Some(self.hand_out(ready, permit)));
            }
            // Never more than can go out soon: an entry that waits in the buffer grows idle, and
            // would be taken over by another consumer.
            let room = (1 + self.shared.permits.available_permits()).min(self.config.batch());
            self.dirty = true;
            match self.fill(room).await {
                Ok(()) => self.dirty = false,
                Err(err) => self.recover(err, &mut recreated).await?,
            }
        }
    }

    /// `XINFO GROUPS` on a connection of the probe's own.
    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        let client = client(&self.config).ok()?;
        let link = Link::new(client, format!("{}-backlog", self.config.client_name()), Some(ACK_TIMEOUT));
        Some(Arc::new(RedisBacklog::new(self.config.clone(), link)))
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.buffer.clear();
        lock(&self.shared.released).clear();
        // A fresh connection: a read that a dropped `next` left blocked must not hold this up.
        self.reader.reset();
        if let Err(err) = self.give_back().await {
            tracing::warn!(stream = %self.config.stream, error = %err, "could not give back the entries not handed out; they are taken over after the claim timeout");
        }
        let given_up = self.flush(FLUSH_TIMEOUT * 4).await;
        let _ = self.shared.commands.send(Command::Stop);
        if let Some(acker) = self.acker.take() {
            let _ = acker.await;
        }
        if lock(&self.shared.held).is_empty()
            && let Err(err) = self.forget_consumer_if_idle().await
        {
            tracing::debug!(stream = %self.config.stream, error = %err, "could not remove the consumer from the group");
        }
        self.reader.reset();
        match given_up {
            Some(0) => Ok(()),
            Some(n) => Err(SourceError::unavailable(format!(
                "{n} acknowledgements to {} could not be sent; their entries will be delivered again",
                self.config
            ))),
            None => Err(SourceError::unavailable(format!(
                "the acknowledgements to {} were not all sent in time; their entries will be delivered again",
                self.config
            ))),
        }
    }
}

/// How one entry of the stream is settled.
struct RedisReceipt {
    id: String,
    shared: Arc<Shared>,
    /// The in-flight slot, given back when the receipt is settled or dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for RedisReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReceipt").field("stream", &self.shared.stream).field("id", &self.id).finish()
    }
}

impl Receipt for RedisReceipt {
    fn origin(&self) -> String {
        format!("redis stream {} entry {}", self.shared.stream, self.id)
    }

    fn ack(mut self: Box<Self>) {
        lock(&self.shared.held).remove(&self.id);
        let id = std::mem::take(&mut self.id);
        // After close the acker is gone: the entry comes again, which is harmless.
        let _ = self.shared.commands.send(Command::Ack(id));
        self.permit.take();
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.shared.lease)
    }

    fn renew(&self) {
        let _ = self.shared.commands.send(Command::Renew(self.id.clone()));
    }
}

impl Drop for RedisReceipt {
    fn drop(&mut self) {
        // Acknowledged: `ack` took the permit.
        if self.permit.is_none() {
            return;
        }
        lock(&self.shared.held).remove(&self.id);
        lock(&self.shared.released).push(std::mem::take(&mut self.id));
    }
}

/// An entry without a `payload` field: dead-lettered as unreadable, with its fields as
/// `name=value` lines.
fn unreadable(id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Payload {
    let names: Vec<String> =
        fields.iter().map(|(name, _)| String::from_utf8_lossy(name).into_owned()).collect();
    let mut raw = Vec::new();
    for (name, value) in fields {
        raw.extend_from_slice(&name);
        raw.push(b'=');
        raw.extend_from_slice(&value);
        raw.push(b'\n');
    }
    Payload::Unreadable {
        reason: format!(
            "stream entry {id} has no `{}` field (its fields: {})",
            String::from_utf8_lossy(reply::PAYLOAD_FIELD),
            names.join(", ")
        ),
        raw: Bytes::from(raw),
    }
}

fn warn_deleted(config: &RedisSourceConfig, ids: &[&String]) {
    tracing::warn!(
        stream = %config.stream,
        group = %config.group,
        ids = ?ids,
        "pending entries were deleted from the stream (trimmed?) before they were acknowledged; acknowledging them"
    );
}

/// How long a read blocks: at most half the claim timeout (takeover passes run that often), at
/// most [`MAX_BLOCK`].
fn block_for(claim_idle: Duration) -> Duration {
    (claim_idle / 2).min(MAX_BLOCK)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `XPENDING key group id id 1` for each of `ids`, pipelined after an `XACK` of `acknowledge`
/// (if any): who holds each pending entry, and how often it was delivered.
async fn pending(
    connection: &mut MultiplexedConnection,
    config: &RedisSourceConfig,
    ids: &[String],
    acknowledge: &[&String],
) -> Result<HashMap<String, reply::Pending>, RedisError> {
    if ids.is_empty() && acknowledge.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    if !acknowledge.is_empty() {
        pipe.cmd("XACK").arg(&config.stream).arg(&config.group).arg(acknowledge).ignore();
    }
    for id in ids {
        pipe.cmd("XPENDING").arg(&config.stream).arg(&config.group).arg(id).arg(id).arg(1);
    }
    let rows: Vec<Value> = pipe.query_async(connection).await?;
    Ok(ids.iter().cloned().zip(rows).filter_map(|(id, row)| Some((id, reply::pending(row)?))).collect())
}

/// `XGROUP CREATE key group 0 MKSTREAM`: from the start of the stream, so that entries added
/// before the group existed are delivered too; `BUSYGROUP` (it exists) is fine.
async fn ensure_group(
    connection: &mut MultiplexedConnection,
    config: &RedisSourceConfig,
) -> Result<(), RedisError> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&config.stream)
        .arg(&config.group)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(connection)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn client(config: &RedisSourceConfig) -> Result<redis::Client, SourceError> {
    if config.endpoint.is_tls() && !cfg!(feature = "tls") {
        return Err(SourceError::failed(format!(
            "{} needs TLS: build payments-source-redis with its `tls` feature",
            config.endpoint
        )));
    }
    config
        .endpoint
        .client()
        .map_err(|err| SourceError::failed_because(format!("invalid Redis URL {}", config.endpoint), err))
}

pub(crate) fn source_error(config: &RedisSourceConfig, action: &str, err: RedisError) -> SourceError {
    let message = errors::describe(format!("cannot {action} on {config}"), &err);
    if errors::is_transient(&err) {
        SourceError::unavailable_because(message, err)
    } else {
        SourceError::failed_because(message, err)
    }
}
