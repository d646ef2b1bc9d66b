//! The engine behind both faces: queue, workers, counters, per-key limits, timer, lifecycle.
//! Every mechanism exists once here; [`AsyncPool`](crate::AsyncPool) and
//! [`ThreadPool`](crate::ThreadPool) only say what a job is.
//!
//! # Design
//!
//! Long-lived OS threads block on one shared, unbounded crossbeam channel of jobs. The channel
//! is never the bound: `queue_capacity` is enforced in front of it by [`admission`], so jobs the
//! pool moves itself (a keyed job its key lets through) never block. The single `Sender` lives
//! in `sender: RwLock<Option<Sender>>`:
//!
//! - an add holds the read lock while it checks `closed` and sends;
//! - `close` sets `closed`, then takes the write lock once: every add that saw the pool open
//!   has finished enqueueing when `close` returns — no add can pass the check, miss the
//!   shutdown, and strand its job;
//! - the sender is dropped (`disconnect`) only when the pool is closed *and* no accepted task
//!   is left (`Counters::outstanding() == 0`); workers then see the channel disconnected and
//!   leave. Until then keyed jobs and timer wake-ups can still reach the queue.
//!
//! Shutdown is idempotent and shared by `shutdown`, `shutdown_now`, `shutdown_timeout` and the
//! owner's `Drop` (see `lifecycle.rs`); it never joins the calling thread.

mod admission;
mod keys;
mod lifecycle;
mod registry;
mod spawn;
mod timer;
mod worker;

use std::cell::Cell as StdCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{collections::HashMap, hash::BuildHasher, hash::Hash, io};

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::builder::Config;
use crate::cell::{drop_quietly, Control, Ended, CANCELLED, QUEUED, WAITING};
use crate::error::{BuildError, TaskError};
use crate::stats::{Counters, Stats};
use crate::task::{Canceller, TaskId};

pub(crate) use admission::Refused;
pub(crate) use lifecycle::Owner;
#[cfg(test)]
use spawn::fault;

use admission::Admission;
use keys::{KeyTable, Step};
use registry::Registry;
use spawn::spawn_thread;
use timer::{Event, EventId, Timer};

/// What the engine queues. Each face defines one job type.
pub(crate) trait Job: Send + 'static {
    /// What runs the job, shared by all workers (the callback of an `AsyncPool`).
    type Runner: Send + Sync + 'static;
    /// What a cancelled job hands back (the input of an `AsyncPool`).
    type Input: Send + 'static;

    fn control(&self) -> &dyn Control;
    fn control_arc(&self) -> Arc<dyn Control>;
    fn control_weak(&self) -> Weak<dyn Control>;
    /// Runs the job (already RUNNING) under `catch_unwind`, counts and delivers its ending.
    fn run(self, runner: &Self::Runner, cx: &RunContext<'_>) -> Ended;
    /// Takes the input back out of a job that will not run.
    fn into_input(self) -> Self::Input;
}

/// What a job needs from the engine while it runs.
pub(crate) struct RunContext<'a> {
    pub(crate) counters: &'a Counters,
    /// Set by `shutdown_now` and at the end of `shutdown_timeout`: cancel tokens read it.
    pub(crate) stopping: &'a Arc<AtomicBool>,
    /// On a worker's own loop: counts the worker idle as soon as its task has ended, before
    /// the (possibly blocking) delivery. `None` for a task run inside `join()`.
    pub(crate) free_worker: Option<&'a Admission>,
}

/// A message on the job channel.
pub(crate) enum Msg<J> {
    Job(J),
    /// Wakes an idle worker so it notices the pool shrank.
    Wake,
}

thread_local! {
    /// `(pool id, worker index)` when the current thread is a pool's worker.
    static CURRENT: StdCell<Option<(usize, usize)>> = const { StdCell::new(None) };
    /// Set when the task this thread ran was abandoned: the thread leaves after it.
    static ABANDONED: StdCell<bool> = const { StdCell::new(false) };
}

static NEXT_POOL: AtomicUsize = AtomicUsize::new(1);

