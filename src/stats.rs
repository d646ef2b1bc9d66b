//! What a pool is doing: the public [`Stats`] snapshot and the counters behind it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

use crossbeam_utils::CachePadded;

/// A snapshot of a pool's workers and tasks, from `stats()`.
///
/// Counts of ended tasks (`completed`, `panicked`, `cancelled`, `timed_out`) are raised before
/// the task's result is delivered, so a caller holding a result sees it counted. The gauges
/// (`busy`, `queued`, ...) are read one after another while the pool runs, so under load they
/// are a recent picture rather than one instant.
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(3, |n: u32| n)?;
/// pool.add_task(1)?.recv()?;
/// let stats = pool.stats();
/// assert_eq!(stats.workers, 3);
/// assert_eq!(stats.completed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Worker threads of the pool (abandoned threads not included). A worker that retired (idle
    /// past `keep_alive`, or the pool shrank) is uncounted as it leaves; its OS thread may live a
    /// moment longer, so the process can briefly hold more threads than `workers + abandoned`.
    pub workers: usize,
    /// Tasks running now.
    pub busy: usize,
    /// Tasks in the queue, waiting for a worker.
    pub queued: usize,
    /// Keyed tasks held back by their key's limit or interval (not in `queued`).
    pub waiting_on_key: usize,
    /// Threads abandoned by a timeout and still running their callback.
    pub abandoned: usize,
    /// Tasks accepted since the pool was built.
    pub submitted: u64,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks whose callback panicked.
    pub panicked: u64,
    /// Tasks cancelled before they started.
    pub cancelled: u64,
    /// Tasks still running at their deadline.
    pub timed_out: u64,
    /// Failed attempts that a retry policy sent back for another try (see
    /// [`Retry`](crate::Retry)). A task retried twice counts 2; its final ending counts once
    /// above.
    pub retried: u64,
    /// Tasks waiting on the pool's timer for their next attempt (holding no worker, not in
    /// `queued`): the ones `cancel_all` and `shutdown_now` would take out and hand back now.
    pub waiting_retry: usize,
    /// Keys paused now ([`Pool::pause_key`](crate::Pool::pause_key), or a retry decision's
    /// [`Attempt::pause_key`](crate::Attempt::pause_key)): their tasks wait until the pause
    /// ends, counted in `waiting_on_key` (or `waiting_retry`).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder().max_per_key(1).build(|n: u32| n)?;
    /// pool.pause_key(&"a.example", Duration::from_secs(60))?;
    /// assert_eq!(pool.stats().paused_keys, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub paused_keys: usize,
}

/// One readable line, for a progress report: what runs and waits now, then what has ended.
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(2, |n: i32| if n < 0 { panic!("negative") } else { n })?;
/// pool.add_task(1)?.recv()?;
/// assert!(pool.add_task(-1)?.recv().is_err());
/// assert_eq!(
///     pool.stats().to_string(),
///     "2 workers (0 busy), 0 queued, 0 waiting on a key, 0 waiting to retry; \
///      2 submitted: 1 completed, 1 panicked, 0 cancelled, 0 timed out; 0 retries",
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} workers ({} busy), {} queued, {} waiting on a key, {} waiting to retry",
            self.workers, self.busy, self.queued, self.waiting_on_key, self.waiting_retry
        )?;
        if self.abandoned > 0 {
            write!(f, ", {} abandoned threads", self.abandoned)?;
        }
        if self.paused_keys > 0 {
            write!(f, ", {} paused keys", self.paused_keys)?;
        }
        write!(
            f,
            "; {} submitted: {} completed, {} panicked, {} cancelled, {} timed out; {} retries",
            self.submitted,
            self.completed,
            self.panicked,
            self.cancelled,
            self.timed_out,
            self.retried
        )
    }
}

/// The task counters of one pool.
///
/// Who raises each one, and when:
/// - `submitted`: the adding thread, before the job becomes visible to any worker, so a task is
///   never finished before it was counted as submitted;
/// - `started`: the worker that won QUEUED → RUNNING;
/// - `completed`/`panicked`/`cancelled`/`timed_out`: the engine's one ending path
///   (`engine/ending.rs`), called by whoever won the task's final state change;
/// - `waiting_on_key`: up when a keyed task is accepted (or a retry re-enters its key), down
///   when it leaves WAITING;
/// - `retried`: the ending path's back-off (`engine/retry.rs`), when an attempt fails and the
///   task goes to Backoff. How many tasks wait to retry is not counted here but by the timer
///   (`Timer::retries`, the one count of them): a task counts there only once its retry is in
///   the timer, where `cancel_all` finds it. `snapshot` takes that count once and uses it both
///   as `waiting_retry` and to tell retries from queued tasks, so no task is counted in both.
///
/// A retried task starts more than once: each back-off counts as the end of one attempt (for
/// `busy`) and as one more entry into the queue (for `queued`).
///
/// Each ended count is raised before the result is delivered; `settled` is raised after it, by
/// the same party (or by the courier, for a send it finished). `outstanding()` (submitted − settled) is what `join` and shutdown wait on,
/// so when they return every result has reached its `Task` or mailbox. It reads `settled`
/// before `submitted`, so it never underflows.
pub(crate) struct Counters {
    submitted: CachePadded<AtomicU64>,
    started: CachePadded<AtomicU64>,
    ended: CachePadded<Ended>,
    waiting_on_key: AtomicUsize,
}

