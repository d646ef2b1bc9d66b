//! Per-key limits: at most `max_per_key` tasks of one key in the queue or running, and
//! successive starts of one key at least `min_interval_per_key` apart.
//!
//! # Design
//!
//! The table sits in front of the queue. A keyed job that may not go yet waits in its key's
//! deque — never on a worker — so a worker free while host A is saturated runs host B's work.
//! The table is plain data behind the engine's mutex; the engine moves the jobs it returns into
//! the queue while still holding that mutex, so "drain the table, then drain the queue" (cancel
//! and `shutdown_now`) cannot miss a job in between.
//!
//! Politeness counts from a task's real start — the instant its callback is called, not when it
//! entered the queue nor when a worker took it: while a job of a key is queued or about to be
//! called, the next one is held back; once its callback is called, the next may go at
//! `start + interval`. So two calls of one key's callbacks are always at least the interval
//! apart, however long the queue and whatever a worker does between taking a job and calling it.
//!
//! A key can be paused until an instant (`pause_key`, or a retry decision): none of its
//! waiting jobs goes into the queue before then, retries included, since they re-enter through
//! their key. Pauses sit in a map of their own, beside the keys, so that a pause outlives its
//! key's entry (a key paused with no tasks holds the ones added later) and pausing costs the
//! keys that are not paused nothing. Expired pauses are forgotten as the map grows.
//!
//! The per-key view (`view`, `busiest`) reads this table: what it shows is what the limits act
//! on, with no second record to drift from it.
//!
//! Keys are 64-bit hashes (a `&str` and a `String` with the same text are the same key). A key's
//! entry is removed once it is idle and its interval has passed, so a crawl over millions of
//! hosts does not grow the table for ever.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::cell::State;

use super::Job;

/// A pool's per-key limits: the table, and how keys are hashed. A pool without per-key settings
/// has none, and its keys have no effect.
pub(crate) struct Keys<J> {
    table: Mutex<KeyTable<J>>,
    hasher: RandomState,
    /// How many tasks of one key may run at once (for keyed streams): `max_per_key`, or 1 with
    /// only an interval set.
    per_key: usize,
}

impl<J: Job> Keys<J> {
    /// Keys for a pool built with these settings; `None` without either.
    pub(crate) fn new(max_per_key: Option<usize>, interval: Option<Duration>) -> Option<Keys<J>> {
        if max_per_key.is_none() && interval.is_none() {
            return None;
        }
        Some(Keys {
            table: Mutex::new(KeyTable::new(max_per_key, interval)),
            hasher: RandomState::new(),
            per_key: max_per_key.unwrap_or(1).max(1),
        })
    }

    /// The hash a task of this key is filed under.
    pub(crate) fn hash<K: Hash>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// How keys are hashed, for a caller that hashes many (a keyed stream).
    pub(crate) fn hasher(&self) -> RandomState {
        self.hasher.clone()
    }

    pub(crate) fn per_key(&self) -> usize {
        self.per_key
    }

    /// The table; the engine moves the jobs it lets through while still holding it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, KeyTable<J>> {
        self.table.lock()
    }
}

pub(crate) struct KeyTable<J> {
    max_per_key: usize,
    interval: Option<Duration>,
    keys: HashMap<u64, Key<J>>,
    /// Table size after the last sweep of idle keys; the next sweep runs at twice that.
    swept_at: usize,
    /// Paused keys and when their pause ends (see the module docs).
    paused: HashMap<u64, Instant>,
    /// Size of `paused` after its last pruning; the next runs at twice that.
    pruned_at: usize,
}

/// A key as the table sees it, for the per-key view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyView {
    pub(crate) hash: u64,
    pub(crate) active: usize,
    pub(crate) waiting: usize,
    pub(crate) started: u64,
    pub(crate) last_start: Option<Instant>,
    pub(crate) interval: Option<Duration>,
    pub(crate) paused_until: Option<Instant>,
}

struct Key<J> {
    /// Jobs of this key in the queue or running.
    active: usize,
    /// A job of this key is in the queue and has not started (only tracked with an interval).
    unstarted: bool,
    waiting: VecDeque<J>,
    /// Earliest start of the next job of this key.
    next_start: Option<Instant>,
    /// A timer wake-up is scheduled for this key.
    wake_scheduled: bool,
    /// Callbacks of this key called since its entry was made, and the last call.
    started: u64,
    last_start: Option<Instant>,
}

