//! The per-task cell: the task's state machine and where its result goes. It knows nothing of
//! the engine: whoever wins a state change asks the engine to end the task (`engine/ending.rs`),
//! and the engine calls back here to deliver.
//!
//! # Design
//!
//! Every accepted task owns one `Cell<T>`, shared (`Arc`) by the job in the queue, the caller's
//! [`Task`](crate::Task), the cancel registry and, while it runs with a deadline, the timer. The
//! state is one atomic byte; every ending is a compare-and-swap out of a non-final state, so
//! exactly one party (worker, canceller, timer) wins the right to end the task:
//!
//! ```text
//! WAITING ──(key has room)──► QUEUED ──(worker takes it)──► RUNNING ──► DONE
//!    ▲ │                        │ ▲                            ├──────► TIMED_OUT
//!    │ └────────► CANCELLED ◄───┘ │                            │
//!    │                ▲           │                            │ (attempt failed, retry)
//!    └── (retry due) ─┴─ BACKOFF ─┴────────────◄───────────────┘
//! ```
//!
//! BACKOFF is the one way back: a task with a retry policy whose attempt failed waits on the
//! pool's timer, holding no worker, then re-enters through its key (WAITING) or the queue.
//!
//! A result that loses the race (a late result of a timed-out task) is dropped, inside
//! `catch_unwind`, since its `Drop` may panic. What becomes of a timed-out task's *thread* is
//! the engine's business (`engine/workers.rs`), not the cell's.
//!
//! The result goes either to a one-shot slot read by [`Task`](crate::Task) — a mutex and a
//! condition variable, far cheaper than a channel per task — or to the caller's mailbox channel,
//! tagged with the task's id (see `delivery.rs`). A crossbeam channel is created for a slot only
//! when `Task::receiver()` asks for one (see [`Slot::forward`]). An awaited `Task` leaves its
//! waker in the slot, and the delivery wakes it (see [`Slot`]).

use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};

pub(crate) use crate::delivery::drop_quietly;
use crate::delivery::{self, Delivered, Way};
use crate::error::TaskError;
use crate::id::TaskId;

/// Held back by its key (per-key concurrency or politeness); not in the queue yet.
pub(crate) const WAITING: u8 = 0;
/// In the shared queue, waiting for a worker.
pub(crate) const QUEUED: u8 = 1;
/// A worker is running it.
pub(crate) const RUNNING: u8 = 2;
/// Ended with the callback's return value or its panic.
pub(crate) const DONE: u8 = 3;
/// Ended before it started.
pub(crate) const CANCELLED: u8 = 4;
/// Ended at its deadline while its callback still ran.
pub(crate) const TIMED_OUT: u8 = 5;
/// Never accepted: the add was refused and the input handed back.
pub(crate) const REJECTED: u8 = 6;
/// An attempt failed and the task waits on the pool's timer to run again (see `retry.rs`).
pub(crate) const BACKOFF: u8 = 7;

/// What every task has, whatever its output type.
pub(crate) struct Header {
    pub(crate) id: TaskId,
    /// Hash of the task's key, for per-key limits.
    pub(crate) key: Option<u64>,
    /// The task's own deadline, counted from its start; the pool's `task_timeout` otherwise.
    pub(crate) timeout: Option<Duration>,
    state: AtomicU8,
    /// Attempts started so far (1 once it first runs; more only with a retry policy).
    attempts: AtomicU32,
    /// Set when whoever waits for the task is gone (a dropped stream): with a retry policy, it
    /// makes no further attempt.
    last_attempt: AtomicBool,
    /// Index of the worker thread running the task (meaningful while RUNNING).
    worker: AtomicUsize,
}

