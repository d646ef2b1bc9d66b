//! Sending a result to a caller's mailbox without ever blocking the wrong thread.
//!
//! # Design
//!
//! A worker may wait for room in a bounded mailbox (that is the backpressure the caller asked
//! for), but never for ever: it also watches the pool's *give-up* signal, raised when
//! `shutdown_timeout` runs out, and then drops the result instead.
//!
//! Every other thread that ends a task (a canceller, the timer, a shutdown) must not wait at
//! all: it may be the mailbox's only reader. When such a send finds the mailbox full it becomes
//! a [`Pending`] send, handed to the pool's one courier thread (see `engine/courier.rs`), which
//! waits on all of them at once with a `Select`. No thread per blocked delivery.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Select, SelectedOperation, Sender, TrySendError};
use parking_lot::Mutex;

/// Who is delivering, and so whether it may wait for room.
#[derive(Clone, Copy)]
pub(crate) enum Way<'a> {
    /// A worker delivering its own task's result: waits for room until `give_up` is ready.
    Wait { give_up: &'a Receiver<()> },
    /// Anyone else: never waits; a full mailbox gets a [`Pending`] send instead.
    NoWait,
}

/// What became of a delivery.
pub(crate) enum Delivered {
    /// Delivered, or dropped because nobody can receive it any more.
    Done,
    /// The mailbox is full and this thread may not wait: the courier finishes it.
    Later(Box<dyn Pending>),
}

/// Sends `message` on `tx` the way `way` allows.
pub(crate) fn send<M: Send + 'static>(tx: &Sender<M>, message: M, way: Way<'_>) -> Delivered {
    let message = match tx.try_send(message) {
        Ok(()) => return Delivered::Done,
        Err(TrySendError::Disconnected(message)) => {
            drop_quietly(message);
            return Delivered::Done;
        }
        Err(TrySendError::Full(message)) => message,
    };
    match way {
        Way::Wait { give_up } => {
            let mut select = Select::new();
            let send = select.send(tx);
            select.recv(give_up);
            let oper = select.select();
            if oper.index() == send {
                // A receiver that left meanwhile hands the message back.
                if let Err(refused) = oper.send(tx, message) {
                    drop_quietly(refused);
                }
            } else {
                let _ = oper.recv(give_up);
                drop_quietly(message);
            }
            Delivered::Done
        }
        Way::NoWait => Delivered::Later(Box::new(PendingSend {
            tx: tx.clone(),
            message: Mutex::new(Some(message)),
        })),
    }
}

/// A send waiting for room in a full mailbox, type-erased for the courier.
pub(crate) trait Pending: Send {
    /// Adds this send to `select`; returns its operation index.
    fn register<'a>(&'a self, select: &mut Select<'a>) -> usize;
    /// Completes the send that `select` chose (dropping the message if the receiver is gone).
    fn complete(&self, oper: SelectedOperation<'_>);
    /// True if `other` goes to the same mailbox (sends to one mailbox keep their order).
    fn same_mailbox(&self, other: &dyn Pending) -> bool;
    fn as_any(&self) -> &dyn Any;
}

struct PendingSend<M> {
    tx: Sender<M>,
    /// Taken once, by `complete` (behind a lock only because `complete` takes `&self` while the
    /// `Select` borrows the sender).
    message: Mutex<Option<M>>,
}

impl<M: Send + 'static> Pending for PendingSend<M> {
    fn register<'a>(&'a self, select: &mut Select<'a>) -> usize {
        select.send(&self.tx)
    }

    fn complete(&self, oper: SelectedOperation<'_>) {
        if let Some(message) = self.message.lock().take() {
            if let Err(refused) = oper.send(&self.tx, message) {
                drop_quietly(refused);
            }
        }
    }

    fn same_mailbox(&self, other: &dyn Pending) -> bool {
        other
            .as_any()
            .downcast_ref::<PendingSend<M>>()
            .is_some_and(|other| other.tx.same_channel(&self.tx))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<M> Drop for PendingSend<M> {
    fn drop(&mut self) {
        // A message never sent (the pool gave up) may have a `Drop` that panics.
        drop_quietly(self.message.get_mut().take());
    }
}

/// Drops a value whose `Drop` may panic (a user's input or output) without unwinding further.
pub(crate) fn drop_quietly<V>(value: V) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
}
