//! Hostile tests of retries in combination with the pool's other features: deadlines and hung
//! callbacks, keys, tags, one-by-one and bulk cancellation, the three shutdowns, `join` from
//! inside a task, bounded mailboxes, resizing, elastic pools, panics whose payloads panic on
//! drop, adding retried work from inside a callback — on an `AsyncPool`, and with `Clone`
//! closures on a `ThreadPool`.
//!
//! Several began as demonstrations of defects since fixed: cancel by id and `shutdown_timeout`
//! missing tasks waiting to retry, a panicking `when` function or input `Clone`, `shutdown_now`
//! racing a retry decision, inputs dropped at the end of `shutdown_timeout`, a timed-out
//! attempt's token, and `join` across attempts of one task.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{assert_settled, eventually, gate, quick, watchdog, Concurrency};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError};
use slowpool::{AsyncPool, Done, Failed, Flat, Mailbox, Retry, TaskError, TaskId, ThreadPool};

/// Where a test puts its owning pool so that the callback can reach (and drop) it.
type PoolSlot = Arc<Mutex<Option<AsyncPool<u32, Result<u32, u32>>>>>;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
/// How long a check waits for something that must happen soon (an ending, a bounded shutdown's
/// return) before it calls it lost: generous, since a panic's first backtrace (with
/// `RUST_BACKTRACE` set) can take seconds on a loaded machine, yet short enough that a test
/// waiting on it several times fails before its watchdog.
const SHORT: Duration = Duration::from_secs(15);

/// Receives exactly `ids.len()` endings, one per id, and nothing more (checked after `join`).
fn collect_once<O, Tag>(
    endings: &Receiver<Done<O, Tag>>,
    ids: &[TaskId],
) -> HashMap<TaskId, Done<O, Tag>> {
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

fn is_cancelled<O>(result: &Result<O, TaskError>) -> bool {
    matches!(result, Err(TaskError::Cancelled))
}

// ---------------------------------------------------------------------------------------------
// Suspected bugs
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_by_id_reaches_a_task_waiting_to_retry() {
    watchdog("cancel(id) in backoff", || {
        let pool = AsyncPool::new(1, |n: u32| -> Result<u32, u32> { Err(n) }).unwrap();
        let policy = Retry::attempts(2).when(|_| Some(HOUR));
        let task = pool.task(1).retry(policy).tag(1).add().unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        let by_id = pool.cancel(task.id());
        // Clean up either way, so that the pool's graceful drop does not wait an hour.
        let by_handle = task.cancel();
        assert!(
            by_id,
            "cancel(id) refused a task waiting to retry (Task::cancel: {by_handle})"
        );
        assert!(is_cancelled(&task.recv()));
        assert_eq!((task.attempts(), *task.tag()), (1, 1));
    });
}

#[test]
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
        // Declared after the pool: a failed assertion opens the gates before the pool's drop
        // waits for its tasks.
        let (hang_x_key, hang_t_key) = (hang_x_key, hang_t_key);
        // X's deadline passes; its policy holds the timer thread until we let it decide, so
        // that T's retry cannot fire while we add a burst of tasks.
        let (entered_tx, entered) = bounded::<()>(1);
        let (decide_key, decide) = gate();
        let x_policy = Retry::<u32>::attempts(2).when(move |_| {
            let _ = entered_tx.try_send(());
            decide.wait();
            None
        });
        let x = pool
            .task(0)
            .timeout(Duration::from_millis(10))
            .retry(x_policy)
            .add()
            .unwrap();
        entered.recv().unwrap();
        let t = pool.task(1).retry(quick(3)).tag("t").add().unwrap();
        eventually("T waits to retry", || pool.stats().waiting_retry == 1);
        // Enough adds that every registry shard sweeps its entries.
        for n in 0..16 * 80 {
            drop(pool.add_task(2 + n).unwrap());
        }
        decide_key.pass(1);
        assert_eq!(x.recv().flat(), Err(Failed::Task(TaskError::TimedOut)));
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
        assert_eq!(ending, Err(TaskError::TimedOut), "{ending:?}");
        assert_eq!((t.attempts(), *t.tag()), (2, "t"));
    });
}

#[test]
fn a_panicking_when_function_on_a_worker_does_not_lose_the_task() {
    watchdog("when panics on a worker", || {
        let pool = AsyncPool::new(1, |n: u32| -> Result<u32, u32> { Err(n) }).unwrap();
        let policy = Retry::<u32>::attempts(3)
            .backoff(MS, MS)
            .when(|_| panic!("the policy panics"));
        let task = pool.task(1).retry(policy).add().unwrap();
        let ending = task.recv_timeout(SHORT);
        if ending.is_err() {
            // A graceful drop would wait for the lost task for ever.
            std::mem::forget(pool);
            panic!("the task never ended");
        }
        // It gave up, with the failure the policy was asked about.
        assert_eq!((ending, task.attempts()), (Ok(Ok(Err(1))), 1));
        // The single worker is still there for other work.
        let after = pool.add_task(2).unwrap().recv_timeout(SHORT);
        assert_eq!(after, Ok(Ok(Err(2))));
    });
}

