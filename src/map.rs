//! Streaming a (possibly endless) iterator of inputs through a pool with bounded memory:
//! [`MapUnordered`] and [`MapOrdered`].
//!
//! # Design
//!
//! Each stream keeps its tasks in an [`InFlight`] (a private mailbox, and each task's input
//! index and key: the record the Redis feeder keeps too). It pulls an input only when fewer than `in_flight` of
//! its tasks are outstanding, so an endless iterator works and memory stays flat; it yields
//! results as they arrive in the mailbox. The ordered form keeps a reorder buffer and pulls
//! input `i` only while `i < next_to_yield + in_flight`: a slow task at the head stalls intake
//! instead of letting the buffer grow. Dropping a stream cancels what it still has queued.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crossbeam_channel::Sender;

use crate::error::{AddError, Failed, Failure, TaskError};
use crate::id::TaskId;
use crate::in_flight::{ForgetFn, InFlight, Tagged};
use crate::retry::Retried;

pub(crate) type Message<O> = (TaskId, Result<O, TaskError>);
type SubmitFn<Item, M> = dyn FnMut(Item, &Sender<M>) -> Result<TaskId, AddError<Item>> + Send;
type KeyFn<Item> = dyn Fn(&Item) -> u64 + Send;

impl<I, T, E> Tagged for Retried<I, T, E> {
    fn id(&self) -> TaskId {
        self.id
    }
}

/// How a stream reaches its pool: add an input to a mailbox, forget a task (cancel it, or if it
/// runs, let it make no further attempt); the pool's
/// default number of tasks in flight; and, for a keyed stream, each input's key and how many
/// tasks of one key the pool runs at once. Each face of the pool makes one.
pub(crate) struct Source<Item, M> {
    submit: Box<SubmitFn<Item, M>>,
    forget: Box<ForgetFn>,
    in_flight: usize,
    keys: Option<(Box<KeyFn<Item>>, usize)>,
}

impl<Item, M> Source<Item, M> {
    pub(crate) fn new(
        in_flight: usize,
        submit: impl FnMut(Item, &Sender<M>) -> Result<TaskId, AddError<Item>> + Send + 'static,
        forget: impl Fn(TaskId) + Send + 'static,
    ) -> Self {
        Source {
            submit: Box::new(submit),
            forget: Box::new(forget),
            in_flight: in_flight.max(1),
            keys: None,
        }
    }

    /// Makes it a keyed stream: `key` hashes an input's key; the pool runs at most `per_key`
    /// tasks of one key at once.
    pub(crate) fn keyed(
        mut self,
        key: impl Fn(&Item) -> u64 + Send + 'static,
        per_key: usize,
    ) -> Self {
        self.keys = Some((Box::new(key), per_key.max(1)));
        self
    }
}

/// The default bound on a keyed stream's pulled-but-unfinished inputs (see
/// [`MapUnordered::max_buffered`]).
pub const KEYED_BUFFER: usize = 65_536;

/// Which of a keyed stream's outstanding tasks its keys let run: Σ over keys of
/// min(outstanding of the key, per-key limit). The others wait on their key in the pool,
/// taking no place in the window.
struct KeyWindow<Item> {
    key_of: Box<KeyFn<Item>>,
    per_key: usize,
    outstanding: HashMap<u64, usize>,
    runnable: usize,
}

impl<Item> KeyWindow<Item> {
    fn entered(&mut self, key: u64) {
        let count = self.outstanding.entry(key).or_default();
        *count += 1;
        if *count <= self.per_key {
            self.runnable += 1;
        }
    }

    fn left(&mut self, key: u64) {
        if let Some(count) = self.outstanding.get_mut(&key) {
            if *count <= self.per_key {
                // A task of the key leaves and none of its waiting ones takes its place.
                self.runnable -= 1;
            }
            *count -= 1;
            if *count == 0 {
                self.outstanding.remove(&key);
            }
        }
    }
}

