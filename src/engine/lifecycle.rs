//! Joining and shutting down.
//!
//! # Design
//!
//! Every shutdown starts with `close` (idempotent): set `closed`, wake adds blocked on a full
//! queue (they hand their input back), and pass the write lock once so that every add that saw
//! the pool open has enqueued. Then:
//!
//! - `shutdown` waits for the queue to drain and every task to end;
//! - `shutdown_now` first cancels everything not started (inputs handed back, tasks told
//!   `Cancelled`) and raises the stop flag that cancel tokens read, then waits for the running
//!   tasks;
//! - `shutdown_timeout` waits like `shutdown`, up to a deadline; then does what `shutdown_now`
//!   does and also ends the tasks still running with `TimedOut`, abandoning their threads.
//!
//! `shutdown_timeout` also raises the give-up signal: a worker waiting for room in a full
//! bounded mailbox drops that result (the task keeps the ending it was counted with; its
//! receiver gets nothing for it), and so does the courier.
//!
//! The queue disconnects when the pool is closed and no accepted task is left unsettled
//! (`Engine::settle` checks after every ending); workers then leave, and the shutdown joins
//! them — except the calling thread when it is one of the pool's workers (a task that shuts down
//! its own pool, or drops its last handle): joining itself would deadlock, so it returns and the
//! workers finish on their own.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use super::{Engine, Job, CURRENT_TASK};
use crate::cell::drop_quietly;
use crate::cell::State;

/// The signals of a shutdown that stops waiting: `shutdown_now`, or `shutdown_timeout` once its
/// time ran out.
pub(super) struct Stopping {
    /// Raised by both: cancel tokens read it, and no attempt backs off once it is up.
    flag: Arc<AtomicBool>,
    /// Dropped when `shutdown_timeout` runs out: deliveries waiting for room in a full mailbox
    /// (a worker's, the courier's) give up.
    give_up_tx: Mutex<Option<Sender<()>>>,
    give_up: Receiver<()>,
}

impl Stopping {
    pub(super) fn new() -> Stopping {
        let (give_up_tx, give_up) = bounded(0);
        Stopping {
            flag: Arc::new(AtomicBool::new(false)),
            give_up_tx: Mutex::new(Some(give_up_tx)),
            give_up,
        }
    }

    pub(super) fn raise(&self) {
        self.flag.store(true, SeqCst);
    }

    pub(super) fn is_raised(&self) -> bool {
        self.flag.load(SeqCst)
    }

    /// The flag itself, for cancel tokens.
    pub(super) fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// Deliveries still waiting for room give up.
    fn give_up(&self) {
        drop(self.give_up_tx.lock().take());
    }

    /// Ready (disconnected) once deliveries must give up.
    pub(super) fn give_up_signal(&self) -> &Receiver<()> {
        &self.give_up
    }
}

/// Owns a pool: dropping the last owner shuts the pool down.
pub(crate) struct Owner<J: Job>(pub(crate) Arc<Engine<J>>);

impl<J: Job> Drop for Owner<J> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<J: Job> Engine<J> {
    /// Stops accepting work. Returns once every add that saw the pool open has enqueued.
    fn close(&self) {
        self.intake.close();
        self.admission().close();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.intake.is_closed()
    }

    /// Closes, lets everything accepted run, joins the workers.
    pub(crate) fn shutdown(&self) {
        self.close();
        self.disconnect_if_done();
        self.wait_for_exit(None);
    }

    /// Closes, cancels everything not started (returned by task id), waits for the running
    /// tasks, joins the workers.
    pub(crate) fn shutdown_now(&self) -> Vec<J::Input> {
        self.close();
        let mut inputs = self.stop_now(true);
        self.disconnect_if_done();
        self.wait_for_exit(None);
        // Retries that came due as the shutdown began, stopped by the pool (every task has
        // ended by now, unless called from inside a task: then those that have so far).
        inputs.append(&mut self.stopped_retries.lock());
        super::cancel::in_order(inputs)
    }

    /// Shuts down gracefully for at most `timeout`, then as `shutdown_now` and ends what still
    /// runs with `TimedOut`. True if everything ended within the time.
    pub(crate) fn shutdown_timeout(&self, timeout: Duration) -> bool {
        self.close();
        self.disconnect_if_done();
        let deadline = Instant::now().checked_add(timeout);
        let finished = self.wait_quiet(deadline);
        if !finished {
            // Inputs are not returned here (a tagged task's tag still comes with its ending).
            self.stop_now(false);
            for control in self.registry.all() {
                if self.is_own_task(&*control) {
                    continue;
                }
                // A job a worker took off the queue but has not started yet is neither in the
                // queue (so `stop_now` missed it) nor running: cancel it, or — if the worker
                // started it meanwhile — time it out.
                if self.cancel_task(&*control) {
                    continue;
                }
                let header = control.header();
                if header.state() == State::Running {
                    let spare = self.spares.get(header.id);
                    self.time_out(&*control, true, spare.as_deref());
                }
            }
            // Deliveries still waiting for room in a mailbox nobody reads give up.
            self.stopping.give_up();
        }
        self.wait_for_exit(deadline);
        // `shutdown_timeout` hands no input back.
        let stopped = std::mem::take(&mut *self.stopped_retries.lock());
        drop_quietly(stopped);
        finished
    }