#[test]
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
        if first_ending.is_err() || second_ending.is_err() || third_ending.is_err() {
            // A graceful drop would wait for the lost tasks for ever.
            std::mem::forget(pool);
        }
        drop(key);
        assert!(first_ending.is_ok(), "the first task never ended");
        // It gave up at its first deadline.
        assert_eq!(
            (first_ending, first.attempts()),
            (Ok(Err(TaskError::TimedOut)), 1)
        );
        assert_eq!(
            (second_ending.is_ok(), second.attempts()),
            (true, 2),
            "no deadline fired"
        );
        assert_eq!(
            (third_ending, third.attempts()),
            (Ok(Ok(Err(20))), 2),
            "no retry fired"
        );
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
fn a_panicking_input_clone_does_not_lose_the_task_or_the_worker() {
    watchdog("clone panics", || {
        let pool = AsyncPool::new(1, |t: Touchy| -> Result<u32, u32> { Err(t.0) }).unwrap();
        let task = pool.task(Touchy(13)).retry(quick(2)).add().unwrap();
        let ending = task.recv_timeout(SHORT);
        let after = pool.add_task(Touchy(2)).unwrap().recv_timeout(SHORT);
        let workers = pool.stats().workers;
        if ending.is_err() || after.is_err() {
            // A graceful drop would wait for the lost task for ever.
            std::mem::forget(pool);
        }
        assert!(ending.is_ok(), "the task never ended");
        // It ran once, without retries.
        assert_eq!((ending, task.attempts()), (Ok(Ok(Err(13))), 1));
        assert_eq!(after, Ok(Ok(Err(2))), "the only worker was lost");
        assert_eq!(workers, 1);
    });
}

#[test]
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
            Some(Duration::from_secs(2))
        });
        let a = pool.task(7).retry(policy).tag(7).add().unwrap();
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
        // A's back-off was stopped by the shutdown: it ends Cancelled, and its input comes
        // back with the queued one's, in the order they were added.
        assert_eq!(inputs, [7, 8]);
        let ending = a.recv();
        assert!(
            returned - released < Duration::from_secs(1),
            "shutdown_now waited {:?} for a back-off",
            returned - released
        );
        assert_eq!(a.attempts(), 1, "an attempt ran after shutdown_now");
        // It ended without another attempt (its back-off stopped), and its tag says which
        // input it was.
        assert_eq!(ending, Err(TaskError::Cancelled));
        assert_eq!(*a.tag(), 7);
        assert_settled(pool.stats());
    });
}