/// What every stream shares: the inputs, the pool's adding, the tasks outstanding, and the
/// window over them.
struct Stream<Item, M, It> {
    /// Not fused: asked again whenever the stream wants more (see `pull`).
    inputs: It,
    submit: Box<SubmitFn<Item, M>>,
    /// Each outstanding task's input index and key; dropping it forgets them in the pool.
    outstanding: InFlight<(usize, u64), M>,
    next_index: usize,
    /// The pool refused an input (it shut down): pull no more.
    stopped: bool,
    /// A refused input and its index, handed back by the stream that yields it.
    refused: Option<(usize, Item)>,
    keys: Option<KeyWindow<Item>>,
    /// The window: outstanding tasks that count (see `window`).
    in_flight: usize,
    /// Pulled but unfinished inputs in all (a keyed stream's bound); `in_flight` without keys.
    max_buffered: usize,
}

impl<Item, M: Tagged, It: Iterator<Item = Item>> Stream<Item, M, It> {
    fn new(inputs: It, source: Source<Item, M>) -> Self {
        let in_flight = source.in_flight;
        let max_buffered = if source.keys.is_some() {
            KEYED_BUFFER
        } else {
            in_flight
        };
        Stream {
            in_flight,
            max_buffered,
            inputs,
            submit: source.submit,
            outstanding: InFlight::new(source.forget),
            next_index: 0,
            stopped: false,
            refused: None,
            keys: source.keys.map(|(key_of, per_key)| KeyWindow {
                key_of,
                per_key,
                outstanding: HashMap::new(),
                runnable: 0,
            }),
        }
    }

    /// Sets the window (0 is taken as 1); without keys, the buffer bound follows it.
    fn set_in_flight(&mut self, n: usize) {
        self.in_flight = n.max(1);
        if self.keys.is_none() {
            self.max_buffered = self.in_flight;
        }
    }

    /// Sets a keyed stream's buffer bound (0 is taken as 1); no effect without keys.
    fn set_max_buffered(&mut self, n: usize) {
        if self.keys.is_some() {
            self.max_buffered = n.max(1);
        }
    }

    /// Pulls while the window has room and the buffer bound allows.
    fn top_up(&mut self) {
        let max_buffered = self.max_buffered.max(self.in_flight);
        while self.window() < self.in_flight && self.outstanding.len() < max_buffered && self.pull()
        {
        }
    }

    /// Outstanding tasks that count against `in_flight`: all of them, or in a keyed stream
    /// those their keys let run.
    fn window(&self) -> usize {
        match &self.keys {
            Some(keys) => keys.runnable,
            None => self.outstanding.len(),
        }
    }

    /// Pulls one input and adds it. False when there is nothing to pull now.
    ///
    /// An input iterator that returned `None` is asked again the next time: one backed by a
    /// queue the caller fills as results come in (a crawler's frontier) feeds the stream for as
    /// long as it has work; the stream ends when it has none and no task is outstanding.
    fn pull(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let Some(input) = self.inputs.next() else {
            return false;
        };
        let index = self.next_index;
        self.next_index += 1;
        let key = self.keys.as_ref().map_or(0, |keys| (keys.key_of)(&input));
        let submit = &mut self.submit;
        match self
            .outstanding
            .add((index, key), |mailbox| submit(input, mailbox))
        {
            Ok(_) => {
                if let Some(keys) = &mut self.keys {
                    keys.entered(key);
                }
                true
            }
            Err(refused) => {
                // The pool is shut down: this input ends the stream as `Cancelled`.
                self.stopped = true;
                self.refused = Some((index, refused.into_inner()));
                false
            }
        }
    }

