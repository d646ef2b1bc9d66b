//! A handle to one task's result: [`Task`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, TryRecvError};

use crate::cell::{drop_quietly, Cell, Control, Output, State};
use crate::done::TaskError;
use crate::id::TaskId;
use crate::slot::{Ended, ForwardFn, Read, Slot};

/// Cancels a task on the pool that accepted it (the engine behind a [`Task`]).
pub(crate) trait Canceller: Send + Sync {
    fn cancel_task(&self, cell: &dyn Control) -> bool;
}

/// The result of one task, delivered once, as soon as the task ends — however it was added
/// (plain, keyed, with a deadline, retried, tagged).
///
/// Returned by [`Submit::add`](crate::Submit::add), `add_task` and `spawn`. Read the result
/// with [`recv`](Task::recv), [`try_recv`](Task::try_recv) or
/// [`recv_timeout`](Task::recv_timeout); wait on it beside other channels with
/// `crossbeam_channel::select!` over its [`receiver`](Task::receiver); wait on many tasks at
/// once, as they finish, with a [`TaskSet`](crate::TaskSet).
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
///   and awaiting reads it from there.
/// - Dropping a `Task` that is being awaited (a `select`ed-away branch, a timeout) does not
///   cancel it either; it releases the waker it left.
/// - `(&mut task).await` keeps the handle, to [`cancel`](Task::cancel) it after a timeout in
///   the caller's runtime, for example.
///
/// ```
/// use slowpool::{AsyncPool, TaskError};
/// use std::future::Future;
/// use std::sync::Arc;
/// use std::task::{Context, Poll, Wake, Waker};
/// use std::thread::{self, Thread};
///
/// // A minimal executor: any runtime's `block_on` does the same.
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
pub struct Task<O, Tag = ()> {
    cell: Arc<Cell<O>>,
    pool: Arc<dyn Canceller>,
    /// Created on the first call to `receiver()`; from then on the result goes through it.
    receiver: OnceLock<Receiver<Result<O, TaskError>>>,
    /// `None` only once a task set took it (with the task).
    tag: Option<Tag>,
    /// Set once this handle read the result out of the slot: the slot is then `Taken` for
    /// good, and dropping the handle has nothing to abandon (it skips the slot's lock).
    read_out: AtomicBool,
}

