//! Pausing a key and the per-key view: a call on the pool, or a retry decision after a 429,
//! holds every task of one key; bad input gets a typed answer; no task is lost to a pause
//! racing adds, cancels, retries, joins and shutdowns.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{assert_settled, eventually, gated, quick, watchdog};
use slowpool::{AsyncPool, Failed, PauseError, Retry, TaskError, MAX_PAUSE};

/// A pool whose callback records when it was called, with `max_per_key` 1.
fn recording() -> (AsyncPool<u32, Instant>, ()) {
    let pool = AsyncPool::builder()
        .max_workers(4)
        .max_per_key(1)
        .build(|_: u32| Instant::now())
        .unwrap();
    (pool, ())
}

#[test]
fn a_paused_key_starts_nothing_before_the_pause_ends_and_other_keys_go_on() {
    let (pool, ()) = recording();
    // Long enough that a loaded machine reads the view before it ends.
    let pause = Duration::from_secs(1);
    let until = pool.pause_key(&"a", pause).unwrap();
    let held: Vec<_> = (0..5)
        .map(|n| pool.task(n).key("a").add().unwrap())
        .collect();
    let (stats, view) = (pool.stats(), pool.key_stats(&"a").unwrap());
    if Instant::now() < until {
        assert_eq!(stats.paused_keys, 1, "{stats}");
        assert_eq!(stats.waiting_on_key, 5, "{stats}");
        assert_eq!(view.paused_until, Some(until));
        assert_eq!((view.active, view.waiting), (0, 5));
    }
    let free = pool.task(9).key("b").add().unwrap();
    let free_start = watchdog("other key", move || free.recv().unwrap());
    assert!(free_start < until, "another key waited for the pause");
    for task in held {
        let started = task.recv().unwrap();
        assert!(
            started >= until,
            "started {:?} before the pause ended",
            until - started
        );
    }
    assert_settled(pool.stats());
}

#[test]
fn bad_pauses_get_a_typed_answer_and_change_nothing() {
    let unkeyed = AsyncPool::new(1, |n: u32| n).unwrap();
    assert_eq!(
        unkeyed.pause_key(&"a", Duration::from_secs(1)),
        Err(PauseError::NoKeys)
    );
    assert_eq!(unkeyed.key_stats(&"a"), None);
    assert!(unkeyed.busiest_keys(10).is_empty());

    let (pool, ()) = recording();
    // Zero: nothing changes, nothing is remembered.
    let before = Instant::now();
    let until = pool.pause_key(&"a", Duration::ZERO).unwrap();
    assert!(until >= before && until <= Instant::now());
    assert_eq!(pool.key_stats(&"a"), None);
    assert_eq!(pool.stats().paused_keys, 0);
    // Absurdly long: refused, whatever the clock's range.
    for asked in [MAX_PAUSE + Duration::from_nanos(1), Duration::MAX] {
        assert_eq!(
            pool.pause_key(&"a", asked),
            Err(PauseError::TooLong { asked })
        );
    }
    assert_eq!(pool.stats().paused_keys, 0);
    // A key with no tasks is paused all the same, and a shorter pause does not shorten it.
    let long = pool.pause_key(&"idle", Duration::from_secs(30)).unwrap();
    assert_eq!(pool.pause_key(&"idle", Duration::from_millis(1)), Ok(long));
    assert_eq!(pool.pause_key(&"idle", Duration::ZERO), Ok(long));
    let view = pool.key_stats(&"idle").unwrap();
    assert_eq!((view.active, view.waiting, view.started), (0, 0, 0));
    assert_eq!(view.paused_until, Some(long));
    // Once shut down: refused (the paused key had no tasks, so nothing waits for it).
    pool.shutdown();
    assert_eq!(
        pool.pause_key(&"a", Duration::from_secs(1)),
        Err(PauseError::ShutDown)
    );
    let gone = {
        let pool = AsyncPool::builder()
            .max_per_key(1)
            .build(|n: u32| n)
            .unwrap();
        pool.handle()
    };
    assert_eq!(
        gone.pause_key(&"a", Duration::from_secs(1)),
        Err(PauseError::ShutDown)
    );
}

#[test]
fn a_429_pauses_its_host_for_queued_siblings_and_its_own_retry() {
    // The first call of host "a" answers 429 with a Retry-After; its siblings, added before
    // and after, and its own retry start no earlier than the pause's end.
    const PAUSE: Duration = Duration::from_millis(120);
    let refused_at = Arc::new(Mutex::new(None::<Instant>));
    let seen = refused_at.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let pool = AsyncPool::builder()
        .max_workers(4)
        .max_per_key(1)
        .build(move |n: u32| {
            let now = Instant::now();
            if n == 0 && counted.fetch_add(1, SeqCst) == 0 {
                *seen.lock().unwrap() = Some(now);
                return Err(429);
            }
            Ok(now)
        })
        .unwrap();
    let policy = Retry::attempts(3).when(|attempt| match attempt.error() {
        Failed::Callback(429) => attempt.pause_key(PAUSE),
        _ => Some(attempt.backoff()),
    });
    let mut tasks = vec![pool.task(0).key("a").retry(policy).add().unwrap()];
    tasks.extend((1..6).map(|n| pool.task(n).key("a").add().unwrap()));
    let starts: Vec<Instant> = watchdog("a paused host", move || {
        let starts = tasks.iter().map(|t| t.recv().unwrap().unwrap()).collect();
        assert_eq!(tasks[0].attempts(), 2);
        starts
    });
    let pause_end = refused_at.lock().unwrap().unwrap() + PAUSE;
    for start in starts {
        assert!(
            start >= pause_end,
            "a task of the paused host started {:?} early",
            pause_end - start
        );
    }
    assert_eq!(pool.stats().retried, 1);
    assert_settled(pool.stats());
}

