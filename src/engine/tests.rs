//! Engine tests that need the crate's insides: the operating system refusing threads.

use std::time::Duration;

use super::fault::{allow_spawns, fail_spawns};
use crate::{AsyncPool, BuildError, ThreadPool};

/// Live worker threads of this process named `prefix-*`, once joined threads have left /proc
/// (their entry can outlive `pthread_join` by a moment).
fn threads_named(prefix: &str) -> usize {
    let prefix = format!("{prefix}-");
    let count = || {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|entry| {
                    std::fs::read_to_string(entry.ok()?.path().join("comm")).ok()
                })
                .filter(|name| name.starts_with(&prefix) && !name.contains("timer"))
                .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut n = count();
    while n > 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        n = count();
    }
    n
}

#[test]
fn a_refused_thread_fails_the_build_and_leaves_no_thread_behind() {
    fail_spawns("refuse3", 3);
    let result = ThreadPool::builder()
        .max_workers(8)
        .thread_name("refuse3")
        .build();
    allow_spawns("refuse3");
    match result {
        Err(BuildError::Spawn(err)) => assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock),
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert_eq!(
        threads_named("refuse3"),
        0,
        "the three started workers were joined"
    );
}

#[test]
fn growing_past_what_the_os_allows_keeps_the_workers_it_has() {
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("refgrow")
        .build(|n: u32| n)
        .unwrap();
    fail_spawns("refgrow", 3);
    assert!(pool.set_max_workers(10), "the new maximum is recorded");
    allow_spawns("refgrow");
    assert_eq!(pool.stats().workers, 5, "2 + the 3 threads the OS gave");
    let tasks: Vec<_> = (0..100).map(|n| pool.add_task(n).unwrap()).collect();
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
    pool.shutdown();
    assert_eq!(threads_named("refgrow"), 0);
}

#[test]
fn an_elastic_pool_that_cannot_grow_still_runs_everything() {
    let pool = AsyncPool::builder()
        .min_workers(1)
        .max_workers(50)
        .keep_alive(Duration::from_secs(60))
        .thread_name("refela")
        .build(|n: u32| n)
        .unwrap();
    fail_spawns("refela", 0);
    let tasks: Vec<_> = (0..200).map(|n| pool.add_task(n).unwrap()).collect();
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
    allow_spawns("refela");
    assert_eq!(pool.stats().workers, 1);
}

#[test]
fn a_timed_out_task_whose_replacement_is_refused_shrinks_the_pool_gracefully() {
    let (release, gate) = crossbeam_channel::bounded::<()>(0);
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("refrep")
        .task_timeout(Duration::from_millis(20))
        .build(move |stuck: bool| {
            if stuck {
                let _ = gate.recv();
            }
            stuck
        })
        .unwrap();
    // A first timed task starts the timer thread; then the OS refuses every thread.
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(false));
    fail_spawns("refrep", 0);
    assert_eq!(
        pool.add_task(true).unwrap().recv(),
        Err(crate::done::TaskError::TimedOut)
    );
    assert_eq!(pool.stats().workers, 1, "no replacement: one worker left");
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(false));
    allow_spawns("refrep");
    drop(release);
    pool.shutdown();
}
