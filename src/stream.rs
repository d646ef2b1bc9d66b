//! [`Stream`]: a (possibly endless) iterator of inputs through a pool, with bounded memory.
//!
//! # Design
//!
//! One type, orthogonal options (Elixir's `Task.async_stream(enum, fun, ordered:,
//! max_concurrency:)` is the model): in completion or input order, keyed, retried, inputs
//! kept — any combination. Every input is added through the same [`Submit`] path as a single
//! add, with the stream's options.
//!
//! The stream keeps its tasks in an [`InFlight`] (a private mailbox, and each task's input
//! index, key and tag: the record the Redis feeder keeps too). It pulls an input only when
//! fewer than `in_flight` of its tasks count against the window, so an endless iterator works
//! and memory stays flat; it yields endings as they arrive in the mailbox. In input order it
//! keeps a reorder buffer and pulls input `i` only while `i < next_to_yield + window`: a slow
//! task at the head stalls intake instead of letting the buffer grow.
//!
//! A keyed stream counts against its window only the tasks their keys let run: Σ over keys of
//! min(outstanding of the key, per-key limit). The others wait on their key in the pool, taking
//! no place in the window, so input sorted by key runs as fast as shuffled input, up to
//! `max_buffered` pulled but unfinished inputs. Dropping a stream forgets what it still has in
//! the pool: queued tasks are cancelled, running ones make no further attempt.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::done::{Done, TaskError};
use crate::id::TaskId;
use crate::in_flight::InFlight;
use crate::pool::{Kind, Pool};
use crate::retry::{policy_fn, Retry};
use crate::submit::{again, Submit, Wrap};
use crate::work::Again;

/// The default bound on a keyed stream's pulled-but-unfinished inputs.
const KEYED_BUFFER: usize = 65_536;

type KeyFn<X> = dyn Fn(&X) -> u64 + Send;