impl<J> Default for Key<J> {
    fn default() -> Self {
        Key {
            active: 0,
            unstarted: false,
            waiting: VecDeque::new(),
            next_start: None,
            wake_scheduled: false,
            started: 0,
            last_start: None,
        }
    }
}

/// What the engine must do after a change to the table.
pub(crate) struct Step<J> {
    /// A job that may go into the queue now (already moved State::Waiting → State::Queued).
    pub(crate) run: Option<J>,
    /// Schedule a wake-up of this key at this instant.
    pub(crate) wake_at: Option<Instant>,
    /// Cancelled jobs removed from the key's deque: drop them outside the lock.
    pub(crate) dead: Vec<J>,
}

impl<J> Step<J> {
    fn new() -> Step<J> {
        Step {
            run: None,
            wake_at: None,
            dead: Vec::new(),
        }
    }
}

impl<J: Job> KeyTable<J> {
    pub(crate) fn new(max_per_key: Option<usize>, interval: Option<Duration>) -> KeyTable<J> {
        KeyTable {
            max_per_key: max_per_key.unwrap_or(usize::MAX).max(1),
            interval,
            keys: HashMap::new(),
            swept_at: 64,
            paused: HashMap::new(),
            pruned_at: 64,
        }
    }

    /// A new keyed job (in state State::Waiting) arrives: it goes at once if its key has room, else it
    /// waits at the back of its key's deque.
    pub(crate) fn admit(&mut self, key: u64, job: J, now: Instant) -> Step<J> {
        if self.keys.len() >= self.swept_at.saturating_mul(2) {
            self.sweep(now);
        }
        self.keys.entry(key).or_default().waiting.push_back(job);
        self.pump(key, now)
    }

    /// True if a job of `key` admitted now would go into the queue at once.
    pub(crate) fn has_room(&self, key: u64, now: Instant) -> bool {
        self.keys.get(&key).map_or(true, |entry| {
            entry.active < self.max_per_key
                && !entry.unstarted
                && entry.waiting.is_empty()
                && entry.next_start.map_or(true, |at| at <= now)
        }) && self.paused_until(key, now).is_none()
    }

    /// A job of `key` left the queue or its callback returned: its place is free.
    pub(crate) fn release(&mut self, key: u64, was_unstarted: bool, now: Instant) -> Step<J> {
        if let Some(entry) = self.keys.get_mut(&key) {
            entry.active = entry.active.saturating_sub(1);
            if was_unstarted {
                entry.unstarted = false;
            }
        }
        self.pump(key, now)
    }

    /// The callback of a job of `key` was called at `now`: with an interval, the next may start
    /// at `now + interval`.
    pub(crate) fn started(&mut self, key: u64, now: Instant) -> Step<J> {
        let Some(entry) = self.keys.get_mut(&key) else {
            return Step::new();
        };
        entry.started += 1;
        entry.last_start = Some(now);
        let Some(interval) = self.interval else {
            return Step::new();
        };
        entry.unstarted = false;
        entry.next_start = now.checked_add(interval);
        self.pump(key, now)
    }

    /// The timer's wake-up for `key`.
    pub(crate) fn wake(&mut self, key: u64, now: Instant) -> Step<J> {
        if let Some(entry) = self.keys.get_mut(&key) {
            entry.wake_scheduled = false;
        }
        self.pump(key, now)
    }

    /// Lets the next waiting job of `key` go if the key has room and its interval has passed.
    fn pump(&mut self, key: u64, now: Instant) -> Step<J> {
        let mut step = Step::new();
        let paused_until = self.paused_until(key, now);
        let Some(entry) = self.keys.get_mut(&key) else {
            return step;
        };
        // Jobs cancelled while waiting stay in the deque until they reach its front.
        while let Some(job) = entry.waiting.front() {
            if job.control().header().state() != State::Cancelled {
                break;
            }
            step.dead.extend(entry.waiting.pop_front());
        }
        let has_room = entry.active < self.max_per_key && !entry.unstarted;
        if has_room && !entry.waiting.is_empty() {
            // A pause holds the key like an interval that has not passed.
            match entry.next_start.max(paused_until) {
                Some(at) if at > now => {
                    if !entry.wake_scheduled {
                        entry.wake_scheduled = true;
                        step.wake_at = Some(at);
                    }
                }
                _ => {
                    let job = entry.waiting.pop_front().expect("checked non-empty");
                    if job
                        .control()
                        .header()
                        .transition(State::Waiting, State::Queued)
                    {
                        entry.active += 1;
                        entry.unstarted = self.interval.is_some();
                        step.run = Some(job);
                    } else {
                        // Cancelled between the check above and now; the next pump goes on.
                        step.dead.push(job);
                    }
                }
            }
        }
        let idle = entry.active == 0
            && entry.waiting.is_empty()
            && !entry.wake_scheduled
            && entry.next_start.map_or(true, |at| at <= now);
        if idle {
            self.keys.remove(&key);
        }
        step
    }

