//! Keyed streams: `map_keyed_unordered`, `map_keyed_ordered` and `map_keyed_retry` keep to
//! `max_per_key`, are not held up by one key, stay within their memory bound, and account for
//! every input.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{watchdog, Concurrency};
use slowpool::{AsyncPool, Retry, TaskError};

fn sorted_items(n: u32, keys: u32) -> Vec<(u32, u32)> {
    (0..n).map(|i| (i / (n / keys), i)).collect()
}

#[test]
fn sorted_input_keeps_every_key_busy_and_never_exceeds_max_per_key() {
    // 10,000 inputs sorted by key across 10 keys, max_per_key(2), 20 workers: the window must
    // not fill with the first key. All 10 keys run at once at some point, never more than 2
    // tasks of one key.
    watchdog("sorted keyed stream", || {
        let seen = Arc::new(Concurrency::default());
        let s = seen.clone();
        let pool = AsyncPool::builder()
            .max_workers(20)
            .max_per_key(2)
            .build(move |(key, i): (u32, u32)| {
                s.enter(key);
                std::thread::sleep(Duration::from_micros(200)); // the work
                s.leave(key);
                i
            })
            .unwrap();
        let items = sorted_items(10_000, 10)
            .into_iter()
            .map(|(k, i)| (k, (k, i)));
        let mut indexes: Vec<usize> = pool
            .map_keyed_unordered(items)
            .map(|(index, result)| {
                assert_eq!(result.unwrap() as usize, index);
                index
            })
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..10_000).collect::<Vec<_>>());
        assert_eq!(seen.peak_per_key.load(SeqCst), 2);
        assert_eq!(
            seen.peak_keys.load(SeqCst),
            10,
            "a key held the others back"
        );
        assert_eq!(seen.ran.load(SeqCst), 10_000);
    });
}

#[test]
fn the_window_counts_only_tasks_their_key_lets_run() {
    // One key, max_per_key(1), in_flight(4): the pool never holds more than `max_buffered`
    // of the stream's tasks, and the window's other places go to other keys.
    watchdog("window", || {
        let pool = AsyncPool::builder()
            .max_workers(4)
            .max_per_key(1)
            .build(|i: u32| i)
            .unwrap();
        let watcher = pool.clone();
        let most_outstanding = Arc::new(AtomicUsize::new(0));
        let m = most_outstanding.clone();
        let items = (0..500u32).map(move |i| {
            let stats = watcher.stats();
            m.fetch_max((stats.submitted - stats.completed) as usize, SeqCst);
            (i % 2, i)
        });
        let n = pool
            .map_keyed_unordered(items)
            .in_flight(4)
            .max_buffered(10)
            .count();
        assert_eq!(n, 500);
        assert!(most_outstanding.load(SeqCst) <= 10);
    });
}

#[test]
fn ordered_keyed_stream_yields_in_input_order() {
    watchdog("ordered keyed", || {
        let seen = Arc::new(Concurrency::default());
        let s = seen.clone();
        let pool = AsyncPool::builder()
            .max_workers(8)
            .max_per_key(1)
            .build(move |(key, i): (u32, u32)| {
                s.enter(key);
                s.leave(key);
                i * 2
            })
            .unwrap();
        let items = sorted_items(2_000, 4).into_iter().map(|(k, i)| (k, (k, i)));
        let out: Vec<u32> = pool.map_keyed_ordered(items).map(Result::unwrap).collect();
        assert_eq!(out, (0..2_000).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(seen.peak_per_key.load(SeqCst), 1);
    });
}

#[test]
fn keyed_retry_stream_hands_back_inputs_and_keeps_to_keys() {
    watchdog("keyed retry stream", || {
        let seen = Arc::new(Concurrency::default());
        let s = seen.clone();
        let pool = AsyncPool::builder()
            .max_workers(6)
            .max_per_key(1)
            .build(move |(key, i): (u32, u32)| -> Result<u32, String> {
                s.enter(key);
                s.leave(key);
                if i % 5 == 0 {
                    Err(format!("{i} failed"))
                } else {
                    Ok(i)
                }
            })
            .unwrap();
        let policy = Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(2));
        let items = (0..300u32).map(|i| (i % 3, (i % 3, i)));
        let mut failed = Vec::new();
        let mut ok = 0;
        for done in pool.map_keyed_retry(items, policy) {
            match done.result {
                Ok(_) => {
                    assert_eq!(done.attempts, 1);
                    ok += 1;
                }
                Err(failure) => {
                    assert_eq!(done.attempts, 3);
                    failed.push(failure.input.unwrap().1);
                }
            }
        }
        failed.sort_unstable();
        assert_eq!(ok, 240);
        assert_eq!(failed, (0..300).step_by(5).collect::<Vec<_>>());
        assert_eq!(seen.peak_per_key.load(SeqCst), 1);
        assert_eq!(pool.stats().retried, 120);
    });
}

