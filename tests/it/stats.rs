//! `stats()`: what a snapshot counts, and that it never counts a task twice.

use std::time::Duration;

use slowpool::{AsyncPool, Retry, Stats};

use crate::support::{assert_settled, watchdog};

/// Tasks the snapshot says are live (running, queued, waiting on a key, waiting to retry), and
/// tasks accepted and not ended.
fn live(stats: &Stats) -> (u64, u64) {
    let counted = stats.busy + stats.queued + stats.waiting_on_key + stats.waiting_retry;
    let ended = stats.completed + stats.panicked + stats.cancelled + stats.timed_out;
    (counted as u64, stats.submitted - ended)
}

#[test]
fn a_snapshot_never_counts_a_retried_task_both_queued_and_waiting_to_retry() {
    watchdog("snapshots of retrying tasks", || {
        // Every attempt of an even input fails, and its retry is due at once: tasks pass from
        // the timer to the queue all the time while the snapshots are taken.
        let pool = AsyncPool::builder()
            .max_workers(2)
            .build(|n: u32| if n % 2 == 0 { Err(n) } else { Ok(n) })
            .unwrap();
        let policy = Retry::attempts(20).backoff(Duration::ZERO, Duration::ZERO);
        let mut snapshots = 0u64;
        for _round in 0..20 {
            let tasks: Vec<_> = (0..200)
                .map(|n| pool.task(n).retry(policy.clone()).add().unwrap())
                .collect();
            loop {
                let stats = pool.stats();
                snapshots += 1;
                let (counted, outstanding) = live(&stats);
                assert!(
                    counted <= outstanding,
                    "counted {counted} of {outstanding}: {stats:?}"
                );
                if tasks.iter().all(|task| task.is_finished()) {
                    break;
                }
            }
            for task in &tasks {
                let attempts = if task.recv().unwrap().is_err() { 20 } else { 1 };
                assert_eq!(task.attempts(), attempts);
            }
        }
        pool.join();
        assert_settled(pool.stats());
        assert!(snapshots > 20);
    });
}

#[test]
fn a_settled_pool_counts_every_ending_once() {
    let pool = AsyncPool::builder()
        .max_workers(3)
        .max_per_key(1)
        .build(|n: u32| match n % 4 {
            0 => panic!("boom"),
            1 => Err(n),
            _ => Ok(n),
        })
        .unwrap();
    let ms = Duration::from_millis(1);
    for n in 0..100u32 {
        // Fire and forget: the handle is dropped, the task runs.
        drop(
            pool.task(n)
                .key(n % 5)
                .retry(Retry::attempts(2).backoff(ms, ms))
                .add()
                .unwrap(),
        );
    }
    pool.join();
    let stats = pool.stats();
    assert_settled(stats);
    assert_eq!(stats.submitted, 100);
    assert_eq!((stats.completed, stats.panicked), (75, 25));
    // Each panicking and each failing input was retried once.
    assert_eq!(stats.retried, 50);
}