    /// Raises the stop flag (cancel tokens, retries), then cancels what has not started; see
    /// `cancel_queued` for `hand_back`.
    fn stop_now(&self, hand_back: bool) -> Vec<(crate::id::TaskId, J::Input)> {
        self.stopping.raise();
        self.cancel_queued(hand_back)
    }

    /// A task calling `shutdown_timeout` on its own pool is not ended by it.
    fn is_own_task(&self, control: &dyn crate::cell::Control) -> bool {
        self.current_worker()
            .is_some_and(|seat| seat.index == control.header().worker())
    }

    /// Blocks until no task is queued or running.
    ///
    /// On one of the pool's own workers, a task cannot wait for itself: there it waits for every
    /// task except those blocked in `join()` on a worker (itself included), and runs queued
    /// tasks on its own thread meanwhile, so it cannot deadlock for lack of free workers.
    pub(crate) fn join(&self) {
        if self.wait_quiet(None) && self.current_worker().is_none() {
            // Quiet: the registry gives back the memory of a past burst.
            self.registry.trim();
        }
    }

    /// Waits until quiet or `deadline`; true if quiet (see `quiet.rs`).
    fn wait_quiet(&self, deadline: Option<Instant>) -> bool {
        let worker = self.current_worker();
        // On a worker, the joining task is excused (and excuses the others) while it runs.
        let joining = worker
            .as_ref()
            .and_then(|_| CURRENT_TASK.with(|task| task.get()));
        if let Some(((id, attempt), key)) = joining {
            // Its callback holds its key while it joins, even once the task ended (it timed
            // out); a task that ended excuses nobody: see `Joiners`.
            self.quiet.joiners.register((id, attempt), key);
            let running = self.registry.get(id).is_some_and(|task| {
                let header = task.header();
                header.state() == State::Running && header.attempts() == attempt
            });
            if running && self.quiet.joiners.confirm((id, attempt)) {
                // Another joiner may be waiting for exactly this task to be excused.
                self.nudge();
            }
        }
        // An abandoned thread no longer runs the pool's work.
        let helper = worker.as_ref().filter(|seat| !seat.is_abandoned());
        let quiet = self.quiet.wait(
            deadline,
            worker.is_none(),
            || self.counters.outstanding() <= self.excused(worker.is_some()),
            || helper.is_some() && !self.intake.receiver().is_empty(),
            || {
                // Run a queued task on this thread rather than wait for a free worker.
                if let Some(seat) = helper {
                    if let Some(job) = self.take_queued(seat) {
                        self.execute(job, seat, false);
                    }
                }
            },
        );
        if let Some((attempt, _)) = joining {
            self.quiet.joiners.remove(attempt);
        }
        quiet
    }

    /// How many outstanding tasks a `join` need not wait for: none from outside the pool; from
    /// one of its tasks, the joiners, and the tasks joiners' keys hold back.
    fn excused(&self, inside: bool) -> u64 {
        if !inside {
            return 0;
        }
        let mut excused = self.quiet.joiners.excused();
        let held = self.quiet.joiners.keys_held();
        if let (Some(keys), false) = (&self.keys, held.is_empty()) {
            let table = keys.lock();
            for (key, joiners) in held {
                excused += table.held_back_by_joiners(key, joiners) as u64;
            }
        }
        excused
    }

    /// Disconnects the queue if the pool is closed and no accepted task is left.
    pub(super) fn disconnect_if_done(&self) {
        self.nudge();
        if self.intake.is_closed() && self.counters.outstanding() == 0 {
            self.disconnect();
        }
    }

    /// Drops the queue's sender: idle workers see the disconnection and leave.
    pub(super) fn disconnect(&self) {
        self.intake.disconnect();
        // After the sender is gone: a worker parking from now on sees the queue closed.
        self.scheduler.close();
        self.timer.stop();
        self.courier.close();
    }

    /// Waits for every task to end, then joins every worker and the timer — unless called
    /// from one of the pool's own workers, which must not wait for itself. Workers still
    /// exiting at `deadline` are left to finish on their own.
    fn wait_for_exit(&self, deadline: Option<Instant>) {
        if self.current_worker().is_some() {
            return;
        }
        self.wait_quiet(None);
        // Every task has ended (waited for above): no worker is needed again, and none may
        // start behind this join.
        self.workers.join_all(deadline);
        if let Some(timer) = self.timer.take_thread() {
            let _ = timer.join();
        }
        if let Some(courier) = self.courier.take_thread() {
            let _ = courier.join();
        }
    }

    /// Undoes a build that failed halfway: no thread is left behind.
    pub(super) fn abort_build(&self) {
        self.close();
        self.disconnect();
        self.wait_for_exit(None);
    }
}
