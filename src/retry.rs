//! Retrying failed tasks: the policy ([`Retry`]), and where a retried task's ending goes
//! ([`RetryTask`], or a mailbox of [`Retried`] messages).
//!
//! # Design
//!
//! A task added with a policy keeps a copy of its input (so `I: Clone`) and the policy beside
//! each attempt. When an attempt fails — the callback returned `Err`, panicked, or ran past its
//! deadline — the policy says how long to back off, or to give up. Backing off holds no worker:
//! the task waits on the pool's timer and re-enters through its key or the queue (the engine's
//! side is `engine/retry.rs`). Its one ending says how many attempts it took, and a failure
//! hands the input back ([`Failure`]).
//!
//! Because the ending carries the input and the attempts, a retried task reports to its own
//! kind of receiver: a [`RetryTask`] handle, or a mailbox of [`Retried`] messages.

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::cell::{drop_quietly, Cell, Control, Relay, BACKOFF, QUEUED, RUNNING, WAITING};
use crate::delivery::{self, Delivered, Way};
use crate::error::{Failed, Failure, TaskError};
use crate::id::TaskId;
use crate::task::{Canceller, Task};

/// When and how often a failed task runs again: for callbacks that return `Result<T, E>`, added
/// with [`Submit::retry`](crate::Submit::retry).
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
/// `shutdown_timeout` end it at once (`Cancelled`, input handed back), and no attempt backs off
/// once they began. A `when` function that panics counts as [`Decision::GiveUp`]. An input whose
/// `Clone` panics runs once, without retries.
///
/// ```
/// use slowpool::{AsyncPool, Decision, Failed, Retry};
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
///         Failed::Callback(message) if message.ends_with("404") => Decision::GiveUp,
///         _ => Decision::Retry,
///     });
/// let done = pool.task("http://a.example/".to_string()).retry(policy).add()?.recv();
/// assert_eq!(done.attempts, 3);
/// assert_eq!(done.result.ok(), Some(17));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Retry<E> {
    attempts: u32,
    first: Duration,
    cap: Duration,
    jitter: bool,
    when: Option<Arc<WhenFn<E>>>,
}

type WhenFn<E> = dyn Fn(&Attempt<'_, E>) -> Decision + Send + Sync;

/// What a [`Retry::when`] function decides about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run again after the policy's back-off.
    Retry,
    /// Run again after this long (a server's `Retry-After`), in place of the policy's back-off.
    RetryAfter(Duration),
    /// End the task with this failure.
    GiveUp,
}

/// A failed attempt, as a [`Retry::when`] function sees it.
#[derive(Debug)]
pub struct Attempt<'a, E> {
    number: u32,
    error: Failed<&'a E>,
    backoff: Duration,
}

impl<E> Attempt<'_, E> {
    /// Which attempt failed: 1 for the first.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Why it failed: the callback's error, or [`TaskError::Panicked`] /
    /// [`TaskError::TimedOut`].
    pub fn error(&self) -> &Failed<&E> {
        &self.error
    }

    /// The wait the policy would choose ([`Decision::Retry`]).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

impl<E> Retry<E> {
    /// Up to `attempts` attempts in all (the first one included; 0 is taken as 1). Back-off:
    /// 100 ms, doubling, capped at 30 s, with jitter; every failure is retried.
    pub fn attempts(attempts: u32) -> Retry<E> {
        Retry {
            attempts: attempts.max(1),
            first: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            jitter: true,
            when: None,
        }
    }

    /// One attempt, no retry: the task only keeps its input, to hand it back with a failure
    /// (see [`Submit::keep_input`](crate::Submit::keep_input)).
    pub fn never() -> Retry<E> {
        Retry::attempts(1)
    }

    /// The wait after the first failure, doubling after each further one, never above `cap`.
    pub fn backoff(mut self, first: Duration, cap: Duration) -> Retry<E> {
        self.first = first;
        self.cap = cap.max(first);
        self
    }

    /// Draw each wait between half of it and all of it (the default), so tasks that failed
    /// together do not all come back at once. `false`: wait exactly.
    pub fn jitter(mut self, jitter: bool) -> Retry<E> {
        self.jitter = jitter;
        self
    }

