//! Cancelling tasks that have not started: one, by id, all, and at shutdown; what
//! `cancel_all` and `shutdown_now` hand back on both faces.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, Mailbox, TaskError, TaskId, ThreadPool};

use crate::support::{eventually, gate, gated, id_result, threads_named, watchdog};

/// A mailbox message as the pair an event loop matches on.
#[test]
fn a_queued_task_cancels_and_never_runs() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(1));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.add_task(1).unwrap();
    eventually("first task running", || running.is_running());
    let queued = pool.add_task(2).unwrap();
    assert!(queued.cancel());
    assert!(!queued.cancel(), "cancelled once");
    assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    assert_eq!(queued.attempts(), 0, "it never started");
    assert!(!running.cancel(), "a running task cannot be cancelled");
    key.open();
    assert_eq!(running.recv(), Ok(1));
    assert!(!running.cancel(), "nor an ended one");
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled, stats.queued), (1, 1, 0));
}

#[test]
fn a_mailbox_task_cancels_by_id() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(1));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let running = pool.add_task_to(1, &mailbox).unwrap();
    eventually("first task running", || pool.stats().busy == 1);
    let queued = pool.add_task_to(2, &mailbox).unwrap();
    assert!(pool.cancel(queued));
    let cancelled = results.recv().unwrap();
    assert_eq!(cancelled.attempts, 0, "it never started");
    assert_eq!(id_result(cancelled), (queued, Err(TaskError::Cancelled)));
    assert!(!pool.cancel(running));
    key.open();
    assert_eq!(id_result(results.recv().unwrap()), (running, Ok(1)));
    assert!(!pool.cancel(queued), "already ended");
}

#[test]
fn cancel_all_hands_back_every_unstarted_input_and_keeps_the_pool_open() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(2));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running: Vec<_> = (0..2).map(|n| pool.add_task(n).unwrap()).collect();
    eventually("two running", || pool.stats().busy == 2);
    let queued: Vec<_> = (2..20).map(|n| pool.add_task(n).unwrap()).collect();
    assert!(queued[3].cancel());
    let mut expected: Vec<u32> = (2..20).collect();
    expected.retain(|&n| n != 5);
    assert_eq!(pool.cancel_all(), expected);
    for task in &queued {
        assert_eq!(task.recv(), Err(TaskError::Cancelled));
    }
    key.open();
    for (n, task) in running.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
    assert!(!pool.is_shut_down());
    assert_eq!(pool.add_task(99).unwrap().recv(), Ok(99));
    assert_eq!(pool.stats().cancelled, 18);
}

#[test]
fn thread_pool_cancel_all_hands_back_the_closures_unrun() {
    // Was `cancel_all() -> usize`: the count is the length of what comes back.
    let (key, gate) = gate();
    let pool = ThreadPool::new(1).unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let running = pool.spawn(move || gate.wait()).unwrap();
    eventually("running", || running.is_running());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let queued: Vec<_> = (0..5)
        .map(|n| {
            let ran = ran.clone();
            pool.spawn(move || {
                ran.lock().unwrap().push(n);
                n
            })
            .unwrap()
        })
        .collect();
    let unrun = pool.cancel_all();
    assert_eq!(unrun.len(), 5);
    key.pass(1);
    assert!(queued.iter().all(|t| t.recv() == Err(TaskError::Cancelled)));
    assert_eq!(running.recv(), Ok(()));
    pool.join();
    assert!(
        ran.lock().unwrap().is_empty(),
        "none of them ran in the pool"
    );
    // Called, each runs on the calling thread, in the order they were added; its task has
    // already ended, so its result goes nowhere.
    let caller = std::thread::current().id();
    for closure in unrun {
        closure();
        assert_eq!(std::thread::current().id(), caller);
    }
    assert_eq!(*ran.lock().unwrap(), [0, 1, 2, 3, 4]);
    let stats = pool.stats();
    assert_eq!(
        (stats.cancelled, stats.completed),
        (5, 1),
        "calling them counts nothing"
    );
}

