//! Errors: why an add was refused, why a pool could not be built, how a task failed, and the
//! flat form of a failure for callbacks that return `Result` ([`Failed`], [`Flat`]).
//!
//! Every error that refuses an input hands that input back (`AddError::into_inner`), so a
//! rejected add never loses the caller's data. `Debug` is written by hand so that the input type
//! never needs to implement `Debug` itself.

use std::error::Error;
use std::fmt;
use std::io;

/// An input the pool did not accept, handed back to the caller.
///
/// Returned by the adding methods (`add_task`, `try_add_task`, `add_task_to`, `spawn`, ...). The
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

    /// Maps the input inside, keeping the reason (to put back what was taken apart to add it).
    ///
    /// ```
    /// use slowpool::AddError;
    /// let refused = AddError::ShutDown("page").map(|url| ("host", url));
    /// assert!(refused.is_shut_down());
    /// assert_eq!(refused.into_inner(), ("host", "page"));
    /// ```
    pub fn map<J>(self, f: impl FnOnce(I) -> J) -> AddError<J> {
        match self {
            AddError::Full(input) => AddError::Full(f(input)),
            AddError::ShutDown(input) => AddError::ShutDown(f(input)),
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

/// Why a task produced no output.
///
/// Every accepted task ends in exactly one of `Ok(output)`, [`TaskError::Panicked`],
/// [`TaskError::Cancelled`] or [`TaskError::TimedOut`]. [`TaskError::AlreadyReceived`] is not an
/// ending: it tells a caller who asks a second time that the one result was already taken.
///
/// # Examples
///
/// ```
/// use slowpool::{AsyncPool, TaskError};
/// use crossbeam_channel::bounded;
/// use std::time::Duration;
///
/// let (release, gate) = bounded::<()>(0);
/// let pool = AsyncPool::new(2, move |n: u32| match n {
///     0 => panic!("zero"),
///     1 => { let _ = gate.recv(); 1 } // stuck until released
///     n => n,
/// })?;
/// assert_eq!(pool.add_task(0)?.recv(), Err(TaskError::Panicked("zero".into())));
/// let stuck = pool.add_task_with_timeout(1, Duration::from_millis(20))?;
/// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
/// drop(release); // the abandoned thread returns and exits
/// let task = pool.add_task(2)?;
/// assert_eq!(task.recv(), Ok(2));
/// assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskError {
    /// The callback or closure panicked. The message is the panic's payload when it is a `&str`
    /// or a `String`, and `"non-string panic payload"` otherwise. The worker survives.
    Panicked(String),
    /// The task was cancelled before it started (by `cancel`, `cancel_all`, `shutdown_now` or
    /// `shutdown_timeout`). It never ran.
    Cancelled,
    /// The task was still running at its deadline (`task_timeout`, `add_task_with_timeout`, or
    /// the end of `shutdown_timeout`). Its thread was left to finish on its own; whatever it
    /// returns later is dropped.
    TimedOut,
    /// The result of this task was already received through this handle or its receiver.
    AlreadyReceived,
}

/// The placeholder message of a panic whose payload is neither `&str` nor `String`.
pub(crate) const NON_STRING_PANIC: &str = "non-string panic payload";

impl TaskError {
    /// Builds `Panicked` from a payload caught by `catch_unwind`.
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> TaskError {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            NON_STRING_PANIC.to_string()
        };
        TaskError::Panicked(message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked(message) => write!(f, "task panicked: {message}"),
            TaskError::Cancelled => f.write_str("task was cancelled before it started"),
            TaskError::TimedOut => f.write_str("task timed out"),
            TaskError::AlreadyReceived => f.write_str("task result was already received"),
        }
    }
}

impl Error for TaskError {}

