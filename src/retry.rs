//! When a failed task runs again: the policy [`Retry`], and the failed [`Attempt`] its `when`
//! function sees.
//!
//! # Design
//!
//! A task added with a policy keeps a copy of its input beside each attempt (so the input is
//! `Clone`). When an attempt fails — the callback returned `Err`, panicked, or ran past its
//! deadline — the policy says how long to back off, or to give up. Backing off holds no worker:
//! the task waits on the pool's timer and re-enters through its key or the queue (the engine's
//! side is `engine/retry.rs`). The task still ends once, with the attempts it took in its
//! [`Done`](crate::Done); retrying changes neither its handle, nor its mailbox, nor its error.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::cell::drop_quietly;
use crate::done::{Failed, TaskError};

/// When and how often a failed task runs again: for callbacks that return `Result<T, E>`, set
/// with [`Submit::retry`](crate::Submit::retry) or [`Stream::retry`](crate::Stream::retry).
///
/// An attempt fails when the callback returns `Err`, panics, or is still running at its
/// deadline ([`TaskError::TimedOut`]: the next attempt does not wait for the hung one). Up to
/// [`attempts`](Retry::attempts) attempts run in all. Between them the task waits
/// `first × 2ⁿ` (capped, with jitter: each wait is drawn between half of it and all of it) on
/// the pool's timer, holding no worker. A [`when`](Retry::when) function sees each failure and
/// may give up, or choose the wait itself — to honour a server's `Retry-After`.
///
/// Retries keep to the task's key: a retried task re-enters its key's queue, so
/// `max_per_key` and `min_interval_per_key` hold for every attempt.
///
/// A task waiting to retry is still the pool's: `join` and a graceful `shutdown` (and dropping
/// the last handle) wait for its last attempt, back-off included. `shutdown_now` and
/// `shutdown_timeout` end it at once (`Cancelled`; `shutdown_now` hands its input back), and no
/// attempt backs off once they began. A `when` function that panics gives up. An input whose
/// `Clone` panics runs once, without retries.
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, Retry};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// static CALLS: AtomicU32 = AtomicU32::new(0);
/// let pool = AsyncPool::new(2, |url: String| -> Result<usize, String> {
///     match CALLS.fetch_add(1, Ordering::SeqCst) {
///         0 | 1 => Err(format!("{url}: 503")), // fails twice, then works
///         _ => Ok(url.len()),
///     }
/// })?;
/// // A `when` function reads the callback's error type: name it (`Retry::<E>`).
/// let policy = Retry::<String>::attempts(5)
///     .backoff(Duration::from_millis(1), Duration::from_millis(50))
///     .when(|attempt| match attempt.error() {
///         Failed::Callback(message) if message.ends_with("404") => None, // give up
///         _ => Some(attempt.backoff()),
///     });
/// let task = pool.task("http://a.example/".to_string()).retry(policy).add()?;
/// assert_eq!(task.recv().flat(), Ok(17));
/// assert_eq!(task.attempts(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Retry<E> {
    attempts: u32,
    backoff: Backoff,
    when: Option<Arc<WhenFn<E>>>,
}

type WhenFn<E> = dyn Fn(&Attempt<'_, E>) -> Option<Duration> + Send + Sync;

/// A failed attempt, as a [`Retry::when`] function sees it.
///
/// ```
/// use slowpool::{AsyncPool, Retry};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let policy = Retry::<&str>::attempts(3)
///     .backoff(Duration::from_millis(1), Duration::from_millis(1))
///     .when(move |attempt| {
///         log.lock().unwrap().push(format!("{}: {}", attempt.number(), attempt.error()));
///         Some(attempt.backoff())
///     });
/// let pool = AsyncPool::new(1, |n: u32| if n == 0 { panic!("zero") } else { Err::<u32, _>("odd") })?;
/// pool.task(0).retry(policy).add()?.recv().ok();
/// let seen = seen.lock().unwrap();
/// assert_eq!(*seen, ["1: task panicked: zero", "2: task panicked: zero"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Attempt<'a, E> {
    number: u32,
    error: Result<&'a E, &'a TaskError>,
    backoff: Duration,
}