impl Header {
    pub(crate) fn new(id: TaskId, key: Option<u64>, timeout: Option<Duration>) -> Header {
        // A keyed task starts held back; the key table lets it into the queue.
        let state = if key.is_some() { WAITING } else { QUEUED };
        Header {
            id,
            key,
            timeout,
            state: AtomicU8::new(state),
            attempts: AtomicU32::new(0),
            last_attempt: AtomicBool::new(false),
            worker: AtomicUsize::new(usize::MAX),
        }
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves from `from` to `to`; false if the state was not `from`.
    pub(crate) fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A worker takes the task: QUEUED → RUNNING. False if it was cancelled meanwhile.
    pub(crate) fn start(&self, worker: usize) -> bool {
        self.worker.store(worker, Ordering::Relaxed);
        let started = self.transition(QUEUED, RUNNING);
        if started {
            // Only the worker that won QUEUED → RUNNING writes, and one attempt starts at a time
            // (the next is queued only after this one ended): no read-modify-write needed.
            let attempts = self.attempts.load(Ordering::Relaxed);
            self.attempts.store(attempts + 1, Ordering::Relaxed);
        }
        started
    }

    /// Attempts started so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Cancels a task that is not running: waiting on its key, queued, or waiting to retry.
    /// Returns the state it was cancelled from, or `None` if it runs or has ended.
    pub(crate) fn cancel(&self) -> Option<u8> {
        // From the state it is in now, again if it moved meanwhile (its key letting it into the
        // queue, its back-off ending): trying fixed states in turn could miss a task passing
        // from one to the next.
        loop {
            let from = self.state();
            if !matches!(from, QUEUED | WAITING | BACKOFF) {
                return None;
            }
            if self.transition(from, CANCELLED) {
                return Some(from);
            }
        }
    }

    /// Nobody waits for the task any more: with a retry policy, it makes no further attempt.
    pub(crate) fn stop_retrying(&self) {
        self.last_attempt.store(true, Ordering::SeqCst);
    }

    /// True once `stop_retrying` was called: no further attempt.
    pub(crate) fn is_last_attempt(&self) -> bool {
        self.last_attempt.load(Ordering::SeqCst)
    }

    /// The worker running the task, for abandoning its thread when it times out.
    pub(crate) fn worker(&self) -> usize {
        self.worker.load(Ordering::Relaxed)
    }

    /// True once the task was told to stop: it timed out (and may wait to retry). (A cancelled
    /// task never runs, so its token is never read.)
    pub(crate) fn stop_requested(&self) -> bool {
        matches!(self.state(), CANCELLED | TIMED_OUT | BACKOFF)
    }
}

/// The type-erased face of a cell: what the engine, the registry and the timer need.
pub(crate) trait Control: Send + Sync {
    fn header(&self) -> &Header;

    /// Delivers an ending other than the callback's own (Cancelled, TimedOut).
    fn fail(&self, error: TaskError, way: Way<'_>) -> Delivered;
}

/// Where a task's result goes.
pub(crate) enum Output<T> {
    /// To the caller's `Task` handle.
    Slot(Slot<T>),
    /// To a channel the caller owns, tagged with the task's id (the Elixir mailbox).
    Mailbox(Sender<(TaskId, Result<T, TaskError>)>),
    /// To a task that keeps its input (a retry policy): the relay knows the input's type and
    /// hands it back with a failure (see `retry.rs`). Here, where the input is not at hand
    /// (cancelled by id), it goes without it.
    Relay(Arc<dyn Relay<T>>),
}

/// Where a kept task's ending goes when its input is not at hand.
pub(crate) trait Relay<T>: Send + Sync {
    fn deliver(
        &self,
        id: TaskId,
        attempts: u32,
        result: Result<T, TaskError>,
        way: Way<'_>,
    ) -> Delivered;
}

/// One task's shared state: header plus where its result goes.
pub(crate) struct Cell<T> {
    pub(crate) header: Header,
    pub(crate) output: Output<T>,
}

impl<T: Send + 'static> Cell<T> {
    pub(crate) fn new(header: Header, output: Output<T>) -> Cell<T> {
        Cell { header, output }
    }

    /// Marks a task whose add was refused: it never existed for the caller, so nothing is
    /// delivered.
    pub(crate) fn reject(&self) {
        self.header.state.store(REJECTED, Ordering::Release);
    }