/// Why a task whose callback returns `Result<T, E>` produced no `T`: the task failed
/// ([`TaskError`]: it panicked, was cancelled, timed out, or its result was already received),
/// or the callback returned its own error `E`.
///
/// The flat form of `Result<Result<T, E>, TaskError>`: [`Task::recv_flat`](crate::Task::recv_flat)
/// returns it, and [`Flat::flat`] makes it from any result of such a task — awaited, from a
/// mailbox or from `map_*`. `Display` and [`Error::source`] are those of the error inside, so
/// `Failed<E>` reads (and `?`-converts into `Box<dyn Error>`) like the error it holds.
///
/// # Examples
///
/// ```
/// use slowpool::{AsyncPool, Failed, Task, TaskError};
/// use std::num::ParseIntError;
///
/// fn parsed(task: Task<Result<u32, ParseIntError>>) -> Result<u32, TaskError> {
///     match task.recv_flat() {
///         Ok(n) => Ok(n),
///         Err(Failed::Callback(_)) => Ok(0), // unparsable: counts as zero
///         Err(Failed::Task(error)) => Err(error), // panicked, cancelled, timed out
///     }
/// }
///
/// let pool = AsyncPool::new(2, |s: &'static str| s.parse::<u32>())?;
/// assert_eq!(parsed(pool.add_task("7")?), Ok(7));
/// assert_eq!(parsed(pool.add_task("seven")?), Ok(0));
///
/// let failed: Failed<ParseIntError> = TaskError::TimedOut.into();
/// assert!(failed.is_task() && !failed.is_callback());
/// assert_eq!(failed.to_string(), "task timed out");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Failed<E> {
    /// The task produced no result: see [`TaskError`].
    Task(TaskError),
    /// The callback ran and returned this error.
    Callback(E),
}

impl<E> Failed<E> {
    /// Returns `true` if the task failed (the callback returned nothing).
    ///
    /// ```
    /// use slowpool::{Failed, TaskError};
    ///
    /// assert!(Failed::<()>::Task(TaskError::Cancelled).is_task());
    /// assert!(!Failed::Callback(()).is_task());
    /// ```
    pub fn is_task(&self) -> bool {
        matches!(self, Failed::Task(_))
    }

    /// Returns `true` if the callback returned an error.
    ///
    /// ```
    /// use slowpool::{Failed, TaskError};
    ///
    /// assert!(Failed::Callback("not found").is_callback());
    /// assert!(!Failed::<&str>::Task(TaskError::TimedOut).is_callback());
    /// ```
    pub fn is_callback(&self) -> bool {
        matches!(self, Failed::Callback(_))
    }

    /// Returns the task's error, `None` if the callback's error is inside.
    ///
    /// ```
    /// use slowpool::{Failed, TaskError};
    ///
    /// assert_eq!(Failed::<()>::Task(TaskError::TimedOut).task_error(), Some(&TaskError::TimedOut));
    /// assert_eq!(Failed::Callback(()).task_error(), None);
    /// ```
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            Failed::Task(error) => Some(error),
            Failed::Callback(_) => None,
        }
    }

    /// Returns the callback's error, `None` if the task failed.
    ///
    /// ```
    /// use slowpool::{Failed, TaskError};
    ///
    /// assert_eq!(Failed::Callback("not found").into_callback(), Some("not found"));
    /// assert_eq!(Failed::<&str>::Task(TaskError::Cancelled).into_callback(), None);
    /// ```
    pub fn into_callback(self) -> Option<E> {
        match self {
            Failed::Task(_) => None,
            Failed::Callback(error) => Some(error),
        }
    }
}

impl<E> From<TaskError> for Failed<E> {
    fn from(error: TaskError) -> Failed<E> {
        Failed::Task(error)
    }
}

impl<E: fmt::Display> fmt::Display for Failed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Task(error) => fmt::Display::fmt(error, f),
            Failed::Callback(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl<E: Error + 'static> Error for Failed<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        // Transparent: `Display` already shows the error inside, so its source is ours.
        match self {
            Failed::Task(error) => error.source(),
            Failed::Callback(error) => error.source(),
        }
    }
}

