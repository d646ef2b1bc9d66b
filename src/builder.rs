//! Configuring a pool: [`Builder`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::BuildError;

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
        if self.max_workers > crate::MAX_WORKERS {
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

/// Configures and builds a pool: [`AsyncPool::builder`](crate::AsyncPool::builder) gives a
/// `Builder<AsyncPool<I, O>>`, finished by `build(callback)`;
/// [`ThreadPool::builder`](crate::ThreadPool::builder) gives a `Builder<ThreadPool>`, finished by
/// `build()`. The settings are the same for both.
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
    _pool: PhantomData<fn() -> P>,
}

impl<P> Builder<P> {
    pub(crate) fn new() -> Builder<P> {
        Builder {
            config: Config::new(num_cpus::get()),
            _pool: PhantomData,
        }
    }

    /// Sets the number of worker threads (for an elastic pool: the most it may have).
    ///
    /// Default: the number of logical CPUs. Work that mostly waits on the network wants far
    /// more: the threads block, they do not compete for the CPU. 0 makes `build` fail with
    /// [`BuildError::ZeroWorkers`].
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.config.max_workers = max_workers;
        self
    }

    /// Makes the pool elastic: it keeps `min_workers` threads, starts more (up to
    /// `max_workers`) when work arrives and no worker is idle, and retires those above the
    /// minimum after [`keep_alive`](Builder::keep_alive) idle.
    ///
    /// Default: equal to `max_workers` (a fixed pool whose threads live as long as it does).
    /// Above `max_workers`, `build` fails with [`BuildError::MinAboveMax`].
    pub fn min_workers(mut self, min_workers: usize) -> Self {
        self.config.min_workers = Some(min_workers);
        self
    }

    /// How long an idle worker above `min_workers` waits for work before it exits.
    /// Default: 10 seconds. Only used by elastic pools.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.keep_alive = keep_alive;
        self
    }

    /// Names the worker threads `{name}-0`, `{name}-1`, ... (the timer thread, when one is
    /// needed, is `{name}-timer`). Default: `slowpool`.
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
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Bounds the queue: at most `capacity` tasks wait for a worker. While it is full,
    /// `add_task` blocks and `try_add_task` returns [`AddError::Full`](crate::AddError::Full).
    ///
    /// `queue_capacity(0)` is a rendezvous: an add waits until a worker is free to take its
    /// input (the Elixir original's behaviour). Default: unbounded.
    ///
    /// Keyed tasks held back by their key's limit do not count against the capacity: they
    /// wait in their key's own queue (see [`max_per_key`](Builder::max_per_key)).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = Some(capacity);
        self
    }

    /// Ends any task still running `timeout` after it started with `Err(TaskError::TimedOut)`,
    /// delivered at once. Time spent queued does not count. The thread cannot be killed: it is
    /// abandoned (it finishes the callback on its own and its late result is dropped) and a new
    /// worker takes its place, so the pool keeps its capacity. Default: no timeout.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Bounds the number of abandoned threads still running. Past it, timed-out tasks still
    /// report `TimedOut` at once, but their threads stay workers (busy until the callback
    /// returns) and no replacement is started. Default: `max_workers`.
    pub fn max_abandoned(mut self, max: usize) -> Self {
        self.config.max_abandoned = Some(max);
        self
    }

    /// Runs at most `n` tasks of the same key at once (see `add_task_keyed`). Tasks over the
    /// limit wait in their key's own queue without occupying a worker, so other keys use the
    /// free workers. 0 is treated as 1. Default: no limit.
    pub fn max_per_key(mut self, n: usize) -> Self {
        self.config.max_per_key = Some(n);
        self
    }

    /// Starts two tasks of the same key at least `interval` apart (politeness towards one
    /// host); other keys are unaffected. Default: no interval.
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
