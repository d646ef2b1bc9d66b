//! Hostile use, each with its documented outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{assert_threads_gone, eventually, watchdog};
use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, BuildError, ThreadPool};

#[test]
fn a_task_that_joins_its_own_pool_waits_for_the_others_and_does_not_deadlock() {
    // One worker: the joining task is the only thread that can run the queued ones, so `join`
    // runs them on its own thread.
    let done = Arc::new(AtomicUsize::new(0));
    let (added_tx, added) = unbounded::<()>();
    let counter = done.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .build_with(
            || (),
            move |cx, n: u32| {
                if n == 0 {
                    // Joins once the other ten are queued behind it.
                    added.recv().unwrap();
                    cx.pool().join();
                    // Everything else has ended by now.
                    return counter.load(Ordering::SeqCst);
                }
                counter.fetch_add(1, Ordering::SeqCst)
            },
        )
        .unwrap();
    let joiner = pool.add_task(0).unwrap();
    let others: Vec<_> = (1..=10).map(|n| pool.add_task(n).unwrap()).collect();
    added_tx.send(()).unwrap();
    assert_eq!(
        watchdog("join inside a task", move || joiner.recv()),
        Ok(10)
    );
    assert!(others.iter().all(|t| t.recv().is_ok()));
}

#[test]
fn tasks_that_all_join_their_pool_return_together() {
    let (pool_tx, pool_rx) = unbounded::<ThreadPool>();
    let pool = ThreadPool::new(3).unwrap();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let pool_rx = pool_rx.clone();
            pool.spawn(move || pool_rx.recv().unwrap().join()).unwrap()
        })
        .collect();
    // Handles: the tasks reach the pool without keeping it alive.
    for _ in 0..3 {
        pool_tx.send(pool.handle()).unwrap();
    }
    watchdog("three joiners", move || {
        tasks.iter().all(|t| t.recv().is_ok())
    });
}

#[test]
fn set_max_workers_racing_shutdown_leaves_no_thread_and_no_panic() {
    for round in 0..20 {
        let name = format!("race{round}");
        let pool = ThreadPool::builder()
            .max_workers(4)
            .thread_name(name.clone())
            .build()
            .unwrap();
        let resizers: Vec<_> = (0..4)
            .map(|r| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for n in 0..200 {
                        pool.set_max_workers(1 + (n * 7 + r) % 16);
                        let _ = pool.spawn(|| ());
                    }
                })
            })
            .collect();
        pool.shutdown();
        for r in resizers {
            r.join().unwrap();
        }
        pool.shutdown();
        assert_threads_gone(&name);
    }
}

#[test]
fn a_queue_of_one_with_sixteen_producers_loses_nothing() {
    let pool = AsyncPool::builder()
        .max_workers(2)
        .queue_capacity(1)
        .build(|n: u64| n)
        .unwrap();
    let producers: Vec<_> = (0..16u64)
        .map(|p| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let tasks: Vec<_> = (0..500)
                    .map(|n| pool.add_task(p * 1_000 + n).unwrap())
                    .collect();
                tasks.iter().map(|t| t.recv().unwrap()).sum::<u64>()
            })
        })
        .collect();
    let total: u64 = watchdog("16 producers on a queue of one", move || {
        producers.into_iter().map(|p| p.join().unwrap()).sum()
    });
    let expected: u64 = (0..16u64)
        .map(|p| (0..500).map(|n| p * 1_000 + n).sum::<u64>())
        .sum();
    assert_eq!(total, expected);
    assert_eq!(pool.stats().completed, 8_000);
}

#[test]
fn ten_thousand_workers_build_and_shut_down_or_fail_cleanly() {
    let built = ThreadPool::builder()
        .max_workers(10_000)
        .stack_size(64 * 1024)
        .thread_name("tenk")
        .build();
    match built {
        Ok(pool) => {
            assert_eq!(pool.stats().workers, 10_000);
            let tasks: Vec<_> = (0..1_000).map(|n| pool.spawn(move || n).unwrap()).collect();
            assert!(tasks.iter().enumerate().all(|(n, t)| t.recv() == Ok(n)));
            pool.shutdown();
        }
        // The operating system may refuse that many threads: a clean error, nothing left.
        Err(BuildError::Spawn(_)) => {}
        Err(other) => panic!("unexpected {other}"),
    }
    assert_threads_gone("tenk");
}

#[test]
fn a_callback_that_overflows_a_small_stack_aborts_the_process_as_documented() {
    // Run in a child process: a stack overflow cannot be caught, it kills the process.
    if std::env::var_os("ASYNC_POOL_OVERFLOW_CHILD").is_some() {
        fn deep(n: u64) -> u64 {
            let pad = [n; 64];
            if n == 0 {
                0
            } else {
                deep(n - 1) + std::hint::black_box(pad)[0]
            }
        }
        let pool = AsyncPool::builder()
            .max_workers(1)
            .stack_size(32 * 1024)
            .build(deep)
            .unwrap();
        let _ = pool.add_task(1_000_000).unwrap().recv();
        unreachable!("the stack overflow aborts first");
    }
    let name = crate::test_name!(
        "a_callback_that_overflows_a_small_stack_aborts_the_process_as_documented"
    );
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture"])
        .env("ASYNC_POOL_OVERFLOW_CHILD", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has overflowed its stack"), "{stderr}");
}

#[test]
fn an_elastic_pool_absorbs_a_storm_of_adds_from_many_threads() {
    let pool = AsyncPool::builder()
        .min_workers(0)
        .max_workers(32)
        .keep_alive(std::time::Duration::from_millis(5))
        .thread_name("storm")
        .build(|n: u32| n)
        .unwrap();
    for _ in 0..5 {
        let producers: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .map(|n| pool.add_task(n).unwrap().recv().unwrap())
                        .sum::<u32>()
                })
            })
            .collect();
        for p in producers {
            assert_eq!(p.join().unwrap(), (0..500).sum::<u32>());
        }
        eventually("workers retire between storms", || {
            pool.stats().workers == 0
        });
    }
    pool.shutdown();
    assert_threads_gone("storm");
}