impl<'a, E> Attempt<'a, E> {
    /// Returns which attempt failed: 1 for the first.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    /// use std::time::Duration;
    ///
    /// // Give up after the second failure, whatever the policy's `attempts` allow.
    /// let ms = Duration::from_millis(1);
    /// let policy = Retry::<()>::attempts(10)
    ///     .backoff(ms, ms)
    ///     .when(|attempt| (attempt.number() < 2).then(|| attempt.backoff()));
    /// let pool = AsyncPool::new(1, |_: u8| Err::<u8, ()>(()))?;
    /// let task = pool.task(0).retry(policy).add()?;
    /// assert_eq!((task.recv(), task.attempts()), (Ok(Err(())), 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Returns `Some(wait)` — the decision to try again after `wait` — and pauses the task's
    /// whole key for `wait`: none of the key's tasks starts before then, those waiting on the
    /// key and those waiting to retry (see [`Pool::pause_key`](crate::Pool::pause_key), whose
    /// rules it follows). For a server that answers one request with `429 Too Many Requests`
    /// and a `Retry-After`: its other requests would get the same answer.
    ///
    /// Only a `when` function's decision that returns it pauses; for a task without a key, or
    /// in a pool without per-key limits, it is `Some(wait)` alone. A wait past
    /// [`MAX_PAUSE`](crate::MAX_PAUSE) pauses the key for `MAX_PAUSE` (the task still waits
    /// its `wait`).
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed, Retry, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_per_key(2)
    ///     .build(|status: u16| if status == 429 { Err(status) } else { Ok(status) })?;
    /// let policy = Retry::attempts(3).when(|attempt| match attempt.error() {
    ///     Failed::Callback(429) => attempt.pause_key(Duration::from_secs(60)), // Retry-After: 60
    ///     _ => Some(attempt.backoff()),
    /// });
    /// let refused = pool.task(429).key("a.example").retry(policy).add()?;
    /// while pool.stats().paused_keys == 0 {
    ///     std::thread::yield_now();
    /// }
    /// // The 429 paused the host: its other tasks, added before or after, wait for the end.
    /// let stats = pool.key_stats(&"a.example").expect("paused");
    /// assert!(stats.paused_until.is_some());
    /// let other = pool.task(200).key("a.example").add()?;
    /// pool.shutdown_now(); // instead of waiting a minute
    /// assert_eq!(other.recv(), Err(TaskError::Cancelled));
    /// assert_eq!(refused.recv(), Err(TaskError::Cancelled));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pause_key(&self, wait: Duration) -> Option<Duration> {
        PAUSE_ASKED.with(|asked| {
            let longest = asked.get().map_or(wait, |before| before.max(wait));
            asked.set(Some(longest));
        });
        Some(wait)
    }

    /// Returns why it failed: the callback's error, or [`TaskError::Panicked`] /
    /// [`TaskError::TimedOut`]. A match on it reaches inside the callback's error with one
    /// dereference (`Some(*retry_after)`).
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed, Retry, TaskError};
    /// use std::time::Duration;
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum FetchError { NotFound, Busy { retry_after: Duration } }
    ///
    /// let policy = Retry::<FetchError>::attempts(4).when(|attempt| match attempt.error() {
    ///     Failed::Callback(FetchError::NotFound) => None,
    ///     Failed::Callback(FetchError::Busy { retry_after }) => Some(*retry_after),
    ///     Failed::Task(TaskError::TimedOut) if attempt.number() >= 2 => None,
    ///     _ => Some(attempt.backoff()),
    /// });
    /// let pool = AsyncPool::new(1, |busy: bool| -> Result<(), FetchError> {
    ///     Err(if busy { FetchError::Busy { retry_after: Duration::from_millis(1) } } else { FetchError::NotFound })
    /// })?;
    /// let (busy, missing) = (pool.task(true).retry(policy.clone()).add()?, pool.task(false).retry(policy).add()?);
    /// assert_eq!(busy.recv(), Ok(Err(FetchError::Busy { retry_after: Duration::from_millis(1) })));
    /// assert_eq!((busy.attempts(), missing.recv().is_ok(), missing.attempts()), (4, true, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn error(&self) -> Failed<&'a E> {
        match self.error {
            Ok(error) => Failed::Callback(error),
            Err(error) => Failed::Task(error.clone()),
        }
    }

    /// Returns the wait the policy would choose: return `Some(attempt.backoff())` to keep it.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed, Retry};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// // Twice the policy's wait after a panic or a timeout.
    /// let waits = Arc::new(Mutex::new(Vec::new()));
    /// let seen = waits.clone();
    /// let ms = Duration::from_millis(1);
    /// let policy = Retry::<()>::attempts(3).backoff(ms, ms).jitter(false).when(move |attempt| {
    ///     let wait = attempt.backoff();
    ///     let wait = if matches!(attempt.error(), Failed::Task(_)) { wait * 2 } else { wait };
    ///     seen.lock().unwrap().push(wait);
    ///     Some(wait)
    /// });
    /// let pool = AsyncPool::new(1, |n: u8| if n == 0 { panic!("zero") } else { Err::<u8, ()>(()) })?;
    /// pool.task(0).retry(policy.clone()).add()?.recv().ok();
    /// pool.task(1).retry(policy).add()?.recv().ok();
    /// assert_eq!(*waits.lock().unwrap(), [2 * ms, 2 * ms, ms, ms]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