#[test]
fn thread_pool_shutdown_now_hands_back_closures_that_run_when_called() {
    watchdog("shutdown_now on a thread pool", || {
        let (key, gate) = gate();
        let pool = ThreadPool::builder().max_workers(1).build().unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let calls = Arc::new(AtomicUsize::new(0));
        let running = pool.spawn(move || gate.wait()).unwrap();
        eventually("running", || running.is_running());
        // Queued closures of several output types, keyed, timed and tagged: all unrun.
        let (mailbox, results): (Mailbox<String, &str>, _) = unbounded();
        let counted = |value: u32| {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, SeqCst);
                value
            }
        };
        let plain = pool.spawn(counted(1)).unwrap();
        let keyed = pool.task(counted(2)).key("k").add().unwrap();
        let timed = pool
            .task(counted(3))
            .timeout(Duration::from_secs(60))
            .add()
            .unwrap();
        let mailed = {
            let calls = calls.clone();
            pool.task(move || {
                calls.fetch_add(1, SeqCst);
                "mailed".to_string()
            })
            .tag("mailed")
            .add_to(&mailbox)
            .unwrap()
        };
        let stopper = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.shutdown_now())
        };
        for task in [&plain, &keyed, &timed] {
            assert_eq!(task.recv(), Err(TaskError::Cancelled));
        }
        let done = results.recv().unwrap();
        assert_eq!((done.id, done.tag, done.attempts), (mailed, "mailed", 0));
        assert_eq!(done.result, Err(TaskError::Cancelled));
        key.pass(1);
        let unrun = stopper.join().unwrap();
        assert_eq!(running.recv(), Ok(()));
        assert_eq!(unrun.len(), 4);
        assert_eq!(calls.load(SeqCst), 0, "none ran");
        for closure in unrun {
            closure();
        }
        assert_eq!(calls.load(SeqCst), 4, "each ran once, when called");
        // Their handles and the mailbox saw one ending each, before: nothing more comes.
        assert_eq!(
            plain.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        );
        assert!(results.try_recv().is_err());
        assert!(pool.is_shut_down());
    });
}

#[test]
fn a_cancelled_task_frees_its_place_in_a_bounded_queue() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(1).queue_capacity(1));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.add_task(0).unwrap();
    eventually("running", || running.is_running());
    let queued = pool.add_task(1).unwrap();
    assert!(pool.task(2).try_add().unwrap_err().is_full());
    assert!(queued.cancel());
    let next = pool
        .task(3)
        .try_add()
        .expect("the cancelled task's place is free");
    key.open();
    assert_eq!(next.recv(), Ok(3));
    assert_eq!(running.recv(), Ok(0));
}

#[test]
fn shutdown_timeout_returns_true_when_everything_ends_in_time() {
    let pool = AsyncPool::new(2, |n: u32| n).unwrap();
    let tasks: Vec<_> = (0..10).map(|n| pool.add_task(n).unwrap()).collect();
    assert!(pool.shutdown_timeout(Duration::from_secs(60)));
    assert!(tasks.iter().all(|t| t.recv().is_ok()));
}

#[test]
fn shutdown_timeout_cancels_the_queue_and_abandons_what_still_runs() {
    let (release, stuck) = bounded::<()>(0);
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("sdt")
        .build_with(
            || (),
            move |cx, n: u32| {
                if n == 0 {
                    let _ = stuck.recv();
                    assert!(cx.token().is_cancelled(), "the token was raised");
                }
                n
            },
        )
        .unwrap();
    let running = pool.add_task(0).unwrap();
    eventually("running", || running.is_running());
    let queued = pool.add_task(1).unwrap();
    let finished = watchdog("shutdown_timeout", {
        let pool = pool.clone();
        move || pool.shutdown_timeout(Duration::from_millis(50))
    });
    assert!(!finished);
    assert_eq!(running.recv(), Err(TaskError::TimedOut));
    assert_eq!(queued.recv(), Err(TaskError::Cancelled));
    let stats = pool.stats();
    assert_eq!(
        (stats.timed_out, stats.cancelled, stats.abandoned),
        (1, 1, 1)
    );
    drop(release);
    eventually("the abandoned thread leaves", || threads_named("sdt") == 0);
    assert_eq!(pool.stats().abandoned, 0);
}

