//! [`Submit`]: one input (or closure) on its way into a pool, and the one path every add takes.
//!
//! Both faces start it (`pool.task(x)`); options compose in any order — a key, a deadline, a
//! retry policy, a tag — and one of four adds ends it: to a [`Task`] handle or to a
//! [`Mailbox`], waiting for room in a bounded queue or not. The shorthands (`add_task`,
//! `add_task_to`, `spawn`) are this chain with no options.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::cell::{drop_quietly, Cell, Header, Output, TaggedMailbox};
use crate::done::Mailbox;
use crate::engine::{Engine, Refused};
use crate::error::AddError;
use crate::id::TaskId;
use crate::pool::{Kind, Pool};
use crate::retry::{policy_fn, PolicyFn, Retry};
use crate::slot::Slot;
use crate::task::Task;
use crate::work::{Again, Work};

/// One input on its way into a pool: how its task runs (its key, its deadline, its retries),
/// what it is tagged with, and where its ending goes. Made by
/// [`AsyncPool::task`](crate::AsyncPool#method.task) and
/// [`ThreadPool::task`](crate::ThreadPool#method.task) (where the "input" is the closure).
///
/// Options compose in any order; then `add` (a [`Task`], waiting while a bounded queue is
/// full), `try_add` (never waits), `add_to` (the ending goes to a [`Mailbox`]) or `try_add_to`.
/// A refused add hands the input back.
///
/// ```
/// use slowpool::{AsyncPool, Mailbox, Retry};
/// use crossbeam_channel::unbounded;
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder()
///     .max_workers(4)
///     .max_per_key(2)
///     .queue_capacity(100)
///     .build(|url: String| if url.ends_with('/') { Ok(url.len()) } else { Err("no slash") })?;
/// let (mailbox, results): (Mailbox<Result<usize, &str>, String>, _) = unbounded();
/// let url = "http://a.example/".to_string();
/// let id = pool
///     .task(url.clone())
///     .key("a.example")
///     .timeout(Duration::from_secs(5))
///     .retry(Retry::attempts(3))
///     .tag(url)
///     .try_add_to(&mailbox)?; // keyed + deadline + retries + tag + never blocks + mailbox
/// let done = results.recv()?;
/// assert_eq!((done.id, done.tag.as_str(), done.result), (id, "http://a.example/", Ok(Ok(17))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "nothing is added until `add`, `try_add`, `add_to` or `try_add_to`"]
pub struct Submit<'a, K: Kind, X, O, Tag = ()> {
    pool: &'a Pool<K>,
    item: X,
    how: How<X, O>,
    tag: Tag,
    wrap: Wrap<K, X, O>,
}

/// How a task runs: its key, its deadline, its retries.
struct How<X, O> {
    key: Option<u64>,
    timeout: Option<Duration>,
    again: Option<Box<Again<X, O>>>,
}

/// How a face puts a [`Work`] into its queue's job type, and takes it back out of a job the
/// pool refused.
pub(crate) struct Wrap<K: Kind, X, O> {
    pub(crate) into_job: fn(Work<X, O>) -> K::Job,
    pub(crate) from_job: fn(K::Job) -> Work<X, O>,
}

impl<K: Kind, X, O> Clone for Wrap<K, X, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: Kind, X, O> Copy for Wrap<K, X, O> {}

impl<'a, K, X, O> Submit<'a, K, X, O>
where
    K: Kind,
    X: Send + 'static,
    O: Send + 'static,
{
    pub(crate) fn new(pool: &'a Pool<K>, item: X, wrap: Wrap<K, X, O>) -> Self {
        Submit {
            pool,
            item,
            how: How {
                key: None,
                timeout: None,
                again: None,
            },
            tag: (),
            wrap,
        }
    }
}

