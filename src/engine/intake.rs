//! The queue's entrance: the one channel, whether the pool still accepts work, and task ids.
//!
//! # Design
//!
//! The single `Sender` lives in `sender: RwLock<Option<Sender>>`:
//!
//! - an add holds the read lock while it checks `closed` and sends ([`Intake::enter`]);
//! - [`Intake::close`] sets `closed`, then takes the write lock once: every add that saw the
//!   pool open has finished enqueueing when `close` returns — no add can pass the check, miss
//!   the shutdown, and strand its job;
//! - the sender is dropped ([`Intake::disconnect`]) only when the pool is closed *and* no
//!   accepted task is left unsettled; workers then see the channel disconnected and leave.
//!   Until then the pool's own moves (a keyed job its key lets through, a retry coming back)
//!   still reach the queue ([`Intake::send_inside`]), whether closed or not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::RwLock;

use crate::id::TaskId;

pub(super) struct Intake<J> {
    sender: RwLock<Option<Sender<J>>>,
    receiver: Receiver<J>,
    closed: AtomicBool,
    next_task: AtomicU64,
}

impl<J> Intake<J> {
    pub(super) fn new() -> Intake<J> {
        let (tx, rx) = unbounded();
        Intake {
            sender: RwLock::new(Some(tx)),
            receiver: rx,
            closed: AtomicBool::new(false),
            next_task: AtomicU64::new(1),
        }
    }

    /// A fresh id for a task about to be added.
    pub(super) fn next_id(&self) -> TaskId {
        TaskId(self.next_task.fetch_add(1, SeqCst))
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// The flag an add blocked on a full queue watches.
    pub(super) fn closed_flag(&self) -> &AtomicBool {
        &self.closed
    }

    /// Where workers take jobs from.
    pub(super) fn receiver(&self) -> &Receiver<J> {
        &self.receiver
    }

    /// Lets an add's `job` in, if the pool is open: runs `admit` with the job and the queue's
    /// sender while holding the read lock, so that `close` waits for it. `Err(job)` if the
    /// pool is closed.
    pub(super) fn enter<R>(&self, job: J, admit: impl FnOnce(J, &Sender<J>) -> R) -> Result<R, J> {
        let sender = self.sender.read();
        // Checked under the read lock: `close` sets `closed` and then takes the write lock, so
        // an add that gets past this line finishes enqueueing before `close` returns.
        match sender.as_ref() {
            Some(tx) if !self.closed.load(SeqCst) => Ok(admit(job, tx)),
            _ => Err(job),
        }
    }

    /// Queues a job the pool moves itself (open or closed). `Err(job)` only once the queue
    /// is disconnected, which no outstanding task's job can see.
    pub(super) fn send_inside(&self, job: J) -> Result<(), J> {
        // `read_recursive`: an add may hold the read lock while it waits for the key table,
        // and a writer waiting for that add must not block this read.
        match self.sender.read_recursive().as_ref() {
            Some(tx) => tx.send(job).map_err(|refused| refused.into_inner()),
            None => Err(job),
        }
    }

    /// Stops accepting adds. Returns once every add that saw the pool open has enqueued.
    pub(super) fn close(&self) {
        self.closed.store(true, SeqCst);
        drop(self.sender.write());
    }

    /// Drops the queue's sender: workers see the disconnection and leave.
    pub(super) fn disconnect(&self) {
        let sender = self.sender.write().take();
        drop(sender);
    }
}
