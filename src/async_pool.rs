//! [`AsyncPool`]: one callback, many inputs — the Elixir original's model.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::builder::Builder;
use crate::cell::{drop_quietly, Cell, Control, Header, Output, Slot};
use crate::delivery::{Delivered, Way};
use crate::engine::{Engine, Job, Owner, Ran, Refused, RunContext};
use crate::error::{AddError, BuildError, TaskError};
use crate::id::TaskId;
use crate::map::{MapOrdered, MapRetried, MapUnordered, Message, Source};
use crate::retry::{
    policy_fn, Destination, KeptRelay, PolicyFn, Retry, RetryMailbox, RetryRelay, RetryTask,
};
use crate::stats::Stats;
use crate::task::Task;
use crate::token::CancelToken;

/// A mailbox sender: where `add_task_to` delivers `(TaskId, result)`.
///
/// ```
/// use slowpool::{AsyncPool, Mailbox};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |s: String| s.len())?;
/// let (mailbox, results): (Mailbox<usize>, _) = unbounded();
/// let id = pool.add_task_to("four".into(), &mailbox)?;
/// assert_eq!(results.recv()?, (id, Ok(4)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Mailbox<O> = Sender<(TaskId, Result<O, TaskError>)>;

/// A pool of worker threads that all run one callback, each on one input.
///
/// `add_task` returns at once; each result is delivered as soon as its task ends, so the
/// slowest task never holds back the others. Results go to a [`Task`] handle per input, or, with
/// [`add_task_to`](AsyncPool::add_task_to), to a channel the caller owns, tagged with the task's
/// [`TaskId`] (the Elixir original's `{ref, value}` message).
///
/// `AsyncPool` is cheap to clone; the clones share one pool, which shuts down gracefully (as
/// [`shutdown`](AsyncPool::shutdown)) when the last clone is dropped. A callback that adds work
/// to its own pool uses a [`PoolHandle`] instead (see
/// [`build_with_handle`](Builder::build_with_handle)), which does not keep the pool alive.
///
/// # Examples
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(3, |url: String| url.len())?;
/// let tasks: Vec<_> = ["a", "bb", "ccc"]
///     .iter()
///     .map(|url| pool.add_task(url.to_string()))
///     .collect::<Result<_, _>>()?;
/// let lengths: Vec<usize> = tasks.iter().map(|t| t.recv().unwrap()).collect();
/// assert_eq!(lengths, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncPool<I: Send + 'static, O: Send + 'static> {
    owner: Arc<Owner<Envelope<I, O>>>,
}

/// A handle to an [`AsyncPool`] that can add work but does not keep the pool alive.
///
/// Made by [`AsyncPool::handle`] or given to the callback by
/// [`build_with_handle`](Builder::build_with_handle), so that a callback can add more work to
/// its own pool (a crawler adding the links it found). Once the pool is shut down or its last
/// `AsyncPool` is dropped, every add returns `Err(AddError::ShutDown(input))`.
///
/// Its adding methods are those of [`AsyncPool`], and behave the same while the pool is open.
///
/// ```
/// use slowpool::{AsyncPool, TaskError, TaskId};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |n: u32| n * 2)?;
/// let handle = pool.handle();
/// let (mailbox, results) = unbounded::<(TaskId, Result<u32, TaskError>)>();
/// assert_eq!(handle.add_task(1)?.recv(), Ok(2));
/// assert_eq!(handle.try_add_task(2)?.recv(), Ok(4));
/// let id = handle.add_task_to(3, &mailbox)?;
/// assert_eq!(results.recv()?, (id, Ok(6)));
/// let id = handle.add_task_keyed_to("key", 4, &mailbox)?;
/// assert_eq!(results.recv()?, (id, Ok(8)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PoolHandle<I: Send + 'static, O: Send + 'static> {
    engine: Weak<Engine<Envelope<I, O>>>,
}

/// The job an `AsyncPool` queues: the input and its task's cell. No box per task — except
/// for a task with a retry policy, whose `again` says how to make its next attempt.
pub(crate) struct Envelope<I, O> {
    cell: Arc<Cell<O>>,
    input: I,
    again: Option<Box<Again<I, O>>>,
}

/// What a task with a retry policy carries from attempt to attempt (see `retry.rs`).
pub(crate) struct Again<I, O> {
    /// `I::clone`, taken where `I: Clone` is known.
    clone: fn(&I) -> I,
    policy: Arc<PolicyFn<O>>,
    /// Where its ending goes, with the input when it is at hand.
    relay: Arc<dyn KeptRelay<I, O>>,
}

impl<I, O> Again<I, O> {
    fn copy(&self) -> Box<Again<I, O>> {
        Box::new(Again {
            clone: self.clone,
            policy: self.policy.clone(),
            relay: self.relay.clone(),
        })
    }
}

type PlainFn<I, O> = dyn Fn(I) -> O + Send + Sync;
type TokenFn<I, O> = dyn Fn(I, &CancelToken) -> O + Send + Sync;

/// The callback every worker of an `AsyncPool` runs.
pub(crate) enum Callback<I, O> {
    Plain(Box<PlainFn<I, O>>),
    WithToken(Box<TokenFn<I, O>>),
}

impl<I: Send + 'static, O: Send + 'static> Job for Envelope<I, O> {
    type Runner = Callback<I, O>;
    type Input = I;

    fn control(&self) -> &dyn Control {
        &*self.cell
    }

    fn control_arc(&self) -> Arc<dyn Control> {
        self.cell.clone()
    }

    fn control_weak(&self) -> Weak<dyn Control> {
        Arc::downgrade(&self.cell) as Weak<dyn Control>
    }

    fn run(self, callback: &Callback<I, O>, cx: &RunContext<'_, Self>) -> Ran {
        let Envelope { cell, input, again } = self;
        let outcome = match callback {
            Callback::Plain(f) => panic::catch_unwind(AssertUnwindSafe(|| f(input))),
            Callback::WithToken(f) => {
                let token = CancelToken::new(cell.clone(), cx.stopping().clone());
                panic::catch_unwind(AssertUnwindSafe(|| f(input, &token)))
            }
        };
        if again.is_none() {
            return cx.finish(&cell, outcome);
        }
        let attempts = cell.header.attempts();
        cx.finish_kept(
            &cell,
            outcome,
            |next, result| {
                let again = next.again.as_ref()?;
                (again.policy)(attempts, result)
            },
            |next, result, way| next.deliver_kept(result, way),
        )
    }

