//! The [`AsyncPool`] face: one callback, many inputs — the Elixir original's model. What it
//! queues is a [`Work`] carrying the input (no box per task); how it builds, adds and streams.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::builder::Builder;
use crate::cell::Control;
use crate::context::{self, with_context, Context};
use crate::done::{Mailbox, TaskError};
use crate::engine::{Engine, Job, Ran, RunContext};
use crate::error::{AddError, BuildError};
use crate::id::TaskId;
use crate::pool::{AsyncPool, Kind, Pool, Runs};
use crate::stream::Stream;
use crate::submit::{Submit, Wrap};
use crate::task::Task;
use crate::token::CancelToken;
use crate::work::Work;

impl<I: Send + 'static, O: Send + 'static> Kind for fn(I) -> O {
    type Input = I;
}

impl<I: Send + 'static, O: Send + 'static> Runs for fn(I) -> O {
    type Job = Work<I, O>;

    fn input(input: <Self::Job as Job>::Input) -> <Self as Kind>::Input {
        input
    }
}

type PlainFn<I, O> = dyn Fn(I) -> O + Send + Sync;
type ContextFn<I, O> = dyn Fn(I, &CancelToken) -> O + Send + Sync;

/// The callback every worker of an `AsyncPool` runs.
pub(crate) enum Callback<I, O> {
    Plain(Box<PlainFn<I, O>>),
    /// Built with `build_with`: it gets a [`Context`] (see `context.rs`).
    WithContext(Box<ContextFn<I, O>>),
}

impl<I: Send + 'static, O: Send + 'static> Job for Work<I, O> {
    type Runner = Callback<I, O>;
    type Input = I;

    fn control(&self) -> &dyn Control {
        &*self.cell
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.cell.clone()
    }

    fn run(self, callback: &Callback<I, O>, cx: &RunContext<'_, Self>) -> Ran {
        match callback {
            Callback::Plain(f) => Work::run(self, cx, f),
            Callback::WithContext(f) => {
                let token = CancelToken::new(self.cell.clone(), cx.stopping().clone());
                Work::run(self, cx, |input| f(input, &token))
            }
        }
    }

    fn into_input(self) -> I {
        self.item
    }

    #[inline]
    fn spare(&self) -> Option<Self> {
        Work::spare(self)
    }

    fn again_after(&self, error: &TaskError) -> Option<Duration> {
        Work::again_after(self, error)
    }

    fn worker_leaves(callback: &Callback<I, O>) {
        if let Callback::WithContext(_) = callback {
            // The worker's state, quietly.
            context::release();
        }
    }
}

/// An `AsyncPool` queues its work as it is.
fn wrap<I: Send + 'static, O: Send + 'static>() -> Wrap<fn(I) -> O, I, O> {
    Wrap {
        into_job: |work| work,
        from_job: |job| job,
    }
}

