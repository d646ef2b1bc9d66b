//! [`ThreadPool`]: any closure per task, on the same engine as [`AsyncPool`](crate::AsyncPool).

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::builder::Builder;
use crate::cell::{Cell, Control, Header, Output, Slot};
use crate::engine::{Engine, Job, Owner, Ran, Refused, RunContext};
use crate::error::{AddError, BuildError, TaskError};
use crate::id::TaskId;
use crate::map::{MapOrdered, MapUnordered, Message, Source};
use crate::stats::Stats;
use crate::task::Task;

/// A pool of worker threads that run any closure, each closure one task.
///
/// The same engine and the same guarantees as [`AsyncPool`](crate::AsyncPool): results through
/// a [`Task`] or a mailbox, panics reported, nothing lost on shutdown. Cheap to clone; the last
/// clone dropped shuts the pool down gracefully.
///
/// # Examples
///
/// ```
/// use slowpool::ThreadPool;
///
/// let pool = ThreadPool::new(4)?;
/// let hello = pool.spawn(|| "hi".to_string())?;
/// let sum = pool.spawn(|| (1..=10).sum::<u32>())?;
/// assert_eq!(hello.recv().as_deref(), Ok("hi"));
/// assert_eq!(sum.recv(), Ok(55));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ThreadPool {
    owner: Arc<Owner<Closure>>,
}

/// A closure with its task's cell, type-erased so that one queue carries closures of any
/// output type.
pub(crate) struct Closure(Box<dyn Body>);

trait Body: Send {
    fn control(&self) -> &dyn Control;
    fn control_arc(&self) -> Arc<dyn Control>;
    fn control_weak(&self) -> Weak<dyn Control>;
    fn run(self: Box<Self>, cx: &RunContext<'_, Closure>) -> Ran;
    /// For handing the closure back to the caller when an add is refused.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

struct Spawned<F, T> {
    f: F,
    cell: Arc<Cell<T>>,
}

impl<F, T> Body for Spawned<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn control(&self) -> &dyn Control {
        &*self.cell
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.cell.clone()
    }

    fn control_weak(&self) -> Weak<dyn Control> {
        Arc::downgrade(&self.cell) as Weak<dyn Control>
    }

    fn run(self: Box<Self>, cx: &RunContext<'_, Closure>) -> Ran {
        let Spawned { f, cell } = *self;
        let outcome = panic::catch_unwind(AssertUnwindSafe(f));
        cx.finish(&cell, outcome)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Job for Closure {
    type Runner = ();
    /// A cancelled closure is dropped; the pool reports how many.
    type Input = ();

    fn control(&self) -> &dyn Control {
        self.0.control()
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.0.control_arc()
    }

    fn control_weak(&self) -> Weak<dyn Control> {
        self.0.control_weak()
    }

    fn run(self, _: &(), cx: &RunContext<'_, Self>) -> Ran {
        self.0.run(cx)
    }

    fn into_input(self) {
        crate::cell::drop_quietly(self);
    }
}

impl ThreadPool {
    /// Builds a fixed pool of `max_workers` threads.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for 0 workers; [`BuildError::Spawn`] if the operating system
    /// refuses a thread (the threads already started are stopped first).
    ///
    /// ```
    /// use slowpool::{BuildError, ThreadPool};
    ///
    /// let pool = ThreadPool::new(8)?;
    /// assert_eq!(pool.stats().workers, 8);
    /// assert!(matches!(ThreadPool::new(0), Err(BuildError::ZeroWorkers)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(max_workers: usize) -> Result<ThreadPool, BuildError> {
        ThreadPool::builder().max_workers(max_workers).build()
    }

    /// Returns a [`Builder`] for a pool whose settings are not the defaults.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().max_workers(2).thread_name("io").build()?;
    /// assert_eq!(pool.spawn(|| 1 + 1)?.recv(), Ok(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> Builder<ThreadPool> {
        Builder::new()
    }

    fn engine(&self) -> &Arc<Engine<Closure>> {
        &self.owner.0
    }

    /// The one adding path of `ThreadPool` (every `spawn*` method goes through [`Spawn`]).
    fn submit<F, T>(
        &self,
        f: F,
        how: (Option<u64>, Option<Duration>),
        output: Output<T>,
        wait: bool,
    ) -> Result<Arc<Cell<T>>, AddError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.engine();
        let (key, timeout) = how;
        let header = Header::new(engine.next_id(), key, timeout);
        let cell = Arc::new(Cell::new(header, output));
        let job = Closure(Box::new(Spawned {
            f,
            cell: cell.clone(),
        }));
        match engine.add(job, wait) {
            Ok(()) => Ok(cell),
            Err((refused, job)) => {
                cell.reject();
                let spawned = job
                    .0
                    .into_any()
                    .downcast::<Spawned<F, T>>()
                    .expect("a refused job is the one just built");
                let f = spawned.f;
                Err(match refused {
                    Refused::Full => AddError::Full(f),
                    Refused::ShutDown => AddError::ShutDown(f),
                })
            }
        }
    }