    fn into_input(self) -> I {
        self.input
    }

    fn spare(&self) -> Option<Self> {
        let again = self.again.as_ref()?;
        // An input whose `Clone` panics runs once, without retries.
        let input = panic::catch_unwind(AssertUnwindSafe(|| (again.clone)(&self.input)))
            .map_err(drop_quietly)
            .ok()?;
        Some(Envelope {
            cell: self.cell.clone(),
            input,
            again: Some(again.copy()),
        })
    }

    fn again_after(&self, error: &TaskError) -> Option<Duration> {
        let again = self.again.as_ref()?;
        (again.policy)(self.cell.header.attempts(), Err(error))
    }

    fn fail_kept(self, error: TaskError, way: Way<'_>) -> Delivered {
        self.deliver_kept(Err(error), way)
    }
}

impl<I: Send + 'static, O: Send + 'static> Envelope<I, O> {
    /// Delivers the task's final result through its relay, the input (this spare's copy)
    /// handed back with a failure.
    fn deliver_kept(self, result: Result<O, TaskError>, way: Way<'_>) -> Delivered {
        let Envelope { cell, input, again } = self;
        match again {
            Some(again) => {
                let (id, attempts) = (cell.header.id, cell.header.attempts());
                again.relay.deliver_kept(id, attempts, result, input, way)
            }
            None => {
                drop_quietly(input);
                cell.deliver(result, way)
            }
        }
    }
}

/// How an input is added: with which key, deadline, destination and retry policy.
struct Submission<I, O> {
    key: Option<u64>,
    timeout: Option<Duration>,
    output: Output<O>,
    wait: bool,
    again: Option<Box<Again<I, O>>>,
}

/// The one adding path of both `AsyncPool` and `PoolHandle`.
fn submit<I: Send + 'static, O: Send + 'static>(
    engine: &Engine<Envelope<I, O>>,
    input: I,
    how: Submission<I, O>,
) -> Result<Arc<Cell<O>>, AddError<I>> {
    let header = Header::new(engine.next_id(), how.key, how.timeout);
    let cell = Arc::new(Cell::new(header, how.output));
    let envelope = Envelope {
        cell: cell.clone(),
        input,
        again: how.again,
    };
    match engine.add(envelope, how.wait) {
        Ok(()) => Ok(cell),
        Err((refused, envelope)) => {
            envelope.cell.reject();
            let input = envelope.input;
            Err(match refused {
                Refused::Full => AddError::Full(input),
                Refused::ShutDown => AddError::ShutDown(input),
            })
        }
    }
}

fn task<I: Send + 'static, O: Send + 'static>(
    engine: &Arc<Engine<Envelope<I, O>>>,
    cell: Arc<Cell<O>>,
) -> Task<O> {
    Task::new(cell, engine.clone())
}

/// One input on its way into a pool: how its task runs (its key, its deadline) and where its
/// result goes. Made by [`AsyncPool::task`] and [`PoolHandle::task`]; the `add_task*` methods
/// are its short forms.
///
/// Every combination is one chain: `.key(host)` and `.timeout(d)` in any order, then `add` (a
/// [`Task`], waiting for room in a bounded queue), `try_add` (never waits), `add_to` (the
/// result goes to a mailbox) or `try_add_to`. A refused add hands the input back.
///
/// ```
/// use slowpool::{AsyncPool, TaskError, TaskId};
/// use crossbeam_channel::unbounded;
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder()
///     .max_workers(4)
///     .max_per_key(2)
///     .queue_capacity(100)
///     .build(|url: String| url.len())?;
/// let (mailbox, results) = unbounded::<(TaskId, Result<usize, TaskError>)>();
/// let id = pool
///     .task("http://a.example/".to_string())
///     .key("a.example")
///     .timeout(Duration::from_secs(5))
///     .try_add_to(&mailbox)?; // keyed + deadline + never blocks + mailbox
/// assert_eq!(results.recv()?, (id, Ok(17)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "nothing is added until `add`, `try_add`, `add_to` or `try_add_to`"]
pub struct Submit<'a, I: Send + 'static, O: Send + 'static> {
    engine: Option<EngineRef<'a, I, O>>,
    input: I,
    key: Option<u64>,
    timeout: Option<Duration>,
}

/// What a [`Submit`] comes down to: the pool, the input, and how to add it.
type Parts<'a, I, O> = (EngineRef<'a, I, O>, I, Submission<I, O>);

/// The pool a [`Submit`] goes to: borrowed from an `AsyncPool`, or upgraded from a
/// `PoolHandle` (`None` in `Submit` when the pool is gone).
enum EngineRef<'a, I: Send + 'static, O: Send + 'static> {
    Borrowed(&'a Arc<Engine<Envelope<I, O>>>),
    Upgraded(Arc<Engine<Envelope<I, O>>>),
}

impl<I: Send + 'static, O: Send + 'static> EngineRef<'_, I, O> {
    fn get(&self) -> &Arc<Engine<Envelope<I, O>>> {
        match self {
            EngineRef::Borrowed(engine) => engine,
            EngineRef::Upgraded(engine) => engine,
        }
    }
}

impl<'a, I: Send + 'static, O: Send + 'static> Submit<'a, I, O> {
    /// Files the task under `key` (a host, a tenant): see
    /// [`max_per_key`](Builder::max_per_key) and
    /// [`min_interval_per_key`](Builder::min_interval_per_key). Without per-key settings on
    /// the builder, the key has no effect.
    pub fn key<K: Hash>(mut self, key: K) -> Self {
        self.key = self.engine.as_ref().and_then(|e| e.get().key_of(&key));
        self
    }