/// Settings fixed at build time.
struct Settings {
    thread_name: String,
    stack_size: Option<usize>,
    /// `Some` for an elastic pool (`min_workers < max_workers`): idle time before a worker
    /// above the minimum retires.
    keep_alive: Option<Duration>,
    task_timeout: Option<Duration>,
    max_abandoned: usize,
    keyed: bool,
}

pub(crate) struct Engine<J: Job> {
    id: usize,
    me: Weak<Engine<J>>,
    runner: J::Runner,
    settings: Settings,
    min_workers: AtomicUsize,
    max_workers: AtomicUsize,
    /// Worker threads counted in the pool (started or being started; not abandoned ones).
    live: AtomicUsize,
    /// Abandoned threads still running their callback.
    abandoned: AtomicUsize,
    next_thread: AtomicUsize,
    next_task: AtomicU64,
    sender: RwLock<Option<Sender<Msg<J>>>>,
    receiver: Receiver<Msg<J>>,
    closed: AtomicBool,
    stopping: Arc<AtomicBool>,
    counters: Counters,
    admission: Admission,
    registry: Registry,
    keys: Option<Mutex<KeyTable<J>>>,
    hasher: std::collections::hash_map::RandomState,
    timer: Timer,
    threads: Mutex<Threads>,
    /// Held by the shutdown that joins the threads.
    exit_lock: Mutex<()>,
    quiet: Quiet,
    /// Tasks blocked in `join()` on one of this pool's workers.
    joining: AtomicUsize,
}

/// The worker threads a shutdown joins.
struct Threads {
    handles: HashMap<usize, JoinHandle<()>>,
    /// Set once a shutdown has joined every worker: no thread may start after that.
    sealed: bool,
}

/// Wakes threads waiting for the pool to become quiet (`join`, `shutdown_timeout`).
struct Quiet {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Quiet {
    /// Something changed that a waiter may care about (a task ended, a job was queued).
    fn nudge(&self) {
        if self.waiters.load(SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.changed.notify_all();
        }
    }
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
        let min = config.min_workers.unwrap_or(config.max_workers);
        let elastic = min < config.max_workers;
        let keyed = config.max_per_key.is_some() || config.min_interval_per_key.is_some();
        let (tx, rx) = unbounded();
        let engine = Arc::new_cyclic(|me| Engine {
            id: NEXT_POOL.fetch_add(1, SeqCst),
            me: me.clone(),
            runner: runner(me),
            settings: Settings {
                thread_name: config.thread_name.clone(),
                stack_size: config.stack_size,
                keep_alive: elastic.then_some(config.keep_alive),
                task_timeout: config.task_timeout,
                max_abandoned: config.max_abandoned.unwrap_or(config.max_workers),
                keyed,
            },
            min_workers: AtomicUsize::new(min),
            max_workers: AtomicUsize::new(config.max_workers),
            live: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            next_thread: AtomicUsize::new(0),
            next_task: AtomicU64::new(1),
            sender: RwLock::new(Some(tx)),
            receiver: rx,
            closed: AtomicBool::new(false),
            stopping: Arc::new(AtomicBool::new(false)),
            counters: Counters::new(),
            admission: Admission::new(config.queue_capacity, elastic),
            registry: Registry::new(),
            keys: keyed.then(|| {
                Mutex::new(KeyTable::new(
                    config.max_per_key,
                    config.min_interval_per_key,
                ))
            }),
            hasher: Default::default(),
            timer: Timer::new(),
            exit_lock: Mutex::new(()),
            threads: Mutex::new(Threads {
                handles: HashMap::new(),
                sealed: false,
            }),
            quiet: Quiet {
                waiters: AtomicUsize::new(0),
                lock: Mutex::new(()),
                changed: Condvar::new(),
            },
            joining: AtomicUsize::new(0),
        });
        for _ in 0..min {
            engine.live.fetch_add(1, SeqCst);
            if let Err(err) = engine.spawn_worker() {
                engine.live.fetch_sub(1, SeqCst);
                engine.abort_build();
                return Err(BuildError::Spawn(err));
            }
        }
        Ok(engine)
    }

    /// A fresh id for a task about to be added.
    pub(crate) fn next_id(&self) -> TaskId {
        TaskId(self.next_task.fetch_add(1, SeqCst))
    }

