//! Feeding pools on many machines from one durable Redis Stream (feature `redis`).
//!
//! Redis Streams with consumer groups already give durable entries, a pending list per
//! consumer, acknowledgements and claiming of a dead consumer's work; this module feeds an
//! [`AsyncPool`] from one correctly:
//!
//! - [`Producer`] adds payloads (`XADD`), one at a time or in pipelined batches;
//! - [`StreamWorker`] reads entries for one consumer of a group (`XREADGROUP`, blocking for a
//!   bounded time), hands each to the pool through a mailbox, keeps at most `in_flight`
//!   entries outstanding, and acknowledges (`XACK`) an entry only after its task returned
//!   `Ok` — after writing its output to the optional result stream;
//! - a failed entry (the callback returned `Err`, panicked or timed out) is left pending; every
//!   `claim_every`, the worker claims entries idle for longer than `claim_after` (`XAUTOCLAIM`)
//!   — from crashed consumers, or its own failures — and runs them again. An entry delivered
//!   more than `max_deliveries` times goes to a dead-letter stream with its last error, and is
//!   acknowledged, so one poison entry cannot loop for ever;
//! - [`StreamWorkerHandle::stop`] (Ctrl-C in the example) stops reading, lets the entries in
//!   flight finish, acknowledges them, and returns.
//!
//! # Guarantees, and what is not guaranteed
//!
//! Delivery is **at least once**. An entry is acknowledged only after its callback returned
//! `Ok` and its output reached the result stream; if the process is killed before that, the
//! entry stays pending and another consumer claims it after `claim_after`. So a callback can
//! run more than once for one entry — after a crash, or when it outlives `claim_after` — and
//! must be idempotent. For a scraper: store pages under a key derived from the URL (or the
//! entry id) with an overwrite (`SET`, an upsert), not an append; treat "already stored" as
//! success; and make side effects (notifications, counters) keyed and conditional (`SET NX`).
//!
//! Not guaranteed: order (entries run concurrently, across machines), and exactly-once.
//!
//! # Payloads
//!
//! An entry's payload is bytes, in the field `payload`. Serialize with the format you already
//! use (JSON, bincode, a URL as text): a typed `serde` layer would add a format dependency for
//! what is one line at each end.
//!
//! ```no_run
//! use slowpool::redis::{Entry, Producer, StreamWorker};
//! use slowpool::AsyncPool;
//!
//! let mut producer = Producer::connect("redis://127.0.0.1/", "urls")?;
//! producer.push(b"https://example.com/")?;
//!
//! let pool = AsyncPool::new(16, |entry: Entry| -> Result<Vec<u8>, String> {
//!     let url = String::from_utf8(entry.payload).map_err(|e| e.to_string())?;
//!     Ok(url.len().to_string().into_bytes()) // fetch, parse, store ...
//! })?;
//! let mut worker = StreamWorker::builder("redis://127.0.0.1/", "urls", "crawlers", "machine-1")
//!     .result_stream("urls:results")
//!     .connect()?;
//! let handle = worker.handle(); // handle.stop() from another thread ends `run`
//! let stats = worker.run(&pool)?;
//! println!("{} acknowledged", stats.acked);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply, StreamReadReply};

use crate::{AsyncPool, TaskError, TaskId};

/// An error talking to Redis.
#[derive(Debug)]
pub struct StreamError(redis::RedisError);

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<redis::RedisError> for StreamError {
    fn from(error: redis::RedisError) -> Self {
        StreamError(error)
    }
}

/// The field that holds an entry's payload.
const PAYLOAD: &str = "payload";

/// Adds payloads to a stream.
///
/// ```no_run
/// use slowpool::redis::Producer;
///
/// let mut producer = Producer::connect("redis://127.0.0.1/", "urls")?;
/// let first = producer.push(b"http://127.0.0.1:8080/page/0")?; // an id such as "1732800000000-0"
/// let more = producer.push_batch((1..100).map(|n| format!("http://127.0.0.1:8080/page/{n}")))?;
/// assert_eq!(more.len(), 99);
/// assert!(!more.contains(&first)); // every entry has its own id
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Producer {
    con: redis::Connection,
    stream: String,
}

