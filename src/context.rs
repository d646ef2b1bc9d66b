//! [`Context`]: what a callback built with [`build_with`](crate::Builder::build_with) gets
//! beside its input — its worker's own state, its task's cancel token, and a handle to its
//! pool — and the per-worker state behind it.
//!
//! # Design
//!
//! The state lives in a thread-local slot of the worker thread, so it need be neither `Send`
//! nor `Sync` (a `RefCell` cache, an `Rc`, a blocking database client that is `Send` only), and
//! it lives as long as the thread is the pool's worker: dropped when the worker retires, when
//! the pool shuts down, or when an abandoned thread finally returns — by the worker loop, as it
//! exits ([`release`]), inside `catch_unwind`, never by the thread-local's own destructor (a
//! `Drop` that panics there would abort the process). The slot is tagged with the pool it
//! belongs to, so a state is only ever handed to the callback of the pool that made it.
//!
//! - It is made lazily, by the first task a worker runs (an elastic pool's new worker makes its
//!   own; the replacement of an abandoned thread makes a new one while the abandoned thread
//!   keeps its own).
//! - If the callback panics, the state is dropped (it may be half-updated) and the worker's
//!   next task makes a new one. If making it panics, that task ends `Panicked` and the next
//!   task tries again.
//! - A task that `join`s its pool from inside the callback can run queued tasks on its own
//!   thread meanwhile; those find the worker's state in use and get a fresh one, made for them
//!   and dropped after.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cell::drop_quietly;
use crate::pool::AsyncPool;
use crate::token::CancelToken;

/// What a callback built with [`build_with`](crate::Builder::build_with) gets with each input:
/// its worker's state, the task's [`CancelToken`], and a handle to its own pool. Any of them,
/// in any combination.
///
/// ```
/// use slowpool::{AsyncPool, Context, Mailbox};
/// use crossbeam_channel::unbounded;
/// use std::cell::RefCell;
/// use std::rc::Rc;
///
/// let (mailbox, results): (Mailbox<usize>, _) = unbounded();
/// let links = mailbox.clone();
/// let pool = AsyncPool::builder().max_workers(2).build_with(
///     || Rc::new(RefCell::new(0)), // per-worker: pages this worker fetched (neither Send nor Sync)
///     move |cx: &mut Context<'_, Rc<RefCell<usize>>, u32, usize>, depth: u32| {
///         *cx.state().borrow_mut() += 1;
///         if depth > 0 && !cx.token().is_cancelled() {
///             cx.pool().add_task_to(depth - 1, &links).expect("the pool is open"); // a link found
///         }
///         depth as usize
///     },
/// )?;
/// pool.add_task_to(3, &mailbox)?;
/// let mut depths: Vec<usize> = results.iter().take(4).map(|done| done.result.unwrap()).collect();
/// depths.sort();
/// assert_eq!(depths, [0, 1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Context<'a, S, I: Send + 'static, O: Send + 'static> {
    state: &'a mut S,
    token: &'a CancelToken,
    pool: &'a AsyncPool<I, O>,
}