    /// Starts a [`Spawn`]: say how the closure's task runs (`.key(..)`, `.timeout(..)`) and
    /// where its result goes (`.add()`, `.try_add()`, `.add_to(..)`, `.try_add_to(..)`) — the
    /// same chain as [`AsyncPool::task`](crate::AsyncPool::task). `spawn`, `try_spawn` and
    /// `spawn_to` are its short forms.
    ///
    /// ```
    /// use slowpool::{TaskError, ThreadPool};
    /// use std::time::Duration;
    ///
    /// let pool = ThreadPool::builder().max_workers(2).max_per_key(1).build()?;
    /// let fetch = pool.task(|| "page").key("a.example").add()?;
    /// let stuck = pool
    ///     .task(|| std::thread::sleep(Duration::from_secs(60)))
    ///     .timeout(Duration::from_millis(10))
    ///     .add()?;
    /// assert_eq!(fetch.recv(), Ok("page"));
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task<F, T>(&self, f: F) -> Spawn<'_, F>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Spawn {
            pool: self,
            f,
            key: None,
            timeout: None,
        }
    }

    /// Runs `f` on a worker and returns at once with a [`Task`] for its result. With a bounded
    /// queue, waits while the queue is full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(f)` once the pool is shut down: the closure is handed back, unrun.
    ///
    /// # Examples
    ///
    /// ```
    /// use slowpool::{TaskError, ThreadPool};
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let sum = pool.spawn(|| (1..=10).sum::<u32>())?;
    /// let boom = pool.spawn(|| -> u32 { panic!("boom") })?;
    /// assert_eq!(sum.recv(), Ok(55));
    /// assert_eq!(boom.recv(), Err(TaskError::Panicked("boom".into())));
    ///
    /// pool.shutdown();
    /// let refused = pool.spawn(|| 42).unwrap_err();
    /// assert_eq!(refused.into_inner()(), 42); // the closure comes back, unrun
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> Result<Task<T>, AddError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.task(f).add()
    }

    /// Like [`spawn`](ThreadPool::spawn), but never blocks: with a full bounded queue it
    /// returns `AddError::Full(f)`.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = ThreadPool::builder().max_workers(1).queue_capacity(1).build()?;
    /// let wait = gate.clone();
    /// let running = pool.spawn(move || wait.recv().is_ok())?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = pool.try_spawn(|| true)?; // the one place in the queue
    /// let refused = pool.try_spawn(|| false).unwrap_err();
    /// assert!(refused.is_full());
    /// release.send(())?;
    /// assert_eq!((running.recv(), queued.recv()), (Ok(true), Ok(true)));
    /// # drop(gate);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_spawn<F, T>(&self, f: F) -> Result<Task<T>, AddError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.task(f).try_add()
    }

    /// Runs `f` on a worker; its result is sent to `mailbox` as `(TaskId, result)`.
    ///
    /// ```
    /// use slowpool::{TaskError, TaskId, ThreadPool};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let (tx, rx) = unbounded::<(TaskId, Result<i32, TaskError>)>();
    /// let id = pool.spawn_to(|| 7, &tx)?;
    /// assert_eq!(rx.recv()?, (id, Ok(7)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`spawn`](ThreadPool::spawn).
    pub fn spawn_to<F, T>(
        &self,
        f: F,
        mailbox: &Sender<(TaskId, Result<T, TaskError>)>,
    ) -> Result<TaskId, AddError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.task(f).add_to(mailbox)
    }

    /// Runs a stream of closures, yielding `(index, result)` in the order they finish, with at
    /// most [`in_flight`](MapUnordered::in_flight) outstanding (default: twice `max_workers`).
    /// See [`AsyncPool::map_unordered`](crate::AsyncPool::map_unordered).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let jobs = (0..5u32).map(|n| move || n * 2);
    /// let mut doubled: Vec<u32> = pool.map_unordered(jobs).map(|(_, r)| r.unwrap()).collect();
    /// doubled.sort();
    /// assert_eq!(doubled, [0, 2, 4, 6, 8]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_unordered<F, T, It>(&self, closures: It) -> MapUnordered<F, T, It::IntoIter>
    where
        It: IntoIterator<Item = F>,
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        MapUnordered::new(closures.into_iter(), self.source())
    }

    /// Runs a stream of closures, yielding their results in input order (see
    /// [`AsyncPool::map_ordered`](crate::AsyncPool::map_ordered)).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(3)?;
    /// let jobs = ["a", "bbb", "cc"].map(|s| move || s.len());
    /// let lengths: Vec<usize> = pool.map_ordered(jobs).collect::<Result<_, _>>()?;
    /// assert_eq!(lengths, [1, 3, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_ordered<F, T, It>(&self, closures: It) -> MapOrdered<F, T, It::IntoIter>
    where
        It: IntoIterator<Item = F>,
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        MapOrdered::new(closures.into_iter(), self.source())
    }

    /// How a streaming map reaches this pool (it keeps the pool alive while it runs).
    fn source<F, T>(&self) -> Source<F, Message<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (pool, canceller) = (self.clone(), self.clone());
        Source::new(
            2 * self.max_workers(),
            move |f, mailbox| pool.spawn_to(f, mailbox),
            move |id| {
                canceller.cancel(id);
            },
        )
    }

    /// Cancels the task with this id if it has not started (see
    /// [`AsyncPool::cancel`](crate::AsyncPool::cancel)).
    ///
    /// ```
    /// use slowpool::{TaskError, TaskId, ThreadPool};
    /// use crossbeam_channel::{bounded, unbounded};
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = ThreadPool::new(1)?;
    /// let (mailbox, results) = unbounded::<(TaskId, Result<u8, TaskError>)>();
    /// let running = pool.spawn_to(move || { let _ = gate.recv(); 1 }, &mailbox)?;
    /// let queued = pool.spawn_to(|| 2, &mailbox)?;
    /// assert!(pool.cancel(queued));
    /// assert_eq!(results.recv()?, (queued, Err(TaskError::Cancelled)));
    /// release.send(())?;
    /// assert_eq!(results.recv()?, (running, Ok(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, id: TaskId) -> bool {
        self.engine().cancel_id(id)
    }

    /// Cancels every task that has not started, without shutting down; returns how many. Each
    /// cancelled task's result is `Err(TaskError::Cancelled)`.
    ///
    /// ```
    /// use slowpool::{TaskError, ThreadPool};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = ThreadPool::new(1)?;
    /// let running = pool.spawn(move || gate.recv().is_ok())?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = [pool.spawn(|| false)?, pool.spawn(|| false)?];
    /// assert_eq!(pool.cancel_all(), 2);
    /// assert_eq!(queued[1].recv(), Err(TaskError::Cancelled));
    /// release.send(())?;
    /// assert_eq!(running.recv(), Ok(true));
    /// assert_eq!(pool.spawn(|| true)?.recv(), Ok(true)); // still open
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel_all(&self) -> usize {
        self.engine().cancel_all().len()
    }

    /// Blocks until no task is queued or running (see
    /// [`AsyncPool::join`](crate::AsyncPool::join) for a call from inside a task).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = ThreadPool::new(4)?;
    /// let done = Arc::new(AtomicUsize::new(0));
    /// for _ in 0..50 {
    ///     let done = done.clone();
    ///     pool.spawn(move || done.fetch_add(1, Ordering::SeqCst))?;
    /// }
    /// pool.join();
    /// assert_eq!(done.load(Ordering::SeqCst), 50);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) {
        self.engine().join();
    }

    /// Returns a snapshot of the pool's workers and tasks (see [`Stats`]).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// pool.spawn(|| ())?.recv()?;
    /// let stats = pool.stats();
    /// assert_eq!((stats.workers, stats.submitted, stats.completed), (2, 1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.engine().stats()
    }

    /// Changes the number of workers (see
    /// [`AsyncPool::set_max_workers`](crate::AsyncPool::set_max_workers)).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// assert!(pool.set_max_workers(4));
    /// assert_eq!(pool.max_workers(), 4);
    /// assert!(!pool.set_max_workers(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_max_workers(&self, max_workers: usize) -> bool {
        self.engine().set_max_workers(max_workers)
    }

    /// Stops accepting work, runs everything accepted, joins the workers (see
    /// [`AsyncPool::shutdown`](crate::AsyncPool::shutdown)).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let tasks: Vec<_> = (0..4).map(|n| pool.spawn(move || n)).collect::<Result<_, _>>()?;
    /// pool.shutdown();
    /// assert!(tasks.iter().all(|t| t.is_finished()));
    /// assert!(pool.is_shut_down());
    /// assert!(pool.spawn(|| 5).unwrap_err().is_shut_down());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) {
        self.engine().shutdown();
    }

    /// Stops accepting work, cancels every task not started (each gets
    /// `Err(TaskError::Cancelled)`), waits for the running ones; returns how many were
    /// cancelled.
    ///
    /// ```
    /// use slowpool::{TaskError, ThreadPool};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = ThreadPool::new(1)?;
    /// let running = pool.spawn(move || gate.recv().is_ok())?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = pool.spawn(|| false)?;
    /// let watcher = pool.clone();
    /// std::thread::spawn(move || {
    ///     // Let the running task finish once `shutdown_now` has cancelled the queued one.
    ///     while watcher.stats().cancelled == 0 { std::thread::yield_now() }
    ///     release.send(())
    /// });
    /// assert_eq!(pool.shutdown_now(), 1);
    /// assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    /// assert_eq!(running.recv(), Ok(true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_now(&self) -> usize {
        self.engine().shutdown_now().len()
    }

    /// Shuts down gracefully for at most `timeout`, then as
    /// [`AsyncPool::shutdown_timeout`](crate::AsyncPool::shutdown_timeout). True if everything
    /// ended in time.
    ///
    /// ```
    /// use slowpool::{TaskError, ThreadPool};
    /// use crossbeam_channel::bounded;
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = ThreadPool::new(1)?;
    /// let stuck = pool.spawn(move || gate.recv().is_ok())?;
    /// while !stuck.is_running() { std::thread::yield_now() }
    /// assert!(!pool.shutdown_timeout(Duration::from_millis(20)));
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// drop(release); // the abandoned thread returns and exits
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> bool {
        self.engine().shutdown_timeout(timeout)
    }

    /// Returns `true` once a shutdown has begun.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(1)?;
    /// assert!(!pool.is_shut_down());
    /// pool.shutdown();
    /// assert!(pool.is_shut_down());
    /// # Ok::<(), slowpool::BuildError>(())
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.engine().is_closed()
    }

    /// The pool's current maximum number of workers.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// assert_eq!(ThreadPool::new(6)?.max_workers(), 6);
    /// # Ok::<(), slowpool::BuildError>(())
    /// ```
    pub fn max_workers(&self) -> usize {
        self.engine().max_workers()
    }
}

