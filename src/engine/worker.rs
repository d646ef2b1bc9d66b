//! The worker loop, and running one job.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::TryRecvError;

use super::scheduler::{Seat, Woke};
use super::spare::Spare;
use super::timer::Event;
use super::workers::Exit;
use super::{Engine, Job, Ran, RunContext, CURRENT, CURRENT_TASK};
use crate::cell::drop_quietly;

/// What became of the worker that ran a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// It is still a worker of the pool.
    Worker,
    /// A task it ran timed out and a replacement took its place: it must leave.
    Abandoned,
}

/// The body of every worker thread.
pub(super) fn main_loop<J: Job>(engine: Arc<Engine<J>>, seat: Arc<Seat>) {
    seat.bind_current_thread();
    CURRENT.with(|current| *current.borrow_mut() = Some((engine.id, seat.clone())));
    let exit = engine.work(&seat);
    CURRENT.with(|current| *current.borrow_mut() = None);
    // Before the pool hears that this thread left (a shutdown may be waiting for that).
    J::worker_leaves(&engine.runner);
    engine.workers.exited(seat.index, exit);
}

impl<J: Job> Engine<J> {
    fn work(&self, seat: &Arc<Seat>) -> Exit {
        // A new worker was counted idle when it was started (see `Engine::start_worker`).
        loop {
            // A worker checks "too many workers?" before it takes its next job, not after.
            if self.workers.retire_if_over_max() {
                self.admission().force_leave_idle();
                return Exit::Retired;
            }
            // IDLE
            let job = match self.next_job(seat) {
                Ok(job) => job,
                Err(exit) => return exit,
            };
            // BUSY
            if self.execute(job, seat, true) == Fate::Abandoned {
                // A replacement holds this thread's place; the job's ending was delivered.
                return Exit::Abandoned;
            }
        }
    }

    /// Waits for the next job this worker may run, and marks it started. The caller is counted
    /// idle.
    fn next_job(&self, seat: &Arc<Seat>) -> Result<J, Exit> {
        let mut searching = false;
        let mut last_look = false;
        loop {
            match self.intake.receiver().try_recv() {
                Ok(job) => {
                    if searching {
                        searching = false;
                        self.scheduler.found_work(self.intake.receiver());
                    } else if last_look {
                        last_look = false;
                        self.scheduler.took_last_look_work(self.intake.receiver());
                    }
                    if job.control().header().start(seat.index) {
                        self.on_start();
                        return Ok(job);
                    }
                    // Cancelled while queued: its canceller did the bookkeeping. Still idle.
                    drop_quietly(job);
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    if searching {
                        self.scheduler.stop_searching();
                    }
                    // The pool is closed and every accepted task has ended.
                    return Err(Exit::ShutDown);
                }
                Err(TryRecvError::Empty) => last_look = false,
            }
            if self.scheduler.search(self.intake.receiver(), searching) {
                searching = true;
                continue;
            }
            searching = false;
            let over_max = || self.workers.live() > self.workers.max();
            match self.scheduler.park(
                seat,
                self.intake.receiver(),
                self.settings.keep_alive,
                over_max,
            ) {
                Woke::Work => last_look = true,
                Woke::Searching => searching = true,
                Woke::Check => {
                    if self.workers.retire_if_over_max() {
                        self.admission().force_leave_idle();
                        return Err(Exit::Retired);
                    }
                }
                Woke::TimedOut => {
                    if self.retire_idle() {
                        return Err(Exit::Retired);
                    }
                }
            }
        }
    }

    /// Runs a started job on worker `seat`: arms its deadline, runs it (the job ends itself
    /// through `RunContext::finish`), and tells what became of the worker. `own_loop` is false
    /// for a job run inside `join()`.
    pub(super) fn execute(&self, job: J, seat: &Seat, own_loop: bool) -> Fate {
        let header = job.control().header();
        let (id, key) = (header.id, header.key);
        // A task with a retry policy: its next attempt's job, made while the input is here.
        let spare = job.spare().map(|next| Arc::new(Spare::new(next)));
        if let Some(spare) = &spare {
            // Where `shutdown_timeout` finds it, to hand the input back with `TimedOut`.
            self.spares.insert(id, spare.clone());
        }
        let deadline = header
            .timeout()
            .or(self.settings.task_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout))
            .map(|at| self.schedule(at, Event::Deadline(job.control_arc(), spare.clone())));
        let outer = CURRENT_TASK.with(|task| task.replace(Some(((id, header.attempts()), key))));
        let cx = RunContext {
            engine: self,
            seat,
            own_loop,
            spare: spare.as_deref(),
        };
        // `run` catches the callback's panic itself; what can still unwind here is a `Drop`
        // of the result after it was counted and delivered: the task has ended.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| job.run(&self.runner, &cx)))
            .unwrap_or(Ran::Ended);
        CURRENT_TASK.with(|task| task.set(outer));
        if let Some(deadline) = deadline {
            self.timer.cancel(deadline);
        }
        if spare.is_some() {
            self.spares.remove(id);
        }
        if ran == Ran::Lost {
            // It timed out while it ran; its callback has returned only now, and it held its
            // key until now.
            if let Some(key) = key {
                self.release_key(key, false);
            }
            let abandoned = self.workers.fate_of(seat);
            if own_loop && !abandoned {
                // Past `max_abandoned`: the thread stays a worker, free again from now.
                self.admission().enter_idle();
            }
        }
        if seat.is_abandoned() {
            Fate::Abandoned
        } else {
            Fate::Worker
        }
    }

    /// Takes a queued job without waiting (for a worker that helps inside `join()`).
    pub(super) fn take_queued(&self, seat: &Seat) -> Option<J> {
        while let Ok(job) = self.intake.receiver().try_recv() {
            if job.control().header().start(seat.index) {
                // It left the queue without an idle worker claiming it.
                self.admission().release();
                self.on_start();
                return Some(job);
            }
            drop_quietly(job);
        }
        None
    }

    /// An idle worker's keep-alive ran out: it leaves if no add counted on it and the pool
    /// stays at or above its minimum.
    fn retire_idle(&self) -> bool {
        if !self.admission().leave_idle() {
            return false;
        }
        if self.workers.retire_idle() {
            return true;
        }
        self.admission().enter_idle();
        false
    }
}