    /// Gives the task its own deadline, counted from the moment it starts (see
    /// [`task_timeout`](Builder::task_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds the input; returns a [`Task`] for its result. Waits while a bounded queue is full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(input)` once the pool is shut down or gone.
    pub fn add(self) -> Result<Task<O>, AddError<I>> {
        self.slot(true)
    }

    /// Like [`add`](Submit::add), but never waits: `AddError::Full(input)` on a full bounded
    /// queue. A keyed task held back by its key takes no place in the queue, so it is never
    /// refused as `Full`.
    ///
    /// # Errors
    ///
    /// `Full(input)` or `ShutDown(input)`.
    pub fn try_add(self) -> Result<Task<O>, AddError<I>> {
        self.slot(false)
    }

    /// Adds the input; its result goes to `mailbox` as `(TaskId, result)`. Waits while a
    /// bounded queue is full.
    ///
    /// # Errors
    ///
    /// As [`add`](Submit::add).
    pub fn add_to(self, mailbox: &Mailbox<O>) -> Result<TaskId, AddError<I>> {
        self.mailbox(mailbox, true)
    }

    /// Like [`add_to`](Submit::add_to), but never waits.
    ///
    /// # Errors
    ///
    /// As [`try_add`](Submit::try_add).
    pub fn try_add_to(self, mailbox: &Mailbox<O>) -> Result<TaskId, AddError<I>> {
        self.mailbox(mailbox, false)
    }

    fn slot(self, wait: bool) -> Result<Task<O>, AddError<I>> {
        let (engine, input, how) = self.into_parts(Output::Slot(Slot::new()), wait)?;
        let cell = submit(engine.get(), input, how)?;
        Ok(task(engine.get(), cell))
    }

    fn mailbox(self, mailbox: &Mailbox<O>, wait: bool) -> Result<TaskId, AddError<I>> {
        let (engine, input, how) = self.into_parts(Output::Mailbox(mailbox.clone()), wait)?;
        submit(engine.get(), input, how).map(|cell| cell.header.id)
    }

    /// The pool, the input and how to add it; `ShutDown(input)` if the pool is gone.
    fn into_parts(self, output: Output<O>, wait: bool) -> Result<Parts<'a, I, O>, AddError<I>> {
        let Submit {
            engine,
            input,
            key,
            timeout,
        } = self;
        let how = Submission {
            key,
            timeout,
            output,
            wait,
            again: None,
        };
        match engine {
            Some(engine) => Ok((engine, input, how)),
            None => Err(AddError::ShutDown(input)),
        }
    }
}

impl<'a, I, T, E> Submit<'a, I, Result<T, E>>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    /// Retries the task by `policy` when an attempt fails (the callback returns `Err`, panics,
    /// or runs past its deadline); its ending says how many attempts it took and hands the
    /// input back with a failure. Each attempt gets a clone of the input. See [`Retry`].
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |n: u32| if n % 2 == 0 { Ok(n) } else { Err("odd") })?;
    /// let policy = Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(4));
    /// let done = pool.task(7).retry(policy).add()?.recv();
    /// assert_eq!(done.attempts, 3); // it never works
    /// let failure = done.result.unwrap_err();
    /// assert_eq!((failure.input, failure.error.into_callback()), (Some(7), Some("odd")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(self, policy: Retry<E>) -> Retrying<'a, I, T, E>
    where
        E: 'static,
    {
        Retrying {
            submit: self,
            policy: policy_fn(policy),
        }
    }

    /// Keeps a copy of the input and hands it back with a failure (`Err`, a panic, a timeout),
    /// without retrying: `retry(Retry::never())`. See [`Failure`](crate::Failure).
    pub fn keep_input(self) -> Retrying<'a, I, T, E>
    where
        E: 'static,
    {
        self.retry(Retry::never())
    }
}

/// A [`Submit`] with a retry policy: made by [`Submit::retry`] (or
/// [`keep_input`](Submit::keep_input)); adding it returns a [`RetryTask`], or sends the
/// task's [`Retried`](crate::Retried) ending to a [`RetryMailbox`].
///
/// ```
/// use slowpool::{AsyncPool, Retried, Retry};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::builder().max_workers(2).max_per_key(1).build(|n: u32| {
///     if n == 0 { Err("zero") } else { Ok(100 / n) }
/// })?;
/// let (mailbox, endings) = unbounded::<Retried<u32, u32, &str>>();
/// for n in [0, 4] {
///     pool.task(n).key("host").retry(Retry::attempts(2)).add_to(&mailbox)?;
/// }
/// let mut failed_inputs: Vec<u32> = (0..2)
///     .filter_map(|_| endings.recv().unwrap().result.err()?.input)
///     .collect();
/// assert_eq!(failed_inputs, [0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "nothing is added until `add`, `try_add`, `add_to` or `try_add_to`"]
pub struct Retrying<'a, I: Send + 'static, T: Send + 'static, E: Send + 'static> {
    submit: Submit<'a, I, Result<T, E>>,
    policy: Arc<PolicyFn<Result<T, E>>>,
}