/// One closure on its way into a [`ThreadPool`]: how its task runs (its key, its deadline) and
/// where its result goes — the same chain as [`Submit`](crate::Submit) for an `AsyncPool`.
/// Made by [`ThreadPool::task`]. A refused add hands the closure back, unrun.
#[must_use = "nothing is added until `add`, `try_add`, `add_to` or `try_add_to`"]
pub struct Spawn<'a, F> {
    pool: &'a ThreadPool,
    f: F,
    key: Option<u64>,
    timeout: Option<Duration>,
}

impl<F, T> Spawn<'_, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// Files the task under `key` (see [`max_per_key`](Builder::max_per_key)). Without per-key
    /// settings on the builder, the key has no effect.
    pub fn key<K: std::hash::Hash>(mut self, key: K) -> Self {
        self.key = self.pool.engine().key_of(&key);
        self
    }

    /// Gives the task its own deadline, counted from its start (see
    /// [`task_timeout`](Builder::task_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds the closure; returns a [`Task`] for its result. Waits while a bounded queue is full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(f)` once the pool is shut down.
    pub fn add(self) -> Result<Task<T>, AddError<F>> {
        self.slot(true)
    }

    /// Like [`add`](Spawn::add), but never waits: `AddError::Full(f)` on a full bounded queue.
    ///
    /// # Errors
    ///
    /// `Full(f)` or `ShutDown(f)`.
    pub fn try_add(self) -> Result<Task<T>, AddError<F>> {
        self.slot(false)
    }

    /// Adds the closure; its result goes to `mailbox` as `(TaskId, result)`.
    ///
    /// # Errors
    ///
    /// As [`add`](Spawn::add).
    pub fn add_to(
        self,
        mailbox: &Sender<(TaskId, Result<T, TaskError>)>,
    ) -> Result<TaskId, AddError<F>> {
        self.mailbox(mailbox, true)
    }

    /// Like [`add_to`](Spawn::add_to), but never waits.
    ///
    /// # Errors
    ///
    /// As [`try_add`](Spawn::try_add).
    pub fn try_add_to(
        self,
        mailbox: &Sender<(TaskId, Result<T, TaskError>)>,
    ) -> Result<TaskId, AddError<F>> {
        self.mailbox(mailbox, false)
    }

    fn slot(self, wait: bool) -> Result<Task<T>, AddError<F>> {
        let how = (self.key, self.timeout);
        let cell = self
            .pool
            .submit(self.f, how, Output::Slot(Slot::new()), wait)?;
        Ok(Task::new(cell, self.pool.engine().clone()))
    }

    fn mailbox(
        self,
        mailbox: &Sender<(TaskId, Result<T, TaskError>)>,
        wait: bool,
    ) -> Result<TaskId, AddError<F>> {
        let (how, output) = ((self.key, self.timeout), Output::Mailbox(mailbox.clone()));
        let cell = self.pool.submit(self.f, how, output, wait)?;
        Ok(cell.header.id)
    }
}

impl<F> fmt::Debug for Spawn<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawn")
            .field("keyed", &self.key.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Builder<ThreadPool> {
    /// Builds the pool.
    ///
    /// ```
    /// use slowpool::{BuildError, ThreadPool};
    ///
    /// let pool = ThreadPool::builder().max_workers(4).build()?;
    /// assert_eq!(pool.spawn(|| "done")?.recv(), Ok("done"));
    ///
    /// let refused = ThreadPool::builder().min_workers(8).max_workers(4).build();
    /// assert!(matches!(refused, Err(BuildError::MinAboveMax { min: 8, max: 4 })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// See [`BuildError`]: no thread is left running when a build fails.
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        let engine = Engine::start(self.config, |_| ())?;
        Ok(ThreadPool {
            owner: Arc::new(Owner(engine)),
        })
    }
}

impl Clone for ThreadPool {
    fn clone(&self) -> Self {
        ThreadPool {
            owner: self.owner.clone(),
        }
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("stats", &self.stats())
            .finish()
    }
}