impl Producer {
    /// Connects to `url` (`redis://host:port/`) to add to `stream`.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn connect(url: &str, stream: impl Into<String>) -> Result<Producer, StreamError> {
        let con = redis::Client::open(url)?.get_connection()?;
        Ok(Producer {
            con,
            stream: stream.into(),
        })
    }

    /// Adds one payload (`XADD stream * payload <bytes>`); returns the entry id.
    ///
    /// # Errors
    ///
    /// Redis refused the command or the connection failed.
    pub fn push(&mut self, payload: &[u8]) -> Result<String, StreamError> {
        Ok(redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg(PAYLOAD)
            .arg(payload)
            .query(&mut self.con)?)
    }

    /// Adds many payloads in one round trip (a pipeline); returns their ids in order.
    ///
    /// # Errors
    ///
    /// Redis refused a command or the connection failed.
    pub fn push_batch<P: AsRef<[u8]>>(
        &mut self,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Vec<String>, StreamError> {
        let mut pipe = redis::pipe();
        for payload in payloads {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload.as_ref());
        }
        Ok(pipe.query(&mut self.con)?)
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.stream)
            .finish()
    }
}

/// One stream entry, as the pool's callback receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's id in the stream.
    pub id: String,
    /// The entry's `payload` field.
    pub payload: Vec<u8>,
    /// How many times Redis has delivered this entry, this delivery included (1 the first time).
    pub deliveries: u64,
}

/// What a [`StreamWorker`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Entries read as new (`XREADGROUP >`).
    pub read: u64,
    /// Entries acknowledged after their task returned `Ok`.
    pub acked: u64,
    /// Tasks that failed (callback `Err`, panic, timeout): their entries stay pending and are
    /// claimed again later.
    pub retried: u64,
    /// Entries claimed from idle pending lists (`XAUTOCLAIM`).
    pub claimed: u64,
    /// Entries moved to the dead-letter stream after too many deliveries.
    pub dead_lettered: u64,
    /// Entries handed to the pool and not yet settled.
    pub in_flight: usize,
}

/// Configures a [`StreamWorker`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct StreamWorkerBuilder {
    url: String,
    stream: String,
    group: String,
    consumer: String,
    in_flight: Option<usize>,
    block: Duration,
    claim_after: Duration,
    claim_every: Option<Duration>,
    max_deliveries: u64,
    dead_letter: Option<String>,
    result_stream: Option<String>,
}

impl StreamWorkerBuilder {
    /// At most `n` entries handed to the pool and not yet settled. Default: twice the pool's
    /// `max_workers`.
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(n.max(1));
        self
    }

    /// How long one `XREADGROUP` blocks waiting for new entries. Default: 100 ms.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Claims pending entries idle longer than this (from crashed or stuck consumers, or this
    /// worker's own failures). Default: 60 s. Keep it above your longest task: a task still
    /// running past it can be claimed and run by another consumer too.
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle;
        self
    }

    /// How often to look for entries to claim. Default: `claim_after / 2`.
    pub fn claim_every(mut self, every: Duration) -> Self {
        self.claim_every = Some(every);
        self
    }

    /// An entry delivered more than `n` times goes to the dead-letter stream. Default: 5.
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The dead-letter stream (fields `entry`, `payload`, `error`, `deliveries`). Default:
    /// `{stream}:dead`.
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter = Some(stream.into());
        self
    }

    /// Writes each output to this stream (fields `entry`, `output`, `consumer`) before the
    /// entry is acknowledged. Default: none.
    pub fn result_stream(mut self, stream: impl Into<String>) -> Self {
        self.result_stream = Some(stream.into());
        self
    }

    /// Connects, and creates the consumer group (reading from the start of the stream) if it
    /// does not exist.
    ///
    /// # Errors
    ///
    /// The connection or the group creation failed.
    pub fn connect(self) -> Result<StreamWorker, StreamError> {
        let mut con = redis::Client::open(self.url.as_str())?.get_connection()?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut con);
        if let Err(error) = created {
            if error.code() != Some("BUSYGROUP") {
                return Err(error.into());
            }
        }
        let dead_letter = self
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.stream));
        Ok(StreamWorker {
            con,
            errors_key: format!("{}:errors:{}", self.stream, self.group),
            dead_letter,
            settings: self,
            shared: Arc::new(Shared::default()),
            claim_cursor: "0-0".to_string(),
        })
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    stats: Mutex<StreamStats>,
}

