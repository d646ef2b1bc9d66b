//! `add_task_to`: results tagged with their id, sent to a channel the caller owns.

mod common;

use std::collections::HashSet;

use common::{gate, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, TaskError, TaskId, ThreadPool};

#[test]
fn results_arrive_tagged_with_their_id() {
    let pool = AsyncPool::new(3, |s: String| s.len()).unwrap();
    let (tx, rx) = unbounded::<(TaskId, Result<usize, TaskError>)>();
    let id = pool.add_task_to("abcd".into(), &tx).unwrap();
    assert_eq!(rx.recv().unwrap(), (id, Ok(4)));
}

#[test]
fn every_result_reaches_the_mailbox_once() {
    let pool = AsyncPool::new(8, |n: u64| n * 2).unwrap();
    let (tx, rx) = unbounded();
    let ids: HashSet<TaskId> = (0..1_000)
        .map(|n| pool.add_task_to(n, &tx).unwrap())
        .collect();
    let mut seen = HashSet::new();
    for _ in 0..1_000 {
        let (id, result) = rx.recv().unwrap();
        assert!(result.unwrap() % 2 == 0);
        assert!(seen.insert(id), "{id} delivered twice");
    }
    assert_eq!(seen, ids);
    pool.join();
    assert!(rx.try_recv().is_err(), "no extra messages");
}

#[test]
fn a_mailbox_whose_receiver_is_gone_never_blocks_a_worker() {
    let pool = AsyncPool::new(2, |n: u32| n).unwrap();
    let (tx, rx) = bounded(1);
    drop(rx);
    for n in 0..100 {
        pool.add_task_to(n, &tx).unwrap();
    }
    watchdog("join with a dropped mailbox", {
        let pool = pool.clone();
        move || pool.join()
    });
    assert_eq!(pool.stats().completed, 100);
    // The pool is still fully usable.
    assert_eq!(pool.add_task(7).unwrap().recv(), Ok(7));
}

#[test]
fn a_bounded_mailbox_applies_backpressure_and_loses_nothing() {
    let pool = AsyncPool::new(4, |n: u32| n).unwrap();
    let (tx, rx) = bounded(1);
    let ids: HashSet<TaskId> = (0..200)
        .map(|n| pool.add_task_to(n, &tx).unwrap())
        .collect();
    // Nobody reads yet: workers wait for room instead of dropping results.
    let received = watchdog("draining a bounded mailbox", move || {
        (0..200)
            .map(|_| rx.recv().unwrap().0)
            .collect::<HashSet<_>>()
    });
    assert_eq!(received, ids);
}

#[test]
fn a_result_is_counted_before_it_is_delivered() {
    let pool = AsyncPool::new(4, |n: u32| n).unwrap();
    let (tx, rx) = unbounded();
    for n in 0..500 {
        pool.add_task_to(n, &tx).unwrap();
    }
    for received in 1..=500u64 {
        let _ = rx.recv().unwrap();
        assert!(pool.stats().completed >= received);
    }
}

#[test]
fn the_elixir_genserver_test_collects_all_hundred() {
    // 10 workers; a producer adds 1..=100 and its mailbox collects every reply.
    let pool = AsyncPool::new(10, |n: u32| n).unwrap();
    let (tx, rx) = unbounded();
    let mut refs = HashSet::new();
    for n in 1..=100 {
        refs.insert(pool.add_task_to(n, &tx).unwrap());
    }
    let mut values = Vec::new();
    for _ in 0..100 {
        let (id, value) = rx.recv().unwrap();
        assert!(refs.remove(&id));
        values.push(value.unwrap());
    }
    values.sort();
    assert_eq!(values, (1..=100).collect::<Vec<_>>());
}

#[test]
fn thread_pool_spawn_to_uses_the_same_mailbox_form() {
    let pool = ThreadPool::new(4).unwrap();
    let (tx7, rx) = unbounded::<(TaskId, Result<i32, TaskError>)>();
    let id = pool.spawn_to(|| 7_i32, &tx7).unwrap();
    assert_eq!(rx.recv().unwrap(), (id, Ok(7)));
}

#[test]
fn a_panicking_task_reports_through_the_mailbox() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(1, move |n: u32| {
        gate.wait();
        if n == 1 {
            panic!("bad input {n}");
        }
        n
    })
    .unwrap();
    let (tx, rx) = unbounded();
    let bad = pool.add_task_to(1, &tx).unwrap();
    let good = pool.add_task_to(2, &tx).unwrap();
    key.pass(2);
    assert_eq!(
        rx.recv().unwrap(),
        (bad, Err(TaskError::Panicked("bad input 1".into())))
    );
    assert_eq!(rx.recv().unwrap(), (good, Ok(2)));
}