#[test]
fn shutdown_timeout_ends_a_running_retried_attempt_timed_out_with_its_tag() {
    watchdog("shutdown_timeout tag", || {
        let (key, hang) = gate();
        let pool = AsyncPool::new(1, move |n: u32| -> Result<u32, u32> {
            hang.wait();
            Err(n)
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let task = pool.task(5).retry(quick(3)).tag(5).add().unwrap();
        eventually("it runs", || task.attempts() == 1);
        assert!(!pool.shutdown_timeout(Duration::from_millis(30)));
        let ending = task.recv();
        drop(key);
        assert_eq!(ending.flat(), Err(Failed::Task(TaskError::TimedOut)));
        assert_eq!((task.attempts(), *task.tag()), (1, 5), "the tag was lost");
    });
}

// ---------------------------------------------------------------------------------------------
// Regression tests (passing)
// ---------------------------------------------------------------------------------------------

/// Hung attempts (past their deadline) with few and many threads allowed to be abandoned:
/// every task ends exactly once, with its tag, and the counters settle.
#[test]
fn retries_with_deadlines_and_hung_callbacks_end_once_each() {
    watchdog("hung retries", || {
        for max_abandoned in [0, 1, 64] {
            let calls = Arc::new(AtomicU32::new(0));
            let c = calls.clone();
            let pool = AsyncPool::builder()
                .max_workers(4)
                .max_abandoned(max_abandoned)
                .build(move |n: u32| -> Result<u32, u32> {
                    let call = c.fetch_add(1, SeqCst);
                    if call % 5 == 0 {
                        thread::sleep(Duration::from_millis(25)); // past the 5 ms deadline
                    }
                    if call % 3 == 0 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                })
                .unwrap();
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let mut input_of = HashMap::new();
            let ids: Vec<TaskId> = (0..60)
                .map(|n| {
                    let id = pool
                        .task(n)
                        .timeout(Duration::from_millis(5))
                        .retry(quick(4))
                        .tag(n)
                        .add_to(&mailbox)
                        .unwrap();
                    input_of.insert(id, n);
                    id
                })
                .collect();
            let got = collect_once(&endings, &ids);
            for (id, done) in &got {
                assert!((1..=4).contains(&done.attempts), "{done:?}");
                assert_eq!(done.tag, input_of[id], "{done:?}");
            }
            pool.join();
            assert_settled(pool.stats());
            assert!(endings.try_recv().is_err(), "an extra ending");
            pool.shutdown();
        }
    });
}

/// Retries keep to `max_per_key` (counted inside the callback, hung attempts included) and to
/// `min_interval_per_key` (starts of one key at least the interval apart).
#[test]
fn retries_keep_to_max_per_key_and_min_interval() {
    watchdog("keyed retries", || {
        for round in 0..2 {
            let interval = Duration::from_millis(10);
            let counts = Arc::new(Concurrency::default());
            let starts: Arc<Mutex<HashMap<u32, Vec<Instant>>>> = Arc::default();
            let calls = Arc::new(AtomicU32::new(0));
            let (s2, probe, c2) = (starts.clone(), counts.clone(), calls.clone());
            let builder = AsyncPool::builder().max_workers(6).max_abandoned(64);
            let builder = if round == 0 {
                builder.max_per_key(2)
            } else {
                builder.min_interval_per_key(interval)
            };
            let pool = builder
                .build(move |(key, i): (u32, u32)| -> Result<u32, u32> {
                    // Read first, before any lock the callbacks share: a callback waiting for
                    // a lock held by a descheduled one would record a start far too late.
                    let started = Instant::now();
                    s2.lock().unwrap().entry(key).or_default().push(started);
                    probe.enter(key);
                    let call = c2.fetch_add(1, SeqCst);
                    if call % 6 == 1 {
                        thread::sleep(Duration::from_millis(20)); // past its deadline
                    }
                    probe.leave(key);
                    if call % 2 == 0 {
                        Err(i)
                    } else {
                        Ok(i)
                    }
                })
                .unwrap();
            let (mailbox, endings): (Mailbox<Result<u32, u32>>, _) = unbounded();
            let began = Instant::now();
            let ids: Vec<TaskId> = (0..48)
                .map(|i| {
                    pool.task((i % 3, i))
                        .key(i % 3)
                        .timeout(Duration::from_millis(8))
                        .retry(quick(5))
                        .add_to(&mailbox)
                        .unwrap()
                })
                .collect();
            collect_once(&endings, &ids);
            pool.join();
            assert_settled(pool.stats());
            if round == 0 {
                let peak = counts.peak_per_key.load(SeqCst);
                assert!(peak <= 2, "max_per_key exceeded: {peak}");
            } else {
                for (key, starts) in starts.lock().unwrap().iter_mut() {
                    // The promise is about the instants the pool starts the callbacks; each is
                    // recorded some time after its start — under load, after the next start of
                    // its key, so two records can be closer than their starts, even
                    // microseconds apart. What holds whatever the delays: the first start
                    // comes after `began`, each next one at least `interval` after the one
                    // before, and no record precedes its start — so the k-th record (in time
                    // order) is at least k intervals after `began` (the check the keys module
                    // makes). Retries let through without the interval come far sooner.
                    starts.sort();
                    for (k, at) in starts.iter().enumerate() {
                        let since = *at - began;
                        assert!(
                            since >= interval * k as u32,
                            "key {key}: start {k} only {since:?} after the adds"
                        );
                    }
                }
            }
        }
    });
}

/// `cancel(id)` and `Task::cancel` race the timer re-admitting tasks: every task ends once,
/// and exactly the cancels that returned true end `Cancelled`.
#[test]
fn one_by_one_cancels_racing_readmission_end_each_task_once() {
    watchdog("cancel vs readmit", || {
        for _ in 0..5 {
            let pool = AsyncPool::builder()
                .max_workers(3)
                .max_per_key(1)
                .build(|n: u32| -> Result<u32, u32> { Err(n) })
                .unwrap();
            let policy = || Retry::attempts(40).backoff(MS, Duration::from_millis(2));
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let mut ids = Vec::new();
            let mut handles = Vec::new();
            for n in 0..40u32 {
                if n % 2 == 0 {
                    let submit = pool.task(n).retry(policy()).tag(n);
                    let submit = if n % 4 == 0 {
                        submit.key(n % 3)
                    } else {
                        submit
                    };
                    ids.push(submit.add_to(&mailbox).unwrap());
                } else {
                    handles.push(
                        pool.task(n)
                            .key(n % 5)
                            .retry(policy())
                            .tag(n)
                            .add()
                            .unwrap(),
                    );
                }
            }
            let canceller = pool.clone();
            let by_id_ids = ids.clone();
            let by_id = thread::spawn(move || {
                let mut cancelled = HashSet::new();
                for _ in 0..200 {
                    for id in &by_id_ids {
                        if canceller.cancel(*id) {
                            assert!(cancelled.insert(*id), "cancelled twice");
                        }
                    }
                }
                cancelled
            });
            let mut by_handle = HashSet::new();
            for _ in 0..200 {
                for task in &handles {
                    if task.cancel() {
                        assert!(by_handle.insert(task.id()), "cancelled twice");
                    }
                }
            }
            let by_id = by_id.join().unwrap();
            let got = collect_once(&endings, &ids);
            for (id, done) in &got {
                assert_eq!(is_cancelled(&done.result), by_id.contains(id), "{done:?}");
                assert_eq!(done.tag % 2, 0, "{done:?}");
            }
            for task in handles {
                let result = task.recv();
                assert_eq!(
                    is_cancelled(&result),
                    by_handle.contains(&task.id()),
                    "{result:?}"
                );
                assert_eq!(*task.tag() % 2, 1);
            }
            pool.join();
            assert_settled(pool.stats());
        }
    });
}

/// `cancel_all` racing back-offs, then `shutdown_now`: the inputs handed back are those of
/// tasks that ended `Cancelled`, none twice, and every `Cancelled` ending carries its input in
/// its tag.
#[test]
fn cancel_all_and_shutdown_now_racing_backoffs_account_for_every_input() {
    watchdog("bulk cancel vs backoff", || {
        for round in 0..6 {
            let pool = AsyncPool::builder()
                .max_workers(2)
                .max_per_key(2)
                .build(|n: u32| -> Result<u32, u32> {
                    if n % 7 == 0 {
                        Ok(n)
                    } else {
                        Err(n)
                    }
                })
                .unwrap();
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let mut input_of = HashMap::new();
            let mut ids = Vec::new();
            for n in 0..60u32 {
                let policy = Retry::attempts(30).backoff(MS, Duration::from_millis(3));
                let submit = pool.task(n).retry(policy).tag(n);
                let submit = if n % 3 == 0 {
                    submit.key(n % 4)
                } else {
                    submit
                };
                let id = submit.add_to(&mailbox).unwrap();
                input_of.insert(id, n);
                ids.push(id);
            }
            let mut returned: Vec<u32> = Vec::new();
            for _ in 0..round {
                returned.extend(pool.cancel_all());
                thread::yield_now();
            }
            returned.extend(pool.shutdown_now());
            let got = collect_once(&endings, &ids);
            for (id, done) in &got {
                assert_eq!(done.tag, input_of[id], "every ending carries its input");
            }
            let cancelled: HashSet<u32> = got
                .values()
                .filter(|done| is_cancelled(&done.result))
                .map(|done| done.tag)
                .collect();
            // Exactly the tasks that ended `Cancelled` came back, each once — a back-off that
            // came due as `shutdown_now` began (stopped by the pool itself) included.
            let mut once = HashSet::new();
            for input in &returned {
                assert!(once.insert(*input), "{input} came back twice");
            }
            assert_eq!(
                once, cancelled,
                "round {round}: handed back vs ended Cancelled"
            );
            let stats = pool.stats();
            assert_settled(stats);
            assert_eq!(stats.cancelled as usize, cancelled.len());
        }
    });
}

/// `shutdown_timeout` with tasks waiting to retry and attempts still running (some hung past
/// it): every task ends once, and the call returns in about its timeout.
#[test]
fn shutdown_timeout_with_backoffs_and_running_attempts_ends_each_task_once() {
    watchdog("shutdown_timeout", || {
        for _ in 0..3 {
            let (key, hang) = gate();
            let pool = AsyncPool::builder()
                .max_workers(3)
                .build(move |n: u32| -> Result<u32, u32> {
                    if n % 10 == 0 {
                        hang.wait();
                    }
                    Err(n)
                })
                .unwrap();
            // Declared after the pool: a failed assertion opens the gate before the pool's drop
            // waits for its tasks.
            let key = key;
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let ids: Vec<TaskId> = (0..30u32)
                .map(|n| {
                    let policy = Retry::attempts(5)
                        .backoff(Duration::from_millis(2), Duration::from_millis(400));
                    pool.task(n).retry(policy).tag(n).add_to(&mailbox).unwrap()
                })
                .collect();
            // Monotonic, unlike `waiting_retry`, whose moment may pass before anyone looks.
            eventually("some attempt failed", || pool.stats().retried > 0);
            let start = Instant::now();
            assert!(!pool.shutdown_timeout(Duration::from_millis(40)));
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{:?}",
                start.elapsed()
            );
            let got = collect_once(&endings, &ids);
            let mut tags: Vec<u32> = got.values().map(|done| done.tag).collect();
            for done in got.values() {
                assert!(done.result.clone().flat().is_err(), "{done:?}");
            }
            tags.sort_unstable();
            assert_eq!(tags, (0..30).collect::<Vec<_>>());
            assert_settled(pool.stats());
            drop(key);
        }
    });
}

/// `join()` from inside a task while other tasks retry: it returns once they all ended, and
/// it may run their attempts on its own thread meanwhile.
#[test]
fn join_from_inside_a_task_waits_for_retrying_tasks() {
    watchdog("join inside", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(1)
            .build_with(
                || (),
                move |cx, n: u32| -> Result<u32, u32> {
                    if n == 0 {
                        cx.pool().join();
                        // Everything else has ended.
                        let stats = cx.pool().stats();
                        return Ok((stats.completed + stats.panicked + stats.timed_out) as u32);
                    }
                    if c.fetch_add(1, SeqCst) % 3 != 2 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                },
            )
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<u32, u32>>, _) = unbounded();
        let ids: Vec<TaskId> = (1..=20u32)
            .map(|n| {
                pool.task(n)
                    .retry(Retry::attempts(10).backoff(MS, Duration::from_millis(4)))
                    .add_to(&mailbox)
                    .unwrap()
            })
            .collect();
        let joiner = pool.task(0).retry(quick(1)).add().unwrap();
        assert_eq!(
            joiner.recv(),
            Ok(Ok(20)),
            "join returned before the others ended"
        );
        collect_once(&endings, &ids);
        pool.join();
        assert_settled(pool.stats());
    });
}