/// Feeds an [`AsyncPool`] from one consumer of a Redis Stream consumer group. See the
/// [module documentation](self).
///
/// ```no_run
/// use slowpool::redis::{Entry, StreamWorker};
/// use slowpool::AsyncPool;
/// use std::time::Duration;
///
/// fn fetch(url: &str) -> Result<String, ureq::Error> {
///     ureq::get(url).call()?.body_mut().read_to_string()
/// }
///
/// // The callback's `Err` leaves the entry pending: it runs again, up to `max_deliveries`.
/// let pool = AsyncPool::new(32, |entry: Entry| -> Result<Vec<u8>, String> {
///     let url = String::from_utf8(entry.payload).map_err(|e| e.to_string())?;
///     fetch(&url).map(String::into_bytes).map_err(|e| e.to_string())
/// })?;
/// let mut worker = StreamWorker::builder("redis://127.0.0.1/", "urls", "crawlers", "machine-1")
///     .result_stream("urls:results") // each page, written before its entry is acknowledged
///     .claim_after(Duration::from_secs(60))
///     .max_deliveries(5)
///     .connect()?;
/// let handle = worker.handle();
/// ctrlc::set_handler(move || handle.stop())?; // Ctrl-C: stop reading, finish what is in flight
/// let stats = worker.run(&pool)?; // returns once stopped, every entry in flight settled
/// assert_eq!(stats.in_flight, 0);
/// println!("{} read, {} acknowledged, {} to retry", stats.read, stats.acked, stats.retried);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamWorker {
    con: redis::Connection,
    settings: StreamWorkerBuilder,
    dead_letter: String,
    /// Hash of the last error of each failed entry, shared by every consumer of the group.
    errors_key: String,
    shared: Arc<Shared>,
    claim_cursor: String,
}

/// Stops a running [`StreamWorker`] and reads its stats from another thread.
#[derive(Clone)]
pub struct StreamWorkerHandle {
    shared: Arc<Shared>,
}

impl StreamWorkerHandle {
    /// Asks the worker to stop: it reads nothing more, lets what is in flight finish,
    /// acknowledges it, and `run` returns.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// The worker's counts so far.
    pub fn stats(&self) -> StreamStats {
        *self.shared.stats.lock()
    }
}

impl fmt::Debug for StreamWorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWorkerHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl fmt::Debug for StreamWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWorker")
            .field("stream", &self.settings.stream)
            .field("group", &self.settings.group)
            .field("consumer", &self.settings.consumer)
            .finish()
    }
}

type Settled<O, E> = (TaskId, Result<Result<O, E>, TaskError>);

/// One run's link to its pool: where entries go, where their results come back, and which
/// entries are out.
struct Feed<'p, O: Send + 'static, E: Send + 'static> {
    pool: &'p AsyncPool<Entry, Result<O, E>>,
    mailbox: Sender<Settled<O, E>>,
    results: Receiver<Settled<O, E>>,
    /// Task → entry id, for every entry handed to the pool and not yet settled.
    outstanding: HashMap<TaskId, String>,
    /// The worker was asked to stop, or the pool shut down: read and claim nothing more.
    stopping: bool,
}

impl<O: Send + 'static, E: Send + 'static> Feed<'_, O, E> {
    /// Hands entries to the pool; returns how many it took.
    fn submit(&mut self, entries: Vec<Entry>) -> usize {
        let mut added = 0;
        for entry in entries {
            let id = entry.id.clone();
            match self.pool.add_task_to(entry, &self.mailbox) {
                Ok(task) => {
                    self.outstanding.insert(task, id);
                    added += 1;
                }
                // The pool shut down: the entry stays pending in Redis and is claimed later.
                Err(_) => self.stopping = true,
            }
        }
        added
    }
}

