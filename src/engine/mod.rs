//! The engine behind both faces: queue, workers, counters, per-key limits, timer, lifecycle.
//! Every mechanism exists once here; [`AsyncPool`](crate::AsyncPool) and
//! [`ThreadPool`](crate::ThreadPool) only say what a job is.
//!
//! # Design
//!
//! Long-lived OS threads take jobs from one shared, unbounded crossbeam channel. Who waits for
//! work, and who is woken when a job arrives, is [`scheduler`]'s business; which threads exist
//! and why is [`workers`]'; how a task ends — by whichever thread wins its state change — is
//! [`ending`]'s, one path for every ending. The channel is never the bound: `queue_capacity` is
//! enforced in front of it by [`admission`], so jobs the pool moves itself (a keyed job its key
//! lets through) never block. How an add gets in while a shutdown closes the pool, without a
//! job ever stranded, is [`intake`]'s; who waits for the pool to be quiet, [`quiet`]'s.
//!
//! Each part owns its fields and is used through its methods: [`intake`], [`admission`],
//! [`keys`] (the table, behind its lock), [`scheduler`], [`workers`], [`timer`], [`courier`],
//! [`quiet`], [`registry`] (tasks by id), [`spare`]. The engine's own functions coordinate
//! them, a concern per file: adding and the key table's steps here; [`cancel`]ling;
//! [`deadline`]s and the timer thread; [`retry`]ing; a task's [`ending`]; the [`worker`] loop;
//! joining and shutting down ([`lifecycle`]).
//!
//! Shutdown is idempotent and shared by `shutdown`, `shutdown_now`, `shutdown_timeout` and the
//! owner's `Drop` (see `lifecycle.rs`); it never joins the calling thread.

mod admission;
mod cancel;
mod courier;
mod deadline;
mod ending;
mod intake;
mod keys;
mod lifecycle;
mod limits;
mod per_key;
mod quiet;
mod registry;
mod retry;
mod scheduler;
mod spare;
mod spawn;
mod timer;
mod worker;
mod workers;

use std::cell::RefCell;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::builder::Config;
use crate::cell::{drop_quietly, Control};
use crate::done::TaskError;
use crate::error::BuildError;
use crate::id::TaskId;
use crate::stats::{Counters, Stats};
use crate::task::Canceller;

pub(crate) use admission::Refused;
pub(crate) use ending::{Ran, RunContext};
pub(crate) use keys::KeyView;
pub(crate) use lifecycle::Owner;
use lifecycle::Stopping;
#[cfg(test)]
use spawn::fault;

use admission::Admission;
use courier::Courier;
use intake::Intake;
use keys::{KeyTable, Keys, Step};
use quiet::Quiet;
use registry::Registry;
use scheduler::{Scheduler, Seat};
use spare::Spares;
use timer::{Event, Timer};
use workers::Workers;

/// What the engine queues. Each face defines one job type.
pub(crate) trait Job: Send + Sized + 'static {
    /// What runs the job, shared by all workers (the callback of an `AsyncPool`).
    type Runner: Send + Sync + 'static;
    /// What a cancelled job hands back (the input of an `AsyncPool`).
    type Input: Send + 'static;

    fn control(&self) -> &dyn Control;
    fn control_arc(&self) -> Arc<dyn Control>;
    /// Runs the job (already Running) under `catch_unwind` and ends it with `cx.finish`.
    fn run(self, runner: &Self::Runner, cx: &RunContext<'_, Self>) -> Ran;
    /// Takes the input back out of a job that will not run.
    fn into_input(self) -> Self::Input;

    /// For a task with a retry policy: the job of its next attempt (a copy of the input, the
    /// same cell), made before this attempt runs. `None` for every other task, and when making
    /// the copy panicked (the attempt then runs without one). See `retry.rs`. Must not panic.
    fn spare(&self) -> Option<Self>;

    /// Asked of a spare when the timer ends its task's attempt with `error`: how long to back
    /// off before the next attempt, or `None` to give up.
    fn again_after(&self, error: &TaskError) -> Option<Duration>;

    /// A worker thread is leaving the pool: it drops what it kept for `runner` (a per-worker
    /// state), here, where a panicking `Drop` is caught — not in a thread-local destructor.
    fn worker_leaves(runner: &Self::Runner) {
        let _ = runner;
    }
}