#[test]
fn join_waits_for_a_paused_key_and_every_task_runs_once() {
    let (pool, ()) = recording();
    let until = pool.pause_key(&"a", Duration::from_millis(80)).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|n| pool.task(n).key("a").add().unwrap())
        .collect();
    let joiner = pool.clone();
    watchdog("join while paused", move || joiner.join());
    assert!(Instant::now() >= until);
    assert!(tasks.iter().all(|t| t.try_recv().is_ok()));
    assert_eq!(pool.stats().completed, 20);
    assert_settled(pool.stats());
}

#[test]
fn shutdown_now_and_cancel_end_the_tasks_of_a_paused_key() {
    let (pool, ()) = recording();
    pool.pause_key(&"a", Duration::from_secs(3600)).unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|n| pool.task(n).key("a").add().unwrap())
        .collect();
    assert!(pool.cancel(tasks[3].id()));
    let handed_back = watchdog("shutdown_now while paused", move || {
        let back = pool.shutdown_now();
        assert_settled(pool.stats());
        back
    });
    assert_eq!(
        handed_back.len(),
        9,
        "every unstarted input comes back once"
    );
    assert!(tasks.iter().all(|t| t.recv() == Err(TaskError::Cancelled)));
}

#[test]
fn pauses_racing_adds_cancels_and_retries_lose_no_task() {
    const PRODUCERS: u32 = 4;
    const TASKS: u32 = 300;
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let pool = AsyncPool::builder()
        .max_workers(8)
        .max_per_key(2)
        .min_interval_per_key(Duration::from_micros(50))
        .build(move |n: u32| {
            counted.fetch_add(1, SeqCst);
            if n % 7 == 0 {
                Err(n)
            } else {
                Ok(n)
            }
        })
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pauser = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            // A bounded number of pauses: an endless stream of them would hold the keys for
            // ever (which is what a pause is for), and the test would only measure that.
            for n in 0..2_000u64 {
                if stop.load(SeqCst) {
                    break;
                }
                let key = format!("host-{}", n % 5);
                let _ = pool.pause_key(&key, Duration::from_micros(200 + n % 500));
                let _ = pool.busiest_keys(3);
                let _ = pool.key_stats(&key);
                std::thread::yield_now();
            }
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut tasks = Vec::new();
                for n in 0..TASKS {
                    let key = format!("host-{}", (n + p) % 5);
                    let policy = quick::<u32>(2).when(move |a| {
                        if a.number() == 1 && n % 2 == 0 {
                            a.pause_key(Duration::from_micros(300))
                        } else {
                            Some(a.backoff())
                        }
                    });
                    let task = pool.task(n).key(key).retry(policy).add().unwrap();
                    if n % 11 == 0 {
                        pool.cancel(task.id());
                    }
                    tasks.push(task);
                }
                tasks
                    .into_iter()
                    .map(|t| match t.recv() {
                        Ok(_) | Err(TaskError::Cancelled) => 1,
                        Err(other) => panic!("unexpected ending {other:?}"),
                    })
                    .sum::<usize>()
            })
        })
        .collect();
    let ended: usize = watchdog("racing pauses", move || {
        producers.into_iter().map(|p| p.join().unwrap()).sum()
    });
    stop.store(true, SeqCst);
    pauser.join().unwrap();
    assert_eq!(ended, (PRODUCERS * TASKS) as usize, "each task ended once");
    let stats = pool.stats();
    assert_eq!(stats.submitted, u64::from(PRODUCERS * TASKS));
    assert_settled(stats);
    assert!(ran.load(SeqCst) > 0);
}

#[test]
fn the_busiest_keys_come_first_and_the_view_stays_bounded_with_many_keys() {
    const KEYS: u32 = 20_000;
    let (mut gate, pool) = gated(AsyncPool::builder().max_workers(2).max_per_key(1));
    // Key k gets 1 task, except three keys that get more.
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        tasks.push(pool.task(k).key(k).add().unwrap());
    }
    for (k, extra) in [(7u32, 5u32), (11, 3), (13, 2)] {
        for n in 0..extra {
            tasks.push(pool.task(n).key(k).add().unwrap());
        }
    }
    let busiest = pool.busiest_keys(3);
    let hashes: Vec<u64> = [7u32, 11, 13]
        .iter()
        .map(|k| pool.key_stats(k).unwrap().hash)
        .collect();
    assert_eq!(busiest.iter().map(|s| s.hash).collect::<Vec<_>>(), hashes);
    assert_eq!(busiest[0].active + busiest[0].waiting, 6);
    assert_eq!(pool.busiest_keys(0), vec![]);
    assert_eq!(pool.busiest_keys(usize::MAX).len(), KEYS as usize);
    gate.open();
    watchdog("many keys", move || {
        for task in tasks {
            task.recv().unwrap();
        }
        pool.join();
        // Idle keys are forgotten: nothing of them is left to show.
        eventually("keys forgotten", || {
            pool.busiest_keys(usize::MAX).is_empty()
        });
        assert_eq!(pool.key_stats(&7u32), None);
    });
}
