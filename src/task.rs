//! A handle to one task's result: [`Task`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, TryRecvError};

use crate::cell::{Cell, Output, Read, Slot, CANCELLED, DONE, QUEUED, RUNNING, WAITING};
use crate::error::TaskError;
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
        !matches!(self.cell.header.state(), WAITING | QUEUED | RUNNING)
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

    fn slot(&self) -> &Slot<T> {
        match &self.cell.output {
            Output::Slot(slot) => slot,
            Output::Mailbox(_) => unreachable!("a Task is only made for a slot cell"),
        }
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

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.cell.header.state() {
            WAITING => "waiting on its key",
            QUEUED => "queued",
            RUNNING => "running",
            DONE => "done",
            CANCELLED => "cancelled",
            _ => "timed out",
        };
        f.debug_struct("Task")
            .field("id", &self.cell.header.id)
            .field("state", &state)
            .finish()
    }
}
