//! One way to say how a task runs: `pool.task(input).key(..).timeout(..)` then `add`,
//! `try_add`, `add_to` or `try_add_to`, on both faces — including the combinations the
//! `add_task*` short forms do not cover.

mod common;

use std::time::Duration;

use common::{eventually, gate, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AddError, AsyncPool, TaskError, TaskId, ThreadPool};

/// Input 0 blocks until the gate opens; others return at once.
fn gated_pool(name: &str, queue: usize) -> (common::GateKey, AsyncPool<u32, u32>) {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_per_key(1)
        .queue_capacity(queue)
        .thread_name(name)
        .build(move |n: u32| {
            if n == 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    (key, pool)
}

#[test]
fn keyed_with_a_deadline_into_a_mailbox_without_waiting() {
    let pool = AsyncPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .build(|ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    let (mailbox, results) = unbounded::<(TaskId, Result<u64, TaskError>)>();
    let stuck = pool
        .task(60_000)
        .key("h")
        .timeout(Duration::from_millis(10))
        .try_add_to(&mailbox)
        .unwrap();
    let quick = pool
        .task(1)
        .timeout(Duration::from_secs(30))
        .add_to(&mailbox)
        .unwrap();
    let mut got: Vec<_> = (0..2).map(|_| results.recv().unwrap()).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, [(stuck, Err(TaskError::TimedOut)), (quick, Ok(1))]);
}

#[test]
fn try_add_of_a_task_held_by_its_key_is_never_full() {
    let (key, pool) = gated_pool("trykey", 0);
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(0).key("k").add().unwrap();
    eventually("it runs", || running.is_running());
    // Rendezvous queue and the only worker busy: an unkeyed try is Full…
    match pool.task(5).try_add() {
        Err(AddError::Full(input)) => assert_eq!(input, 5),
        other => panic!("expected Full, got {other:?}"),
    }
    // …but a task its key holds back takes no place in the queue.
    let (mailbox, results) = bounded::<(TaskId, Result<u32, TaskError>)>(4);
    let held = watchdog("try_add of a held key", {
        let pool = pool.clone();
        move || {
            let t = pool.task(1).key("k").try_add().unwrap();
            let id = pool.task(2).key("k").try_add_to(&mailbox).unwrap();
            (t, id)
        }
    });
    assert_eq!(pool.stats().waiting_on_key, 2);
    key.open();
    assert_eq!(running.recv(), Ok(0));
    assert_eq!(held.0.recv(), Ok(1));
    assert_eq!(results.recv().unwrap(), (held.1, Ok(2)));
    pool.shutdown();
}

#[test]
fn try_add_to_a_full_queue_hands_the_input_back() {
    let (key, pool) = gated_pool("trymail", 1);
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(0).add().unwrap();
    eventually("it runs", || running.is_running());
    let (mailbox, results) = unbounded::<(TaskId, Result<u32, TaskError>)>();
    let queued = pool.task(1).try_add_to(&mailbox).unwrap();
    match pool.task(2).try_add_to(&mailbox) {
        Err(AddError::Full(input)) => assert_eq!(input, 2),
        other => panic!("expected Full, got {other:?}"),
    }
    key.open();
    assert_eq!(results.recv().unwrap(), (queued, Ok(1)));
    assert!(results.try_recv().is_err(), "the refused input never ran");
    pool.shutdown();
}

#[test]
fn a_handle_submits_the_same_way_and_gets_its_input_back_once_the_pool_is_gone() {
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_per_key(1)
        .build(|n: u32| n * 2)
        .unwrap();
    let handle = pool.handle();
    let task = handle
        .task(4)
        .key("k")
        .timeout(Duration::from_secs(5))
        .add()
        .unwrap();
    assert_eq!(task.recv(), Ok(8));
    drop(pool);
    match handle.task(5).key("k").try_add() {
        Err(AddError::ShutDown(input)) => assert_eq!(input, 5),
        other => panic!("expected ShutDown, got {other:?}"),
    }
}

#[test]
fn a_thread_pool_gets_keys_and_deadlines_through_the_same_chain() {
    let (key, gate) = gate();
    let pool = ThreadPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .thread_name("spawnchain")
        .build()
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let first = {
        let gate = gate.clone();
        pool.task(move || {
            gate.wait();
            1
        })
        .key("h")
        .add()
        .unwrap()
    };
    eventually("the first runs", || first.is_running());
    // Same key: held back although a worker is free.
    let second = pool.task(|| 2).key("h").try_add().unwrap();
    let other = pool.task(|| 3).key("other").add().unwrap();
    assert_eq!(other.recv(), Ok(3));
    assert!(!second.is_finished() && !second.is_running());
    key.open();
    assert_eq!((first.recv(), second.recv()), (Ok(1), Ok(2)));
    // A deadline; the stuck closure's thread is replaced.
    let (release, hang) = bounded::<()>(0);
    let stuck = pool
        .task(move || hang.recv().is_ok())
        .timeout(Duration::from_millis(10))
        .add()
        .unwrap();
    assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    let (mailbox, results) = unbounded::<(TaskId, Result<u32, TaskError>)>();
    let id = pool.task(|| 7).try_add_to(&mailbox).unwrap();
    assert_eq!(results.recv().unwrap(), (id, Ok(7)));
    drop(release);
    pool.shutdown();
    match pool.task(|| 9).add() {
        Err(AddError::ShutDown(f)) => assert_eq!(f(), 9, "the closure comes back unrun"),
        other => panic!("expected ShutDown, got {:?}", other.map(|_| ())),
    }
}