impl<'a, I, T, E> Retrying<'a, I, T, E>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    /// Files the task under `key`: see [`Submit::key`]. Every attempt keeps to the key's limits.
    pub fn key<K: Hash>(mut self, key: K) -> Self {
        self.submit = self.submit.key(key);
        self
    }

    /// Gives each attempt this deadline: see [`Submit::timeout`]. An attempt still running at
    /// it fails with `TimedOut`, which the policy may retry.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.submit = self.submit.timeout(timeout);
        self
    }

    /// Adds the input; returns a [`RetryTask`] for its ending. Waits while a bounded queue is
    /// full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(input)` once the pool is shut down or gone.
    pub fn add(self) -> Result<RetryTask<I, T, E>, AddError<I>> {
        self.handle(true)
    }

    /// Like [`add`](Retrying::add), but never waits: `AddError::Full(input)` on a full bounded
    /// queue.
    ///
    /// # Errors
    ///
    /// `Full(input)` or `ShutDown(input)`.
    pub fn try_add(self) -> Result<RetryTask<I, T, E>, AddError<I>> {
        self.handle(false)
    }

    /// Adds the input; its [`Retried`](crate::Retried) ending goes to `mailbox`. Waits while a bounded queue is
    /// full.
    ///
    /// # Errors
    ///
    /// As [`add`](Retrying::add).
    pub fn add_to(self, mailbox: &RetryMailbox<I, T, E>) -> Result<TaskId, AddError<I>> {
        self.relay(Destination::Mailbox(mailbox.clone()), true)
            .map(|(_, cell)| cell.header.id)
    }

    /// Like [`add_to`](Retrying::add_to), but never waits.
    ///
    /// # Errors
    ///
    /// As [`try_add`](Retrying::try_add).
    pub fn try_add_to(self, mailbox: &RetryMailbox<I, T, E>) -> Result<TaskId, AddError<I>> {
        self.relay(Destination::Mailbox(mailbox.clone()), false)
            .map(|(_, cell)| cell.header.id)
    }

    fn handle(self, wait: bool) -> Result<RetryTask<I, T, E>, AddError<I>> {
        // The ending's own one-shot slot, in a cell read through a `Task`. Only the slot is
        // used: the pool's cell (`control`) is the task's, with its id, state and attempts.
        let header = Header::new(TaskId(0), None, None);
        let slot = Arc::new(Cell::new(header, Output::Slot(Slot::new())));
        let (engine, control) = self.relay(Destination::Slot(slot.clone()), wait)?;
        let ending = Task::new(slot, engine.clone());
        Ok(RetryTask::new(ending, control, engine))
    }

    /// Adds the input with a relay to `to`.
    #[allow(clippy::type_complexity)]
    fn relay(
        self,
        to: Destination<I, T, E>,
        wait: bool,
    ) -> Result<
        (
            Arc<Engine<Envelope<I, Result<T, E>>>>,
            Arc<Cell<Result<T, E>>>,
        ),
        AddError<I>,
    > {
        let relay = Arc::new(RetryRelay::new(to));
        let output = Output::Relay(relay.clone());
        let (engine, input, mut how) = self.submit.into_parts(output, wait)?;
        how.again = Some(Box::new(Again {
            clone: I::clone,
            policy: self.policy,
            relay,
        }));
        let cell = submit(engine.get(), input, how)?;
        Ok((engine.get().clone(), cell))
    }
}

