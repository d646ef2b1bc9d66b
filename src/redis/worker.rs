//! [`StreamWorker`]: one consumer of a group, feeding a pool: its run loop.
//!
//! # The run loop
//!
//! Every entry this worker holds is in `held`, in one of three states: handed to the pool
//! (`Queued`: waiting in the pool's queue or running), finished and not yet settled in Redis
//! (`Done`), or failed and waiting out its retry backoff (`Waiting`). One loop, on one
//! thread, owns `held` and the connection:
//!
//! 1. collect finished tasks from the mailbox (`Queued` → `Done`);
//! 2. when the link is down, try to reconnect (capped exponential backoff); nothing held is
//!    dropped while down, and finished entries wait in `Done`;
//! 3. when up: settle every `Done` entry (fenced: see `scripts.rs`), refresh leases when due,
//!    restart retries whose backoff has passed, claim entries of dead consumers when due, and
//!    read new entries while there is room;
//! 4. wait for a result, a stop, or the next due time.
//!
//! Invariant: an entry is in `held` exactly while this worker may still write for it; it
//! leaves `held` when settled, handed back, or found held by another consumer. A task whose
//! entry left `held` is forgotten: its result is dropped when it arrives.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;
use redis::streams::StreamReadReply;

use super::builder::StreamWorkerBuilder;
use super::entry::{Entry, EntryError};
use super::link::{Fault, Link};
use super::scripts::{Keys, Scripts, Verdict};
use super::stats::{Backlog, StreamStats};
use super::{StreamError, PAYLOAD};
use crate::in_flight::InFlight;
use crate::{AsyncPool, Done, TaskError, TaskId};

// `connect` lives beside the worker it makes, so that the settings (`builder.rs`) need not
// know the worker.
impl StreamWorkerBuilder {
    /// Connects, and creates the consumer group (reading from the start of the stream) if it
    /// does not exist.
    ///
    /// # Errors
    ///
    /// The connection or the group creation failed. The first connection is not retried.
    ///
    /// ```
    /// use slowpool::redis::{Producer, StreamWorker};
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-connect-{}", std::process::id());
    /// Producer::connect(&url, stream)?.push(b"added before any worker")?;
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1").connect()?;
    /// let backlog = worker.backlog()?;
    /// assert_eq!((backlog.pending, backlog.undelivered), (0, Some(1))); // it will be read
    ///
    /// // More workers join the same group; a fresh stream is created empty.
    /// StreamWorker::builder(&url, stream, "workers", "machine-2").connect()?;
    /// let empty = &format!("{stream}:empty");
    /// StreamWorker::builder(&url, empty, "workers", "machine-1").connect()?;
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// assert_eq!(redis::cmd("XLEN").arg(empty).query::<u64>(&mut redis)?, 0);
    ///
    /// let wrong = StreamWorker::builder("127.0.0.1:6379", stream, "workers", "machine-1");
    /// assert!(wrong.connect().is_err()); // not a Redis URL
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).arg(empty).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(self) -> Result<StreamWorker, StreamError> {
        let mut link = Link::connect(&self.url, self.link.clone())?;
        let (stream, group) = (self.stream.clone(), self.group.clone());
        link.call(Duration::ZERO, |con| create_group(con, &stream, &group))?;
        let keys = Keys {
            errors: format!("{}:errors:{}", self.stream, self.group),
            dead: self
                .dead_letter
                .clone()
                .unwrap_or_else(|| format!("{}:dead", self.stream)),
            stream: self.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            results: self.result_stream.clone(),
            results_max_len: self.results_max_len,
            dead_max_len: self.dead_max_len,
            delete_acked: self.delete_acked,
        };
        Ok(StreamWorker::new(link, keys, self))
    }
}

/// Creates the consumer group (and the stream) unless it exists: at `connect`, and again after
/// every reconnection (the server may have restarted without the group).
fn create_group(con: &mut redis::Connection, stream: &str, group: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// `StreamWorker::new`'s shared half: what a [`StreamWorkerHandle`] reaches from another thread.
struct Shared {
    stop: AtomicBool,
    stats: Mutex<StreamStats>,
    /// Wakes the run loop when `stop` is called.
    wake: Sender<()>,
}

/// Feeds an [`AsyncPool`] from one consumer of a Redis Stream consumer group. See the
/// [module documentation](super).
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
    link: Link,
    keys: Keys,
    scripts: Scripts,
    settings: StreamWorkerBuilder,
    shared: Arc<Shared>,
    woken: Receiver<()>,
}