impl<'a, K, X, O, Tag> Submit<'a, K, X, O, Tag>
where
    K: Kind,
    X: Send + 'static,
    O: Send + 'static,
    Tag: Send + 'static,
{
    /// Files the task under `key` (a host, a tenant): at most
    /// [`max_per_key`](crate::Builder::max_per_key) tasks of one key run at once, and with
    /// [`min_interval_per_key`](crate::Builder::min_interval_per_key) their starts are spaced.
    /// Tasks held back by their key wait without occupying a worker or a place in a bounded
    /// queue. Without per-key settings on the builder, the key has no effect.
    ///
    /// Keys are compared by hash, so a `&str` and a `String` with the same text are the same
    /// key. The key is hashed here, so it may borrow from the input only until this call.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(8).max_per_key(2).build(|url: String| url.len())?;
    /// let url = "https://example.com/a".to_string();
    /// let host = url.split('/').nth(2).unwrap_or_default().to_string();
    /// assert_eq!(pool.task(url).key(host).add()?.recv(), Ok(21));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key<H: Hash>(mut self, key: H) -> Self {
        self.how.key = self.pool.engine().and_then(|engine| engine.key_of(&key));
        self
    }

    /// Gives the task its own deadline, counted from the moment each attempt starts: a task
    /// still running then ends `Err(TaskError::TimedOut)` at once (see
    /// [`task_timeout`](crate::Builder::task_timeout) for what happens to its thread). With a
    /// retry policy, a timed-out attempt may be retried.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// let stuck = pool.task(60_000).timeout(Duration::from_millis(10)).add()?;
    /// assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.how.timeout = Some(timeout);
        self
    }

    /// Tags the task: its ending carries `tag` (in [`Done::tag`](crate::Done::tag), or [`Task::tag`] on a
    /// handle), so that whoever receives it knows which input it was without a map of ids.
    /// To get the input itself back, tag it with a clone: `.task(url.clone()).tag(url)`.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox, TaskError};
    /// use crossbeam_channel::unbounded;
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(2, |ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms })?;
    /// let (mailbox, results): (Mailbox<u64, &str>, _) = unbounded();
    /// pool.task(60_000).timeout(Duration::from_millis(10)).tag("slow host").add_to(&mailbox)?;
    /// let done = results.recv()?;
    /// assert_eq!((done.tag, done.result), ("slow host", Err(TaskError::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tag<T: Send + 'static>(self, tag: T) -> Submit<'a, K, X, O, T> {
        drop(self.tag);
        Submit {
            pool: self.pool,
            item: self.item,
            how: self.how,
            tag,
            wrap: self.wrap,
        }
    }

    /// Adds the input; returns a [`Task`] for its result. Never waits for a worker; with a
    /// bounded queue ([`queue_capacity`](crate::Builder::queue_capacity)) it waits while the
    /// queue is full.
    ///
    /// # Errors
    ///
    /// `AddError::ShutDown(input)` once the pool is shut down or gone (also for an add blocked
    /// on a full queue when the shutdown happens). The input is handed back.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u32| n + 1)?;
    /// let task = pool.task(1).add()?;
    /// assert_eq!(task.recv(), Ok(2));
    /// pool.shutdown();
    /// assert_eq!(pool.task(5).add().unwrap_err().into_inner(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add(self) -> Result<Task<O, Tag>, AddError<X>> {
        self.into_handle(true)
    }

    /// Like [`add`](Submit::add), but never waits: `AddError::Full(input)` on a full bounded
    /// queue. A keyed task held back by its key takes no place in the queue, so it is never
    /// refused as `Full`.
    ///
    /// # Errors
    ///
    /// `Full(input)` or `ShutDown(input)`.
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
    /// let first = pool.task(1).try_add()?; // the free worker takes it
    /// assert!(matches!(pool.task(2).try_add(), Err(AddError::Full(2))));
    /// release.send(())?;
    /// assert_eq!(first.recv(), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_add(self) -> Result<Task<O, Tag>, AddError<X>> {
        self.into_handle(false)
    }

    /// Adds the input; its ending goes to `mailbox` as a [`Done`](crate::Done) message when the task ends —
    /// the Elixir original's `{ref, value}`. Returns the task's id at once. Waits while a
    /// bounded queue is full.
    ///
    /// # Errors
    ///
    /// As [`add`](Submit::add).
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::new(2, |s: String| s.len())?;
    /// let (mailbox, results): (Mailbox<usize>, _) = unbounded();
    /// let id = pool.task("abcd".into()).add_to(&mailbox)?;
    /// let done = results.recv()?;
    /// assert_eq!((done.id, done.result), (id, Ok(4)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_to(self, mailbox: &Mailbox<O, Tag>) -> Result<TaskId, AddError<X>> {
        self.into_mailbox(mailbox, true)
    }

    /// Like [`add_to`](Submit::add_to), but never waits.
    ///
    /// # Errors
    ///
    /// As [`try_add`](Submit::try_add).
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// let pool = AsyncPool::builder().max_workers(1).queue_capacity(4).build(|n: u8| n)?;
    /// let (mailbox, results): (Mailbox<u8>, _) = unbounded();
    /// pool.task(3).try_add_to(&mailbox)?;
    /// assert_eq!(results.recv()?.result, Ok(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_add_to(self, mailbox: &Mailbox<O, Tag>) -> Result<TaskId, AddError<X>> {
        self.into_mailbox(mailbox, false)
    }

    /// Sets an already-hashed key (a stream hashes its inputs' keys itself).
    pub(crate) fn key_hash(mut self, key: Option<u64>) -> Self {
        self.how.key = key;
        self
    }

    /// Sets an already-erased retry policy (shared by a stream's adds).
    pub(crate) fn retry_with(mut self, again: Option<&Again<X, O>>) -> Self {
        self.how.again = again.map(|again| Box::new(again.clone()));
        self
    }

    fn into_handle(self, wait: bool) -> Result<Task<O, Tag>, AddError<X>> {
        let Submit {
            pool,
            item,
            how,
            tag,
            wrap,
        } = self;
        let output = Output::Slot(Slot::new());
        match add(pool, item, how, wrap, output, wait, Arc::clone) {
            Ok((engine, _, cell)) => Ok(Task::new(cell, engine.into_owned(), tag)),
            Err(refused) => {
                // The caller's value, whose `Drop` may panic: the input must still come back.
                drop_quietly(tag);
                Err(refused)
            }
        }
    }

    fn into_mailbox(self, mailbox: &Mailbox<O, Tag>, wait: bool) -> Result<TaskId, AddError<X>> {
        let Submit {
            pool,
            item,
            how,
            tag,
            wrap,
        } = self;
        let output = mailbox_output(mailbox, tag);
        let (_, id, ()) = add(pool, item, how, wrap, output, wait, |_| ())?;
        Ok(id)
    }
}

