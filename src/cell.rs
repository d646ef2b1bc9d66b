//! The per-task cell: the task's state machine and where its ending goes. It knows nothing of
//! the engine: whoever wins a state change asks the engine to end the task (`engine/ending.rs`),
//! and the engine calls back here to deliver.
//!
//! # Design
//!
//! Every accepted task owns one `Cell<T>`, shared (`Arc`) by the job in the queue, the caller's
//! [`Task`](crate::Task), the cancel registry and, while it runs with a deadline, the timer. The
//! state is one atomic byte; every ending is a compare-and-swap out of a live state, so exactly
//! one party (worker, canceller, timer) wins the right to end the task:
//!
//! ```text
//! Waiting ──(key has room)──► Queued ──(worker takes it)──► Running ──► Done
//!    ▲ │                        │ ▲                            ├──────► TimedOut
//!    │ └────────► Cancelled ◄───┘ │                            │
//!    │                ▲           │                            │ (attempt failed, retry)
//!    └── (retry due) ─┴─ Backoff ─┴────────────◄───────────────┘
//! ```
//!
//! Backoff is the one way back: a task with a retry policy whose attempt failed waits on the
//! pool's timer, holding no worker, then re-enters through its key (Waiting) or the queue.
//!
//! A result that loses the race (a late result of a timed-out task) is dropped, inside
//! `catch_unwind`, since its `Drop` may panic. What becomes of a timed-out task's *thread* is
//! the engine's business (`engine/workers.rs`), not the cell's.
//!
//! The ending goes to a one-shot [`Slot`] read by [`Task`](crate::Task), or to the caller's
//! mailbox channel as a [`Done`] message — with the caller's tag, when the task was tagged (see
//! `delivery.rs`). The tag lives here, beside the destination, not in the job: it is at hand
//! however the task ends (cancelled by id, timed out, after its last retry).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

pub(crate) use crate::delivery::drop_quietly;
use crate::delivery::{self, Delivered, Way};
use crate::done::{Done, TaskError};
use crate::id::TaskId;
use crate::slot::{Ended, Slot};

/// Where a task is in its life. See the module documentation for the transitions.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Held back by its key (per-key concurrency or politeness); not in the queue yet.
    Waiting,
    /// In the shared queue, waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// An attempt failed and the task waits on the pool's timer to run again.
    Backoff,
    /// Ended with the callback's return value or its panic.
    Done,
    /// Ended before it started (or between attempts).
    Cancelled,
    /// Ended at its deadline while its callback still ran.
    TimedOut,
    /// Never accepted: the add was refused and the input handed back.
    Rejected,
}

impl State {
    const ALL: [State; 8] = [
        State::Waiting,
        State::Queued,
        State::Running,
        State::Backoff,
        State::Done,
        State::Cancelled,
        State::TimedOut,
        State::Rejected,
    ];

    /// The task has not ended: it waits, runs, or will run again. The one liveness check.
    pub(crate) fn is_live(self) -> bool {
        matches!(
            self,
            State::Waiting | State::Queued | State::Running | State::Backoff
        )
    }

    /// Not running, not ended: a cancel can end it.
    fn is_cancellable(self) -> bool {
        matches!(self, State::Waiting | State::Queued | State::Backoff)
    }
}

const STATE_BITS: u64 = 0xff;
const LAST_ATTEMPT: u64 = 1 << 8;
const ATTEMPTS_SHIFT: u32 = 32;
const NO_TIMEOUT: u64 = u64::MAX;

fn state_of(word: u64) -> State {
    State::ALL[(word & STATE_BITS) as usize]
}

/// What every task has, whatever its output type.
pub(crate) struct Header {
    pub(crate) id: TaskId,
    /// Hash of the task's key, for per-key limits.
    pub(crate) key: Option<u64>,
    /// The task's own deadline in nanoseconds, counted from its start (`NO_TIMEOUT`: none, the
    /// pool's `task_timeout` applies). Nanoseconds in a `u64`, not an `Option<Duration>`: it
    /// keeps a small task's cell within the allocator's fast size class.
    timeout_ns: u64,
    /// In one word, so that a reader never sees a task running without its attempt counted:
    /// the state (low byte); the *last attempt* flag (bit 8: whoever waits for the task is
    /// gone, a dropped stream — with a retry policy it makes no further attempt); the attempts
    /// started so far (the 32 bits from bit 32: 1 once the task first runs; more only with a
    /// retry policy).
    word: AtomicU64,
    /// The latest attempt that timed out: its callback (still running, or holding a key) is
    /// told to stop for good, even once a retry waits or runs.
    timed_out_attempt: AtomicU32,
    /// Where the engine's registry filed the task (see `engine/registry.rs`): written when the
    /// task is accepted, read when it ends, both under the registry shard's lock.
    pub(crate) registry_slot: AtomicU32,
    /// Index of the worker thread running the task (meaningful while Running).
    worker: AtomicUsize,
}