/// Stops a running [`StreamWorker`] and reads its stats from another thread.
///
/// Cheap to clone, `Send` and `Sync`: give one to a Ctrl-C handler, a monitoring thread, or
/// the pool's callback itself. Every handle of a worker stops and reads the same worker; a
/// handle outlives its worker harmlessly.
///
/// ```
/// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
/// use slowpool::AsyncPool;
///
/// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
/// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
/// # let stream = &format!("doc-handle-type-{}", std::process::id());
/// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
///     .in_flight(1)
///     .connect()?;
/// Producer::connect(&url, stream)?.push_batch(["a", "b", "c"])?;
/// let handle = worker.handle();
/// let stopper = handle.clone();
/// let pool = AsyncPool::new(1, move |entry: Entry| -> Result<Vec<u8>, Failure> {
///     stopper.stop(); // one entry, then stop
///     Ok(entry.payload)
/// })?;
/// let stats = worker.run(&pool)?;
/// assert_eq!((stats.read, stats.acked), (1, 1));
/// assert_eq!(handle.stats(), stats);
/// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
/// assert_eq!(redis::cmd("XLEN").arg(stream).query::<u64>(&mut redis)?, 2); // left for later
/// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StreamWorkerHandle {
    shared: Arc<Shared>,
}

impl StreamWorkerHandle {
    /// Asks the worker to stop: it reads and claims nothing more, hands entries queued in
    /// the pool and not started back to the group at once, waits for the running ones (at
    /// most `stop_timeout`), settles them, and `run` returns. Works while Redis is
    /// unreachable: `run` then returns once nothing runs, counting what it could not settle
    /// in `StreamStats::unsettled`.
    ///
    /// Returns at once, without waiting for `run` to return. Calling it before `run`, or
    /// more than once, is harmless; a stopped worker stays stopped: a later `run` returns
    /// at once, reading nothing (connect a new worker to start again).
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-stop-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1").connect()?;
    /// Producer::connect(&url, stream)?.push(b"job")?;
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload)
    /// })?;
    /// let handle = worker.handle();
    /// handle.stop(); // before `run`: it returns at once
    /// assert_eq!(worker.run(&pool)?.read, 0);
    /// handle.stop();
    /// assert_eq!(worker.run(&pool)?.read, 0); // still stopped
    /// assert_eq!(worker.backlog()?.undelivered, Some(1)); // the entry waits for another worker
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.wake.try_send(());
    }

    /// Returns the worker's counts so far: updated as `run` goes, totals over every run of
    /// the worker, and all zero before the first. Once `run` has returned, the same as what
    /// it returned (`in_flight` back to 0).
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamStats, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-handle-stats-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .drain(true)
    ///     .connect()?;
    /// let handle = worker.handle();
    /// assert_eq!(handle.stats(), StreamStats::default());
    /// Producer::connect(&url, stream)?.push_batch(["https://example.com/", "mailto:x"])?;
    /// let pool = AsyncPool::new(2, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     match entry.payload_str()? {
    ///         url if url.starts_with("https://") => Ok(entry.payload),
    ///         other => Err(Failure::permanent(format!("not a URL: {other}"))),
    ///     }
    /// })?;
    /// let stats = std::thread::scope(|s| {
    ///     let watcher = handle.clone();
    ///     s.spawn(move || assert!(watcher.stats().in_flight <= 2)); // any time, any thread
    ///     worker.run(&pool)
    /// })?;
    /// assert_eq!(handle.stats(), stats);
    /// assert_eq!((stats.acked, stats.dead_lettered, stats.in_flight), (1, 1, 0));
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

type Settled<O, E> = Done<Result<O, E>>;

/// Where a held entry is.
enum Hold {
    /// Handed to the pool as this task: queued or running.
    Queued(TaskId),
    /// Finished; to be settled in Redis. `sent` once a settle was sent whose reply was lost.
    Done { verdict: Verdict, sent: bool },
    /// To be handed back to the group: it never ran this delivery (`ran: false`), or it
    /// failed and waits for a retry, or still ran at the stop deadline (`ran: true`).
    HandBack { ran: bool },
    /// Failed; runs again at this instant.
    Waiting(Instant),
}