/// The one adding path of both faces: makes the task's cell with `output` and its job, and
/// hands the job to the engine; the input back if it is refused. Returns the engine, the
/// task's id, and what `keep` took from the cell before the job went (a handle keeps a
/// reference; a mailbox add need not touch the cell again).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn add<K: Kind, X: Send + 'static, O: Send + 'static, R>(
    pool: &Pool<K>,
    item: X,
    how: How<X, O>,
    wrap: Wrap<K, X, O>,
    output: Output<O>,
    wait: bool,
    keep: impl FnOnce(&Arc<Cell<O>>) -> R,
) -> Result<(Cow<'_, Arc<Engine<K::Job>>>, TaskId, R), AddError<X>> {
    let Some(engine) = pool.engine() else {
        return Err(AddError::ShutDown(item));
    };
    let header = Header::new(engine.next_id(), how.key, how.timeout);
    let id = header.id;
    let cell = Arc::new(Cell::new(header, output));
    let kept = keep(&cell);
    let work = Work {
        cell,
        item,
        again: how.again,
        added: crate::observe::Added::now(),
    };
    match engine.add((wrap.into_job)(work), wait) {
        Ok(()) => Ok((engine, id, kept)),
        Err((refused, job)) => {
            let work = (wrap.from_job)(job);
            work.cell.header.reject();
            let item = work.item;
            Err(match refused {
                Refused::Full => AddError::Full(item),
                Refused::ShutDown => AddError::ShutDown(item),
            })
        }
    }
}

/// Where a mailbox add's ending goes: an untagged mailbox needs no tag kept beside it.
fn mailbox_output<O: Send + 'static, Tag: Send + 'static>(
    mailbox: &Mailbox<O, Tag>,
    tag: Tag,
) -> Output<O> {
    match (mailbox as &dyn Any).downcast_ref::<Mailbox<O>>() {
        Some(untagged) => Output::Mailbox(untagged.clone()),
        None => Output::Tagged(Box::new(TaggedMailbox {
            tx: mailbox.clone(),
            tag: Mutex::new(Some(tag)),
        })),
    }
}

impl<'a, K, X, T, E, Tag> Submit<'a, K, X, Result<T, E>, Tag>
where
    K: Kind,
    X: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    Tag: Send + 'static,
{
    /// Retries the task by `policy` when an attempt fails (the callback returns `Err`, panics,
    /// or runs past its deadline). Each attempt gets a clone of the input; the task still ends
    /// once, with the attempts it took ([`Task::attempts`], [`Done::attempts`](crate::Done::attempts)). See [`Retry`].
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
    pub fn retry(mut self, policy: Retry<E>) -> Self
    where
        E: 'static,
    {
        self.how.again = Some(Box::new(again(policy_fn(policy))));
        self
    }
}

/// The retry plan of a task whose input is `Clone`.
pub(crate) fn again<X: Clone, O>(policy: Arc<PolicyFn<O>>) -> Again<X, O> {
    Again {
        clone: X::clone,
        policy,
    }
}

impl<K: Kind, X, O, Tag> fmt::Debug for Submit<'_, K, X, O, Tag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("keyed", &self.how.key.is_some())
            .field("timeout", &self.how.timeout)
            .field("retry", &self.how.again.is_some())
            .finish_non_exhaustive()
    }
}