    /// The key a keyed task is filed under, or `None` when the pool has no per-key limits (the
    /// key then changes nothing).
    pub(crate) fn key_of<K: Hash>(&self, key: &K) -> Option<u64> {
        self.settings.keyed.then(|| self.hasher.hash_one(key))
    }

    pub(crate) fn max_workers(&self) -> usize {
        self.max_workers.load(SeqCst)
    }

    fn elastic(&self) -> bool {
        self.settings.keep_alive.is_some()
    }

    /// Accepts a job, or hands it back with the reason. With `wait`, blocks while a bounded
    /// queue is full (until there is room or the pool closes).
    pub(crate) fn add(&self, job: J, wait: bool) -> Result<(), (Refused, J)> {
        if self.closed.load(SeqCst) {
            return Err((Refused::ShutDown, job));
        }
        let can_grow = || self.elastic() && self.live.load(SeqCst) < self.max_workers();
        let left = match self.admission.acquire(wait, &self.closed, can_grow) {
            Ok(left) => left,
            Err(refused) => return Err((refused, job)),
        };
        let sender = self.sender.read();
        // Checked under the read lock: `close` sets `closed` and then takes the write lock, so
        // an add that gets past this line finishes enqueueing before `close` returns.
        let tx = match sender.as_ref() {
            Some(tx) if !self.closed.load(SeqCst) => tx,
            _ => {
                drop(sender);
                self.admission.release();
                return Err((Refused::ShutDown, job));
            }
        };
        let key = job.control().header().key;
        // Counted before any worker can see the job, so it cannot end before it began.
        self.counters.submitted(key.is_some());
        self.registry
            .insert(job.control().header().id, job.control_weak(), || {
                self.counters.outstanding()
            });
        match key {
            None => {
                let _ = tx.send(Msg::Job(job));
                drop(sender);
                self.after_enqueue(left);
            }
            Some(key) => {
                // A keyed job holds no place in the queue until its key lets it in.
                self.admission.release();
                let keys = self
                    .keys
                    .as_ref()
                    .expect("keyed jobs exist only with a key table");
                let mut table = keys.lock();
                let step = table.admit(key, job, Instant::now());
                self.apply(key, step, table);
                drop(sender);
            }
        }
        Ok(())
    }

    /// Cancels the unstarted task with this id.
    pub(crate) fn cancel_id(&self, id: TaskId) -> bool {
        match self.registry.get(id) {
            Some(control) => self.cancel_task(&*control),
            None => false,
        }
    }

    /// Cancels every task not yet started; hands back their inputs in the order they were
    /// added.
    pub(crate) fn cancel_all(&self) -> Vec<J::Input> {
        self.cancel_queued()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters
            .snapshot(self.live.load(SeqCst), self.abandoned.load(SeqCst))
    }