impl<S, I: Send + 'static, O: Send + 'static> Context<'_, S, I, O> {
    /// Returns this worker's state, made by `init` on the worker's thread (see
    /// [`build_with`](crate::Builder::build_with)).
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(1)
    ///     .build_with(Vec::new, |cx, n: u32| {
    ///         let seen: &mut Vec<u32> = cx.state();
    ///         seen.push(n);
    ///         seen.len()
    ///     })?;
    /// assert_eq!(pool.add_task(7)?.recv(), Ok(1));
    /// assert_eq!(pool.add_task(8)?.recv(), Ok(2)); // the same worker, the same state
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// Returns the task's cancel token: raised when the task times out or the pool stops now.
    ///
    /// ```
    /// use slowpool::{AsyncPool, TaskError};
    /// use std::time::Duration;
    ///
    /// let pool = AsyncPool::builder()
    ///     .max_workers(2)
    ///     .task_timeout(Duration::from_millis(20))
    ///     .build_with(|| (), |cx, limit: u64| {
    ///         let mut n = 0;
    ///         while n < limit && !cx.token().is_cancelled() {
    ///             n += 1;
    ///             std::thread::yield_now();
    ///         }
    ///         n
    ///     })?;
    /// assert_eq!(pool.add_task(3)?.recv(), Ok(3));
    /// assert_eq!(pool.add_task(u64::MAX)?.recv(), Err(TaskError::TimedOut)); // and it stops
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token(&self) -> &CancelToken {
        self.token
    }

    /// Returns a [handle](crate::Pool::handle) to the pool running this task, to add more
    /// work (a crawler adding the links it found) without keeping the pool alive.
    ///
    /// ```
    /// use slowpool::{AsyncPool, Mailbox};
    /// use crossbeam_channel::unbounded;
    ///
    /// // Each input n > 0 adds n - 1; every ending goes to one mailbox.
    /// let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    /// let found = mailbox.clone();
    /// let pool = AsyncPool::builder().max_workers(2).build_with(|| (), move |cx, n: u32| {
    ///     if n > 0 {
    ///         cx.pool().add_task_to(n - 1, &found).expect("the pool is open");
    ///     }
    ///     n
    /// })?;
    /// pool.add_task_to(3, &mailbox)?;
    /// let mut seen: Vec<u32> = results.iter().take(4).map(|done| done.result.unwrap()).collect();
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pool(&self) -> &AsyncPool<I, O> {
        self.pool
    }
}

impl<S, I: Send + 'static, O: Send + 'static> fmt::Debug for Context<'_, S, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("token", self.token)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The current worker thread's state: `(owner, state)`.
    static STATE: RefCell<Option<(usize, Box<dyn Any>)>> = const { RefCell::new(None) };
}

static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);

/// The callback a pool built with `build_with` runs: `callback` with this worker thread's
/// state (made by `init` on first use), the task's token and `pool`.
pub(crate) fn with_context<S, I, O>(
    init: impl Fn() -> S + Send + Sync + 'static,
    callback: impl for<'c> Fn(&mut Context<'c, S, I, O>, I) -> O + Send + Sync + 'static,
    pool: AsyncPool<I, O>,
) -> impl Fn(I, &CancelToken) -> O + Send + Sync + 'static
where
    S: 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
    move |input: I, token: &CancelToken| {
        STATE.with(|slot| {
            let Ok(mut slot) = slot.try_borrow_mut() else {
                // An outer task on this thread holds the state (this task runs inside its
                // `join`): a fresh one, for this task only.
                let mut state = init();
                let mut cx = Context {
                    state: &mut state,
                    token,
                    pool: &pool,
                };
                let output = callback(&mut cx, input);
                drop_quietly(state);
                return output;
            };
            let mine = slot
                .as_ref()
                .is_some_and(|(o, state)| *o == owner && state.is::<S>());
            if !mine {
                // Dropped before the new one is made: two states never live at once.
                drop_quietly(slot.take());
                *slot = Some((owner, Box::new(init())));
            }
            let state = slot
                .as_mut()
                .and_then(|(_, state)| state.downcast_mut::<S>())
                .expect("made above");
            let mut cx = Context {
                state,
                token,
                pool: &pool,
            };
            match panic::catch_unwind(AssertUnwindSafe(|| callback(&mut cx, input))) {
                Ok(output) => output,
                Err(payload) => {
                    // Possibly half-updated: the next task makes a new one.
                    let dropped = slot.take();
                    drop(slot);
                    drop_quietly(dropped);
                    panic::resume_unwind(payload)
                }
            }
        })
    }
}

/// Drops the current thread's worker state, if it has one: called by a worker as it leaves
/// its pool, so that the state's `Drop` runs where a panic is caught, not in the thread-local
/// destructor (where it would abort the process).
pub(crate) fn release() {
    let state = STATE.with(|slot| slot.try_borrow_mut().ok().and_then(|mut slot| slot.take()));
    drop_quietly(state);
}
