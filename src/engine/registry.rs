//! Every task that has not ended, by id: for `cancel(id)` and for ending running tasks at the
//! end of `shutdown_timeout`.
//!
//! # Design
//!
//! The registry is off the workers' path entirely: the adding thread appends a `Weak` to the
//! task's cell, and nobody removes it when the task ends. Entries of ended tasks are swept out
//! when a shard has doubled since its last sweep, or holds more than twice its share of the
//! pool's outstanding tasks (so the entries of a past burst go at a later add), and when
//! `join` finds the pool quiet; the work per add stays constant on average. A `Weak` does not
//! keep the task's result alive, only the cell's allocation until the next sweep.
//!
//! Shards are picked by id, so concurrent adds rarely meet on one lock. Lookups (`cancel(id)`)
//! scan one shard; they are rare next to adds.

use std::sync::{Arc, Weak};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::cell::Control;
use crate::id::TaskId;

const SHARDS: usize = 16;
const MIN_SWEEP: usize = 64;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

struct Shard {
    entries: Vec<(u64, Weak<dyn Control>)>,
    /// Sweep when `entries` reaches this length.
    sweep_at: usize,
}

fn outstanding(entry: &Weak<dyn Control>) -> Option<Arc<dyn Control>> {
    entry
        .upgrade()
        .filter(|control| control.header().state().is_live())
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            shards: (0..SHARDS)
                .map(|_| {
                    CachePadded::new(Mutex::new(Shard {
                        entries: Vec::new(),
                        sweep_at: MIN_SWEEP,
                    }))
                })
                .collect(),
        }
    }

    fn shard(&self, id: TaskId) -> &Mutex<Shard> {
        &self.shards[id.0 as usize % SHARDS]
    }

    /// Files a task. `outstanding` counts the pool's tasks not yet ended; asked once every
    /// `MIN_SWEEP` adds to a shard, it lets a shard still holding the entries of a past burst
    /// sweep them without waiting to double again.
    pub(crate) fn insert(
        &self,
        id: TaskId,
        weak: Weak<dyn Control>,
        outstanding_tasks: impl FnOnce() -> u64,
    ) {
        let mut shard = self.shard(id).lock();
        let len = shard.entries.len();
        let past_burst = || {
            let share = outstanding_tasks() as usize / SHARDS;
            len >= share.saturating_mul(2).max(MIN_SWEEP)
        };
        if len >= shard.sweep_at || (len >= MIN_SWEEP && len % MIN_SWEEP == 0 && past_burst()) {
            // Most ended tasks have no strong reference left: no upgrade needed to see it.
            shard
                .entries
                .retain(|(_, entry)| entry.strong_count() > 0 && outstanding(entry).is_some());
            shard.sweep_at = (shard.entries.len() * 2).max(MIN_SWEEP);
        }
        shard.entries.push((id.0, weak));
    }

    /// Drops the entries of every ended task (the pool went quiet: nothing is worth keeping).
    pub(crate) fn sweep(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard
                .entries
                .retain(|(_, entry)| outstanding(entry).is_some());
            let live = shard.entries.len();
            shard.entries.shrink_to(live.max(MIN_SWEEP));
            shard.sweep_at = (live * 2).max(MIN_SWEEP);
        }
    }

    /// The task with this id, if it has not ended.
    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<dyn Control>> {
        let shard = self.shard(id).lock();
        // Ids are appended nearly in order: the newest tasks are at the back.
        shard
            .entries
            .iter()
            .rev()
            .find(|(entry_id, _)| *entry_id == id.0)
            .and_then(|(_, entry)| outstanding(entry))
    }

    /// Every task not yet ended.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Control>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(
                shard
                    .lock()
                    .entries
                    .iter()
                    .filter_map(|(_, e)| outstanding(e)),
            );
        }
        all
    }
}
