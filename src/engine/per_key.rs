//! The key table seen from outside: a key's view, the busiest keys, and pausing a key (by a call
//! on the pool or by a retry decision). The table itself, and how a pause holds a key's jobs,
//! is `keys.rs`'s.

use std::time::{Duration, Instant};

use super::keys::KeyView;
use super::{Engine, Job};
use crate::cell::Header;
use crate::error::{PauseError, MAX_PAUSE};

impl<J: Job> Engine<J> {
    /// What the key table knows of the key with this hash (`None`: no tasks, not paused, or a
    /// pool without per-key limits).
    pub(crate) fn key_view(&self, key: u64) -> Option<KeyView> {
        let keys = self.keys.as_ref()?;
        let table = keys.lock();
        table.view(key, Instant::now())
    }

    /// The `n` keys with the most tasks, most first (empty without per-key limits).
    pub(crate) fn busiest_keys(&self, n: usize) -> Vec<KeyView> {
        match &self.keys {
            Some(keys) => keys.lock().busiest(n, Instant::now()),
            None => Vec::new(),
        }
    }

    /// How many keys are paused now.
    pub(crate) fn paused_keys(&self) -> usize {
        self.keys
            .as_ref()
            .map_or(0, |keys| keys.lock().paused_keys(Instant::now()))
    }

    /// Holds every task of the key with this hash for `pause`; see `Pool::pause_key` for the
    /// rules this checks.
    pub(crate) fn pause_key(&self, key: u64, pause: Duration) -> Result<Instant, PauseError> {
        let Some(keys) = &self.keys else {
            return Err(PauseError::NoKeys);
        };
        if self.intake.is_closed() {
            return Err(PauseError::ShutDown);
        }
        if pause > MAX_PAUSE {
            return Err(PauseError::TooLong { asked: pause });
        }
        let now = Instant::now();
        if pause.is_zero() {
            // Changes nothing, and leaves nothing behind in the table.
            let view = keys.lock().view(key, now);
            return Ok(view.and_then(|view| view.paused_until).unwrap_or(now));
        }
        let until = now + pause;
        let mut table = keys.lock();
        let (until, step) = table.pause(key, until, now);
        self.apply(key, step, table, None);
        Ok(until)
    }

    /// A retry decision asked to pause its task's key (`Attempt::pause_key`): a wait past
    /// `MAX_PAUSE` pauses the key for `MAX_PAUSE`, and a task without a key pauses nothing.
    pub(super) fn pause_asked(&self, header: &Header, pause: Option<Duration>) {
        if let (Some(key), Some(pause), Some(keys)) = (header.key, pause, &self.keys) {
            let now = Instant::now();
            let until = now + pause.min(MAX_PAUSE);
            let mut table = keys.lock();
            let (_, step) = table.pause(key, until, now);
            self.apply(key, step, table, None);
        }
    }
}
