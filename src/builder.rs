//! Configuring a pool: [`Builder`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{BuildError, MAX_WORKERS};

/// The settings a builder collects, shared by both kinds of pool.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_workers: usize,
    pub(crate) min_workers: Option<usize>,
    pub(crate) keep_alive: Duration,
    pub(crate) thread_name: String,
    pub(crate) stack_size: Option<usize>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_abandoned: Option<usize>,
    pub(crate) max_per_key: Option<usize>,
    pub(crate) min_interval_per_key: Option<Duration>,
}

impl Config {
    pub(crate) fn new(max_workers: usize) -> Config {
        Config {
            max_workers,
            min_workers: None,
            keep_alive: Duration::from_secs(10),
            thread_name: "slowpool".to_string(),
            stack_size: None,
            queue_capacity: None,
            task_timeout: None,
            max_abandoned: None,
            max_per_key: None,
            min_interval_per_key: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.max_workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if self.max_workers > MAX_WORKERS {
            return Err(BuildError::TooManyWorkers {
                requested: self.max_workers,
            });
        }
        if let Some(min) = self.min_workers {
            if min > self.max_workers {
                return Err(BuildError::MinAboveMax {
                    min,
                    max: self.max_workers,
                });
            }
        }
        Ok(())
    }
}

/// The default [`max_workers`](Builder::max_workers): an I/O pool's ceiling, not a standing cost.
pub(crate) const DEFAULT_MAX_WORKERS: usize = 512;

/// Configures and builds a pool: `AsyncPool::builder()` gives a `Builder<AsyncPool<I, O>>`,
/// finished by `build(callback)` or `build_with(init, callback)`; `ThreadPool::builder()` gives
/// a `Builder<ThreadPool>`, finished by `build()`. The settings are the same for both.
///
/// # Defaults
///
/// A builder whose worker counts are left alone builds an elastic pool for blocking I/O: no
/// thread at first, a new one whenever work arrives and no worker is idle, up to 512
/// ([`max_workers`](Builder::max_workers) explains the figure), each retired after
/// [`keep_alive`](Builder::keep_alive) (10 s) idle. Setting [`max_workers`](Builder::max_workers)
/// alone gives a fixed pool of that many threads; setting
/// [`min_workers`](Builder::min_workers) as well makes it elastic between the two.
///
/// # Examples
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::builder()
///     .max_workers(64)
///     .thread_name("fetch") // threads are named fetch-0, fetch-1, ...
///     .queue_capacity(1_000) // add_task blocks while 1,000 tasks wait
///     .build(|n: u64| n * 2)?;
/// assert_eq!(pool.add_task(21)?.recv(), Ok(42));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<P> {
    pub(crate) config: Config,
    /// Whether the caller chose `max_workers` / `min_workers`: a default never overrides a
    /// choice, and a choice never fails because of a default.
    max_set: bool,
    min_set: bool,
    _pool: PhantomData<fn() -> P>,
}

impl<P> Builder<P> {
    pub(crate) fn new() -> Builder<P> {
        let mut config = Config::new(DEFAULT_MAX_WORKERS);
        config.min_workers = Some(0);
        Builder {
            config,
            max_set: false,
            min_set: false,
            _pool: PhantomData,
        }
    }

