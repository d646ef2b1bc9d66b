//! Building pools: settings, bad input, bounded queues and the rendezvous.

use std::time::Duration;

use slowpool::{AddError, AsyncPool, BuildError, ThreadPool, MAX_WORKERS};

use crate::support::{eventually, gate, gated, thread_names, watchdog};

#[test]
fn zero_workers_is_a_typed_error() {
    assert!(matches!(
        AsyncPool::new(0, |n: u8| n),
        Err(BuildError::ZeroWorkers)
    ));
    assert!(matches!(ThreadPool::new(0), Err(BuildError::ZeroWorkers)));
    let err = ThreadPool::builder().max_workers(0).build().unwrap_err();
    assert_eq!(err.to_string(), "a pool needs at least one worker");
}

#[test]
fn absurd_sizes_are_refused_before_any_thread_starts() {
    let err = ThreadPool::new(usize::MAX).unwrap_err();
    assert!(matches!(
        err,
        BuildError::TooManyWorkers {
            requested: usize::MAX
        }
    ));
    let err = ThreadPool::builder()
        .max_workers(MAX_WORKERS + 1)
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::TooManyWorkers { .. }));
    let err = ThreadPool::builder()
        .min_workers(5)
        .max_workers(2)
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::MinAboveMax { min: 5, max: 2 }));
    // A stack the operating system cannot give is a spawn error, with its cause.
    let err = ThreadPool::builder()
        .max_workers(1)
        .stack_size(usize::MAX / 2)
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::Spawn(_)));
    assert!(std::error::Error::source(&err).is_some());
    // A queue too large to mean anything is still just a bound.
    let pool = AsyncPool::builder()
        .max_workers(1)
        .queue_capacity(usize::MAX)
        .build(|n: u8| n)
        .unwrap();
    assert_eq!(pool.add_task(1).unwrap().recv(), Ok(1));
}

#[test]
fn threads_are_named_after_the_pool() {
    let pool = AsyncPool::builder()
        .max_workers(3)
        .thread_name("fetch")
        .stack_size(256 * 1024)
        .build(|n: u64| n * 2)
        .unwrap();
    let expected = ["fetch-0", "fetch-1", "fetch-2"];
    eventually("worker threads named", || {
        let names = thread_names();
        expected.iter().all(|e| names.iter().any(|n| n == e))
    });
    assert_eq!(pool.add_task(5).unwrap().recv(), Ok(10));
}

#[test]
fn a_fixed_pool_has_all_its_workers_from_build_on() {
    let pool = AsyncPool::new(7, |n: u8| n).unwrap();
    assert_eq!(pool.stats().workers, 7);
    assert_eq!(pool.max_workers(), 7);
}

#[test]
fn a_bounded_queue_blocks_add_task_and_refuses_try_add() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .queue_capacity(2)
        .build(move |n: u64| {
            gate.wait();
            n * 2
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let running = pool.add_task(0).unwrap();
    eventually("the worker took the first task", || pool.stats().busy == 1);
    let queued: Vec<_> = (1..=2).map(|n| pool.add_task(n).unwrap()).collect();
    match pool.task(5).try_add() {
        Err(AddError::Full(input)) => assert_eq!(input, 5),
        other => panic!("expected Full, got {other:?}"),
    }
    let blocked = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.add_task(3).unwrap().recv())
    };
    assert_eq!(pool.stats().queued, 2, "the blocked add is not queued");
    key.pass(1); // the first task ends, a queued one starts, the blocked add gets room
    assert_eq!(
        watchdog("blocked add completes", move || {
            key.pass(3);
            blocked.join().unwrap()
        }),
        Ok(6)
    );
    assert_eq!(running.recv(), Ok(0));
    for (n, task) in queued.iter().enumerate() {
        assert_eq!(task.recv(), Ok((n as u64 + 1) * 2));
    }
}

#[test]
fn queue_capacity_zero_is_the_elixir_rendezvous() {
    // The original's first test: 4 workers, 5 add_task calls; the fifth waits until a worker
    // frees, and all five replies arrive.
    let (key, pool) = gated(AsyncPool::builder().max_workers(4).queue_capacity(0));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let first_four: Vec<_> = (0..4).map(|n| pool.task(n).try_add().unwrap()).collect();
    match pool.task(4).try_add() {
        Err(AddError::Full(4)) => {}
        other => panic!("a fifth add finds no free worker: {other:?}"),
    }
    let fifth = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.add_task(4).unwrap())
    };
    assert!(!fifth.is_finished() || pool.stats().busy < 4);
    key.pass(1); // one worker frees: the fifth add goes through
    let fifth = watchdog("fifth add", move || fifth.join().unwrap());
    key.pass(4);
    let mut all: Vec<u32> = first_four.iter().map(|t| t.recv().unwrap()).collect();
    all.push(fifth.recv().unwrap());
    all.sort();
    assert_eq!(all, [0, 1, 2, 3, 4]);
}

#[test]
fn a_rendezvous_add_right_after_build_finds_the_new_workers() {
    for _ in 0..20 {
        let pool = AsyncPool::builder()
            .max_workers(2)
            .queue_capacity(0)
            .build(|n: u8| n)
            .unwrap();
        let tasks = [
            pool.task(1).try_add().unwrap(),
            pool.task(2).try_add().unwrap(),
        ];
        assert_eq!(tasks.iter().map(|t| t.recv().unwrap()).sum::<u8>(), 3);
    }
}

#[test]
fn builder_settings_are_visible_in_debug() {
    let builder = ThreadPool::builder()
        .max_workers(3)
        .keep_alive(Duration::from_secs(1))
        .thread_name("dbg");
    let text = format!("{builder:?}");
    assert!(
        text.contains("max_workers: 3") && text.contains("dbg"),
        "{text}"
    );
}

#[test]
fn min_workers_alone_never_fails_on_the_default_maximum() {
    // Issue 12: with the old default (the CPU count), `.min_workers(4)` alone failed with
    // `MinAboveMax { min: 4, max: 2 }` on a 2-core machine.
    let pool = ThreadPool::builder().min_workers(4).build().unwrap();
    assert_eq!(pool.stats().workers, 4);
    assert_eq!(pool.max_workers(), 512);
    let big = ThreadPool::builder().min_workers(600).build().unwrap();
    assert_eq!(big.max_workers(), 600);
    big.shutdown();
    // A maximum the caller chose is still enforced, in either order.
    for built in [
        ThreadPool::builder().min_workers(5).max_workers(2).build(),
        ThreadPool::builder().max_workers(2).min_workers(5).build(),
    ] {
        assert!(matches!(
            built,
            Err(BuildError::MinAboveMax { min: 5, max: 2 })
        ));
    }
}

#[test]
fn the_default_pool_is_elastic_and_made_for_io() {
    let pool = ThreadPool::builder().build().unwrap();
    assert_eq!(pool.max_workers(), 512);
    assert_eq!(pool.stats().workers, 0);
    assert_eq!(pool.spawn(|| 1).unwrap().recv(), Ok(1));
    // `max_workers` alone still means a fixed pool of that size.
    let fixed = ThreadPool::builder().max_workers(3).build().unwrap();
    assert_eq!(fixed.stats().workers, 3);
}
