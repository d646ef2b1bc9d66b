//! Time: the pool's timer thread, and what happens at a running task's deadline — it ends
//! `TimedOut` (or backs off to retry) and its thread is abandoned and replaced.

use std::sync::Arc;
use std::time::Instant;

use super::ending::Ending;
use super::spare::Spare;
use super::spawn;
use super::timer::{self, Event, EventId};
use super::workers::Abandon;
use super::{Engine, Job};
use crate::cell::{drop_quietly, Control, State};
use crate::done::TaskError;

impl<J: Job> Engine<J> {
    /// Puts an event on the pool's timer, starting the timer thread on first use.
    pub(super) fn schedule(&self, at: Instant, event: Event<J>) -> EventId {
        let (id, start) = self.timer.schedule(at, event);
        self.start_timer(start);
        id
    }

    /// Starts the timer thread if the timer said so (its first event).
    pub(super) fn start_timer(&self, start: bool) {
        if start {
            let started = self.me.upgrade().map(|engine| {
                let name = format!("{}-timer", self.settings.thread_name);
                spawn::spawn_thread(name, None, move || engine.timer_loop())
            });
            match started {
                Some(Ok(handle)) => self.timer.set_thread(handle),
                _ => self.timer.thread_failed(),
            }
        }
    }

    pub(super) fn timer_loop(self: Arc<Self>) {
        while let timer::Next::Fire(event) = self.timer.next() {
            match event {
                Event::Deadline(control, spare) => {
                    self.time_out(&*control, false, spare.as_deref());
                }
                Event::Retry(job) => self.readmit(job),
                Event::WakeKey(key) => {
                    if let Some(keys) = &self.keys {
                        let mut table = keys.lock();
                        let step = table.wake(key, Instant::now());
                        self.apply(key, step, table, None);
                    }
                }
            }
        }
    }

    /// Ends a running task with `TimedOut`. Its thread is abandoned — left to finish on its
    /// own, replaced by a new worker — if `force`, or while fewer than `max_abandoned` threads
    /// are abandoned; past that bound the thread stays a worker and no replacement starts.
    /// The thread's fate is settled before anyone hears of the timeout, and before the worker
    /// running the task can look at it (`Workers::fate_of`).
    ///
    /// With a `spare` (a retry policy), the policy may send the task to back off instead, unless
    /// `force` (a shutdown) or the pool is stopping. The decision and the state change happen under the spare's lock, which
    /// the worker's own ending takes too (see `retry.rs`).
    pub(super) fn time_out(
        &self,
        control: &dyn Control,
        force: bool,
        spare: Option<&Spare<J>>,
    ) -> bool {
        let header = control.header();
        let mut held = spare.map(Spare::lock);
        let (delay, pause) = match held.as_deref() {
            Some(Some(next))
                if !force && !self.stopping.is_raised() && !header.is_last_attempt() =>
            {
                crate::retry::asking_pause(|| next.again_after(&TaskError::TimedOut))
            }
            _ => (None, None),
        };
        let to = if delay.is_some() {
            State::Backoff
        } else {
            State::TimedOut
        };
        let abandoned =
            self.workers
                .time_out(header.worker(), force, self.settings.max_abandoned, || {
                    header.transition(State::Running, to)
                });
        let Some(abandoned) = abandoned else {
            return false;
        };
        header.attempt_timed_out();
        let next = held.as_mut().and_then(|held| held.take());
        drop(held);
        self.pause_asked(header, pause);
        let thread_left = abandoned == Abandon::Now;
        match (delay, next) {
            (Some(delay), Some(next)) => self.back_off(header, next, delay, None, thread_left),
            (_, next) => {
                self.end(header, Ending::TimedOut { thread_left }, None, |way| {
                    control.fail(TaskError::TimedOut, way)
                });
                drop_quietly(next);
            }
        }
        true
    }

    /// A timed-out task's thread left the pool: its place passes to a replacement, so the pool
    /// keeps its capacity — unless the pool is closing and no task is left for it. `again`: the
    /// timed-out task itself will run again (it backs off), so a replacement is always needed.
    pub(super) fn replace_abandoned(&self, again: bool) {
        let needed = again || !(self.intake.is_closed() && self.counters.outstanding() <= 1);
        if !needed || self.start_worker().is_err() {
            self.workers.give_up_place();
        }
    }
}