thread_local! {
    /// `(pool id, seat)` when the current thread is a pool's worker.
    static CURRENT: RefCell<Option<(usize, Arc<Seat>)>> = const { RefCell::new(None) };
    /// The task the current worker thread is running (the innermost, inside `join()`), and its
    /// key.
    static CURRENT_TASK: std::cell::Cell<Option<(AttemptId, Option<u64>)>> =
        const { std::cell::Cell::new(None) };
}

/// One run of a task: its id and which attempt (a retried task runs more than once).
type AttemptId = (TaskId, u32);

static NEXT_POOL: AtomicUsize = AtomicUsize::new(1);

/// Settings fixed at build time.
struct Settings {
    thread_name: String,
    /// `Some` for an elastic pool (`min_workers < max_workers`): idle time before a worker
    /// above the minimum retires.
    keep_alive: Option<Duration>,
    task_timeout: Option<Duration>,
    max_abandoned: usize,
}

pub(crate) struct Engine<J: Job> {
    id: usize,
    me: Weak<Engine<J>>,
    runner: J::Runner,
    settings: Settings,
    workers: Workers,
    scheduler: Scheduler,
    intake: Intake<J>,
    /// Set by `shutdown_now` and at the end of `shutdown_timeout`: cancel tokens read it.
    stopping: Stopping,
    counters: Counters,
    registry: Registry,
    keys: Option<Keys<J>>,
    timer: Timer<J>,
    courier: Courier,
    quiet: Quiet,
    /// The spares of running attempts of tasks with a retry policy, by task (see `retry.rs`).
    spares: Spares<J>,
    /// Inputs of tasks whose retry the pool stopped once a shutdown stopped waiting (see
    /// `Engine::stop_retry`): `shutdown_now` hands them back with the others.
    stopped_retries: Mutex<Vec<(TaskId, J::Input)>>,
}

impl<J: Job> Engine<J> {
    /// Builds the engine and starts its initial workers. On a spawn failure the workers
    /// already started are stopped and joined before the error is returned.
    ///
    /// `runner` receives the engine's weak self-reference, for callbacks that add to their own
    /// pool without keeping it alive.
    pub(crate) fn start(
        config: Config,
        runner: impl FnOnce(&Weak<Engine<J>>) -> J::Runner,
    ) -> Result<Arc<Engine<J>>, BuildError> {
        config.validate()?;
        let max = config.max_workers;
        let min = config.min_workers.unwrap_or(max).min(max);
        let elastic = min < max;
        let headroom = limits::headroom();
        if let Some(room) = headroom.filter(|room| room.threads < min) {
            return Err(BuildError::ThreadLimit {
                limit: room.limit,
                requested: min,
                available: room.threads,
            });
        }
        let engine = Arc::new_cyclic(|me| Engine {
            id: NEXT_POOL.fetch_add(1, SeqCst),
            me: me.clone(),
            runner: runner(me),
            settings: Settings {
                thread_name: config.thread_name.clone(),
                keep_alive: elastic.then_some(config.keep_alive),
                task_timeout: config.task_timeout,
                max_abandoned: config.max_abandoned.unwrap_or(max),
            },
            workers: Workers::new(config.thread_name.clone(), config.stack_size, min, max),
            scheduler: Scheduler::new(Admission::new(config.queue_capacity, elastic)),
            intake: Intake::new(),
            stopping: Stopping::new(),
            counters: Counters::new(),
            registry: Registry::new(),
            keys: Keys::new(config.max_per_key, config.min_interval_per_key),
            timer: Timer::new(),
            courier: Courier::new(),
            quiet: Quiet::new(),
            spares: Spares::new(),
            stopped_retries: Mutex::new(Vec::new()),
        });
        for _ in 0..min {
            let reserved = engine.workers.reserve();
            debug_assert!(reserved, "min <= max");
            if let Err(err) = engine.start_worker() {
                engine.workers.give_up_place();
                engine.abort_build();
                return Err(BuildError::Spawn(err));
            }
        }
        Ok(engine)
    }

    /// A fresh id for a task about to be added.
    pub(crate) fn next_id(&self) -> TaskId {
        self.intake.next_id()
    }

