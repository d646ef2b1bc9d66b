//! Feeding pools from a Redis Stream: acknowledged work, bounded in-flight, leases that keep
//! long tasks from running twice, retries with backoff, dead letters (too many deliveries, a
//! permanent failure, a malformed entry), retention, stop with a deadline, draining, stale
//! consumers, and a SIGKILL of one of three worker processes with nothing lost.
//!
//! Needs a Redis server: `ASYNC_POOL_REDIS_URL` (as CI sets it), or a `redis-server` binary on
//! the PATH, which each test then starts on a free loopback port.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use slowpool::redis::{Entry, Failure, Producer, StreamStats, StreamWorker};
use slowpool::AsyncPool;

/// Runs `worker` on `pool` on a thread, stopping it once `done` holds; returns its stats.
fn run_until<E: slowpool::redis::EntryError + Send + 'static>(
    mut worker: StreamWorker,
    pool: AsyncPool<Entry, Result<Vec<u8>, E>>,
    url: &str,
    done: impl Fn(&mut redis::Connection, &StreamStats) -> bool + Send + 'static,
) -> StreamStats {
    let handle = worker.handle();
    let url = url.to_string();
    watchdog("the stream worker finishes", move || {
        let runner = std::thread::spawn(move || worker.run(&pool).unwrap());
        let mut con = con(&url);
        eventually_within("the worker's work is done", PATIENCE, || {
            done(&mut con, &handle.stats())
        });
        handle.stop();
        runner.join().unwrap()
    })
}

/// Records how often each entry ran, and with which delivery count.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, Vec<u64>>>>);

impl Runs {
    fn record(&self, entry: &Entry) {
        self.0
            .lock()
            .unwrap()
            .entry(entry.id.clone())
            .or_default()
            .push(entry.deliveries);
    }
    fn of(&self, id: &str) -> Vec<u64> {
        self.0.lock().unwrap().get(id).cloned().unwrap_or_default()
    }
    fn all(&self) -> HashMap<String, Vec<u64>> {
        self.0.lock().unwrap().clone()
    }
}

fn dead_letters(con: &mut redis::Connection, stream: &str) -> Vec<Fields> {
    entries(con, &format!("{stream}:dead"))
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

fn text(fields: &[(String, Vec<u8>)], name: &str) -> String {
    String::from_utf8(
        field(fields, name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .to_vec(),
    )
    .unwrap()
}

#[test]
fn every_entry_is_processed_acknowledged_and_deleted() {
    let redis = redis();
    let stream = stream_name("acked");
    let results = format!("{stream}:results");
    let mut producer = Producer::connect(&redis.url, stream.as_str()).unwrap();
    let ids = producer
        .push_batch((0..500).map(|n: u32| n.to_string()))
        .unwrap();
    assert_eq!(ids.len(), 500);
    let pool = AsyncPool::new(8, |entry: Entry| Ok::<_, String>(entry.payload)).unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .result_stream(results.as_str())
        .connect()
        .unwrap();
    let r = results.clone();
    let stats = run_until(worker, pool, &redis.url, move |con, _| xlen(con, &r) == 500);
    assert_eq!(
        (
            stats.read,
            stats.acked,
            stats.retried,
            stats.lost_lease,
            stats.in_flight
        ),
        (500, 500, 0, 0, 0)
    );
    let mut con = con(&redis.url);
    assert_eq!(
        pending(&mut con, &stream, "g"),
        0,
        "everything acknowledged"
    );
    assert_eq!(
        xlen(&mut con, &stream),
        0,
        "acknowledged entries are deleted"
    );
    let all = result_entries(&mut con, &results);
    assert_eq!(all.len(), 500, "one result each");
    let seen: HashSet<String> = all.into_iter().collect();
    assert_eq!(seen, ids.into_iter().collect());
}

#[test]
fn the_in_flight_bound_holds() {
    let redis = redis();
    let stream = stream_name("inflight");
    Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..300).map(|n: u32| n.to_string()))
        .unwrap();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, p) = (running.clone(), peak.clone());
    let pool = AsyncPool::new(16, move |entry: Entry| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        r.fetch_sub(1, Ordering::SeqCst);
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .in_flight(4)
        .connect()
        .unwrap();
    let s = stream.clone();
    let stats = run_until(worker, pool, &redis.url, move |con, stats| {
        stats.acked == 300 && pending(con, &s, "g") == 0
    });
    assert_eq!(stats.acked, 300);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "{peak} ran at once");
}