    /// Hands the task's one result to its output. Called once, by the engine's ending path.
    pub(crate) fn deliver(&self, result: Result<T, TaskError>, way: Way<'_>) -> Delivered {
        match &self.output {
            Output::Slot(slot) => {
                slot.put(result);
                Delivered::Done
            }
            Output::Mailbox(tx) => delivery::send(tx, (self.header.id, result), way),
            Output::Relay(relay) => {
                relay.deliver(self.header.id, self.header.attempts(), result, way)
            }
        }
    }
}

impl<T: Send + 'static> Control for Cell<T> {
    fn header(&self) -> &Header {
        &self.header
    }

    fn fail(&self, error: TaskError, way: Way<'_>) -> Delivered {
        self.deliver(Err(error), way)
    }
}

/// A one-shot result slot, read by [`Task`](crate::Task): by a blocked thread (the condition
/// variable) or by an async task (the waker).
///
/// The waker lives inside the state that waits for the result (`Empty`, or `Forwarding` before
/// the value was sent), so it costs a slot no memory for the usual output types (a slot for a
/// `u64` is 40 bytes, as it was without it) and is dropped when the result arrives. `put` takes it under the lock and wakes it after releasing the lock;
/// a poll registers under the same lock, so a result never slips between a poll's check and its
/// registration. Only the last poll's waker is kept: a future moved to another executor task
/// replaces it.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

enum SlotState<T> {
    /// No result yet; the waker of the last poll, if the task was awaited.
    Empty(Option<Waker>),
    /// The result, waiting to be read.
    Full(Result<T, TaskError>),
    /// `Task::receiver()` was called: the result goes (or went) through that channel. Boxed:
    /// a rare state, kept from making every slot larger.
    Forwarding(Box<Forward<T>>),
    /// The result was read.
    Taken,
}

/// Where a slot forwards its result, and who awaits it there.
struct Forward<T> {
    /// There until the result is sent, which happens under the slot's lock: once it is gone,
    /// the value is in the channel or was taken from it.
    tx: Option<Sender<Result<T, TaskError>>>,
    waker: Option<Waker>,
}

/// What a read of the slot found.
pub(crate) enum Read<T> {
    Value(Result<T, TaskError>),
    /// The deadline passed first.
    Empty,
    /// The result goes through the task's receiver: read it there.
    Forwarded,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Slot<T> {
        Slot {
            state: Mutex::new(SlotState::Empty(None)),
            ready: Condvar::new(),
        }
    }

    fn put(&self, result: Result<T, TaskError>) {
        let mut state = self.state.lock();
        let (waker, refused) = match &mut *state {
            SlotState::Empty(waker) => {
                let waker = waker.take();
                *state = SlotState::Full(result);
                (waker, None)
            }
            SlotState::Forwarding(forward) => {
                // Sent under the lock (capacity 1 and one value: never blocks), so that a poll
                // that finds the sender gone finds the value in the channel.
                let refused = match forward.tx.take() {
                    Some(tx) => tx.send(result).err().map(|refused| refused.into_inner()),
                    None => Some(result),
                };
                (forward.waker.take(), refused)
            }
            // A cell delivers once (the state machine guarantees it); keep the first.
            SlotState::Full(_) | SlotState::Taken => (None, Some(result)),
        };
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
        // A dropped receiver, or a second delivery: dropped outside the lock, quietly.
        if let Some(refused) = refused {
            drop_quietly(refused);
        }
    }

    /// Waits until the result is there or `deadline` passes (`None`: for ever), and takes it.
    pub(crate) fn take(&self, deadline: Option<Instant>) -> Read<T> {
        let mut state = self.state.lock();
        loop {
            match &*state {
                SlotState::Full(_) => return Read::Value(Self::take_full(&mut state)),
                SlotState::Taken => return Read::Value(Err(TaskError::AlreadyReceived)),
                SlotState::Forwarding(..) => return Read::Forwarded,
                SlotState::Empty(_) => match deadline {
                    None => self.ready.wait(&mut state),
                    Some(deadline) => {
                        if Instant::now() >= deadline {
                            return Read::Empty;
                        }
                        self.ready.wait_until(&mut state, deadline);
                    }
                },
            }
        }
    }