    /// The end of `key`'s pause, if it is paused at `now`.
    fn paused_until(&self, key: u64, now: Instant) -> Option<Instant> {
        if self.paused.is_empty() {
            return None;
        }
        self.paused.get(&key).copied().filter(|&until| until > now)
    }

    /// Holds every waiting job of `key` until `until` (a later pause than one already set wins;
    /// an earlier one changes nothing). Returns when the key's pause ends now.
    pub(crate) fn pause(&mut self, key: u64, until: Instant, now: Instant) -> (Instant, Step<J>) {
        if self.paused.len() >= self.pruned_at.saturating_mul(2) {
            self.paused.retain(|_, &mut at| at > now);
            self.pruned_at = self.paused.len().max(64);
        }
        let at = self.paused.entry(key).or_insert(until);
        *at = (*at).max(until);
        let until = *at;
        // A key with waiting jobs and room gets its wake-up at the pause's end (`pump`).
        (until, self.pump(key, now))
    }

    /// How many keys are paused at `now`.
    pub(crate) fn paused_keys(&self, now: Instant) -> usize {
        self.paused.values().filter(|&&until| until > now).count()
    }

    /// What the table knows of `key` at `now`: `None` for a key with no tasks, not paused.
    pub(crate) fn view(&self, key: u64, now: Instant) -> Option<KeyView> {
        let paused_until = self.paused_until(key, now);
        match self.keys.get(&key) {
            Some(entry) => Some(self.view_of(key, entry, paused_until)),
            None => paused_until.map(|_| KeyView {
                hash: key,
                active: 0,
                waiting: 0,
                started: 0,
                last_start: None,
                interval: self.interval,
                paused_until,
            }),
        }
    }

    fn view_of(&self, key: u64, entry: &Key<J>, paused_until: Option<Instant>) -> KeyView {
        KeyView {
            hash: key,
            active: entry.active,
            waiting: entry
                .waiting
                .iter()
                .filter(|job| job.control().header().state() == State::Waiting)
                .count(),
            started: entry.started,
            last_start: entry.last_start,
            interval: self.interval,
            paused_until,
        }
    }