impl<I: Send + 'static, T: Send + 'static, E: Send + 'static> fmt::Debug for Retrying<'_, I, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("submit", &self.submit)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> fmt::Debug for Submit<'_, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("keyed", &self.key.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> AsyncPool<I, O> {
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

    fn engine(&self) -> &Arc<Engine<Envelope<I, O>>> {
        &self.owner.0
    }

    /// How a feeder (a stream, the Redis worker) gives up on a task it added: cancelled if it
    /// has not started; if it runs, it makes no further attempt. Keeps the pool alive.
    pub(crate) fn forgetter(&self) -> impl Fn(TaskId) + Send + 'static {
        let pool = self.clone();
        move |id| pool.engine().forget_id(id)
    }

    /// Starts a [`Submit`]: say how the task runs (`.key(..)`, `.timeout(..)`) and where its
    /// result goes (`.add()`, `.try_add()`, `.add_to(..)`, `.try_add_to(..)`). The `add_task*`
    /// methods are its short forms.
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
    pub fn task(&self, input: I) -> Submit<'_, I, O> {
        Submit {
            engine: Some(EngineRef::Borrowed(self.engine())),
            input,
            key: None,
            timeout: None,
        }
    }

    /// Adds an input and returns at once with a [`Task`] that will receive the callback's
    /// result. Never waits for a worker; with a bounded queue
    /// ([`queue_capacity`](Builder::queue_capacity)) it waits while the queue is full.
    ///
    /// Tasks start in the order they were added; results arrive in the order tasks finish.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(input)` once the pool is shut down (also for an add blocked on a full
    /// queue when the shutdown happens). The input is handed back.
    ///
    /// # Examples
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

    /// Like [`add_task`](AsyncPool::add_task), but never blocks: with a full bounded queue it
    /// returns `AddError::Full(input)`.
    ///
    /// ```
    /// use slowpool::{AddError, AsyncPool};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .queue_capacity(0) // rendezvous: room only while a worker is free
    ///     .build(move |n: u32| { let _ = gate.recv(); n })?;
    /// let first = pool.try_add_task(1)?; // the free worker takes it
    /// match pool.try_add_task(2) {
    ///     Err(AddError::Full(input)) => assert_eq!(input, 2),
    ///     other => panic!("expected Full, got {other:?}"),
    /// }
    /// release.send(()).unwrap();
    /// assert_eq!(first.recv(), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_add_task(&self, input: I) -> Result<Task<O>, AddError<I>> {
        self.task(input).try_add()
    }

    /// Adds an input whose result is sent to `mailbox` as `(TaskId, result)` when the task ends
    /// — the Elixir original's `{ref, value}` message. Returns the task's id at once.
    ///
    /// A mailbox whose receiver is gone never blocks or panics a worker (the result is
    /// dropped). A bounded mailbox applies backpressure: the worker waits for room, and a result
    /// is never dropped while the receiver exists.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError, TaskId};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::new(2, |s: String| s.len())?;
    /// let (tx, rx) = unbounded::<(TaskId, Result<usize, TaskError>)>();
    /// let id = pool.add_task_to("abcd".into(), &tx)?;
    /// assert_eq!(rx.recv()?, (id, Ok(4)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`add_task`](AsyncPool::add_task).
    pub fn add_task_to(&self, input: I, mailbox: &Mailbox<O>) -> Result<TaskId, AddError<I>> {
        self.task(input).add_to(mailbox)
    }

    /// Adds an input with its own deadline, counted from the moment the task starts: a task
    /// still running then gets `Err(TaskError::TimedOut)` at once (see
    /// [`task_timeout`](Builder::task_timeout) for what happens to its thread).
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// let stuck = pool.add_task_with_timeout(10_000, Duration::from_millis(10))?;
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task_with_timeout(
        &self,
        input: I,
        timeout: Duration,
    ) -> Result<Task<O>, AddError<I>> {
        self.task(input).timeout(timeout).add()
    }

    /// Adds an input under a key (a host, a tenant): at most
    /// [`max_per_key`](Builder::max_per_key) tasks of one key run at once, and with
    /// [`min_interval_per_key`](Builder::min_interval_per_key) their starts are spaced. Tasks
    /// held back by their key wait without occupying a worker.
    ///
    /// Keys are compared by hash, so a `&str` and a `String` with the same text are the same
    /// key. Without per-key settings on the builder, the key has no effect.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(8)
    ///     .max_per_key(2)
    ///     .build(|url: String| url.len())?;
    /// let task = pool.add_task_keyed("example.com", "https://example.com/a".to_string())?;
    /// assert_eq!(task.recv(), Ok(21));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task_keyed<K: Hash>(&self, key: K, input: I) -> Result<Task<O>, AddError<I>> {
        self.task(input).key(key).add()
    }

    /// The mailbox form of [`add_task_keyed`](AsyncPool::add_task_keyed).
    ///
    /// The key is hashed when the task is added, so it may borrow from the input it
    /// accompanies only if the borrow ends first: `add_task_keyed_to(host_of(&url).to_string(),
    /// url, &mailbox)`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError, TaskId};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::builder().max_workers(4).max_per_key(2).build(|url: String| url.len())?;
    /// let (mailbox, results) = unbounded::<(TaskId, Result<usize, TaskError>)>();
    /// let url = "http://a.example/page/1".to_string();
    /// let host = url.split('/').nth(2).unwrap_or_default().to_string();
    /// let id = pool.add_task_keyed_to(host, url, &mailbox)?;
    /// assert_eq!(results.recv()?, (id, Ok(23)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`add_task`](AsyncPool::add_task).
    pub fn add_task_keyed_to<K: Hash>(
        &self,
        key: K,
        input: I,
        mailbox: &Mailbox<O>,
    ) -> Result<TaskId, AddError<I>> {
        self.task(input).key(key).add_to(mailbox)
    }

    /// Cancels the task with this id if it has not started: it never runs, and its result is
    /// `Err(TaskError::Cancelled)` (sent to its mailbox, or to its `Task`). Returns `false` if
    /// it is running, has ended, or is unknown. A task with a retry policy is cancelled between
    /// attempts too.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError, TaskId};
    /// use crossbeam_channel::{bounded, unbounded};
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(1, move |n: u32| { let _ = gate.recv(); n })?;
    /// let (mailbox, results) = unbounded::<(TaskId, Result<u32, TaskError>)>();
    /// let running = pool.add_task_to(1, &mailbox)?; // takes the only worker
    /// let queued = pool.add_task_to(2, &mailbox)?;
    /// assert!(pool.cancel(queued));
    /// assert_eq!(results.recv()?, (queued, Err(TaskError::Cancelled)));
    /// release.send(())?;
    /// assert_eq!(results.recv()?, (running, Ok(1)));
    /// assert!(!pool.cancel(running)); // it has ended
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, id: TaskId) -> bool {
        self.engine().cancel_id(id)
    }

    /// Cancels every task that has not started, without shutting down, and hands their inputs
    /// back in the order they were added. Each cancelled task's result is
    /// `Err(TaskError::Cancelled)`.
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
    /// // The pool is still open.
    /// let later = pool.add_task(4)?;
    /// release.send(())?;
    /// assert_eq!(later.recv(), Ok(4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel_all(&self) -> Vec<I> {
        self.engine().cancel_all()
    }

    /// Blocks until no task is queued or running.
    ///
    /// Called from inside a task of this pool, it cannot wait for itself: it waits for every
    /// other task except those also blocked in `join` on a worker, and runs queued tasks on
    /// the calling thread meanwhile, so it never deadlocks for lack of free workers. A joining
    /// task that times out stops excusing the others at once; its `join` still waits for them.
    ///
    /// A *keyed* task that joins still holds its key, so it also waits for tasks of that key —
    /// which cannot start while it fills the key's [`max_per_key`](Builder::max_per_key): do
    /// not call `join` from a task whose key may have others waiting behind it.
    ///
    /// Every result has been delivered when `join` returns: a mailbox holds them all, and
    /// each `Task` has its result ready.
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
        self.engine().join();
    }

    /// Returns a snapshot of the pool's workers and tasks (see [`Stats`]).
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
        self.engine().stats()
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
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(2, |n: u32| n)?;
    /// assert!(pool.set_max_workers(8));
    /// assert_eq!(pool.max_workers(), 8);
    /// assert!(!pool.set_max_workers(0)); // refused, nothing changed
    /// assert_eq!(pool.max_workers(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_max_workers(&self, max_workers: usize) -> bool {
        self.engine().set_max_workers(max_workers)
    }

    /// Stops accepting work, runs everything already accepted, and joins every worker.
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
    /// let results: Vec<_> = tasks.iter().map(|t| t.try_recv()).collect();
    /// assert_eq!(results, [Some(Ok(10)), Some(Ok(20)), Some(Ok(30)), Some(Ok(40)), Some(Ok(50))]);
    /// assert!(matches!(pool.add_task(6), Err(AddError::ShutDown(6))));
    /// assert_eq!(pool.stats().workers, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) {
        self.engine().shutdown();
    }

    /// Stops accepting work and cancels every task that has not started: their inputs are
    /// returned in the order they were added, and each of their tasks gets
    /// `Err(TaskError::Cancelled)`. Raises every [`CancelToken`], then waits for the running
    /// tasks to end and joins the workers (not from inside a task, as for `shutdown`).
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
    /// let watcher = pool.clone();
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
    pub fn shutdown_now(&self) -> Vec<I> {
        self.engine().shutdown_now()
    }

    /// Shuts down gracefully for at most `timeout`; then cancels what is still queued (its
    /// inputs are dropped; their tasks get `Cancelled`), ends the tasks still running with
    /// `TimedOut` and abandons their threads. Returns `true` if everything ended in time.
    ///
    /// It returns in about `timeout` even when workers are waiting for room in a full bounded
    /// mailbox that nobody reads (say, the calling thread's own): those results are dropped —
    /// each task keeps the ending it was counted with, and its receiver gets nothing for it.
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
        self.engine().shutdown_timeout(timeout)
    }

    /// Returns `true` once a shutdown has begun: adds are refused from then on.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// assert!(!pool.is_shut_down());
    /// pool.shutdown();
    /// assert!(pool.is_shut_down());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.engine().is_closed()
    }

    /// Streams `inputs` through the pool and yields `(index, result)` in the order tasks
    /// finish. Inputs are pulled lazily, at most [`in_flight`](MapUnordered::in_flight) tasks
    /// outstanding (default: twice `max_workers`), so an endless iterator runs in constant
    /// memory. Dropping the iterator cancels what it queued.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |n: u64| n * n)?;
    /// let mut squares: Vec<(usize, u64)> = pool
    ///     .map_unordered(1..=10)
    ///     .in_flight(3)
    ///     .map(|(index, result)| (index, result.unwrap()))
    ///     .collect();
    /// squares.sort();
    /// assert_eq!(squares[9], (9, 100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_unordered<It>(&self, inputs: It) -> MapUnordered<I, O, It::IntoIter>
    where
        It: IntoIterator<Item = I>,
    {
        MapUnordered::new(inputs.into_iter(), self.source())
    }

    /// Like [`map_unordered`](AsyncPool::map_unordered), but yields results in input order.
    /// At most `in_flight` inputs past the next one to yield are pulled, so a slow task at the
    /// head stalls intake instead of growing the reorder buffer.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |s: &'static str| s.len())?;
    /// let lengths: Vec<usize> = pool
    ///     .map_ordered(["a", "bbb", "cc"])
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(lengths, [1, 3, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_ordered<It>(&self, inputs: It) -> MapOrdered<I, O, It::IntoIter>
    where
        It: IntoIterator<Item = I>,
    {
        MapOrdered::new(inputs.into_iter(), self.source())
    }

    /// Like [`map_unordered`](AsyncPool::map_unordered), over `(key, input)` items: each task
    /// is filed under its key, so [`max_per_key`](Builder::max_per_key) and
    /// [`min_interval_per_key`](Builder::min_interval_per_key) hold — and one key does not
    /// block the stream. Inputs whose key is at its limit wait on their key in the pool without
    /// taking a place in the [`in_flight`](MapUnordered::in_flight) window, and the stream
    /// keeps pulling for the other keys, with at most
    /// [`max_buffered`](MapUnordered::max_buffered) inputs pulled but unfinished (default
    /// 65,536): input sorted by key runs as fast as shuffled input, within that bound.
    ///
    /// On a pool without per-key settings the keys have no effect.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    /// let most = Arc::new(Mutex::new(0));
    /// let (r, m) = (running.clone(), most.clone());
    /// let pool = AsyncPool::builder().max_workers(8).max_per_key(2).build(move |url: String| {
    ///     let host = url.split('/').nth(2).unwrap_or_default().to_string();
    ///     let now = { let mut r = r.lock().unwrap(); *r.entry(host.clone()).or_default() += 1; r[&host] };
    ///     let mut most = m.lock().unwrap();
    ///     *most = (*most).max(now);
    ///     drop(most);
    ///     *r.lock().unwrap().get_mut(&host).unwrap() -= 1;
    ///     url.len()
    /// })?;
    /// // Sorted by host, as URL lists usually are.
    /// let urls = (0..300).map(|i| format!("http://host{}.example/{i}", i / 100));
    /// let items = urls.map(|url| (url.split('/').nth(2).unwrap().to_string(), url));
    /// assert_eq!(pool.map_keyed_unordered(items).count(), 300);
    /// assert!(*most.lock().unwrap() <= 2); // never more than 2 per host
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_keyed_unordered<K, It>(&self, items: It) -> MapUnordered<(K, I), O, It::IntoIter>
    where
        K: Hash + Send + 'static,
        It: IntoIterator<Item = (K, I)>,
    {
        MapUnordered::new(items.into_iter(), self.keyed_source())
    }

    /// Like [`map_ordered`](AsyncPool::map_ordered), over `(key, input)` items, keeping to
    /// their keys as [`map_keyed_unordered`](AsyncPool::map_keyed_unordered) does. Results
    /// come in input order, so the reorder buffer can hold up to
    /// [`max_buffered`](MapOrdered::max_buffered) results.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(4).max_per_key(1).build(|n: u32| n * 10)?;
    /// let items = [("a", 1), ("a", 2), ("b", 3), ("a", 4)];
    /// let out: Vec<u32> = pool.map_keyed_ordered(items).collect::<Result<_, _>>()?;
    /// assert_eq!(out, [10, 20, 30, 40]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_keyed_ordered<K, It>(&self, items: It) -> MapOrdered<(K, I), O, It::IntoIter>
    where
        K: Hash + Send + 'static,
        It: IntoIterator<Item = (K, I)>,
    {
        MapOrdered::new(items.into_iter(), self.keyed_source())
    }

    /// How a streaming map reaches this pool (it keeps the pool alive while it runs).
    fn source(&self) -> Source<I, Message<O>> {
        let pool = self.clone();
        Source::new(
            2 * self.max_workers(),
            move |input, mailbox| pool.add_task_to(input, mailbox),
            self.forgetter(),
        )
    }

    /// A keyed stream's way to this pool: unkeyed if the pool has no per-key settings.
    fn keyed_source<K: Hash + Send + 'static>(&self) -> Source<(K, I), Message<O>> {
        let pool = self.clone();
        let source = Source::new(
            2 * self.max_workers(),
            move |(key, input): (K, I), mailbox: &Mailbox<O>| {
                pool.task(input)
                    .key(&key)
                    .add_to(mailbox)
                    .map_err(|refused| refused.map(|input| (key, input)))
            },
            self.forgetter(),
        );
        keyed(source, self.engine().per_key_limit())
    }

    /// Returns a [`PoolHandle`]: it can add work but does not keep the pool alive.
    ///
    /// ```
    /// use slowpool::{AddError, AsyncPool};
    ///
    /// let pool = AsyncPool::new(2, |n: u32| n + 1)?;
    /// let handle = pool.handle();
    /// assert_eq!(handle.add_task(1)?.recv(), Ok(2));
    /// drop(pool); // the last AsyncPool: the pool shuts down
    /// assert!(handle.is_shut_down());
    /// assert!(matches!(handle.add_task(2), Err(AddError::ShutDown(2))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> PoolHandle<I, O> {
        PoolHandle {
            engine: Arc::downgrade(self.engine()),
        }
    }

    /// The pool's current maximum number of workers.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(3, |n: u8| n)?;
    /// assert_eq!(pool.max_workers(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_workers(&self) -> usize {
        self.engine().max_workers()
    }
}

