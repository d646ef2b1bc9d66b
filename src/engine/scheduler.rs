//! Who waits for work, and who gets woken when a job arrives.
//!
//! # Design
//!
//! Jobs travel on one shared crossbeam channel, but idle workers do not all block on it: a
//! channel with thousands of blocked receivers makes every send pay for its waker list. Here an
//! idle worker parks on its own [`Seat`] (a flag and `thread::park`), pushed onto a LIFO stack.
//! At most one parked worker is woken per add, and only when no worker is already *searching*
//! (woken and not yet past its `try_recv`):
//!
//! - **add**: enqueue, then (SeqCst fence) if `searching == 0 && parked > 0`, claim the searcher
//!   role (`searching` 0 → 1) and pop the most recently parked seat.
//! - **searcher found a job**: leaves the role; if the queue still holds jobs, it wakes a
//!   searcher to replace it before running its own. While a burst lasts, wake-ups pass from
//!   worker to worker (each wake is paid by a worker, not by the adding thread) and stop the
//!   moment the queue is empty; a steady stream that busy workers keep up with wakes nobody.
//!   (Waking two per found job, to fan out faster, was measured slower on 2 cores with 4,096
//!   workers: more runnable threads competing with the adding thread. So was the rule "one
//!   searcher per queued job" applied by the adds themselves, each add waking a worker while
//!   the queue held more jobs than searchers: on 4,096 sleeps per 20,000 it took 1.5–1.7
//!   context switches and 18–21 µs of CPU per task against the chain's 1.2 and 12–14 µs, with
//!   a quarter more futex calls (a fan-out of two: more than twice as many). A woken thread
//!   can preempt the adding thread that woke it, and concurrent wakers meet on the parked
//!   stack's lock; a worker that wakes the next one just before it runs its own job was about
//!   to leave the CPU anyway.)
//! - **worker with nothing to do**: if nobody searches, it becomes the searcher and watches the
//!   queue for a few microseconds (spin, then yield), so a steady stream is served without
//!   wake-ups; at most one worker does this. Then it pushes its seat (`parked += 1`), SeqCst
//!   fence, and looks at the queue one last time before it parks; if a job is there it takes its
//!   seat back.
//!
//! ## Why no wake-up is lost
//!
//! The invariant: *a job in the queue is always seen by a worker that is awake, or some parked
//! worker is woken for it.* Both sides write before they read, with SeqCst between: the add
//! writes the job then reads `searching`/`parked`; the parking worker writes `parked` then
//! reads the queue. So either the worker's last look sees the job, or the add sees the worker
//! parked. If the add instead saw a searcher, that searcher reads the queue *after* it leaves
//! the role (found a job: it wakes another if the queue is non-empty; found none: it parks, and
//! parking ends with the last look — which, if it finds a job, again wakes another for the jobs
//! behind it, since those adds all relied on the searcher). Anyone who claims the searcher role
//! and then finds nobody to wake gives it back and looks again. `tests/scheduler.rs` drives
//! these windows under a watchdog — ping-pong hand-offs between one producer and one consumer,
//! barrier bursts where N tasks wait for each other on N parked workers (one worker left
//! asleep is a hang, not a slow test), keep-alive retirements and resizes racing adds. The
//! burst test is the one that caught the last-look case above.
//!
//! ## What a wake costs
//!
//! An add that finds a worker awake (busy ones re-check the queue before they park) pays one
//! fence and two atomic loads. A wake is a `Vec::pop` under a short lock plus one
//! `thread::unpark`: O(1) however many threads are parked. LIFO keeps recently busy threads hot
//! and leaves cold ones parked long enough for `keep_alive` to retire them.

use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::admission::Admission;

const NOTHING: u8 = 0;
/// Woken to look for work, as the searcher.
const WORK: u8 = 1;
/// Woken to look at the pool again (it shrank, or closed), not as a searcher.
const CHECK: u8 = 2;

