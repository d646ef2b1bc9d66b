//! The pool's threads: how many exist and why. The one place that starts, counts, retires,
//! abandons, replaces and joins them.
//!
//! # Counts
//!
//! - `live`: threads that are workers of the pool — running, idle, or being started. It changes
//!   only here: +1 when a thread is reserved ([`Workers::reserve`]), −1 when a worker retires,
//!   leaves at shutdown, or its place is given up. An abandoned thread's place passes to its
//!   replacement, so abandoning alone does not change `live`.
//! - `abandoned`: threads that left the pool because a task of theirs timed out, still running
//!   that callback. +1 in [`Workers::time_out`] (at most once per thread: the flag is on the
//!   thread's [`Seat`]), −1 when the thread exits.
//!
//! A thread that exits is briefly still alive after it was uncounted (retired threads are
//! detached; shutdown joins the others): `live + abandoned` counts pool threads, not OS threads.
//!
//! Every worker handle is kept until the thread leaves: a shutdown joins every worker, then
//! seals the pool so that no thread can start behind that join.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::limits;
use super::scheduler::Seat;
use super::spawn::spawn_thread;

pub(crate) struct Workers {
    name: String,
    stack_size: Option<usize>,
    /// The configured minimum; the effective one is `min(min, max)`, so lowering `max` below
    /// it and raising it again restores it.
    min: usize,
    max: AtomicUsize,
    live: AtomicUsize,
    abandoned: AtomicUsize,
    threads: Mutex<Threads>,
    /// Signalled when a worker in `running` is about to exit (`exited`).
    exits: Condvar,
    /// Held by the shutdown that joins the threads.
    exit_lock: Mutex<()>,
}

struct Threads {
    /// Every worker thread not yet joined or detached, by index.
    running: HashMap<usize, (Arc<Seat>, JoinHandle<()>)>,
    /// The workers of `running` that are about to exit: their own work is over (their
    /// per-worker state dropped), so joining them does not wait on the pool's work.
    exiting: HashSet<usize>,
    next_index: usize,
    /// Set once a shutdown has joined every worker: no thread may start after that.
    sealed: bool,
}

/// Why a worker thread leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Idle past `keep_alive` above the minimum, or the pool shrank. Already uncounted.
    Retired,
    /// The pool shut down and every task has ended: the shutdown joins this thread.
    ShutDown,
    /// A task of its timed out and a replacement took its place.
    Abandoned,
}

/// What `abandon` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandon {
    /// The thread left the pool now: the caller replaces it (or gives up its place).
    Now,
    /// The thread had already left the pool (a task it ran inside `join()` timed out too).
    Already,
    /// `max_abandoned` threads are abandoned already: the thread stays a worker.
    Refused,
}

