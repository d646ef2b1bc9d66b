//! Admission to the queue: the bounded queue, the rendezvous, and "is a worker free?".
//!
//! # Design
//!
//! One signed counter, `slack = idle workers − jobs in the queue`, answers all three questions:
//!
//! - an add with `queue_capacity(c)` may enqueue while `slack > -c`: with `c = 0` that means "a
//!   worker is free to take it at once" — the Elixir original's rendezvous, without polling;
//! - an elastic pool starts a worker when an add leaves `slack < 0`: no idle worker will take
//!   that job;
//! - an idle worker may retire only if it can take one back from `slack` (`slack >= 1`):
//!   otherwise an add already counted on it, and its job is on the way.
//!
//! The add claims an idle worker by decrementing `slack` *before* it sends the job, and a worker
//! adds itself back when it starts waiting. So the count is exact: a worker that wakes up with a
//! job and has not yet been seen leaving `idle` cannot make an add think a worker is free.
//!
//! A job that leaves the queue without an idle worker claiming it (cancelled while queued,
//! parked by its key, taken by a `join()` that helps) gives its unit back with `release`.
//!
//! Fixed pools with an unbounded queue (the default) need none of this and skip it: `tracked`
//! is false and every method returns at once.

use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

pub(crate) struct Admission {
    tracked: bool,
    /// `queue_capacity`, clamped so that `-capacity` cannot overflow.
    capacity: Option<isize>,
    slack: CachePadded<AtomicIsize>,
    /// Adds blocked waiting for room.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

/// Why an add was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    ShutDown,
}

impl Admission {
    pub(crate) fn new(capacity: Option<usize>, elastic: bool) -> Admission {
        let capacity = capacity.map(|c| c.min(isize::MAX as usize / 2) as isize);
        Admission {
            tracked: elastic || capacity.is_some(),
            capacity,
            slack: CachePadded::new(AtomicIsize::new(0)),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Takes a place in the queue for one job. `can_grow` says whether the pool may still start
    /// a worker (elastic pools admit past a full queue while they can grow). Returns the slack
    /// left: below zero, no idle worker will take the job.
    #[inline]
    pub(crate) fn acquire(
        &self,
        wait: bool,
        closed: &AtomicBool,
        can_grow: impl Fn() -> bool,
    ) -> Result<isize, Refused> {
        // Inlined, so that a fixed pool with an unbounded queue (the default) pays one test.
        if !self.tracked {
            return Ok(0);
        }
        self.acquire_tracked(wait, closed, can_grow)
    }

    fn acquire_tracked(
        &self,
        wait: bool,
        closed: &AtomicBool,
        can_grow: impl Fn() -> bool,
    ) -> Result<isize, Refused> {
        let Some(capacity) = self.capacity else {
            return Ok(self.slack.fetch_sub(1, SeqCst) - 1);
        };
        if let Some(left) = self.try_take(capacity, &can_grow) {
            return Ok(left);
        }
        if !wait {
            return Err(Refused::Full);
        }
        // Slow path. `waiters` is raised before the re-check under the lock, and every release
        // raises `slack` before it reads `waiters`: one of the two sees the other.
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock();
        let admitted = loop {
            if closed.load(SeqCst) {
                break Err(Refused::ShutDown);
            }
            if let Some(left) = self.try_take(capacity, &can_grow) {
                break Ok(left);
            }
            self.room.wait(&mut guard);
        };
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        admitted
    }

    fn try_take(&self, capacity: isize, can_grow: &impl Fn() -> bool) -> Option<isize> {
        let mut slack = self.slack.load(SeqCst);
        loop {
            if slack <= -capacity && !can_grow() {
                return None;
            }
            match self
                .slack
                .compare_exchange_weak(slack, slack - 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(slack - 1),
                Err(now) => slack = now,
            }
        }
    }

    /// A job enters the queue without asking (a keyed job its key let through). Returns the
    /// slack left.
    pub(crate) fn force(&self) -> isize {
        if !self.tracked {
            return 0;
        }
        self.slack.fetch_sub(1, SeqCst) - 1
    }

    /// A job left the queue (or never entered it) without an idle worker taking it: its place
    /// is free again.
    #[inline]
    pub(crate) fn release(&self) {
        if self.tracked {
            self.slack.fetch_add(1, SeqCst);
            self.wake_one();
        }
    }

    /// A worker starts waiting for a job.
    #[inline]
    pub(crate) fn enter_idle(&self) {
        self.release();
    }

    /// An idle worker wants to stop waiting (to retire). True if no add had counted on it; then
    /// it is no longer idle. False: a job is on its way to some idle worker.
    pub(crate) fn leave_idle(&self) -> bool {
        if !self.tracked {
            return true;
        }
        let mut slack = self.slack.load(SeqCst);
        while slack >= 1 {
            match self
                .slack
                .compare_exchange_weak(slack, slack - 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => slack = now,
            }
        }
        false
    }

    /// An idle worker stops waiting even though a job may be on its way (it retires because the
    /// pool shrank); the job goes to another worker.
    pub(crate) fn force_leave_idle(&self) {
        if self.tracked {
            self.slack.fetch_sub(1, SeqCst);
        }
    }

    /// Jobs in the queue that no idle worker will take (an elastic pool may start workers
    /// for them).
    pub(crate) fn unserved(&self) -> usize {
        if !self.tracked {
            return 0;
        }
        (-self.slack.load(SeqCst)).max(0) as usize
    }

    /// Wakes every blocked add (the pool closed: they return the input).
    pub(crate) fn close(&self) {
        let _guard = self.lock.lock();
        self.room.notify_all();
    }

    fn wake_one(&self) {
        if self.waiters.load(SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.room.notify_one();
        }
    }
}