/// An `AsyncPool`: one callback, many inputs.
impl<I: Send + 'static, O: Send + 'static> Pool<fn(I) -> O> {
    /// Builds a fixed pool of `max_workers` threads running `callback`.
    ///
    /// Name the input's type in the closure: `|url: String| fetch(&url)`. Without it
    /// (`|url| fetch(&url)`) the compiler picks the input type from the first use it sees,
    /// which for `&url` is `str` — and fails with "the size for values of type `str` cannot
    /// be known at compilation time". A function name (`AsyncPool::new(8, fetch)`) needs no
    /// annotation.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroWorkers`] for 0 workers; [`BuildError::Spawn`] if the operating system
    /// refuses a thread (the threads already started are stopped first).
    ///
    /// ```
    /// use slowpool::{AsyncPool, BuildError};
    ///
    /// let pool = AsyncPool::new(3, |s: String| s.len())?;
    /// assert_eq!(pool.add_task("abc".to_string())?.recv(), Ok(3));
    /// assert!(matches!(AsyncPool::new(0, |s: String| s.len()), Err(BuildError::ZeroWorkers)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new<F>(max_workers: usize, callback: F) -> Result<AsyncPool<I, O>, BuildError>
    where
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        AsyncPool::builder()
            .max_workers(max_workers)
            .build(callback)
    }

    /// Returns a [`Builder`] for a pool whose settings are not the defaults.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(16).build(|n: u32| n * 2)?;
    /// assert_eq!(pool.add_task(4)?.recv(), Ok(8));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> Builder<AsyncPool<I, O>> {
        Builder::new()
    }

    /// Starts a [`Submit`] for `input`: say how its task runs (`.key(..)`, `.timeout(..)`,
    /// `.retry(..)`), tag it (`.tag(..)`), and where its ending goes (`.add()`, `.try_add()`,
    /// `.add_to(..)`, `.try_add_to(..)`). [`add_task`](Pool::add_task) and
    /// [`add_task_to`](Pool::add_task_to) are its short forms.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(2)
    ///     .max_per_key(1)
    ///     .build(|ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms })?;
    /// let quick = pool.task(1).key("host-a").timeout(Duration::from_secs(10)).add()?;
    /// let stuck = pool.task(60_000).key("host-b").timeout(Duration::from_millis(10)).try_add()?;
    /// assert_eq!(quick.recv(), Ok(1));
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task(&self, input: I) -> Submit<'_, fn(I) -> O, I, O> {
        Submit::new(self, input, wrap())
    }

    /// Adds an input and returns at once with a [`Task`] that will receive the callback's
    /// result: [`task(input).add()`](Submit::add). Never waits for a worker; with a bounded
    /// queue ([`queue_capacity`](Builder::queue_capacity)) it waits while the queue is full.
    ///
    /// Tasks start in the order they were added; results arrive in the order tasks finish.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(input)` once the pool is shut down (also for an add blocked on a full
    /// queue when the shutdown happens). The input is handed back.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |word: String| -> Result<usize, String> {
    ///     if word.is_empty() { Err("empty".into()) } else { Ok(word.len()) }
    /// })?;
    /// let long = pool.add_task("slowpool".to_string())?;
    /// let empty = pool.add_task(String::new())?;
    /// assert_eq!(long.recv(), Ok(Ok(8))); // Ok: the task ended; Ok(8): what the callback returned
    /// assert_eq!(empty.recv(), Ok(Err("empty".to_string())));
    ///
    /// pool.shutdown();
    /// let refused = pool.add_task("late".to_string()).unwrap_err();
    /// assert_eq!(refused.into_inner(), "late"); // the input comes back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task(&self, input: I) -> Result<Task<O>, AddError<I>> {
        self.task(input).add()
    }

    /// Adds an input whose ending is sent to `mailbox` as a [`Done`](crate::Done) when the
    /// task ends — the Elixir original's `{ref, value}` message:
    /// [`task(input).add_to(mailbox)`](Submit::add_to). Returns the task's id at once.
    ///
    /// # Errors
    ///
    /// As [`add_task`](Pool::add_task).
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::new(2, |s: String| s.len())?;
    /// let (mailbox, results): (Mailbox<usize>, _) = unbounded();
    /// let id = pool.add_task_to("abcd".into(), &mailbox)?;
    /// let done = results.recv()?;
    /// assert_eq!((done.id, done.result), (id, Ok(4)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task_to(&self, input: I, mailbox: &Mailbox<O>) -> Result<TaskId, AddError<I>> {
        self.task(input).add_to(mailbox)
    }

    /// Starts a [`Stream`] of `inputs` through the pool: each item is added as it is pulled,
    /// at most [`in_flight`](Stream::in_flight) outstanding, and each task's [`Done`](crate::Done)
    /// is yielded as it ends (or, [`ordered`](Stream::ordered), in input order). Options:
    /// keys, retries, deadlines, inputs kept — in any combination.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |n: u64| n * n)?;
    /// let squares: Vec<u64> = pool
    ///     .stream(1..=5)
    ///     .ordered()
    ///     .map(|done| done.result.unwrap())
    ///     .collect();
    /// assert_eq!(squares, [1, 4, 9, 16, 25]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream<It>(&self, inputs: It) -> Stream<fn(I) -> O, It::IntoIter, O>
    where
        It: IntoIterator<Item = I>,
    {
        Stream::new(self.clone(), inputs.into_iter(), wrap())
    }
}

