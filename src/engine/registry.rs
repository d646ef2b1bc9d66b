//! Every task that has not ended, by id: for `cancel(id)` and for ending running tasks at the
//! end of `shutdown_timeout`.
//!
//! Sharded by id so that the adding threads and the workers rarely meet on one lock: an entry
//! is inserted by the adding thread and removed by whoever ends the task.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::cell::Control;
use crate::task::TaskId;

const SHARDS: usize = 32;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Mutex<HashMap<u64, Arc<dyn Control>>>>]>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
        }
    }

    fn shard(&self, id: TaskId) -> &Mutex<HashMap<u64, Arc<dyn Control>>> {
        &self.shards[id.0 as usize % SHARDS]
    }

    pub(crate) fn insert(&self, control: Arc<dyn Control>) {
        let id = control.header().id;
        self.shard(id).lock().insert(id.0, control);
    }

    pub(crate) fn remove(&self, id: TaskId) {
        // The entry may hold the last reference to the cell (and its result): drop it unlocked.
        let removed = self.shard(id).lock().remove(&id.0);
        crate::cell::drop_quietly(removed);
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<dyn Control>> {
        self.shard(id).lock().get(&id.0).cloned()
    }

    /// Every task not yet ended.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Control>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().values().cloned());
        }
        all
    }
}