    /// Decides about each failure (within the attempts allowed): give up on errors that will
    /// not go away, or wait as long as the server asked.
    ///
    /// ```
    /// use slowpool::{Decision, Failed, Retry, TaskError};
    /// use std::time::Duration;
    ///
    /// enum FetchError { NotFound, Busy { retry_after: Duration } }
    ///
    /// let policy = Retry::<FetchError>::attempts(4).when(|attempt| match attempt.error() {
    ///     Failed::Callback(FetchError::NotFound) => Decision::GiveUp,
    ///     Failed::Callback(FetchError::Busy { retry_after }) => Decision::RetryAfter(*retry_after),
    ///     Failed::Task(TaskError::TimedOut) if attempt.number() >= 2 => Decision::GiveUp,
    ///     _ => Decision::Retry,
    /// });
    /// # let _ = policy;
    /// ```
    pub fn when<F>(mut self, decide: F) -> Retry<E>
    where
        F: Fn(&Attempt<'_, E>) -> Decision + Send + Sync + 'static,
    {
        self.when = Some(Arc::new(decide));
        self
    }

    /// The wait after failed attempt `number` (1-based), or `None` to give up.
    fn decide(&self, number: u32, error: Failed<&E>) -> Option<Duration> {
        if number >= self.attempts {
            return None;
        }
        let backoff = self.backoff_after(number);
        let attempt = Attempt {
            number,
            error,
            backoff,
        };
        match self
            .when
            .as_ref()
            .map_or(Decision::Retry, |when| when(&attempt))
        {
            Decision::Retry => Some(backoff),
            Decision::RetryAfter(wait) => Some(wait),
            Decision::GiveUp => None,
        }
    }

    fn backoff_after(&self, number: u32) -> Duration {
        let doublings = number.saturating_sub(1).min(31);
        let wait = self
            .first
            .checked_mul(1 << doublings)
            .map_or(self.cap, |wait| wait.min(self.cap));
        if self.jitter {
            let half = wait / 2;
            half + half.mul_f64(random_unit())
        } else {
            wait
        }
    }
}

impl<E> Clone for Retry<E> {
    fn clone(&self) -> Self {
        Retry {
            attempts: self.attempts,
            first: self.first,
            cap: self.cap,
            jitter: self.jitter,
            when: self.when.clone(),
        }
    }
}

impl<E> fmt::Debug for Retry<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("attempts", &self.attempts)
            .field("first", &self.first)
            .field("cap", &self.cap)
            .field("jitter", &self.jitter)
            .field("when", &self.when.is_some())
            .finish()
    }
}

/// A number in [0, 1) for jitter: xorshift, seeded per thread from std's random hasher keys.
fn random_unit() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The ending of a task added with a retry policy: how many attempts it took, and its value or
/// its last failure with the input handed back. What a [`RetryTask`] receives, and what a
/// [`RetryMailbox`] gets.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retried<I, T, E> {
    /// The task.
    pub id: TaskId,
    /// Attempts that ran (0 if it was cancelled before its first).
    pub attempts: u32,
    /// The callback's value, or the last failure with the input.
    pub result: Result<T, Failure<I, E>>,
}

/// A mailbox for tasks added with a retry policy: see [`Retrying::add_to`](crate::Retrying::add_to).
pub type RetryMailbox<I, T, E> = Sender<Retried<I, T, E>>;

/// The erased policy an input carries: `(attempt, result) → wait before the next attempt`.
pub(crate) type PolicyFn<O> = dyn Fn(u32, Result<&O, &TaskError>) -> Option<Duration> + Send + Sync;

/// Turns a policy over `E` into one over the callback's output `Result<T, E>`. A `when`
/// function that panics gives up: the task ends with the failure it was asked about.
pub(crate) fn policy_fn<T, E: 'static>(policy: Retry<E>) -> Arc<PolicyFn<Result<T, E>>> {
    Arc::new(move |number, result| {
        let decide = || match result {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => policy.decide(number, Failed::Callback(error)),
            Err(error) => policy.decide(number, Failed::Task(error.clone())),
        };
        panic::catch_unwind(AssertUnwindSafe(decide)).unwrap_or_else(|payload| {
            drop_quietly(payload);
            None
        })
    })
}

/// Where a kept task's ending goes once its input is at hand again.
pub(crate) trait KeptRelay<I, O>: Relay<O> {
    fn deliver_kept(
        &self,
        id: TaskId,
        attempts: u32,
        result: Result<O, TaskError>,
        input: I,
        way: Way<'_>,
    ) -> Delivered;
}

/// Where a retried task's [`Retried`] ending goes.
pub(crate) enum Destination<I, T, E> {
    /// The caller's mailbox.
    Mailbox(Sender<Retried<I, T, E>>),
    /// The one-shot slot a [`RetryTask`] reads (a cell of its own, read through a `Task`).
    Slot(Arc<Cell<Retried<I, T, E>>>),
}

/// Delivers a retried task's ending, as a `Retried` message, to its destination.
pub(crate) struct RetryRelay<I, T, E> {
    to: Destination<I, T, E>,
}

impl<I: Send + 'static, T: Send + 'static, E: Send + 'static> RetryRelay<I, T, E> {
    pub(crate) fn new(to: Destination<I, T, E>) -> Self {
        RetryRelay { to }
    }

    fn send(&self, message: Retried<I, T, E>, way: Way<'_>) -> Delivered {
        match &self.to {
            Destination::Mailbox(tx) => delivery::send(tx, message, way),
            Destination::Slot(cell) => cell.deliver(Ok(message), way),
        }
    }

    fn message(
        id: TaskId,
        attempts: u32,
        result: Result<Result<T, E>, TaskError>,
        input: Option<I>,
    ) -> Retried<I, T, E> {
        let result = match result {
            Ok(Ok(value)) => {
                drop_quietly(input);
                Ok(value)
            }
            Ok(Err(error)) => Err(Failure {
                input,
                error: Failed::Callback(error),
            }),
            Err(error) => Err(Failure {
                input,
                error: Failed::Task(error),
            }),
        };
        Retried {
            id,
            attempts,
            result,
        }
    }
}

