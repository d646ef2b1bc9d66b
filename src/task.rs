//! A handle to one task's result: [`Task`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, TryRecvError};

use crate::cell::{Cell, Output, Read, Slot, BACKOFF, CANCELLED, DONE, QUEUED, RUNNING, WAITING};
use crate::error::{Failed, Flat, TaskError};
use crate::id::TaskId;

/// Cancels a task on the pool that accepted it (the engine behind a [`Task`]).
pub(crate) trait Canceller: Send + Sync {
    fn cancel_task(&self, cell: &dyn crate::cell::Control) -> bool;
}

/// The result of one task, delivered once, as soon as the task ends.
///
/// Returned by `add_task` and `spawn`. Read the result with [`recv`](Task::recv),
/// [`try_recv`](Task::try_recv) or [`recv_timeout`](Task::recv_timeout), or wait on several
/// tasks at once with `crossbeam_channel::select!` over [`receiver`](Task::receiver).
///
/// Dropping a `Task` does not cancel it: the task still runs and its result is dropped
/// (fire-and-forget). Use [`cancel`](Task::cancel) to stop a task that has not started.
///
/// # Awaiting
///
/// A `Task` is a [`Future`] too, with no runtime behind it: async code `.await`s work that runs
/// on the pool's threads, from any executor. The pool's worker wakes the awaiting task when the
/// result arrives; nothing polls or blocks meanwhile.
///
/// - Awaiting is one more way to read the one result: after a `recv`, or when awaited again,
///   it is ready at once with `Err(TaskError::AlreadyReceived)` (a `Task` never panics when
///   polled after completion).
/// - After [`receiver`](Task::receiver) was called, the result travels through that channel,
///   and awaiting reads it from there: it is ready when the result arrives, with the result if
///   it is still in the channel, or with `Err(TaskError::AlreadyReceived)` if it was taken out
///   of the channel some other way.
/// - Dropping a `Task` that is being awaited (a `select`ed-away branch, a timeout) does not
///   cancel it either; it releases the waker it left.
/// - `(&mut task).await` keeps the handle, to [`cancel`](Task::cancel) it after a timeout in
///   the caller's runtime, for example.
///
/// # Examples
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(2, |s: String| s.len())?;
/// let task = pool.add_task("abc".to_string())?;
/// assert_eq!(task.recv(), Ok(3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Awaited, here from a minimal executor (any runtime's `block_on` or `spawn` does the same):
///
/// ```
/// use slowpool::{AsyncPool, TaskError};
/// use std::future::Future;
/// use std::sync::Arc;
/// use std::task::{Context, Poll, Wake, Waker};
/// use std::thread::{self, Thread};
///
/// struct Unpark(Thread);
/// impl Wake for Unpark {
///     fn wake(self: Arc<Self>) { self.0.unpark() }
/// }
/// fn block_on<F: Future>(future: F) -> F::Output {
///     let mut future = std::pin::pin!(future);
///     let waker = Waker::from(Arc::new(Unpark(thread::current())));
///     let mut cx = Context::from_waker(&waker);
///     loop {
///         match future.as_mut().poll(&mut cx) {
///             Poll::Ready(output) => return output,
///             Poll::Pending => thread::park(),
///         }
///     }
/// }
///
/// let pool = AsyncPool::new(2, |n: u64| if n == 0 { panic!("zero") } else { 100 / n })?;
/// let (a, b, c) = (pool.add_task(4)?, pool.add_task(5)?, pool.add_task(0)?);
/// let sum = block_on(async { Ok::<_, TaskError>(a.await? + b.await?) });
/// assert_eq!(sum, Ok(45));
/// assert_eq!(block_on(c), Err(TaskError::Panicked("zero".into())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Task<T> {
    cell: Arc<Cell<T>>,
    pool: Arc<dyn Canceller>,
    /// Created on the first call to `receiver()`; from then on the result goes through it.
    receiver: OnceLock<Receiver<Result<T, TaskError>>>,
}

