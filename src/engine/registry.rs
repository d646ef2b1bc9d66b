//! Every task that has not ended, by id: for `cancel(id)` and for ending running tasks at the
//! end of `shutdown_timeout`.
//!
//! # Design
//!
//! A slab per shard: the adding thread files the task's cell at a free slot and writes the
//! slot's index into the task's header; the one ending path ([`Engine::end`](super::ending))
//! takes it out again by that index, so an entry lives exactly as long as its task and nothing
//! ever sweeps. Both are O(1) under the shard's lock, and they touch only the cell the thread
//! is already holding: the cell is freed by whoever lets go of it last, at once, and its memory
//! goes back to the allocator while it is still warm. (An earlier registry kept a `Weak` per
//! task and swept the entries of ended tasks in bulk: each sweep read every cell's counts long
//! after the cell had gone cold, a cache miss per task, and kept every ended task's allocation
//! alive until then.)
//!
//! An entry holds the cell strongly: it is the task's while the task is live (the queued job
//! holds it too), and the ending removes it before the result is delivered, so the registry
//! never holds a cell — or a mailbox's sender inside it — past its task's ending.
//!
//! Shards are picked by id, so concurrent adds and endings rarely meet on one lock. Lookups
//! (`cancel(id)`) scan one shard's ids; they are rare next to adds.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::cell::{Control, Header};
use crate::id::TaskId;

const SHARDS: usize = 16;
/// Capacity a shard keeps once the pool is quiet again.
const KEEP: usize = 64;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

#[derive(Default)]
struct Shard {
    /// `(id, cell)` of each live task at the slot its header records; `None`: a free slot.
    slots: Vec<(u64, Option<Arc<dyn Control>>)>,
    /// Indices of the free slots.
    free: Vec<u32>,
}

fn live(control: &Arc<dyn Control>) -> bool {
    control.header().state().is_live()
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
        }
    }

    fn shard(&self, id: TaskId) -> &Mutex<Shard> {
        &self.shards[id.0 as usize % SHARDS]
    }

    /// Files a task that was just accepted (before any other thread can see it).
    pub(crate) fn insert(&self, control: Arc<dyn Control>) {
        let id = control.header().id;
        let mut shard = self.shard(id).lock();
        let index = match shard.free.last() {
            Some(&index) => index,
            None => u32::try_from(shard.slots.len()).expect("fewer than 2^32 live tasks"),
        };
        // Read back only by the ending, under this shard's lock.
        control.header().registry_slot.store(index, Relaxed);
        let entry = (id.0, Some(control));
        if shard.free.pop().is_some() {
            shard.slots[index as usize] = entry;
        } else {
            shard.slots.push(entry);
        }
    }

    /// Takes an ending task out (the ending path calls this once per task).
    pub(crate) fn remove(&self, header: &Header) {
        let mut shard = self.shard(header.id).lock();
        let index = header.registry_slot.load(Relaxed);
        let taken = match shard.slots.get_mut(index as usize) {
            Some((id, entry)) if *id == header.id.0 && entry.is_some() => entry.take(),
            _ => None,
        };
        debug_assert!(taken.is_some(), "a task ends once, after it was filed");
        if taken.is_some() {
            shard.free.push(index);
        }
        drop(shard);
        // Not the last reference: the thread ending the task holds one.
        drop(taken);
    }

    /// Gives back the memory of a past burst (the pool went quiet).
    pub(crate) fn trim(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.free.len() == shard.slots.len() && shard.slots.capacity() > KEEP {
                shard.slots = Vec::new();
                shard.free = Vec::new();
            }
        }
    }

    /// The task with this id, if it has not ended.
    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<dyn Control>> {
        let shard = self.shard(id).lock();
        shard
            .slots
            .iter()
            .find(|(entry_id, entry)| *entry_id == id.0 && entry.is_some())
            .and_then(|(_, entry)| entry.clone())
            .filter(live)
    }

    /// Every task not yet ended.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Control>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(
                shard
                    .lock()
                    .slots
                    .iter()
                    .filter_map(|(_, entry)| entry.clone())
                    .filter(live),
            );
        }
        all
    }
}
