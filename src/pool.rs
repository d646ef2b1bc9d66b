//! [`Pool`]: the one pool type, with its two faces [`AsyncPool`] (one callback, many inputs)
//! and [`ThreadPool`] (any closure per task), and the control methods both share.
//!
//! # Design
//!
//! A face is a [`Kind`]: what the pool runs. `AsyncPool<I, O>` is `Pool<fn(I) -> O>` — the
//! type parameter is its callback's signature — and `ThreadPool` is
//! `Pool<Box<dyn FnOnce() + Send>>`, the closures it runs. The control methods (`cancel`,
//! `join`, `stats`, `shutdown*`, `set_max_workers`, `handle`) are written once, here, for every
//! kind; each face adds only how work is added (`async_pool.rs`, `thread_pool.rs`).
//!
//! A `Pool` value either owns the pool (the last owning clone dropped shuts it down) or is a
//! *handle* ([`Pool::handle`]) that reaches it without keeping it alive: a callback that adds
//! work to its own pool holds a handle. Both are the same type with the same methods; a handle
//! to a pool that is gone sees a pool that is shut down.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::engine::{Engine, Job, Owner};
use crate::error::PauseError;
use crate::id::TaskId;
use crate::key_stats::KeyStats;
use crate::stats::Stats;

/// A pool of worker threads for slow, blocking work; see [`AsyncPool`] and [`ThreadPool`], its
/// two faces.
///
/// Cheap to clone: the clones share one pool, which shuts down gracefully (as
/// [`shutdown`](Pool::shutdown)) when the last owning clone is dropped. A
/// [`handle`](Pool::handle) reaches the pool without keeping it alive.
///
/// ```
/// use slowpool::{AsyncPool, ThreadPool};
///
/// let squares = AsyncPool::new(3, |n: u64| n * n)?; // one callback, many inputs
/// let closures = ThreadPool::new(2)?; // any closure per task
/// assert_eq!(squares.add_task(7)?.recv(), Ok(49));
/// assert_eq!(closures.spawn(|| "hi")?.recv(), Ok("hi"));
/// // The same control methods on both.
/// squares.join();
/// closures.join();
/// assert_eq!((squares.stats().completed, closures.stats().completed), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool<K: Kind> {
    link: Link<K::Job>,
}

/// A pool whose every worker runs one callback, each time on one input — the Elixir original's
/// model. See [`Pool::add_task`](Pool#method.add_task) and the other methods of
/// `impl<I, O> Pool<fn(I) -> O>`.
///
/// `add_task` returns at once; each result is delivered as soon as its task ends, so the
/// slowest task never holds back the others. Results go to a [`Task`](crate::Task) handle per
/// input, or to a [`Mailbox`](crate::Mailbox) the caller owns, tagged with the task's
/// [`TaskId`] (the original's `{ref, value}` message).
///
/// The type parameter of the [`Pool`] is the callback's signature; the callback itself may be
/// any `Fn(I) -> O` closure.
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool: AsyncPool<String, usize> = AsyncPool::new(3, |url: String| url.len())?;
/// let tasks: Vec<_> = ["a", "bb", "ccc"]
///     .iter()
///     .map(|url| pool.add_task(url.to_string()))
///     .collect::<Result<_, _>>()?;
/// let lengths: Vec<usize> = tasks.iter().map(|t| t.recv().unwrap()).collect();
/// assert_eq!(lengths, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type AsyncPool<I, O> = Pool<fn(I) -> O>;

/// A pool whose workers run any closure, each closure one task, on the same engine and with
/// the same guarantees as [`AsyncPool`]. See [`Pool::spawn`](Pool#method.spawn) and the other
/// methods of `impl Pool<Box<dyn FnOnce() + Send>>`.
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
pub type ThreadPool = Pool<Box<dyn FnOnce() + Send>>;

/// What a [`Pool`] runs: `fn(I) -> O` for an [`AsyncPool`] (one callback), or
/// `Box<dyn FnOnce() + Send>` for a [`ThreadPool`] (any closure). Implemented for those two only.
///
/// ```
/// use slowpool::{Kind, ThreadPool};
///
/// fn unrun<K: Kind>(pool: &slowpool::Pool<K>) -> usize {
///     pool.cancel_all().len() // the same method on either face
/// }
/// assert_eq!(unrun(&ThreadPool::new(1)?), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
// Sealed: `Runs`, the engine side, is the crate's own.
#[allow(private_bounds)]
pub trait Kind: Runs + 'static {
    /// What [`cancel_all`](Pool::cancel_all) and [`shutdown_now`](Pool::shutdown_now) hand back
    /// for each task they cancel: its input (`I`), or its closure, unrun.
    type Input: Send + 'static;
}