#[test]
fn a_keyed_stream_on_a_pool_that_shuts_down_ends_with_the_refused_input() {
    watchdog("shut down", || {
        let pool = AsyncPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build(|i: u32| -> Result<u32, ()> { Ok(i) })
            .unwrap();
        let stopper = pool.clone();
        let items = (0..100u32).map(move |i| {
            if i == 50 {
                stopper.shutdown_now();
            }
            (i % 4, i)
        });
        let endings: Vec<_> = pool.map_keyed_retry(items, Retry::never()).collect();
        let refused: Vec<_> = endings.iter().filter(|d| d.attempts == 0).collect();
        // Input 50 was refused and handed back; inputs cancelled by shutdown_now went back to
        // its caller (dropped here); every other ending is accounted for once.
        assert!(refused
            .iter()
            .any(|d| d.result.as_ref().err().and_then(|f| f.input) == Some(50)));
        assert!(endings.len() <= 51);
        let cancelled = endings
            .iter()
            .filter(|d| {
                d.result
                    .as_ref()
                    .err()
                    .is_some_and(|f| f.error.task_error() == Some(&TaskError::Cancelled))
            })
            .count();
        assert!(cancelled >= 1);
    });
}

#[test]
fn dropping_a_keyed_stream_cancels_what_waits_on_its_keys() {
    watchdog("drop", || {
        let (key, gate) = common::gate();
        let pool = AsyncPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build(move |i: u32| {
                gate.wait();
                i
            })
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let mut stream = pool.map_keyed_unordered((0..1_000u32).map(|i| (i % 2, i)));
        key.pass(1);
        assert!(stream.next().is_some());
        // Two keys of one running task each can never fill the window: the stream pulled up to
        // its buffer bound, and those inputs wait on their keys.
        assert!(pool.stats().waiting_on_key > 0);
        drop(stream);
        key.open();
        pool.join();
        let stats = pool.stats();
        assert_eq!(stats.completed + stats.cancelled, stats.submitted);
        assert_eq!(stats.waiting_on_key, 0);
        assert!(stats.cancelled > 0);
    });
}

#[test]
fn a_stream_fed_by_its_own_results_runs_until_nothing_is_left() {
    // A crawler's frontier: the input iterator pops a queue the loop below fills with the
    // "links" each result yields. It returns `None` whenever the queue is momentarily empty;
    // the stream asks again, and ends only when the queue is empty and nothing is outstanding.
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;
    watchdog("frontier", || {
        let pool = AsyncPool::builder()
            .max_workers(4)
            .max_per_key(2)
            .build(|n: u32| -> Result<u32, ()> { Ok(n) })
            .unwrap();
        let frontier = Rc::new(RefCell::new(VecDeque::from([0u32])));
        let feed = frontier.clone();
        let inputs = std::iter::from_fn(move || feed.borrow_mut().pop_front()).map(|n| (n % 3, n));
        let mut seen = Vec::new();
        for done in pool.map_keyed_retry(inputs, Retry::never()) {
            let n = done.result.unwrap();
            seen.push(n);
            for child in [2 * n + 1, 2 * n + 2] {
                if child < 1_000 {
                    frontier.borrow_mut().push_back(child);
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..1_000).collect::<Vec<_>>());
    });
}
