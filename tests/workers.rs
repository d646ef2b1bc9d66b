//! The number of workers: stats, growing and shrinking with `set_max_workers`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{assert_threads_gone, eventually, gate, threads_named};
use slowpool::{AsyncPool, ThreadPool};

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