impl<I, T, E> AsyncPool<I, Result<T, E>>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    /// `task(input).retry(..)` with a policy already erased, shared by a stream's adds.
    fn retrying(&self, input: I, policy: &Arc<PolicyFn<Result<T, E>>>) -> Retrying<'_, I, T, E> {
        Retrying {
            submit: self.task(input),
            policy: policy.clone(),
        }
    }

    /// Streams `inputs` through the pool, each with the retry `policy` (see
    /// [`Submit::retry`]), yielding each task's [`Retried`](crate::Retried) ending as it comes: failures hand
    /// their input back, so nothing needs to be kept aside. Pulled lazily as
    /// [`map_unordered`](AsyncPool::map_unordered); see [`MapRetried`].
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    ///
    /// let pool = AsyncPool::new(4, |s: &'static str| s.parse::<u8>())?;
    /// let failed: Vec<&str> = pool
    ///     .map_retry(["1", "x", "3"], Retry::never())
    ///     .filter_map(|done| done.result.err()?.input)
    ///     .collect();
    /// assert_eq!(failed, ["x"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_retry<It>(
        &self,
        inputs: It,
        policy: Retry<E>,
    ) -> MapRetried<I, I, T, E, It::IntoIter>
    where
        It: IntoIterator<Item = I>,
        E: 'static,
    {
        let pool = self.clone();
        let policy = policy_fn(policy);
        let source = Source::new(
            2 * self.max_workers(),
            move |input: I, mailbox: &RetryMailbox<I, T, E>| {
                pool.retrying(input, &policy).add_to(mailbox)
            },
            self.forgetter(),
        );
        MapRetried::new(inputs.into_iter(), source, |input| input)
    }

    /// [`map_retry`](AsyncPool::map_retry) over `(key, input)` items, keeping to their keys
    /// as [`map_keyed_unordered`](AsyncPool::map_keyed_unordered) does — for every attempt.
    /// The doc of [`MapRetried`] has an example.
    pub fn map_keyed_retry<K, It>(
        &self,
        items: It,
        policy: Retry<E>,
    ) -> MapRetried<(K, I), I, T, E, It::IntoIter>
    where
        K: Hash + Send + 'static,
        It: IntoIterator<Item = (K, I)>,
        E: 'static,
    {
        let pool = self.clone();
        let policy = policy_fn(policy);
        let source = Source::new(
            2 * self.max_workers(),
            move |(key, input): (K, I), mailbox: &RetryMailbox<I, T, E>| {
                pool.retrying(input, &policy)
                    .key(&key)
                    .add_to(mailbox)
                    .map_err(|refused| refused.map(|input| (key, input)))
            },
            self.forgetter(),
        );
        let source = keyed(source, self.engine().per_key_limit());
        MapRetried::new(items.into_iter(), source, |(_, input)| input)
    }
}