impl Header {
    pub(crate) fn new(id: TaskId, key: Option<u64>, timeout: Option<Duration>) -> Header {
        // A keyed task starts held back; the key table lets it into the queue.
        let state = if key.is_some() {
            State::Waiting
        } else {
            State::Queued
        };
        Header {
            id,
            key,
            timeout_ns: timeout.map_or(NO_TIMEOUT, |timeout| {
                u64::try_from(timeout.as_nanos())
                    .map_or(NO_TIMEOUT - 1, |ns| ns.min(NO_TIMEOUT - 1))
            }),
            word: AtomicU64::new(state as u64),
            timed_out_attempt: AtomicU32::new(0),
            registry_slot: AtomicU32::new(u32::MAX),
            worker: AtomicUsize::new(usize::MAX),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> State {
        state_of(self.word.load(Ordering::Acquire))
    }

    /// Moves from `from` to `to`; false if the state was not `from`.
    #[inline]
    pub(crate) fn transition(&self, from: State, to: State) -> bool {
        self.change(from, to, 0)
    }

    /// Moves from `from` to `to` and adds `started` to the attempts, in one step; false if the
    /// state was not `from`.
    fn change(&self, from: State, to: State, started: u64) -> bool {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if state_of(word) != from {
                return false;
            }
            let next = (word & !STATE_BITS) + (started << ATTEMPTS_SHIFT) + to as u64;
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Marks a task whose add was refused: it never existed for the caller.
    pub(crate) fn reject(&self) {
        // Nobody else holds the task (its job came back): no other bit to keep.
        self.word.store(State::Rejected as u64, Ordering::Release);
    }

    /// A worker takes the task: Queued → Running, one more attempt started. False if it was
    /// cancelled meanwhile.
    #[inline]
    pub(crate) fn start(&self, worker: usize) -> bool {
        self.worker.store(worker, Ordering::Relaxed);
        self.change(State::Queued, State::Running, 1)
    }

    /// Attempts started so far.
    #[inline]
    pub(crate) fn attempts(&self) -> u32 {
        (self.word.load(Ordering::Acquire) >> ATTEMPTS_SHIFT) as u32
    }

    /// Who a result is of: the id, and the attempts so far.
    #[inline]
    pub(crate) fn ended(&self) -> Ended {
        Ended {
            id: self.id,
            attempts: self.attempts(),
        }
    }

    /// Cancels a task that is not running: waiting on its key, queued, or waiting to retry.
    /// Returns the state it was cancelled from, or `None` if it runs or has ended.
    pub(crate) fn cancel(&self) -> Option<State> {
        // From the state it is in now, again if it moved meanwhile (its key letting it into the
        // queue, its back-off ending): trying fixed states in turn could miss a task passing
        // from one to the next.
        loop {
            let from = self.state();
            if !from.is_cancellable() {
                return None;
            }
            if self.transition(from, State::Cancelled) {
                return Some(from);
            }
        }
    }

    /// Nobody waits for the task any more: with a retry policy, it makes no further attempt.
    pub(crate) fn stop_retrying(&self) {
        self.word.fetch_or(LAST_ATTEMPT, Ordering::SeqCst);
    }

    /// True once `stop_retrying` was called: no further attempt.
    pub(crate) fn is_last_attempt(&self) -> bool {
        self.word.load(Ordering::SeqCst) & LAST_ATTEMPT != 0
    }

    /// The task's own deadline, counted from its start; `None`: the pool's `task_timeout`.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        (self.timeout_ns != NO_TIMEOUT).then(|| Duration::from_nanos(self.timeout_ns))
    }

    /// The worker running the task, for abandoning its thread when it times out.
    pub(crate) fn worker(&self) -> usize {
        self.worker.load(Ordering::Relaxed)
    }

    /// The attempt that runs now has timed out (called right after its state change).
    pub(crate) fn attempt_timed_out(&self) {
        self.timed_out_attempt
            .fetch_max(self.attempts(), Ordering::SeqCst);
    }

    /// True once `attempt` was told to stop: it timed out — for good, even once the task waits
    /// to retry or a later attempt runs — or the task ended. (A cancelled task never runs, so
    /// its token is read only by an attempt that ran before it was cancelled.)
    pub(crate) fn stop_requested(&self, attempt: u32) -> bool {
        self.timed_out_attempt.load(Ordering::SeqCst) >= attempt
            || self.attempts() != attempt
            || matches!(
                self.state(),
                State::Cancelled | State::TimedOut | State::Backoff
            )
    }
}

/// The type-erased face of a cell: what the engine, the registry and the timer need.
pub(crate) trait Control: Send + Sync {
    fn header(&self) -> &Header;

    /// Delivers an ending other than the callback's own (Cancelled, TimedOut).
    fn fail(&self, error: TaskError, way: Way<'_>) -> Delivered;
}

/// Where a task's ending goes.
pub(crate) enum Output<T> {
    /// To the caller's `Task` handle (which keeps the task's tag itself).
    Slot(Slot<T>),
    /// To a channel the caller owns, as an untagged `Done` (the Elixir mailbox).
    Mailbox(Sender<Done<T>>),
    /// To a channel the caller owns, as a `Done` carrying the caller's tag.
    Tagged(Box<dyn Tagged<T>>),
}

/// A mailbox with the tag to send along; the tag type is erased here.
pub(crate) trait Tagged<T>: Send + Sync {
    /// Sends the ending with the tag. Called once.
    fn deliver(&self, header: &Header, result: Result<T, TaskError>, way: Way<'_>) -> Delivered;
}

/// A tagged mailbox: the sender, and the tag, taken out by the one delivery.
pub(crate) struct TaggedMailbox<T, Tag> {
    pub(crate) tx: Sender<Done<T, Tag>>,
    pub(crate) tag: Mutex<Option<Tag>>,
}

impl<T: Send + 'static, Tag: Send + 'static> Tagged<T> for TaggedMailbox<T, Tag> {
    fn deliver(&self, header: &Header, result: Result<T, TaskError>, way: Way<'_>) -> Delivered {
        match self.tag.lock().take() {
            Some(tag) => delivery::send(&self.tx, done(header.ended(), tag, result), way),
            None => {
                drop_quietly(result);
                Delivered::Done
            }
        }
    }
}

impl<T, Tag> Drop for TaggedMailbox<T, Tag> {
    fn drop(&mut self) {
        // A tag never delivered (the add was refused: its caller has the input back) is the
        // caller's value, whose `Drop` may panic.
        drop_quietly(self.tag.get_mut().take());
    }
}

/// The message a task's ending makes.
pub(crate) fn done<T, Tag>(ended: Ended, tag: Tag, result: Result<T, TaskError>) -> Done<T, Tag> {
    Done {
        id: ended.id,
        attempts: ended.attempts,
        tag,
        result,
    }
}

/// One task's shared state: header plus where its ending goes.
pub(crate) struct Cell<T> {
    pub(crate) header: Header,
    pub(crate) output: Output<T>,
}

impl<T: Send + 'static> Cell<T> {
    pub(crate) fn new(header: Header, output: Output<T>) -> Cell<T> {
        Cell { header, output }
    }

    /// Hands the task's one result to its output. Called once, by the engine's ending path.
    pub(crate) fn deliver(&self, result: Result<T, TaskError>, way: Way<'_>) -> Delivered {
        match &self.output {
            Output::Slot(slot) => {
                slot.put(self.header.ended(), result);
                Delivered::Done
            }
            Output::Mailbox(tx) => delivery::send(tx, done(self.header.ended(), (), result), way),
            Output::Tagged(tagged) => tagged.deliver(&self.header, result, way),
        }
    }
}

impl<T: Send + 'static> Control for Cell<T> {
    #[inline]
    fn header(&self) -> &Header {
        &self.header
    }

    fn fail(&self, error: TaskError, way: Way<'_>) -> Delivered {
        self.deliver(Err(error), way)
    }
}
#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::{Cell, Header};
    use std::mem::size_of;

    /// A task's `Arc<Cell>` is allocated once per add and freed by another thread: at 128
    /// bytes or less (16 for the counts), glibc's malloc serves it from its fast bins. One
    /// step past that, an add of an empty task measured 15% slower, with twice the futex calls.
    #[test]
    fn a_small_tasks_cell_stays_in_the_allocators_fast_size_class() {
        assert!(size_of::<Header>() <= 56, "{}", size_of::<Header>());
        assert!(
            16 + size_of::<Cell<u64>>() <= 128,
            "{}",
            size_of::<Cell<u64>>()
        );
    }
}
