//! Elastic pools: workers start when work arrives and no worker is idle, and retire after
//! `keep_alive` idle.

mod common;

use std::time::Duration;

use common::{eventually, gated, threads_named};
use slowpool::{AsyncPool, ThreadPool};

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
