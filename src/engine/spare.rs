//! The spare: the next attempt's job of a task with a retry policy, kept beside the attempt
//! that runs now (see `retry.rs` for how it is used).

use parking_lot::{Mutex, MutexGuard};

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