impl<I: Send + 'static, O: Send + 'static> Builder<AsyncPool<I, O>> {
    /// Builds the pool; every worker runs `callback` on the inputs it takes.
    ///
    /// As for [`AsyncPool::new`](Pool::new), name the input's type in a closure
    /// (`|url: String|`).
    ///
    /// # Errors
    ///
    /// See [`BuildError`]: no thread is left running when a build fails.
    ///
    /// ```
    /// use slowpool::{AsyncPool, BuildError};
    ///
    /// let pool = AsyncPool::builder().max_workers(2).build(|s: String| s.to_uppercase())?;
    /// assert_eq!(pool.add_task("ok".into())?.recv().as_deref(), Ok("OK"));
    ///
    /// let refused = AsyncPool::builder().max_workers(0).build(|s: String| s);
    /// assert!(matches!(refused, Err(BuildError::ZeroWorkers)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build<F>(self, callback: F) -> Result<AsyncPool<I, O>, BuildError>
    where
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.start(|_| Callback::Plain(Box::new(callback)))
    }

    /// Builds the pool with a callback that gets a [`Context`] beside each input: its
    /// worker's own state (made by `init` on the worker's thread, by the first task the worker
    /// runs), its task's [`CancelToken`], and a handle to the pool — use any of them together.
    ///
    /// The state never leaves its thread, so it need be neither `Send` nor `Sync` (a blocking
    /// database client, a per-thread HTTP agent, a cache). It lives as long as its worker: an
    /// elastic pool's new workers make their own, a retired worker drops its own, and a thread
    /// abandoned after a timeout keeps its state while its replacement makes a new one. If
    /// `callback` panics the state is dropped (it may be half-updated) and the worker's next
    /// task makes a new one. A task run inside another's `join` on the same thread gets a fresh
    /// state of its own. A state whose `Drop` panics is dropped quietly.
    ///
    /// Prefer a client shared by all workers (captured by `callback`) when it can be shared:
    /// one HTTP agent for the pool keeps one connection pool; an agent per worker keeps one per
    /// thread.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    ///
    /// // `Rc<RefCell<_>>` is neither Send nor Sync: fine, it never leaves its worker.
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .build_with(
    ///         || Rc::new(RefCell::new(Vec::new())),
    ///         |cx, n: u32| {
    ///             let seen = cx.state();
    ///             seen.borrow_mut().push(n);
    ///             let count = seen.borrow().len();
    ///             if cx.token().is_cancelled() { 0 } else { count }
    ///         },
    ///     )?;
    /// assert_eq!(pool.add_task(7)?.recv(), Ok(1));
    /// assert_eq!(pool.add_task(8)?.recv(), Ok(2)); // the same worker, the same state
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_with<S, M, F>(self, init: M, callback: F) -> Result<AsyncPool<I, O>, BuildError>
    where
        S: 'static,
        M: Fn() -> S + Send + Sync + 'static,
        F: for<'c> Fn(&mut Context<'c, S, I, O>, I) -> O + Send + Sync + 'static,
    {
        self.start(|engine| {
            let pool = Pool::handle_of(engine.clone());
            Callback::WithContext(Box::new(with_context(init, callback, pool)))
        })
    }

    fn start(
        self,
        callback: impl FnOnce(&Weak<Engine<Work<I, O>>>) -> Callback<I, O>,
    ) -> Result<AsyncPool<I, O>, BuildError> {
        Engine::start(self.config, callback).map(Pool::from_engine)
    }
}
