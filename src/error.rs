//! Errors of the pool itself: why an add was refused ([`AddError`]) and why a pool could not be
//! built ([`BuildError`]). How a task failed is told by its ending (`done.rs`).
//!
//! Every error that refuses an input hands that input back (`AddError::into_inner`), so a
//! rejected add never loses the caller's data. `Debug` is written by hand so that the input type
//! never needs to implement `Debug` itself.

use std::error::Error;
use std::fmt;
use std::io;

/// The most workers a pool may have. A larger `max_workers` is refused with
/// [`BuildError::TooManyWorkers`] rather than left to exhaust the machine.
///
/// Below this bound, the operating system's own limits apply, and some of them abort the process
/// rather than fail a thread start (with `vm.max_map_count` used up, a new thread cannot set up
/// its signal stack's guard page). So before starting threads a pool reads `vm.max_map_count`
/// against the process's memory maps (four per thread), `kernel.threads-max` against the
/// system's threads and, for a user other than root, `RLIMIT_NPROC`, and refuses a build whose
/// initial threads would not fit with [`BuildError::ThreadLimit`], naming the limit. Threads
/// started later (an elastic pool growing, replacements of abandoned threads) take room from one
/// budget shared by every pool of the process, read again when it runs low; past it the pool
/// goes on with the threads it has.
///
/// ```
/// use slowpool::{BuildError, ThreadPool, MAX_WORKERS};
///
/// let refused = ThreadPool::builder().max_workers(MAX_WORKERS + 1).build();
/// assert!(matches!(refused, Err(BuildError::TooManyWorkers { requested }) if requested == MAX_WORKERS + 1));
/// ```
pub const MAX_WORKERS: usize = 1 << 16;

/// The longest pause of a key: a day. [`Pool::pause_key`](crate::Pool::pause_key) refuses a
/// longer one with [`PauseError::TooLong`]; a retry decision asking for longer (a server's
/// absurd `Retry-After`) pauses the key this long (see
/// [`Attempt::pause_key`](crate::Attempt::pause_key)).
///
/// ```
/// use slowpool::{AsyncPool, PauseError, MAX_PAUSE};
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder().max_per_key(1).build(|n: u32| n)?;
/// let too_long = MAX_PAUSE + Duration::from_secs(1);
/// assert_eq!(pool.pause_key(&"a", too_long), Err(PauseError::TooLong { asked: too_long }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Why [`Pool::pause_key`](crate::Pool::pause_key) paused nothing.
///
/// ```
/// use slowpool::{AsyncPool, PauseError};
/// use std::time::Duration;
///
/// let unkeyed = AsyncPool::new(1, |n: u32| n)?;
/// let refused = unkeyed.pause_key(&"a", Duration::from_secs(1));
/// assert_eq!(refused, Err(PauseError::NoKeys));
/// assert_eq!(refused.unwrap_err().to_string(), "the pool has no per-key limits: keys have no effect");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PauseError {
    /// The pool was built without `max_per_key` or `min_interval_per_key`: its keys have no
    /// effect, so there is nothing to pause.
    NoKeys,
    /// The pool is shut down (or shutting down).
    ShutDown,
    /// The pause asked for is longer than [`MAX_PAUSE`].
    TooLong {
        /// The pause asked for.
        asked: std::time::Duration,
    },
}

impl fmt::Display for PauseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseError::NoKeys => {
                f.write_str("the pool has no per-key limits: keys have no effect")
            }
            PauseError::ShutDown => f.write_str("pausing a key of a pool that is shut down"),
            PauseError::TooLong { asked } => {
                write!(
                    f,
                    "a pause of {asked:?} is longer than the longest, {MAX_PAUSE:?}"
                )
            }
        }
    }
}

impl Error for PauseError {}

/// An input the pool did not accept, handed back to the caller.
///
/// Returned by the adding methods (`add`, `try_add`, `add_to`, `add_task`, `spawn`, ...). The
/// input inside is exactly the one that was passed in: nothing was queued and nothing will run.
///
/// # Examples
///
/// ```
/// use slowpool::{AddError, AsyncPool};
///
/// let pool = AsyncPool::new(1, |n: u32| n + 1)?;
/// pool.shutdown();
/// match pool.add_task(41) {
///     Err(AddError::ShutDown(input)) => assert_eq!(input, 41),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok::<(), slowpool::BuildError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AddError<I> {
    /// The queue is at its capacity (`queue_capacity`) and the add was not allowed to wait.
    Full(I),
    /// The pool is shut down, or shutting down: it accepts no more work.
    ShutDown(I),
}

