//! Hostile tests of retries in combination with the pool's other features: deadlines and hung
//! callbacks, keys, one-by-one and bulk cancellation, the three shutdowns, `join` from inside a
//! task, bounded mailboxes, resizing, elastic pools, panics whose payloads panic on drop, and
//! adding retried work from inside a callback.
//!
//! Tests marked `#[ignore = "BUG: ..."]` demonstrate a defect; the rest are regression tests.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, gate, watchdog, watchdog_within};
use crossbeam_channel::{bounded, unbounded, Receiver};
use slowpool::{AsyncPool, Decision, Failed, Retried, Retry, Stats, TaskError, TaskId};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_secs(5);

/// A policy that retries at once (1 ms, no jitter), up to `n` attempts.
fn quick<E>(n: u32) -> Retry<E> {
    Retry::attempts(n).backoff(MS, MS).jitter(false)
}

/// Everything accepted has ended and nothing is left in flight.
fn assert_settled(stats: Stats) {
    assert_eq!(
        (
            stats.waiting_retry,
            stats.busy,
            stats.queued,
            stats.waiting_on_key
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.submitted,
        stats.completed + stats.panicked + stats.cancelled + stats.timed_out,
        "{stats:?}"
    );
}

/// Receives exactly `ids.len()` endings, one per id, and nothing more (checked after `join`).
fn collect_once<I, T, E>(
    endings: &Receiver<Retried<I, T, E>>,
    ids: &[TaskId],
) -> HashMap<TaskId, Retried<I, T, E>> {
    let mut got = HashMap::new();
    for _ in 0..ids.len() {
        let done = endings
            .recv_timeout(Duration::from_secs(20))
            .expect("an ending never arrived");
        let id = done.id;
        assert!(got.insert(id, done).is_none(), "two endings for {id:?}");
    }
    let wanted: HashSet<TaskId> = ids.iter().copied().collect();
    let seen: HashSet<TaskId> = got.keys().copied().collect();
    assert_eq!(wanted, seen);
    got
}

fn is_cancelled<I, T, E>(done: &Retried<I, T, E>) -> bool {
    matches!(
        &done.result,
        Err(failure) if matches!(failure.error, Failed::Task(TaskError::Cancelled))
    )
}

// ---------------------------------------------------------------------------------------------
// Suspected bugs
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "BUG: pool.cancel(id) cannot cancel a task waiting to retry (registry ignores BACKOFF)"]
fn cancel_by_id_reaches_a_task_waiting_to_retry() {
    watchdog("cancel(id) in backoff", || {
        let pool = AsyncPool::new(1, |n: u32| -> Result<u32, u32> { Err(n) }).unwrap();
        let policy = Retry::attempts(2).when(|_| Decision::RetryAfter(HOUR));
        let task = pool.task(1).retry(policy).add().unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        let by_id = pool.cancel(task.id());
        // Clean up either way, so that the pool's graceful drop does not wait an hour.
        let by_handle = task.cancel();
        assert!(
            by_id,
            "cancel(id) refused a task waiting to retry (RetryTask::cancel: {by_handle})"
        );
        assert!(is_cancelled(&task.recv()));
    });
}