/// A stream of inputs through a pool, yielding each task's [`Done`] as it ends: made by
/// [`AsyncPool::stream`](crate::AsyncPool#method.stream) or
/// [`ThreadPool::stream`](crate::ThreadPool#method.stream). It is an [`Iterator`]; set its
/// options before the first `next`.
///
/// - Inputs are pulled lazily, at most [`in_flight`](Stream::in_flight) tasks outstanding, so
///   an endless iterator runs in constant memory. The input iterator is asked again whenever
///   the stream wants more, even after it returned `None`: an iterator over a queue that the
///   loop consuming the stream fills (a crawler's frontier) keeps the stream going, and the
///   stream ends once the iterator has nothing and no task is outstanding.
/// - Each [`Done`] carries its tag: the input's position (from 0), or with
///   [`keep_input`](Stream::keep_input) the input itself.
/// - If the pool shuts down, the input it could not add ends the stream as
///   `Err(TaskError::Cancelled)` with 0 attempts (its `id` is one no task has), and no more are
///   pulled.
/// - Dropping it cancels the tasks it queued that have not started; running ones finish (and
///   make no further attempt) and their endings are dropped.
///
/// ```
/// use slowpool::{AsyncPool, Failed, Flat, Retry};
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder().max_workers(4).max_per_key(1).build(|n: u32| {
///     if n % 10 == 3 { Err(format!("{n} is unlucky")) } else { Ok(n * 2) }
/// })?;
/// let ms = Duration::from_millis(1);
/// let mut failed = Vec::new();
/// for done in pool
///     .stream(0..20)
///     .ordered() // in input order
///     .key(|n| n % 3) // at most 1 task per key at once
///     .retry(Retry::attempts(2).backoff(ms, ms))
///     .keep_input() // each ending carries its input
/// {
///     if let Err(Failed::Callback(_)) = done.result.flat() {
///         assert_eq!(done.attempts, 2);
///         failed.push(done.tag);
///     }
/// }
/// assert_eq!(failed, [3, 13]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Stream<K: Kind, It: Iterator, O, Tag = usize> {
    pool: Pool<K>,
    wrap: Wrap<K, It::Item, O>,
    /// Not fused: asked again whenever the stream wants more (see `pull`).
    inputs: It,
    tag_of: fn(usize, &It::Item) -> Tag,
    again: Option<Again<It::Item, O>>,
    keys: Option<KeyWindow<It::Item>>,
    in_flight: usize,
    /// Pulled but unfinished inputs in all, for a keyed stream; `None`: the default.
    max_buffered: Option<usize>,
    /// Each outstanding task's input index, key and tag; dropping it forgets them in the pool.
    outstanding: InFlight<Entry<Tag>, Done<O>>,
    next_index: usize,
    /// The pool refused an input (it shut down): pull no more.
    stopped: bool,
    /// A refused input's index and tag, yielded once everything before it has come in.
    refused: Option<(usize, Tag)>,
    /// In input order: endings from `next_out` on; `None` while that task is outstanding.
    reorder: Option<VecDeque<Option<Done<O, Tag>>>>,
    next_out: usize,
}

/// What a stream remembers of one of its tasks.
struct Entry<Tag> {
    index: usize,
    key: u64,
    tag: Tag,
}

/// Which of a keyed stream's outstanding tasks its keys let run (see the module docs).
struct KeyWindow<X> {
    key_of: Box<KeyFn<X>>,
    per_key: usize,
    outstanding: HashMap<u64, usize>,
    runnable: usize,
}

impl<X> KeyWindow<X> {
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

impl<K, It, O> Stream<K, It, O>
where
    K: Kind,
    It: Iterator,
    It::Item: Send + 'static,
    O: Send + 'static,
{
    pub(crate) fn new(pool: Pool<K>, inputs: It, wrap: Wrap<K, It::Item, O>) -> Self {
        let forget = pool.forgetter();
        Stream {
            in_flight: 2 * pool.max_workers().max(1),
            pool,
            wrap,
            inputs,
            tag_of: |index, _| index,
            again: None,
            keys: None,
            max_buffered: None,
            outstanding: InFlight::new(Box::new(forget)),
            next_index: 0,
            stopped: false,
            refused: None,
            reorder: None,
            next_out: 0,
        }
    }
}

impl<K, It, O, Tag> Stream<K, It, O, Tag>
where
    K: Kind,
    It: Iterator,
    It::Item: Send + 'static,
    O: Send + 'static,
    Tag: Send + 'static,
{
    /// Yields the endings in input order rather than as tasks finish. At most `in_flight`
    /// inputs past the next one to yield are pulled, so a slow task at the head stalls intake
    /// instead of growing the reorder buffer.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |s: &'static str| s.len())?;
    /// let lengths: Vec<usize> = pool
    ///     .stream(["a", "bbb", "cc"])
    ///     .ordered()
    ///     .map(|done| done.result)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(lengths, [1, 3, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ordered(mut self) -> Self {
        self.reorder.get_or_insert_with(VecDeque::new);
        self
    }

    /// Files each input's task under the key `key` gives it (a host), so that
    /// [`max_per_key`](crate::Builder::max_per_key) and
    /// [`min_interval_per_key`](crate::Builder::min_interval_per_key) hold — and one key does
    /// not block the stream: inputs whose key is at its limit wait on their key in the pool
    /// without taking a place in the [`in_flight`](Stream::in_flight) window, and the stream
    /// keeps pulling for the other keys, up to [`max_buffered`](Stream::max_buffered) inputs
    /// pulled but unfinished. On a pool without per-key settings the keys have no effect.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    /// let most = Arc::new(Mutex::new(0));
    /// let (r, m) = (running.clone(), most.clone());
    /// fn host(url: &str) -> String { url.split('/').nth(2).unwrap_or_default().to_string() }
    /// let pool = AsyncPool::builder().max_workers(8).max_per_key(2).build(move |url: String| {
    ///     let now = { let mut r = r.lock().unwrap(); *r.entry(host(&url)).or_default() += 1; r[&host(&url)] };
    ///     let mut most = m.lock().unwrap();
    ///     *most = (*most).max(now);
    ///     drop(most);
    ///     *r.lock().unwrap().get_mut(&host(&url)).unwrap() -= 1;
    ///     url.len()
    /// })?;
    /// // Sorted by host, as URL lists usually are.
    /// let urls = (0..300).map(|i| format!("http://host{}.example/{i}", i / 100));
    /// assert_eq!(pool.stream(urls).key(|url| host(url)).count(), 300);
    /// assert!(*most.lock().unwrap() <= 2); // never more than 2 per host
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key<H: Hash>(mut self, key: impl Fn(&It::Item) -> H + Send + 'static) -> Self {
        let engine = self.pool.engine();
        let keyed = engine.as_ref().and_then(|engine| {
            let hasher: RandomState = engine.key_hasher()?;
            Some((hasher, engine.per_key_limit()?))
        });
        self.keys = keyed.map(|(hasher, per_key)| KeyWindow {
            key_of: Box::new(move |item| hasher.hash_one(key(item))),
            per_key: per_key.max(1),
            outstanding: HashMap::new(),
            runnable: 0,
        });
        self
    }

    /// Sets how many tasks may count against the window at once (default: twice the pool's
    /// `max_workers`; 0 is taken as 1). In a keyed stream, only tasks their key lets run count.
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
    /// assert_eq!(pool.stream(0..100).in_flight(3).count(), 100);
    /// assert!(most.load(Ordering::SeqCst) <= 3); // never more than 3 outstanding
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    /// For a keyed stream: the most inputs pulled but not yet finished — running, queued, or
    /// waiting behind their key's limit (default 65,536; never below `in_flight`); in input
    /// order, how far past the next ending to yield inputs may be pulled. This bound is the
    /// stream's memory: input sorted by key needs room for the longest run of one key to keep
    /// every key busy. No effect on a stream without keys, whose bound is `in_flight`.
    ///
    /// The window knows the stream's own tasks only: work the stream does not see that holds a
    /// key — other adds under the same key, or a timed-out callback still running (it keeps its
    /// key until it returns) — leaves those tasks waiting while they fill the window, and the
    /// stream pulls less until that work ends.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(4).max_per_key(1).build(|n: u32| n)?;
    /// let sorted = (0..100).map(|n| n / 50); // two long runs of one key each
    /// let done = pool.stream(sorted).key(|n| *n).max_buffered(60).count();
    /// assert_eq!(done, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = Some(n.max(1));
        self
    }

    /// Tags each ending with its input (a clone, made when the input is pulled) instead of its
    /// position: a failure says which input failed, and an input the pool refused comes back.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(4, |s: &'static str| s.parse::<u8>())?;
    /// let failed: Vec<&str> = pool
    ///     .stream(["1", "x", "3"])
    ///     .keep_input()
    ///     .filter(|done| matches!(done.result, Ok(Err(_))))
    ///     .map(|done| done.tag)
    ///     .collect();
    /// assert_eq!(failed, ["x"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_input(self) -> Stream<K, It, O, It::Item>
    where
        It::Item: Clone,
    {
        Stream {
            pool: self.pool.clone(),
            wrap: self.wrap,
            inputs: self.inputs,
            tag_of: |_, item| item.clone(),
            again: self.again,
            keys: self.keys,
            in_flight: self.in_flight,
            max_buffered: self.max_buffered,
            outstanding: InFlight::new(Box::new(self.pool.forgetter())),
            next_index: self.next_index,
            stopped: self.stopped,
            refused: None,
            reorder: self.reorder.map(|_| VecDeque::new()),
            next_out: self.next_out,
        }
    }

    /// The most outstanding tasks that count against the window, and the most pulled but
    /// unfinished inputs.
    fn bounds(&self) -> (usize, usize) {
        let buffered = match (&self.keys, self.max_buffered) {
            (None, _) => self.in_flight,
            (Some(_), Some(n)) => n,
            (Some(_), None) => KEYED_BUFFER,
        };
        (self.in_flight, buffered.max(self.in_flight))
    }

    /// Outstanding tasks that count against `in_flight`: all of them, or in a keyed stream
    /// those their keys let run.
    fn window(&self) -> usize {
        match &self.keys {
            Some(keys) => keys.runnable,
            None => self.outstanding.len(),
        }
    }

    /// Pulls while the window has room and the buffer bound allows.
    fn top_up(&mut self) {
        let (in_flight, buffered) = self.bounds();
        loop {
            let room = match &self.reorder {
                Some(_) => self.next_index < self.next_out.saturating_add(buffered),
                None => self.outstanding.len() < buffered,
            };
            if !(room && self.window() < in_flight && self.pull()) {
                return;
            }
        }
    }

    /// Pulls one input and adds it. False when there is nothing to pull now.
    fn pull(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let Some(item) = self.inputs.next() else {
            return false;
        };
        let index = self.next_index;
        self.next_index += 1;
        let tag = (self.tag_of)(index, &item);
        let key = self.keys.as_ref().map(|keys| (keys.key_of)(&item));
        let entry = Entry {
            index,
            key: key.unwrap_or(0),
            tag,
        };
        let submit = Submit::new(&self.pool, item, self.wrap)
            .key_hash(key)
            .retry_with(self.again.as_ref());
        match self
            .outstanding
            .add(entry, |mailbox| submit.add_to(mailbox).map_err(drop_input))
        {
            Ok(_) => {
                if let (Some(keys), Some(key)) = (&mut self.keys, key) {
                    keys.entered(key);
                }
                if let Some(reorder) = &mut self.reorder {
                    reorder.push_back(None);
                }
                true
            }
            Err(entry) => {
                // The pool is shut down: this input ends the stream as `Cancelled`.
                self.stopped = true;
                self.refused = Some((entry.index, entry.tag));
                false
            }
        }
    }

    /// Waits for the next ending of this stream's tasks, with its input's index; the refused
    /// input once everything before it has come in.
    fn receive(&mut self) -> Option<(usize, Done<O, Tag>)> {
        if self.outstanding.is_empty() {
            return self.refused.take().map(|(index, tag)| {
                let done = Done {
                    id: TaskId(0),
                    attempts: 0,
                    tag,
                    result: Err(TaskError::Cancelled),
                };
                (index, done)
            });
        }
        let (entry, done) = self.outstanding.take()?;
        if let Some(keys) = &mut self.keys {
            keys.left(entry.key);
        }
        let Done {
            id,
            attempts,
            result,
            ..
        } = done;
        let done = Done {
            id,
            attempts,
            tag: entry.tag,
            result,
        };
        Some((entry.index, done))
    }
}