impl<I> AddError<I> {
    /// Returns the input that was not accepted.
    ///
    /// ```
    /// use slowpool::AddError;
    /// assert_eq!(AddError::Full("page").into_inner(), "page");
    /// ```
    pub fn into_inner(self) -> I {
        match self {
            AddError::Full(input) | AddError::ShutDown(input) => input,
        }
    }

    /// Returns `true` if the add failed because the queue was full.
    ///
    /// ```
    /// use slowpool::AddError;
    ///
    /// assert!(AddError::Full(1).is_full());
    /// assert!(!AddError::ShutDown(1).is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, AddError::Full(_))
    }

    /// Returns `true` if the add failed because the pool is shut down.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(1)?;
    /// pool.shutdown();
    /// assert!(pool.spawn(|| ()).unwrap_err().is_shut_down());
    /// # Ok::<(), slowpool::BuildError>(())
    /// ```
    pub fn is_shut_down(&self) -> bool {
        matches!(self, AddError::ShutDown(_))
    }
}

impl<I> fmt::Debug for AddError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Full(_) => f.write_str("Full(..)"),
            AddError::ShutDown(_) => f.write_str("ShutDown(..)"),
        }
    }
}

impl<I> fmt::Display for AddError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Full(_) => f.write_str("adding to a full queue"),
            AddError::ShutDown(_) => f.write_str("adding to a pool that is shut down"),
        }
    }
}

impl<I> Error for AddError<I> {}

/// Why a pool could not be built. No thread is left running when a build fails.
///
/// # Examples
///
/// ```
/// use slowpool::{AsyncPool, BuildError};
///
/// match AsyncPool::builder().min_workers(8).max_workers(4).build(|n: u32| n) {
///     Err(BuildError::MinAboveMax { min, max }) => assert_eq!((min, max), (8, 4)),
///     other => panic!("unexpected: {other:?}"),
/// }
/// let err = AsyncPool::new(0, |n: u32| n).unwrap_err();
/// assert_eq!(err.to_string(), "a pool needs at least one worker");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_workers` was 0: a pool needs at least one worker.
    ZeroWorkers,
    /// `min_workers` was greater than `max_workers`.
    MinAboveMax {
        /// The requested minimum.
        min: usize,
        /// The requested maximum.
        max: usize,
    },
    /// `max_workers` was above [`MAX_WORKERS`].
    TooManyWorkers {
        /// The requested maximum.
        requested: usize,
    },
    /// The operating system refused to start a worker thread. The threads already started were
    /// stopped and joined.
    Spawn(io::Error),
    /// The operating system's limits leave room for fewer threads than the pool must start
    /// (see [`MAX_WORKERS`](MAX_WORKERS)). Refused before any thread starts: past some of
    /// these limits a thread start aborts the process instead of failing.
    ThreadLimit {
        /// The limit: `"vm.max_map_count"`, `"kernel.threads-max"` or `"RLIMIT_NPROC"`.
        limit: &'static str,
        /// Threads the pool would start.
        requested: usize,
        /// Threads the limit leaves room for.
        available: usize,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroWorkers => f.write_str("a pool needs at least one worker"),
            BuildError::MinAboveMax { min, max } => {
                write!(f, "min_workers ({min}) is greater than max_workers ({max})")
            }
            BuildError::TooManyWorkers { requested } => write!(
                f,
                "max_workers ({requested}) is above the limit of {}",
                MAX_WORKERS
            ),
            BuildError::Spawn(_) => f.write_str("the operating system refused a worker thread"),
            BuildError::ThreadLimit {
                limit,
                requested,
                available,
            } => write!(
                f,
                "{requested} threads requested but {limit} leaves room for {available}"
            ),
        }
    }
}

impl Error for BuildError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BuildError::Spawn(err) => Some(err),
            _ => None,
        }
    }
}