    /// Changes the number of workers. Growing starts threads at once (a fixed pool) or allows
    /// more on demand (an elastic pool); shrinking retires workers as they finish their current
    /// task. Refuses 0, values above `MAX_WORKERS`, and a closed pool.
    pub(crate) fn set_max_workers(&self, max: usize) -> bool {
        if max == 0 || max > crate::MAX_WORKERS || self.closed.load(SeqCst) {
            return false;
        }
        self.max_workers.store(max, SeqCst);
        if self.elastic() {
            self.min_workers.fetch_min(max, SeqCst);
        } else {
            self.min_workers.store(max, SeqCst);
        }
        let live = self.live.load(SeqCst);
        if live > max {
            // Idle workers are blocked on the channel: wake them to notice. Busy ones check
            // before they take their next job.
            if let Some(tx) = self.sender.read().as_ref() {
                for _ in max..live {
                    let _ = tx.send(Msg::Wake);
                }
            }
        } else {
            let wanted = if self.elastic() {
                self.admission.unserved()
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
        let reserved = self
            .live
            .fetch_update(SeqCst, SeqCst, |live| {
                (live < self.max_workers()).then_some(live + 1)
            })
            .is_ok();
        if !reserved {
            return false;
        }
        if self.spawn_worker().is_err() {
            self.live.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    /// Starts a worker thread; the caller has already counted it in `live`.
    ///
    /// The new worker counts as idle from now on, not from when its thread gets to run: an add
    /// right after `build` (or the add that made an elastic pool grow) can count on it.
    fn spawn_worker(&self) -> io::Result<()> {
        let Some(engine) = self.me.upgrade() else {
            return Err(io::Error::other("pool is being dropped"));
        };
        // Held while the thread starts, so a shutdown joining the workers either sees its
        // handle or has sealed the pool first.
        let mut threads = self.threads.lock();
        if threads.sealed {
            return Err(io::Error::other("pool has shut down"));
        }
        let index = self.next_thread.fetch_add(1, SeqCst);
        let name = format!("{}-{}", self.settings.thread_name, index);
        self.admission.enter_idle();
        let spawned = spawn_thread(name, self.settings.stack_size, move || {
            worker::main_loop(engine, index)
        });
        let handle = spawned.inspect_err(|_| self.admission.force_leave_idle())?;
        threads.handles.insert(index, handle);
        Ok(())
    }

    /// Hook after a job entered the queue. `left`: the admission slack after it.
    fn after_enqueue(&self, left: isize) {
        if left < 0 && self.elastic() {
            // No idle worker will take this job.
            self.grow();
        }
        // A task blocked in `join()` on a worker may run it.
        self.quiet.nudge();
    }

    /// Carries out a change to the key table: queues the job it let through (still under the
    /// table lock, see `keys.rs`), schedules its wake-up, drops cancelled jobs.
    fn apply(&self, key: u64, step: Step<J>, table: MutexGuard<'_, KeyTable<J>>) {
        let Step { run, wake_at, dead } = step;
        let mut queued = None;
        if let Some(job) = run {
            self.counters.left_key();
            let left = self.admission.force();
            // `read_recursive`: an add may hold the read lock while it waits for the table, and
            // a writer waiting for that add must not block this read.
            match self.sender.read_recursive().as_ref() {
                Some(tx) => {
                    let _ = tx.send(Msg::Job(job));
                    queued = Some(left);
                }
                // Unreachable while the task is outstanding; never strand it regardless.
                None => self.cancel_unqueued(job, QUEUED),
            }
        }
        drop(table);
        if let Some(at) = wake_at {
            self.schedule(at, Event::WakeKey(key));
        }
        drop_quietly(dead);
        if let Some(left) = queued {
            self.after_enqueue(left);
        }
    }

    /// A job of `key` left the queue unstarted or ended: let the next one go.
    fn release_key(&self, key: u64, was_unstarted: bool) {
        if let Some(keys) = &self.keys {
            let mut table = keys.lock();
            let step = table.release(key, was_unstarted, Instant::now());
            self.apply(key, step, table);
        }
    }

    /// Bookkeeping when a worker takes a job.
    fn on_start(&self, job: &J) {
        self.counters.started();
        if let (Some(keys), Some(key)) = (&self.keys, job.control().header().key) {
            let mut table = keys.lock();
            let step = table.started(key, Instant::now());
            self.apply(key, step, table);
        }
    }

    /// Cancels one task that has not started. The one path for `Task::cancel` and `cancel(id)`.
    fn cancel_task(&self, control: &dyn Control) -> bool {
        let Some(from) = control.header().cancel() else {
            return false;
        };
        self.finish_cancelled(control, from);
        self.after_finish();
        true
    }

    /// Counts and delivers a cancellation won from state `from` (WAITING or QUEUED).
    fn finish_cancelled(&self, control: &dyn Control, from: u8) {
        let header = control.header();
        if from == QUEUED {
            // Its place in the queue is free again, and so is its place under its key.
            self.admission.release();
            if let Some(key) = header.key {
                self.release_key(key, true);
            }
        } else {
            self.counters.left_key();
        }
        self.counters.cancelled();
        control.fail(TaskError::Cancelled);
        self.counters.settled();
    }

    /// Cancels a job that is in this thread's hands, in state `from`.
    fn cancel_unqueued(&self, job: J, from: u8) {
        if job.control().header().transition(from, CANCELLED) {
            self.finish_cancelled(job.control(), from);
        }
        drop_quietly(job);
    }

    /// Cancels everything waiting on a key or in the queue; returns the inputs by task id.
    ///
    /// Drains the key table first, then the queue: a job moves from the table to the queue
    /// under the table lock, so none is missed in between.
    fn cancel_queued(&self) -> Vec<J::Input> {
        let mut jobs: Vec<(u8, J)> = Vec::new();
        if let Some(keys) = &self.keys {
            jobs.extend(keys.lock().drain().into_iter().map(|job| (WAITING, job)));
        }
        let mut wakes = 0;
        while let Ok(msg) = self.receiver.try_recv() {
            match msg {
                Msg::Job(job) => jobs.push((QUEUED, job)),
                Msg::Wake => wakes += 1,
            }
        }
        if wakes > 0 {
            if let Some(tx) = self.sender.read_recursive().as_ref() {
                for _ in 0..wakes {
                    let _ = tx.send(Msg::Wake);
                }
            }
        }
        let mut cancelled = Vec::new();
        for (from, job) in jobs {
            if job.control().header().transition(from, CANCELLED) {
                self.finish_cancelled(job.control(), from);
                cancelled.push((job.control().header().id, job.into_input()));
            } else {
                // Cancelled one by one earlier, or taken by a worker: not ours.
                drop_quietly(job);
            }
        }
        cancelled.sort_by_key(|(id, _)| *id);
        self.after_finish();
        cancelled.into_iter().map(|(_, input)| input).collect()
    }

    /// Puts an event on the pool's timer, starting the timer thread on first use.
    fn schedule(&self, at: Instant, event: Event) -> EventId {
        let (id, start) = self.timer.schedule(at, event);
        if start {
            let started = self.me.upgrade().map(|engine| {
                let name = format!("{}-timer", self.settings.thread_name);
                spawn_thread(name, None, move || engine.timer_loop())
            });
            match started {
                Some(Ok(handle)) => self.timer.set_thread(handle),
                _ => self.timer.thread_failed(),
            }
        }
        id
    }

    fn timer_loop(self: Arc<Self>) {
        while let timer::Next::Fire(event) = self.timer.next() {
            match event {
                Event::Deadline(control) => {
                    self.time_out(&*control, false);
                }
                Event::WakeKey(key) => {
                    if let Some(keys) = &self.keys {
                        let mut table = keys.lock();
                        let step = table.wake(key, Instant::now());
                        self.apply(key, step, table);
                    }
                }
            }
        }
    }

    /// Ends a running task with `TimedOut`. Its thread is abandoned — left to finish on its
    /// own, replaced by a new worker — if `force`, or while fewer than `max_abandoned` threads
    /// are abandoned; past that bound the thread stays a worker and no replacement starts.
    fn time_out(&self, control: &dyn Control, force: bool) -> bool {
        let header = control.header();
        let abandon = force
            || self
                .abandoned
                .fetch_update(SeqCst, SeqCst, |n| {
                    (n < self.settings.max_abandoned).then_some(n + 1)
                })
                .is_ok();
        if force {
            self.abandoned.fetch_add(1, SeqCst);
        }
        let to = if abandon {
            crate::cell::ABANDONED
        } else {
            crate::cell::TIMED_OUT
        };
        if !header.transition(crate::cell::RUNNING, to) {
            if abandon {
                self.abandoned.fetch_sub(1, SeqCst);
            }
            return false;
        }
        self.counters.timed_out();
        if abandon {
            // The abandoned thread is no longer joined; its place in `live` passes to a
            // replacement so the pool keeps its capacity. Done before the caller hears of the
            // timeout, so `stats().workers` is already right when it does.
            let handle = self.threads.lock().handles.remove(&header.worker());
            drop(handle);
            let needed = !(self.closed.load(SeqCst) && self.counters.outstanding() <= 1);
            if !needed || self.spawn_worker().is_err() {
                self.live.fetch_sub(1, SeqCst);
            }
        }
        control.fail(TaskError::TimedOut);
        self.counters.settled();
        if let Some(key) = header.key {
            self.release_key(key, false);
        }
        self.after_finish();
        true
    }

    /// Index of the current thread if it is one of this pool's workers.
    fn current_worker(&self) -> Option<usize> {
        CURRENT
            .with(StdCell::get)
            .filter(|(pool, _)| *pool == self.id)
            .map(|(_, index)| index)
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
        drop_quietly(self.cancel_queued());
    }
}

#[cfg(test)]
mod tests;