/// The refused input is dropped: the entry, whose tag may hold a copy, comes back instead.
fn drop_input<X>(refused: crate::error::AddError<X>) {
    crate::cell::drop_quietly(refused.into_inner());
}

impl<K, It, T, E, Tag> Stream<K, It, Result<T, E>, Tag>
where
    K: Kind,
    It: Iterator,
    It::Item: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    Tag: Send + 'static,
{
    /// Retries each input's task by `policy` (see [`Submit::retry`]). A task waiting to retry
    /// counts against the window; it has left its key, so the key's next input may run
    /// meanwhile.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Retry};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    ///
    /// static FAILS: AtomicU32 = AtomicU32::new(0);
    /// let pool = AsyncPool::new(2, |n: u32| {
    ///     if n == 1 && FAILS.fetch_add(1, Ordering::SeqCst) < 2 { Err("flaky") } else { Ok(n) }
    /// })?;
    /// let ms = Duration::from_millis(1);
    /// let endings: Vec<(u32, u32)> = pool
    ///     .stream(0..3)
    ///     .ordered()
    ///     .retry(Retry::attempts(3).backoff(ms, ms))
    ///     .map(|done| (done.result.unwrap().unwrap(), done.attempts))
    ///     .collect();
    /// assert_eq!(endings, [(0, 1), (1, 3), (2, 1)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(mut self, policy: Retry<E>) -> Self
    where
        E: 'static,
    {
        self.again = Some(again(policy_fn(policy)));
        self
    }
}