#[test]
#[ignore = "BUG: a retry task swept from the registry while backing off escapes shutdown_timeout (hangs)"]
fn shutdown_timeout_ends_a_hung_attempt_even_after_a_registry_sweep() {
    watchdog("registry sweep", || {
        let (hang_x_key, hang_x) = gate();
        let (hang_t_key, hang_t) = gate();
        let t_calls = Arc::new(AtomicU32::new(0));
        let tc = t_calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(3)
            .build(move |n: u32| -> Result<u32, u32> {
                match n {
                    0 => {
                        hang_x.wait();
                        Ok(0)
                    }
                    1 => {
                        if tc.fetch_add(1, SeqCst) == 0 {
                            Err(1)
                        } else {
                            hang_t.wait();
                            Ok(1)
                        }
                    }
                    n => Ok(n),
                }
            })
            .unwrap();
        // X's deadline passes; its policy holds the timer thread until we let it decide, so
        // that T's retry cannot fire while we add a burst of tasks.
        let (entered_tx, entered) = bounded::<()>(1);
        let (decide_key, decide) = gate();
        let x_policy = Retry::<u32>::attempts(2).when(move |_| {
            let _ = entered_tx.try_send(());
            decide.wait();
            Decision::GiveUp
        });
        let x = pool
            .task(0)
            .timeout(Duration::from_millis(10))
            .retry(x_policy)
            .add()
            .unwrap();
        entered.recv().unwrap();
        let t = pool.task(1).retry(quick(3)).add().unwrap();
        eventually("T waits to retry", || pool.stats().waiting_retry == 1);
        // Enough adds that every registry shard sweeps its entries.
        for n in 0..16 * 80 {
            drop(pool.add_task(2 + n).unwrap());
        }
        decide_key.pass(1);
        assert!(x.recv().result.is_err());
        eventually("T's second attempt runs", || t.attempts() == 2);
        let stopper = pool.clone();
        let (done_tx, done) = bounded(1);
        thread::spawn(move || {
            let finished = stopper.shutdown_timeout(Duration::from_millis(50));
            let _ = done_tx.send(finished);
        });
        let returned = done.recv_timeout(SHORT);
        drop(hang_t_key); // let everything go, whatever happened
        drop(hang_x_key);
        assert_eq!(
            returned,
            Ok(false),
            "shutdown_timeout(50ms) did not return while a retried attempt hung"
        );
        let ending = t.recv();
        assert!(
            matches!(
                ending.result,
                Err(ref f) if f.error == Failed::Task(TaskError::TimedOut)
            ),
            "{ending:?}"
        );
    });
}

#[test]
#[ignore = "BUG: a panicking `when` function (worker side) leaves the task RUNNING for ever: no ending, join hangs"]
fn a_panicking_when_function_on_a_worker_does_not_lose_the_task() {
    watchdog("when panics on a worker", || {
        let pool = AsyncPool::new(1, |n: u32| -> Result<u32, u32> { Err(n) }).unwrap();
        let policy = Retry::<u32>::attempts(3)
            .backoff(MS, MS)
            .when(|_| panic!("the policy panics"));
        let task = pool.task(1).retry(policy).add().unwrap();
        let ending = task.recv_timeout(SHORT);
        assert!(ending.is_some(), "the task never ended");
        // The single worker is still there for other work.
        let after = pool.add_task(2).unwrap().recv_timeout(SHORT);
        assert_eq!(after, Some(Ok(Err(2))));
    });
}

#[test]
#[ignore = "BUG: a panicking `when` function at a deadline kills the timer thread: no deadline or retry fires again"]
fn a_panicking_when_function_at_a_deadline_does_not_stop_the_timer() {
    watchdog("when panics on the timer", || {
        let (key, hang) = gate();
        let pool = AsyncPool::builder()
            .max_workers(4)
            .build(move |n: u32| -> Result<u32, u32> {
                if n < 10 {
                    hang.wait();
                }
                Err(n)
            })
            .unwrap();
        let policy = Retry::<u32>::attempts(3).when(|_| panic!("the policy panics"));
        let first = pool
            .task(1)
            .timeout(Duration::from_millis(10))
            .retry(policy)
            .add()
            .unwrap();
        let first_ending = first.recv_timeout(SHORT);
        // Another task's deadline, and a plain retry, must still work.
        let second = pool
            .task(2)
            .timeout(Duration::from_millis(10))
            .retry(quick(2))
            .add()
            .unwrap();
        let second_ending = second.recv_timeout(SHORT);
        let third = pool.task(20).retry(quick(2)).add().unwrap();
        let third_ending = third.recv_timeout(SHORT);
        drop(key);
        assert!(first_ending.is_some(), "the first task never ended");
        assert_eq!(
            second_ending.map(|d| d.attempts),
            Some(2),
            "no deadline fired"
        );
        assert_eq!(third_ending.map(|d| d.attempts), Some(2), "no retry fired");
    });
}

