//! A cooperative stop signal for callbacks that can check one: [`CancelToken`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cell::Control;

/// Tells a running callback that nobody waits for its result any more, so a loop inside it can
/// stop early.
///
/// A callback built with [`build_with`](crate::Builder::build_with) reads its task's token with
/// [`Context::token`](crate::Context::token). It is raised when the task timed out
/// (its caller already got `TimedOut`), and when the pool is shut down with `shutdown_now`, or
/// by `shutdown_timeout` once its time ran out. Nothing forces the callback to look: a thread
/// cannot be killed.
///
/// The token is cheap to clone and may be moved to another thread.
///
/// ```
/// use slowpool::{AsyncPool, TaskError};
/// use std::time::Duration;
///
/// let pool = AsyncPool::builder()
///     .max_workers(1)
///     .task_timeout(Duration::from_millis(20))
///     .build_with(|| (), |cx, pages: u32| {
///         let mut fetched = 0;
///         while fetched < pages && !cx.token().is_cancelled() {
///             std::thread::sleep(Duration::from_millis(1)); // one page
///             fetched += 1;
///         }
///         fetched
///     })?;
/// assert_eq!(pool.add_task(0)?.recv(), Ok(0));
/// assert_eq!(pool.add_task(u32::MAX)?.recv(), Err(TaskError::TimedOut)); // and it stops
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CancelToken {
    task: Arc<dyn Control>,
    pool: Arc<AtomicBool>,
    /// The attempt this token was made for: a retried task's later attempt does not lower the
    /// token of an earlier one that timed out.
    attempt: u32,
}

impl CancelToken {
    pub(crate) fn new(task: Arc<dyn Control>, pool: Arc<AtomicBool>) -> CancelToken {
        let attempt = task.header().attempts();
        CancelToken {
            task,
            pool,
            attempt,
        }
    }

    /// Returns `true` once the task should stop: it timed out (with a retry policy: this
    /// attempt timed out, even once the next one runs), or the pool is stopping.
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::builder().max_workers(1).build_with(|| (), |cx, _: ()| {
    ///     while !cx.token().is_cancelled() {
    ///         std::thread::yield_now(); // one more page, one more row ...
    ///     }
    ///     "stopped"
    /// })?;
    /// let task = pool.add_task(())?;
    /// while !task.is_running() { std::thread::yield_now() }
    /// pool.shutdown_now(); // raises every token, then waits for the running task
    /// assert_eq!(task.recv(), Ok("stopped"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.task.header().stop_requested(self.attempt) || self.pool.load(Ordering::Acquire)
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