/// Makes `source` a keyed stream over `(key, input)` items, if the pool has per-key limits.
fn keyed<K: Hash + Send + 'static, I, M>(
    source: Source<(K, I), M>,
    per_key: Option<usize>,
) -> Source<(K, I), M> {
    match per_key {
        Some(per_key) => {
            let hasher = std::collections::hash_map::RandomState::new();
            source.keyed(move |(key, _): &(K, I)| hasher.hash_one(key), per_key)
        }
        None => source,
    }
}

impl<I: Send + 'static, O: Send + 'static> Builder<AsyncPool<I, O>> {
    /// Builds the pool; every worker runs `callback` on the inputs it takes.
    ///
    /// As for [`AsyncPool::new`], name the input's type in a closure (`|url: String|`).
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
    ///
    /// # Errors
    ///
    /// See [`BuildError`]: no thread is left running when a build fails.
    pub fn build<F>(self, callback: F) -> Result<AsyncPool<I, O>, BuildError>
    where
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.start(|_| Callback::Plain(Box::new(callback)))
    }

    /// Builds the pool with a callback that also receives a [`CancelToken`], raised when its
    /// task times out or the pool stops now, so a long callback can stop early.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(2)
    ///     .task_timeout(Duration::from_millis(20))
    ///     .build_with_token(|limit: u64, token| {
    ///         let mut n = 0;
    ///         while n < limit && !token.is_cancelled() {
    ///             n += 1;
    ///             std::thread::yield_now();
    ///         }
    ///         n
    ///     })?;
    /// assert_eq!(pool.add_task(3)?.recv(), Ok(3));
    /// assert_eq!(pool.add_task(u64::MAX)?.recv(), Err(TaskError::TimedOut)); // and it stops
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    pub fn build_with_token<F>(self, callback: F) -> Result<AsyncPool<I, O>, BuildError>
    where
        F: Fn(I, &CancelToken) -> O + Send + Sync + 'static,
    {
        self.start(|_| Callback::WithToken(Box::new(callback)))
    }

    /// Builds the pool with per-worker state: `init` makes a state on each worker thread (by
    /// the first task the worker runs), and `callback` gets `&mut` that worker's state with
    /// every input — a blocking database client, a per-thread HTTP agent, a cache. The state
    /// never leaves its thread, so it need be neither `Send` nor `Sync`.
    ///
    /// It lives as long as its worker: an elastic pool's new workers make their own, a retired
    /// worker drops its own, and a thread abandoned after a timeout keeps its state while its
    /// replacement makes a new one. If `callback` panics the state is dropped (it may be
    /// half-updated) and the worker's next task makes a new one. A task run inside another's
    /// `join` on the same thread gets a fresh state of its own.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    ///
    /// // `Rc<RefCell<_>>` is neither Send nor Sync: fine, it never leaves its worker.
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .build_with_init(
    ///         || Rc::new(RefCell::new(Vec::new())),
    ///         |seen: &mut Rc<RefCell<Vec<u32>>>, n: u32| {
    ///             seen.borrow_mut().push(n);
    ///             seen.borrow().len()
    ///         },
    ///     )?;
    /// assert_eq!(pool.add_task(7)?.recv(), Ok(1));
    /// assert_eq!(pool.add_task(8)?.recv(), Ok(2)); // the same worker, the same state
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    pub fn build_with_init<S, M, F>(
        self,
        init: M,
        callback: F,
    ) -> Result<AsyncPool<I, O>, BuildError>
    where
        S: 'static,
        M: Fn() -> S + Send + Sync + 'static,
        F: Fn(&mut S, I) -> O + Send + Sync + 'static,
    {
        let callback = crate::worker_state::with_state(init, callback);
        self.start(|_| Callback::Plain(Box::new(callback)))
    }

    /// Builds the pool with a callback made by `make` from a [`PoolHandle`] to the pool itself,
    /// so the callback can add more work (a crawler adding the links it found) without keeping
    /// the pool alive.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError, TaskId};
    /// use crossbeam_channel::unbounded;
    ///
    /// // Each input n > 0 adds n - 1 to the pool; all results go to one mailbox.
    /// let (tx, rx) = unbounded::<(TaskId, Result<u32, TaskError>)>();
    /// let results = tx.clone();
    /// let pool = AsyncPool::builder().max_workers(2).build_with_handle(move |pool| {
    ///     move |n: u32| {
    ///         if n > 0 {
    ///             pool.add_task_to(n - 1, &results).expect("pool is open");
    ///         }
    ///         n
    ///     }
    /// })?;
    /// pool.add_task_to(3, &tx)?;
    /// let mut seen: Vec<u32> = (0..4).map(|_| rx.recv().unwrap().1.unwrap()).collect();
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build).
    pub fn build_with_handle<M, F>(self, make: M) -> Result<AsyncPool<I, O>, BuildError>
    where
        M: FnOnce(PoolHandle<I, O>) -> F,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.start(|engine| {
            let handle = PoolHandle {
                engine: engine.clone(),
            };
            Callback::Plain(Box::new(make(handle)))
        })
    }

    fn start(
        self,
        callback: impl FnOnce(&Weak<Engine<Envelope<I, O>>>) -> Callback<I, O>,
    ) -> Result<AsyncPool<I, O>, BuildError> {
        let engine = Engine::start(self.config, callback)?;
        Ok(AsyncPool {
            owner: Arc::new(Owner(engine)),
        })
    }
}

