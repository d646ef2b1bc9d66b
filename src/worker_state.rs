//! Per-worker state for [`build_with_init`](crate::Builder::build_with_init): a value made on a
//! worker thread, by that thread, and used only there.
//!
//! # Design
//!
//! The state lives in a thread-local slot of the worker thread, so it need be neither `Send`
//! nor `Sync` (a `RefCell` cache, an `Rc`, a blocking database client that is `Send` only), and
//! it lives exactly as long as the thread: dropped when the worker retires, when the pool shuts
//! down, or when an abandoned thread finally returns. The slot is tagged with the pool it
//! belongs to, so a state is only ever handed to the callback of the pool that made it.
//!
//! - It is made lazily, by the first task a worker runs (an elastic pool's new worker makes its
//!   own; the replacement of an abandoned thread makes a new one while the abandoned thread
//!   keeps its own).
//! - If the callback panics, the state is dropped (it may be half-updated) and the worker's
//!   next task makes a new one. If making it panics, that task ends `Panicked` and the next
//!   task tries again.
//! - A task that `join`s its pool from inside the callback can run queued tasks on its own
//!   thread meanwhile; those find the worker's state in use and get a fresh one, made for them
//!   and dropped after.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// The current worker thread's state: `(owner, state)`.
    static STATE: RefCell<Option<(usize, Box<dyn Any>)>> = const { RefCell::new(None) };
}

static NEXT_OWNER: AtomicUsize = AtomicUsize::new(1);

/// Wraps `callback` so that it gets this worker thread's state, made by `init` on first use.
pub(crate) fn with_state<S, I, O>(
    init: impl Fn() -> S + Send + Sync + 'static,
    callback: impl Fn(&mut S, I) -> O + Send + Sync + 'static,
) -> impl Fn(I) -> O + Send + Sync + 'static
where
    S: 'static,
{
    let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
    move |input: I| {
        STATE.with(|slot| {
            let Ok(mut slot) = slot.try_borrow_mut() else {
                // An outer task on this thread holds the state (this task runs inside its
                // `join`): a fresh one, for this task only.
                return callback(&mut init(), input);
            };
            let mine = slot
                .as_ref()
                .is_some_and(|(o, state)| *o == owner && state.is::<S>());
            if !mine {
                // Dropped before the new one is made: two states never live at once.
                *slot = None;
                *slot = Some((owner, Box::new(init())));
            }
            let state = slot
                .as_mut()
                .and_then(|(_, state)| state.downcast_mut::<S>())
                .expect("made above");
            match panic::catch_unwind(AssertUnwindSafe(|| callback(state, input))) {
                Ok(output) => output,
                Err(payload) => {
                    // Possibly half-updated: the next task makes a new one.
                    let dropped = slot.take();
                    drop(slot);
                    crate::delivery::drop_quietly(dropped);
                    panic::resume_unwind(payload)
                }
            }
        })
    }
}