/// The engine side of a [`Kind`]: the job type its pool queues.
pub(crate) trait Runs {
    type Job: Job;

    /// The input a cancelled job hands back, as the kind names it.
    fn input(job: <Self::Job as Job>::Input) -> <Self as Kind>::Input
    where
        Self: Kind;
}

/// How a `Pool` value reaches its engine.
enum Link<J: Job> {
    /// It owns the pool: the last owner dropped shuts it down.
    Owner(Arc<Owner<J>>),
    /// A handle: it reaches the pool while something else keeps it alive.
    Handle(Weak<Engine<J>>),
}

impl<K: Kind> Pool<K> {
    pub(crate) fn from_engine(engine: Arc<Engine<K::Job>>) -> Pool<K> {
        Pool {
            link: Link::Owner(Arc::new(Owner(engine))),
        }
    }

    pub(crate) fn handle_of(engine: Weak<Engine<K::Job>>) -> Pool<K> {
        Pool {
            link: Link::Handle(engine),
        }
    }

    /// The engine, unless this is a handle to a pool that is gone.
    pub(crate) fn engine(&self) -> Option<Cow<'_, Arc<Engine<K::Job>>>> {
        match &self.link {
            Link::Owner(owner) => Some(Cow::Borrowed(&owner.0)),
            Link::Handle(weak) => weak.upgrade().map(Cow::Owned),
        }
    }

    /// How a feeder (a stream, the Redis worker) gives up on a task it added: cancelled if it
    /// has not started; if it runs, it makes no further attempt.
    pub(crate) fn forgetter(&self) -> impl Fn(TaskId) + Send + 'static {
        let pool = self.handle();
        move |id| {
            if let Some(engine) = pool.engine() {
                engine.forget_id(id);
            }
        }
    }

    /// Cancels the task with this id if it has not started (or waits to retry): it never runs
    /// (again), and its ending is `Err(TaskError::Cancelled)`. Returns `false` if it is
    /// running, has ended, or is unknown.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox, TaskError};
    /// use crossbeam_channel::{bounded, unbounded};
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u32| { let _ = gate.recv(); n })?;
    /// let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    /// let running = pool.add_task_to(1, &mailbox)?; // takes the only worker
    /// let queued = pool.add_task_to(2, &mailbox)?;
    /// assert!(pool.cancel(queued));
    /// let cancelled = results.recv()?;
    /// assert_eq!((cancelled.id, cancelled.result), (queued, Err(TaskError::Cancelled)));
    /// release.send(())?;
    /// assert_eq!(results.recv()?.result, Ok(1));
    /// assert!(!pool.cancel(running)); // it has ended
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, id: TaskId) -> bool {
        self.engine().is_some_and(|engine| engine.cancel_id(id))
    }

    /// Cancels every task that has not started (or waits to retry), without shutting down,
    /// and hands back what each would have run, in the order they were added: the inputs of
    /// an [`AsyncPool`]; the closures of a [`ThreadPool`], unrun (calling one runs it on the
    /// calling thread; its result goes nowhere, since its task already ended). Each cancelled
    /// task's ending is `Err(TaskError::Cancelled)`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u32| { let _ = gate.recv(); n })?;
    /// let running = pool.add_task(1)?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = [pool.add_task(2)?, pool.add_task(3)?];
    /// assert_eq!(pool.cancel_all(), vec![2, 3]);
    /// assert_eq!(queued[0].recv(), Err(TaskError::Cancelled));
    /// release.send(())?;
    /// assert_eq!(running.recv(), Ok(1));
    /// let later = pool.add_task(4)?; // the pool is still open
    /// release.send(())?;
    /// assert_eq!(later.recv(), Ok(4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel_all(&self) -> Vec<K::Input> {
        self.engine().map_or_else(Vec::new, |engine| {
            engine.cancel_all().into_iter().map(K::input).collect()
        })
    }

    /// Blocks until no task is queued, running, or waiting to retry.
    ///
    /// Every ending has been delivered when `join` returns: a mailbox holds them all, and each
    /// `Task` has its result ready. Many threads may join at once; each returns at a moment
    /// when the pool was quiet, even if another joiner adds work as soon as it wakes.
    ///
    /// Called from inside a task of this pool, it cannot wait for itself: it waits for every
    /// other task except those also blocked in `join` on a worker, and those that a joining
    /// task's own key holds back (they cannot start before it ends); meanwhile it runs queued
    /// tasks on the calling thread, so it never deadlocks for lack of free workers. A joining
    /// task that times out stops excusing the others at once.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let total = Arc::new(AtomicU64::new(0));
    /// let sum = total.clone();
    /// let pool = AsyncPool::new(4, move |n: u64| { sum.fetch_add(n, Ordering::SeqCst); })?;
    /// for n in 1..=100 {
    ///     pool.add_task(n)?; // fire and forget: the Task is dropped
    /// }
    /// pool.join();
    /// assert_eq!(total.load(Ordering::SeqCst), 5050);
    /// assert_eq!(pool.stats().completed, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) {
        if let Some(engine) = self.engine() {
            engine.join();
        }
    }

    /// Returns a snapshot of the pool's workers and tasks (see [`Stats`]); all zero for a
    /// handle to a pool that is gone.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(2, |n: i32| if n < 0 { panic!("negative") } else { n })?;
    /// pool.add_task(1)?.recv()?;
    /// assert!(pool.add_task(-1)?.recv().is_err());
    /// let stats = pool.stats();
    /// assert_eq!((stats.workers, stats.submitted), (2, 2));
    /// assert_eq!((stats.completed, stats.panicked), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.engine()
            .map_or_else(Stats::default, |engine| engine.stats())
    }

    /// Returns what the pool's key table knows of `key` now (see [`KeyStats`]): `None` for a
    /// key with no tasks that is not paused, and in a pool without per-key limits.
    ///
    /// The key is hashed as `.key(k)` hashes it: `&"host"` and `&String::from("host")` are the
    /// same key. It takes the table's lock for a moment (one lookup, and a count of the key's
    /// waiting tasks).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_per_key(2).build(|n: u32| n)?;
    /// let tasks: Vec<_> = (0..5).map(|n| pool.task(n).key("a.example").add()).collect::<Result<_, _>>()?;
    /// let stats = pool.key_stats(&"a.example");
    /// assert!(stats.is_none() || stats.is_some_and(|s| s.active <= 2 && s.active + s.waiting <= 5));
    /// for task in tasks { task.recv()?; }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key_stats<H: Hash + ?Sized>(&self, key: &H) -> Option<KeyStats> {
        let engine = self.engine()?;
        let hash = engine.key_of(&key)?;
        engine.key_view(hash).map(KeyStats::from)
    }

    /// Returns the `n` keys with the most tasks (in the queue, running, or waiting on their
    /// key), the most first; fewer if fewer keys have tasks, none without per-key limits.
    ///
    /// The pool keeps hashes, not keys: tell the keys apart by [`KeyStats::hash`]. One pass
    /// over the key table under its lock, keeping `n` keys at a time: the memory grows with `n`,
    /// not with the number of keys, and the time with the number of keys the pool knows now
    /// (those with tasks, or within their interval, or paused).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .max_per_key(1)
    ///     .build(move |n: u32| { let _ = gate.recv(); n })?;
    /// let tasks: Vec<_> = [("a", 1), ("b", 2), ("b", 3), ("b", 4)]
    ///     .into_iter()
    ///     .map(|(host, n)| pool.task(n).key(host).add())
    ///     .collect::<Result<_, _>>()?;
    /// let busiest = pool.busiest_keys(1);
    /// assert_eq!(busiest.len(), 1);
    /// assert_eq!(busiest[0].hash, pool.key_stats(&"b").unwrap().hash);
    /// assert_eq!(busiest[0].active + busiest[0].waiting, 3);
    /// for _ in 0..4 { release.send(())?; }
    /// for task in tasks { task.recv()?; }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn busiest_keys(&self, n: usize) -> Vec<KeyStats> {
        self.engine().map_or_else(Vec::new, |engine| {
            engine
                .busiest_keys(n)
                .into_iter()
                .map(KeyStats::from)
                .collect()
        })
    }

    /// Holds every task of `key` for `pause`: none of them starts before the pause ends —
    /// those waiting on the key, those added later, and those waiting to retry (they come back
    /// through their key). Returns when the key's pause ends. For a host that answered
    /// `429 Too Many Requests`; a retry decision can do the same with
    /// [`Attempt::pause_key`](crate::Attempt::pause_key).
    ///
    /// What it does not hold: tasks already running, and those the key had already let into
    /// the pool's queue (at most `max_per_key`; with `min_interval_per_key`, at most one
    /// that has not started). A pause never shortens another: the later end wins.
    ///
    /// - A pause of zero changes nothing (it returns the end of the key's pause, or now).
    /// - A key with no tasks is paused all the same: its tasks added before the end wait.
    /// - `join()` and a graceful `shutdown` wait for a paused key's tasks, pause included;
    ///   `cancel`, `cancel_all`, `shutdown_now` and `shutdown_timeout` end them as any others.
    ///
    /// # Errors
    ///
    /// [`PauseError::NoKeys`] in a pool without per-key limits (keys have no effect there),
    /// [`PauseError::ShutDown`] once the pool is shut down, [`PauseError::TooLong`] past
    /// [`MAX_PAUSE`](crate::MAX_PAUSE).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::time::{Duration, Instant};
    ///
    /// let pool = AsyncPool::builder().max_per_key(2).build(|n: u32| n)?;
    /// let until = pool.pause_key(&"a.example", Duration::from_millis(50))?;
    /// let task = pool.task(1).key("a.example").add()?;
    /// assert_eq!(task.recv(), Ok(1));
    /// assert!(Instant::now() >= until, "it waited for the pause");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pause_key<H: Hash + ?Sized>(
        &self,
        key: &H,
        pause: Duration,
    ) -> Result<Instant, PauseError> {
        let engine = self.engine().ok_or(PauseError::ShutDown)?;
        let hash = engine.key_of(&key).ok_or(PauseError::NoKeys)?;
        engine.pause_key(hash, pause)
    }

    /// Changes the number of workers: growing starts threads at once (for an elastic pool,
    /// allows more on demand); shrinking retires workers as they finish their current task —
    /// no worker takes a new task while more than `max_workers` live.
    ///
    /// Returns `false`, changing nothing, for 0, for more than
    /// [`MAX_WORKERS`](crate::MAX_WORKERS), or on a pool that is shut down. If the operating
    /// system refuses threads while growing, the pool goes on with the workers it has.
    ///
    /// ```
    /// use slowpool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2)?;
    /// assert!(pool.set_max_workers(8));
    /// assert_eq!(pool.max_workers(), 8);
    /// assert!(!pool.set_max_workers(0)); // refused, nothing changed
    /// assert_eq!(pool.max_workers(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_max_workers(&self, max_workers: usize) -> bool {
        self.engine()
            .is_some_and(|engine| engine.set_max_workers(max_workers))
    }

    /// Returns the pool's current maximum number of workers (0 for a handle to a pool that is
    /// gone).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(3, |n: u8| n)?;
    /// assert_eq!(pool.max_workers(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_workers(&self) -> usize {
        self.engine().map_or(0, |engine| engine.max_workers())
    }

    /// Stops accepting work, runs everything already accepted (retries included), and joins
    /// every worker.
    ///
    /// Idempotent. Called from inside one of this pool's tasks, it does not wait (the calling
    /// task could never end): it returns at once and the workers finish the work on their own.
    ///
    /// ```
    /// use slowpool::{AddError, AsyncPool};
    ///
    /// let pool = AsyncPool::new(2, |n: u32| n * 10)?;
    /// let tasks: Vec<_> = (1..=5).map(|n| pool.add_task(n)).collect::<Result<_, _>>()?;
    /// pool.shutdown(); // everything accepted has run when it returns
    /// let results: Vec<_> = tasks.iter().map(|t| t.recv()).collect();
    /// assert_eq!(results, [Ok(10), Ok(20), Ok(30), Ok(40), Ok(50)]);
    /// assert!(matches!(pool.add_task(6), Err(AddError::ShutDown(6))));
    /// assert_eq!(pool.stats().workers, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) {
        if let Some(engine) = self.engine() {
            engine.shutdown();
        }
    }

    /// Stops accepting work and cancels every task that has not started (or waits to retry),
    /// handing back what each would have run, as [`cancel_all`](Pool::cancel_all) does. Raises
    /// every [`CancelToken`](crate::CancelToken), then waits for the running tasks to end and
    /// joins the workers (not from inside a task, as for `shutdown`).
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u32| { let _ = gate.recv(); n })?;
    /// let running = pool.add_task(1)?;
    /// while !running.is_running() { std::thread::yield_now() }
    /// let queued = pool.add_task(2)?;
    /// let watcher = pool.handle();
    /// std::thread::spawn(move || {
    ///     // Let the running task finish once `shutdown_now` has cancelled the queued one.
    ///     while watcher.stats().cancelled == 0 { std::thread::yield_now() }
    ///     release.send(())
    /// });
    /// assert_eq!(pool.shutdown_now(), vec![2]);
    /// assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    /// assert_eq!(running.recv(), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_now(&self) -> Vec<K::Input> {
        self.engine().map_or_else(Vec::new, |engine| {
            engine.shutdown_now().into_iter().map(K::input).collect()
        })
    }

    /// Shuts down gracefully for at most `timeout`; then cancels what is still queued or
    /// waiting to retry (its inputs are dropped; each ends `Cancelled`), ends the tasks still
    /// running with `TimedOut` and abandons their threads. Returns `true` if everything ended
    /// in time. It returns in about `timeout` whatever the threads do: a worker still busy
    /// after the deadline (in a callback, in a full mailbox nobody reads, in a per-worker
    /// state's `Drop`) is left to finish on its own.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use crossbeam_channel::bounded;
    /// use std::time::Duration;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u32| { let _ = gate.recv(); n })?;
    /// let stuck = pool.add_task(1)?;
    /// while !stuck.is_running() { std::thread::yield_now() }
    /// let queued = pool.add_task(2)?;
    /// assert!(!pool.shutdown_timeout(Duration::from_millis(20))); // not everything ended
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    /// drop(release); // the abandoned thread returns and exits
    ///
    /// let quick = AsyncPool::new(2, |n: u32| n)?;
    /// let task = quick.add_task(7)?;
    /// assert!(quick.shutdown_timeout(Duration::from_secs(10)));
    /// assert_eq!(task.recv(), Ok(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> bool {
        self.engine()
            .map_or(true, |engine| engine.shutdown_timeout(timeout))
    }

    /// Returns `true` once a shutdown has begun (adds are refused from then on), and for a
    /// handle to a pool that is gone.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let handle = pool.handle();
    /// assert!(!pool.is_shut_down() && !handle.is_shut_down());
    /// pool.shutdown();
    /// assert!(pool.is_shut_down() && handle.is_shut_down());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.engine().map_or(true, |engine| engine.is_closed())
    }

    /// Returns a handle: a clone of this pool that does not keep it alive. It has every method
    /// of the pool; once the last owning clone is dropped (the pool shuts down), its adds hand
    /// the input back as `ShutDown` and it reports a pool that is shut down.
    ///
    /// A callback that adds work to its own pool (a crawler adding the links it found) holds a
    /// handle: see [`Context::pool`](crate::Context::pool). A handle made from a handle is a
    /// handle.
    ///
    /// ```
    /// use slowpool::{AddError, AsyncPool};
    ///
    /// let pool = AsyncPool::new(2, |n: u32| n + 1)?;
    /// let handle = pool.handle();
    /// assert_eq!(handle.add_task(1)?.recv(), Ok(2));
    /// drop(pool); // the last owner: the pool shuts down
    /// assert!(handle.is_shut_down());
    /// assert!(matches!(handle.add_task(2), Err(AddError::ShutDown(2))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> Pool<K> {
        let weak = match &self.link {
            Link::Owner(owner) => Arc::downgrade(&owner.0),
            Link::Handle(weak) => weak.clone(),
        };
        Pool::handle_of(weak)
    }
}

impl<K: Kind> Clone for Pool<K> {
    fn clone(&self) -> Self {
        let link = match &self.link {
            Link::Owner(owner) => Link::Owner(owner.clone()),
            Link::Handle(weak) => Link::Handle(weak.clone()),
        };
        Pool { link }
    }
}

impl<K: Kind> fmt::Debug for Pool<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("handle", &matches!(self.link, Link::Handle(_)))
            .field("stats", &self.stats())
            .finish()
    }
}