#[derive(Default)]
struct Ended {
    completed: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    retried: AtomicU64,
    /// Tasks whose ending was delivered.
    settled: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            submitted: CachePadded::new(AtomicU64::new(0)),
            started: CachePadded::new(AtomicU64::new(0)),
            ended: CachePadded::new(Ended::default()),
            waiting_on_key: AtomicUsize::new(0),
        }
    }

    pub(crate) fn submitted(&self, keyed: bool) {
        if keyed {
            self.waiting_on_key.fetch_add(1, SeqCst);
        }
        self.submitted.fetch_add(1, SeqCst);
    }

    pub(crate) fn started(&self) {
        self.started.fetch_add(1, SeqCst);
    }

    /// A retried keyed task entered WAITING again.
    pub(crate) fn entered_key(&self) {
        self.waiting_on_key.fetch_add(1, SeqCst);
    }

    /// An attempt failed and the task waits to retry.
    pub(crate) fn backed_off(&self) {
        self.ended.retried.fetch_add(1, SeqCst);
    }

    /// A keyed task left WAITING (into the queue, or cancelled).
    pub(crate) fn left_key(&self) {
        self.waiting_on_key.fetch_sub(1, SeqCst);
    }

    pub(crate) fn completed(&self) {
        self.ended.completed.fetch_add(1, SeqCst);
    }

    pub(crate) fn panicked(&self) {
        self.ended.panicked.fetch_add(1, SeqCst);
    }

    pub(crate) fn cancelled(&self) {
        self.ended.cancelled.fetch_add(1, SeqCst);
    }

    pub(crate) fn timed_out(&self) {
        self.ended.timed_out.fetch_add(1, SeqCst);
    }

    /// A task's ending was delivered.
    pub(crate) fn settled(&self) {
        self.ended.settled.fetch_add(1, SeqCst);
    }

    /// Accepted tasks whose ending has not been delivered yet (waiting, queued, running, or
    /// being delivered).
    pub(crate) fn outstanding(&self) -> u64 {
        let settled = self.ended.settled.load(SeqCst);
        self.submitted.load(SeqCst).saturating_sub(settled)
    }

    /// `waiting_retry` reads the retries in the pool's timer.
    pub(crate) fn snapshot(
        &self,
        workers: usize,
        abandoned: usize,
        waiting_retry: impl Fn() -> usize,
    ) -> Stats {
        // Read in the order things happen to a task, latest first, so that each derived gauge
        // is computed from counts that were at least as large as the ones subtracted. A task
        // that moves between the reads (ends, starts, leaves the timer) could still be counted
        // twice: read again (a few times at most) until nothing moved.
        let e = &self.ended;
        let read = || {
            (
                waiting_retry(),
                e.completed.load(SeqCst),
                e.panicked.load(SeqCst),
                e.timed_out.load(SeqCst),
                e.cancelled.load(SeqCst),
                e.retried.load(SeqCst),
                self.started.load(SeqCst),
            )
        };
        let mut counts = read();
        for _ in 0..8 {
            let again = read();
            if again == counts {
                break;
            }
            counts = again;
        }
        let (waiting_retry, completed, panicked, timed_out, cancelled, retried, started) = counts;
        let waiting_on_key = self.waiting_on_key.load(SeqCst);
        let submitted = self.submitted.load(SeqCst);
        let busy = started.saturating_sub(completed + panicked + timed_out + retried);
        let queued = (submitted + retried)
            .saturating_sub(started + cancelled)
            .saturating_sub(waiting_on_key as u64 + waiting_retry as u64);
        let mut gauges = [waiting_retry as u64, queued, waiting_on_key as u64, busy];
        // Under churn the reads may still disagree by a task in flight: the gauges together
        // never count more tasks than are accepted and not ended (the earliest read gives way).
        let live = submitted.saturating_sub(completed + panicked + timed_out + cancelled);
        let mut over = gauges.iter().sum::<u64>().saturating_sub(live);
        for gauge in &mut gauges {
            let cut = over.min(*gauge);
            *gauge -= cut;
            over -= cut;
        }
        let [waiting_retry, queued, waiting_on_key, busy] = gauges;
        Stats {
            workers,
            busy: busy as usize,
            queued: queued as usize,
            waiting_on_key: waiting_on_key as usize,
            abandoned,
            submitted,
            completed,
            panicked,
            cancelled,
            timed_out,
            retried,
            waiting_retry: waiting_retry as usize,
            paused_keys: 0,
        }
    }
}