    /// The key a keyed task is filed under, or `None` when the pool has no per-key limits (the
    /// key then has no effect).
    pub(crate) fn key_of<K: Hash>(&self, key: &K) -> Option<u64> {
        self.keys.as_ref().map(|keys| keys.hash(key))
    }

    /// How keys are hashed, for a caller that hashes many (a keyed stream); `None` when the
    /// pool has no per-key limits.
    pub(crate) fn key_hasher(&self) -> Option<std::collections::hash_map::RandomState> {
        self.keys.as_ref().map(Keys::hasher)
    }

    /// How many tasks of one key may run at once (`None` without per-key settings).
    pub(crate) fn per_key_limit(&self) -> Option<usize> {
        self.keys.as_ref().map(Keys::per_key)
    }

    pub(crate) fn max_workers(&self) -> usize {
        self.workers.max()
    }

    fn elastic(&self) -> bool {
        self.settings.keep_alive.is_some()
    }

    fn admission(&self) -> &Admission {
        &self.scheduler.admission
    }

    /// Accepts a job, or hands it back with the reason. With `wait`, blocks while a bounded
    /// queue is full (until there is room or the pool closes).
    ///
    /// A keyed job that its key holds back takes no place in the queue, so it never waits for
    /// room: only a job its key lets through now does (and takes that place).
    pub(crate) fn add(&self, job: J, wait: bool) -> Result<(), (Refused, J)> {
        if self.intake.is_closed() {
            return Err((Refused::ShutDown, job));
        }
        let key = job.control().header().key;
        let needs_place = match (key, &self.keys) {
            (Some(key), Some(keys)) => keys.lock().has_room(key, Instant::now()),
            _ => true,
        };
        let left = if needs_place {
            let can_grow = || self.elastic() && self.workers.live() < self.workers.max();
            match self
                .admission()
                .acquire(wait, self.intake.closed_flag(), can_grow)
            {
                Ok(left) => Some(left),
                Err(refused) => return Err((refused, job)),
            }
        } else {
            None
        };
        let entered = self.intake.enter(job, |job, tx| {
            // Counted before any worker can see the job, so it cannot end before it began.
            self.counters.submitted(key.is_some());
            self.registry.insert(job.control_arc());
            match (key, &self.keys) {
                (Some(key), Some(keys)) => {
                    let mut table = keys.lock();
                    let step = table.admit(key, job, Instant::now());
                    self.apply(key, step, table, left);
                    None
                }
                _ => {
                    let _ = tx.send(job);
                    Some(left.unwrap_or(0))
                }
            }
        });
        match entered {
            Ok(Some(left)) => self.enqueued(left),
            Ok(None) => {}
            Err(job) => {
                if left.is_some() {
                    self.admission().release();
                }
                return Err((Refused::ShutDown, job));
            }
        }
        Ok(())
    }

    /// After a job entered the queue. `left`: the admission slack after it.
    fn enqueued(&self, left: isize) {
        self.scheduler.job_added(self.intake.receiver());
        if left < 0 && self.elastic() {
            // No idle worker will take this job.
            self.grow();
        }
        // A task blocked in `join()` on a worker may run it.
        self.nudge();
    }

    /// Tells `join` and shutdown waiters that something changed.
    fn nudge(&self) {
        self.quiet.nudge(|| self.counters.outstanding() == 0);
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats =
            self.counters
                .snapshot(self.workers.live(), self.workers.abandoned(), || {
                    self.timer.retries()
                });
        stats.paused_keys = self.paused_keys();
        stats
    }

    /// Changes the number of workers. Growing starts threads at once (a fixed pool) or allows
    /// more on demand (an elastic pool, which also gets its minimum back if a lower maximum had
    /// cut it); shrinking retires workers as they finish their current task. Refuses 0, values
    /// above `MAX_WORKERS`, and a closed pool.
    pub(crate) fn set_max_workers(&self, max: usize) -> bool {
        if max == 0 || max > crate::error::MAX_WORKERS || self.intake.is_closed() {
            return false;
        }
        self.workers.set_max(max);
        let live = self.workers.live();
        if live > max {
            // Idle workers are parked: wake them to notice. Busy ones check before they take
            // their next job.
            self.scheduler.wake_to_retire(live - max);
        } else {
            let wanted = if self.elastic() {
                self.admission()
                    .unserved()
                    .max(self.workers.min_now().saturating_sub(live))
            } else {
                max - live
            };
            for _ in 0..wanted {
                if !self.grow() {
                    break;
                }
            }
        }
        true
    }