/// Regression: entries waiting in the pool's queue used to age past `claim_after` and be
/// claimed and run again by their own worker. Leases keep them fresh.
#[test]
fn tasks_three_times_longer_than_claim_after_never_run_twice() {
    let redis = redis();
    let stream = stream_name("long");
    Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..12).map(|n: u32| n.to_string()))
        .unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    // 3 threads, 12 entries in flight: the last ones wait 1.8 s in the queue, 9 × claim_after.
    let pool = AsyncPool::new(3, move |entry: Entry| {
        r.record(&entry);
        std::thread::sleep(Duration::from_millis(600));
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .in_flight(12)
        .claim_after(Duration::from_millis(200))
        .claim_every(Duration::from_millis(20))
        .connect()
        .unwrap();
    let stats = run_until(worker, pool, &redis.url, |_, stats| stats.acked == 12);
    let all = runs.all();
    assert_eq!(all.len(), 12);
    let reruns: Vec<_> = all.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(reruns.is_empty(), "entries ran twice: {reruns:?}");
    assert!(all.values().all(|d| d == &[1]), "every delivery count is 1");
    assert_eq!((stats.claimed, stats.lost_lease), (0, 0));
}

#[test]
fn a_failed_entry_is_retried_after_its_backoff_not_after_claim_after() {
    let redis = redis();
    let stream = stream_name("retry");
    let results = format!("{stream}:results");
    let id = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push(b"flaky")
        .unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(2, move |entry: Entry| {
        r.record(&entry);
        if entry.deliveries < 3 {
            return Err(Failure::retry(format!(
                "attempt {} failed",
                entry.deliveries
            )));
        }
        Ok(entry.deliveries.to_string().into_bytes())
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .result_stream(results.as_str())
        .claim_after(Duration::from_secs(60))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect()
        .unwrap();
    let started = Instant::now();
    let r = results.clone();
    let stats = run_until(worker, pool, &redis.url, move |con, _| xlen(con, &r) == 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retried long before claim_after"
    );
    assert_eq!(runs.of(&id), vec![1, 2, 3], "exact delivery counts");
    assert_eq!((stats.retried, stats.acked, stats.claimed), (2, 1, 0));
    let mut con = con(&redis.url);
    let out = entries(&mut con, &results);
    assert_eq!(text(&out[0].1, "output"), "3");
    let errors: usize = redis::cmd("HLEN")
        .arg(format!("{stream}:errors:g"))
        .query(&mut con)
        .unwrap();
    assert_eq!(errors, 0, "the error record left with the entry");
}

#[test]
fn a_poison_entry_is_dead_lettered_after_max_deliveries() {
    std::panic::set_hook(Box::new(|_| {}));
    let redis = redis();
    let stream = stream_name("poison");
    let results = format!("{stream}:results");
    let mut producer = Producer::connect(&redis.url, stream.as_str()).unwrap();
    let poison = producer.push(b"poison").unwrap();
    producer
        .push_batch((0..20).map(|n: u32| n.to_string()))
        .unwrap();
    let pool = AsyncPool::new(4, |entry: Entry| {
        if entry.payload == b"poison" {
            panic!("poison");
        }
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .result_stream(results.as_str())
        .max_deliveries(3)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .unwrap();
    let (d, r) = (format!("{stream}:dead"), results.clone());
    let stats = run_until(worker, pool, &redis.url, move |con, _| {
        xlen(con, &d) == 1 && xlen(con, &r) == 20
    });
    let _ = std::panic::take_hook();
    assert_eq!(
        (stats.acked, stats.dead_lettered, stats.retried),
        (20, 1, 2)
    );
    let mut con = con(&redis.url);
    let letter = &dead_letters(&mut con, &stream)[0];
    assert_eq!(text(letter, "entry"), poison);
    assert_eq!(text(letter, "payload"), "poison");
    assert_eq!(text(letter, "error"), "task panicked: poison");
    assert_eq!(text(letter, "deliveries"), "3");
    assert_eq!(pending(&mut con, &stream, "g"), 0);
    assert_eq!(xlen(&mut con, &stream), 0);
}

#[test]
fn a_permanent_failure_is_dead_lettered_on_its_first_delivery() {
    let redis = redis();
    let stream = stream_name("permanent");
    let id = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push(b"ftp://nope")
        .unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(2, move |entry: Entry| -> Result<Vec<u8>, Failure> {
        r.record(&entry);
        let url = entry.payload_str()?;
        Err(Failure::permanent(format!("not a URL: {url}")))
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .max_deliveries(5)
        .connect()
        .unwrap();
    let d = format!("{stream}:dead");
    let stats = run_until(worker, pool, &redis.url, move |con, _| xlen(con, &d) == 1);
    assert_eq!(runs.of(&id), vec![1], "ran once");
    assert_eq!((stats.dead_lettered, stats.retried), (1, 0));
    let letter = &dead_letters(&mut con(&redis.url), &stream)[0];
    assert_eq!(text(letter, "error"), "not a URL: ftp://nope");
    assert_eq!(text(letter, "deliveries"), "1");
}

#[test]
fn malformed_entries_are_dead_lettered_with_all_their_fields_and_the_reason() {
    let redis = redis();
    let stream = stream_name("malformed");
    let mut con = con(&redis.url);
    let no_payload: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("url")
        .arg("https://example.com/")
        .arg("blob")
        .arg(&[0xffu8, 0x00, 0x01][..])
        .query(&mut con)
        .unwrap();
    let not_utf8: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("payload")
        .arg(&[0xffu8, 0xfe][..])
        .arg("source")
        .arg("crawler-7")
        .query(&mut con)
        .unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(2, move |entry: Entry| -> Result<Vec<u8>, Failure> {
        r.record(&entry);
        Ok(entry.payload_str()?.as_bytes().to_vec())
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .connect()
        .unwrap();
    let d = format!("{stream}:dead");
    let stats = run_until(worker, pool, &redis.url, move |con, _| xlen(con, &d) == 2);
    assert_eq!(stats.dead_lettered, 2);
    assert!(
        runs.of(&no_payload).is_empty(),
        "an entry without a payload never runs"
    );
    let letters = dead_letters(&mut con, &stream);
    let by_id: HashMap<String, &Fields> = letters.iter().map(|l| (text(l, "entry"), l)).collect();
    let first = by_id[&no_payload];
    assert_eq!(text(first, "error"), "malformed entry: no `payload` field");
    assert_eq!(text(first, "url"), "https://example.com/");
    assert_eq!(field(first, "blob").unwrap(), &[0xff, 0x00, 0x01]);
    let second = by_id[&not_utf8];
    assert!(text(second, "error").starts_with("payload is not UTF-8"));
    assert_eq!(field(second, "payload").unwrap(), &[0xff, 0xfe]);
    assert_eq!(text(second, "source"), "crawler-7");
    assert_eq!(pending(&mut con, &stream, "g"), 0);
}

/// Regression: the delivery count of a claimed entry was read with one ranged XPENDING that
/// the claimer's own entries crowded out, so it defaulted to 1 and ran again.
#[test]
fn max_deliveries_1_dead_letters_an_entry_claimed_from_a_dead_consumer() {
    let redis = redis();
    let stream = stream_name("claimed");
    let mut producer = Producer::connect(&redis.url, stream.as_str()).unwrap();
    let orphan = producer.push(b"orphan").unwrap();
    let mut con = con(&redis.url);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query::<()>(&mut con)
        .unwrap();
    // A consumer reads the entry and dies.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut con)
        .unwrap();
    producer
        .push_batch((0..50).map(|n: u32| n.to_string()))
        .unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(4, move |entry: Entry| {
        r.record(&entry);
        std::thread::sleep(Duration::from_millis(5));
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .max_deliveries(1)
        .claim_after(Duration::from_millis(200))
        .claim_every(Duration::from_millis(20))
        .connect()
        .unwrap();
    let d = format!("{stream}:dead");
    let stats = run_until(worker, pool, &redis.url, move |con, stats| {
        xlen(con, &d) == 1 && stats.acked == 50
    });
    assert!(runs.of(&orphan).is_empty(), "the orphan did not run again");
    assert_eq!(stats.dead_lettered, 1);
    let letter = &dead_letters(&mut con, &stream)[0];
    assert_eq!(text(letter, "entry"), orphan);
    assert_eq!(text(letter, "deliveries"), "2");
    assert_eq!(
        text(letter, "error"),
        "delivered 2 times, more than max_deliveries (1)"
    );
    assert_eq!(text(letter, "payload"), "orphan");
}

#[test]
fn retention_leaves_no_acknowledged_entry_no_error_record_and_trims_results() {
    let redis = redis();
    let stream = stream_name("retention");
    let results = format!("{stream}:results");
    Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..1_000).map(|n: u32| n.to_string()))
        .unwrap();
    // Every entry fails once (leaving an error record), then succeeds.
    let pool = AsyncPool::new(8, |entry: Entry| {
        if entry.deliveries == 1 {
            return Err("first try fails".to_string());
        }
        Ok(entry.payload)
    })
    .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .result_stream(results.as_str())
        .result_stream_max_len(100)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .connect()
        .unwrap();
    let stats = run_until(worker, pool, &redis.url, |_, stats| stats.acked == 1_000);
    assert_eq!(stats.retried, 1_000);
    let mut con = con(&redis.url);
    assert_eq!(
        xlen(&mut con, &stream),
        0,
        "no acknowledged entry left in the job stream"
    );
    let errors: usize = redis::cmd("HLEN")
        .arg(format!("{stream}:errors:g"))
        .query(&mut con)
        .unwrap();
    assert_eq!(errors, 0, "no error record of a finished entry");
    // MAXLEN ~ trims whole nodes (stream-node-max-entries, 100 by default).
    let kept = xlen(&mut con, &results);
    assert!(
        (100..=200).contains(&kept),
        "{kept} results kept for a limit of ~100"
    );
}

/// The fence itself: a worker whose entry was claimed by another consumer while its task ran
/// writes no result, acknowledges nothing, and counts a lost lease.
#[test]
fn a_late_settle_after_another_consumer_claimed_the_entry_writes_nothing() {
    let redis = redis();
    let stream = stream_name("fence");
    let results = format!("{stream}:results");
    let id = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push(b"contested")
        .unwrap();
    let contested = id.clone();
    let (release, gate) = crossbeam_channel::bounded::<()>(0);
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let pool = AsyncPool::new(1, move |entry: Entry| {
        s.fetch_add(1, Ordering::SeqCst);
        let _ = gate.recv();
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    // A minute's claim_after: its next lease renewal is 20 s away.
    let mut worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "slow")
        .result_stream(results.as_str())
        .claim_after(Duration::from_secs(60))
        .connect()
        .unwrap();
    let handle = worker.handle();
    let url = redis.url.clone();
    let (stats, late) = watchdog("fenced settle", move || {
        let runner = std::thread::spawn(move || worker.run(&pool).unwrap());
        eventually_within("the task runs", PATIENCE, || {
            started.load(Ordering::SeqCst) == 1
        });
        // Another consumer claims the entry (as if the worker had been cut off).
        let mut con = con(&url);
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg("g")
            .arg("thief")
            .arg(0)
            .arg(&id)
            .query(&mut con)
            .unwrap();
        drop(release); // the task returns Ok; the worker tries to settle
        eventually_within("the settle was refused", PATIENCE, || {
            handle.stats().lost_lease == 1
        });
        handle.stop();
        let stats = runner.join().unwrap();
        (stats, pending_of(&mut con, &stream, "g", "thief"))
    });
    assert_eq!((stats.acked, stats.lost_lease), (0, 1));
    assert_eq!(late, vec![contested], "still pending, with the thief");
    assert_eq!(xlen(&mut con(&redis.url), &results), 0, "no result written");
}

/// An entry deleted from the stream while pending (trimmed, or `XDEL` by an operator) leaves
/// the pending list at the next claim; its error record must leave with it.
#[test]
fn the_error_record_of_an_entry_deleted_while_pending_is_removed() {
    let redis = redis();
    let stream = stream_name("deleted");
    let errors = format!("{stream}:errors:g");
    let gone = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push(b"gone")
        .unwrap();
    let mut con = con(&redis.url);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query::<()>(&mut con)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("crashed")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut con)
        .unwrap();
    redis::cmd("HSET")
        .arg(&errors)
        .arg(&gone)
        .arg("it failed once")
        .query::<()>(&mut con)
        .unwrap();
    redis::cmd("XDEL")
        .arg(&stream)
        .arg(&gone)
        .query::<()>(&mut con)
        .unwrap();
    let pool = AsyncPool::new(1, |entry: Entry| Ok::<_, String>(entry.payload)).unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .claim_after(Duration::from_millis(50))
        .claim_every(Duration::from_millis(20))
        .connect()
        .unwrap();
    let (e, s) = (errors.clone(), stream.clone());
    let stats = run_until(worker, pool, &redis.url, move |con, _| {
        let left: usize = redis::cmd("HLEN").arg(&e).query(con).unwrap();
        left == 0 && pending(con, &s, "g") == 0
    });
    assert_eq!((stats.claimed, stats.acked, stats.dead_lettered), (0, 0, 0));
}

#[test]
fn stop_hands_unstarted_entries_back_at_once_and_abandons_running_ones_at_the_deadline() {
    let redis = redis();
    let stream = stream_name("stop");
    let ids = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..5).map(|n: u32| n.to_string()))
        .unwrap();
    let (release, gate) = crossbeam_channel::bounded::<()>(0);
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let pool = AsyncPool::new(1, move |entry: Entry| {
        s.fetch_add(1, Ordering::SeqCst);
        let _ = gate.recv(); // held until the test drops `release`
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let mut worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "first")
        .in_flight(5)
        .stop_timeout(Duration::from_millis(300))
        .claim_after(Duration::from_secs(60))
        .connect()
        .unwrap();
    let handle = worker.handle();
    let (stats, first_pool) = watchdog("stop with a deadline", move || {
        // The pool outlives the run: dropping it would wait for the task held at the gate.
        let runner = std::thread::spawn(move || (worker.run(&pool).unwrap(), pool));
        eventually_within("one entry runs, four wait", PATIENCE, || {
            started.load(Ordering::SeqCst) == 1 && handle.stats().in_flight == 5
        });
        let stopped = Instant::now();
        handle.stop();
        let (stats, pool) = runner.join().unwrap();
        assert!(stopped.elapsed() < Duration::from_secs(10));
        (stats, pool)
    });
    assert_eq!((stats.handed_back, stats.acked, stats.unsettled), (5, 0, 0));
    // Another consumer takes all five at once, although its claim_after is a minute, with
    // exact counts: the four that never ran are on their first delivery.
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(5, move |entry: Entry| {
        r.record(&entry);
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let second = StreamWorker::builder(&redis.url, stream.as_str(), "g", "second")
        .claim_after(Duration::from_secs(60))
        .connect()
        .unwrap();
    let taken_at = Instant::now();
    let stats = run_until(second, pool, &redis.url, |_, stats| stats.acked == 5);
    assert!(
        taken_at.elapsed() < Duration::from_secs(30),
        "claimed at once"
    );
    assert_eq!(stats.claimed, 5);
    let mut counts: Vec<u64> = ids.iter().map(|id| runs.of(id)[0]).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![1, 1, 1, 1, 2]);
    drop(release);
    watchdog("the first pool ends", move || drop(first_pool));
}

#[test]
fn drain_returns_when_nothing_is_left_and_backlog_reports_others_pending() {
    let redis = redis();
    let stream = stream_name("drain");
    let mut producer = Producer::connect(&redis.url, stream.as_str()).unwrap();
    producer
        .push_batch((0..30).map(|n: u32| n.to_string()))
        .unwrap();
    let mut con = con(&redis.url);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query::<()>(&mut con)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("crashed")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut con)
        .unwrap();
    let pool = AsyncPool::new(4, |entry: Entry| Ok::<_, String>(entry.payload)).unwrap();
    let mut worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .drain(true)
        .connect()
        .unwrap();
    let (stats, backlog) = watchdog("drain", move || {
        let stats = worker.run(&pool).unwrap();
        (stats, worker.backlog().unwrap())
    });
    assert_eq!(stats.acked, 27);
    assert_eq!(backlog.pending, 3);
    assert_eq!(backlog.undelivered, Some(0));
    assert!(!backlog.is_empty());
    assert!(backlog
        .consumers
        .iter()
        .any(|(name, pending, _)| name == "crashed" && *pending == 3));
}

#[test]
fn stale_consumers_with_nothing_pending_are_removed() {
    let redis = redis();
    let stream = stream_name("forget");
    let mut con = con(&redis.url);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(&mut con)
        .unwrap();
    for name in ["gone-1", "gone-2"] {
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&stream)
            .arg("g")
            .arg(name)
            .query::<()>(&mut con)
            .unwrap();
    }
    Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push(b"held")
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("holder")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut con)
        .unwrap();
    let consumers = |con: &mut redis::Connection| -> Vec<String> {
        let info: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("g")
            .query(con)
            .unwrap();
        let mut names: Vec<String> = info
            .iter()
            .map(|c| redis::from_redis_value_ref(&c["name"]).unwrap())
            .collect();
        names.sort();
        names
    };
    let pool = AsyncPool::new(1, |entry: Entry| Ok::<_, String>(entry.payload)).unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .forget_consumers_after(Some(Duration::from_millis(300)))
        .connect()
        .unwrap();
    let stats = run_until(worker, pool, &redis.url, |_, stats| {
        stats.consumers_removed == 2
    });
    assert_eq!(stats.consumers_removed, 2);
    // The holder has an entry pending: it stays, whatever its idle time.
    let left = consumers(&mut con);
    assert!(left.contains(&"holder".to_string()), "{left:?}");
    assert!(!left.iter().any(|n| n.starts_with("gone")), "{left:?}");
}

#[test]
fn a_producer_with_a_capacity_refuses_when_full() {
    watchdog("capacity", producer_capacity);
}

fn producer_capacity() {
    let redis = redis();
    let stream = stream_name("capacity");
    let mut producer = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .capacity(5);
    producer
        .push_batch((0..4).map(|n: u32| n.to_string()))
        .unwrap();
    let refused = producer.push_batch(["a", "b"]).unwrap_err();
    assert!(refused.is_full(), "{refused}");
    producer.push(b"fifth").unwrap();
    let full = producer.push(b"sixth").unwrap_err();
    assert!(matches!(
        full,
        slowpool::redis::StreamError::Full {
            len: 5,
            capacity: 5
        }
    ));
    assert_eq!(xlen(&mut con(&redis.url), &stream), 5);
}

/// A worker fed to a pool it does not own (a `handle()`): when the pool's owner stops it with
/// `shutdown_now`, the entries whose tasks were cancelled go back to the group, the running one
/// is settled, and `run` returns; another consumer takes the rest at once.
#[test]
fn a_worker_on_a_handle_hands_back_what_the_pools_shutdown_now_cancelled() {
    let redis = redis();
    let stream = stream_name("handle");
    let ids = Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..5).map(|n: u32| n.to_string()))
        .unwrap();
    let (key, gate) = gate();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = AsyncPool::new(1, move |entry: Entry| {
        r.record(&entry);
        gate.wait();
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let mut worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "first")
        .in_flight(5)
        .claim_after(Duration::from_secs(60))
        .connect()
        .unwrap();
    let handle = pool.handle();
    let (stats, handed_back) = watchdog("shutdown_now under a worker", move || {
        let runner = std::thread::spawn(move || worker.run(&handle).unwrap());
        eventually_within("one entry runs, four wait", PATIENCE, || {
            let stats = pool.stats();
            (stats.busy, stats.queued) == (1, 4)
        });
        // `shutdown_now` waits for the running task: let it end once the four are cancelled.
        let watcher = pool.handle();
        let releaser = std::thread::spawn(move || {
            eventually_within("the queued four are cancelled", PATIENCE, || {
                watcher.stats().cancelled == 4
            });
            key.pass(1);
        });
        let handed_back: Vec<Entry> = pool.shutdown_now();
        releaser.join().unwrap();
        (runner.join().unwrap(), handed_back)
    });
    assert_eq!((stats.acked, stats.handed_back), (1, 4), "{stats:?}");
    let ran_first: Vec<String> = runs.all().into_keys().collect();
    assert_eq!(ran_first.len(), 1);
    let mut back: Vec<String> = handed_back.into_iter().map(|entry| entry.id).collect();
    back.sort();
    let mut rest: Vec<String> = ids
        .iter()
        .filter(|id| **id != ran_first[0])
        .cloned()
        .collect();
    rest.sort();
    // The worker sees the pool shut down and cancels its queued tasks too: whichever cancels
    // one first has it, so `shutdown_now` hands back some of the four (the others ended
    // `Cancelled` by the worker's hand), never the one that ran.
    assert!(
        back.iter().all(|id| rest.contains(id)),
        "shutdown_now hands back only entries it cancelled: {back:?}, not {ran_first:?}"
    );
    assert_eq!(pending(&mut con(&redis.url), &stream, "g"), 4);
    // Another consumer takes all four at once, though its claim_after is a minute, each on its
    // first delivery: they never ran.
    let again = Runs::default();
    let a = again.clone();
    let pool = AsyncPool::new(4, move |entry: Entry| {
        a.record(&entry);
        Ok::<_, String>(entry.payload)
    })
    .unwrap();
    let second = StreamWorker::builder(&redis.url, stream.as_str(), "g", "second")
        .claim_after(Duration::from_secs(60))
        .connect()
        .unwrap();
    let stats = run_until(second, pool, &redis.url, |_, stats| stats.acked == 4);
    assert_eq!(stats.claimed, 4);
    let mut taken: Vec<String> = again.all().into_keys().collect();
    taken.sort();
    assert_eq!(taken, rest);
    assert!(
        rest.iter().all(|id| again.of(id) == [1]),
        "{:?}",
        again.all()
    );
}

/// A pool built with `build_with` gives each of its threads a connection of its own (per-worker
/// state), where a shared one would need a lock: every entry runs once, on one of at most
/// `workers` connections.
#[test]
fn a_pool_with_a_connection_per_worker_thread_feeds_from_a_stream() {
    const WORKERS: usize = 4;
    let redis = redis();
    let stream = stream_name("per-worker");
    let results = format!("{stream}:results");
    let runs_key = format!("{stream}:runs");
    Producer::connect(&redis.url, stream.as_str())
        .unwrap()
        .push_batch((0..200).map(|n: u32| n.to_string()))
        .unwrap();
    let url = redis.url.clone();
    let pool = AsyncPool::builder()
        .max_workers(WORKERS)
        .build_with(
            move || {
                let mut connection = con(&url);
                let id: u64 = redis::cmd("CLIENT")
                    .arg("ID")
                    .query(&mut connection)
                    .unwrap();
                (connection, id)
            },
            move |cx, entry: Entry| -> Result<Vec<u8>, String> {
                let (connection, id) = cx.state();
                redis::cmd("HINCRBY")
                    .arg(&runs_key)
                    .arg(&entry.id)
                    .arg(1)
                    .query::<()>(connection)
                    .map_err(|e| e.to_string())?;
                Ok(id.to_string().into_bytes())
            },
        )
        .unwrap();
    let worker = StreamWorker::builder(&redis.url, stream.as_str(), "g", "c1")
        .result_stream(results.as_str())
        .connect()
        .unwrap();
    let stats = run_until(worker, pool, &redis.url, |_, stats| stats.acked == 200);
    assert_eq!((stats.acked, stats.retried), (200, 0));
    let mut con = con(&redis.url);
    let runs: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(format!("{stream}:runs"))
        .query(&mut con)
        .unwrap();
    assert_eq!(runs.len(), 200);
    assert!(runs.values().all(|n| *n == 1), "every entry ran once");
    let connections: HashSet<String> = entries(&mut con, &results)
        .iter()
        .map(|(_, fields)| text(fields, "output"))
        .collect();
    assert!(
        (1..=WORKERS).contains(&connections.len()),
        "{} connections for {WORKERS} workers",
        connections.len()
    );
}

/// One of the crash test's worker processes (runs only when re-executed by that test).
#[test]
fn crash_test_worker_process() {
    let Ok(consumer) = std::env::var("ASYNC_POOL_CRASH_CONSUMER") else {
        return;
    };
    let url = std::env::var("ASYNC_POOL_CRASH_URL").unwrap();
    let stream = std::env::var("ASYNC_POOL_CRASH_STREAM").unwrap();
    let name = consumer.clone();
    let runs_key = format!("{stream}:runs");
    let counter = Mutex::new(con(&url));
    let pool = AsyncPool::new(4, move |entry: Entry| {
        redis::cmd("HINCRBY")
            .arg(&runs_key)
            .arg(&entry.id)
            .arg(1)
            .query::<()>(&mut *counter.lock().unwrap())
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(1));
        Ok::<_, String>(name.clone().into_bytes())
    })
    .unwrap();
    let mut worker = StreamWorker::builder(&url, stream.as_str(), "crash", consumer.as_str())
        .result_stream(format!("{stream}:results"))
        .in_flight(8)
        .claim_after(Duration::from_secs(1))
        .claim_every(Duration::from_millis(100))
        .connect()
        .unwrap();
    let handle = worker.handle();
    let stop_key = format!("{stream}:stop");
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        let mut con = con(&url);
        loop {
            let stop: Option<String> = redis::cmd("GET").arg(&stop_key).query(&mut con).unwrap();
            // Stop too if the test process died (a failed test must not leave workers behind).
            if stop.is_some() || std::os::unix::process::parent_id() != parent {
                handle.stop();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let stats = worker.run(&pool).unwrap();
    println!("STATS {consumer} {stats:?}");
}

#[test]
fn a_killed_worker_process_loses_nothing_and_reruns_only_what_it_held() {
    const ENTRIES: usize = 5_000;
    let redis = redis();
    let stream = stream_name("crash");
    let results = format!("{stream}:results");
    let url = redis.url.clone();
    let ids: Vec<String> = {
        let mut producer = Producer::connect(&redis.url, stream.as_str()).unwrap();
        (0..ENTRIES / 500)
            .flat_map(|batch| {
                producer
                    .push_batch((0..500).map(|n| format!("{}", batch * 500 + n)))
                    .unwrap()
            })
            .collect()
    };
    // The group exists before any worker reads, so none can miss the start.
    let _ = StreamWorker::builder(&redis.url, stream.as_str(), "crash", "setup")
        .connect()
        .unwrap();
    watchdog_within("crash test", Duration::from_secs(120), move || {
        let spawn = |consumer: &str| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "stream::crash_test_worker_process",
                    "--nocapture",
                ])
                .env("ASYNC_POOL_CRASH_CONSUMER", consumer)
                .env("ASYNC_POOL_CRASH_URL", &url)
                .env("ASYNC_POOL_CRASH_STREAM", &stream)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut victim = spawn("w1");
        let survivors = [spawn("w2"), spawn("w3")];
        let mut con = con(&url);
        // Kill one worker mid-run, holding entries it read and has not acknowledged.
        eventually_within("a fifth done", PATIENCE, || {
            xlen(&mut con, &results) >= ENTRIES / 5
        });
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        // What it held: its leases lapse only claim_after (1 s) after its last renewal.
        let held: HashSet<String> = pending_of(&mut con, &stream, "crash", "w1")
            .into_iter()
            .collect();
        assert!(
            held.len() <= 8,
            "it held at most its in_flight bound: {}",
            held.len()
        );
        eventually_within("every entry settled", PATIENCE, || {
            xlen(&mut con, &stream) == 0 && pending(&mut con, &stream, "crash") == 0
        });
        redis::cmd("SET")
            .arg(format!("{stream}:stop"))
            .arg("1")
            .query::<()>(&mut con)
            .unwrap();
        for survivor in survivors {
            let out = survivor.wait_with_output().unwrap();
            assert!(out.status.success());
            eprintln!(
                "{}",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .find(|l| l.starts_with("STATS"))
                    .unwrap_or("")
            );
        }
        let all = result_entries(&mut con, &results);
        let (counts, dups) = duplicates(&all);
        assert!(
            ids.iter().all(|id| counts.contains_key(id)),
            "no entry lost"
        );
        assert_eq!(dups, 0, "no entry has two results");
        let runs: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("{stream}:runs"))
            .query(&mut con)
            .unwrap();
        let reruns: Vec<&String> = runs
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect();
        eprintln!(
            "crash test: {ENTRIES} entries, {} results, victim held {}, {} ran twice",
            all.len(),
            held.len(),
            reruns.len()
        );
        assert!(
            reruns.iter().all(|id| held.contains(*id)),
            "only entries the killed process held ran twice"
        );
    });
}
