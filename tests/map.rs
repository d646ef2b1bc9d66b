//! Streaming maps: bounded in-flight, order, early drop.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_threads_gone, eventually, gate, rss_bytes};
use slowpool::{AsyncPool, TaskError, ThreadPool};

#[test]
fn an_endless_input_streams_with_in_flight_bounded_and_memory_flat() {
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, p) = (running.clone(), peak.clone());
    let pool = AsyncPool::new(8, move |n: u64| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        let payload = vec![n as u8; 4096]; // some per-task memory
        r.fetch_sub(1, Ordering::SeqCst);
        payload.len() as u64 + n
    })
    .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak_in_flight = Arc::new(AtomicUsize::new(0));
    let (f, pf) = (in_flight.clone(), peak_in_flight.clone());
    // An endless iterator that counts what it handed out and not yet got back.
    let inputs = (0u64..).inspect(move |_| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        pf.fetch_max(now, Ordering::SeqCst);
    });
    let mut stream = pool.map_unordered(inputs).in_flight(5);
    let mut rss_after_warmup = 0;
    for received in 0..10_000usize {
        let (index, result) = stream.next().expect("endless");
        assert_eq!(result, Ok(4096 + index as u64));
        in_flight.fetch_sub(1, Ordering::SeqCst);
        if received == 1_000 {
            rss_after_warmup = rss_bytes();
        }
    }
    let growth = rss_bytes().saturating_sub(rss_after_warmup);
    drop(stream);
    // One result has been pulled in but not yet counted back when `next` refills: +1.
    assert!(
        peak_in_flight.load(Ordering::SeqCst) <= 5 + 1,
        "pulled too far ahead"
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "more than 5 callbacks ran at once"
    );
    assert!(
        growth < 8 << 20,
        "memory grew by {growth} bytes over 9,000 tasks"
    );
}

#[test]
fn map_ordered_yields_in_input_order_whatever_the_finishing_order() {
    let pool = AsyncPool::new(8, |n: u64| {
        std::thread::sleep(Duration::from_micros((97 * n) % 500));
        n
    })
    .unwrap();
    let results: Vec<u64> = pool
        .map_ordered(0..500)
        .in_flight(16)
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (0..500).collect::<Vec<_>>());
}

#[test]
fn a_slow_head_stalls_intake_of_map_ordered() {
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
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let reader = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.map_ordered(inputs).in_flight(10).take(20).count())
    };
    eventually("the nine behind the head are done", || {
        pool.stats().completed == 9
    });
    assert_eq!(
        pulled.load(Ordering::SeqCst),
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
            counter.fetch_add(1, Ordering::SeqCst);
            if n > 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let mut stream = pool.map_unordered(0u32..).in_flight(50);
    assert_eq!(stream.next(), Some((0, Ok(0))));
    eventually("two tasks blocked", || pool.stats().busy == 2);
    drop(stream);
    let stats = pool.stats();
    assert_eq!(stats.queued, 0, "the queued ones were cancelled");
    assert!(stats.cancelled >= 48, "{stats:?}");
    key.open();
    pool.join();
    assert_eq!(
        ran.load(Ordering::SeqCst),
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
    let results: Vec<_> = pool.map_unordered(0..10).collect();
    assert_eq!(results, [(0, Err(TaskError::Cancelled))]);
    let ordered: Vec<_> = pool.map_ordered(0..10).collect();
    assert_eq!(ordered, [Err(TaskError::Cancelled)]);
}

#[test]
fn thread_pools_stream_closures_too() {
    let pool = ThreadPool::new(3).unwrap();
    let jobs = (0..100u32).map(|n| move || n + 1);
    let ordered: Vec<u32> = pool.map_ordered(jobs).map(Result::unwrap).collect();
    assert_eq!(ordered, (1..=100).collect::<Vec<_>>());
    let jobs = (0..100u32).map(|n| move || n);
    let mut unordered: Vec<usize> = pool
        .map_unordered(jobs)
        .map(|(i, r)| {
            assert_eq!(r, Ok(i as u32));
            i
        })
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..100).collect::<Vec<_>>());
}
