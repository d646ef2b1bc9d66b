//! How a task ends: one path for every ending.
//!
//! Whoever wins a task's final state change — the worker (`Running → Done`), a canceller
//! (`Waiting/Queued/Backoff → Cancelled`), the timer or a shutdown (`Running → TimedOut`) — calls
//! [`Engine::end`], which always does the same things in the same order:
//!
//! 1. **count** the ending (`stats()` shows it before anyone can receive it);
//! 2. **release** what the task held: its place in the queue (cancelled while queued), its
//!    worker (the worker counts idle again, before it delivers, so that a caller who adds its
//!    next task on receiving this result finds it free; a timed-out task's abandoned thread is
//!    replaced — counted first, so `stats()` never shows the replacement busy beside a task not
//!    yet counted as ended), and its key — except a timed-out task,
//!    whose callback still runs: it holds its key until the callback returns
//!    ([`Engine::execute`](super::worker)), so a host with hanging requests never has more than
//!    `max_per_key` of them in flight; the thread's own fate was settled by `time_out`;
//! 3. forget it: out of the registry (`cancel(id)` no longer finds it), and as a joiner (a task
//!    that ended no longer excuses anyone in `join`);
//! 4. **deliver** the result — a worker may wait for room in a bounded mailbox, anyone else
//!    hands a full mailbox's send to the courier;
//! 5. **settle**: count it delivered, nudge `join`/shutdown waiters, and disconnect the queue if
//!    the pool is closed and nothing is left.

use std::thread;
use std::time::Duration;

use super::scheduler::Seat;
use super::spare::Spare;
use super::{Engine, Job};
use crate::cell::{drop_quietly, Cell, Header, State};
use crate::delivery::{Delivered, Way};
use crate::done::TaskError;
use crate::observe::{RunEnd, Watch};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Completed,
    Panicked,
    /// Cancelled from state `from` (Waiting, Queued, or Backoff between attempts): it never
    /// ran, or will not run again.
    Cancelled {
        from: State,
    },
    /// Still running at its deadline (or at the end of `shutdown_timeout`). `thread_left`: its
    /// thread was abandoned (see `Workers::time_out`) and gets a replacement.
    TimedOut {
        thread_left: bool,
    },
}

/// What the thread that ran a job learns from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    /// The run ended the task.
    Ended,
    /// Someone else (the timer) ended it while it ran; its late result was dropped.
    Lost,
}

/// Who ends a task.
#[derive(Clone, Copy)]
pub(super) struct OnWorker {
    /// The worker is free again once this ending is counted (its own loop, not abandoned).
    pub(super) frees_worker: bool,
}

/// What a job needs from the engine while it runs on a worker.
pub(crate) struct RunContext<'a, J: Job> {
    pub(super) engine: &'a Engine<J>,
    pub(super) seat: &'a Seat,
    /// On the worker's own loop (not a task run inside `join()`).
    pub(super) own_loop: bool,
    /// The next attempt's job, for a task with a retry policy (see `retry.rs`).
    pub(super) spare: Option<&'a Spare<J>>,
}

