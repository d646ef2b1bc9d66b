//! Streams (`pool.stream(inputs)`): bounded in-flight, input order, early drop, a pool that
//! shuts down, closures; and keyed streams (`.key(f)`), which keep to `max_per_key`, are not
//! held up by one key, stay within their memory bound, and account for every input.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use slowpool::{AsyncPool, Failed, Flat, Retry, TaskError, ThreadPool};

use crate::support::{
    assert_threads_gone, eventually, gate, rss_bytes, sorted_items, watchdog, Concurrency,
};

// ---------------------------------------------------------------------------------------------
// Plain streams
// ---------------------------------------------------------------------------------------------

#[test]
fn an_endless_input_streams_with_in_flight_bounded_and_memory_flat() {
    // Measured alone: tests running beside it here would grow the process's memory.
    let name = crate::test_name!("an_endless_input_streams_with_in_flight_bounded_and_memory_flat");
    if !crate::support::alone_in_a_child_process(&name) {
        return;
    }
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, p) = (running.clone(), peak.clone());
    let pool = AsyncPool::new(8, move |n: u64| {
        let now = r.fetch_add(1, SeqCst) + 1;
        p.fetch_max(now, SeqCst);
        let payload = vec![n as u8; 4096]; // some per-task memory
        r.fetch_sub(1, SeqCst);
        payload.len() as u64 + n
    })
    .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak_in_flight = Arc::new(AtomicUsize::new(0));
    let (f, pf) = (in_flight.clone(), peak_in_flight.clone());
    // An endless iterator that counts what it handed out and not yet got back.
    let inputs = (0u64..).inspect(move |_| {
        let now = f.fetch_add(1, SeqCst) + 1;
        pf.fetch_max(now, SeqCst);
    });
    let mut stream = pool.stream(inputs).in_flight(5);
    let mut rss_after_warmup = 0;
    for received in 0..10_000usize {
        let done = stream.next().expect("endless");
        assert_eq!(done.result, Ok(4096 + done.tag as u64));
        assert_eq!(done.attempts, 1);
        in_flight.fetch_sub(1, SeqCst);
        if received == 1_000 {
            rss_after_warmup = rss_bytes();
        }
    }
    let growth = rss_bytes().saturating_sub(rss_after_warmup);
    drop(stream);
    // One result has been pulled in but not yet counted back when `next` refills: +1.
    assert!(peak_in_flight.load(SeqCst) <= 5 + 1, "pulled too far ahead");
    assert!(peak.load(SeqCst) <= 5, "more than 5 callbacks ran at once");
    assert!(
        growth < 8 << 20,
        "memory grew by {growth} bytes over 9,000 tasks"
    );
}

#[test]
fn an_ordered_stream_yields_in_input_order_whatever_the_finishing_order() {
    let pool = AsyncPool::new(8, |n: u64| {
        std::thread::sleep(Duration::from_micros((97 * n) % 500)); // the work, uneven
        n
    })
    .unwrap();
    let endings: Vec<(usize, u64)> = pool
        .stream(0..500)
        .ordered()
        .in_flight(16)
        .map(|done| (done.tag, done.result.unwrap()))
        .collect();
    assert_eq!(
        endings,
        (0..500).map(|n| (n as usize, n)).collect::<Vec<_>>()
    );
}

#[test]
fn a_slow_head_stalls_intake_of_an_ordered_stream() {
    let (key, gate) = gate();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let pool = AsyncPool::new(4, move |n: u32| {
        if n == 0 {
            gate.wait();
        }
        n
    })
    .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let inputs = (0u32..1_000).inspect(move |_| {
        counter.fetch_add(1, SeqCst);
    });
    let reader = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.stream(inputs).ordered().in_flight(10).take(20).count())
    };
    eventually("the nine behind the head are done", || {
        pool.stats().completed == 9
    });
    assert_eq!(
        pulled.load(SeqCst),
        10,
        "no more than the window while the head waits"
    );
    key.open();
    assert_eq!(reader.join().unwrap(), 20);
}

