//! What a [`StreamWorker`](super::StreamWorker)(super::StreamWorker) reports: [`StreamStats`] (its own counts) and
//! [`Backlog`] (the group's, as Redis sees it).

/// What a [`StreamWorker`](super::StreamWorker) has done: counts since it connected, as
/// [`run`](super::StreamWorker::run) returns them and [`StreamWorkerHandle::stats`](super::StreamWorkerHandle::stats) reads them.
///
/// Counts of entries and counts of deliveries differ: an entry that failed twice and then
/// succeeded is one `read`, two `retried` and one `acked`. `dead_lettered` also counts
/// entries a claim found delivered too often and buried without running them: those are not
/// in `claimed`.
///
/// ```
/// use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
/// use slowpool::AsyncPool;
/// use std::time::Duration;
///
/// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
/// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
/// # let stream = &format!("doc-stats-{}", std::process::id());
/// let mut worker = StreamWorker::builder(&url, stream, "workers", "machine-1")
///     .retry_backoff(Duration::from_millis(1), Duration::from_millis(1))
///     .drain(true)
///     .connect()?;
/// Producer::connect(&url, stream)?.push_batch(["steady", "flaky"])?;
/// let pool = AsyncPool::new(2, |entry: Entry| -> Result<Vec<u8>, Failure> {
///     if entry.payload == b"flaky" && entry.deliveries < 3 {
///         return Err(Failure::retry("HTTP 503"));
///     }
///     Ok(entry.payload)
/// })?;
/// let stats = worker.run(&pool)?;
/// assert_eq!((stats.read, stats.retried, stats.acked), (2, 2, 2));
/// assert_eq!((stats.dead_lettered, stats.in_flight), (0, 0));
/// # let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
/// # redis::cmd("DEL").arg(stream).arg(format!("{stream}:dead")).exec(&mut redis)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Entries read as new (`XREADGROUP >`).
    pub read: u64,
    /// Entries acknowledged after their task returned `Ok` (and their output was written).
    pub acked: u64,
    /// Failed deliveries (callback `Err`, panic, timeout) that will be retried after a backoff.
    pub retried: u64,
    /// Entries claimed from other consumers' pending lists (`XAUTOCLAIM`), to run here.
    pub claimed: u64,
    /// Entries moved to the dead-letter stream: delivered too often, failed permanently, or
    /// malformed.
    pub dead_lettered: u64,
    /// Entries this worker held that another consumer took over (its lease had lapsed: a
    /// frozen link, a paused server): their results were not written.
    pub lost_lease: u64,
    /// Entries whose settle was sent, lost its reply with the connection, and was found
    /// already acknowledged after reconnecting: by that lost settle, or by another consumer
    /// that took the entry over (Redis cannot tell which). Nothing was written twice.
    pub unconfirmed: u64,
    /// Entries handed back unrun (or unfinished at the stop deadline) for others to claim
    /// at once.
    pub handed_back: u64,
    /// Entries still held when `run` returned because Redis was unreachable; they stay
    /// pending and are claimed by others after `claim_after`.
    pub unsettled: u64,
    /// Times the connection was re-established.
    pub reconnects: u64,
    /// Stale consumers removed from the group (`XGROUP DELCONSUMER`).
    pub consumers_removed: u64,
    /// Entries held now: in the pool, waiting for a retry, or finished and not yet settled.
    pub in_flight: usize,
}

/// A consumer group's backlog, as [`StreamWorker::backlog`](super::StreamWorker::backlog) reads it.
///
/// Non-exhaustive: start from [`Backlog::default`] (empty) to build one.
///
/// ```
/// use slowpool::redis::Backlog;
///
/// let mut backlog = Backlog::default();
/// assert!(backlog.is_empty());
/// backlog.pending = 3;
/// backlog.consumers.push(("machine-1".to_string(), 3, 120_000)); // silent for 2 minutes
/// let stuck: Vec<_> = backlog.consumers.iter().filter(|c| c.1 > 0 && c.2 > 60_000).collect();
/// assert_eq!(stuck.len(), 1);
/// assert!(!backlog.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// Entries delivered to some consumer and not acknowledged.
    pub pending: u64,
    /// Entries never delivered to the group (`lag`), when Redis can tell.
    pub undelivered: Option<u64>,
    /// Each consumer: name, entries pending with it, milliseconds since it was last seen.
    pub consumers: Vec<(String, u64, u64)>,
}

impl Backlog {
    /// Returns `true` when nothing is pending and nothing is left to deliver. An unknown
    /// `undelivered` (Redis could not tell) counts as nothing left.
    ///
    /// ```
    /// use slowpool::redis::Backlog;
    ///
    /// let mut backlog = Backlog::default();
    /// assert!(backlog.is_empty());
    /// backlog.undelivered = Some(2);
    /// assert!(!backlog.is_empty());
    /// backlog.undelivered = None; // unknown
    /// assert!(backlog.is_empty());
    /// backlog.pending = 1;
    /// assert!(!backlog.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.pending == 0 && self.undelivered.unwrap_or(0) == 0
    }
}
