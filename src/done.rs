//! How a task ends, as its caller sees it: [`Done`] (the message every mailbox, task set and
//! stream delivers), [`TaskError`] (why a task produced nothing), and, for callbacks that
//! return `Result<T, E>`, the flat form [`Failed<E>`] made by [`Flat::flat`].
//!
//! The three are one family: a `Done` carries `Result<O, TaskError>`; for `O = Result<T, E>`,
//! `done.result.flat()` is `Result<T, Failed<E>>`; a `Failed<E>` is either the `TaskError` or the
//! callback's `E`, and a `TaskError` converts into a `Failed<E>` with `?` or `into()`. The
//! input a failed task was given comes back in `done.tag` when it was kept (`.tag(..)` on an
//! add, `.keep_input()` on a stream).

use std::error::Error;
use std::fmt;

use crossbeam_channel::Sender;

use crate::id::TaskId;

/// A task's ending, as a mailbox, a [`TaskSet`](crate::TaskSet) or a
/// [`Stream`](crate::Stream) delivers it: the Elixir original's `{ref, value}`, with the
/// attempts it took and the tag the caller gave it.
///
/// - `id`: the task (what [`add_to`](crate::Submit::add_to) returned).
/// - `attempts`: callback runs it took: 1 for a task that ran once, more after retries, 0 for
///   a task cancelled before it ever started.
/// - `tag`: what the caller attached to the task ([`Submit::tag`](crate::Submit::tag), or the
///   input itself with [`Stream::keep_input`](crate::Stream::keep_input)), so that an event
///   loop knows *which* input ended without keeping a map of ids. `()` when untagged.
/// - `result`: the callback's value, or why there is none.
///
/// ```
/// use slowpool::{AsyncPool, Done, Mailbox, TaskError};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |n: u32| if n == 0 { panic!("zero") } else { 10 / n })?;
/// let (mailbox, results): (Mailbox<u32, &str>, _) = unbounded();
/// let id = pool.task(5).tag("five").add_to(&mailbox)?;
/// pool.task(0).tag("zero").add_to(&mailbox)?;
/// let mut seen: Vec<Done<u32, &str>> = results.iter().take(2).collect();
/// seen.sort_by_key(|done| done.tag);
/// assert_eq!((seen[0].id, seen[0].tag, seen[0].attempts), (id, "five", 1));
/// assert_eq!(seen[0].result, Ok(2));
/// assert_eq!(seen[1].result, Err(TaskError::Panicked("zero".into())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Done<O, Tag = ()> {
    /// The task.
    pub id: TaskId,
    /// Callback runs the task took (0 if it never started).
    pub attempts: u32,
    /// The caller's tag: `()` unless the task was tagged.
    pub tag: Tag,
    /// The callback's value, or why there is none.
    pub result: Result<O, TaskError>,
}

/// A mailbox: the sending side of a channel that receives [`Done`] messages, given to
/// [`add_to`](crate::Submit::add_to) and [`AsyncPool::add_task_to`](crate::AsyncPool::add_task_to).
/// `Tag` is `()` for untagged tasks.
///
/// A mailbox whose receiver is gone never blocks or panics a worker (the message is dropped).
/// A bounded one applies backpressure: the worker waits for room (until `shutdown_timeout`
/// runs out), and a message is never dropped while the receiver exists.
///
/// ```
/// use slowpool::{AsyncPool, Mailbox};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |s: String| s.len())?;
/// let (mailbox, results): (Mailbox<usize>, _) = unbounded();
/// let id = pool.add_task_to("four".into(), &mailbox)?;
/// let done = results.recv()?;
/// assert_eq!((done.id, done.result), (id, Ok(4)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Mailbox<O, Tag = ()> = Sender<Done<O, Tag>>;