    /// Waits for the next message of this stream's tasks: `Ok` with its input's index, or
    /// `Err` with the input the pool refused, once everything before it has come in.
    fn receive(&mut self) -> Option<(usize, Result<M, Item>)> {
        if self.outstanding.is_empty() {
            return self.refused.take().map(|(index, item)| (index, Err(item)));
        }
        let ((index, key), message) = self.outstanding.take()?;
        if let Some(keys) = &mut self.keys {
            keys.left(key);
        }
        Some((index, Ok(message)))
    }
}

/// An iterator of `(index, result)` in the order tasks finish, from
/// [`AsyncPool::map_unordered`](crate::AsyncPool::map_unordered) or
/// [`ThreadPool::map_unordered`](crate::ThreadPool::map_unordered).
///
/// `index` is the input's position (from 0) in the order it was pulled. At most
/// [`in_flight`](MapUnordered::in_flight) tasks are outstanding at once; inputs are pulled only
/// as results are taken, so an endless input iterator works in constant memory.
///
/// The input iterator is asked again whenever the stream wants more, even after it returned
/// `None`: an iterator over a queue that the loop consuming the stream fills (a crawler's
/// frontier, fed with the links each page yields) keeps the stream going, and the stream ends
/// once the iterator has nothing and no task is outstanding.
///
/// Dropping it cancels the tasks it queued that have not started; running ones finish and their
/// results are dropped. If the pool shuts down, the input it could not add is yielded as
/// `Err(TaskError::Cancelled)` (the input itself is dropped) and no more are pulled.
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(4, |n: u64| n + 1)?;
/// let total: u64 = pool.map_unordered(0..1_000).map(|(_, r)| r.unwrap()).sum();
/// assert_eq!(total, 500_500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MapUnordered<Item, O, It> {
    stream: Stream<Item, Message<O>, It>,
}

impl<Item, O, It: Iterator<Item = Item>> MapUnordered<Item, O, It> {
    pub(crate) fn new(inputs: It, source: Source<Item, Message<O>>) -> Self {
        MapUnordered {
            stream: Stream::new(inputs, source),
        }
    }

    /// Sets how many tasks may be outstanding at once (default: twice the pool's
    /// `max_workers`; 0 is treated as 1). In a keyed stream, only tasks their key lets run
    /// count (see [`max_buffered`](MapUnordered::max_buffered)).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    /// let (n, m) = (now.clone(), most.clone());
    /// let pool = AsyncPool::new(8, move |i: u32| {
    ///     m.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
    ///     n.fetch_sub(1, Ordering::SeqCst);
    ///     i
    /// })?;
    /// assert_eq!(pool.map_unordered(0..100).in_flight(3).count(), 100);
    /// assert!(most.load(Ordering::SeqCst) <= 3); // never more than 3 outstanding
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(mut self, n: usize) -> Self {
        self.stream.set_in_flight(n);
        self
    }

    /// For a keyed stream ([`AsyncPool::map_keyed_unordered`](crate::AsyncPool::map_keyed_unordered)):
    /// the most inputs pulled but not yet finished — running, queued, or waiting behind their
    /// key's limit (default [`KEYED_BUFFER`], 65,536; never below `in_flight`). Inputs whose
    /// key is saturated wait on their key in the pool without filling the `in_flight`
    /// window, so the stream keeps pulling for keys that have room — up to this bound, which
    /// is the stream's memory: input sorted by key needs room for the longest run of one key
    /// to keep every key busy. No effect on a stream without keys.
    ///
    /// The window knows the stream's own tasks only: it counts up to `max_per_key` of them per
    /// key as running. Work the stream does not see that holds a key — other adds under the
    /// same key, or a timed-out callback still running (it keeps its key until it returns) —
    /// leaves those tasks waiting while they fill the window, and the stream pulls less until
    /// that work ends.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.stream.set_max_buffered(n);
        self
    }
}