impl<O: Send + 'static, Tag> Task<O, Tag> {
    pub(crate) fn new(cell: Arc<Cell<O>>, pool: Arc<dyn Canceller>, tag: Tag) -> Task<O, Tag> {
        Task {
            cell,
            pool,
            receiver: OnceLock::new(),
            tag: Some(tag),
            read_out: AtomicBool::new(false),
        }
    }

    /// Returns this task's id: the one [`cancel`](crate::Pool::cancel) takes and a
    /// [`Done`](crate::Done) carries.
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

    /// Returns the tag the task was added with ([`Submit::tag`](crate::Submit::tag)); `()`
    /// for an untagged task.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let task = pool.task(1).tag("first").add()?;
    /// assert_eq!(*task.tag(), "first");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tag(&self) -> &Tag {
        self.tag
            .as_ref()
            .expect("a task set takes the tag with the task")
    }

    /// Returns how many times the task's callback has started: 0 before it starts, 1 after a
    /// plain run, more when a retry policy ran it again. Final once the task has ended.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(1, |n: u32| if n > 0 { Ok(n) } else { Err("zero") })?;
    /// let ms = Duration::from_millis(1);
    /// let task = pool.task(0).retry(Retry::attempts(2).backoff(ms, ms)).add()?;
    /// assert_eq!(task.recv(), Ok(Err("zero")));
    /// assert_eq!(task.attempts(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attempts(&self) -> u32 {
        self.cell.header.attempts()
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
    pub fn recv(&self) -> Result<O, TaskError> {
        match self.read(None) {
            Ok(result) => result,
            Err(_) => Err(TaskError::AlreadyReceived),
        }
    }

    /// Returns the result if the task has ended, without blocking: `Err(TryRecvError::Empty)`
    /// if it has not ended yet, `Err(TryRecvError::Disconnected)` if its result was already
    /// taken.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::{bounded, TryRecvError};
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let task = pool.add_task(1)?;
    /// assert_eq!(task.try_recv(), Err(TryRecvError::Empty)); // still blocked on the gate
    /// release.send(())?;
    /// pool.join();
    /// assert_eq!(task.try_recv(), Ok(Ok(1)));
    /// assert_eq!(task.try_recv(), Err(TryRecvError::Disconnected)); // taken
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&self) -> Result<Result<O, TaskError>, TryRecvError> {
        self.read(Some(Instant::now()))
            .map_err(|error| match error {
                RecvTimeoutError::Timeout => TryRecvError::Empty,
                RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            })
    }

    /// Waits at most `timeout` for the task to end: its result, `Err(RecvTimeoutError::Timeout)`
    /// if time ran out (the task goes on running), or `Err(RecvTimeoutError::Disconnected)` if
    /// its result was already taken.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::{bounded, RecvTimeoutError};
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u8| { let _ = gate.recv(); n })?;
    /// let task = pool.add_task(1)?;
    /// assert_eq!(task.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout));
    /// release.send(())?;
    /// assert_eq!(task.recv_timeout(Duration::from_secs(60)), Ok(Ok(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Result<O, TaskError>, RecvTimeoutError> {
        self.read(Instant::now().checked_add(timeout))
    }

    /// Returns a channel receiver that yields this task's result once, for
    /// `crossbeam_channel::select!` beside tickers and other channels.
    ///
    /// The channel is created on the first call; from then on the result goes through it, and
    /// `recv`/`try_recv` read it from there. After the result was received, the receiver is
    /// disconnected — and a disconnected receiver is always ready: a finished task left in a
    /// `select!` loop fires again at once, every time. To wait on many tasks as they finish,
    /// put them in a [`TaskSet`](crate::TaskSet) instead.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::{select, tick};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |n: u64| n * 10)?;
    /// let task = pool.add_task(4)?;
    /// let ticker = tick(Duration::from_secs(1));
    /// let result = loop {
    ///     select! {
    ///         recv(task.receiver()) -> result => break result?,
    ///         recv(ticker) -> _ => println!("still waiting"),
    ///     }
    /// };
    /// assert_eq!(result, Ok(40));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receiver(&self) -> &Receiver<Result<O, TaskError>> {
        self.receiver.get_or_init(|| {
            let (tx, rx) = bounded(1);
            let send: ForwardFn<O> = Box::new(move |_: Ended, result| {
                // Capacity 1 and one value: never blocks. A receiver gone: dropped quietly.
                if let Err(refused) = tx.send(result) {
                    drop_quietly(refused.into_inner());
                }
            });
            // Refused when the result was already read: `tx` is dropped with `send`, and the
            // receiver reports disconnection.
            drop(self.slot().forward(self.cell.header.ended(), send));
            rx
        })
    }

    /// Cancels the task if it has not started, or waits to retry: it will never run (again),
    /// its result is `Err(TaskError::Cancelled)`, and `true` is returned. Returns `false` if it
    /// is running or has ended.
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
    /// release.send(())?;
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
        !self.cell.header.state().is_live()
    }

    /// Returns `true` if the task's callback is running now.
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
        self.cell.header.state() == State::Running
    }

    /// Reads the result, waiting until `deadline` (`None`: for ever).
    fn read(&self, deadline: Option<Instant>) -> Result<Result<O, TaskError>, RecvTimeoutError> {
        if self.receiver.get().is_none() {
            match self.slot().take(deadline) {
                Read::Value(result) => {
                    self.read_out.store(true, Relaxed);
                    return Ok(result);
                }
                Read::Empty => return Err(RecvTimeoutError::Timeout),
                Read::Taken => return Err(RecvTimeoutError::Disconnected),
                // Another thread called `receiver()`: the value travels there now.
                Read::Forwarded => {}
            }
        }
        let rx = self.receiver();
        match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => rx.recv_deadline(deadline),
        }
    }

    /// Hands the result to `send` instead of this handle, with the task's tag: at once if it
    /// is already here, else when the task ends; `Err(AlreadyReceived)` at once if it was
    /// already read. For [`TaskSet::push`](crate::TaskSet::push).
    pub(crate) fn forward_with_tag(
        mut self,
        send: impl FnOnce(Ended, Tag, Result<O, TaskError>) + Send + 'static,
    ) where
        Tag: Send + 'static,
    {
        let tag = self.tag.take().expect("a task's tag is taken once");
        let send: ForwardFn<O> = Box::new(move |ended, result| send(ended, tag, result));
        let ended = self.cell.header.ended();
        let forwarded = match self.receiver.get() {
            None => self.slot().forward(ended, send),
            Some(rx) => self.slot().reforward(ended, rx, send),
        };
        if let Err(send) = forwarded {
            send(ended, Err(TaskError::AlreadyReceived));
        }
    }
}

impl<O, Tag> Task<O, Tag> {
    fn slot(&self) -> &Slot<O> {
        match &self.cell.output {
            Output::Slot(slot) => slot,
            Output::Mailbox(_) | Output::Tagged(_) => {
                unreachable!("a Task is only made for a slot cell")
            }
        }
    }
}

/// Awaits the task's result; see [Awaiting](Task#awaiting).
impl<O: Send + 'static, Tag> Future for Task<O, Tag> {
    type Output = Result<O, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.get_mut();
        if task.receiver.get().is_none() {
            match task.slot().poll_take(cx) {
                Poll::Ready(Read::Value(result)) => return Poll::Ready(result),
                Poll::Ready(Read::Taken) => return Poll::Ready(Err(TaskError::AlreadyReceived)),
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
// between polls whatever `O` is; without this, `O`'s channel types would make it `!Unpin`.
impl<O, Tag> Unpin for Task<O, Tag> {}

impl<O, Tag> Drop for Task<O, Tag> {
    fn drop(&mut self) {
        // A task dropped while awaited must not keep its executor's task alive (a waker can
        // own it) until the pool's task ends. A result that already arrived is dropped here, by
        // the handle's owner; a later one by the worker that delivers it, never by a thread
        // that happens to hold the cell's last `Arc` (see `Slot::abandon`). A task set that
        // took the task forwards the result: nothing is abandoned then. A handle that read its
        // result left the slot `Taken`, with no waker: nothing to abandon.
        if !*self.read_out.get_mut() {
            drop(self.slot().abandon());
        }
    }
}

impl<O, Tag> fmt::Debug for Task<O, Tag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.cell.header.state() {
            State::Waiting => "waiting on its key",
            State::Queued => "queued",
            State::Running => "running",
            State::Backoff => "waiting to retry",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed out",
            State::Rejected => "rejected",
        };
        f.debug_struct("Task")
            .field("id", &self.cell.header.id)
            .field("state", &state)
            .field("attempts", &self.cell.header.attempts())
            .finish()
    }
}