impl<K, It, O, Tag> Iterator for Stream<K, It, O, Tag>
where
    K: Kind,
    It: Iterator,
    It::Item: Send + 'static,
    O: Send + 'static,
    Tag: Send + 'static,
{
    type Item = Done<O, Tag>;

    fn next(&mut self) -> Option<Done<O, Tag>> {
        if self.reorder.is_none() {
            self.top_up();
            let next = self.receive().map(|(_, done)| done);
            // Refill before handing the ending over, so the pool stays busy meanwhile.
            self.top_up();
            return next;
        }
        loop {
            self.top_up();
            let reorder = self.reorder.as_mut().expect("an ordered stream");
            if let Some(Some(_)) = reorder.front() {
                self.next_out += 1;
                let done = reorder.pop_front().flatten();
                self.top_up();
                return done;
            }
            let (index, done) = self.receive()?;
            let reorder = self.reorder.as_mut().expect("an ordered stream");
            match reorder.get_mut(index - self.next_out) {
                Some(slot) => *slot = Some(done),
                // The refused input: it comes after everything pulled before it.
                None => reorder.push_back(Some(done)),
            }
        }
    }
}

impl<K: Kind, It: Iterator, O, Tag> fmt::Debug for Stream<K, It, O, Tag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("ordered", &self.reorder.is_some())
            .field("keyed", &self.keys.is_some())
            .field("retry", &self.again.is_some())
            .field("in_flight", &self.in_flight)
            .field("outstanding", &self.outstanding.len())
            .field("pulled", &self.next_index)
            .finish()
    }
}