impl<Item, O, It: Iterator<Item = Item>> Iterator for MapUnordered<Item, O, It> {
    type Item = (usize, Result<O, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.stream.top_up();
        let next = self.stream.receive().map(|(index, message)| match message {
            Ok((_, result)) => (index, result),
            // The pool shut down: the input is dropped.
            Err(_refused) => (index, Err(TaskError::Cancelled)),
        });
        // Refill before handing the result over, so the pool stays busy meanwhile.
        self.stream.top_up();
        next
    }
}

/// An iterator of results in input order, from
/// [`AsyncPool::map_ordered`](crate::AsyncPool::map_ordered) or
/// [`ThreadPool::map_ordered`](crate::ThreadPool::map_ordered).
///
/// Input `i` is pulled only while `i < next_to_yield + in_flight`: results that finish early
/// wait in a reorder buffer of at most `in_flight` entries, and a slow task at the head stalls
/// intake rather than letting memory grow. Dropping it cancels what it queued.
///
/// ```
/// use slowpool::AsyncPool;
///
/// let pool = AsyncPool::new(4, |n: u64| n * 2)?;
/// let first: Vec<u64> = pool.map_ordered(0..).take(4).map(Result::unwrap).collect(); // endless input
/// assert_eq!(first, [0, 2, 4, 6]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MapOrdered<Item, O, It> {
    stream: Stream<Item, Message<O>, It>,
    /// Results from `next_out` on; `None` while that task is outstanding.
    buffer: VecDeque<Option<Result<O, TaskError>>>,
    next_out: usize,
}

impl<Item, O, It: Iterator<Item = Item>> MapOrdered<Item, O, It> {
    pub(crate) fn new(inputs: It, source: Source<Item, Message<O>>) -> Self {
        MapOrdered {
            stream: Stream::new(inputs, source),
            buffer: VecDeque::new(),
            next_out: 0,
        }
    }

    /// Sets the window: how far past the next result to yield inputs may be pulled (default:
    /// twice the pool's `max_workers`; 0 is treated as 1). In a keyed stream, only tasks their
    /// key lets run count, up to [`max_buffered`](MapOrdered::max_buffered) inputs past the
    /// next result.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |n: u64| n * n)?;
    /// let squares: Vec<u64> = pool.map_ordered(1..=5).in_flight(2).map(Result::unwrap).collect();
    /// assert_eq!(squares, [1, 4, 9, 16, 25]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(mut self, n: usize) -> Self {
        self.stream.set_in_flight(n);
        self
    }

    /// For a keyed stream: how far past the next result to yield inputs may be pulled
    /// (default [`KEYED_BUFFER`]), the reorder buffer's bound; see
    /// [`MapUnordered::max_buffered`]. No effect on a stream without keys.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.stream.set_max_buffered(n);
        self
    }

    fn top_up(&mut self) {
        let stream = &self.stream;
        let reach = self
            .next_out
            .saturating_add(stream.max_buffered.max(stream.in_flight));
        while self.stream.window() < self.stream.in_flight
            && self.stream.next_index < reach
            && self.stream.pull()
        {
            self.buffer.push_back(None);
        }
    }
}

impl<Item, O, It: Iterator<Item = Item>> Iterator for MapOrdered<Item, O, It> {
    type Item = Result<O, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.top_up();
            if let Some(Some(_)) = self.buffer.front() {
                self.next_out += 1;
                let result = self.buffer.pop_front().flatten();
                self.top_up();
                return result;
            }
            let (index, message) = self.stream.receive()?;
            let result = match message {
                Ok((_, result)) => result,
                Err(_refused) => Err(TaskError::Cancelled),
            };
            match self.buffer.get_mut(index - self.next_out) {
                Some(slot) => *slot = Some(result),
                // The refused input: it comes after everything pulled before it.
                None => self.buffer.push_back(Some(result)),
            }
        }
    }
}

