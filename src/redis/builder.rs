//! [`StreamWorkerBuilder`]: a [`StreamWorker`](super::StreamWorker)'s settings, and connecting it.

use std::time::Duration;

use super::link::LinkSettings;
use crate::backoff::Backoff;
/// Configures a [`StreamWorker`](super::StreamWorker): start with [`StreamWorker::builder`](super::StreamWorker::builder), end with
/// [`connect`](StreamWorkerBuilder::connect).
///
/// Every setting has a default, named on its setter; the setters can come in any order, and a
/// later call replaces an earlier one. Nothing is checked or sent to Redis before `connect`.
///
/// ```
/// use slowpool::redis::StreamWorker;
/// use std::time::Duration;
///
/// let builder = StreamWorker::builder("redis://127.0.0.1/", "urls", "crawlers", "machine-1")
///     .max_deliveries(3)
///     .result_stream("urls:results")
///     .claim_after(Duration::from_secs(30))
///     .max_deliveries(10); // the last call wins
/// let settings = format!("{builder:?}");
/// assert!(settings.contains("max_deliveries: 10"));
/// assert!(settings.contains(r#"result_stream: Some("urls:results")"#));
/// assert!(settings.contains("claim_after: 30s"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct StreamWorkerBuilder {
    pub(super) url: String,
    pub(super) stream: String,
    pub(super) group: String,
    pub(super) consumer: String,
    pub(super) in_flight: Option<usize>,
    pub(super) block: Duration,
    pub(super) claim_after: Duration,
    pub(super) claim_every: Option<Duration>,
    pub(super) max_deliveries: u64,
    pub(super) dead_letter: Option<String>,
    pub(super) result_stream: Option<String>,
    pub(super) results_max_len: u64,
    pub(super) dead_max_len: u64,
    pub(super) delete_acked: bool,
    pub(super) retry: Backoff,
    pub(super) stop_timeout: Option<Duration>,
    pub(super) link: LinkSettings,
    pub(super) forget_consumers_after: Option<Duration>,
    pub(super) drain: bool,
}

impl StreamWorkerBuilder {
    pub(crate) fn new(url: &str, stream: String, group: String, consumer: String) -> Self {
        StreamWorkerBuilder {
            url: url.to_string(),
            stream,
            group,
            consumer,
            in_flight: None,
            block: Duration::from_millis(100),
            claim_after: Duration::from_secs(60),
            claim_every: None,
            max_deliveries: 5,
            dead_letter: None,
            result_stream: None,
            results_max_len: 0,
            dead_max_len: 0,
            delete_acked: true,
            retry: Backoff {
                first: Duration::from_secs(1),
                cap: Duration::from_secs(300),
                jitter: true,
            },
            stop_timeout: None,
            link: LinkSettings {
                connect_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(5),
                reconnect: Backoff {
                    first: Duration::from_millis(100),
                    cap: Duration::from_secs(5),
                    jitter: true,
                },
                reconnect_limit: None,
            },
            forget_consumers_after: Some(Duration::from_secs(3600)),
            drain: false,
        }
    }