impl<J: Job> RunContext<'_, J> {
    /// The flag cancel tokens read: raised by `shutdown_now` and `shutdown_timeout`.
    pub(crate) fn stopping(&self) -> &std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.engine.stopping.flag()
    }

    /// The callback of the task with this header is about to be called (the job's last step
    /// before it): its key's interval counts from this instant.
    pub(crate) fn callback_starts(&self, header: &Header) {
        if let Some(key) = header.key {
            self.engine.callback_starts(key);
        }
    }

    /// Ends the task's attempt with the callback's outcome, unless the timer ended it first.
    ///
    /// With `retry` (a task with a retry policy, whose run has a spare, see `retry.rs`):
    /// `retry` decides whether the result calls for another attempt, and the task either backs
    /// off or ends. The decision and the state change happen under the spare's lock, which the
    /// timer takes too when it ends the attempt at its deadline.
    pub(crate) fn finish<T: Send + 'static>(
        &self,
        cell: &Cell<T>,
        outcome: thread::Result<T>,
        retry: Option<impl FnOnce(Result<&T, &TaskError>) -> Option<Duration>>,
        watch: Watch,
    ) -> Ran {
        let result = caught(outcome);
        // The attempt's event goes out before its ending is delivered (as the counters do),
        // so that whoever receives the result finds it reported.
        let returned = if result.is_ok() {
            RunEnd::Completed
        } else {
            RunEnd::Panicked
        };
        let (Some(spare), Some(again_after)) = (self.spare, retry) else {
            if !cell.header.transition(State::Running, State::Done) {
                // Timed out while it ran: the caller already has `TimedOut`.
                watch.end(RunEnd::Late);
                drop_quietly(result);
                return Ran::Lost;
            }
            watch.end(returned);
            return self.completed(cell, result);
        };
        let mut held = spare.lock();
        if held.is_none() {
            // The timer ended this attempt (and took the spare): a late result.
            drop(held);
            watch.end(RunEnd::Late);
            drop_quietly(result);
            return Ran::Lost;
        }
        let (delay, pause) = if self.engine.stopping.is_raised() {
            (None, None)
        } else {
            crate::retry::asking_pause(|| again_after(result.as_ref()))
        };
        let to = if delay.is_some() {
            State::Backoff
        } else {
            State::Done
        };
        if !cell.header.transition(State::Running, to) {
            drop(held);
            watch.end(RunEnd::Late);
            drop_quietly(result);
            return Ran::Lost;
        }
        let next = held
            .take()
            .expect("the spare is there: checked under this lock");
        drop(held);
        // Before the key is released below: its next task must not slip out first.
        self.engine.pause_asked(&cell.header, pause);
        match delay {
            Some(delay) => {
                watch.end(RunEnd::Retrying);
                drop_quietly(result);
                self.engine
                    .back_off(&cell.header, next, delay, Some(self.on_worker()), false);
                Ran::Ended
            }
            None => {
                watch.end(returned);
                drop_quietly(next);
                self.completed(cell, result)
            }
        }
    }

    /// Ends a task that this thread moved out of Running with the callback's `result`.
    fn completed<T: Send + 'static>(&self, cell: &Cell<T>, result: Result<T, TaskError>) -> Ran {
        let ending = if result.is_ok() {
            Ending::Completed
        } else {
            Ending::Panicked
        };
        self.engine
            .end(&cell.header, ending, Some(self.on_worker()), |way| {
                cell.deliver(result, way)
            });
        Ran::Ended
    }

    fn on_worker(&self) -> OnWorker {
        OnWorker {
            // Stable here: only a running task of this thread can get it abandoned, and this
            // one just ended.
            frees_worker: self.own_loop && !self.seat.is_abandoned(),
        }
    }
}

/// A callback's outcome as a task's result: a panic becomes `Panicked`.
fn caught<T>(outcome: thread::Result<T>) -> Result<T, TaskError> {
    outcome.map_err(|payload| {
        let error = TaskError::from_panic(&*payload);
        drop_quietly(payload);
        error
    })
}

impl<J: Job> Engine<J> {
    /// The one ending path; see the module docs. The caller won the task's final state change.
    /// `on_worker`: set when the worker that ran the task ends it.
    pub(super) fn end(
        &self,
        header: &Header,
        ending: Ending,
        on_worker: Option<OnWorker>,
        deliver: impl FnOnce(Way<'_>) -> Delivered,
    ) {
        // 1. Count.
        match ending {
            Ending::Completed => self.counters.completed(),
            Ending::Panicked => self.counters.panicked(),
            Ending::Cancelled { from } => {
                if from == State::Waiting {
                    self.counters.left_key();
                }
                self.counters.cancelled();
            }
            Ending::TimedOut { .. } => self.counters.timed_out(),
        }
        if let Ending::Cancelled { .. } | Ending::TimedOut { .. } = ending {
            crate::observe::ended_unrun(header, matches!(ending, Ending::TimedOut { .. }));
        }
        // 2. Release.
        if on_worker.is_some_and(|w| w.frees_worker) {
            self.admission().enter_idle();
        }
        match ending {
            Ending::Completed | Ending::Panicked => {
                if let Some(key) = header.key {
                    self.release_key(key, false);
                }
            }
            Ending::Cancelled { from } => {
                if from == State::Queued {
                    self.admission().release();
                    if let Some(key) = header.key {
                        self.release_key(key, true);
                    }
                }
            }
            Ending::TimedOut { thread_left } => {
                if thread_left {
                    self.replace_abandoned(false);
                }
            }
        }
        // 3. Forget it: `cancel(id)` no longer finds it, and a joiner that ended excuses nobody
        // any more.
        self.registry.remove(header);
        self.quiet.joiners.ended((header.id, header.attempts()));
        // 4. Deliver, then 5. settle (the courier settles what it delivers).
        let way = match on_worker {
            Some(_) => Way::Wait {
                give_up: self.stopping.give_up_signal(),
            },
            None => Way::NoWait,
        };
        match deliver(way) {
            Delivered::Done => self.settle(),
            Delivered::Later(pending) => self.send_later(pending),
        }
    }

    /// A task's ending was delivered (or dropped for good): `join` and shutdown may go on.
    pub(super) fn settle(&self) {
        self.counters.settled();
        self.nudge();
        if self.intake.is_closed() && self.counters.outstanding() == 0 {
            self.disconnect();
        }
    }
}