/// Endings into a bounded(1) mailbox read slowly, from workers, the timer (deadlines) and
/// cancels: all arrive, once each.
#[test]
fn a_slowly_read_bounded_mailbox_gets_every_ending_once() {
    watchdog("bounded(1)", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(3)
            .max_abandoned(64)
            .build(move |n: u32| -> Result<u32, u32> {
                let call = c.fetch_add(1, SeqCst);
                if call % 4 == 0 {
                    thread::sleep(Duration::from_millis(15));
                }
                if call % 2 == 0 {
                    Err(n)
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = bounded(1);
        let ids: Vec<TaskId> = (0..50u32)
            .map(|n| {
                pool.task(n)
                    .timeout(Duration::from_millis(5))
                    .retry(quick(3))
                    .tag(n)
                    .add_to(&mailbox)
                    .unwrap()
            })
            .collect();
        for id in ids.iter().step_by(7) {
            pool.cancel(*id);
        }
        let mut seen = HashSet::new();
        let mut tags = HashSet::new();
        for _ in 0..ids.len() {
            thread::sleep(MS); // a slow reader (workload, not a sync)
            let done = endings.recv_timeout(Duration::from_secs(20)).unwrap();
            assert!(seen.insert(done.id), "two endings for one task");
            assert!(tags.insert(done.tag), "two endings for one input");
        }
        pool.join();
        assert!(endings.try_recv().is_err());
        assert_settled(pool.stats());
    });
}

/// Shrinking and growing the pool while tasks retry loses none of them.
#[test]
fn resizing_during_retries_loses_nothing() {
    watchdog("resize", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(4)
            .build(move |n: u32| -> Result<u32, u32> {
                let call = c.fetch_add(1, SeqCst);
                thread::sleep(Duration::from_micros(200));
                if call % 3 == 0 {
                    Ok(n)
                } else {
                    Err(n)
                }
            })
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<u32, u32>>, _) = unbounded();
        let ids: Vec<TaskId> = (0..120u32)
            .map(|n| {
                pool.task(n)
                    .retry(Retry::attempts(6).backoff(MS, Duration::from_millis(3)))
                    .add_to(&mailbox)
                    .unwrap()
            })
            .collect();
        let resizer = pool.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = thread::spawn(move || {
            let mut i = 0;
            while !s.load(SeqCst) {
                assert!(resizer.set_max_workers([1, 6, 2, 8][i % 4]));
                i += 1;
                thread::yield_now();
            }
            assert!(resizer.set_max_workers(3));
        });
        collect_once(&endings, &ids);
        stop.store(true, SeqCst);
        t.join().unwrap();
        pool.join();
        assert_settled(pool.stats());
        eventually("3 workers", || pool.stats().workers == 3);
    });
}

