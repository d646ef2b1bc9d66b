//! Retries: how a failed attempt becomes a task waiting on the timer, and how it comes back.
//!
//! # Design
//!
//! A task with a retry policy (see [`Retry`](crate::Retry)) keeps a *spare* beside each
//! attempt: the job of its next attempt, with a copy of its input, made by
//! [`Job::spare`](super::Job::spare) before the attempt starts (the callback consumes the
//! input). The spare sits in a [`Spare`](super::spare::Spare) shared by the worker running the attempt and, when
//! the task has a deadline, the timer. Whoever ends the attempt takes the spare under its lock,
//! decides, and then wins the state change:
//!
//! - the worker, when the callback returns or panics (`RunContext::finish_kept`);
//! - the timer, at the deadline (`Engine::time_out`).
//!
//! Deciding and changing the state under the spare's lock is what keeps the two apart: the
//! loser finds the spare gone (or the state changed) and drops its late result, as a late
//! result of a timed-out task always is.
//!
//! The decision is *back off* (`State::Running → State::Backoff`, [`Engine::back_off`]) or *give up*
//! (`State::Running → State::Done` or `State::TimedOut`, through the one ending path, the spare's input handed
//! back with the failure). A backing-off task holds no worker and no key; its spare waits in
//! the timer as `Event::Retry` and re-enters through its key's table (so `max_per_key` and
//! `min_interval_per_key` hold for retries too) or straight into the queue
//! ([`Engine::readmit`]). Cancelling it (`State::Backoff → State::Cancelled`) ends it at once; the timer
//! later finds the state changed and drops the spare. `cancel_all` and shutdown take the
//! spares out of the timer and hand their inputs back.
//!
//! A task backing off is still outstanding: `join` and a graceful shutdown wait for its last
//! attempt (the queue stays connected for it, as it does for keyed jobs). Once the pool is
//! stopping (`shutdown_now`, or `shutdown_timeout` ran out), no attempt backs off: it ends with
//! its failure.

use std::time::{Duration, Instant};

use super::ending::OnWorker;
use super::{Engine, Job};
use crate::cell::{drop_quietly, Header, State};

impl<J: Job> Engine<J> {
    /// An attempt failed and its policy wants another after `delay`; the caller won
    /// `State::Running → State::Backoff` and holds `next`, the next attempt's job. The same steps as
    /// `Engine::end`, but nothing is delivered and nothing settles: the task goes on.
    ///
    /// `on_worker`: set when the worker that ran the attempt backs it off (its callback returned,
    /// so the key is free); `None` from the timer, whose attempt's callback still runs (it
    /// keeps the key until it returns, see `execute`). `thread_left`: the timer abandoned the
    /// attempt's thread, which gets a replacement.
    pub(super) fn back_off(
        &self,
        header: &Header,
        next: J,
        delay: Duration,
        on_worker: Option<OnWorker>,
        thread_left: bool,
    ) {
        // 1. Count.
        self.counters.backed_off();
        // 2. Release.
        if let Some(on_worker) = on_worker {
            if on_worker.frees_worker {
                self.admission().enter_idle();
            }
            if let Some(key) = header.key {
                self.release_key(key, false);
            }
        }
        if thread_left {
            // Always: this task will need a worker again, even if it is the last one left.
            self.replace_abandoned(true);
        }
        // 3. Not running: it excuses no joiner.
        self.quiet.joiners.ended((header.id, header.attempts()));
        // 4. Wait on the timer. A delay past the clock's range waits as long as it can.
        let now = Instant::now();
        let at = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(u32::MAX as u64));
        // Looked at under the timer's lock, where `cancel_all`, `shutdown_now` and a cancel look
        // for retries: `shutdown_now` raises `stopping` before it takes the retries out, a
        // dropped stream marks the last attempt before it cancels, and a cancel ends the task
        // before it looks; either they find this retry in the timer, or it never enters and is
        // stopped here. `stats().waiting_retry` counts the timer's retries, so a task counted
        // there is one that `cancel_all` and `shutdown_now` find and hand back.
        let wanted = |next: &J| {
            let header = next.control().header();
            header.state() == State::Backoff
                && !header.is_last_attempt()
                && !self.stopping.is_raised()
        };
        match self.timer.schedule_retry(at, next, wanted) {
            Ok((_, start)) => self.start_timer(start),
            Err(next) => self.stop_retry(next),
        }
    }

    /// Ends a task waiting to retry that must not run again: `Cancelled` (unless it was
    /// cancelled already: its canceller ended it). Stopped by a shutdown that stops waiting, it
    /// keeps its input for `shutdown_now` to hand back, as the retries it found in the timer.
    fn stop_retry(&self, next: J) {
        let control = next.control();
        let header = control.header();
        if !header.transition(State::Backoff, State::Cancelled) {
            drop_quietly(next);
            return;
        }
        self.end_cancelled(control, State::Backoff);
        if self.stopping.is_raised() {
            let id = header.id;
            self.stopped_retries.lock().push((id, next.into_input()));
        } else {
            drop_quietly(next);
        }
    }

    /// The timer's side: a back-off has passed. The task enters its key's table or the queue,
    /// unless it was cancelled meanwhile.
    pub(super) fn readmit(&self, job: J) {
        if self.stopping.is_raised() || job.control().header().is_last_attempt() {
            // Due just as `shutdown_now` began, or cancelled while its last attempt ran: it
            // does not run again.
            self.stop_retry(job);
            return;
        }
        let header = job.control().header();
        let keyed = match (header.key, &self.keys) {
            (Some(key), Some(keys)) => Some((key, keys)),
            _ => None,
        };
        let to = if keyed.is_some() {
            State::Waiting
        } else {
            State::Queued
        };
        if !header.transition(State::Backoff, to) {
            // Cancelled while it waited: its canceller ended it.
            drop_quietly(job);
            return;
        }
        match keyed {
            Some((key, keys)) => {
                self.counters.entered_key();
                let mut table = keys.lock();
                let step = table.admit(key, job, Instant::now());
                self.apply(key, step, table, None);
                // Held back by its key, it may be one that a `join` inside a keyed task need
                // not wait for: the joiner looks again.
                self.nudge();
            }
            None => self.push_forced(job),
        }
    }

    /// Queues a retry: it takes its place in a bounded queue unasked, since refusing it would
    /// strand an accepted task (as a job its key lets through does, see `apply`).
    pub(super) fn push_forced(&self, job: J) {
        let left = self.admission().force();
        match self.intake.send_inside(job) {
            Ok(()) => self.enqueued(left),
            Err(job) => self.strand(job),
        }
    }

    /// A job the queue refused: unreachable while its task is outstanding (the queue
    /// disconnects only when none is); never strand an accepted task regardless.
    pub(super) fn strand(&self, job: J) {
        if job
            .control()
            .header()
            .transition(State::Queued, State::Cancelled)
        {
            // Gives the place back too.
            self.end_cancelled(job.control(), State::Queued);
        }
        drop_quietly(job);
    }
}
