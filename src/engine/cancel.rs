//! Cancelling: one task (by its handle or its id), every task not started (`cancel_all`,
//! shutdown), and a task a feeder forgot.

use super::ending::Ending;
use super::{Engine, Job};
use crate::cell::{drop_quietly, Control, State};
use crate::done::TaskError;
use crate::id::TaskId;

impl<J: Job> Engine<J> {
    /// Cancels the unstarted task with this id.
    pub(crate) fn cancel_id(&self, id: TaskId) -> bool {
        match self.registry.get(id) {
            Some(control) => self.cancel_task(&*control),
            None => false,
        }
    }

    /// Gives up on the task with this id, for a caller that no longer waits for it (a dropped
    /// stream): cancels it if it is not running; if it runs, it makes no further attempt.
    pub(crate) fn forget_id(&self, id: TaskId) {
        if let Some(control) = self.registry.get(id) {
            control.header().stop_retrying();
            self.cancel_task(&*control);
        }
    }

    /// Cancels every task not yet started; hands back their inputs in the order they were
    /// added.
    pub(crate) fn cancel_all(&self) -> Vec<J::Input> {
        in_order(self.cancel_queued(true))
    }

    /// Cancels one task that is not running. The one path for `Task::cancel` and `cancel(id)`.
    /// A task waiting to retry has its next attempt's job taken out of the timer and dropped
    /// (unless the timer is moving it right now, or `back_off` has not put it there yet; either
    /// then finds the task cancelled and drops it).
    pub(super) fn cancel_task(&self, control: &dyn Control) -> bool {
        let header = control.header();
        let Some(from) = header.cancel() else {
            return false;
        };
        let next = if from == State::Backoff {
            let id = header.id;
            self.timer.take_retry(|job| job.control().header().id == id)
        } else {
            None
        };
        self.end_cancelled(control, from);
        drop_quietly(next);
        true
    }

    /// Ends a task this thread cancelled from state `from`.
    pub(super) fn end_cancelled(&self, control: &dyn Control, from: State) {
        self.end(control.header(), Ending::Cancelled { from }, None, |way| {
            control.fail(TaskError::Cancelled, way)
        });
    }

    /// Cancels everything waiting to retry, waiting on a key or in the queue. With `hand_back`,
    /// returns the inputs by task id; without, the inputs are dropped.
    ///
    /// Drains the timer's retries first, then the key table, then the queue: a job moves from
    /// the table to the queue under the table lock, so none is missed in between. (A retry the
    /// timer is moving right now may reach the queue behind the drain: it runs, as an add racing
    /// `cancel_all` would.)
    pub(super) fn cancel_queued(&self, hand_back: bool) -> Vec<(TaskId, J::Input)> {
        let mut jobs: Vec<(State, J)> = Vec::new();
        jobs.extend(
            self.timer
                .take_retries()
                .into_iter()
                .map(|job| (State::Backoff, job)),
        );
        if let Some(keys) = &self.keys {
            jobs.extend(
                keys.lock()
                    .drain()
                    .into_iter()
                    .map(|job| (State::Waiting, job)),
            );
        }
        jobs.extend(
            self.intake
                .receiver()
                .try_iter()
                .map(|job| (State::Queued, job)),
        );
        let mut cancelled = Vec::new();
        for (from, job) in jobs {
            if !job.control().header().transition(from, State::Cancelled) {
                // Cancelled one by one earlier, or taken by a worker: not ours.
                drop_quietly(job);
            } else {
                self.end_cancelled(job.control(), from);
                if hand_back {
                    cancelled.push((job.control().header().id, job.into_input()));
                } else {
                    drop_quietly(job);
                }
            }
        }
        cancelled
    }
}

/// Inputs handed back, in the order their tasks were added.
pub(super) fn in_order<I>(mut inputs: Vec<(TaskId, I)>) -> Vec<I> {
    inputs.sort_by_key(|(id, _)| *id);
    inputs.into_iter().map(|(_, input)| input).collect()
}