/// The last failure of a task added with a retry policy, with its input handed back: report it,
/// or add it again later, without keeping a map of inputs by task id. Part of
/// [`Retried`](crate::Retried).
///
/// `input` is `None` only for a task cancelled before it ran again: one by one (`cancel`,
/// [`RetryTask::cancel`](crate::RetryTask::cancel)) while queued or waiting on its key (waiting
/// to retry, it comes back), or by `cancel_all` / `shutdown_now`, which return the input
/// instead.
///
/// ```
/// use slowpool::{AsyncPool, Failed, Retry, TaskError};
///
/// let pool = AsyncPool::new(1, |url: String| -> Result<(), String> { panic!("bad {url}") })?;
/// let done = pool.task("http://a.example/".to_string()).keep_input().add()?.recv();
/// let failure = done.result.unwrap_err();
/// assert_eq!(failure.input.as_deref(), Some("http://a.example/")); // the input, back
/// assert!(matches!(failure.error, Failed::Task(TaskError::Panicked(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Failure<I, E> {
    /// The task's input.
    pub input: Option<I>,
    /// Why the last attempt failed.
    pub error: Failed<E>,
}

impl<I, E: fmt::Display> fmt::Display for Failure<I, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<I: fmt::Debug, E: Error + 'static> Error for Failure<I, E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

/// Flattens the result of a task whose callback returns `Result<T, E>`: from
/// `Result<Result<T, E>, TaskError>` to `Result<T, Failed<E>>`, and a tagged result (a mailbox
/// message `(TaskId, _)`, a `map_unordered` item `(usize, _)`) to the same tag with the flat
/// result.
///
/// # Examples
///
/// A mailbox:
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, TaskError, TaskId};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |n: i32| if n < 0 { Err(format!("{n} is negative")) } else { Ok(n * 2) })?;
/// let (mailbox, results) = unbounded();
/// let ok = pool.add_task_to(21, &mailbox)?;
/// let bad = pool.add_task_to(-1, &mailbox)?;
/// let mut seen = Vec::new();
/// for _ in 0..2 {
///     let (id, result): (TaskId, Result<i32, Failed<String>>) = results.recv()?.flat();
///     seen.push((id, result));
/// }
/// seen.sort_by_key(|(id, _)| *id);
/// assert_eq!(seen, [(ok, Ok(42)), (bad, Err(Failed::Callback("-1 is negative".into())))]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A stream, and a plain result:
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, TaskError};
///
/// let pool = AsyncPool::new(2, |s: &'static str| s.parse::<u8>().map_err(|_| s))?;
/// let parsed: Vec<_> = pool.map_ordered(["1", "x", "3"]).map(Flat::flat).collect();
/// assert_eq!(parsed, [Ok(1), Err(Failed::Callback("x")), Ok(3)]);
///
/// let failed: Result<Result<u8, &str>, TaskError> = Err(TaskError::Cancelled);
/// assert_eq!(failed.flat(), Err(Failed::Task(TaskError::Cancelled)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Flat {
    /// The flat form.
    type Output;

    /// Returns the flat form of `self`.
    fn flat(self) -> Self::Output;
}

impl<T, E> Flat for Result<Result<T, E>, TaskError> {
    type Output = Result<T, Failed<E>>;

    fn flat(self) -> Result<T, Failed<E>> {
        match self {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failed::Callback(error)),
            Err(error) => Err(Failed::Task(error)),
        }
    }
}

impl<K, T, E> Flat for (K, Result<Result<T, E>, TaskError>) {
    type Output = (K, Result<T, Failed<E>>);

    fn flat(self) -> (K, Result<T, Failed<E>>) {
        (self.0, self.1.flat())
    }
}

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
    /// `max_workers` was above [`MAX_WORKERS`](crate::MAX_WORKERS).
    TooManyWorkers {
        /// The requested maximum.
        requested: usize,
    },
    /// The operating system refused to start a worker thread. The threads already started were
    /// stopped and joined.
    Spawn(io::Error),
    /// The operating system's limits leave room for fewer threads than the pool must start
    /// (see [`MAX_WORKERS`](crate::MAX_WORKERS)). Refused before any thread starts: past some of
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
                crate::MAX_WORKERS
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