impl<T: Send + 'static> Task<T> {
    pub(crate) fn new(cell: Arc<Cell<T>>, pool: Arc<dyn Canceller>) -> Task<T> {
        Task {
            cell,
            pool,
            receiver: OnceLock::new(),
        }
    }

    /// Returns this task's id: the one a mailbox result carries, and
    /// [`cancel`](crate::AsyncPool::cancel) takes.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let (first, second) = (pool.add_task(1)?, pool.add_task(2)?);
    /// assert!(first.id() < second.id()); // ids follow the order of the adds
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> TaskId {
        self.cell.header.id
    }

    /// Blocks until the task ends and returns its result.
    ///
    /// The result is delivered once: a second call (or a call after the result went through
    /// [`receiver`](Task::receiver)) returns `Err(TaskError::AlreadyReceived)`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    ///
    /// let pool = AsyncPool::new(1, |n: i32| if n < 0 { panic!("negative") } else { n })?;
    /// assert_eq!(pool.add_task(7)?.recv(), Ok(7));
    /// assert_eq!(pool.add_task(-1)?.recv(), Err(TaskError::Panicked("negative".into())));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&self) -> Result<T, TaskError> {
        match self.read(None) {
            Some(result) => result,
            None => unreachable!("a read without deadline returns a value"),
        }
    }

    /// Returns the result if the task has ended, `None` if it has not, without blocking.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let task = pool.add_task(1)?;
    /// assert_eq!(task.try_recv(), None); // still blocked on the gate
    /// release.send(()).unwrap();
    /// assert_eq!(task.recv(), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&self) -> Option<Result<T, TaskError>> {
        if let Some(rx) = self.receiver.get() {
            return match rx.try_recv() {
                Ok(result) => Some(result),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(TaskError::AlreadyReceived)),
            };
        }
        self.read(Some(Instant::now()))
    }

    /// Waits at most `timeout` for the task to end: its result, or `None` if time ran out.
    /// The task goes on running either way.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::bounded;
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let task = pool.add_task(1)?;
    /// assert_eq!(task.recv_timeout(Duration::from_millis(10)), None); // still blocked
    /// release.send(())?;
    /// assert_eq!(task.recv_timeout(Duration::from_secs(60)), Some(Ok(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Result<T, TaskError>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.read(Some(deadline)),
            None => self.read(None),
        }
    }

    /// Returns a channel receiver that yields this task's result once, for
    /// `crossbeam_channel::select!` over several tasks, tickers and other channels.
    ///
    /// The channel is created on the first call; from then on the result goes through it, and
    /// `recv`/`try_recv` read it from there. After the result was received, the receiver is
    /// disconnected — and a disconnected receiver is always ready: a finished task left in a
    /// `select!` loop fires again at once, every time, with `Err(RecvError)`. Take each task
    /// out of the select set once it has delivered (below), or, for many tasks, send their
    /// results to one mailbox ([`AsyncPool::add_task_to`](crate::AsyncPool::add_task_to)).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::{select, Select};
    ///
    /// let pool = AsyncPool::new(2, |n: u64| n * 10)?;
    ///
    /// // Two tasks: whichever ends first.
    /// let (a, b) = (pool.add_task(1)?, pool.add_task(2)?);
    /// let first = select! {
    ///     recv(a.receiver()) -> r => r?,
    ///     recv(b.receiver()) -> r => r?,
    /// };
    /// assert!(first == Ok(10) || first == Ok(20));
    ///
    /// // Any number of tasks, in completion order: drop each one once it has delivered.
    /// let mut pending: Vec<_> = (1..=5).map(|n| pool.add_task(n)).collect::<Result<_, _>>()?;
    /// let mut sum = 0;
    /// while !pending.is_empty() {
    ///     let mut select = Select::new();
    ///     for task in &pending {
    ///         select.recv(task.receiver());
    ///     }
    ///     let ready = select.select();
    ///     let index = ready.index();
    ///     sum += ready.recv(pending[index].receiver())??;
    ///     pending.swap_remove(index);
    /// }
    /// assert_eq!(sum, 150);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receiver(&self) -> &Receiver<Result<T, TaskError>> {
        self.receiver.get_or_init(|| {
            let (tx, rx) = bounded(1);
            self.slot().forward(tx);
            rx
        })
    }

    /// Cancels the task if it has not started: it will never run, its result is
    /// `Err(TaskError::Cancelled)`, and `true` is returned. Returns `false` if it is running or
    /// has ended.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let running = pool.add_task(1)?;
    /// let queued = pool.add_task(2)?;
    /// assert!(queued.cancel());
    /// assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    /// release.send(()).unwrap();
    /// assert_eq!(running.recv(), Ok(1));
    /// assert!(!running.cancel());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) -> bool {
        self.pool.cancel_task(&*self.cell)
    }

    /// Returns `true` once the task has ended (its result may or may not have been read).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let task = pool.add_task(1)?;
    /// pool.join();
    /// assert!(task.is_finished() && !task.is_running());
    /// assert_eq!(task.recv(), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.cell.header.state(),
            WAITING | QUEUED | RUNNING | BACKOFF
        )
    }

    /// Returns `true` if the task is running now.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let task = pool.add_task(1)?;
    /// while !task.is_running() { std::thread::yield_now() } // a worker took it
    /// assert!(!task.is_finished());
    /// release.send(())?;
    /// assert_eq!(task.recv(), Ok(1));
    /// assert!(!task.is_running());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_running(&self) -> bool {
        self.cell.header.state() == RUNNING
    }

    /// Reads the result, waiting until `deadline` (`None`: for ever).
    fn read(&self, deadline: Option<Instant>) -> Option<Result<T, TaskError>> {
        if self.receiver.get().is_none() {
            match self.slot().take(deadline) {
                Read::Value(result) => return Some(result),
                Read::Empty => return None,
                // Another thread called `receiver()`: the value travels there now.
                Read::Forwarded => {}
            }
        }
        let rx = self.receiver();
        let received = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => rx.recv_deadline(deadline),
        };
        match received {
            Ok(result) => Some(result),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(TaskError::AlreadyReceived)),
        }
    }
}

