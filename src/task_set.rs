//! [`TaskSet`]: many tasks, taken as they finish.
//!
//! # Design
//!
//! A set owns one channel. Pushing a task re-routes its one-shot slot to send the task's
//! [`Done`] into that channel when it ends (at once if it already has), so a completion costs
//! one send and one receive, and a reader blocked on the set wakes once per ending — no
//! receiver per task, no select over a growing list.
//!
//! `pending` counts pushed tasks whose ending is not in the channel yet. A delivery sends and
//! decrements under `pending`'s lock, so `is_empty` (which reads `pending` and the channel's
//! length under that lock) is exact: a task counts until its ending has been received. Lock
//! order: a task's slot, then `pending` (the send runs inside the slot's delivery).

use std::fmt;
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::cell::{done, drop_quietly};
use crate::done::Done;
use crate::task::Task;

/// A set of tasks whose endings are taken as they finish, in completion order — Python's
/// `as_completed`, Java's `ExecutorCompletionService`, tokio's `JoinSet`.
///
/// [`push`](TaskSet::push) any [`Task`] (from any pool, any face, even one that has already
/// ended); [`recv`](TaskSet::recv) the next [`Done`] to come, with the task's id, attempts and
/// tag; `None` once every pushed task's ending has been taken. For an event loop,
/// `select!` over [`receiver`](TaskSet::receiver) while the set is not
/// [empty](TaskSet::is_empty): it is ready once per ending, never again for a task already
/// taken.
///
/// ```
/// use slowpool::{AsyncPool, TaskSet};
///
/// let pool = AsyncPool::new(4, |ms: u64| { std::thread::sleep(std::time::Duration::from_millis(ms)); ms })?;
/// let mut set = TaskSet::new();
/// for ms in [30, 0, 10] {
///     set.push(pool.task(ms).tag(format!("sleep {ms}")).add()?);
/// }
/// let mut total = 0;
/// while let Some(done) = set.recv() {
///     assert_eq!(done.tag, format!("sleep {}", done.result?)); // which task ended, without a map
///     total += 1;
/// }
/// assert_eq!(total, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TaskSet<O, Tag = ()> {
    tx: Sender<Done<O, Tag>>,
    rx: Receiver<Done<O, Tag>>,
    /// Pushed tasks whose ending is not in the channel yet (see the module documentation).
    pending: Arc<Mutex<usize>>,
}

impl<O: Send + 'static, Tag: Send + 'static> TaskSet<O, Tag> {
    /// Returns an empty set.
    ///
    /// ```
    /// use slowpool::TaskSet;
    ///
    /// let mut set: TaskSet<u32> = TaskSet::new();
    /// assert!(set.is_empty());
    /// assert!(set.recv().is_none()); // nothing to wait for: returns at once
    /// ```
    pub fn new() -> Self {
        let (tx, rx) = unbounded();
        TaskSet {
            tx,
            rx,
            pending: Arc::default(),
        }
    }

    /// Adds a task: its ending will come out of this set, with its tag. A task whose result
    /// was already read through its handle comes out at once, ending
    /// `Err(TaskError::AlreadyReceived)`.
    ///
    /// ```
    /// use slowpool::{TaskSet, ThreadPool};
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let mut set = TaskSet::new();
    /// let done_already = pool.spawn(|| 1)?;
    /// pool.join(); // it ended before it joins the set
    /// set.push(done_already);
    /// set.push(pool.spawn(|| 2)?);
    /// let mut sum = 0;
    /// while let Some(done) = set.recv() {
    ///     sum += done.result?;
    /// }
    /// assert_eq!(sum, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push(&self, task: Task<O, Tag>) {
        *self.pending.lock() += 1;
        let (tx, pending) = (self.tx.clone(), self.pending.clone());
        task.forward_with_tag(move |ended, tag, result| {
            let mut count = pending.lock();
            let refused = tx.send(done(ended, tag, result)).err();
            *count -= 1;
            drop(count);
            // The set is gone: nobody will read it.
            drop_quietly(refused);
        });
    }

    /// Returns `true` when no pushed task's ending is left to take: every one was received
    /// (by [`recv`](TaskSet::recv) or from [`receiver`](TaskSet::receiver)).
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskSet};
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// let mut set = TaskSet::new();
    /// set.push(pool.add_task(1)?);
    /// assert!(!set.is_empty()); // running, or ended and not taken yet
    /// assert_eq!(set.recv().map(|done| done.result), Some(Ok(1)));
    /// assert!(set.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        let pending = self.pending.lock();
        *pending == 0 && self.rx.is_empty()
    }

    /// Waits for the next task to end and returns its [`Done`]; `None` at once when the set is
    /// empty. Tasks come out in the order they end.
    ///
    /// The set's reader is this method, or a loop over [`receiver`](TaskSet::receiver) — not
    /// both at once from different threads: an ending another thread takes from a clone of the
    /// receiver while `recv` waits leaves `recv` waiting for the next one.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskSet};
    /// use crossbeam_channel::bounded;
    ///
    /// let (release, gate) = bounded::<()>(0);
    /// let pool = AsyncPool::new(2, move |slow: bool| { if slow { let _ = gate.recv(); } slow })?;
    /// let mut set = TaskSet::new();
    /// set.push(pool.add_task(true)?);
    /// set.push(pool.add_task(false)?);
    /// assert_eq!(set.recv().map(|done| done.result), Some(Ok(false))); // the fast one first
    /// release.send(())?;
    /// assert_eq!(set.recv().map(|done| done.result), Some(Ok(true)));
    /// assert!(set.recv().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self) -> Option<Done<O, Tag>> {
        if self.is_empty() {
            return None;
        }
        // The set holds a sender, so this returns with a message; one is there or on its way,
        // and this `&mut` reader is the set's only one.
        self.rx.recv().ok()
    }

    /// Returns the channel the set's endings arrive on, for `crossbeam_channel::select!`
    /// beside tickers and inputs. Select on it while the set is not
    /// [empty](TaskSet::is_empty); a message taken from it counts as taken from the set.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskSet};
    /// use crossbeam_channel::{select, tick};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::new(4, |n: u64| n * n)?;
    /// let set = TaskSet::new();
    /// for n in 1..=5 {
    ///     set.push(pool.add_task(n)?);
    /// }
    /// let ticker = tick(Duration::from_secs(1));
    /// let mut sum = 0;
    /// while !set.is_empty() {
    ///     select! {
    ///         recv(set.receiver()) -> done => sum += done?.result?,
    ///         recv(ticker) -> _ => println!("still waiting"),
    ///     }
    /// }
    /// assert_eq!(sum, 55);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receiver(&self) -> &Receiver<Done<O, Tag>> {
        &self.rx
    }
}

impl<O: Send + 'static, Tag: Send + 'static> Default for TaskSet<O, Tag> {
    fn default() -> Self {
        TaskSet::new()
    }
}

impl<O, Tag> Drop for TaskSet<O, Tag> {
    fn drop(&mut self) {
        // Endings nobody will read: dropped here, where a `Drop` that panics must not escape.
        for done in self.rx.try_iter() {
            drop_quietly(done);
        }
    }
}

impl<O, Tag> fmt::Debug for TaskSet<O, Tag> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSet")
            .field("pending", &*self.pending.lock())
            .field("ready", &self.rx.len())
            .finish()
    }
}
