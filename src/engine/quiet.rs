//! Waiting for the pool to be quiet (`join`, shutdown): the waiters, the tasks that join from
//! inside the pool, and the one wait loop.
//!
//! # Design
//!
//! A waiter checks its condition under `lock` right before every wait, and everything that can
//! change it (a task settling, a job queued for a helper) nudges under that lock: no wake-up
//! falls between a check and a wait.
//!
//! **Generations.** A nudge that finds the pool quiet counts it (`quiet_moments`). A waiter that
//! is not one of the pool's tasks returns once that count moved since it began waiting: the pool
//! was quiet at that moment, even if another joiner, woken first, has already added work. So
//! many threads joining at once each return at a quiet moment (threadpool's "wavesurfer").
//! A waiter reads the count *before* it announces itself and before it takes the lock: a quiet
//! moment counted while it queues for the lock (behind the other joiners) is one it must see,
//! or it would wait for work that a joiner woken at that moment has added since.
//!
//! **Joiners inside the pool.** A task blocked in `join()` on one of the pool's workers cannot
//! wait for itself, so `join` there waits for every task except the [`Joiners`] — and except the
//! tasks that joiners' keys hold back, when callbacks blocked in `join` fill every slot of that
//! key (they could never start before such a callback returns). A joining task that ended (it
//! timed out) excuses nobody any more, but its callback still holds its key while it joins.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::AttemptId;

pub(super) struct Quiet {
    waiters: AtomicUsize,
    /// How many nudges found the pool quiet while someone waited (see "Generations"). Changed
    /// only under `lock`; read without it when a wait begins.
    quiet_moments: AtomicU64,
    lock: Mutex<()>,
    changed: Condvar,
    pub(super) joiners: Joiners,
}

impl Quiet {
    pub(super) fn new() -> Quiet {
        Quiet {
            waiters: AtomicUsize::new(0),
            quiet_moments: AtomicU64::new(0),
            lock: Mutex::new(()),
            changed: Condvar::new(),
            joiners: Joiners {
                registered: AtomicUsize::new(0),
                confirmed: AtomicUsize::new(0),
                entries: Mutex::new(Vec::new()),
            },
        }
    }

    /// Something changed that a waiter may care about (a task settled, a job was queued).
    /// `quiet_now` says whether nothing is left in the pool; asked under the lock.
    #[inline]
    pub(super) fn nudge(&self, quiet_now: impl FnOnce() -> bool) {
        // Inlined: with nobody waiting (every add and ending asks), one load.
        if self.waiters.load(SeqCst) > 0 {
            self.nudge_waiters(quiet_now);
        }
    }

    #[cold]
    fn nudge_waiters(&self, quiet_now: impl FnOnce() -> bool) {
        let _guard = self.lock.lock();
        if quiet_now() {
            self.quiet_moments.fetch_add(1, SeqCst);
        }
        self.changed.notify_all();
    }

    /// Waits until `quiet()` holds, or — for an `outside` waiter, not one of the pool's tasks —
    /// until a nudge found the pool quiet since this wait began; false if `deadline` passed
    /// first. Before each wait, `can_help` (under the lock) says whether there is queued work
    /// this thread may run; then `help` runs it without the lock, and the wait looks again.
    pub(super) fn wait(
        &self,
        deadline: Option<Instant>,
        outside: bool,
        mut quiet: impl FnMut() -> bool,
        mut can_help: impl FnMut() -> bool,
        mut help: impl FnMut(),
    ) -> bool {
        let began = self.quiet_moments.load(SeqCst);
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock();
        let reached = loop {
            if quiet() || (outside && self.quiet_moments.load(SeqCst) != began) {
                break true;
            }
            if can_help() {
                parking_lot::MutexGuard::unlocked(&mut guard, &mut help);
                continue;
            }
            match deadline {
                None => self.changed.wait(&mut guard),
                Some(deadline) => {
                    if Instant::now() >= deadline {
                        break false;
                    }
                    self.changed.wait_until(&mut guard, deadline);
                }
            }
        };
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        reached
    }
}

/// Callbacks blocked in `join()` on one of the pool's workers: `join` there waits for every
/// task except these (each would wait for the others). A joining task that ends (it timed out)
/// is told by the ending path, so it no longer excuses anyone; its entry stays until its `join`
/// returns, for the key its callback still holds.
///
/// A joiner registers in two steps: first *pending* (seen by the ending path, not yet excusing
/// anyone), then, once it has checked that its task still runs, *confirmed*. Either the check
/// sees the task ended, or the ending path (which runs after the state change) sees the entry
/// and removes it; and no other `join` is ever excused by a task that already ended.
pub(super) struct Joiners {
    /// Entries, pending or confirmed: the ending path's fast check.
    registered: AtomicUsize,
    /// Confirmed entries: how many tasks `join` excuses.
    confirmed: AtomicUsize,
    entries: Mutex<Vec<Joiner>>,
}

struct Joiner {
    /// By attempt, so that a timed-out attempt of a retried task that returns from its `join`
    /// late never removes the entry of the attempt running now.
    attempt: AttemptId,
    key: Option<u64>,
    /// Its task runs (checked after registering) and has not ended: it excuses itself.
    confirmed: bool,
}

impl Joiners {
    pub(super) fn register(&self, attempt: AttemptId, key: Option<u64>) {
        let mut entries = self.entries.lock();
        entries.push(Joiner {
            attempt,
            key,
            confirmed: false,
        });
        self.registered.store(entries.len(), SeqCst);
    }

    /// Confirms a pending entry; false if the ending path removed it meanwhile.
    pub(super) fn confirm(&self, attempt: AttemptId) -> bool {
        let mut entries = self.entries.lock();
        match entries.iter_mut().find(|j| j.attempt == attempt) {
            Some(joiner) => {
                joiner.confirmed = true;
                self.confirmed.fetch_add(1, SeqCst);
                true
            }
            None => false,
        }
    }

    /// The task of this attempt ended (the ending path): it excuses nobody any more.
    pub(super) fn ended(&self, attempt: AttemptId) {
        if self.registered.load(SeqCst) == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        if let Some(joiner) = entries.iter_mut().find(|j| j.attempt == attempt) {
            if joiner.confirmed {
                joiner.confirmed = false;
                self.confirmed.fetch_sub(1, SeqCst);
            }
        }
    }

    /// The callback's `join` returned.
    pub(super) fn remove(&self, attempt: AttemptId) {
        let mut entries = self.entries.lock();
        if let Some(at) = entries.iter().position(|j| j.attempt == attempt) {
            if entries.swap_remove(at).confirmed {
                self.confirmed.fetch_sub(1, SeqCst);
            }
            self.registered.store(entries.len(), SeqCst);
        }
    }

    /// How many tasks a `join` inside the pool excuses: the confirmed joiners.
    pub(super) fn excused(&self) -> u64 {
        self.confirmed.load(SeqCst) as u64
    }

    /// The keys that callbacks blocked in `join` hold, each with how many of its slots.
    pub(super) fn keys_held(&self) -> Vec<(u64, usize)> {
        if self.registered.load(SeqCst) == 0 {
            return Vec::new();
        }
        let mut held: Vec<(u64, usize)> = Vec::new();
        for joiner in self.entries.lock().iter() {
            let Some(key) = joiner.key else { continue };
            match held.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => held.push((key, 1)),
            }
        }
        held
    }
}
