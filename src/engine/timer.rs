//! One timer thread per pool, started on first need: task deadlines, key wake-ups and retries.
//!
//! Deadlines are removed when their task ends, so the map holds only tasks that are running now
//! (plus keys waiting for their interval and tasks waiting to retry), not every task of the
//! last `task_timeout`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::spare::Spare;
use crate::cell::Control;

/// Something to do at an instant.
pub(crate) enum Event<J> {
    /// The task's deadline: end it with `TimedOut` if it still runs — or, with a retry policy,
    /// send its spare (the next attempt's job) to back off.
    Deadline(Arc<dyn Control>, Option<Arc<Spare<J>>>),
    /// A key's interval has passed: let its next job go.
    WakeKey(u64),
    /// A task's back-off has passed: its next attempt enters its key or the queue.
    Retry(J),
}

/// Where an event sits in the timer, to remove it.
pub(crate) type EventId = (Instant, u64);

pub(crate) struct Timer<J> {
    state: Mutex<Schedule<J>>,
    /// How many `Event::Retry` the map holds: `Stats::waiting_retry`. Changed only under the
    /// `state` lock, with the map itself, so that it never counts a retry that `take_retries`
    /// (`cancel_all`, `shutdown_now`) would not find, nor misses one it would.
    retries: AtomicUsize,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Schedule<J> {
    events: BTreeMap<EventId, Event<J>>,
    next_seq: u64,
    started: bool,
    stopped: bool,
}

/// What the timer thread should do next.
pub(crate) enum Next<J> {
    Fire(Event<J>),
    Stop,
}

impl<J> Timer<J> {
    pub(crate) fn new() -> Timer<J> {
        Timer {
            state: Mutex::new(Schedule {
                events: BTreeMap::new(),
                next_seq: 0,
                started: false,
                stopped: false,
            }),
            retries: AtomicUsize::new(0),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    /// Adds an event. Returns its id and whether the caller must start the timer thread (the
    /// first event ever).
    pub(crate) fn schedule(&self, at: Instant, event: Event<J>) -> (EventId, bool) {
        let state = self.state.lock();
        self.insert(state, at, event)
    }

    /// Adds a task waiting to retry until `at`, as `schedule` — unless `wanted`, asked under
    /// the lock, says it must not wait any more: then the job comes back. Whoever ends or stops
    /// a task waiting to retry (a cancel, `cancel_all`, `shutdown_now`, a dropped stream)
    /// changes what `wanted` reads before it looks here for the retry: either it finds this
    /// one, or this one never enters. So the timer holds no retry of a task that no longer
    /// waits, and `retries` counts none.
    pub(crate) fn schedule_retry(
        &self,
        at: Instant,
        job: J,
        wanted: impl FnOnce(&J) -> bool,
    ) -> Result<(EventId, bool), J> {
        let state = self.state.lock();
        if !wanted(&job) {
            return Err(job);
        }
        Ok(self.insert(state, at, Event::Retry(job)))
    }

    fn insert(
        &self,
        mut state: MutexGuard<'_, Schedule<J>>,
        at: Instant,
        event: Event<J>,
    ) -> (EventId, bool) {
        let id = (at, state.next_seq);
        state.next_seq += 1;
        let earliest = state
            .events
            .first_key_value()
            .map_or(true, |(first, _)| id < *first);
        if matches!(event, Event::Retry(_)) {
            self.retries.fetch_add(1, SeqCst);
        }
        state.events.insert(id, event);
        let start = !state.started;
        state.started = true;
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
        (id, start)
    }

    /// Removes an event that is no longer needed (its task ended in time).
    pub(crate) fn cancel(&self, id: EventId) {
        let event = self.take(&mut self.state.lock(), id);
        // Dropping an `Event` may drop the last reference to a task's cell: outside the lock.
        drop(event);
    }

    /// Takes an event out of the map, counting a retry that leaves; under the `state` lock.
    fn take(&self, state: &mut Schedule<J>, id: EventId) -> Option<Event<J>> {
        let event = state.events.remove(&id);
        if matches!(event, Some(Event::Retry(_))) {
            self.retries.fetch_sub(1, SeqCst);
        }
        event
    }

    /// Tasks waiting here to retry.
    pub(crate) fn retries(&self) -> usize {
        self.retries.load(SeqCst)
    }

    /// Takes out every task waiting to retry (for `cancel_all` and shutdown).
    pub(crate) fn take_retries(&self) -> Vec<J> {
        let mut state = self.state.lock();
        let ids: Vec<EventId> = state
            .events
            .iter()
            .filter(|(_, event)| matches!(event, Event::Retry(_)))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| match self.take(&mut state, id) {
                Some(Event::Retry(job)) => Some(job),
                _ => None,
            })
            .collect()
    }

    /// Takes out the one retry that `is_it` picks (a cancel by id).
    pub(crate) fn take_retry(&self, is_it: impl Fn(&J) -> bool) -> Option<J> {
        let mut state = self.state.lock();
        let id = state.events.iter().find_map(|(id, event)| match event {
            Event::Retry(job) if is_it(job) => Some(*id),
            _ => None,
        })?;
        match self.take(&mut state, id) {
            Some(Event::Retry(job)) => Some(job),
            _ => None,
        }
    }

    pub(crate) fn set_thread(&self, handle: JoinHandle<()>) {
        *self.thread.lock() = Some(handle);
    }

    /// The thread could not be started: the next `schedule` tries again.
    pub(crate) fn thread_failed(&self) {
        self.state.lock().started = false;
    }

    pub(crate) fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().take()
    }

    /// Asks the timer thread to exit; pending events are dropped.
    pub(crate) fn stop(&self) {
        let events = {
            let mut state = self.state.lock();
            state.stopped = true;
            self.retries.store(0, SeqCst);
            std::mem::take(&mut state.events)
        };
        self.changed.notify_one();
        drop(events);
    }

    /// Waits for the next due event (timer thread only).
    pub(crate) fn next(&self) -> Next<J> {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                return Next::Stop;
            }
            let Some((&id, _)) = state.events.first_key_value() else {
                self.changed.wait(&mut state);
                continue;
            };
            if id.0 <= Instant::now() {
                let event = self.take(&mut state, id).expect("first key exists");
                return Next::Fire(event);
            }
            self.changed.wait_until(&mut state, id.0);
        }
    }
}