/// One worker's parking place, and the facts about it that other threads need.
pub(crate) struct Seat {
    pub(crate) index: usize,
    thread: OnceLock<Thread>,
    wake: AtomicU8,
    /// Set once, when a timed-out task made this thread leave the pool (see `Workers`).
    pub(crate) abandoned: AtomicBool,
}

impl Seat {
    pub(crate) fn new(index: usize) -> Seat {
        Seat {
            index,
            thread: OnceLock::new(),
            wake: AtomicU8::new(NOTHING),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Called by the worker thread itself before it ever parks.
    pub(crate) fn bind_current_thread(&self) {
        let _ = self.thread.set(thread::current());
    }

    #[inline]
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(SeqCst)
    }
}

/// Why a parked worker woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Its last look found a job (it never parked): not a searcher.
    Work,
    /// Woken as the searcher: it must report `found_work` or `stop_searching`.
    Searching,
    /// Woken to look at the pool again: it shrank (retire?) or closed (leave?).
    Check,
    /// Parked for `keep_alive` without being woken.
    TimedOut,
}

pub(crate) struct Scheduler {
    /// Parked workers, most recently parked last.
    parked_seats: Mutex<Vec<Arc<Seat>>>,
    /// `parked_seats.len()`, readable without the lock.
    parked: AtomicUsize,
    /// Workers woken to look for work that have not yet found a job or given up.
    searching: AtomicUsize,
    /// Set when the queue is closed for good: parking workers must leave instead.
    done: AtomicBool,
    /// Bounded queue, rendezvous and elastic growth: counts idle workers (see `admission.rs`).
    /// Idle means "not running a task", parked or not; only this module and the worker loop
    /// change it.
    pub(crate) admission: Admission,
}

impl Scheduler {
    pub(crate) fn new(admission: Admission) -> Scheduler {
        Scheduler {
            parked_seats: Mutex::new(Vec::new()),
            parked: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            admission,
        }
    }

    /// An add (or the key table, or a retry) has just enqueued a job.
    pub(crate) fn job_added<J>(&self, queue: &Receiver<J>) {
        // Pairs with the fence in `park`: see "Why no wake-up is lost".
        fence(SeqCst);
        if self.searching.load(SeqCst) == 0 && self.parked.load(SeqCst) > 0 {
            self.wake_searcher(queue, true);
        }
    }

    /// A searching worker took a job: it leaves the role and, if more jobs wait, wakes a
    /// searcher to replace it.
    pub(crate) fn found_work<J>(&self, queue: &Receiver<J>) {
        self.searching.fetch_sub(1, SeqCst);
        fence(SeqCst);
        if !queue.is_empty() && self.parked.load(SeqCst) > 0 {
            self.wake_searcher(queue, false);
        }
    }