impl<T> Task<T> {
    fn slot(&self) -> &Slot<T> {
        match &self.cell.output {
            Output::Slot(slot) => slot,
            Output::Mailbox(_) | Output::Relay(_) => {
                unreachable!("a Task is only made for a slot cell")
            }
        }
    }
}

/// Flat reads, for callbacks that return `Result<T, E>`: one `Result` whose error is
/// [`Failed<E>`] instead of `Result<Result<T, E>, TaskError>`. Each is its plain form followed
/// by [`Flat::flat`]; for an awaited task, write `task.await.flat()`.
impl<T: Send + 'static, E: Send + 'static> Task<Result<T, E>> {
    /// Blocks until the task ends and returns the callback's value, or why there is none: the
    /// callback's own error ([`Failed::Callback`]) or the task's ([`Failed::Task`]).
    ///
    /// As with [`recv`](Task::recv), a second read returns
    /// `Err(Failed::Task(TaskError::AlreadyReceived))`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed, TaskError};
    ///
    /// let pool = AsyncPool::new(2, |s: String| match s.as_str() {
    ///     "boom" => panic!("boom"),
    ///     s => s.parse::<u32>(),
    /// })?;
    /// assert_eq!(pool.add_task("42".into())?.recv_flat(), Ok(42));
    ///
    /// let bad = pool.add_task("x".into())?.recv_flat();
    /// assert!(matches!(bad, Err(Failed::Callback(_))));
    /// assert_eq!(bad.unwrap_err().to_string(), "invalid digit found in string");
    ///
    /// let panicked = pool.add_task("boom".into())?.recv_flat();
    /// assert_eq!(panicked, Err(Failed::Task(TaskError::Panicked("boom".into()))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_flat(&self) -> Result<T, Failed<E>> {
        self.recv().flat()
    }

    /// Returns the flat result if the task has ended, `None` if it has not, without blocking;
    /// [`try_recv`](Task::try_recv), flattened.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed};
    ///
    /// let pool = AsyncPool::new(1, |n: i32| if n < 0 { Err("negative") } else { Ok(n) })?;
    /// let task = pool.add_task(-1)?;
    /// pool.join();
    /// assert_eq!(task.try_recv_flat(), Some(Err(Failed::Callback("negative"))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_flat(&self) -> Option<Result<T, Failed<E>>> {
        self.try_recv().map(Flat::flat)
    }

    /// Waits at most `timeout` for the task to end: its flat result, or `None` if time ran out;
    /// [`recv_timeout`](Task::recv_timeout), flattened. The task goes on running either way.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed};
    /// use crossbeam_channel::bounded;
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: i32| {
    ///     let _ = gate.recv();
    ///     if n < 0 { Err("negative") } else { Ok(n) }
    /// })?;
    /// let task = pool.add_task(-1)?;
    /// assert_eq!(task.recv_timeout_flat(Duration::from_millis(10)), None); // still blocked
    /// release.send(())?;
    /// let ended = task.recv_timeout_flat(Duration::from_secs(60));
    /// assert_eq!(ended, Some(Err(Failed::Callback("negative"))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout_flat(&self, timeout: Duration) -> Option<Result<T, Failed<E>>> {
        self.recv_timeout(timeout).map(Flat::flat)
    }
}

/// Awaits the task's result; see [Awaiting](Task#awaiting).
impl<T: Send + 'static> Future for Task<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.get_mut();
        if task.receiver.get().is_none() {
            match task.slot().poll_take(cx) {
                Poll::Ready(Read::Value(result)) => return Poll::Ready(result),
                Poll::Pending => return Poll::Pending,
                // `receiver()` is the only way to forward, and it sets `task.receiver`.
                Poll::Ready(Read::Forwarded) => {}
                Poll::Ready(Read::Empty) => unreachable!("a poll has no deadline to pass"),
            }
        }
        let rx = task.receiver();
        task.slot().poll_forwarded(rx, cx)
    }
}

// A `Task` never pins its fields in place (the result lives behind an `Arc`), so it can move
// between polls whatever `T` is; without this, `T`'s channel types would make it `!Unpin`.
impl<T> Unpin for Task<T> {}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        // A task dropped while awaited must not keep its executor's task alive (a waker can
        // own it) until the pool's task ends. A result that already arrived is dropped here, by
        // the handle's owner; a later one by the worker that delivers it, never by a thread
        // that happens to hold the cell's last `Arc` (see `Slot::abandon`).
        drop(self.slot().abandon());
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.cell.header.state() {
            WAITING => "waiting on its key",
            QUEUED => "queued",
            RUNNING => "running",
            DONE => "done",
            CANCELLED => "cancelled",
            BACKOFF => "waiting to retry",
            _ => "timed out",
        };
        f.debug_struct("Task")
            .field("id", &self.cell.header.id)
            .field("state", &state)
            .finish()
    }
}
