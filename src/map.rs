//! Streaming a (possibly endless) iterator of inputs through a pool with bounded memory:
//! [`MapUnordered`] and [`MapOrdered`].
//!
//! # Design
//!
//! Each stream owns a private mailbox. It pulls an input only when fewer than `in_flight` of
//! its tasks are outstanding, so an endless iterator works and memory stays flat; it yields
//! results as they arrive in the mailbox. The ordered form keeps a reorder buffer and pulls
//! input `i` only while `i < next_to_yield + in_flight`: a slow task at the head stalls intake
//! instead of letting the buffer grow. Dropping a stream cancels what it still has queued.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::iter::Fuse;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{AddError, TaskError};
use crate::id::TaskId;

type Message<O> = (TaskId, Result<O, TaskError>);
type SubmitFn<Item, O> =
    dyn FnMut(Item, &Sender<Message<O>>) -> Result<TaskId, AddError<Item>> + Send;
type CancelFn = dyn Fn(TaskId) -> bool + Send;

/// How a stream reaches its pool: add an input to a mailbox, cancel a task; and the pool's
/// default number of tasks in flight. Each face of the pool makes one.
pub(crate) struct Source<Item, O> {
    submit: Box<SubmitFn<Item, O>>,
    cancel: Box<CancelFn>,
    in_flight: usize,
}

impl<Item, O> Source<Item, O> {
    pub(crate) fn new(
        in_flight: usize,
        submit: impl FnMut(Item, &Sender<Message<O>>) -> Result<TaskId, AddError<Item>> + Send + 'static,
        cancel: impl Fn(TaskId) -> bool + Send + 'static,
    ) -> Self {
        Source {
            submit: Box::new(submit),
            cancel: Box::new(cancel),
            in_flight: in_flight.max(1),
        }
    }
}

/// What both streams share: the inputs, the pool's adding and cancelling, the mailbox.
struct Stream<Item, O, It> {
    inputs: Fuse<It>,
    submit: Box<SubmitFn<Item, O>>,
    cancel: Box<CancelFn>,
    tx: Sender<Message<O>>,
    rx: Receiver<Message<O>>,
    /// Task id → index of its input.
    outstanding: HashMap<TaskId, usize>,
    next_index: usize,
    /// The pool refused an input (it shut down): pull no more.
    stopped: bool,
    /// A refused input's index, yielded as `Cancelled`.
    refused: Option<usize>,
}

impl<Item, O, It: Iterator<Item = Item>> Stream<Item, O, It> {
    fn new(inputs: It, source: Source<Item, O>) -> Self {
        let (tx, rx) = unbounded();
        Stream {
            inputs: inputs.fuse(),
            submit: source.submit,
            cancel: source.cancel,
            tx,
            rx,
            outstanding: HashMap::new(),
            next_index: 0,
            stopped: false,
            refused: None,
        }
    }

    /// Pulls one input and adds it. False when there is nothing more to pull.
    fn pull(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let Some(input) = self.inputs.next() else {
            self.stopped = true;
            return false;
        };
        let index = self.next_index;
        self.next_index += 1;
        match (self.submit)(input, &self.tx) {
            Ok(id) => {
                self.outstanding.insert(id, index);
                true
            }
            Err(refused) => {
                // The pool is shut down: this input ends the stream as `Cancelled`.
                drop(refused);
                self.stopped = true;
                self.refused = Some(index);
                false
            }
        }
    }

    /// Waits for the next result of this stream's tasks.
    fn receive(&mut self) -> Option<(usize, Result<O, TaskError>)> {
        if self.outstanding.is_empty() {
            return self
                .refused
                .take()
                .map(|index| (index, Err(TaskError::Cancelled)));
        }
        // The stream holds a sender, so this only ends with a message.
        let (id, result) = self.rx.recv().ok()?;
        let index = self.outstanding.remove(&id)?;
        Some((index, result))
    }
}

impl<Item, O, It> Drop for Stream<Item, O, It> {
    fn drop(&mut self) {
        for id in self.outstanding.keys() {
            (self.cancel)(*id);
        }
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
    stream: Stream<Item, O, It>,
    in_flight: usize,
}

impl<Item, O, It: Iterator<Item = Item>> MapUnordered<Item, O, It> {
    pub(crate) fn new(inputs: It, source: Source<Item, O>) -> Self {
        MapUnordered {
            in_flight: source.in_flight,
            stream: Stream::new(inputs, source),
        }
    }

    /// Sets how many tasks may be outstanding at once (default: twice the pool's
    /// `max_workers`; 0 is treated as 1).
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
        self.in_flight = n.max(1);
        self
    }

    fn top_up(&mut self) {
        while self.stream.outstanding.len() < self.in_flight && self.stream.pull() {}
    }
}

impl<Item, O, It: Iterator<Item = Item>> Iterator for MapUnordered<Item, O, It> {
    type Item = (usize, Result<O, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.top_up();
        let next = self.stream.receive();
        // Refill before handing the result over, so the pool stays busy meanwhile.
        self.top_up();
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
    stream: Stream<Item, O, It>,
    in_flight: usize,
    /// Results from `next_out` on; `None` while that task is outstanding.
    buffer: VecDeque<Option<Result<O, TaskError>>>,
    next_out: usize,
}

impl<Item, O, It: Iterator<Item = Item>> MapOrdered<Item, O, It> {
    pub(crate) fn new(inputs: It, source: Source<Item, O>) -> Self {
        MapOrdered {
            in_flight: source.in_flight,
            stream: Stream::new(inputs, source),
            buffer: VecDeque::new(),
            next_out: 0,
        }
    }

    /// Sets the window: how far past the next result to yield inputs may be pulled (default:
    /// twice the pool's `max_workers`; 0 is treated as 1).
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
        self.in_flight = n.max(1);
        self
    }

    fn top_up(&mut self) {
        while self.stream.next_index < self.next_out + self.in_flight && self.stream.pull() {
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
            let (index, result) = self.stream.receive()?;
            match self.buffer.get_mut(index - self.next_out) {
                Some(slot) => *slot = Some(result),
                // The refused input: it comes after everything pulled before it.
                None => self.buffer.push_back(Some(result)),
            }
        }
    }
}

impl<Item, O, It> fmt::Debug for MapUnordered<Item, O, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("in_flight", &self.in_flight)
            .field("outstanding", &self.stream.outstanding.len())
            .field("pulled", &self.stream.next_index)
            .finish()
    }
}

impl<Item, O, It> fmt::Debug for MapOrdered<Item, O, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOrdered")
            .field("in_flight", &self.in_flight)
            .field("outstanding", &self.stream.outstanding.len())
            .field("next", &self.next_out)
            .finish()
    }
}