#[test]
fn shutdown_now_raises_every_cancel_token() {
    let (saw_tx, saw_rx) = unbounded();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .build_with(
            || (),
            move |cx, _: u32| {
                while !cx.token().is_cancelled() {
                    std::thread::yield_now();
                }
                saw_tx.send(()).unwrap();
            },
        )
        .unwrap();
    let tasks: Vec<_> = (0..2).map(|n| pool.add_task(n).unwrap()).collect();
    eventually("both running", || pool.stats().busy == 2);
    let unstarted = watchdog("shutdown_now with cooperative tasks", {
        let pool = pool.clone();
        move || pool.shutdown_now()
    });
    assert!(unstarted.is_empty());
    assert_eq!(saw_rx.try_iter().count(), 2);
    assert!(tasks.iter().all(|t| t.recv() == Ok(())));
}

#[test]
fn a_keyed_task_moving_from_its_key_into_the_queue_is_still_cancelled() {
    // One worker, held by a task of another key. 200 tasks of key "j": the first queued, the
    // rest waiting on the key. Two threads cancel them all, in opposite orders: each cancel of
    // a queued task lets the next one of the key into the queue while the other thread may be
    // cancelling that very task. None of them can start, so every one is cancelled exactly
    // once — none slips between "waiting" and "queued" uncancelled.
    for _ in 0..20 {
        let (key, gate) = gate();
        let pool = AsyncPool::builder()
            .max_workers(1)
            .max_per_key(1)
            .build(move |n: u32| {
                if n == 0 {
                    gate.wait();
                }
                n
            })
            .unwrap();
        let mut key = key;
        let held = pool.task(0).key("k").add().unwrap();
        eventually("the worker is held", || held.is_running());
        let (mailbox, _results): (Mailbox<u32>, _) = unbounded();
        let ids: Vec<_> = (1..=200u32)
            .map(|n| pool.task(n).key("j").add_to(&mailbox).unwrap())
            .collect();
        let cancel_all_of = |ids: Vec<TaskId>| {
            let pool = pool.clone();
            std::thread::spawn(move || ids.into_iter().filter(|id| pool.cancel(*id)).count())
        };
        let forward = cancel_all_of(ids.clone());
        let backward = cancel_all_of(ids.into_iter().rev().collect());
        let cancelled = forward.join().unwrap() + backward.join().unwrap();
        assert_eq!(
            cancelled, 200,
            "a task that never started escaped its cancel"
        );
        key.open();
        assert_eq!(held.recv(), Ok(0));
        pool.join();
        assert_eq!(pool.stats().completed, 1);
    }
}