    /// Holds at most `n` entries at once (in the pool, waiting for a retry, or finished and
    /// not yet settled): a read asks for no more than the room left. Default: twice the
    /// pool's `max_workers`; 0 counts as 1. With a bounded
    /// [`queue_capacity`](crate::Builder::queue_capacity), keep `n` at most `max_workers +
    /// queue_capacity`: a full queue blocks the worker's loop, lease renewals included.
    ///
    /// Entries beyond what the pool can start at once wait in its queue, leased to this
    /// worker: a larger `n` keeps the pool busy between reads, a smaller one leaves more
    /// entries for other consumers.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("in_flight: None")); // twice max_workers
    /// assert!(format!("{:?}", builder.clone().in_flight(8)).contains("in_flight: Some(8)"));
    /// assert!(format!("{:?}", builder.in_flight(0)).contains("in_flight: Some(1)"));
    /// ```
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(n.max(1));
        self
    }

    /// Sets how long one `XREADGROUP` blocks waiting for new entries. Default: 100 ms; at
    /// least 1 ms.
    ///
    /// The worker blocks in Redis only while it holds nothing (otherwise it looks and moves
    /// on), so this is also how late an idle worker notices [`stop`](super::StreamWorkerHandle::stop),
    /// and how long a [`drain`](StreamWorkerBuilder::drain) run waits for new entries before
    /// returning.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("block: 100ms"));
    /// let quick = builder.clone().block(Duration::from_millis(20));
    /// assert!(format!("{quick:?}").contains("block: 20ms"));
    /// assert!(format!("{:?}", builder.block(Duration::ZERO)).contains("block: 1ms"));
    /// ```
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Sets how long a dead consumer's entries wait before another consumer claims them.
    /// Default: 60 s; at least 3 ms.
    ///
    /// Independent of how long tasks run: a live worker renews a lease on every entry it holds
    /// (queued in the pool, running, or waiting for a retry) every `claim_after / 3`, so its
    /// entries never look idle. Only a worker that cannot reach Redis for about
    /// `claim_after` (dead, frozen, partitioned) loses its entries — and then its late
    /// results are not written (see `StreamStats::lost_lease`). A renewal can be late by one
    /// Redis call (`response_timeout`, plus `block` for a read): keep `claim_after` several
    /// times that.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    /// use std::time::Duration;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-claim-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-2")
    ///     .claim_after(Duration::from_secs(60))
    ///     .drain(true)
    ///     .connect()?;
    /// let id = Producer::connect(&url, stream)?.push(b"job")?;
    /// // machine-1 took the entry, then died: two minutes without a word from it.
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// redis::cmd("XREADGROUP").arg("GROUP").arg("workers").arg("machine-1")
    ///     .arg("STREAMS").arg(stream).arg(">").exec(&mut redis)?;
    /// redis::cmd("XCLAIM").arg(stream).arg("workers").arg("machine-1").arg(0).arg(&id)
    ///     .arg("IDLE").arg(120_000).arg("JUSTID").exec(&mut redis)?;
    ///
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload)
    /// })?;
    /// let stats = worker.run(&pool)?;
    /// assert_eq!((stats.read, stats.claimed, stats.acked), (0, 1, 1));
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle.max(Duration::from_millis(3));
        self
    }

    /// Sets how often to look for entries to claim (`XAUTOCLAIM`). Default: `claim_after / 2`.
    /// An entry is claimable once idle for `claim_after`, so a dead consumer's entries are
    /// taken over within about `claim_after + claim_every`. Zero looks on every pass of the loop; a
    /// [`drain`](StreamWorkerBuilder::drain) run also looks whenever it holds nothing.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("claim_every: None")); // claim_after / 2
    /// let builder = builder.claim_every(Duration::from_secs(5));
    /// assert!(format!("{builder:?}").contains("claim_every: Some(5s)"));
    /// ```
    pub fn claim_every(mut self, every: Duration) -> Self {
        self.claim_every = Some(every);
        self
    }

    /// An entry runs at most `n` times: after its `n`-th failed delivery, or when claimed
    /// with more than `n` deliveries (its consumers kept dying), it goes to the dead-letter
    /// stream. Default: 5; 0 counts as 1 (no retries). A [permanent](super::Failure::permanent)
    /// failure is dead-lettered at once, whatever `n`.
    ///
    /// ```
    /// use redis::streams::StreamRangeReply;
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    /// use std::time::Duration;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-max-deliveries-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .max_deliveries(2)
    ///     .retry_backoff(Duration::from_millis(1), Duration::from_millis(1))
    ///     .drain(true)
    ///     .connect()?;
    /// Producer::connect(&url, stream)?.push(b"https://example.com/")?;
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Err(Failure::retry(format!("HTTP 503 on delivery {}", entry.deliveries)))
    /// })?;
    /// let stats = worker.run(&pool)?;
    /// assert_eq!((stats.retried, stats.dead_lettered), (1, 1));
    ///
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let dead: StreamRangeReply = redis::cmd("XRANGE").arg(format!("{stream}:dead"))
    ///     .arg("-").arg("+").query(&mut redis)?;
    /// assert_eq!(dead.ids[0].get::<String>("error").as_deref(), Some("HTTP 503 on delivery 2"));
    /// assert_eq!(dead.ids[0].get::<u64>("deliveries"), Some(2));
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Waits `min(cap, base × 2^(n-1))`, less up to half at random, before delivery `n + 1`
    /// of a failed entry. The worker keeps the entry (and its lease) meanwhile. Default:
    /// 1 s, capped at 5 min. A `cap` below `base` is raised to `base`.
    ///
    /// During a [`stop`](super::StreamWorkerHandle::stop) an entry waiting out its backoff is
    /// handed back to the group instead, for any consumer to retry.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("retry: Backoff { first: 1s, cap: 300s"));
    /// let (base, cap) = (Duration::from_millis(500), Duration::from_secs(60));
    /// let gentle = builder.clone().retry_backoff(base, cap);
    /// assert!(format!("{gentle:?}").contains("retry: Backoff { first: 500ms, cap: 60s"));
    /// let flat = builder.retry_backoff(Duration::from_secs(2), Duration::ZERO);
    /// assert!(format!("{flat:?}").contains("retry: Backoff { first: 2s, cap: 2s"));
    /// ```
    pub fn retry_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.retry = Backoff {
            first: base,
            cap: cap.max(base),
            jitter: true,
        };
        self
    }

    /// The dead-letter stream. Each dead letter holds `entry` (the id), `error` (why),
    /// `deliveries` and `consumer`, followed by every field of the entry as it was.
    /// Default: `{stream}:dead`. Nothing reads it: inspect it, and re-add what deserves
    /// another try with a [`Producer`](super::Producer).
    ///
    /// ```
    /// use redis::streams::StreamRangeReply;
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-dead-letter-{}", std::process::id());
    /// let rejected = &format!("{stream}:rejected");
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .dead_letter_stream(rejected)
    ///     .drain(true)
    ///     .connect()?;
    /// let id = Producer::connect(&url, stream)?.push(b"ftp://example.com/")?;
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Err(Failure::permanent(format!("not a URL: {}", entry.payload_str()?)))
    /// })?;
    /// assert_eq!(worker.run(&pool)?.dead_lettered, 1);
    ///
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let dead: StreamRangeReply =
    ///     redis::cmd("XRANGE").arg(rejected).arg("-").arg("+").query(&mut redis)?;
    /// let letter = &dead.ids[0];
    /// assert_eq!(letter.get::<String>("entry"), Some(id));
    /// assert_eq!(letter.get::<String>("error").as_deref(), Some("not a URL: ftp://example.com/"));
    /// assert_eq!(letter.get::<String>("consumer").as_deref(), Some("machine-1"));
    /// assert_eq!(letter.get::<String>("payload").as_deref(), Some("ftp://example.com/"));
    /// assert_eq!(redis::cmd("EXISTS").arg(format!("{stream}:dead")).query::<u64>(&mut redis)?, 0);
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).arg(rejected)
    /// #     .exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter = Some(stream.into());
        self
    }

    /// Writes each output to this stream (fields `entry`, `output`, `consumer`) in the same
    /// atomic step that acknowledges the entry. Default: none (outputs are dropped; the
    /// entry is still acknowledged). An output is written at most once per entry, even when
    /// two consumers ran it; an empty output is written too.
    ///
    /// ```
    /// use redis::streams::StreamRangeReply;
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-results-{}", std::process::id());
    /// let results = &format!("{stream}:results");
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .result_stream(results)
    ///     .drain(true)
    ///     .connect()?;
    /// let id = Producer::connect(&url, stream)?.push(b"https://example.com/")?;
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload_str()?.len().to_string().into_bytes())
    /// })?;
    /// assert_eq!(worker.run(&pool)?.acked, 1);
    ///
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let written: StreamRangeReply =
    ///     redis::cmd("XRANGE").arg(results).arg("-").arg("+").query(&mut redis)?;
    /// assert_eq!(written.ids.len(), 1);
    /// assert_eq!(written.ids[0].get::<String>("entry"), Some(id));
    /// assert_eq!(written.ids[0].get::<String>("output").as_deref(), Some("20"));
    /// assert_eq!(written.ids[0].get::<String>("consumer").as_deref(), Some("machine-1"));
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).arg(results)
    /// #     .exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn result_stream(mut self, stream: impl Into<String>) -> Self {
        self.result_stream = Some(stream.into());
        self
    }

    /// Trims the result stream to about `n` entries (`MAXLEN ~ n`: Redis trims whole nodes,
    /// so it may hold up to one node — 100 entries by default — more). Default: no limit;
    /// 0 means no limit too. Trimming drops the oldest results: read them before.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("results_max_len: 0")); // no limit
    /// let builder = builder.result_stream("jobs:results").result_stream_max_len(100_000);
    /// assert!(format!("{builder:?}").contains("results_max_len: 100000"));
    /// ```
    pub fn result_stream_max_len(mut self, n: u64) -> Self {
        self.results_max_len = n;
        self
    }

    /// Trims the dead-letter stream to about `n` entries (`MAXLEN ~ n`, as
    /// [`result_stream_max_len`](StreamWorkerBuilder::result_stream_max_len)), dropping the
    /// oldest dead letters. Default: no limit; 0 means no limit too.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("dead_max_len: 0")); // no limit
    /// let builder = builder.dead_letter_max_len(10_000);
    /// assert!(format!("{builder:?}").contains("dead_max_len: 10000"));
    /// ```
    pub fn dead_letter_max_len(mut self, n: u64) -> Self {
        self.dead_max_len = n;
        self
    }

    /// Deletes each job entry from the stream when it is acknowledged or dead-lettered
    /// (`XDEL`), so the stream holds only work not yet done. Default: `true`. Turn it off
    /// when other consumer groups read the same stream; the stream then grows until trimmed
    /// by other means.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-keep-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .delete_acked(false) // an "audit" group reads this stream too
    ///     .drain(true)
    ///     .connect()?;
    /// Producer::connect(&url, stream)?.push(b"job")?;
    /// let pool = AsyncPool::new(1, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload)
    /// })?;
    /// assert_eq!(worker.run(&pool)?.acked, 1);
    /// assert_eq!(worker.backlog()?.pending, 0); // acknowledged ...
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// assert_eq!(redis::cmd("XLEN").arg(stream).query::<u64>(&mut redis)?, 1); // ... and kept
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete_acked(mut self, delete: bool) -> Self {
        self.delete_acked = delete;
        self
    }

    /// After [`stop`](super::StreamWorkerHandle::stop), waits at most this long for running
    /// entries; those still running then are handed back (their results, when they come,
    /// are dropped). Entries queued in the pool and not started are handed back at once
    /// either way. Default: wait for every running entry.
    ///
    /// The pool still runs the abandoned tasks: a pool dropped after `run` waits for them
    /// (see [`AsyncPool::shutdown_timeout`](crate::AsyncPool::shutdown_timeout)). A zero
    /// timeout hands back every entry still running as soon as the stop is seen.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    /// use std::sync::{Arc, Barrier};
    /// use std::time::Duration;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-stop-timeout-{}", std::process::id());
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .stop_timeout(Duration::ZERO)
    ///     .connect()?;
    /// Producer::connect(&url, stream)?.push(b"slow job")?;
    /// let (handle, gate) = (worker.handle(), Arc::new(Barrier::new(2)));
    /// let task_gate = gate.clone();
    /// let pool = AsyncPool::new(1, move |_: Entry| -> Result<Vec<u8>, Failure> {
    ///     handle.stop(); // as if Ctrl-C came while this entry runs ...
    ///     task_gate.wait(); // ... and it runs on
    ///     Ok(Vec::new())
    /// })?;
    /// let stats = worker.run(&pool)?; // returns without waiting for the task
    /// assert_eq!((stats.acked, stats.handed_back), (0, 1));
    /// assert_eq!(worker.backlog()?.pending, 1); // for the next consumer's claim
    /// gate.wait(); // the task ends; its result is dropped
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = Some(timeout);
        self
    }

    /// Sets how long connecting may take, for the first connection (a failure is
    /// [`connect`](StreamWorkerBuilder::connect)'s error) and for every reconnection (a
    /// failure is one more attempt). Default: 5 s; at least 1 ms.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("connect_timeout: 5s"));
    /// let builder = builder.connect_timeout(Duration::from_millis(500));
    /// assert!(format!("{builder:?}").contains("connect_timeout: 500ms"));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.link.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets how long any reply may take (beyond a read's `block`) before the connection is
    /// considered dead and replaced. Default: 5 s; at least 1 ms. Too short, and a slow
    /// but healthy Redis costs reconnections; a lease renewal can be late by this much (see
    /// [`claim_after`](StreamWorkerBuilder::claim_after)).
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("response_timeout: 5s"));
    /// let builder = builder.response_timeout(Duration::from_secs(2));
    /// assert!(format!("{builder:?}").contains("response_timeout: 2s"));
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.link.response_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Reconnects after `min(cap, base × 2^(n-1))`, less up to half at random, after `n`
    /// failed attempts. Default: 100 ms, capped at 5 s. A `cap` below `base` is raised to
    /// `base`.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// let settings = format!("{builder:?}");
    /// assert!(settings.contains("reconnect: Backoff { first: 100ms, cap: 5s"));
    /// let patient = builder.reconnect_backoff(Duration::from_secs(1), Duration::from_secs(30));
    /// assert!(format!("{patient:?}").contains("reconnect: Backoff { first: 1s, cap: 30s"));
    /// ```
    pub fn reconnect_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.link.reconnect = Backoff {
            first: base,
            cap: cap.max(base),
            jitter: true,
        };
        self
    }

    /// Gives up when Redis stays unreachable this long: `run` returns
    /// [`StreamError::Disconnected`](super::StreamError::Disconnected). Default: retries for ever. Entries held then stay
    /// pending, for other consumers to claim after `claim_after`.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("reconnect_limit: None")); // for ever
    /// let builder = builder.reconnect_limit(Duration::from_secs(300));
    /// assert!(format!("{builder:?}").contains("reconnect_limit: Some(300s)"));
    /// ```
    pub fn reconnect_limit(mut self, limit: Duration) -> Self {
        self.link.reconnect_limit = Some(limit);
        self
    }

    /// Removes other consumers of the group that have nothing pending and have not been
    /// seen for this long (`XGROUP DELCONSUMER`), so names of gone processes do not pile up.
    /// `None` keeps them. Default: 1 hour. A consumer with entries pending is never removed,
    /// nor this worker's own consumer.
    ///
    /// ```
    /// use slowpool::redis::StreamWorker;
    /// use std::time::Duration;
    ///
    /// let builder = StreamWorker::builder("redis://127.0.0.1/", "jobs", "workers", "machine-1");
    /// assert!(format!("{builder:?}").contains("forget_consumers_after: Some(3600s)"));
    /// let day = Some(Duration::from_secs(24 * 3600));
    /// let builder = builder.forget_consumers_after(day);
    /// assert!(format!("{builder:?}").contains("forget_consumers_after: Some(86400s)"));
    /// let keep = builder.forget_consumers_after(None);
    /// assert!(format!("{keep:?}").contains("forget_consumers_after: None"));
    /// ```
    pub fn forget_consumers_after(mut self, idle: Option<Duration>) -> Self {
        self.forget_consumers_after = idle;
        self
    }

    /// Makes `run` return once there is nothing new to read, nothing to claim and nothing
    /// held. Entries pending with other consumers are not waited for: see
    /// [`StreamWorker::backlog`](super::StreamWorker::backlog). Default: run until stopped.
    ///
    /// "Nothing new" is one read that found nothing after blocking for
    /// [`block`](StreamWorkerBuilder::block); a stop still ends the run earlier.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
    /// use slowpool::AsyncPool;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-drain-{}", std::process::id());
    /// Producer::connect(&url, stream)?.push_batch(["a", "b", "c"])?;
    /// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
    ///     .drain(true)
    ///     .connect()?;
    /// let pool = AsyncPool::new(2, |entry: Entry| -> Result<Vec<u8>, Failure> {
    ///     Ok(entry.payload)
    /// })?;
    /// let stats = worker.run(&pool)?; // returns once the three are settled
    /// assert_eq!((stats.read, stats.acked, stats.in_flight), (3, 3, 0));
    /// assert!(worker.backlog()?.is_empty());
    /// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drain(mut self, drain: bool) -> Self {
        self.drain = drain;
        self
    }
}