    /// Takes the result if it is there; otherwise registers `cx`'s waker, to be woken when it
    /// arrives.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Read<T>> {
        let mut state = self.state.lock();
        match &mut *state {
            SlotState::Full(_) => Poll::Ready(Read::Value(Self::take_full(&mut state))),
            SlotState::Taken => Poll::Ready(Read::Value(Err(TaskError::AlreadyReceived))),
            SlotState::Forwarding(..) => Poll::Ready(Read::Forwarded),
            SlotState::Empty(waker) => {
                register(waker, cx);
                Poll::Pending
            }
        }
    }

    /// Takes the result from `rx`, the receiver the slot forwards to, if it is there;
    /// otherwise registers `cx`'s waker. `Err(AlreadyReceived)` if it was taken from `rx`.
    pub(crate) fn poll_forwarded(
        &self,
        rx: &Receiver<Result<T, TaskError>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, TaskError>> {
        // Under the lock, `put` cannot send between the look at the channel and the
        // registration.
        let mut state = self.state.lock();
        match rx.try_recv() {
            Ok(result) => return Poll::Ready(result),
            Err(TryRecvError::Disconnected) => return Poll::Ready(Err(TaskError::AlreadyReceived)),
            Err(TryRecvError::Empty) => {}
        }
        match &mut *state {
            SlotState::Forwarding(forward) if forward.tx.is_some() => {
                register(&mut forward.waker, cx);
                Poll::Pending
            }
            // The sender is gone, so the value was sent, and someone else took it from `rx`.
            _ => Poll::Ready(Err(TaskError::AlreadyReceived)),
        }
    }

    /// The `Task` that reads this slot is gone. Forgets its registered waker, hands back a
    /// result that already arrived (the handle's owner drops it), and refuses one delivered
    /// later (`put` drops it, quietly, on the delivering worker).
    ///
    /// Invariant: once its `Task` is gone the slot never holds a result, so whoever drops the
    /// cell's last `Arc` drops no result. That may be any thread: the registry upgrades its
    /// `Weak` for a moment in `join`, an add, `cancel(id)` (see `engine/registry.rs`), and if
    /// the worker lets go of the cell meanwhile, that thread holds the last `Arc` — it must not
    /// run a result's `Drop` (which may panic, or call into the pool) under the registry's lock.
    pub(crate) fn abandon(&self) -> Option<Result<T, TaskError>> {
        let mut state = self.state.lock();
        let (waker, result) = match &mut *state {
            SlotState::Empty(waker) => {
                let waker = waker.take();
                *state = SlotState::Taken;
                (waker, None)
            }
            SlotState::Full(_) => (None, Some(Self::take_full(&mut state))),
            SlotState::Forwarding(forward) => (forward.waker.take(), None),
            SlotState::Taken => (None, None),
        };
        drop(state);
        drop(waker);
        result
    }

    fn take_full(state: &mut SlotState<T>) -> Result<T, TaskError> {
        match mem::replace(state, SlotState::Taken) {
            SlotState::Full(result) => result,
            _ => unreachable!("called on a full slot"),
        }
    }

    /// Routes the result to `tx` from now on, sending it at once if it is already here. Called
    /// once, by `Task::receiver()`. If the result was already read, `tx` is dropped, so the
    /// receiver reports disconnection. A registered waker stays registered.
    pub(crate) fn forward(&self, tx: Sender<Result<T, TaskError>>) {
        let mut state = self.state.lock();
        match mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Empty(waker) => {
                let tx = Some(tx);
                *state = SlotState::Forwarding(Box::new(Forward { tx, waker }));
            }
            SlotState::Full(result) => {
                let forward = Forward {
                    tx: None,
                    waker: None,
                };
                *state = SlotState::Forwarding(Box::new(forward));
                let _ = tx.send(result);
                // Dropped under the lock: once the sender is gone from the state, an empty
                // channel is a disconnected one.
                drop(tx);
            }
            SlotState::Forwarding(..) | SlotState::Taken => drop(tx),
        }
        drop(state);
        // A reader waiting on the slot must move to the channel.
        self.ready.notify_all();
    }
}

/// Keeps `cx`'s waker in `slot`, replacing a waker of another task (a future moved between
/// executor tasks); the same task's waker is kept as it is, without a clone.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}
