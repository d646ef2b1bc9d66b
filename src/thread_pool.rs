//! The [`ThreadPool`] face: any closure per task, on the same engine as
//! [`AsyncPool`](crate::AsyncPool). What it queues is a boxed [`Work`] carrying the closure, so
//! that one queue carries closures of any output type; how it builds, adds and streams.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::builder::Builder;
use crate::cell::{drop_quietly, Control};
use crate::done::TaskError;
use crate::engine::{Engine, Job, Ran, RunContext};
use crate::error::{AddError, BuildError};
use crate::pool::{Kind, Pool, Runs, ThreadPool};
use crate::stream::Stream;
use crate::submit::{Submit, Wrap};
use crate::task::Task;
use crate::work::Work;

/// A closure that never ran, handed back by `cancel_all` and `shutdown_now`.
type Unrun = Box<dyn FnOnce() + Send>;

impl Kind for Unrun {
    type Input = Unrun;
}

impl Runs for Unrun {
    type Job = Closure;

    fn input(input: <Self::Job as Job>::Input) -> <Self as Kind>::Input {
        input
    }
}

/// A closure's work, type-erased so that one queue carries closures of any output type.
pub(crate) struct Closure(Box<dyn Body>);

/// What the engine needs of a closure's work, whatever its types.
trait Body: Send {
    fn control(&self) -> &dyn Control;
    fn control_arc(&self) -> Arc<dyn Control>;
    fn run(self: Box<Self>, cx: &RunContext<'_, Closure>) -> Ran;
    fn into_unrun(self: Box<Self>) -> Unrun;
    fn spare(&self) -> Option<Box<dyn Body>>;
    fn again_after(&self, error: &TaskError) -> Option<Duration>;
    /// For handing the closure back to the caller when an add is refused.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<F, T> Body for Work<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn control(&self) -> &dyn Control {
        Work::control(self)
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.cell.clone()
    }

    fn run(self: Box<Self>, cx: &RunContext<'_, Closure>) -> Ran {
        Work::run(*self, cx, |f| f())
    }

    fn into_unrun(self: Box<Self>) -> Unrun {
        let f = self.item;
        Box::new(move || drop_quietly(f()))
    }

    fn spare(&self) -> Option<Box<dyn Body>> {
        Work::spare(self).map(|spare| Box::new(spare) as Box<dyn Body>)
    }

    fn again_after(&self, error: &TaskError) -> Option<Duration> {
        Work::again_after(self, error)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Job for Closure {
    type Runner = ();
    type Input = Unrun;

    fn control(&self) -> &dyn Control {
        self.0.control()
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.0.control_arc()
    }

    fn run(self, _: &(), cx: &RunContext<'_, Self>) -> Ran {
        self.0.run(cx)
    }

    fn into_input(self) -> Unrun {
        self.0.into_unrun()
    }

    fn spare(&self) -> Option<Self> {
        self.0.spare().map(Closure)
    }

    fn again_after(&self, error: &TaskError) -> Option<Duration> {
        self.0.again_after(error)
    }
}

/// A `ThreadPool` boxes its work, and unboxes the closure of a refused add.
fn wrap<F, T>() -> Wrap<Unrun, F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Wrap {
        into_job: |work| Closure(Box::new(work)),
        from_job: |job| {
            *job.0
                .into_any()
                .downcast::<Work<F, T>>()
                .expect("a refused job is the one just built")
        },
    }
}

/// A `ThreadPool`: any closure per task.
impl Pool<Box<dyn FnOnce() + Send>> {
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

    /// Starts a [`Submit`] for the closure `f` — the same chain as an `AsyncPool`'s: a key, a
    /// deadline, retries (for a closure that is `Clone`, so that it can run again), a tag, then
    /// `add`, `try_add`, `add_to` or `try_add_to`. A refused add hands the closure back, unrun.
    /// [`spawn`](Pool::spawn) is its short form.
    ///
    /// ```
    /// use slowpool::{Mailbox, Retry, TaskError, ThreadPool};
    /// use crossbeam_channel::unbounded;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
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
    ///
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let flaky = { let calls = calls.clone(); move || if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err("busy") } else { Ok(7) } };
    /// let ms = Duration::from_millis(1);
    /// let (mailbox, results): (Mailbox<Result<u32, &str>, &str>, _) = unbounded();
    /// pool.task(flaky).retry(Retry::attempts(3).backoff(ms, ms)).tag("flaky").add_to(&mailbox)?;
    /// let done = results.recv()?;
    /// assert_eq!((done.tag, done.attempts, done.result), ("flaky", 3, Ok(Ok(7))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task<F, T>(&self, f: F) -> Submit<'_, Unrun, F, T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Submit::new(self, f, wrap())
    }

    /// Runs `f` on a worker and returns at once with a [`Task`] for its result:
    /// [`task(f).add()`](Submit::add). With a bounded queue, waits while the queue is full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(f)` once the pool is shut down: the closure is handed back, unrun.
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

    /// Starts a [`Stream`] of closures through the pool, each one task; see
    /// [`AsyncPool::stream`](Pool::stream).
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(3)?;
    /// let jobs = ["a", "bbb", "cc"].map(|s| move || s.len());
    /// let lengths: Vec<usize> = pool.stream(jobs).ordered().map(|done| done.result.unwrap()).collect();
    /// assert_eq!(lengths, [1, 3, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream<F, T, It>(&self, closures: It) -> Stream<Unrun, It::IntoIter, T>
    where
        It: IntoIterator<Item = F>,
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Stream::new(self.clone(), closures.into_iter(), wrap())
    }
}

impl Builder<ThreadPool> {
    /// Builds the pool.
    ///
    /// # Errors
    ///
    /// See [`BuildError`]: no thread is left running when a build fails.
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
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        Engine::start(self.config, |_| ()).map(Pool::from_engine)
    }
}
