//! [`Work`]: one task on its way through a pool — what runs (an input for the callback, or a
//! closure), the task's cell, and, with a retry policy, how to make its next attempt. Both
//! faces queue it: an `AsyncPool` as it is (no box per task), a `ThreadPool` boxed, so that one
//! queue carries closures of any output type.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::cell::{drop_quietly, Cell, Control};
use crate::done::TaskError;
use crate::engine::{Ran, RunContext};
use crate::observe::{Added, Watch};
use crate::retry::PolicyFn;

pub(crate) struct Work<X, O> {
    pub(crate) cell: Arc<Cell<O>>,
    pub(crate) item: X,
    pub(crate) again: Option<Box<Again<X, O>>>,
    /// When the task was added (kept only while `tracing` listens, see `observe.rs`).
    pub(crate) added: Added,
}

/// What a task with a retry policy carries from attempt to attempt.
pub(crate) struct Again<X, O> {
    /// `X::clone`, taken where `X: Clone` is known.
    pub(crate) clone: fn(&X) -> X,
    pub(crate) policy: Arc<PolicyFn<O>>,
}

impl<X, O> Clone for Again<X, O> {
    fn clone(&self) -> Self {
        Again {
            clone: self.clone,
            policy: self.policy.clone(),
        }
    }
}

impl<X: Send + 'static, O: Send + 'static> Work<X, O> {
    pub(crate) fn control(&self) -> &dyn Control {
        &*self.cell
    }

    /// For a task with a retry policy: the work of its next attempt (a copy of the item, the
    /// same cell), made before this attempt runs. `None` otherwise, and when the copy panicked
    /// (the attempt then runs without one).
    #[inline]
    pub(crate) fn spare(&self) -> Option<Work<X, O>> {
        // Inlined: a task without a retry policy (most) pays one test.
        let again = self.again.as_ref()?;
        self.spare_with(again)
    }

    fn spare_with(&self, again: &Again<X, O>) -> Option<Work<X, O>> {
        let item = panic::catch_unwind(AssertUnwindSafe(|| (again.clone)(&self.item)))
            .map_err(drop_quietly)
            .ok()?;
        Some(Work {
            cell: self.cell.clone(),
            item,
            again: Some(Box::new(again.clone())),
            added: self.added,
        })
    }

    /// Asked of a spare when the timer ends its task's attempt with `error`: how long to back
    /// off before the next attempt, or `None` to give up.
    pub(crate) fn again_after(&self, error: &TaskError) -> Option<Duration> {
        let again = self.again.as_ref()?;
        (again.policy)(self.cell.header.attempts(), Err(error))
    }

    /// Runs `call` on the item under `catch_unwind` and ends the attempt with its outcome.
    pub(crate) fn run<J>(self, cx: &RunContext<'_, J>, call: impl FnOnce(X) -> O) -> Ran
    where
        J: crate::engine::Job,
    {
        let Work {
            cell,
            item,
            again,
            added,
        } = self;
        cx.callback_starts(&cell.header);
        let watch = Watch::start(&cell.header, added);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| call(item)));
        let attempts = cell.header.attempts();
        let retry = again
            .as_ref()
            .map(|again| move |result: Result<&O, &TaskError>| (again.policy)(attempts, result));
        cx.finish(&cell, outcome, retry, watch)
    }
}