impl StreamWorker {
    /// Starts configuring a worker for `consumer` in `group` on `stream` at `url`.
    pub fn builder(
        url: &str,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> StreamWorkerBuilder {
        StreamWorkerBuilder {
            url: url.to_string(),
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            in_flight: None,
            block: Duration::from_millis(100),
            claim_after: Duration::from_secs(60),
            claim_every: None,
            max_deliveries: 5,
            dead_letter: None,
            result_stream: None,
        }
    }

    /// A handle to stop the worker and read its stats from another thread.
    pub fn handle(&self) -> StreamWorkerHandle {
        StreamWorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Feeds `pool` until stopped (see [`StreamWorkerHandle::stop`]) or the pool shuts down;
    /// then waits for the entries in flight, acknowledges them, and returns the counts.
    ///
    /// # Errors
    ///
    /// A Redis command failed. Entries read and not acknowledged stay pending; another
    /// consumer (or this one, run again) claims them after `claim_after`.
    pub fn run<O, E>(
        &mut self,
        pool: &AsyncPool<Entry, Result<O, E>>,
    ) -> Result<StreamStats, StreamError>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let limit = self.settings.in_flight.unwrap_or(2 * pool.max_workers());
        let claim_every = self
            .settings
            .claim_every
            .unwrap_or(self.settings.claim_after / 2);
        let (mailbox, results) = unbounded();
        let mut feed = Feed {
            pool,
            mailbox,
            results,
            outstanding: HashMap::new(),
            stopping: false,
        };
        let mut next_claim = Instant::now();
        loop {
            self.settle_ready(&mut feed)?;
            let in_flight = feed.outstanding.len();
            self.count(|s| s.in_flight = in_flight);
            feed.stopping |= self.shared.stop.load(Ordering::SeqCst) || pool.is_shut_down();
            if feed.stopping {
                if feed.outstanding.is_empty() {
                    break;
                }
                self.settle_next(&mut feed)?;
                continue;
            }
            let mut added = 0;
            if limit > feed.outstanding.len() && Instant::now() >= next_claim {
                added += self.claim(limit - feed.outstanding.len(), &mut feed)?;
                next_claim = Instant::now() + claim_every;
            }
            if limit > feed.outstanding.len() && !feed.stopping {
                // Block on Redis only when nothing is in flight; otherwise look and move on,
                // so finished entries are acknowledged promptly.
                let block = feed.outstanding.is_empty().then_some(self.settings.block);
                added += self.read(limit - feed.outstanding.len(), block, &mut feed)?;
            }
            if added == 0 && !feed.outstanding.is_empty() {
                self.settle_next(&mut feed)?;
            }
        }
        self.shared.stats.lock().in_flight = 0;
        Ok(*self.shared.stats.lock())
    }

    fn count(&self, update: impl FnOnce(&mut StreamStats)) {
        update(&mut self.shared.stats.lock());
    }

    /// Reads up to `room` new entries and hands them to the pool.
    fn read<O, E>(
        &mut self,
        room: usize,
        block: Option<Duration>,
        feed: &mut Feed<'_, O, E>,
    ) -> Result<usize, StreamError>
    where
        O: Send + 'static,
        E: Send + 'static,
    {
        let s = &self.settings;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&s.group)
            .arg(&s.consumer)
            .arg("COUNT")
            .arg(room);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&s.stream).arg(">");
        let reply: Option<StreamReadReply> = cmd.query(&mut self.con)?;
        let entries: Vec<Entry> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|id| Entry {
                payload: id.get(PAYLOAD).unwrap_or_default(),
                id: id.id,
                deliveries: 1,
            })
            .collect();
        self.count(|s| s.read += entries.len() as u64);
        Ok(feed.submit(entries))
    }

    /// Claims entries idle past `claim_after`; dead-letters those delivered too often and hands
    /// the rest to the pool.
    fn claim<O, E>(&mut self, room: usize, feed: &mut Feed<'_, O, E>) -> Result<usize, StreamError>
    where
        O: Send + 'static,
        E: Send + 'static,
    {
        let s = &self.settings;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&s.consumer)
            .arg(s.claim_after.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(room)
            .query(&mut self.con)?;
        self.claim_cursor = reply.next_stream_id;
        if reply.claimed.is_empty() {
            return Ok(0);
        }
        // Delivery counts of what was just claimed (XAUTOCLAIM does not report them).
        let first = &reply.claimed[0].id;
        let last = &reply.claimed[reply.claimed.len() - 1].id;
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(first)
            .arg(last)
            .arg(reply.claimed.len())
            .arg(&s.consumer)
            .query(&mut self.con)?;
        let deliveries: HashMap<&str, u64> = pending
            .ids
            .iter()
            .map(|p| (p.id.as_str(), p.times_delivered as u64))
            .collect();
        let mut runnable = Vec::new();
        let mut dead = Vec::new();
        for claimed in &reply.claimed {
            let entry = Entry {
                id: claimed.id.clone(),
                payload: claimed.get(PAYLOAD).unwrap_or_default(),
                deliveries: deliveries.get(claimed.id.as_str()).copied().unwrap_or(1),
            };
            if entry.deliveries > s.max_deliveries {
                dead.push(entry);
            } else {
                runnable.push(entry);
            }
        }
        let claimed = reply.claimed.len() as u64;
        self.count(|s| s.claimed += claimed);
        for entry in dead {
            self.dead_letter(&entry)?;
        }
        Ok(feed.submit(runnable))
    }

    /// Moves a poison entry to the dead-letter stream with its last error, and acknowledges it.
    fn dead_letter(&mut self, entry: &Entry) -> Result<(), StreamError> {
        let error: Option<String> = redis::cmd("HGET")
            .arg(&self.errors_key)
            .arg(&entry.id)
            .query(&mut self.con)?;
        let error = error.unwrap_or_else(|| "delivered too many times".to_string());
        let s = &self.settings;
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&self.dead_letter)
            .arg("*")
            .arg("entry")
            .arg(&entry.id)
            .arg(PAYLOAD)
            .arg(&entry.payload)
            .arg("error")
            .arg(&error)
            .arg("deliveries")
            .arg(entry.deliveries)
            .ignore()
            .cmd("XACK")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&entry.id)
            .ignore()
            .cmd("HDEL")
            .arg(&self.errors_key)
            .arg(&entry.id)
            .ignore()
            .query::<()>(&mut self.con)?;
        self.count(|s| s.dead_lettered += 1);
        Ok(())
    }

    /// Settles every result already in the mailbox, in one round trip.
    fn settle_ready<O, E>(&mut self, feed: &mut Feed<'_, O, E>) -> Result<(), StreamError>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let ready: Vec<_> = feed.results.try_iter().collect();
        self.settle(ready, &mut feed.outstanding)
    }

    /// Waits (at most `block`) for a result, then settles it with any others ready.
    fn settle_next<O, E>(&mut self, feed: &mut Feed<'_, O, E>) -> Result<(), StreamError>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        match feed.results.recv_timeout(self.settings.block) {
            Ok(first) => {
                let ready: Vec<_> = std::iter::once(first)
                    .chain(feed.results.try_iter())
                    .collect();
                self.settle(ready, &mut feed.outstanding)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Ok(()),
        }
    }

    /// Tasks ended: for each `Ok`, write the output and acknowledge; for each failure, record
    /// the error and leave the entry pending for a later claim. One atomic pipeline for all.
    fn settle<O, E>(
        &mut self,
        ready: Vec<Settled<O, E>>,
        outstanding: &mut HashMap<TaskId, String>,
    ) -> Result<(), StreamError>
    where
        O: AsRef<[u8]>,
        E: fmt::Display,
    {
        let s = &self.settings;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let (mut acked, mut retried) = (0, 0);
        for (task, result) in ready {
            let Some(entry) = outstanding.remove(&task) else {
                continue;
            };
            let error = match result {
                Ok(Ok(output)) => {
                    if let Some(results) = &s.result_stream {
                        pipe.cmd("XADD")
                            .arg(results)
                            .arg("*")
                            .arg("entry")
                            .arg(&entry)
                            .arg("output")
                            .arg(output.as_ref())
                            .arg("consumer")
                            .arg(&s.consumer)
                            .ignore();
                    }
                    pipe.cmd("XACK")
                        .arg(&s.stream)
                        .arg(&s.group)
                        .arg(&entry)
                        .ignore()
                        .cmd("HDEL")
                        .arg(&self.errors_key)
                        .arg(&entry)
                        .ignore();
                    acked += 1;
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            pipe.cmd("HSET")
                .arg(&self.errors_key)
                .arg(&entry)
                .arg(error)
                .ignore();
            retried += 1;
        }
        if acked + retried == 0 {
            return Ok(());
        }
        pipe.query::<()>(&mut self.con)?;
        let in_flight = outstanding.len();
        self.count(|s| {
            s.acked += acked;
            s.retried += retried;
            s.in_flight = in_flight;
        });
        Ok(())
    }
}
