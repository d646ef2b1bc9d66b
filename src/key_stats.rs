//! What one key is doing: [`KeyStats`], read from the pool's key table by
//! [`Pool::key_stats`](crate::Pool::key_stats) and [`Pool::busiest_keys`](crate::Pool::busiest_keys).

use std::time::{Duration, Instant};

use crate::engine::KeyView;

/// A snapshot of one key of a pool with per-key limits: its tasks, its starts, its interval and
/// its pause — read from the table the limits act on, under its lock, at one instant.
///
/// A key is known while it has tasks in the pool, or its interval since the last start has not
/// passed, or it is paused. Once it is idle the pool forgets it (a crawl over millions of hosts
/// keeps no entry per host it is done with): `started` and `last_start` count from when it was
/// last remembered. Tasks of the key waiting to retry are counted in `Stats::waiting_retry`,
/// not here: they are on the pool's timer, and come back through their key.
///
/// ```
/// use slowpool::AsyncPool;
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder()
///     .max_per_key(1)
///     .min_interval_per_key(Duration::from_secs(60))
///     .build(|n: u32| n)?;
/// pool.task(1).key("a.example").add()?.recv()?;
/// let waiting = pool.task(2).key("a.example").add()?; // waits for the interval
/// let stats = pool.key_stats(&"a.example").expect("a known key");
/// assert_eq!((stats.active, stats.waiting, stats.started), (0, 1, 1));
/// assert_eq!(stats.interval, Some(Duration::from_secs(60)));
/// assert!(stats.last_start.is_some() && stats.paused_until.is_none());
/// assert_eq!(pool.key_stats(&"b.example"), None);
/// pool.shutdown_now(); // instead of waiting a minute
/// # drop(waiting);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// The key's 64-bit hash, as the pool files its tasks: what tells apart the keys that
    /// [`Pool::busiest_keys`](crate::Pool::busiest_keys) returns (the pool keeps hashes, not
    /// keys). `key_stats(&key).hash` for a key you know is the same number.
    pub hash: u64,
    /// Tasks of the key in the pool's queue or running: what `max_per_key` bounds.
    pub active: usize,
    /// Tasks of the key held back by its limit, its interval or its pause.
    pub waiting: usize,
    /// Callbacks of the key called since the pool last remembered it.
    pub started: u64,
    /// When the key's last callback was called (its interval counts from there).
    pub last_start: Option<Instant>,
    /// The interval between starts of the key (`min_interval_per_key`).
    pub interval: Option<Duration>,
    /// When the key's pause ends, while it is paused.
    pub paused_until: Option<Instant>,
}

impl From<KeyView> for KeyStats {
    fn from(view: KeyView) -> KeyStats {
        KeyStats {
            hash: view.hash,
            active: view.active,
            waiting: view.waiting,
            started: view.started,
            last_start: view.last_start,
            interval: view.interval,
            paused_until: view.paused_until,
        }
    }
}