    /// The `n` keys with the most tasks (active and waiting), most first. One pass over the
    /// table, keeping `n` at a time: memory grows with `n`, not with the number of keys.
    pub(crate) fn busiest(&self, n: usize, now: Instant) -> Vec<KeyView> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        // A min-heap of the best `n` so far, by (tasks, hash) so that ties come out stably.
        let mut best = BinaryHeap::with_capacity(n.min(self.keys.len()) + 1);
        for (&key, entry) in &self.keys {
            let load = entry.active + entry.waiting.len();
            if best.len() == n {
                match best.peek() {
                    Some(&Reverse((least, _))) if load <= least => continue,
                    _ => {}
                }
                best.pop();
            }
            best.push(Reverse((load, key)));
        }
        let mut keys: Vec<u64> = best
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, key))| key)
            .collect();
        keys.truncate(n);
        keys.iter()
            .filter_map(|key| {
                let entry = self.keys.get(key)?;
                Some(self.view_of(*key, entry, self.paused_until(*key, now)))
            })
            .collect()
    }

    /// The jobs of `key` waiting behind `joiners` tasks blocked in `join()`: all of its live
    /// waiting jobs when the joiners fill every slot of the key (none can start before a
    /// joiner ends), else none.
    pub(crate) fn held_back_by_joiners(&self, key: u64, joiners: usize) -> usize {
        match self.keys.get(&key) {
            Some(entry) if joiners >= self.max_per_key => entry
                .waiting
                .iter()
                .filter(|job| job.control().header().state() == State::Waiting)
                .count(),
            _ => 0,
        }
    }

    /// Removes every job still waiting, in key order then arrival order.
    pub(crate) fn drain(&mut self) -> Vec<J> {
        let mut jobs = Vec::new();
        for entry in self.keys.values_mut() {
            jobs.extend(entry.waiting.drain(..));
        }
        jobs
    }

    /// Forgets keys that are idle and whose interval has passed.
    fn sweep(&mut self, now: Instant) {
        self.keys.retain(|_, entry| {
            entry.active > 0
                || !entry.waiting.is_empty()
                || entry.wake_scheduled
                || entry.next_start.is_some_and(|at| at > now)
        });
        self.swept_at = self.keys.len().max(64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{Cell, Control, Header, Output};
    use crate::done::TaskError;
    use crate::engine::{Ran, RunContext};
    use crate::id::TaskId;
    use crate::slot::Slot;
    use std::sync::Arc;

    struct TestJob(Arc<Cell<()>>);

    impl Job for TestJob {
        type Runner = ();
        type Input = ();
        fn control(&self) -> &dyn Control {
            &*self.0
        }
        fn control_arc(&self) -> Arc<dyn Control> {
            self.0.clone()
        }
        fn run(self, _: &(), _: &RunContext<'_, Self>) -> Ran {
            Ran::Ended
        }
        fn into_input(self) {}
        fn spare(&self) -> Option<Self> {
            None
        }
        fn again_after(&self, _: &TaskError) -> Option<std::time::Duration> {
            None
        }
    }

    fn job(id: u64, key: u64) -> TestJob {
        let header = Header::new(TaskId(id), Some(key), None);
        TestJob(Arc::new(Cell::new(header, Output::Slot(Slot::new()))))
    }

    #[test]
    fn a_full_key_holds_its_jobs_and_lets_the_next_go_on_release() {
        let mut table = KeyTable::new(Some(1), None);
        let now = Instant::now();
        assert!(table.admit(7, job(1, 7), now).run.is_some());
        assert!(table.admit(7, job(2, 7), now).run.is_none());
        assert!(
            table.admit(8, job(3, 8), now).run.is_some(),
            "other keys go"
        );
        let next = table
            .release(7, false, now)
            .run
            .expect("key 7 has room again");
        assert_eq!(next.control().header().id, TaskId(2));
        assert_eq!(next.control().header().state(), State::Queued);
    }

    #[test]
    fn an_interval_counts_from_the_start_and_schedules_one_wake_up() {
        let interval = Duration::from_millis(100);
        let mut table = KeyTable::new(None, Some(interval));
        let t0 = Instant::now();
        assert!(table.admit(1, job(1, 1), t0).run.is_some());
        // The first job is queued but has not started: the second waits.
        let held = table.admit(1, job(2, 1), t0);
        assert!(held.run.is_none() && held.wake_at.is_none());
        let started = table.started(1, t0);
        assert_eq!(started.wake_at, Some(t0 + interval));
        assert!(table.wake(1, t0 + interval / 2).run.is_none());
        assert!(table.wake(1, t0 + interval).run.is_some());
    }

    #[test]
    fn cancelled_waiting_jobs_are_skipped() {
        let mut table = KeyTable::new(Some(1), None);
        let now = Instant::now();
        assert!(table.admit(1, job(1, 1), now).run.is_some());
        let third = job(3, 1);
        let mut dead = table.admit(1, third, now).dead.len();
        // The third is cancelled while it waits; the fourth waits behind it.
        let cancelled = table.keys[&1].waiting[0].control().header().cancel();
        assert_eq!(cancelled, Some(State::Waiting));
        let step = table.admit(1, job(4, 1), now);
        dead += step.dead.len();
        assert!(step.run.is_none(), "key 1 is still full");
        let step = table.release(1, false, now);
        dead += step.dead.len();
        assert_eq!(dead, 1, "the cancelled job is dropped, not run");
        assert_eq!(step.run.unwrap().control().header().id, TaskId(4));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let mut table = KeyTable::new(Some(1), None);
        let now = Instant::now();
        for key in 0..1000 {
            let _ = table.admit(key, job(key, key), now);
            let _ = table.release(key, false, now);
        }
        assert!(table.keys.is_empty());
    }
}