    /// Starts one more worker if the pool is below its maximum. False if it is at the maximum
    /// or the operating system refused the thread (the pool goes on with the workers it has).
    fn grow(&self) -> bool {
        if !self.workers.reserve() {
            return false;
        }
        if self.start_worker().is_err() {
            self.workers.give_up_place();
            return false;
        }
        true
    }

    /// Starts a worker thread for a place already counted (reserved, or inherited from an
    /// abandoned thread).
    ///
    /// The new worker counts as idle from now on, not from when its thread gets to run: an add
    /// right after `build` (or the add that made an elastic pool grow) can count on it.
    fn start_worker(&self) -> io::Result<()> {
        let Some(engine) = self.me.upgrade() else {
            return Err(io::Error::other("pool is being dropped"));
        };
        self.admission().enter_idle();
        self.workers
            .start(move |seat| worker::main_loop(engine, seat))
            .inspect_err(|_| self.admission().force_leave_idle())
    }

    /// Carries out a change to the key table: queues the job it let through (still under the
    /// table lock, see `keys.rs`), schedules its wake-up, drops cancelled jobs. `place`: the
    /// admission slack left by a place an add already took for it; without one, the job takes
    /// its place unasked.
    fn apply(
        &self,
        key: u64,
        step: Step<J>,
        table: MutexGuard<'_, KeyTable<J>>,
        place: Option<isize>,
    ) {
        let Step { run, wake_at, dead } = step;
        let mut queued = None;
        let mut stranded = None;
        match run {
            Some(job) => {
                self.counters.left_key();
                let left = place.unwrap_or_else(|| self.admission().force());
                match self.intake.send_inside(job) {
                    Ok(()) => queued = Some(left),
                    // Ended below, once the table's lock is released (the ending takes it).
                    Err(job) => stranded = Some(job),
                }
            }
            // The key filled up between the add's look and now: the place goes back.
            None if place.is_some() => self.admission().release(),
            None => {}
        }
        drop(table);
        if let Some(job) = stranded {
            self.strand(job);
        }
        if let Some(at) = wake_at {
            self.schedule(at, Event::WakeKey(key));
        }
        drop_quietly(dead);
        if let Some(left) = queued {
            self.enqueued(left);
        }
    }

    /// A job of `key` left the queue unstarted or its callback returned: let the next one go.
    fn release_key(&self, key: u64, was_unstarted: bool) {
        if let Some(keys) = &self.keys {
            let mut table = keys.lock();
            let step = table.release(key, was_unstarted, Instant::now());
            self.apply(key, step, table, None);
        }
    }

    /// Bookkeeping when a worker takes a job. (Its key's interval counts from its callback's
    /// call, later: `callback_starts`.)
    fn on_start(&self) {
        self.counters.started();
    }

    /// A keyed callback is about to be called: its key's interval counts from now (see
    /// `keys.rs`). Stamped here, the last thing before the call, not when a worker took the
    /// job: what happens in between (arming a deadline, copying a retry's input) would
    /// otherwise shorten the gap the next start of the key sees.
    pub(super) fn callback_starts(&self, key: u64) {
        if let Some(keys) = &self.keys {
            let mut table = keys.lock();
            let step = table.started(key, Instant::now());
            self.apply(key, step, table, None);
        }
    }

    /// The current thread's seat if it is one of this pool's workers.
    fn current_worker(&self) -> Option<Arc<Seat>> {
        CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .filter(|(pool, _)| *pool == self.id)
                .map(|(_, seat)| seat.clone())
        })
    }
}

impl<J: Job> Canceller for Engine<J> {
    fn cancel_task(&self, control: &dyn Control) -> bool {
        Engine::cancel_task(self, control)
    }
}

impl<J: Job> Drop for Engine<J> {
    fn drop(&mut self) {
        // Shutdown leaves nothing behind; this only guards the invariant that no accepted task
        // is dropped without an ending.
        drop_quietly(self.cancel_queued(false));
        drop_quietly(std::mem::take(self.stopped_retries.get_mut()));
    }
}

#[cfg(test)]
mod tests;
