//! What can go wrong talking to Redis.

use std::fmt;
use std::time::Duration;

/// An error from the `redis` module: a refused command, a connection given up on, or a full
/// stream.
///
/// Non-exhaustive: match the variants you handle and keep a `_` arm, or ask
/// [`is_full`](StreamError::is_full) and [`is_disconnected`](StreamError::is_disconnected).
/// [`source`](std::error::Error::source) is the underlying [`redis::RedisError`] where there
/// is one.
///
/// ```
/// use slowpool::redis::{Producer, StreamError};
///
/// let full = StreamError::Full { len: 1000, capacity: 1000 };
/// assert_eq!(full.to_string(), "stream is full: 1000 entries, capacity 1000");
///
/// let refused = Producer::connect("http://127.0.0.1/", "jobs").unwrap_err(); // not redis://
/// assert!(matches!(refused, StreamError::Redis(_)));
/// assert!(refused.to_string().starts_with("redis: "));
/// assert!(std::error::Error::source(&refused).is_some());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamError {
    /// Redis refused a command, or a connection failed where nothing retries it (connecting
    /// for the first time, a [`Producer`](super::Producer) call).
    Redis(redis::RedisError),
    /// A [`StreamWorker`](super::StreamWorker) could not reach Redis for longer than its
    /// [`reconnect_limit`](super::StreamWorkerBuilder::reconnect_limit). Entries it held stay
    /// pending in Redis; other consumers claim them after `claim_after`.
    Disconnected {
        /// How long the worker tried.
        down_for: Duration,
        /// The last connection error.
        last: redis::RedisError,
    },
    /// The stream holds `capacity` entries or more: a [`Producer`](super::Producer) with a
    /// [`capacity`](super::Producer::capacity) refused to add.
    Full {
        /// The stream's length when the add was refused.
        len: u64,
        /// The producer's capacity.
        capacity: u64,
    },
}

impl StreamError {
    /// Returns `true` for [`StreamError::Full`]: retrying later may succeed (once workers
    /// have taken entries off the stream), unless the batch alone is larger than the
    /// capacity. `false` for every other error.
    ///
    /// ```
    /// use slowpool::redis::StreamError;
    ///
    /// assert!(StreamError::Full { len: 10, capacity: 10 }.is_full());
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// assert!(!StreamError::Redis(io.into()).is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, StreamError::Full { .. })
    }

    /// Returns `true` for [`StreamError::Disconnected`]: a worker gave up after its
    /// [`reconnect_limit`](super::StreamWorkerBuilder::reconnect_limit). A connection that
    /// fails outright (a first connection, a [`Producer`](super::Producer) call) is
    /// [`StreamError::Redis`], for which this returns `false`.
    ///
    /// ```
    /// use slowpool::redis::StreamError;
    /// use std::io::{Error, ErrorKind};
    /// use std::time::Duration;
    ///
    /// let last = || Error::from(ErrorKind::ConnectionRefused).into();
    /// let gave_up = StreamError::Disconnected { down_for: Duration::from_secs(30), last: last() };
    /// assert!(gave_up.is_disconnected());
    /// assert!(gave_up.to_string().starts_with("redis unreachable for 30.0 s, gave up: "));
    /// assert!(!StreamError::Redis(last()).is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, StreamError::Disconnected { .. })
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Redis(e) => write!(f, "redis: {e}"),
            StreamError::Disconnected { down_for, last } => write!(
                f,
                "redis unreachable for {:.1} s, gave up: {last}",
                down_for.as_secs_f64()
            ),
            StreamError::Full { len, capacity } => {
                write!(f, "stream is full: {len} entries, capacity {capacity}")
            }
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Redis(e) | StreamError::Disconnected { last: e, .. } => Some(e),
            StreamError::Full { .. } => None,
        }
    }
}

impl From<redis::RedisError> for StreamError {
    fn from(error: redis::RedisError) -> Self {
        StreamError::Redis(error)
    }
}