/// Why a task produced no output.
///
/// Every accepted task ends in exactly one of `Ok(output)`, [`TaskError::Panicked`],
/// [`TaskError::Cancelled`] or [`TaskError::TimedOut`]. [`TaskError::AlreadyReceived`] is not an
/// ending: [`Task::recv`](crate::Task::recv) returns it to a caller who asks a second time.
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
/// let stuck = pool.task(1).timeout(Duration::from_millis(20)).add()?;
/// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
/// drop(release); // the abandoned thread returns and exits
/// let task = pool.add_task(2)?;
/// assert_eq!(task.recv(), Ok(2));
/// assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
/// assert_eq!(TaskError::TimedOut.to_string(), "task timed out");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskError {
    /// The callback or closure panicked. The message is the panic's payload when it is a `&str`
    /// or a `String`, and `"non-string panic payload"` otherwise. The worker survives.
    Panicked(String),
    /// The task was cancelled before it started, or while it waited to retry (by `cancel`,
    /// `cancel_all`, `shutdown_now` or `shutdown_timeout`).
    Cancelled,
    /// The task was still running at its deadline (its own, the pool's `task_timeout`, or the
    /// end of `shutdown_timeout`). Its thread was left to finish on its own; whatever it
    /// returns later is dropped.
    TimedOut,
    /// Not an ending: the result of this task was already received through its handle.
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
/// ([`TaskError`]: it panicked, was cancelled or timed out), or the callback returned its own
/// error `E`.
///
/// The flat form of `Result<Result<T, E>, TaskError>`, made by [`Flat::flat`]. `Display` and
/// [`Error::source`] are those of the error inside, so `Failed<E>` reads (and `?`-converts into
/// `Box<dyn Error>`) like the error it holds. A [`Retry::when`](crate::Retry::when) function
/// sees each failed attempt as a `Failed<&E>`.
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, TaskError};
///
/// let pool = AsyncPool::new(2, |s: &'static str| s.parse::<u32>())?;
/// let parsed = |s| -> Result<u32, TaskError> {
///     match pool.add_task(s).unwrap().recv().flat() {
///         Ok(n) => Ok(n),
///         Err(Failed::Callback(_)) => Ok(0), // unparsable: counts as zero
///         Err(Failed::Task(error)) => Err(error), // panicked, cancelled, timed out
///     }
/// };
/// assert_eq!(parsed("7"), Ok(7));
/// assert_eq!(parsed("seven"), Ok(0));
///
/// let failed: Failed<std::num::ParseIntError> = TaskError::TimedOut.into();
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

/// Flattens the result of a task whose callback returns `Result<T, E>`: from
/// `Result<Result<T, E>, TaskError>` to `Result<T, Failed<E>>`. It reads a handle's result
/// (`task.recv().flat()`, `task.await.flat()`) and a message's (`done.result.flat()`) alike.
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, Mailbox, TaskError};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |n: i32| if n < 0 { Err(format!("{n} is negative")) } else { Ok(n * 2) })?;
/// assert_eq!(pool.add_task(21)?.recv().flat(), Ok(42));
///
/// let (mailbox, results): (Mailbox<Result<i32, String>, i32>, _) = unbounded();
/// pool.task(-1).tag(-1).add_to(&mailbox)?;
/// let done = results.recv()?;
/// assert_eq!((done.tag, done.result.flat()), (-1, Err(Failed::Callback("-1 is negative".into()))));
///
/// let cancelled: Result<Result<u8, String>, TaskError> = Err(TaskError::Cancelled);
/// assert_eq!(cancelled.flat(), Err(Failed::Task(TaskError::Cancelled)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Flat {
    /// The flat form.
    type Output;

    /// Returns the flat form of `self`: the value, or why there is none — the task's error or
    /// the callback's, in one `Failed`.
    ///
    /// ```
    /// use slowpool::{Failed, Flat, TaskError};
    ///
    /// let ok: Result<Result<u8, &str>, TaskError> = Ok(Ok(1));
    /// let callback: Result<Result<u8, &str>, TaskError> = Ok(Err("bad"));
    /// let task: Result<Result<u8, &str>, TaskError> = Err(TaskError::TimedOut);
    /// assert_eq!(ok.flat(), Ok(1));
    /// assert_eq!(callback.flat(), Err(Failed::Callback("bad")));
    /// assert_eq!(task.flat(), Err(Failed::Task(TaskError::TimedOut)));
    /// ```
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