impl<I: Send + 'static, O: Send + 'static> PoolHandle<I, O> {
    /// Starts a [`Submit`]: say how the task runs and where its result goes, then add it.
    /// Once the pool is gone, every add hands the input back as `ShutDown`.
    pub fn task(&self, input: I) -> Submit<'static, I, O> {
        Submit {
            engine: self.engine.upgrade().map(EngineRef::Upgraded),
            input,
            key: None,
            timeout: None,
        }
    }

    /// As [`AsyncPool::add_task`]; `Err(AddError::ShutDown(input))` once the pool is gone.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let handle = pool.handle();
    /// assert_eq!(handle.add_task(3)?.recv(), Ok(3));
    /// drop(pool);
    /// assert_eq!(handle.add_task(4).unwrap_err().into_inner(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task(&self, input: I) -> Result<Task<O>, AddError<I>> {
        self.task(input).add()
    }

    /// As [`AsyncPool::try_add_task`]. From inside a callback of a pool with a bounded queue,
    /// prefer this to `add_task`: a worker blocked on its own full queue waits for itself.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(1).queue_capacity(8).build(|n: u8| n)?;
    /// assert_eq!(pool.handle().try_add_task(5)?.recv(), Ok(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_add_task(&self, input: I) -> Result<Task<O>, AddError<I>> {
        self.task(input).try_add()
    }

    /// As [`AsyncPool::add_task_to`].
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n + 1)?;
    /// let (mailbox, results): (Mailbox<u8>, _) = unbounded();
    /// let id = pool.handle().add_task_to(1, &mailbox)?;
    /// assert_eq!(results.recv()?, (id, Ok(2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task_to(&self, input: I, mailbox: &Mailbox<O>) -> Result<TaskId, AddError<I>> {
        self.task(input).add_to(mailbox)
    }

    /// As [`AsyncPool::add_task_keyed_to`].
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::builder().max_workers(2).max_per_key(1).build(|n: u8| n * 3)?;
    /// let (mailbox, results): (Mailbox<u8>, _) = unbounded();
    /// let id = pool.handle().add_task_keyed_to("a.example", 2, &mailbox)?;
    /// assert_eq!(results.recv()?, (id, Ok(6)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_task_keyed_to<K: Hash>(
        &self,
        key: K,
        input: I,
        mailbox: &Mailbox<O>,
    ) -> Result<TaskId, AddError<I>> {
        self.task(input).key(key).add_to(mailbox)
    }

    /// Returns `true` once the pool is shut down or gone.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let handle = pool.handle();
    /// assert!(!handle.is_shut_down());
    /// drop(pool);
    /// assert!(handle.is_shut_down());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.engine
            .upgrade()
            .map_or(true, |engine| engine.is_closed())
    }
}

impl<I: Send + 'static, O: Send + 'static> Clone for AsyncPool<I, O> {
    fn clone(&self) -> Self {
        AsyncPool {
            owner: self.owner.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Clone for PoolHandle<I, O> {
    fn clone(&self) -> Self {
        PoolHandle {
            engine: self.engine.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> fmt::Debug for AsyncPool<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> fmt::Debug for PoolHandle<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle").finish_non_exhaustive()
    }
}