impl<E> Retry<E> {
    /// Returns a policy of up to `attempts` attempts in all (the first one included; 0 is taken
    /// as 1, which only keeps the input). Back-off: 100 ms, doubling, capped at 30 s, with
    /// jitter; every failure is retried.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |n: u32| if n % 2 == 0 { Ok(n) } else { Err("odd") })?;
    /// let policy = Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(4));
    /// let task = pool.task(7).retry(policy).add()?;
    /// assert_eq!(task.recv(), Ok(Err("odd"))); // it never works
    /// assert_eq!(task.attempts(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attempts(attempts: u32) -> Retry<E> {
        Retry {
            attempts: attempts.max(1),
            backoff: Backoff {
                first: Duration::from_millis(100),
                cap: Duration::from_secs(30),
                jitter: true,
            },
            when: None,
        }
    }

    /// Sets the wait after the first failure, doubling after each further one, never above
    /// `cap`.
    ///
    /// ```
    /// use slowpool::Retry;
    /// use std::time::Duration;
    /// let policy = Retry::<()>::attempts(5).backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// assert!(format!("{policy:?}").contains("50ms"));
    /// ```
    pub fn backoff(mut self, first: Duration, cap: Duration) -> Retry<E> {
        self.backoff.first = first;
        self.backoff.cap = cap.max(first);
        self
    }

    /// Draws each wait between half of it and all of it (`true`, the default), so tasks that
    /// failed together do not all come back at once; `false`: waits exactly.
    ///
    /// ```
    /// use slowpool::Retry;
    /// use std::time::Duration;
    /// let ms = Duration::from_millis(1);
    /// let exact = Retry::<()>::attempts(3).backoff(ms, ms).jitter(false);
    /// assert!(format!("{exact:?}").contains("jitter: false"));
    /// ```
    pub fn jitter(mut self, jitter: bool) -> Retry<E> {
        self.backoff.jitter = jitter;
        self
    }

    /// Decides about each failure, within the attempts allowed: returns the wait before the
    /// next attempt, or `None` to give up — on errors that will not go away, or to wait as long
    /// as the server asked. See [`Attempt`].
    ///
    /// ```
    /// use slowpool::{AsyncPool, Failed, Retry};
    ///
    /// let pool = AsyncPool::new(1, |code: u16| if code == 200 { Ok(()) } else { Err(code) })?;
    /// let policy = Retry::attempts(5).when(|attempt| match attempt.error() {
    ///     Failed::Callback(404) => None, // will not go away
    ///     _ => Some(attempt.backoff()),
    /// });
    /// let task = pool.task(404).retry(policy).add()?;
    /// assert_eq!((task.recv(), task.attempts()), (Ok(Err(404)), 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn when<F>(mut self, decide: F) -> Retry<E>
    where
        F: Fn(&Attempt<'_, E>) -> Option<Duration> + Send + Sync + 'static,
    {
        self.when = Some(Arc::new(decide));
        self
    }

    /// The wait after failed attempt `number` (1-based), or `None` to give up.
    fn decide(&self, number: u32, error: Result<&E, &TaskError>) -> Option<Duration> {
        if number >= self.attempts {
            return None;
        }
        let backoff = self.backoff.after(u64::from(number));
        match &self.when {
            None => Some(backoff),
            Some(when) => when(&Attempt {
                number,
                error,
                backoff,
            }),
        }
    }
}

impl<E> Clone for Retry<E> {
    fn clone(&self) -> Self {
        Retry {
            attempts: self.attempts,
            backoff: self.backoff,
            when: self.when.clone(),
        }
    }
}

impl<E> fmt::Debug for Retry<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("attempts", &self.attempts)
            .field("first", &self.backoff.first)
            .field("cap", &self.backoff.cap)
            .field("jitter", &self.backoff.jitter)
            .field("when", &self.when.is_some())
            .finish()
    }
}

thread_local! {
    /// The key pause a `when` function asked for with `Attempt::pause_key`, read by the engine
    /// right after the policy returns (`asking_pause`). A thread-local, not a field of the
    /// policy's result: the policy is erased behind `PolicyFn` in every job type, and this one
    /// extra answer lives only for the length of one synchronous call on one thread.
    static PAUSE_ASKED: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// Runs a retry decision and returns it with the key pause it asked for, if any.
pub(crate) fn asking_pause<R>(decide: impl FnOnce() -> R) -> (R, Option<Duration>) {
    PAUSE_ASKED.with(|asked| asked.set(None));
    let decision = decide();
    (decision, PAUSE_ASKED.with(|asked| asked.take()))
}

/// The erased policy a task carries: `(attempt, result) → wait before the next attempt`.
pub(crate) type PolicyFn<O> = dyn Fn(u32, Result<&O, &TaskError>) -> Option<Duration> + Send + Sync;

/// Turns a policy over `E` into one over the callback's output `Result<T, E>`. A `when`
/// function that panics gives up: the task ends with the failure it was asked about.
pub(crate) fn policy_fn<T, E: 'static>(policy: Retry<E>) -> Arc<PolicyFn<Result<T, E>>> {
    Arc::new(move |number, result| {
        let decide = || match result {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => policy.decide(number, Ok(error)),
            Err(error) => policy.decide(number, Err(error)),
        };
        panic::catch_unwind(AssertUnwindSafe(decide)).unwrap_or_else(|payload| {
            drop_quietly(payload);
            None
        })
    })
}
