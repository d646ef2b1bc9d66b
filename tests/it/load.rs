//! Many tasks of varied length over many workers: all accounted for.

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, Mailbox};

use crate::support::lcg;

#[test]
fn a_thousand_tasks_of_0_to_20_ms_over_64_workers_are_all_accounted_for() {
    let pool = AsyncPool::new(64, |(n, ms): (u32, u64)| {
        std::thread::sleep(Duration::from_millis(ms)); // the work itself, not a wait
        n
    })
    .unwrap();
    let mut seed = 7;
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let mut expected = HashMap::new();
    let mut tasks = Vec::new();
    for n in 0..1_000u32 {
        let ms = lcg(&mut seed) % 21;
        if n % 2 == 0 {
            expected.insert(pool.add_task_to((n, ms), &mailbox).unwrap(), n);
        } else {
            tasks.push((n, pool.add_task((n, ms)).unwrap()));
        }
    }
    for (n, task) in tasks {
        assert_eq!(task.recv(), Ok(n));
    }
    for _ in 0..500 {
        let done = results.recv().unwrap();
        assert_eq!(done.attempts, 1);
        assert_eq!(expected.remove(&done.id), Some(done.result.unwrap()));
    }
    assert!(expected.is_empty());
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed), (1_000, 1_000));
}
