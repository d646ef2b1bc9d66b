//! The one-shot slot a [`Task`](crate::Task) reads its result from.
//!
//! # Design
//!
//! A mutex and a condition variable, far cheaper than a channel per task. A blocked thread
//! waits on the condition variable; an awaiting future leaves its waker in the state that
//! waits for the result (`Empty`, or `Forwarding` before the value was sent), so a waker costs
//! a slot no memory for the usual output types and is dropped when the result arrives. `put`
//! takes the waker under the lock and wakes it after releasing the lock; a poll registers under
//! the same lock, so a result never slips between a poll's check and its registration.
//!
//! A slot can be told to *forward* its result instead of keeping it: to the crossbeam channel
//! `Task::receiver()` creates on first call (only callers who `select!` pay for a channel), or
//! to a [`TaskSet`](crate::TaskSet). The forward is a one-shot closure, run under the slot's
//! lock: once it is gone from the state, the value is wherever it forwards to.

use std::mem;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::{Condvar, Mutex};

use crate::delivery::drop_quietly;
use crate::done::TaskError;
use crate::id::TaskId;

/// Sends a forwarded result on, with its task's id and attempts: to a task's receiver, or
/// into a task set.
pub(crate) type ForwardFn<T> = Box<dyn FnOnce(Ended, Result<T, TaskError>) + Send>;

/// Who the result is of: the task's id, and the attempts it took.
#[derive(Clone, Copy)]
pub(crate) struct Ended {
    pub(crate) id: TaskId,
    pub(crate) attempts: u32,
}

pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

enum SlotState<T> {
    /// No result yet; the waker of the last poll, if the task was awaited.
    Empty(Option<Waker>),
    /// The result, waiting to be read.
    Full(Result<T, TaskError>),
    /// The result goes (or went) elsewhere. Boxed: a rare state, kept from making every slot
    /// larger.
    Forwarding(Box<Forward<T>>),
    /// The result was read.
    Taken,
}

struct Forward<T> {
    /// There until the result is sent on, under the slot's lock.
    send: Option<ForwardFn<T>>,
    waker: Option<Waker>,
}

/// What a read of the slot found.
pub(crate) enum Read<T> {
    Value(Result<T, TaskError>),
    /// The deadline passed first.
    Empty,
    /// The result was already read.
    Taken,
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

    /// Delivers the task's result. Called once, by the ending path.
    pub(crate) fn put(&self, ended: Ended, result: Result<T, TaskError>) {
        let mut state = self.state.lock();
        let (waker, refused) = match &mut *state {
            SlotState::Empty(waker) => {
                let waker = waker.take();
                *state = SlotState::Full(result);
                (waker, None)
            }
            SlotState::Forwarding(forward) => {
                let refused = match forward.send.take() {
                    Some(send) => {
                        send(ended, result);
                        None
                    }
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
        // A second delivery, or one refused by an abandoned slot: dropped outside the lock,
        // quietly.
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
                SlotState::Taken => return Read::Taken,
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
            SlotState::Taken => Poll::Ready(Read::Taken),
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
            SlotState::Forwarding(forward) if forward.send.is_some() => {
                register(&mut forward.waker, cx);
                Poll::Pending
            }
            // The value was sent, and someone else took it from `rx`.
            _ => Poll::Ready(Err(TaskError::AlreadyReceived)),
        }
    }

    /// The `Task` that reads this slot is gone. Forgets its registered waker, hands back a
    /// result that already arrived (the handle's owner drops it), and refuses one delivered
    /// later (`put` drops it, quietly, on the delivering worker).
    ///
    /// Invariant: once its `Task` is gone the slot never holds a result, so whoever drops the
    /// cell's last `Arc` drops no result. That may be any thread: the registry lends out a
    /// reference for a moment in `join`, `cancel(id)` and `shutdown_timeout` (see
    /// `engine/registry.rs`), and if the worker lets go of the cell meanwhile, that thread
    /// holds the last `Arc` — it must not run a result's `Drop` (which may panic, or call into
    /// the pool).
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

    /// Sends the result on with `send` from now on, at once if it is already here. `Err(send)`
    /// if it already goes elsewhere, or was read: `send` is handed back unused.
    pub(crate) fn forward(&self, ended: Ended, send: ForwardFn<T>) -> Result<(), ForwardFn<T>> {
        let mut state = self.state.lock();
        let refused = match mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Empty(waker) => {
                let send = Some(send);
                *state = SlotState::Forwarding(Box::new(Forward { send, waker }));
                None
            }
            SlotState::Full(result) => {
                let forward = Forward {
                    send: None,
                    waker: None,
                };
                *state = SlotState::Forwarding(Box::new(forward));
                send(ended, result);
                None
            }
            taken @ (SlotState::Forwarding(..) | SlotState::Taken) => {
                *state = taken;
                Some(send)
            }
        };
        drop(state);
        // A reader waiting on the slot must move to where the value goes.
        self.ready.notify_all();
        match refused {
            None => Ok(()),
            Some(send) => Err(send),
        }
    }

    /// For a slot that forwards to `rx` (its task's own receiver): sends the result on with
    /// `send` instead. If it was already sent to `rx`, it is taken from there; if it was read
    /// from `rx`, `Err(send)`.
    pub(crate) fn reforward(
        &self,
        ended: Ended,
        rx: &Receiver<Result<T, TaskError>>,
        send: ForwardFn<T>,
    ) -> Result<(), ForwardFn<T>> {
        let mut state = self.state.lock();
        match &mut *state {
            SlotState::Forwarding(forward) if forward.send.is_some() => {
                forward.send = Some(send);
                Ok(())
            }
            _ => match rx.try_recv() {
                Ok(result) => {
                    send(ended, result);
                    Ok(())
                }
                Err(_) => Err(send),
            },
        }
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
