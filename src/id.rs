//! The id that tags every task: [`TaskId`]. Its own module, below everything that uses it
//! (the cell, the engine, `Task`), so that none of them depends on another for it.

use std::fmt;

/// Identifies a task within its pool.
///
/// Ids are unique per pool and increase in the order tasks were added, so sorting by id sorts by
/// submission. Every ending carries its task's id ([`Done::id`](crate::Done::id)), and
/// [`cancel`](crate::Pool::cancel) takes one.
///
/// ```
/// use slowpool::{AsyncPool, Mailbox, TaskId};
/// use crossbeam_channel::unbounded;
///
/// let pool = AsyncPool::new(2, |n: u32| n * 2)?;
/// let (mailbox, results): (Mailbox<u32>, _) = unbounded();
/// let ids: Vec<TaskId> = (1..=3).map(|n| pool.add_task_to(n, &mailbox)).collect::<Result<_, _>>()?;
/// let mut received: Vec<_> = results.iter().take(3).map(|done| (done.id, done.result)).collect();
/// received.sort_by_key(|(id, _)| *id); // ids follow the order of the adds
/// assert_eq!(received, [(ids[0], Ok(2)), (ids[1], Ok(4)), (ids[2], Ok(6))]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// Returns the id as a number: 1 for the first task a pool accepted, then 2, 3, ...
    ///
    /// ```
    /// use slowpool::AsyncPool;
    ///
    /// let pool = AsyncPool::new(1, |n: u8| n)?;
    /// assert_eq!(pool.add_task(1)?.id().as_u64(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("task #{}", self.0))
    }
}