    /// Sets the number of worker threads: a fixed pool of `max_workers` threads started at
    /// build, or, with [`min_workers`](Builder::min_workers), the most an elastic pool may
    /// have.
    ///
    /// Default: 512 threads, started only as work needs them (see [Defaults](Builder#defaults)).
    /// The pool exists for work that mostly waits — on the network, a disk, a database — and
    /// a thread blocked there costs memory (about 10 KiB resident), not CPU time, so the
    /// default is an I/O pool's, not the CPU count. The figures it follows: tokio's blocking
    /// pool allows 512 threads, started on demand and retired after 10 s idle; Java's
    /// `Executors.newCachedThreadPool` is unbounded, retiring after 60 s; Python's
    /// `ThreadPoolExecutor` defaults to `min(32, cpus + 4)` threads — a cap chosen for
    /// CPU-bound Python code, which on a 2-core machine allows 6 concurrent requests. The two
    /// pools with large limits start their threads lazily, and so does this default: an idle
    /// pool holds no thread.
    ///
    /// 0 makes `build` fail with [`BuildError::ZeroWorkers`], more than
    /// [`MAX_WORKERS`] with [`BuildError::TooManyWorkers`].
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().max_workers(4).build()?;
    /// assert_eq!(pool.max_workers(), 4);
    /// assert_eq!(pool.stats().workers, 4); // a fixed pool: every thread started at build
    ///
    /// let default = ThreadPool::builder().build()?;
    /// assert_eq!(default.max_workers(), 512);
    /// assert_eq!(default.stats().workers, 0); // started as work arrives
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.config.max_workers = max_workers;
        self.max_set = true;
        if !self.min_set {
            // A chosen size alone means a fixed pool of that size.
            self.config.min_workers = None;
        }
        self
    }

    /// Makes the pool elastic: it keeps `min_workers` threads (started at build), starts more,
    /// up to `max_workers`, when work arrives and no worker is idle, and retires those above
    /// the minimum after [`keep_alive`](Builder::keep_alive) idle.
    ///
    /// Default: 0 while `max_workers` is not set either, else equal to `max_workers` (a fixed
    /// pool). A minimum above a `max_workers` the caller set makes `build` fail with
    /// [`BuildError::MinAboveMax`]; without `max_workers`, the maximum is the default (512) or
    /// `min_workers` if that is larger, so `min_workers` alone never fails.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().min_workers(2).max_workers(8).build()?;
    /// assert_eq!(pool.stats().workers, 2);
    /// assert_eq!(pool.spawn(|| 6 * 7)?.recv(), Ok(42));
    ///
    /// let alone = ThreadPool::builder().min_workers(4).build()?;
    /// assert_eq!((alone.stats().workers, alone.max_workers()), (4, 512));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn min_workers(mut self, min_workers: usize) -> Self {
        self.config.min_workers = Some(min_workers);
        self.min_set = true;
        if !self.max_set {
            self.config.max_workers = DEFAULT_MAX_WORKERS.max(min_workers);
        }
        self
    }

    /// Sets how long an idle worker above `min_workers` waits for work before it exits.
    /// Default: 10 seconds. Only elastic pools retire workers.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .min_workers(0)
    ///     .max_workers(100)
    ///     .keep_alive(Duration::from_secs(30))
    ///     .build(|n: u32| n + 1)?;
    /// assert_eq!(pool.stats().workers, 0); // no thread until work arrives
    /// assert_eq!(pool.add_task(1)?.recv(), Ok(2));
    /// assert!(pool.stats().workers >= 1); // kept for 30 s of idleness
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.keep_alive = keep_alive;
        self
    }

    /// Names the worker threads `{name}-0`, `{name}-1`, ... (the timer thread, when one is
    /// needed, is `{name}-timer`). Default: `slowpool`.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().max_workers(1).thread_name("fetch").build()?;
    /// let name = pool.spawn(|| std::thread::current().name().map(String::from))?.recv()?;
    /// assert_eq!(name.as_deref(), Some("fetch-0"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.thread_name = name.into();
        self
    }

    /// Sets the stack size of worker threads, in bytes. Default: the standard library's
    /// (2 MiB, or `RUST_MIN_STACK`).
    ///
    /// A callback that needs more stack than this overflows it, and a stack overflow aborts
    /// the whole process: it cannot be caught like a panic. A size the operating system
    /// refuses makes `build` fail with [`BuildError::Spawn`].
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::builder().max_workers(2).stack_size(256 * 1024).build()?;
    /// assert_eq!(pool.spawn(|| [1u8; 64 * 1024].len())?.recv(), Ok(65_536));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Bounds the queue: at most `capacity` tasks wait for a worker. While it is full,
    /// `add` (and `add_task`) blocks and `try_add` returns
    /// [`AddError::Full`](crate::AddError::Full).
    ///
    /// `queue_capacity(0)` is a rendezvous: an add waits until a worker is free to take its
    /// input (the Elixir original's behaviour). Default: unbounded.
    ///
    /// Keyed tasks held back by their key's limit do not count against the capacity: they
    /// wait in their key's own queue (see [`max_per_key`](Builder::max_per_key)).
    ///
    /// ```
    /// use slowpool::{AddError, AsyncPool};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .queue_capacity(1)
    ///     .build(move |n: u32| { let _ = gate.recv(); n })?;
    /// let running = pool.add_task(1)?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = pool.add_task(2)?; // the one place in the queue
    /// assert!(matches!(pool.task(3).try_add(), Err(AddError::Full(3))));
    /// release.send(())?;
    /// release.send(())?;
    /// assert_eq!((running.recv(), queued.recv()), (Ok(1), Ok(2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = Some(capacity);
        self
    }

    /// Ends any task still running `timeout` after it started with `Err(TaskError::TimedOut)`,
    /// delivered at once. Time spent queued does not count. The thread cannot be killed: it is
    /// abandoned (it finishes the callback on its own and its late result is dropped) and a new
    /// worker takes its place, so the pool keeps its capacity. Default: no timeout.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use crossbeam_channel::bounded;
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(2)
    ///     .task_timeout(Duration::from_millis(50))
    ///     .build(move |stuck: bool| { if stuck { let _ = gate.recv(); } stuck })?;
    /// assert_eq!(pool.add_task(true)?.recv(), Err(TaskError::TimedOut));
    /// assert_eq!(pool.add_task(false)?.recv(), Ok(false)); // the pool kept its capacity
    /// assert_eq!(pool.stats().timed_out, 1);
    /// drop(release); // the abandoned thread returns and exits
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Bounds the number of abandoned threads still running. Past it, timed-out tasks still
    /// report `TimedOut` at once, but their threads stay workers (busy until the callback
    /// returns) and no replacement is started. Default: `max_workers`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(4)
    ///     .task_timeout(Duration::from_millis(20))
    ///     .max_abandoned(1) // at most one stuck thread left behind
    ///     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// assert_eq!(pool.add_task(200)?.recv(), Err(TaskError::TimedOut));
    /// assert_eq!(pool.add_task(0)?.recv(), Ok(()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_abandoned(mut self, max: usize) -> Self {
        self.config.max_abandoned = Some(max);
        self
    }

    /// Runs at most `n` tasks of the same key at once (see
    /// [`Submit::key`](crate::Submit::key)). Tasks over the limit wait in
    /// their key's own queue without occupying a worker, so other keys use the free workers.
    /// 0 is treated as 1. Default: no limit.
    ///
    /// The limit counts callbacks that really run: a task that timed out keeps its key until
    /// its callback returns, so hanging requests to one host never exceed the limit. Tasks held
    /// back by their key take no place in a bounded queue, and an add of one never waits for
    /// room there.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(4)
    ///     .max_per_key(1)
    ///     .build(move |page: u32| { if page == 1 { let _ = gate.recv(); } page })?;
    /// let first = pool.task(1).key("a.example").add()?;
    /// while !first.is_running() { std::thread::yield_now() }
    /// let second = pool.task(2).key("a.example").add()?; // waits for its host, not a worker
    /// let other = pool.task(3).key("b.example").add()?; // another host runs meanwhile
    /// assert_eq!(other.recv(), Ok(3));
    /// assert!(!second.is_finished());
    /// release.send(())?;
    /// assert_eq!((first.recv(), second.recv()), (Ok(1), Ok(2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_per_key(mut self, n: usize) -> Self {
        self.config.max_per_key = Some(n);
        self
    }

    /// Starts two tasks of the same key at least `interval` apart (politeness towards one
    /// host); other keys are unaffected. Default: no interval.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::time::{Duration, Instant};
    ///
    /// let interval = Duration::from_millis(20);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(4)
    ///     .min_interval_per_key(interval)
    ///     .build(|page: u32| page)?;
    /// let began = Instant::now();
    /// let a = pool.task(1).key("a.example").add()?;
    /// let b = pool.task(2).key("a.example").add()?;
    /// assert_eq!((a.recv(), b.recv()), (Ok(1), Ok(2)));
    /// assert!(began.elapsed() >= interval); // the second start waited for the interval
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn min_interval_per_key(mut self, interval: Duration) -> Self {
        self.config.min_interval_per_key = Some(interval);
        self
    }
}

impl<P> fmt::Debug for Builder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish()
    }
}