impl<I, T, E> Relay<Result<T, E>> for RetryRelay<I, T, E>
where
    I: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn deliver(
        &self,
        id: TaskId,
        attempts: u32,
        result: Result<Result<T, E>, TaskError>,
        way: Way<'_>,
    ) -> Delivered {
        self.send(Self::message(id, attempts, result, None), way)
    }
}

impl<I, T, E> KeptRelay<I, Result<T, E>> for RetryRelay<I, T, E>
where
    I: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn deliver_kept(
        &self,
        id: TaskId,
        attempts: u32,
        result: Result<Result<T, E>, TaskError>,
        input: I,
        way: Way<'_>,
    ) -> Delivered {
        self.send(Self::message(id, attempts, result, Some(input)), way)
    }
}

/// A task added with a retry policy: its one [`Retried`] ending arrives here once the last
/// attempt ends.
///
/// Made by [`Retrying::add`](crate::Retrying::add) /
/// [`Retrying::try_add`](crate::Retrying::try_add). Read it like a [`Task`]: block
/// (`recv`), look (`try_recv`, `recv_timeout`), `select!` on its [`receiver`](RetryTask::receiver),
/// or `.await` it (std only, any executor). Dropping it does not cancel the task.
///
/// ```
/// use slowpool::AsyncPool;
/// use crossbeam_channel::select;
///
/// let pool = AsyncPool::new(2, |n: u32| if n > 0 { Ok(n) } else { Err("zero") })?;
/// let task = pool.task(0).keep_input().add()?;
/// select! {
///     recv(task.receiver()) -> message => {
///         let ending = message??; // the channel's error, then `AlreadyReceived`
///         assert_eq!(ending.result.unwrap_err().input, Some(0));
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RetryTask<I, T, E> {
    /// The ending's own one-shot slot, read the way a `Task` reads it.
    ending: Task<Retried<I, T, E>>,
    /// The pool's task: its header (id, attempts) and how to cancel it.
    control: Arc<dyn Control>,
    pool: Arc<dyn Canceller>,
}

impl<I: Send + 'static, T: Send + 'static, E: Send + 'static> RetryTask<I, T, E> {
    pub(crate) fn new(
        ending: Task<Retried<I, T, E>>,
        control: Arc<dyn Control>,
        pool: Arc<dyn Canceller>,
    ) -> Self {
        RetryTask {
            ending,
            control,
            pool,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.control.header().id
    }

    /// Waits for the task's ending.
    pub fn recv(self) -> Retried<I, T, E> {
        let ending = self.ending.recv();
        self.unwrap(ending)
    }

    /// The ending if it is there. `None` also once it was taken.
    pub fn try_recv(&self) -> Option<Retried<I, T, E>> {
        self.ending.try_recv()?.ok()
    }

    /// Waits at most `timeout` for the ending. `None` if it did not come in time (or was
    /// already taken).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Retried<I, T, E>> {
        self.ending.recv_timeout(timeout)?.ok()
    }

    /// The channel the ending arrives on, for `crossbeam_channel::select!`, as
    /// [`Task::receiver`]: made on the first call, and from then on the ending goes through it.
    /// Its one message is `Ok(ending)`; `Err(AlreadyReceived)` only if the ending was read
    /// through this `RetryTask` first.
    pub fn receiver(&self) -> &Receiver<Result<Retried<I, T, E>, TaskError>> {
        self.ending.receiver()
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.control.header().attempts()
    }

    /// True once the task has ended (its ending may not have been read yet).
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.control.header().state(),
            WAITING | QUEUED | RUNNING | BACKOFF
        )
    }

    /// Cancels the task if it is not running: queued, waiting on its key, or waiting to retry.
    /// True if this call cancelled it; its ending is then `Cancelled` — with the input if it
    /// was waiting to retry, without it if it was queued or waiting on its key (`cancel_all`
    /// and `shutdown_now` return the inputs they cancel). `false` while an attempt runs.
    pub fn cancel(&self) -> bool {
        self.pool.cancel_task(&*self.control)
    }

    /// The ending from a read of the slot: always `Ok` — the slot is filled once, by the relay.
    fn unwrap(&self, read: Result<Retried<I, T, E>, TaskError>) -> Retried<I, T, E> {
        read.unwrap_or_else(|error| Retried {
            id: self.id(),
            attempts: self.attempts(),
            result: Err(Failure {
                input: None,
                error: Failed::Task(error),
            }),
        })
    }
}

/// Awaits the task's ending, as [`Task`] does (std only, any executor).
impl<I: Send + 'static, T: Send + 'static, E: Send + 'static> Future for RetryTask<I, T, E> {
    type Output = Retried<I, T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.get_mut();
        Pin::new(&mut task.ending)
            .poll(cx)
            .map(|read| task.unwrap(read))
    }
}

impl<I: Send + 'static, T: Send + 'static, E: Send + 'static> fmt::Debug for RetryTask<I, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTask")
            .field("id", &self.id())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}
