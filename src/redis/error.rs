//! What can go wrong talking to Redis.

use std::fmt;
use std::time::Duration;

/// An error from the `redis` module: a refused command, a connection given up on, or a full
/// stream.
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
    /// Returns `true` for [`StreamError::Full`]: retrying later may succeed.
    pub fn is_full(&self) -> bool {
        matches!(self, StreamError::Full { .. })
    }

    /// Returns `true` for [`StreamError::Disconnected`].
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
