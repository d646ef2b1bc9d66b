//! The spare: the next attempt's job of a task with a retry policy, kept beside the attempt
//! that runs now (see `retry.rs` for how it is used).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::id::TaskId;

/// The next attempt's job, beside the attempt that runs now. Empty once taken by whoever
/// ended the attempt.
pub(crate) struct Spare<J>(Mutex<Option<J>>);

impl<J> Spare<J> {
    pub(super) fn new(job: J) -> Spare<J> {
        Spare(Mutex::new(Some(job)))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Option<J>> {
        self.0.lock()
    }
}

/// The spares of the running attempts of tasks with a retry policy, by task: where
/// `shutdown_timeout` finds a running attempt's spare, to end it the way the timer would.
pub(crate) struct Spares<J>(Mutex<HashMap<TaskId, Arc<Spare<J>>>>);

impl<J> Spares<J> {
    pub(super) fn new() -> Spares<J> {
        Spares(Mutex::new(HashMap::new()))
    }

    pub(super) fn insert(&self, id: TaskId, spare: Arc<Spare<J>>) {
        self.0.lock().insert(id, spare);
    }

    pub(super) fn remove(&self, id: TaskId) {
        let removed = self.0.lock().remove(&id);
        drop(removed);
    }

    pub(super) fn get(&self, id: TaskId) -> Option<Arc<Spare<J>>> {
        self.0.lock().get(&id).cloned()
    }
}
