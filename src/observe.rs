//! What a task's attempts tell [`tracing`](https://docs.rs/tracing) (feature `tracing`): a
//! span per attempt and an event at each ending. Without the feature every type here is empty
//! and every function does nothing, so the engine calls them unconditionally.
//!
//! # Design
//!
//! Spans and events are made only while a subscriber wants the pool's `DEBUG` level
//! (`tracing::enabled!`, one cached comparison): with the feature compiled in and no subscriber,
//! a task pays that comparison and no clock read. The add instant (for the queue wait) is read
//! at the add only under the same condition, and kept in the job, not in the task's cell.
//!
//! - span `slowpool.task` per attempt, entered around the callback: `task_id`, `key` (the
//!   key's hash, when the task has one), `attempt` (1 for the first);
//! - event `task attempt ended`, inside it, when the callback returned: `outcome` (`completed`,
//!   `panicked`, `retrying`, or `late` for a callback that returned after its task timed out),
//!   `queue_wait_s` (from the add to this attempt's call: a retry's includes its earlier
//!   attempts and back-offs), `run_time_s`;
//! - event `task ended` for the endings no callback return reports: `outcome` `cancelled` or
//!   `timed_out`, with `task_id`.

use crate::cell::Header;

#[cfg(feature = "tracing")]
use std::time::Instant;

/// The target of every span and event of the pool.
#[cfg(feature = "tracing")]
const TARGET: &str = "slowpool";

#[cfg(feature = "tracing")]
#[inline(always)]
fn listening() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// When a task was added, read only while a subscriber listens.
#[derive(Clone, Copy)]
pub(crate) struct Added {
    #[cfg(feature = "tracing")]
    at: Option<Instant>,
}

impl Added {
    #[inline(always)]
    pub(crate) fn now() -> Added {
        Added {
            #[cfg(feature = "tracing")]
            at: listening().then(Instant::now),
        }
    }
}

/// How an attempt's callback run ended, as the worker saw it.
#[derive(Clone, Copy)]
pub(crate) enum RunEnd {
    Completed,
    Panicked,
    Retrying,
    Late,
}

/// One attempt being watched: its span, entered, and when its callback was called.
pub(crate) struct Watch {
    #[cfg(feature = "tracing")]
    inner: Option<Watched>,
}

impl Watch {
    /// The callback of the task with this header is about to be called.
    #[inline(always)]
    pub(crate) fn start(header: &Header, added: Added) -> Watch {
        #[cfg(not(feature = "tracing"))]
        let _ = (header, added);
        Watch {
            #[cfg(feature = "tracing")]
            inner: if listening() {
                Some(watch(header, added))
            } else {
                None
            },
        }
    }

    /// The callback returned and its attempt ended this way.
    #[inline(always)]
    pub(crate) fn end(self, how: RunEnd) {
        #[cfg(not(feature = "tracing"))]
        let _ = how;
        #[cfg(feature = "tracing")]
        if let Some(inner) = self.inner {
            report(inner, how);
        }
    }
}

/// The event of an attempt whose callback returned; out of line, the hot path only tests for
/// a span.
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn report((span, called, added): Watched, how: RunEnd) {
    let outcome = match how {
        RunEnd::Completed => "completed",
        RunEnd::Panicked => "panicked",
        RunEnd::Retrying => "retrying",
        RunEnd::Late => "late",
    };
    let queue_wait_s = added.map(|added| (called - added).as_secs_f64());
    tracing::debug!(
        target: TARGET,
        outcome,
        queue_wait_s,
        run_time_s = called.elapsed().as_secs_f64(),
        "task attempt ended"
    );
    drop(span);
}

/// An attempt's span, entered, when its callback was called, and when its task was added.
#[cfg(feature = "tracing")]
type Watched = (tracing::span::EnteredSpan, Instant, Option<Instant>);

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn watch(header: &Header, added: Added) -> Watched {
    let span = tracing::debug_span!(
        target: TARGET,
        "slowpool.task",
        task_id = header.id.0,
        key = header.key,
        attempt = header.attempts(),
    );
    (span.entered(), Instant::now(), added.at)
}

/// A task ended without a callback return to report it: cancelled, or timed out.
#[inline]
pub(crate) fn ended_unrun(header: &Header, timed_out: bool) {
    #[cfg(not(feature = "tracing"))]
    let _ = (header, timed_out);
    #[cfg(feature = "tracing")]
    if listening() {
        let outcome = if timed_out { "timed_out" } else { "cancelled" };
        tracing::debug!(target: TARGET, task_id = header.id.0, outcome, "task ended");
    }
}