#[test]
fn dropping_a_stream_early_cancels_what_it_queued() {
    let (key, gate) = gate();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("map-drop")
        .build(move |n: u32| {
            counter.fetch_add(1, SeqCst);
            if n > 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let mut stream = pool.stream(0u32..).in_flight(50);
    let first = stream.next().unwrap();
    assert_eq!((first.tag, first.attempts, first.result), (0, 1, Ok(0)));
    eventually("two tasks blocked", || pool.stats().busy == 2);
    drop(stream);
    let stats = pool.stats();
    assert_eq!(stats.queued, 0, "the queued ones were cancelled");
    assert!(stats.cancelled >= 48, "{stats:?}");
    key.open();
    pool.join();
    assert_eq!(
        ran.load(SeqCst),
        3,
        "the first result and the two that were running"
    );
    drop(pool);
    assert_threads_gone("map-drop");
}

#[test]
fn a_stream_on_a_pool_that_shuts_down_ends_with_cancelled() {
    let pool = AsyncPool::new(1, |n: u32| n).unwrap();
    pool.shutdown();
    let unordered: Vec<_> = pool
        .stream(0..10)
        .map(|d| (d.tag, d.attempts, d.result))
        .collect();
    assert_eq!(unordered, [(0, 0, Err(TaskError::Cancelled))]);
    let ordered: Vec<_> = pool
        .stream(0..10)
        .ordered()
        .map(|d| (d.tag, d.attempts, d.result))
        .collect();
    assert_eq!(ordered, [(0, 0, Err(TaskError::Cancelled))]);
    // With the input kept, the refused input itself comes back.
    let kept: Vec<_> = pool
        .stream(7..10)
        .keep_input()
        .map(|d| (d.tag, d.attempts, d.result))
        .collect();
    assert_eq!(kept, [(7, 0, Err(TaskError::Cancelled))]);
    assert_eq!(pool.stats().submitted, 0);
}

#[test]
fn thread_pools_stream_closures_too() {
    let pool = ThreadPool::new(3).unwrap();
    let jobs = (0..100u32).map(|n| move || n + 1);
    let ordered: Vec<u32> = pool
        .stream(jobs)
        .ordered()
        .map(|done| done.result.unwrap())
        .collect();
    assert_eq!(ordered, (1..=100).collect::<Vec<_>>());
    let jobs = (0..100u32).map(|n| move || n);
    let mut unordered: Vec<usize> = pool
        .stream(jobs)
        .map(|done| {
            assert_eq!(done.result, Ok(done.tag as u32));
            done.tag
        })
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..100).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Keyed streams
// ---------------------------------------------------------------------------------------------

#[test]
fn sorted_input_keeps_every_key_busy_and_never_exceeds_max_per_key() {
    // 10,000 inputs sorted by key across 10 keys, max_per_key(2), 20 workers: the window must
    // not fill with the first key. All 10 keys run at once at some point — the first input of
    // each key waits for the first of every other (a key holding the others back leaves them
    // waiting: the watchdog fails) — never more than 2 tasks of one key.
    watchdog("sorted keyed stream", || {
        let seen = Arc::new(Concurrency::default());
        let all_keys = Arc::new(std::sync::Barrier::new(10));
        let s = seen.clone();
        let pool = AsyncPool::builder()
            .max_workers(20)
            .max_per_key(2)
            .build(move |(key, i): (u32, u32)| {
                s.enter(key);
                if i % 1_000 == 0 {
                    all_keys.wait();
                }
                std::thread::sleep(Duration::from_micros(200)); // the work
                s.leave(key);
                i
            })
            .unwrap();
        let mut indexes: Vec<usize> = pool
            .stream(sorted_items(10_000, 10))
            .key(|(k, _)| *k)
            .map(|done| {
                assert_eq!(done.result.unwrap() as usize, done.tag);
                done.tag
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
    // Two keys, max_per_key(1), in_flight(4): the pool never holds more than `max_buffered`
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
        let items = (0..500u32).inspect(move |_| {
            let stats = watcher.stats();
            m.fetch_max((stats.submitted - stats.completed) as usize, SeqCst);
        });
        let n = pool
            .stream(items)
            .key(|i| i % 2)
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
        let out: Vec<u32> = pool
            .stream(sorted_items(2_000, 4))
            .key(|(k, _)| *k)
            .ordered()
            .map(|done| done.result.unwrap())
            .collect();
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
        let items = (0..300u32).map(|i| (i % 3, i));
        let mut failed = Vec::new();
        let mut ok = 0;
        for done in pool
            .stream(items)
            .key(|(k, _)| *k)
            .retry(policy)
            .keep_input()
        {
            let (_, i) = done.tag;
            match done.result.flat() {
                Ok(n) => {
                    assert_eq!((n, done.attempts), (i, 1));
                    ok += 1;
                }
                Err(failed_with) => {
                    assert_eq!(done.attempts, 3);
                    assert_eq!(failed_with, Failed::Callback(format!("{i} failed")));
                    failed.push(i);
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
        let items = (0..100u32).inspect(move |i| {
            if *i == 50 {
                stopper.shutdown_now();
            }
        });
        let endings: Vec<_> = pool
            .stream(items)
            .key(|i| i % 4)
            .retry(Retry::attempts(1))
            .keep_input()
            .collect();
        // Input 50 was refused and handed back, last, never attempted; inputs cancelled by
        // shutdown_now went back to its caller (dropped here); every other ending is
        // accounted for once.
        let refused = endings.last().unwrap();
        assert_eq!(
            (refused.tag, refused.attempts, &refused.result),
            (50, 0, &Err(TaskError::Cancelled))
        );
        assert!(endings.len() <= 51);
        let mut tags: Vec<u32> = endings.iter().map(|d| d.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), endings.len(), "an input ended twice");
        let cancelled = endings
            .iter()
            .filter(|d| d.result == Err(TaskError::Cancelled))
            .count();
        assert!(cancelled >= 1);
    });
}

#[test]
fn dropping_a_keyed_stream_cancels_what_waits_on_its_keys() {
    watchdog("drop", || {
        let (key, gate) = gate();
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
        let mut stream = pool.stream(0..1_000u32).key(|i| i % 2);
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
    watchdog("frontier", || {
        let pool = AsyncPool::builder()
            .max_workers(4)
            .max_per_key(2)
            .build(|n: u32| -> Result<u32, ()> { Ok(n) })
            .unwrap();
        let frontier = Rc::new(RefCell::new(VecDeque::from([0u32])));
        let feed = frontier.clone();
        let inputs = std::iter::from_fn(move || feed.borrow_mut().pop_front());
        let mut seen = Vec::new();
        for done in pool
            .stream(inputs)
            .key(|n| n % 3)
            .retry(Retry::attempts(1))
            .keep_input()
        {
            let n = done.result.flat().unwrap();
            assert_eq!(n, done.tag);
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