struct Held {
    payload: Vec<u8>,
    deliveries: u64,
    state: Hold,
}

/// One run's state: the pool, the tasks in it, and every entry held.
struct Run<'p, O: Send + 'static, E: Send + 'static> {
    pool: &'p AsyncPool<Entry, Result<O, E>>,
    /// The tasks in the pool, each tagged with its entry's id: the record the `map_*`
    /// streams keep too. Dropping it at the end of a run forgets what is still there.
    tasks: InFlight<String, Settled<O, E>>,
    held: HashMap<String, Held>,
    stopping: bool,
    stop_deadline: Option<Instant>,
    limit: usize,
    next_lease: Instant,
    next_claim: Instant,
    next_forget: Instant,
    claim_cursor: String,
    /// The last read and claim found nothing (for `drain`).
    quiet: bool,
}

impl StreamWorker {
    /// A connected worker (the builder's `connect`: `link` up, the group created).
    fn new(link: Link, keys: Keys, settings: StreamWorkerBuilder) -> StreamWorker {
        let (wake, woken) = bounded(1);
        StreamWorker {
            link,
            keys,
            scripts: Scripts::new(),
            settings,
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                stats: Mutex::new(StreamStats::default()),
                wake,
            }),
            woken,
        }
    }

    /// Starts configuring a worker for `consumer` in `group` on `stream` at `url`.
    ///
    /// Give each process its own consumer name, stable across restarts (the host name, or a
    /// pod name): a restarted process then finds its own pending entries. Two running
    /// processes must not share one: each would settle the other's entries.
    ///
    /// Sends nothing to Redis: [`connect`](StreamWorkerBuilder::connect) does.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "urls", "crawlers", "machine-1");
    /// let settings = format!("{builder:?}");
    /// assert!(settings.contains(r#"stream: "urls", group: "crawlers", consumer: "machine-1""#));
    /// assert!(settings.contains("claim_after: 60s")); // the defaults
    /// assert!(settings.contains("max_deliveries: 5"));
    /// assert!(settings.contains("delete_acked: true"));
    /// ```
    pub fn builder(
        url: &str,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> StreamWorkerBuilder {
        StreamWorkerBuilder::new(url, stream.into(), group.into(), consumer.into())
    }

    /// Returns a handle to stop the worker and read its stats from another thread. Take it
    /// before `run`, which borrows the worker; any number of handles may be taken.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-handle-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1").connect()?;
    /// Producer::connect(&url, stream)?.push(b"job")?;
    /// let handle = worker.handle();
    /// let pool = AsyncPool::new(1, move |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     handle.stop(); // what a Ctrl-C handler would do
    ///     Ok(entry.payload)
    /// })?;
    /// let stats = worker.run(&pool)?; // no `drain`: only the stop ends it
    /// assert_eq!(stats.acked, 1);
    /// assert_eq!(worker.handle().stats(), stats);
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> StreamWorkerHandle {
        StreamWorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Reads the group's backlog: entries pending (with any consumer), entries not yet
    /// delivered, and each consumer's pending count. After a [`drain`] run, a non-empty
    /// backlog means other consumers still hold entries (or new ones arrived).
    ///
    /// # Errors
    ///
    /// Redis refused the command or could not be reached. Nothing retries it: while the
    /// worker's connection is down (a `run` that ended during an outage), it fails without
    /// trying, until a `run` reconnects.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-backlog-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .drain(true)
    ///     .connect()?;
    /// Producer::connect(&url, stream)?.push_batch(["a", "b"])?;
    /// let backlog = worker.backlog()?;
    /// assert_eq!((backlog.pending, backlog.undelivered), (0, Some(2)));
    /// assert!(backlog.consumers.is_empty()); // nobody has read yet
    ///
    /// let pool = AsyncPool::new(2, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload)
    /// })?;
    /// worker.run(&pool)?;
    /// let backlog = worker.backlog()?;
    /// assert!(backlog.is_empty());
    /// let (name, pending, _idle_ms) = &backlog.consumers[0];
    /// assert_eq!((name.as_str(), *pending), ("machine-1", 0));
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`drain`]: StreamWorkerBuilder::drain
    pub fn backlog(&mut self) -> Result<Backlog, StreamError> {
        let (stream, group) = (self.keys.stream.clone(), self.keys.group.clone());
        let groups: Vec<HashMap<String, redis::Value>> = self.link.call(Duration::ZERO, |c| {
            redis::cmd("XINFO").arg("GROUPS").arg(&stream).query(c)
        })?;
        let consumers: Vec<HashMap<String, redis::Value>> =
            self.link.call(Duration::ZERO, |c| {
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&stream)
                    .arg(&group)
                    .query(c)
            })?;
        let int = |m: &HashMap<String, redis::Value>, k: &str| -> Option<u64> {
            m.get(k).and_then(|v| redis::from_redis_value_ref(v).ok())
        };
        let mut backlog = Backlog::default();
        for g in &groups {
            let name: Option<String> = g
                .get("name")
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            if name.as_deref() == Some(group.as_str()) {
                backlog.pending = int(g, "pending").unwrap_or(0);
                backlog.undelivered = int(g, "lag");
            }
        }
        for c in &consumers {
            let name: String = c
                .get("name")
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            backlog.consumers.push((
                name,
                int(c, "pending").unwrap_or(0),
                int(c, "idle").unwrap_or(0),
            ));
        }
        Ok(backlog)
    }

    /// Feeds `pool` until stopped (see [`StreamWorkerHandle::stop`]), until the pool shuts
    /// down, or — with [`drain`](StreamWorkerBuilder::drain) — until nothing is left for it;
    /// then settles what it holds and returns the counts.
    ///
    /// Connection failures are not errors: the worker keeps every entry it holds (tasks go
    /// on running), reconnects with a capped exponential backoff, renews its leases and
    /// settles what finished meanwhile — fenced, so nothing is written for an entry another
    /// consumer took over.
    ///
    /// # Errors
    ///
    /// Redis refused a command ([`StreamError::Redis`]), or stayed unreachable past
    /// [`reconnect_limit`](StreamWorkerBuilder::reconnect_limit)
    /// ([`StreamError::Disconnected`]). Entries held then stay pending; other consumers
    /// claim them after `claim_after`. Their tasks that have not started are cancelled in the
    /// pool (nobody would settle their results); running ones finish, and their results are
    /// dropped.
    ///
    /// The callback's `Ok` output is written to the [result
    /// stream](StreamWorkerBuilder::result_stream), if any, and the entry acknowledged; its
    /// `Err` is retried or dead-lettered as [`EntryError::is_permanent`] says; a panic or a
    /// task timeout counts as a transient failure. An entry without a `payload` field is
    /// dead-lettered without reaching the callback. `run` can be called again after it
    /// returns (the counts go on adding up), unless the worker was stopped.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-run-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .drain(true)
    ///     .connect()?;
    /// let mut producer = Producer::connect(&url, stream)?;
    /// producer.push_batch(["https://example.com/", "ftp://example.com/"])?;
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// redis::cmd("XADD").arg(stream).arg("*").arg("url").arg("no `payload`").exec(&mut redis)?;
    ///
    /// let pool = AsyncPool::new(4, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     let url = entry.payload_str()?;
    ///     if !url.starts_with("https://") {
    ///         return Err(Failure::permanent(format!("not a URL: {url}")));
    ///     }
    ///     Ok(url.len().to_string().into_bytes())
    /// })?;
    /// let stats = worker.run(&pool)?;
    /// assert_eq!((stats.read, stats.acked, stats.dead_lettered), (3, 1, 2));
    /// assert_eq!(stats.in_flight, 0);
    /// assert_eq!(redis::cmd("XLEN").arg(format!("{stream}:dead")).query::<u64>(&mut redis)?, 2);
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run<O, E>(
        &mut self,
        pool: &AsyncPool<Entry, Result<O, E>>,
    ) -> Result<StreamStats, StreamError>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: EntryError + Send + 'static,
    {
        let now = Instant::now();
        let mut run = Run {
            pool,
            tasks: InFlight::new(Box::new(pool.forgetter())),
            held: HashMap::new(),
            stopping: false,
            stop_deadline: None,
            limit: self.settings.in_flight.unwrap_or(2 * pool.max_workers()),
            next_lease: now,
            next_claim: now,
            next_forget: now,
            claim_cursor: "0-0".to_string(),
            quiet: false,
        };
        let outcome = self.run_loop(&mut run);
        // Tasks still in the pool are forgotten with `run`: cancelled if they have not started
        // (their entries stay pending, for this consumer's next run or for others to claim).
        let held = run.held.len();
        self.count(|s| {
            s.in_flight = 0;
            if outcome.is_ok() {
                s.unsettled += held as u64;
            }
        });
        outcome.map(|()| *self.shared.stats.lock())
    }

    fn run_loop<O, E>(&mut self, run: &mut Run<'_, O, E>) -> Result<(), StreamError>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: EntryError + Send + 'static,
    {
        loop {
            while let Some((id, ended)) = run.tasks.try_take() {
                self.finished(run, id, ended);
            }
            if !run.stopping && (self.shared.stop.load(Ordering::SeqCst) || run.pool.is_shut_down())
            {
                self.begin_stop(run);
            }
            if let Some(deadline) = run.stop_deadline {
                if Instant::now() >= deadline {
                    self.abandon_running(run);
                }
            }
            if !self.link.is_up() {
                let (stream, group) = (self.keys.stream.clone(), self.keys.group.clone());
                if self.link.reconnect(|c| create_group(c, &stream, &group))? {
                    self.count(|s| s.reconnects += 1);
                    // Renew leases first: they may be close to lapsing.
                    run.next_lease = Instant::now();
                }
            }
            if self.link.is_up() {
                match self.step(run) {
                    Ok(()) | Err(Fault::Down(_)) => {}
                    Err(Fault::Refused(e)) => return Err(StreamError::Redis(e)),
                }
            }
            let in_flight = run.held.len();
            self.count(|s| s.in_flight = in_flight);
            if run.stopping {
                let running = run
                    .held
                    .values()
                    .any(|h| matches!(h.state, Hold::Queued(_)));
                if run.held.is_empty() || (!running && !self.link.is_up()) {
                    return Ok(());
                }
            } else if self.settings.drain && run.quiet && run.held.is_empty() {
                return Ok(());
            }
            self.wait(run);
        }
    }

    /// One pass over Redis while the link is up.
    fn step<O, E>(&mut self, run: &mut Run<'_, O, E>) -> Result<(), Fault>
    where
        O: AsRef<[u8]> + Send + 'static,
        E: EntryError + Send + 'static,
    {
        self.settle(run)?;
        self.hand_back(run)?;
        let now = Instant::now();
        if now >= run.next_lease && !run.held.is_empty() {
            self.renew(run)?;
        }
        if now >= run.next_lease {
            run.next_lease = now + self.settings.claim_after / 3;
        }
        self.retry_due(run)?;
        if run.stopping {
            return Ok(());
        }
        if let Some(idle) = self.settings.forget_consumers_after {
            if now >= run.next_forget {
                let removed = self.link.call(Duration::ZERO, |c| {
                    self.scripts.forget(c, &self.keys, idle.as_millis() as u64)
                })?;
                self.count(|s| s.consumers_removed += removed.len() as u64);
                run.next_forget = now + (idle / 2).min(Duration::from_secs(60));
            }
        }
        let mut found = 0;
        // Draining, look for claimable entries before concluding there is nothing left.
        let drained = self.settings.drain && run.held.is_empty();
        if run.limit > run.held.len() && (now >= run.next_claim || drained) {
            found += self.claim(run)?;
            run.next_claim = Instant::now()
                + self
                    .settings
                    .claim_every
                    .unwrap_or(self.settings.claim_after / 2);
        }
        if run.limit > run.held.len() {
            // Block on Redis only when holding nothing; otherwise look and move on, so
            // finished entries are settled promptly.
            let block = run.held.is_empty().then_some(self.settings.block);
            found += self.read(run, block)?;
        }
        run.quiet = found == 0;
        Ok(())
    }

    fn count(&self, update: impl FnOnce(&mut StreamStats)) {
        update(&mut self.shared.stats.lock());
    }

    /// Waits for a task to finish, a stop, or the next due time (at most `block`).
    fn wait<O, E>(&self, run: &mut Run<'_, O, E>)
    where
        O: AsRef<[u8]> + Send + 'static,
        E: EntryError + Send + 'static,
    {
        let now = Instant::now();
        let mut until = now + self.settings.block;
        if self.link.is_up() {
            if !run.held.is_empty() {
                until = until.min(run.next_lease);
            }
            if run
                .held
                .values()
                .any(|h| matches!(h.state, Hold::Done { .. } | Hold::HandBack { .. }))
            {
                return; // settle at once
            }
            for h in run.held.values() {
                if let Hold::Waiting(at) = h.state {
                    until = until.min(at);
                }
            }
        } else {
            until = until.min(self.link.next_attempt().max(now));
        }
        if let Some(deadline) = run.stop_deadline {
            until = until.min(deadline);
        }
        // Holding nothing with the link up, the next read blocks in Redis instead.
        if self.link.is_up() && run.held.is_empty() && !run.stopping {
            return;
        }
        let timeout = until.saturating_duration_since(now);
        select! {
            recv(run.tasks.receiver()) -> ended => {
                if let Some((id, ended)) = ended.ok().and_then(|ended| run.tasks.accept(ended)) {
                    self.finished(run, id, ended);
                }
            }
            recv(self.woken) -> _ => {}
            default(timeout) => {}
        }
    }

    /// The task of entry `id` ended: record its verdict.
    fn finished<O, E>(&self, run: &mut Run<'_, O, E>, id: String, ended: Settled<O, E>)
    where
        O: AsRef<[u8]> + Send + 'static,
        E: EntryError + Send + 'static,
    {
        let Some(held) = run.held.get_mut(&id) else {
            return;
        };
        let verdict = match ended.result {
            Ok(Ok(output)) => Verdict::Ok(output.as_ref().to_vec()),
            Ok(Err(e)) if e.is_permanent() => Verdict::Dead(e.to_string()),
            Ok(Err(e)) => Verdict::Retry(e.to_string()),
            Err(TaskError::Cancelled) => {
                held.state = Hold::HandBack { ran: false };
                return;
            }
            Err(e) => Verdict::Retry(e.to_string()),
        };
        let verdict = match verdict {
            Verdict::Retry(e) if held.deliveries >= self.settings.max_deliveries => {
                Verdict::Dead(e)
            }
            v => v,
        };
        held.state = Hold::Done {
            verdict,
            sent: false,
        };
    }

    /// Stop reading; hand back what has not started; start the stop deadline.
    fn begin_stop<O: Send + 'static, E: Send + 'static>(&self, run: &mut Run<'_, O, E>) {
        run.stopping = true;
        run.stop_deadline = self.settings.stop_timeout.map(|d| Instant::now() + d);
        for held in run.held.values_mut() {
            match held.state {
                // A cancelled task reports `Cancelled` through the mailbox → HandBack.
                Hold::Queued(task) => {
                    run.pool.cancel(task);
                }
                Hold::Waiting(_) => held.state = Hold::HandBack { ran: true },
                _ => {}
            }
        }
    }

    /// The stop deadline passed: hand back what still runs; its results will be dropped.
    fn abandon_running<O: Send + 'static, E: Send + 'static>(&self, run: &mut Run<'_, O, E>) {
        for held in run.held.values_mut() {
            if let Hold::Queued(task) = held.state {
                run.tasks.forget(task);
                held.state = Hold::HandBack { ran: true };
            }
        }
    }

    /// Settles every finished entry in one fenced script call.
    fn settle<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
    ) -> Result<(), Fault> {
        let mut ids: Vec<String> = Vec::new();
        for (id, held) in run.held.iter_mut() {
            if let Hold::Done { sent, .. } = &mut held.state {
                ids.push(id.clone());
                *sent = true; // until the reply says otherwise: its fate is unknown
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let items: Vec<(&str, &Verdict, u64)> = ids
            .iter()
            .map(|id| {
                let h = &run.held[id];
                let Hold::Done { verdict, .. } = &h.state else {
                    unreachable!()
                };
                (id.as_str(), verdict, h.deliveries)
            })
            .collect();
        let (scripts, keys) = (&self.scripts, &self.keys);
        let replies = self
            .link
            .call(Duration::ZERO, |c| scripts.settle(c, keys, &items))?;
        drop(items);
        let mut stats = StreamStats::default();
        for (id, reply) in ids.iter().zip(replies) {
            let mut held = run.held.remove(id).expect("held");
            let Hold::Done { verdict, sent } = held.state else {
                unreachable!()
            };
            // A settle sent before a lost reply may have done it: then "not pending" is its
            // doing, or another consumer's.
            if reply == 0 && sent && self.was_sent(&verdict) {
                stats.unconfirmed += 1;
                continue;
            }
            match (verdict, reply == 1) {
                (Verdict::Ok(_), true) => stats.acked += 1,
                (Verdict::Dead(_), true) => stats.dead_lettered += 1,
                (Verdict::Retry(_), true) => {
                    stats.retried += 1;
                    held.state = if run.stopping {
                        Hold::HandBack { ran: true }
                    } else {
                        let delay = self.settings.retry.after(held.deliveries);
                        Hold::Waiting(Instant::now() + delay)
                    };
                    run.held.insert(id.clone(), held);
                }
                (_, false) => stats.lost_lease += 1,
            }
        }
        self.count(|s| {
            s.acked += stats.acked;
            s.dead_lettered += stats.dead_lettered;
            s.retried += stats.retried;
            s.lost_lease += stats.lost_lease;
            s.unconfirmed += stats.unconfirmed;
        });
        Ok(())
    }

    /// Whether a verdict's earlier, unconfirmed settle removes the entry from the pending
    /// list (so "not pending" now is its doing).
    fn was_sent(&self, verdict: &Verdict) -> bool {
        !matches!(verdict, Verdict::Retry(_))
    }

    /// Hands entries back to the group with a very large idle time, so any consumer's next
    /// claim takes them; their delivery count is set to the runs they really had.
    fn hand_back<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
    ) -> Result<(), Fault> {
        // The count each is left with: the runs it really had (the claimer's XAUTOCLAIM adds
        // the next one).
        let back: Vec<(String, u64)> = run
            .held
            .iter()
            .filter_map(|(id, h)| match h.state {
                Hold::HandBack { ran } => Some((id.clone(), h.deliveries - u64::from(!ran))),
                _ => None,
            })
            .collect();
        if back.is_empty() {
            return Ok(());
        }
        let items: Vec<(&str, Option<u64>)> =
            back.iter().map(|(id, n)| (id.as_str(), Some(*n))).collect();
        let idle = (self.settings.claim_after * 1000).as_millis() as u64;
        let (scripts, keys) = (&self.scripts, &self.keys);
        let replies = self
            .link
            .call(Duration::ZERO, |c| scripts.lease(c, keys, idle, &items))?;
        let handed = replies.iter().filter(|r| **r == 1).count() as u64;
        for (id, _) in &back {
            run.held.remove(id);
        }
        self.count(|s| {
            s.handed_back += handed;
            s.lost_lease += back.len() as u64 - handed;
        });
        Ok(())
    }

    /// Renews the lease on every held entry (idle time back to 0, delivery count unchanged).
    /// An entry found held by another consumer is dropped, and its task cancelled if it has
    /// not started.
    fn renew<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
    ) -> Result<(), Fault> {
        let ids: Vec<String> = run.held.keys().cloned().collect();
        let items: Vec<(&str, Option<u64>)> = ids.iter().map(|id| (id.as_str(), None)).collect();
        let (scripts, keys) = (&self.scripts, &self.keys);
        let replies = self
            .link
            .call(Duration::ZERO, |c| scripts.lease(c, keys, 0, &items))?;
        let mut lost = 0;
        for (id, reply) in ids.iter().zip(replies) {
            if reply == 1 {
                continue;
            }
            // A Done entry is left to its settle, which sorts out what happened.
            if let Some(held) = run.held.get(id) {
                if matches!(held.state, Hold::Done { .. }) {
                    continue;
                }
            }
            if let Some(held) = run.held.remove(id) {
                if let Hold::Queued(task) = held.state {
                    run.tasks.forget(task);
                }
                lost += 1;
            }
        }
        self.count(|s| s.lost_lease += lost);
        Ok(())
    }

    /// Starts the next delivery of failed entries whose backoff has passed: the delivery
    /// count is raised in Redis (fenced) before the entry goes back to the pool.
    fn retry_due<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
    ) -> Result<(), Fault> {
        let now = Instant::now();
        let due: Vec<(String, u64)> = run
            .held
            .iter()
            .filter(|(_, h)| matches!(h.state, Hold::Waiting(at) if at <= now))
            .map(|(id, h)| (id.clone(), h.deliveries + 1))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let items: Vec<(&str, Option<u64>)> =
            due.iter().map(|(id, n)| (id.as_str(), Some(*n))).collect();
        let (scripts, keys) = (&self.scripts, &self.keys);
        let replies = self
            .link
            .call(Duration::ZERO, |c| scripts.lease(c, keys, 0, &items))?;
        let mut lost = 0;
        for ((id, n), reply) in due.into_iter().zip(replies) {
            let mut held = run.held.remove(&id).expect("held");
            if reply != 1 {
                lost += 1;
                continue;
            }
            held.deliveries = n;
            let entry = Entry {
                id: id.clone(),
                payload: held.payload.clone(),
                deliveries: n,
            };
            let pool = run.pool;
            held.state = match run
                .tasks
                .add(id.clone(), |mailbox| pool.add_task_to(entry, mailbox))
            {
                Ok(task) => Hold::Queued(task),
                Err(_) => {
                    run.stopping = true;
                    Hold::HandBack { ran: true }
                }
            };
            run.held.insert(id, held);
        }
        self.count(|s| s.lost_lease += lost);
        Ok(())
    }

    /// Takes in an entry this worker now holds: to the pool, or — malformed — straight to the
    /// dead-letter stream.
    fn take<O: Send + 'static, E: Send + 'static>(
        &self,
        run: &mut Run<'_, O, E>,
        id: String,
        payload: Option<Vec<u8>>,
        deliveries: u64,
    ) {
        if run.held.contains_key(&id) {
            return; // never hold one entry twice
        }
        let (payload, state) = match payload {
            None => (
                Vec::new(),
                Hold::Done {
                    verdict: Verdict::Dead(format!("malformed entry: no `{PAYLOAD}` field")),
                    sent: false,
                },
            ),
            Some(payload) => {
                // Kept for a retry: at most `in_flight` payloads.
                let entry = Entry {
                    id: id.clone(),
                    payload: payload.clone(),
                    deliveries,
                };
                let pool = run.pool;
                let state = match run
                    .tasks
                    .add(id.clone(), |mailbox| pool.add_task_to(entry, mailbox))
                {
                    Ok(task) => Hold::Queued(task),
                    // The pool shut down: give the entry back at once.
                    Err(_) => {
                        run.stopping = true;
                        Hold::HandBack { ran: false }
                    }
                };
                (payload, state)
            }
        };
        run.held.insert(
            id,
            Held {
                payload,
                deliveries,
                state,
            },
        );
    }

    /// Reads up to the room left of new entries.
    fn read<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
        block: Option<Duration>,
    ) -> Result<usize, Fault> {
        let room = run.limit - run.held.len();
        let k = &self.keys;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&k.group)
            .arg(&k.consumer)
            .arg("COUNT")
            .arg(room);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&k.stream).arg(">");
        let reply: Option<StreamReadReply> = self
            .link
            .call(block.unwrap_or_default(), |c| cmd.query(c))?;
        let entries: Vec<_> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        let n = entries.len();
        for e in entries {
            let payload = e
                .map
                .get(PAYLOAD)
                .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok());
            self.take(run, e.id, payload, 1);
        }
        self.count(|s| s.read += n as u64);
        Ok(n)
    }

    /// Claims entries idle past `claim_after` (dead consumers' and handed-back ones), with
    /// their exact delivery counts; over-delivered ones are dead-lettered by the script.
    fn claim<O: Send + 'static, E: Send + 'static>(
        &mut self,
        run: &mut Run<'_, O, E>,
    ) -> Result<usize, Fault> {
        let room = run.limit - run.held.len();
        let (scripts, keys) = (&self.scripts, &self.keys);
        let min_idle = self.settings.claim_after.as_millis() as u64;
        let (cursor, max) = (run.claim_cursor.clone(), self.settings.max_deliveries);
        let held = &run.held;
        let reply = self.link.call(Duration::ZERO, |c| {
            scripts.claim(c, keys, min_idle, &cursor, room, max, held.keys())
        })?;
        run.claim_cursor = reply.cursor;
        let n = reply.run.len();
        let buried = reply.buried;
        for (id, fields, deliveries) in reply.run {
            let payload = fields
                .into_iter()
                .find(|(name, _)| name == PAYLOAD)
                .map(|(_, v)| v);
            self.take(run, id, payload, deliveries);
        }
        self.count(|s| {
            s.claimed += n as u64;
            s.dead_lettered += buried;
        });
        Ok(n + buried as usize)
    }
}