/// An input whose `Clone` panics for one value.
#[derive(Debug, PartialEq, Eq)]
struct Touchy(u32);

impl Clone for Touchy {
    fn clone(&self) -> Self {
        if self.0 == 13 {
            panic!("cannot clone 13");
        }
        Touchy(self.0)
    }
}

#[test]
#[ignore = "BUG: an input Clone that panics (made outside catch_unwind in execute) kills the worker and loses the task"]
fn a_panicking_input_clone_does_not_lose_the_task_or_the_worker() {
    watchdog("clone panics", || {
        let pool = AsyncPool::new(1, |t: Touchy| -> Result<u32, u32> { Err(t.0) }).unwrap();
        let task = pool.task(Touchy(13)).retry(quick(2)).add().unwrap();
        let ending = task.recv_timeout(SHORT);
        let after = pool.add_task(Touchy(2)).unwrap().recv_timeout(SHORT);
        assert!(ending.is_some(), "the task never ended");
        assert_eq!(after, Some(Ok(Err(2))), "the only worker was lost");
        assert_eq!(pool.stats().workers, 1);
    });
}

#[test]
#[ignore = "BUG: shutdown_now racing a `when` decision: the task backs off anyway and shutdown_now waits out the back-off"]
fn shutdown_now_during_a_retry_decision_does_not_back_off() {
    watchdog("shutdown_now vs when", || {
        let pool = AsyncPool::new(1, |n: u32| -> Result<u32, u32> { Err(n) }).unwrap();
        let (entered_tx, entered) = bounded::<()>(1);
        let (decide_key, decide) = gate();
        let first = Arc::new(AtomicBool::new(true));
        let policy = Retry::<u32>::attempts(3).when(move |_| {
            if first.swap(false, SeqCst) {
                let _ = entered_tx.try_send(());
                decide.wait();
            }
            Decision::RetryAfter(Duration::from_secs(2))
        });
        let a = pool.task(7).retry(policy).add().unwrap();
        entered.recv().unwrap();
        // Queued behind A on the single worker: its cancellation says shutdown_now has taken
        // the retries out of the timer.
        let c = pool.add_task(8).unwrap();
        let stopper = pool.clone();
        let (done_tx, done) = bounded(1);
        thread::spawn(move || {
            let inputs = stopper.shutdown_now();
            let _ = done_tx.send((inputs, Instant::now()));
        });
        assert_eq!(c.recv(), Err(TaskError::Cancelled));
        let released = Instant::now();
        decide_key.pass(1);
        let (inputs, returned) = done.recv_timeout(SHORT).expect("shutdown_now hung");
        assert_eq!(inputs, [8]);
        let ending = a.recv();
        assert!(
            returned - released < Duration::from_secs(1),
            "shutdown_now waited {:?} for a back-off",
            returned - released
        );
        assert_eq!(ending.attempts, 1, "an attempt ran after shutdown_now");
        assert_eq!(ending.result.unwrap_err().input, Some(7));
    });
}

#[test]
#[ignore = "BUG: shutdown_timeout ends a running retry attempt with TimedOut but drops its input (Failure.input None)"]
fn shutdown_timeout_hands_the_input_back_with_a_timed_out_attempt() {
    watchdog("shutdown_timeout input", || {
        let (key, hang) = gate();
        let pool = AsyncPool::new(1, move |n: u32| -> Result<u32, u32> {
            hang.wait();
            Err(n)
        })
        .unwrap();
        let task = pool.task(5).retry(quick(3)).add().unwrap();
        eventually("it runs", || task.attempts() == 1);
        assert!(!pool.shutdown_timeout(Duration::from_millis(30)));
        let ending = task.recv();
        drop(key);
        let failure = ending.result.unwrap_err();
        assert_eq!(failure.error, Failed::Task(TaskError::TimedOut));
        assert_eq!(failure.input, Some(5), "the input was dropped");
    });
}
