//! [`InFlight`]: the tasks one consumer has in a pool, each with a tag of its own, whose
//! endings come to one private mailbox.
//!
//! Every way of feeding a pool from a source — the `map_*` streams over an iterator, the
//! Redis [`StreamWorker`](crate::redis::StreamWorker) over a consumer group — keeps this
//! same record: it adds a task to its mailbox and notes what the task stands for (an input's
//! index, a stream entry's id), takes endings back with what they stand for, and forgets tasks
//! it no longer wants. The feeders differ only in where inputs come from and how many they
//! keep outstanding; that part stays with them.
//!
//! Invariant: `tags` holds exactly the tasks added here and neither taken back nor forgotten.
//! An ending whose task is not in `tags` was forgotten, and is dropped where it is found.

use std::collections::HashMap;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::cell::drop_quietly;
use crate::done::Done;
use crate::id::TaskId;

/// An ending a feeder's mailbox receives, with its task's id.
pub(crate) trait Tagged {
    fn id(&self) -> TaskId;
}

impl<O, Tag> Tagged for Done<O, Tag> {
    fn id(&self) -> TaskId {
        self.id
    }
}

/// Tells a pool that a feeder forgot a task: cancel it if it has not started, and if it runs,
/// let it make no further attempt.
pub(crate) type ForgetFn = dyn Fn(TaskId) + Send;

/// The tasks a feeder has in a pool. See the module documentation.
pub(crate) struct InFlight<Tag, M> {
    tx: Sender<M>,
    rx: Receiver<M>,
    tags: HashMap<TaskId, Tag>,
    forget: Box<ForgetFn>,
}

impl<Tag, M: Tagged> InFlight<Tag, M> {
    /// Nothing in flight yet; `forget` tells the pool about a forgotten task.
    pub(crate) fn new(forget: Box<ForgetFn>) -> Self {
        let (tx, rx) = unbounded();
        InFlight {
            tx,
            rx,
            tags: HashMap::new(),
            forget,
        }
    }

    /// Adds a task with `submit` (given the mailbox its ending must go to) and records it under
    /// `tag`. If the submission fails, nothing is recorded and `tag` comes back.
    pub(crate) fn add<R>(
        &mut self,
        tag: Tag,
        submit: impl FnOnce(&Sender<M>) -> Result<TaskId, R>,
    ) -> Result<TaskId, Tag> {
        match submit(&self.tx) {
            Ok(id) => {
                self.tags.insert(id, tag);
                Ok(id)
            }
            Err(_) => Err(tag),
        }
    }

    /// How many tasks are in flight.
    pub(crate) fn len(&self) -> usize {
        self.tags.len()
    }

    /// True when no task is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The mailbox's receiving side, for a `select!`; what it yields goes to
    /// [`accept`](InFlight::accept).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the Redis worker
    pub(crate) fn receiver(&self) -> &Receiver<M> {
        &self.rx
    }

    /// Takes an ending received from [`receiver`](InFlight::receiver) back with its task's
    /// tag; `None` (and the ending dropped) if that task was forgotten.
    pub(crate) fn accept(&mut self, message: M) -> Option<(Tag, M)> {
        match self.tags.remove(&message.id()) {
            Some(tag) => Some((tag, message)),
            None => {
                drop_quietly(message);
                None
            }
        }
    }

    /// The next ending already in the mailbox, without waiting.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the Redis worker
    pub(crate) fn try_take(&mut self) -> Option<(Tag, M)> {
        while let Ok(message) = self.rx.try_recv() {
            if let Some(taken) = self.accept(message) {
                return Some(taken);
            }
        }
        None
    }

    /// Waits for the next ending; `None` at once when nothing is in flight.
    pub(crate) fn take(&mut self) -> Option<(Tag, M)> {
        while !self.tags.is_empty() {
            // This side holds a sender, so `recv` only returns with a message.
            let message = self.rx.recv().ok()?;
            if let Some(taken) = self.accept(message) {
                return Some(taken);
            }
        }
        None
    }

    /// Stops waiting for a task: the pool cancels it if it has not started, and lets it make no
    /// further attempt if it runs; its ending, if one comes, is dropped. Returns its tag.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the Redis worker
    pub(crate) fn forget(&mut self, id: TaskId) -> Option<Tag> {
        let tag = self.tags.remove(&id)?;
        (self.forget)(id);
        Some(tag)
    }
}

impl<Tag, M> Drop for InFlight<Tag, M> {
    fn drop(&mut self) {
        for id in self.tags.keys() {
            (self.forget)(*id);
        }
        // Endings nobody will read: dropped here, where a `Drop` that panics must not escape
        // (dropping the receiver discards what the channel still holds).
        let rx = std::mem::replace(&mut self.rx, crossbeam_channel::never());
        for message in rx.try_iter() {
            drop_quietly(message);
        }
        drop_quietly(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::done::TaskError;

    type Message = Done<&'static str>;

    fn ended(id: u64) -> Message {
        Done {
            id: TaskId(id),
            attempts: 1,
            tag: (),
            result: Ok::<_, TaskError>("done"),
        }
    }

    fn recorder() -> (Arc<Mutex<Vec<TaskId>>>, InFlight<usize, Message>) {
        let forgotten = Arc::new(Mutex::new(Vec::new()));
        let f = forgotten.clone();
        let in_flight = InFlight::new(Box::new(move |id| f.lock().unwrap().push(id)));
        (forgotten, in_flight)
    }

    #[test]
    fn endings_come_back_with_their_tags_and_forgotten_ones_are_dropped() {
        let (forgotten, mut in_flight) = recorder();
        let mut mailboxes = Vec::new();
        for (tag, id) in [(10, 1), (20, 2), (30, 3)] {
            let added = in_flight.add(tag, |tx| {
                mailboxes.push(tx.clone());
                Ok::<_, ()>(TaskId(id))
            });
            assert_eq!(added, Ok(TaskId(id)));
        }
        assert_eq!(in_flight.len(), 3);
        assert_eq!(in_flight.forget(TaskId(2)), Some(20));
        assert_eq!(in_flight.forget(TaskId(2)), None);
        assert_eq!(*forgotten.lock().unwrap(), [TaskId(2)]);
        for id in [2, 3, 1] {
            mailboxes[0].send(ended(id)).unwrap();
        }
        assert_eq!(in_flight.try_take(), Some((30, ended(3))));
        assert_eq!(in_flight.take(), Some((10, ended(1))));
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.take(), None);
        assert_eq!(in_flight.try_take(), None);
    }

    #[test]
    fn a_refused_add_records_nothing_and_a_drop_forgets_what_is_left() {
        let (forgotten, mut in_flight) = recorder();
        assert_eq!(in_flight.add(1, |_| Err("shut down")), Err(1));
        assert!(in_flight.is_empty());
        in_flight.add(2, |_| Ok::<_, ()>(TaskId(7))).unwrap();
        drop(in_flight);
        assert_eq!(*forgotten.lock().unwrap(), [TaskId(7)]);
    }
}