/// An iterator of [`Retried`] endings in the order tasks finish, from
/// [`AsyncPool::map_retry`](crate::AsyncPool::map_retry) or
/// [`AsyncPool::map_keyed_retry`](crate::AsyncPool::map_keyed_retry): a stream whose every input runs
/// with a retry policy, keyed or not. A failure hands its input back; each ending says how
/// many attempts it took.
///
/// Inputs are pulled as for [`MapUnordered`]: [`in_flight`](MapRetried::in_flight) counts
/// the stream's outstanding tasks — running, queued or waiting to retry; in a keyed stream, up
/// to `max_per_key` of them per key, so inputs waiting behind their key's limit do not count,
/// up to [`max_buffered`](MapRetried::max_buffered) in all. (A task waiting to retry has left
/// its key, so the key's next input may run meanwhile.) If the
/// pool shuts down, the input it refused comes back as a `Cancelled` failure with
/// `attempts == 0` (and an id no task has), and no more are pulled. Dropping it cancels what it
/// queued.
///
/// ```
/// use slowpool::{AsyncPool, Retry};
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder().max_workers(4).max_per_key(1).build(|n: u32| {
///     if n % 10 == 3 { Err(format!("{n} is unlucky")) } else { Ok(n * 2) }
/// })?;
/// let policy = Retry::attempts(2).backoff(Duration::from_millis(1), Duration::from_millis(1));
/// let mut failed = Vec::new();
/// for done in pool.map_keyed_retry((0..20).map(|n| (n % 3, n)), policy) {
///     if let Err(failure) = done.result {
///         assert_eq!(done.attempts, 2);
///         failed.extend(failure.input); // the input, back from the pool
///     }
/// }
/// failed.sort();
/// assert_eq!(failed, [3, 13]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MapRetried<Item, I, T, E, It> {
    stream: Stream<Item, Retried<I, T, E>, It>,
    /// Takes the input out of a refused item.
    input_of: fn(Item) -> I,
}

impl<Item, I, T, E, It: Iterator<Item = Item>> MapRetried<Item, I, T, E, It> {
    pub(crate) fn new(
        inputs: It,
        source: Source<Item, Retried<I, T, E>>,
        input_of: fn(Item) -> I,
    ) -> Self {
        MapRetried {
            stream: Stream::new(inputs, source),
            input_of,
        }
    }

    /// As [`MapUnordered::in_flight`].
    pub fn in_flight(mut self, n: usize) -> Self {
        self.stream.set_in_flight(n);
        self
    }

    /// As [`MapUnordered::max_buffered`].
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.stream.set_max_buffered(n);
        self
    }
}

impl<Item, I, T, E, It: Iterator<Item = Item>> Iterator for MapRetried<Item, I, T, E, It> {
    type Item = Retried<I, T, E>;

    fn next(&mut self) -> Option<Self::Item> {
        self.stream.top_up();
        let next = self.stream.receive().map(|(_, message)| match message {
            Ok(done) => done,
            Err(refused) => Retried {
                id: TaskId(0),
                attempts: 0,
                result: Err(Failure {
                    input: Some((self.input_of)(refused)),
                    error: Failed::Task(TaskError::Cancelled),
                }),
            },
        });
        self.stream.top_up();
        next
    }
}

impl<Item, O, It> fmt::Debug for MapUnordered<Item, O, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("in_flight", &self.stream.in_flight)
            .field("outstanding", &self.stream.outstanding.len())
            .field("pulled", &self.stream.next_index)
            .finish()
    }
}

impl<Item, O, It> fmt::Debug for MapOrdered<Item, O, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOrdered")
            .field("in_flight", &self.stream.in_flight)
            .field("outstanding", &self.stream.outstanding.len())
            .field("next", &self.next_out)
            .finish()
    }
}

impl<Item, I, T, E, It> fmt::Debug for MapRetried<Item, I, T, E, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapRetried")
            .field("in_flight", &self.stream.in_flight)
            .field("outstanding", &self.stream.outstanding.len())
            .field("pulled", &self.stream.next_index)
            .finish()
    }
}
