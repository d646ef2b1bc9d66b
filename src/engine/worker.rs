//! The worker loop, and running one job.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;

use super::{Engine, Job, Msg, RunContext, ABANDONED, CURRENT};
use crate::cell::{drop_quietly, Ended};
use crate::engine::timer::Event;

/// The body of every worker thread.
pub(super) fn main_loop<J: Job>(engine: Arc<Engine<J>>, index: usize) {
    CURRENT.with(|current| current.set(Some((engine.id, index))));
    // A new worker was counted idle when it was started (see `Engine::spawn_worker`).
    let mut counted_idle = true;
    let exit = loop {
        // A worker checks "too many workers?" before it takes its next job, not after.
        if engine.retire_if_over_max() {
            if counted_idle {
                engine.admission.force_leave_idle();
            }
            break Exit::Retired;
        }
        // IDLE
        if !counted_idle {
            engine.admission.enter_idle();
        }
        let job = match engine.next_job(index) {
            Ok(job) => job,
            Err(exit) => break exit,
        };
        // BUSY
        counted_idle = engine.execute(job, true);
        if ABANDONED.with(|abandoned| abandoned.replace(false)) {
            // A replacement already holds this thread's place in the pool, and the timer
            // already let go of this thread's handle.
            engine.abandoned.fetch_sub(1, SeqCst);
            break Exit::Abandoned;
        }
    };
    if exit == Exit::Retired {
        // Nobody will join a retired worker: let go of its handle, so that the thread's stack
        // is freed as it exits instead of when the pool shuts down.
        let handle = engine.threads.lock().handles.remove(&index);
        drop(handle);
    }
    CURRENT.with(|current| current.set(None));
}

/// Why a worker leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Idle past `keep_alive` above the minimum, or the pool shrank.
    Retired,
    /// The pool shut down and every task has ended: the shutdown joins this thread.
    ShutDown,
    /// Its task timed out and a replacement took its place.
    Abandoned,
}

impl<J: Job> Engine<J> {
    /// Waits for the next job this worker may run, and marks it started. The caller has
    /// counted this worker idle.
    fn next_job(&self, index: usize) -> Result<J, Exit> {
        loop {
            let received = match self.settings.keep_alive {
                // Elastic pool: an idle worker above the minimum retires after `keep_alive`.
                Some(keep_alive) => match self.receiver.recv_timeout(keep_alive) {
                    Ok(msg) => Ok(msg),
                    Err(RecvTimeoutError::Timeout) => {
                        if self.retire_idle() {
                            return Err(Exit::Retired);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => Err(()),
                },
                None => self.receiver.recv().map_err(|_| ()),
            };
            let Ok(msg) = received else {
                // Disconnected: the pool is closed and every accepted task has ended.
                self.live.fetch_sub(1, SeqCst);
                return Err(Exit::ShutDown);
            };
            match msg {
                Msg::Job(job) => {
                    if job.control().header().start(index) {
                        self.on_start(&job);
                        return Ok(job);
                    }
                    // Cancelled while queued: its canceller did the bookkeeping. Still idle.
                    drop_quietly(job);
                }
                Msg::Wake => {
                    if self.live.load(SeqCst) > self.max_workers() {
                        self.admission.force_leave_idle();
                        if self.try_retire() {
                            return Err(Exit::Retired);
                        }
                        self.admission.enter_idle();
                    }
                }
            }
        }
    }

    /// Runs a started job: arms its deadline, runs it, then releases its key and wakes joiners.
    /// On a worker's own loop (`own_loop`), returns whether the worker was already counted idle
    /// again (it is, once its task ended normally).
    pub(super) fn execute(&self, job: J, own_loop: bool) -> bool {
        let header = job.control().header();
        let key = header.key;
        let deadline = header
            .timeout
            .or(self.settings.task_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout))
            .map(|at| self.schedule(at, Event::Deadline(job.control_arc())));
        let cx = RunContext {
            counters: &self.counters,
            stopping: &self.stopping,
            free_worker: own_loop.then_some(&self.admission),
        };
        // `run` catches the callback's panic itself; what can still unwind here is a `Drop`
        // of the result after it was counted and delivered: the task has finished.
        let ended = panic::catch_unwind(AssertUnwindSafe(|| job.run(&self.runner, &cx)))
            .unwrap_or(Ended::Finished);
        if let Some(deadline) = deadline {
            self.timer.cancel(deadline);
        }
        match ended {
            Ended::Finished => {
                if let Some(key) = key {
                    self.release_key(key, false);
                }
                self.after_finish();
                own_loop
            }
            // The timer ended the task and did its bookkeeping.
            Ended::Lost { abandoned } => {
                if abandoned {
                    ABANDONED.with(|flag| flag.set(true));
                }
                false
            }
        }
    }

    /// Takes a queued job without waiting (for a worker that helps inside `join()`).
    pub(super) fn take_queued(&self, index: usize) -> Option<J> {
        loop {
            match self.receiver.try_recv() {
                Ok(Msg::Job(job)) => {
                    if job.control().header().start(index) {
                        // It left the queue without an idle worker claiming it.
                        self.admission.release();
                        self.on_start(&job);
                        return Some(job);
                    }
                    drop_quietly(job);
                }
                Ok(Msg::Wake) => {
                    if let Some(tx) = self.sender.read_recursive().as_ref() {
                        let _ = tx.send(Msg::Wake);
                    }
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    fn retire_if_over_max(&self) -> bool {
        self.live.load(SeqCst) > self.max_workers() && self.try_retire()
    }

    /// Leaves the pool if it has more workers than its maximum.
    fn try_retire(&self) -> bool {
        self.live
            .fetch_update(SeqCst, SeqCst, |live| {
                (live > self.max_workers()).then(|| live - 1)
            })
            .is_ok()
    }

    /// An idle worker's keep-alive ran out: it leaves if no add counted on it and the pool
    /// stays at or above its minimum.
    fn retire_idle(&self) -> bool {
        if !self.admission.leave_idle() {
            return false;
        }
        let min = self.min_workers.load(SeqCst);
        let retired = self
            .live
            .fetch_update(SeqCst, SeqCst, |live| (live > min).then(|| live - 1))
            .is_ok();
        if !retired {
            self.admission.enter_idle();
        }
        retired
    }
}
