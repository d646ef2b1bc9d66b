//! Soak: many tasks from 8 producers over 64 workers, 1% panics, 10% dropped receivers; every
//! task accounted for and no memory kept per task.
//!
//! Ignored by default (it wants a release build). Full size, as CI runs it:
//! `cargo test --release --test it soak -- --ignored --nocapture` (1,000,000 tasks per round;
//! four warm-up rounds, then the measured one). `SOAK_TASKS` sets the size.

use std::time::Instant;

use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, Mailbox, TaskError};

use crate::support::rss_bytes;

const PRODUCERS: u64 = 8;
const WINDOW: u64 = 1_000;

/// Runs `per_producer` tasks from each producer; returns (results received, dropped).
fn round(pool: &AsyncPool<u64, u64>, per_producer: u64) -> (u64, u64) {
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let (mailbox, results): (Mailbox<u64>, _) = unbounded();
                let (mut in_flight, mut received, mut dropped) = (0u64, 0u64, 0u64);
                let mut take_one = |in_flight: &mut u64| {
                    let done = results.recv().unwrap();
                    assert_eq!(done.attempts, 1);
                    match done.result {
                        Ok(v) => assert_ne!(v % 100, 7),
                        Err(TaskError::Panicked(m)) => assert_eq!(m, "one in a hundred"),
                        Err(e) => panic!("unexpected {e}"),
                    }
                    *in_flight -= 1;
                    received += 1;
                };
                for n in 0..per_producer {
                    let input = p * per_producer + n;
                    if input % 10 == 3 {
                        // 10%: a receiver dropped at once.
                        drop(pool.add_task(input).unwrap());
                        dropped += 1;
                    } else {
                        pool.add_task_to(input, &mailbox).unwrap();
                        in_flight += 1;
                    }
                    // A steady stream: at most WINDOW results outstanding per producer.
                    while in_flight > WINDOW {
                        take_one(&mut in_flight);
                    }
                }
                while in_flight > 0 {
                    take_one(&mut in_flight);
                }
                (received, dropped)
            })
        })
        .collect();
    producers
        .into_iter()
        .map(|p| p.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[test]
#[ignore = "soak: run with --release -- --ignored (SOAK_TASKS sets the size)"]
fn a_million_tasks_all_accounted_for_without_per_task_memory() {
    // Silences the 1% of panics. The hook is process-wide: this test runs alone, filtered by
    // `soak` and `--ignored`.
    std::panic::set_hook(Box::new(|_| {}));
    let total: u64 = std::env::var("SOAK_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let per_producer = total / PRODUCERS;
    let pool = AsyncPool::new(64, |n: u64| {
        if n % 100 == 7 {
            panic!("one in a hundred");
        }
        n
    })
    .unwrap();
    // Four rounds at full size bring the allocator and the pool to their steady state (the
    // allocator's footprint grows for a few rounds, by less each time, then stays); the fifth is
    // measured against the largest of their resident sizes. A leak of one byte per task would
    // add a MiB per round.
    let mut rss_before = 0;
    for _ in 0..4 {
        round(&pool, per_producer);
        pool.join();
        rss_before = rss_before.max(rss_bytes());
    }
    let before_stats = pool.stats();
    let started = Instant::now();
    let (received, dropped) = round(&pool, per_producer);
    pool.join();
    let elapsed = started.elapsed();
    let rss_after = rss_bytes();
    let stats = pool.stats();
    let submitted = stats.submitted - before_stats.submitted;
    let ended = (stats.completed + stats.panicked + stats.cancelled + stats.timed_out)
        - (before_stats.completed
            + before_stats.panicked
            + before_stats.cancelled
            + before_stats.timed_out);
    assert_eq!(submitted, per_producer * PRODUCERS);
    assert_eq!(
        received + dropped,
        submitted,
        "every task accounted for by its caller"
    );
    assert_eq!(
        ended, submitted,
        "every task ended once in the pool's counts"
    );
    assert_eq!((stats.busy, stats.queued, stats.workers), (0, 0, 64));
    let panicked = stats.panicked - before_stats.panicked;
    assert_eq!(
        panicked,
        (0..submitted).filter(|n| n % 100 == 7).count() as u64
    );
    let growth = rss_after as f64 / rss_before as f64 - 1.0;
    eprintln!(
        "soak: {submitted} tasks in {:.2} s = {:.0} tasks/s; {panicked} panicked, {dropped} dropped receivers; \
         RSS {:.1} MiB -> {:.1} MiB ({:+.1}%)",
        elapsed.as_secs_f64(),
        submitted as f64 / elapsed.as_secs_f64(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        growth * 100.0
    );
    assert!(growth < 0.10, "resident memory grew {:.1}%", growth * 100.0);
    let _ = std::panic::take_hook();
}
