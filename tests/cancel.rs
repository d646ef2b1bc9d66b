//! Cancelling tasks that have not started: one, by id, all, and at shutdown.

mod common;

use std::time::Duration;

use common::{eventually, gate, gated, threads_named, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, TaskError, ThreadPool};

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
    let (tx, rx) = unbounded();
    let running = pool.add_task_to(1, &tx).unwrap();
    eventually("first task running", || pool.stats().busy == 1);
    let queued = pool.add_task_to(2, &tx).unwrap();
    assert!(pool.cancel(queued));
    assert_eq!(rx.recv().unwrap(), (queued, Err(TaskError::Cancelled)));
    assert!(!pool.cancel(running));
    key.open();
    assert_eq!(rx.recv().unwrap(), (running, Ok(1)));
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
fn thread_pool_cancel_all_reports_how_many() {
    let (key, gate) = gate();
    let pool = ThreadPool::new(1).unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let running = pool.spawn(move || gate.wait()).unwrap();
    eventually("running", || running.is_running());
    let queued: Vec<_> = (0..5).map(|n| pool.spawn(move || n).unwrap()).collect();
    assert_eq!(pool.cancel_all(), 5);
    key.pass(1);
    assert!(queued.iter().all(|t| t.recv() == Err(TaskError::Cancelled)));
    assert_eq!(running.recv(), Ok(()));
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
    assert!(pool.try_add_task(2).unwrap_err().is_full());
    assert!(queued.cancel());
    let next = pool
        .try_add_task(3)
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
        .build_with_token(move |n: u32, token| {
            if n == 0 {
                let _ = stuck.recv();
                assert!(token.is_cancelled(), "the token was raised");
            }
            n
        })
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
        .build_with_token(move |_: u32, token| {
            while !token.is_cancelled() {
                std::thread::yield_now();
            }
            saw_tx.send(()).unwrap();
        })
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
        let (key, gate) = common::gate();
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
        let held = pool.add_task_keyed("k", 0).unwrap();
        common::eventually("the worker is held", || held.is_running());
        let ids: Vec<_> = (1..=200u32)
            .map(|n| {
                pool.task(n)
                    .key("j")
                    .add_to(&crossbeam_channel::unbounded().0)
                    .unwrap()
            })
            .collect();
        let cancel_all_of = |ids: Vec<slowpool::TaskId>| {
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
