//! The number of workers: stats, growing and shrinking with `set_max_workers`, and elastic
//! pools, whose workers start when work arrives and no worker is idle, and retire after
//! `keep_alive` idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slowpool::{AsyncPool, ThreadPool};

use crate::support::{assert_threads_gone, eventually, gate, gated, threads_named};

/// A callback that records how many run at once, blocking on a gate.
fn concurrency_probe() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
}

#[test]
fn growing_starts_workers_at_once() {
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("grow")
        .build(|n: u8| n)
        .unwrap();
    assert!(pool.set_max_workers(10));
    assert_eq!(pool.stats().workers, 10);
    eventually("ten threads", || threads_named("grow") == 10);
    pool.shutdown();
    assert_threads_gone("grow");
}

#[test]
fn shrinking_retires_workers_as_they_finish_and_none_takes_work_over_the_limit() {
    let (running, peak) = concurrency_probe();
    let (key, gate) = gate();
    let (r, p) = (running.clone(), peak.clone());
    let pool = AsyncPool::builder()
        .max_workers(4)
        .thread_name("shrink")
        .build(move |_: u32| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            gate.wait();
            r.fetch_sub(1, Ordering::SeqCst);
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let busy: Vec<_> = (0..4).map(|n| pool.add_task(n).unwrap()).collect();
    eventually("four tasks running", || pool.stats().busy == 4);
    assert!(pool.set_max_workers(1));
    peak.store(0, Ordering::SeqCst);
    let later: Vec<_> = (0..50).map(|n| pool.add_task(n).unwrap()).collect();
    key.open();
    for task in busy.iter().chain(&later) {
        task.recv().unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "no worker took a task while more than one lived"
    );
    assert_eq!(pool.stats().workers, 1);
    eventually("three threads retired", || threads_named("shrink") == 1);
}

#[test]
fn idle_workers_notice_a_shrink() {
    let pool = ThreadPool::builder()
        .max_workers(6)
        .thread_name("idle-shr")
        .build()
        .unwrap();
    eventually("six threads", || threads_named("idle-shr") == 6);
    assert!(pool.set_max_workers(2));
    eventually("idle workers retire without new work", || {
        threads_named("idle-shr") == 2
    });
    assert_eq!(pool.stats().workers, 2);
    assert_eq!(pool.spawn(|| 5).unwrap().recv(), Ok(5));
}

#[test]
fn set_max_workers_refuses_zero_and_a_shut_down_pool() {
    let pool = ThreadPool::new(2).unwrap();
    assert!(!pool.set_max_workers(0));
    assert!(!pool.set_max_workers(usize::MAX));
    assert_eq!(pool.max_workers(), 2);
    pool.shutdown();
    assert!(!pool.set_max_workers(4));
}

#[test]
fn stats_describe_queued_busy_and_ended_tasks() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(2, move |fail: bool| {
        gate.wait();
        assert!(!fail, "asked to fail");
    })
    .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let tasks: Vec<_> = (0..6).map(|n| pool.add_task(n == 5).unwrap()).collect();
    eventually("two running", || pool.stats().busy == 2);
    let stats = pool.stats();
    assert_eq!(
        (stats.workers, stats.busy, stats.queued, stats.submitted),
        (2, 2, 4, 6)
    );
    assert!(tasks[4].cancel());
    key.open();
    for task in &tasks {
        let _ = task.recv();
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.panicked, stats.cancelled),
        (4, 1, 1)
    );
    assert_eq!((stats.busy, stats.queued), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Elastic pools
// ---------------------------------------------------------------------------------------------

#[test]
fn a_burst_of_slow_tasks_grows_the_pool_and_idle_workers_retire() {
    let (key, pool) = gated(
        AsyncPool::builder()
            .min_workers(0)
            .max_workers(1000)
            .keep_alive(Duration::from_millis(100))
            .thread_name("ela")
            .stack_size(64 * 1024),
    );
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    assert_eq!(pool.stats().workers, 0, "no thread before there is work");
    let tasks: Vec<_> = (0..1000).map(|n| pool.add_task(n).unwrap()).collect();
    // Every task is blocked: with no idle worker, each add started one.
    assert_eq!(pool.stats().workers, 1000);
    eventually("1000 tasks running", || pool.stats().busy == 1000);
    key.open();
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
    eventually("all workers retired after keep_alive", || {
        pool.stats().workers == 0
    });
    eventually("all threads gone", || threads_named("ela") == 0);
    // And it grows again on demand.
    assert_eq!(pool.add_task(7).unwrap().recv(), Ok(7));
}

#[test]
fn an_idle_worker_takes_the_next_task_instead_of_a_new_thread() {
    let pool = ThreadPool::builder()
        .min_workers(1)
        .max_workers(8)
        .keep_alive(Duration::from_secs(60))
        .build()
        .unwrap();
    for n in 0..100 {
        assert_eq!(pool.spawn(move || n).unwrap().recv(), Ok(n));
    }
    assert_eq!(pool.stats().workers, 1, "one at a time needs one worker");
}

#[test]
fn the_minimum_stays_when_the_rest_retire() {
    let (key, pool) = gated(
        AsyncPool::builder()
            .min_workers(2)
            .max_workers(6)
            .keep_alive(Duration::from_millis(20)),
    );
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let tasks: Vec<_> = (0..6).map(|n| pool.add_task(n).unwrap()).collect();
    assert_eq!(pool.stats().workers, 6);
    key.open();
    for task in &tasks {
        task.recv().unwrap();
    }
    eventually("back to the minimum", || pool.stats().workers == 2);
}

/// A worker that was looking for work (not yet parked) when the pool shrank still retires: it
/// looks at the maximum after it announces itself parked, as `set_max_workers` looks for
/// parked workers after it lowers the maximum. (It used to park for ever above the maximum.)
#[test]
fn a_pool_shrunk_while_a_worker_is_about_to_park_still_shrinks() {
    crate::support::watchdog("shrink vs park", || {
        for round in 0..1_000 {
            let pool = AsyncPool::new(3, |n: u32| n).unwrap();
            // The workers finish a task each and go looking for the next one, then park.
            let tasks: Vec<_> = (0..3).map(|n| pool.add_task(n).unwrap()).collect();
            for (n, task) in tasks.iter().enumerate() {
                assert_eq!(task.recv(), Ok(n as u32));
            }
            assert!(pool.set_max_workers(1));
            assert!(
                crate::support::comes_true_within(std::time::Duration::from_secs(10), || {
                    pool.stats().workers == 1
                }),
                "round {round}: {}",
                pool.stats()
            );
            assert_eq!(pool.add_task(3).unwrap().recv(), Ok(3));
        }
    });
}