/// An elastic pool whose workers retire while tasks back off grows again for their retries.
#[test]
fn an_elastic_pool_grows_back_for_retries_after_its_workers_retired() {
    watchdog("elastic", || {
        let calls: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .min_workers(0)
            .max_workers(3)
            .keep_alive(Duration::from_millis(2))
            .queue_capacity(2)
            .build(move |n: u32| -> Result<u32, u32> {
                // Each input fails twice, then works.
                let mut calls = c.lock().unwrap();
                let seen = calls.entry(n).or_default();
                *seen += 1;
                if *seen % 3 != 0 {
                    Err(n)
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        for round in 0..3 {
            let (mailbox, endings): (Mailbox<Result<u32, u32>>, _) = unbounded();
            let ids: Vec<TaskId> = (0..12u32)
                .map(|n| {
                    // Long enough back-offs for idle workers to retire meanwhile.
                    let policy = Retry::attempts(4)
                        .backoff(Duration::from_millis(20), Duration::from_millis(40));
                    pool.task(n).retry(policy).add_to(&mailbox).unwrap()
                })
                .collect();
            let got = collect_once(&endings, &ids);
            assert!(
                got.values()
                    .all(|done| done.result.clone().flat().is_ok() && done.attempts == 3),
                "round {round}: {got:?}"
            );
            pool.join();
            assert_settled(pool.stats());
            eventually("workers retire", || pool.stats().workers == 0);
        }
    });
}

/// A panic payload whose `Drop` panics, and a callback error whose `Drop` panics, through
/// retries: the pool keeps its workers, and the task ends with its tag.
#[test]
fn payloads_and_errors_that_panic_on_drop_through_retries() {
    struct BadPayload;
    impl Drop for BadPayload {
        fn drop(&mut self) {
            panic!("payload drop");
        }
    }
    #[derive(Debug)]
    struct BadError(#[allow(dead_code)] u32);
    impl Drop for BadError {
        fn drop(&mut self) {
            if !thread::panicking() {
                panic!("error drop");
            }
        }
    }
    watchdog("drop panics", || {
        let pool = AsyncPool::builder()
            .max_workers(2)
            .max_abandoned(8)
            .build(|n: u32| -> Result<u32, BadError> {
                match n % 3 {
                    0 => std::panic::panic_any(BadPayload),
                    1 => Err(BadError(n)),
                    _ => {
                        thread::sleep(Duration::from_millis(15));
                        std::panic::panic_any(BadPayload)
                    }
                }
            })
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<u32, BadError>, u32>, _) = unbounded();
        let mut input_of = HashMap::new();
        let ids: Vec<TaskId> = (0..18u32)
            .map(|n| {
                let id = pool
                    .task(n)
                    .timeout(Duration::from_millis(5))
                    .retry(quick(3))
                    .tag(n)
                    .add_to(&mailbox)
                    .unwrap();
                input_of.insert(id, n);
                id
            })
            .collect();
        let got = collect_once(&endings, &ids);
        for (id, done) in got {
            assert_eq!(done.attempts, 3);
            assert_eq!(done.tag, input_of[&id]);
            assert!(!matches!(done.result, Ok(Ok(_))));
            // Its `Drop` panics: do not run it.
            std::mem::forget(done.result);
        }
        pool.join();
        assert_settled(pool.stats());
        assert_eq!(pool.stats().workers, 2);
    });
}

/// Dropping the last owning `AsyncPool` while tasks wait to retry: the drop waits for their
/// last attempts, and every `Task` gets its real ending (not the "lost" stand-in).
#[test]
fn dropping_the_pool_while_tasks_wait_to_retry_delivers_every_ending() {
    watchdog("drop while backing off", || {
        for from_inside in [false, true] {
            let calls: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
            let c = calls.clone();
            let slot: PoolSlot = Arc::default();
            let inner = slot.clone();
            let pool = AsyncPool::new(2, move |n: u32| -> Result<u32, u32> {
                if n == 999 {
                    // The last owner is dropped on a worker: it must not wait for itself.
                    drop(inner.lock().unwrap().take());
                    return Ok(n);
                }
                let mut calls = c.lock().unwrap();
                let seen = calls.entry(n).or_default();
                *seen += 1;
                if *seen < 3 {
                    Err(n)
                } else {
                    Ok(n)
                }
            })
            .unwrap();
            let tasks: Vec<_> = (0..10u32)
                .map(|n| {
                    let policy = Retry::attempts(3)
                        .backoff(Duration::from_millis(10), Duration::from_millis(30));
                    pool.task(n).retry(policy).tag(n).add().unwrap()
                })
                .collect();
            // Monotonic, unlike `waiting_retry`, whose moment may pass before anyone looks.
            eventually("some attempt failed", || pool.stats().retried > 0);
            if from_inside {
                let last = pool.task(999).retry(quick(1)).add().unwrap();
                *slot.lock().unwrap() = Some(pool);
                assert_eq!(last.recv(), Ok(Ok(999)));
            } else {
                drop(pool);
            }
            for task in tasks {
                // `receiver()`: a disconnected channel (an ending lost) shows as an error here.
                let result = task
                    .receiver()
                    .recv_timeout(Duration::from_secs(10))
                    .expect("ending lost");
                assert_eq!(
                    (task.attempts(), result),
                    (3, Ok(Ok(*task.tag()))),
                    "from inside: {from_inside}"
                );
            }
        }
    });
}

/// A callback adds retried work to its own pool through its handle (`cx.pool()`); every task
/// of the tree ends once, with its tag, and adds after the pool is gone hand the input back.
#[test]
fn a_callback_adds_retried_work_through_its_handle() {
    watchdog("handle retry", || {
        type Node = (u32, u32);
        let (mailbox, endings): (Mailbox<Result<u32, u32>, Node>, _) = unbounded();
        let mb = mailbox.clone();
        let calls: Arc<Mutex<HashMap<Node, u32>>> = Arc::default();
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(2)
            .build_with(
                || (),
                move |cx, (depth, n): Node| -> Result<u32, u32> {
                    let first = {
                        let mut calls = c.lock().unwrap();
                        let seen = calls.entry((depth, n)).or_default();
                        *seen += 1;
                        *seen == 1
                    };
                    if first {
                        // Children are added by the first attempt only; it then fails.
                        if depth < 3 {
                            for k in 0..3 {
                                let child = (depth + 1, n * 3 + k);
                                cx.pool()
                                    .task(child)
                                    .key(k)
                                    .retry(quick(3))
                                    .tag(child)
                                    .add_to(&mb)
                                    .unwrap();
                            }
                        }
                        return Err(n);
                    }
                    Ok(n)
                },
            )
            .unwrap();
        pool.task((0, 0))
            .retry(quick(3))
            .tag((0, 0))
            .add_to(&mailbox)
            .unwrap();
        pool.join();
        // 1 + 3 + 9 + 27 tasks, each ended Ok on its second attempt.
        let mut seen = HashSet::new();
        let mut nodes = HashSet::new();
        while let Ok(done) = endings.try_recv() {
            assert!(seen.insert(done.id));
            assert!(nodes.insert(done.tag), "{done:?}");
            assert_eq!(
                (done.attempts, done.result.clone()),
                (2, Ok(Ok(done.tag.1))),
                "{done:?}"
            );
        }
        assert_eq!(seen.len(), 40);
        assert_eq!(nodes.iter().filter(|(depth, _)| *depth == 3).count(), 27);
        assert_settled(pool.stats());
        let handle = pool.handle();
        pool.shutdown();
        let refused = handle
            .task((9, 9))
            .retry(quick(2))
            .tag((9, 9))
            .add_to(&mailbox)
            .unwrap_err();
        assert_eq!(refused.into_inner(), (9, 9));
    });
}

#[test]
fn a_timed_out_attempts_token_stays_cancelled_while_the_retry_runs() {
    watchdog("token of a retried attempt", || {
        let (saw_tx, saw) = unbounded::<&'static str>();
        let (report_tx, report) = unbounded::<bool>();
        let (check_key, check) = gate();
        let (finish_key, finish) = gate();
        let calls = Arc::new(AtomicU32::new(0));
        let pool = AsyncPool::builder()
            .max_workers(2)
            .build_with(
                || (),
                move |cx, n: u32| -> Result<u32, u32> {
                    if calls.fetch_add(1, SeqCst) == 0 {
                        // Attempt 1: runs until told to stop (its deadline passes).
                        while !cx.token().is_cancelled() {
                            thread::sleep(MS); // one more page
                        }
                        saw_tx.send("attempt 1 cancelled").unwrap();
                        check.wait();
                        report_tx.send(cx.token().is_cancelled()).unwrap();
                        return Err(n);
                    }
                    saw_tx.send("attempt 2 running").unwrap();
                    finish.wait();
                    Ok(n)
                },
            )
            .unwrap();
        // Declared after the pool: a failed assertion opens the gates before the pool's drop
        // waits for its tasks.
        let (check_key, finish_key) = (check_key, finish_key);
        let task = pool
            .task(1)
            // Attempt 2 runs under it too, until attempt 1 has reported: long enough for that
            // on a loaded machine.
            .timeout(Duration::from_secs(1))
            // A back-off long enough for attempt 1 to see its token raised meanwhile.
            .retry(
                Retry::attempts(3)
                    .backoff(Duration::from_millis(30), Duration::from_millis(30))
                    .jitter(false),
            )
            .add()
            .unwrap();
        let mut seen = vec![saw.recv().unwrap(), saw.recv().unwrap()];
        seen.sort_unstable();
        assert_eq!(seen, ["attempt 1 cancelled", "attempt 2 running"]);
        check_key.pass(1);
        let still_cancelled = report.recv().unwrap();
        finish_key.pass(1);
        assert_eq!(task.recv(), Ok(Ok(1)));
        assert!(
            still_cancelled,
            "attempt 1's token read `not cancelled` once attempt 2 started"
        );
    });
}

#[test]
fn join_inside_a_retried_task_is_excused_on_its_next_attempt() {
    // Attempt 1 joins while another task is held on a gate, and times out; attempt 2 (on a
    // replacement worker) joins too. The gate opens only once attempt 2 has started, so the
    // other task ends well within attempt 2's deadline: attempt 2's join must return then, and
    // the task end Ok after 2 attempts. (With a sleeping task instead of the gate, a loaded
    // machine could start the joiner late enough for attempt 1's join to return in time, or
    // end the sleep past attempt 2's deadline.)
    const DEADLINE: Duration = Duration::from_millis(400);
    watchdog("joiner retried", || {
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            let (key, gate) = gate();
            let (entered, attempts) = unbounded();
            let pool = AsyncPool::builder()
                .max_workers(3)
                .max_abandoned(8)
                .build_with(
                    || (),
                    move |cx, n: u32| -> Result<u32, u32> {
                        if n == 1 {
                            gate.wait(); // the workload, until attempt 2 has started
                            return Ok(1);
                        }
                        let _ = entered.send(());
                        cx.pool().join();
                        Ok(0)
                    },
                )
                .unwrap();
            // Declared after the pool: a failed assertion opens the gate before the pool's
            // drop waits for its tasks.
            let mut key = key;
            let other = pool.add_task(1).unwrap();
            let joiner = pool
                .task(0)
                .timeout(DEADLINE)
                .retry(quick(3))
                .add()
                .unwrap();
            // Attempt 1, then attempt 2: attempt 1 cannot have returned (the gate is shut), so
            // it timed out.
            for attempt in 1..=2 {
                crossbeam_channel::select! {
                    recv(attempts) -> started => started.unwrap(),
                    recv(joiner.receiver()) -> done => {
                        panic!("the task ended before attempt {attempt} started: {done:?}")
                    }
                }
            }
            key.open();
            let result = joiner.recv();
            outcomes.push((joiner.attempts(), result.flat().is_ok()));
            other.recv().unwrap().unwrap();
        }
        assert!(
            outcomes.iter().all(|o| *o == (2, true)),
            "(attempts, ok) per run: {outcomes:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// ThreadPool: retried `Clone` closures with keys, deadlines and tags, attacked.
// ---------------------------------------------------------------------------------------------

/// Keyed, timed, tagged, retried closures that fail, panic and hang past their deadline, while
/// another thread cancels them by id as they back off: every task ends once, with its tag;
/// exactly the cancels that returned true end `Cancelled`; `max_per_key` holds for every
/// attempt (hung ones included); the counters settle.
#[test]
fn keyed_timed_tagged_closure_retries_racing_cancel_by_id_end_once_each() {
    watchdog("closure retries vs cancel", || {
        for round in 0..4u32 {
            let counts = Arc::new(Concurrency::default());
            let calls = Arc::new(AtomicU32::new(0));
            let pool = ThreadPool::builder()
                .max_workers(4)
                .max_per_key(2)
                .max_abandoned(64)
                .build()
                .unwrap();
            let job = |n: u32| {
                let (counts, calls) = (counts.clone(), calls.clone());
                move || -> Result<u32, u32> {
                    let key = n % 3;
                    counts.enter(key);
                    let call = calls.fetch_add(1, SeqCst);
                    if call % 5 == 0 {
                        thread::sleep(Duration::from_millis(15)); // past its deadline
                    }
                    counts.leave(key);
                    match call % 4 {
                        1 => panic!("attempt {call} of {n}"),
                        2 | 3 => Err(n),
                        _ => Ok(n),
                    }
                }
            };
            let policy = || Retry::attempts(6).backoff(MS, Duration::from_millis(3));
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let mut ids = Vec::new();
            let mut input_of = HashMap::new();
            let mut handles = Vec::new();
            for n in 0..40u32 {
                let submit = pool
                    .task(job(n))
                    .key(n % 3)
                    .timeout(Duration::from_millis(5))
                    .retry(policy())
                    .tag(n);
                if n % 2 == round % 2 {
                    let id = submit.add_to(&mailbox).unwrap();
                    input_of.insert(id, n);
                    ids.push(id);
                } else {
                    handles.push(submit.add().unwrap());
                }
            }
            // Half the tasks are left alone, to end on their own; the canceller goes at the
            // other half once attempts have begun to fail and back off.
            let canceller = pool.clone();
            let targets: Vec<TaskId> = ids
                .iter()
                .copied()
                .chain(handles.iter().map(|task| task.id()))
                .step_by(2)
                .collect();
            eventually("an attempt failed", || pool.stats().retried > 0);
            let by_id = thread::spawn(move || {
                let mut cancelled = HashSet::new();
                for _ in 0..100 {
                    for id in &targets {
                        if canceller.cancel(*id) {
                            assert!(cancelled.insert(*id), "cancelled twice");
                        }
                    }
                    thread::sleep(Duration::from_micros(200)); // spread over the back-offs
                }
                cancelled
            });
            let by_id = by_id.join().unwrap();
            let got = collect_once(&endings, &ids);
            for (id, done) in &got {
                assert_eq!(done.tag, input_of[id]);
                assert_eq!(is_cancelled(&done.result), by_id.contains(id), "{done:?}");
                assert!(done.attempts <= 6, "{done:?}");
                if let Ok(Ok(n)) = done.result {
                    assert_eq!(n, done.tag);
                }
            }
            for task in &handles {
                let result = task.recv();
                assert_eq!(
                    is_cancelled(&result),
                    by_id.contains(&task.id()),
                    "{result:?}"
                );
                assert!(task.attempts() <= 6);
                if let Ok(Ok(n)) = result {
                    assert_eq!(n, *task.tag());
                }
            }
            let peak = counts.peak_per_key.load(SeqCst);
            assert!(
                peak <= 2,
                "round {round}: a key ran {peak} attempts at once"
            );
            pool.join();
            let stats = pool.stats();
            assert_settled(stats);
            assert_eq!(stats.cancelled as usize, by_id.len());
        }
    });
}

/// `cancel_all`, then `shutdown_now`, racing closures that back off: the closures handed back
/// are those of tasks that ended `Cancelled`, each once, unrun; calling one runs that task's
/// next attempt here.
#[test]
fn shutdown_now_racing_closure_backoffs_hands_each_unrun_closure_back_once() {
    watchdog("closures back vs backoff", || {
        for round in 0..5 {
            let pool = ThreadPool::builder()
                .max_workers(2)
                .max_per_key(2)
                .build()
                .unwrap();
            let replaying = Arc::new(AtomicBool::new(false));
            let replayed = Arc::new(Mutex::new(Vec::new()));
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
            let mut ids = Vec::new();
            for n in 0..50u32 {
                let (replaying, replayed) = (replaying.clone(), replayed.clone());
                let closure = move || -> Result<u32, u32> {
                    if replaying.load(SeqCst) {
                        replayed.lock().unwrap().push(n);
                    }
                    if n % 7 == 0 {
                        Ok(n)
                    } else {
                        Err(n)
                    }
                };
                let submit = pool
                    .task(closure)
                    .retry(Retry::attempts(30).backoff(MS, Duration::from_millis(3)))
                    .tag(n);
                let submit = if n % 3 == 0 {
                    submit.key(n % 4)
                } else {
                    submit
                };
                ids.push(submit.add_to(&mailbox).unwrap());
            }
            // Attempts have begun to fail: some closures back off on the timer, some are
            // queued, some run.
            eventually("an attempt failed", || pool.stats().retried > 0);
            let mut back = Vec::new();
            for _ in 0..round {
                back.extend(pool.cancel_all());
                thread::yield_now();
            }
            back.extend(pool.shutdown_now());
            let got = collect_once(&endings, &ids);
            let cancelled: HashSet<u32> = got
                .values()
                .filter(|done| is_cancelled(&done.result))
                .map(|done| done.tag)
                .collect();
            let stats = pool.stats();
            assert_settled(stats);
            assert_eq!(stats.cancelled as usize, cancelled.len());
            assert_eq!(stats.workers, 0);
            // Nothing runs on the pool any more: every call from here is a closure handed back.
            replaying.store(true, SeqCst);
            let count = back.len();
            back.into_iter().for_each(|unrun| unrun());
            let replayed = replayed.lock().unwrap();
            assert_eq!(replayed.len(), count);
            let mut once = HashSet::new();
            for n in replayed.iter() {
                assert!(once.insert(*n), "{n} came back twice");
                assert!(
                    cancelled.contains(n),
                    "{n} came back but did not end Cancelled"
                );
            }
        }
    });
}

/// A `when` function that panics gives up, on a `ThreadPool` too: on the worker (the closure
/// returned `Err` or panicked) and on the timer (the attempt ran past its deadline). The pool
/// and its timer go on.
#[test]
fn a_panicking_when_function_gives_up_a_closure_on_the_worker_and_at_its_deadline() {
    watchdog("closure when panics", || {
        let (key, hang) = gate();
        let pool = ThreadPool::builder()
            .max_workers(2)
            .max_abandoned(4)
            .build()
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let policy = || {
            Retry::<&'static str>::attempts(4)
                .backoff(MS, MS)
                .when(|_| panic!("the policy panics"))
        };
        // Calls of each closure: at most one each, since nothing is retried.
        let calls: [Arc<AtomicU32>; 3] = Default::default();
        let counted = |calls: &Arc<AtomicU32>, outcome: fn() -> Result<u32, &'static str>| {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, SeqCst);
                outcome()
            }
        };
        let erring = pool
            .task(counted(&calls[0], || Err("no")))
            .retry(policy())
            .tag("err")
            .add()
            .unwrap();
        let panicking = pool
            .task(counted(&calls[1], || panic!("boom")))
            .retry(policy())
            .tag("panic")
            .add()
            .unwrap();
        let hung = {
            let calls = calls[2].clone();
            pool.task(move || -> Result<u32, &'static str> {
                calls.fetch_add(1, SeqCst);
                hang.wait();
                Ok(0)
            })
            .timeout(Duration::from_millis(20))
            .retry(policy())
            .tag("hung")
            .add()
            .unwrap()
        };
        let endings = [&erring, &panicking, &hung]
            .map(|task| (task.recv_timeout(SHORT), task.attempts(), *task.tag()));
        if endings.iter().any(|(ending, ..)| ending.is_err()) {
            // A graceful drop would wait for the lost tasks for ever.
            drop(key);
            std::mem::forget(pool);
            panic!("a task never ended: {endings:?}");
        }
        assert_eq!(
            endings,
            [
                (Ok(Ok(Err("no"))), 1, "err"),
                (Ok(Err(TaskError::Panicked("boom".into()))), 1, "panic"),
                (Ok(Err(TaskError::TimedOut)), 1, "hung"),
            ]
        );
        // The hung closure's thread may be timed out before it gets to count its call (its
        // deadline runs from the attempt's start): wait for that one call.
        eventually("the hung closure ran", || calls[2].load(SeqCst) == 1);
        // The timer still fires deadlines and retries.
        let after = pool
            .task(|| -> Result<u32, &'static str> { Err("again") })
            .retry(quick(2))
            .add()
            .unwrap();
        assert_eq!(
            (after.recv_timeout(SHORT), after.attempts()),
            (Ok(Ok(Err("again"))), 2)
        );
        drop(key);
        let calls = [0, 1, 2].map(|i| calls[i].load(SeqCst));
        assert_eq!(calls, [1, 1, 1], "nothing ran again");
    });
}

/// Retried closures in a loop with a bounded mailbox read slowly, deadlines, keys and a
/// graceful shutdown while they back off: the shutdown waits for every last attempt, and
/// every ending arrives once with its tag.
#[test]
fn a_graceful_shutdown_waits_for_closures_backing_off_into_a_bounded_mailbox() {
    watchdog("closures, bounded mailbox, shutdown", || {
        for round in 0..3u32 {
            let pool = ThreadPool::builder()
                .max_workers(3)
                .max_per_key(1)
                .max_abandoned(32)
                .build()
                .unwrap();
            let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
            let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = bounded(1);
            let mut ids = Vec::new();
            for n in 0..30u32 {
                let attempts = attempts.clone();
                let closure = move || -> Result<u32, u32> {
                    let attempt = {
                        let mut attempts = attempts.lock().unwrap();
                        let seen = attempts.entry(n).or_default();
                        *seen += 1;
                        *seen
                    };
                    if n % 5 == round && attempt == 1 {
                        thread::sleep(Duration::from_millis(150)); // past its deadline
                    }
                    if attempt < 3 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                };
                let id = pool
                    .task(closure)
                    .key(n % 4)
                    // Far above what an attempt that does not sleep takes, even on a loaded
                    // machine: only the sleeping attempts time out.
                    .timeout(Duration::from_millis(100))
                    .retry(
                        Retry::attempts(3)
                            .backoff(Duration::from_millis(2), Duration::from_millis(8)),
                    )
                    .tag(n)
                    .add_to(&mailbox)
                    .unwrap();
                ids.push(id);
            }
            let closer = pool.clone();
            let shutdown = thread::spawn(move || closer.shutdown());
            let mut tags = HashSet::new();
            let mut seen = HashSet::new();
            for _ in 0..ids.len() {
                let done = match endings.recv_timeout(Duration::from_secs(20)) {
                    Ok(done) => done,
                    Err(RecvTimeoutError::Timeout) => panic!("an ending never arrived"),
                    Err(RecvTimeoutError::Disconnected) => unreachable!("we hold the mailbox"),
                };
                assert!(seen.insert(done.id) && tags.insert(done.tag), "{done:?}");
                assert_eq!(
                    (done.attempts, done.result.clone()),
                    (3, Ok(Ok(done.tag))),
                    "{done:?}"
                );
            }
            shutdown.join().unwrap();
            assert!(endings.try_recv().is_err(), "an extra ending");
            assert_eq!(tags.len(), 30);
            let stats = pool.stats();
            assert_settled(stats);
            assert_eq!((stats.completed, stats.retried), (30, 60));
        }
    });
}