#[test]
fn cancels_racing_the_workers_end_every_task_exactly_once() {
    // Tasks are cancelled one by one on this thread while another thread calls `cancel_all`
    // and the workers take what they can: every task ends once, `Cancelled` exactly when one
    // of the cancels claimed it (its `cancel` returned true, or `cancel_all` handed its input
    // back), and never both.
    for round in 0..30u32 {
        watchdog("cancels racing the workers", move || {
            let pool = AsyncPool::builder()
                .max_workers(2)
                .max_per_key(1)
                .build(|n: u32| n)
                .unwrap();
            let closures = ThreadPool::new(1).unwrap();
            let tasks: Vec<_> = (0..200u32)
                .map(|n| match n % 4 {
                    0 => pool.add_task(n).unwrap(),
                    1 => pool.task(n).key(n % 3).add().unwrap(),
                    2 => closures.spawn(move || n).unwrap(),
                    _ => pool.task(n).timeout(Duration::from_secs(60)).add().unwrap(),
                })
                .collect();
            let canceller = {
                let (pool, closures) = (pool.clone(), closures.clone());
                std::thread::spawn(move || (pool.cancel_all(), closures.cancel_all()))
            };
            let mut by_handle = HashSet::new();
            for (n, task) in tasks.iter().enumerate() {
                if (n as u32 + round) % 3 == 0 && task.cancel() {
                    by_handle.insert(n as u32);
                }
            }
            let (inputs, unrun) = canceller.join().unwrap();
            let unrun_count = unrun.len();
            drop(unrun); // never called: their tasks already ended Cancelled
            let by_cancel_all: HashSet<u32> = inputs.into_iter().collect();
            assert!(
                by_cancel_all.is_disjoint(&by_handle),
                "round {round}: claimed twice"
            );
            let mut cancelled_closures = 0;
            for (n, task) in tasks.iter().enumerate() {
                let n = n as u32;
                match task.recv() {
                    Ok(value) => {
                        assert_eq!(value, n, "round {round}");
                        assert!(!by_handle.contains(&n) && !by_cancel_all.contains(&n));
                    }
                    Err(TaskError::Cancelled) => {
                        if n % 4 == 2 && !by_handle.contains(&n) {
                            cancelled_closures += 1;
                        } else {
                            assert!(
                                by_handle.contains(&n) ^ by_cancel_all.contains(&n),
                                "round {round}: task {n} cancelled, but no cancel claimed it"
                            );
                        }
                        assert_eq!(task.attempts(), 0, "round {round}: task {n} started");
                    }
                    other => panic!("round {round}: task {n} ended {other:?}"),
                }
            }
            assert_eq!(cancelled_closures, unrun_count, "round {round}");
            pool.join();
            closures.join();
            let (a, c) = (pool.stats(), closures.stats());
            assert_eq!(
                a.cancelled + c.cancelled,
                (by_handle.len() + by_cancel_all.len() + unrun_count) as u64
            );
            assert_eq!(a.submitted + c.submitted, 200);
            assert_eq!(a.completed + c.completed + a.cancelled + c.cancelled, 200);
        });
    }
}

#[test]
fn a_stale_id_never_cancels_a_later_task_filed_where_it_was() {
    // The registry reuses the slot of an ended task for the next one: `cancel(id)` of the
    // ended task must find nothing, however many later tasks fill its slot, and every later
    // task must still be found by its own id.
    watchdog("stale ids", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let (mailbox, results): (Mailbox<u32>, _) = unbounded();
        // Ended tasks, by the hundred, their slots free again.
        let blocker = pool.add_task_to(0, &mailbox).unwrap();
        eventually("blocker running", || pool.stats().busy == 1);
        let ended: Vec<TaskId> = (1..=200)
            .map(|n| pool.add_task_to(n, &mailbox).unwrap())
            .collect();
        for &id in &ended {
            assert!(pool.cancel(id));
        }
        assert_eq!(pool.stats().cancelled, 200);
        // Later tasks take those slots; none is reachable through an old id.
        let later: Vec<TaskId> = (1000..1200)
            .map(|n| pool.add_task_to(n, &mailbox).unwrap())
            .collect();
        for &id in &ended {
            assert!(!pool.cancel(id), "{id:?} ended already");
        }
        assert_eq!(pool.stats().queued, 200, "no later task was touched");
        // Every later task is still found by its own id: cancel every other one.
        for &id in later.iter().step_by(2) {
            assert!(pool.cancel(id));
        }
        key.open();
        let mut ran = HashSet::new();
        let mut cancelled = HashSet::new();
        for _ in 0..(1 + 200 + 200) {
            let (id, result) = id_result(results.recv().unwrap());
            match result {
                Ok(_) => assert!(ran.insert(id)),
                Err(TaskError::Cancelled) => assert!(cancelled.insert(id)),
                Err(other) => panic!("{id:?}: {other:?}"),
            }
        }
        assert!(ran.contains(&blocker));
        assert_eq!(ran.len(), 1 + 100);
        assert_eq!(cancelled.len(), 200 + 100);
        assert!(later.iter().skip(1).step_by(2).all(|id| ran.contains(id)));
        pool.join();
        let stats = pool.stats();
        assert_eq!((stats.completed, stats.cancelled), (101, 300));
    });
}