impl Workers {
    pub(crate) fn new(name: String, stack_size: Option<usize>, min: usize, max: usize) -> Workers {
        Workers {
            name,
            stack_size,
            min,
            max: AtomicUsize::new(max),
            live: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            threads: Mutex::new(Threads {
                running: HashMap::new(),
                exiting: HashSet::new(),
                next_index: 0,
                sealed: false,
            }),
            exits: Condvar::new(),
            exit_lock: Mutex::new(()),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    pub(crate) fn abandoned(&self) -> usize {
        self.abandoned.load(SeqCst)
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(SeqCst)
    }

    /// The minimum in force: the configured one, or the maximum if that is lower.
    pub(crate) fn min_now(&self) -> usize {
        self.min.min(self.max())
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, SeqCst);
    }

    /// Counts one more worker if the pool is below its maximum. The caller then `start`s it.
    pub(crate) fn reserve(&self) -> bool {
        self.live
            .fetch_update(SeqCst, SeqCst, |live| {
                (live < self.max()).then_some(live + 1)
            })
            .is_ok()
    }

    /// Uncounts a place reserved or inherited but not filled (a refused thread, or an abandoned
    /// thread's place when no replacement is needed).
    pub(crate) fn give_up_place(&self) {
        self.live.fetch_sub(1, SeqCst);
    }

    /// Starts a worker thread for a place already counted. `body` runs on it with its seat.
    pub(crate) fn start(&self, body: impl FnOnce(Arc<Seat>) + Send + 'static) -> io::Result<()> {
        // Held while the thread starts, so a shutdown joining the workers either sees its
        // handle or has sealed the pool first.
        let mut threads = self.threads.lock();
        if threads.sealed {
            return Err(io::Error::other("pool has shut down"));
        }
        limits::take()?;
        let index = threads.next_index;
        threads.next_index += 1;
        let seat = Arc::new(Seat::new(index));
        let name = format!("{}-{}", self.name, index);
        let for_thread = seat.clone();
        match spawn_thread(name, self.stack_size, move || body(for_thread)) {
            Ok(handle) => {
                threads.running.insert(index, (seat, handle));
                Ok(())
            }
            Err(err) => {
                limits::put_back();
                Err(err)
            }
        }
    }

    /// A worker about to take its next job leaves if the pool has more workers than its
    /// maximum (it shrank).
    pub(crate) fn retire_if_over_max(&self) -> bool {
        self.live.load(SeqCst) > self.max()
            && self
                .live
                .fetch_update(SeqCst, SeqCst, |live| (live > self.max()).then(|| live - 1))
                .is_ok()
    }

    /// An idle worker's keep-alive ran out: it leaves if the pool stays at its minimum or above.
    pub(crate) fn retire_idle(&self) -> bool {
        self.live
            .fetch_update(SeqCst, SeqCst, |live| {
                (live > self.min_now()).then(|| live - 1)
            })
            .is_ok()
    }

    /// Times out the task that worker `index` runs, if `transition` (its state change
    /// State::Running → State::TimedOut) wins, and decides the thread's fate: it leaves the pool (is
    /// abandoned) if `force` (shutdown_timeout) or while fewer than `max_abandoned` threads are
    /// abandoned. `None` if the task was no longer running.
    ///
    /// Both happen under the threads lock, which [`fate_of`](Workers::fate_of) also takes: the
    /// worker that finds its task timed out cannot look at its own fate before it is decided.
    pub(crate) fn time_out(
        &self,
        index: usize,
        force: bool,
        max_abandoned: usize,
        transition: impl FnOnce() -> bool,
    ) -> Option<Abandon> {
        let mut threads = self.threads.lock();
        if !transition() {
            return None;
        }
        let Some((seat, _)) = threads.running.get(&index) else {
            // Its thread already left the pool (a task it ran inside `join()` timed out too).
            return Some(Abandon::Already);
        };
        if seat.is_abandoned() {
            return Some(Abandon::Already);
        }
        if !force && self.abandoned.load(SeqCst) >= max_abandoned {
            return Some(Abandon::Refused);
        }
        self.abandoned.fetch_add(1, SeqCst);
        seat.abandoned.store(true, SeqCst);
        // Nobody joins an abandoned thread: let go of its handle, so its stack is freed when it
        // exits rather than at shutdown.
        drop(threads.running.remove(&index));
        Some(Abandon::Now)
    }

    /// True if this worker's thread was abandoned. Waits for a timeout being decided.
    pub(crate) fn fate_of(&self, seat: &Seat) -> bool {
        let _decided = self.threads.lock();
        seat.is_abandoned()
    }

    /// The worker thread `index` is about to exit.
    pub(crate) fn exited(&self, index: usize, why: Exit) {
        match why {
            Exit::Retired => {
                // Nobody joins a retired worker: detach it so its stack is freed at exit.
                let entry = self.threads.lock().running.remove(&index);
                drop(entry);
            }
            Exit::ShutDown => {
                let mut threads = self.threads.lock();
                if threads.running.contains_key(&index) {
                    threads.exiting.insert(index);
                    self.exits.notify_all();
                }
                drop(threads);
                self.live.fetch_sub(1, SeqCst);
            }
            Exit::Abandoned => {
                self.abandoned.fetch_sub(1, SeqCst);
            }
        }
        limits::put_back();
    }

    /// Joins every worker thread (the caller made sure they are leaving), then seals the pool
    /// against new threads. One joiner at a time: a second caller must not return while the
    /// first is still joining.
    ///
    /// With a `deadline`, a worker still busy then (a per-worker state's slow `Drop`, a callback
    /// of an abandoned task) is not waited for: it is detached and finishes on its own.
    pub(crate) fn join_all(&self, deadline: Option<Instant>) {
        let _joining = self.exit_lock.lock();
        loop {
            let mut threads = self.threads.lock();
            let mut late = false;
            if let Some(deadline) = deadline {
                while threads
                    .running
                    .keys()
                    .any(|index| !threads.exiting.contains(index))
                {
                    if self.exits.wait_until(&mut threads, deadline).timed_out() {
                        late = true;
                        break;
                    }
                }
            }
            if threads.running.is_empty() || late {
                threads.sealed = true;
            }
            let sealed = threads.sealed;
            let exiting = std::mem::take(&mut threads.exiting);
            let handles: Vec<_> = threads.running.drain().collect();
            drop(threads);
            for (index, (_, handle)) in handles {
                if !late || exiting.contains(&index) {
                    let _ = handle.join();
                }
                // Else dropped: detached.
            }
            if sealed {
                return;
            }
        }
    }
}