    /// An idle worker that found the queue empty becomes the searcher if nobody searches, and
    /// then watches the queue a few microseconds (spinning, then yielding) before it parks: in a
    /// steady stream the next job usually arrives by then, and is taken without a wake-up. At
    /// most one idle worker does this, so thousands of idle workers cost no CPU. True if a job
    /// arrived (the caller is the searcher and takes it); false if the caller is to park (not
    /// searching any more).
    pub(crate) fn search<J>(&self, queue: &Receiver<J>, searching: bool) -> bool {
        if !searching
            && self
                .searching
                .compare_exchange(0, 1, SeqCst, SeqCst)
                .is_err()
        {
            return false;
        }
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            if !queue.is_empty() {
                return true;
            }
            backoff.snooze();
        }
        self.stop_searching();
        false
    }

    /// A worker took a job found by its last look before parking ([`Woke::Work`]). An add may
    /// have skipped its wake-up because this worker was still the searcher then: so, like a
    /// searcher that found work, it makes sure the jobs behind its own get a worker.
    pub(crate) fn took_last_look_work<J>(&self, queue: &Receiver<J>) {
        fence(SeqCst);
        if !queue.is_empty() && self.parked.load(SeqCst) > 0 {
            self.wake_searcher(queue, true);
        }
    }

    /// A searching worker found the queue empty. It parks next, and parking ends with a last
    /// look at the queue, so a job added meanwhile is not stranded.
    pub(crate) fn stop_searching(&self) {
        self.searching.fetch_sub(1, SeqCst);
    }

    /// Wakes one parked worker as a searcher. `only_first`: only if nobody searches already.
    fn wake_searcher<J>(&self, queue: &Receiver<J>, mut only_first: bool) {
        loop {
            let claimed = if only_first {
                self.searching
                    .compare_exchange(0, 1, SeqCst, SeqCst)
                    .is_ok()
            } else {
                self.searching.fetch_add(1, SeqCst);
                true
            };
            if !claimed || self.unpark_one(WORK) {
                return;
            }
            // Nobody was parked after all. Give the role back, then look again: an add that saw
            // our claim left its job to us.
            self.searching.fetch_sub(1, SeqCst);
            fence(SeqCst);
            if queue.is_empty() || self.parked.load(SeqCst) == 0 {
                return;
            }
            only_first = true;
        }
    }

    /// Pops the most recently parked worker and wakes it with `why`. False if none is parked.
    fn unpark_one(&self, why: u8) -> bool {
        let mut seats = self.parked_seats.lock();
        let Some(seat) = seats.pop() else {
            return false;
        };
        self.parked.fetch_sub(1, SeqCst);
        // Set under the stack lock: a worker that finds itself gone from the stack (`unlist`)
        // finds its flag already set.
        seat.wake.store(why, SeqCst);
        drop(seats);
        if let Some(thread) = seat.thread.get() {
            thread.unpark();
        }
        true
    }

    /// Wakes up to `n` parked workers to check whether they should retire (the pool shrank).
    pub(crate) fn wake_to_retire(&self, n: usize) {
        for _ in 0..n {
            if !self.unpark_one(CHECK) {
                break;
            }
        }
    }

    /// The queue is closed for good: wakes every parked worker, and no worker parks again.
    pub(crate) fn close(&self) {
        self.done.store(true, SeqCst);
        while self.unpark_one(CHECK) {}
    }

    /// Parks an idle worker until it is woken, or `keep_alive` passes without a wake.
    ///
    /// `over_max` says whether the pool has more workers than its maximum: asked after the
    /// seat is on the stack, as `set_max_workers` looks for parked workers to retire after it
    /// lowered the maximum — so a worker that was not parked yet when the pool shrank does not
    /// park above the maximum for ever.
    pub(crate) fn park<J>(
        &self,
        seat: &Arc<Seat>,
        queue: &Receiver<J>,
        keep_alive: Option<Duration>,
        over_max: impl Fn() -> bool,
    ) -> Woke {
        {
            let mut seats = self.parked_seats.lock();
            seats.push(seat.clone());
            self.parked.fetch_add(1, SeqCst);
        }
        // Announce, then look: pairs with the fence in `job_added`.
        fence(SeqCst);
        // If a waker popped this seat meanwhile, its flag is already set: taken below.
        if (!queue.is_empty() || self.done.load(SeqCst)) && self.unlist(seat) {
            return Woke::Work;
        }
        if over_max() && self.unlist(seat) {
            return Woke::Check;
        }
        let deadline = keep_alive.and_then(|d| Instant::now().checked_add(d));
        loop {
            match seat.wake.swap(NOTHING, SeqCst) {
                WORK => return Woke::Searching,
                CHECK => return Woke::Check,
                _ => {}
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        if self.unlist(seat) {
                            return Woke::TimedOut;
                        }
                        // Popped at the last moment: the flag is set; the loop takes it.
                        continue;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Takes `seat` off the stack. False if a waker popped it first (its flag is then set).
    fn unlist(&self, seat: &Arc<Seat>) -> bool {
        let mut seats = self.parked_seats.lock();
        // It usually parked last: search from the top.
        match seats.iter().rposition(|s| Arc::ptr_eq(s, seat)) {
            Some(at) => {
                seats.remove(at);
                self.parked.fetch_sub(1, SeqCst);
                true
            }
            None => false,
        }
    }
}
