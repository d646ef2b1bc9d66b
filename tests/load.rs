//! Many tasks of varied length over many workers: all accounted for.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, TaskError};

/// A small deterministic generator, so a failure can be replayed.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn a_thousand_tasks_of_0_to_20_ms_over_64_workers_are_all_accounted_for() {
    let pool = AsyncPool::new(64, |(n, ms): (u32, u64)| {
        std::thread::sleep(Duration::from_millis(ms));
        n
    })
    .unwrap();
    let mut seed = 7;
    let (tx, rx) = unbounded();
    let mut expected = HashMap::new();
    let mut tasks = Vec::new();
    for n in 0..1_000u32 {
        let ms = lcg(&mut seed) % 21;
        if n % 2 == 0 {
            expected.insert(pool.add_task_to((n, ms), &tx).unwrap(), n);
        } else {
            tasks.push((n, pool.add_task((n, ms)).unwrap()));
        }
    }
    for (n, task) in tasks {
        assert_eq!(task.recv(), Ok(n));
    }
    for _ in 0..500 {
        let (id, result): (_, Result<u32, TaskError>) = rx.recv().unwrap();
        assert_eq!(expected.remove(&id), Some(result.unwrap()));
    }
    assert!(expected.is_empty());
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed), (1_000, 1_000));
}
