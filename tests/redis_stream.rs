//! Feeding pools from a Redis Stream: acknowledged work, bounded in-flight, dead letters, and
//! a crash of one of three worker processes with nothing lost.
//!
//! Needs a Redis server: `ASYNC_POOL_REDIS_URL` (as CI sets it), or a `redis-server` binary on
//! the PATH, which each test then starts on a free port. Without either the tests fail.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::watchdog;
use slowpool::redis::{Entry, Producer, StreamWorker};
use slowpool::AsyncPool;

/// A Redis to test against; a server this test started is stopped on drop.
struct Redis {
    url: String,
    server: Option<Child>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn redis() -> Redis {
    if let Ok(url) = std::env::var("ASYNC_POOL_REDIS_URL") {
        return Redis { url, server: None };
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need Redis: set ASYNC_POOL_REDIS_URL, or install redis-server ({e})"
            )
        });
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if ready.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not start: {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        url,
        server: Some(server),
    }
}

/// Stream names unique to one test run, so tests can share a server.
fn names(test: &str) -> (String, String) {
    let nonce = std::process::id() as u64 * 1_000 + rand_suffix();
    (format!("{test}:{nonce}"), format!("{test}:{nonce}:results"))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % 1_000
}

fn con(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn xlen(con: &mut redis::Connection, stream: &str) -> usize {
    redis::cmd("XLEN").arg(stream).query(con).unwrap()
}

fn pending(con: &mut redis::Connection, stream: &str, group: &str) -> usize {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(con)
        .unwrap();
    match summary {
        redis::Value::Array(parts) => redis::from_redis_value_ref(&parts[0]).unwrap(),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Entry ids recorded in a result stream, with how many times each appears.
fn result_entries(con: &mut redis::Connection, results: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(results)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| e.get::<String>("entry").unwrap())
        .collect()
}

/// Runs `worker` on `pool` on a thread, stopping it once `done` holds.
fn run_until(
    mut worker: StreamWorker,
    pool: AsyncPool<Entry, Result<Vec<u8>, String>>,
    url: &str,
    done: impl Fn(&mut redis::Connection) -> bool + Send + 'static,
) -> slowpool::redis::StreamStats {
    let handle = worker.handle();
    let runner = std::thread::spawn(move || worker.run(&pool).unwrap());
    let mut con = con(url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&mut con) {
        assert!(
            Instant::now() < deadline,
            "the worker never finished: {:?}",
            handle.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.stop();
    watchdog("stream worker stops", move || runner.join().unwrap())
}

#[test]
fn every_entry_is_processed_and_acknowledged() {
    let redis = redis();
    let (stream, results) = names("acked");
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
    let stats = run_until(worker, pool, &redis.url, move |con| xlen(con, &r) == 500);
    assert_eq!(
        (stats.read, stats.acked, stats.retried, stats.in_flight),
        (500, 500, 0, 0)
    );
    let mut con = con(&redis.url);
    assert_eq!(
        pending(&mut con, &stream, "g"),
        0,
        "everything acknowledged"
    );
    let seen: HashSet<String> = result_entries(&mut con, &results).into_iter().collect();
    assert_eq!(seen, ids.into_iter().collect());
}

#[test]
fn the_in_flight_bound_holds() {
    let redis = redis();
    let (stream, _) = names("inflight");
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
    let handle = worker.handle();
    let stream2 = stream.clone();
    let stats = run_until(worker, pool, &redis.url, move |con| {
        handle.stats().acked == 300 && pending(con, &stream2, "g") == 0
    });
    assert_eq!(stats.acked, 300);
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "{} ran at once",
        peak.load(Ordering::SeqCst)
    );
}

#[test]
fn a_poison_entry_is_dead_lettered_after_max_deliveries() {
    std::panic::set_hook(Box::new(|_| {}));
    let redis = redis();
    let (stream, results) = names("poison");
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
        .claim_after(Duration::from_millis(50))
        .claim_every(Duration::from_millis(20))
        .max_deliveries(3)
        .connect()
        .unwrap();
    let dead = format!("{stream}:dead");
    let (d, r) = (dead.clone(), results.clone());
    let stats = run_until(worker, pool, &redis.url, move |con| {
        xlen(con, &d) == 1 && xlen(con, &r) == 20
    });
    let _ = std::panic::take_hook();
    assert_eq!(
        (stats.acked, stats.dead_lettered, stats.retried),
        (20, 1, 3)
    );
    let mut con = con(&redis.url);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&dead)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let letter = &reply.ids[0];
    assert_eq!(letter.get::<String>("entry").unwrap(), poison);
    assert_eq!(letter.get::<Vec<u8>>("payload").unwrap(), b"poison");
    assert_eq!(
        letter.get::<String>("error").unwrap(),
        "task panicked: poison"
    );
    assert_eq!(letter.get::<u64>("deliveries").unwrap(), 4);
    assert_eq!(pending(&mut con, &stream, "g"), 0);
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
    let pool = AsyncPool::new(4, move |_: Entry| {
        std::thread::sleep(Duration::from_millis(1));
        Ok::<_, String>(name.clone().into_bytes())
    })
    .unwrap();
    let mut worker = StreamWorker::builder(&url, stream.as_str(), "crash", consumer.as_str())
        .result_stream(format!("{stream}:results"))
        .in_flight(8)
        .claim_after(Duration::from_millis(500))
        .claim_every(Duration::from_millis(100))
        .connect()
        .unwrap();
    let handle = worker.handle();
    let stop_key = format!("{stream}:stop");
    std::thread::spawn(move || {
        let mut con = con(&url);
        loop {
            let stop: Option<String> = redis::cmd("GET").arg(&stop_key).query(&mut con).unwrap();
            if stop.is_some() {
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
fn a_killed_worker_process_loses_nothing() {
    const ENTRIES: usize = 5_000;
    let redis = redis();
    // The workers write to `{stream}:results`, which is what `names` gives.
    let (stream, results) = names("crash");
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
    let spawn = |consumer: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_test_worker_process", "--nocapture"])
            .env("ASYNC_POOL_CRASH_CONSUMER", consumer)
            .env("ASYNC_POOL_CRASH_URL", &redis.url)
            .env("ASYNC_POOL_CRASH_STREAM", &stream)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn("w1");
    let survivors = [spawn("w2"), spawn("w3")];
    let mut con = con(&redis.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill one worker mid-run, holding entries it read and has not acknowledged.
    while xlen(&mut con, &results) < ENTRIES / 5 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    // The survivors claim what it held; wait until every entry has a result and none is pending.
    loop {
        let seen: HashSet<String> = result_entries(&mut con, &results).into_iter().collect();
        if seen.len() == ENTRIES && pending(&mut con, &stream, "crash") == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {ENTRIES} entries have a result",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    redis::cmd("SET")
        .arg(format!("{stream}:stop"))
        .arg("1")
        .query::<()>(&mut con)
        .unwrap();
    for survivor in survivors {
        let out = watchdog("survivor stops", move || {
            survivor.wait_with_output().unwrap()
        });
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
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), ENTRIES, "every entry has a result");
    assert!(ids.iter().all(|id| unique.contains(id)), "no entry lost");
    let duplicates = all.len() - unique.len();
    eprintln!(
        "crash test: {ENTRIES} entries, {} results, {duplicates} duplicate results",
        all.len()
    );
    // A result and its acknowledgement are written together, so an entry the killed worker
    // finished is never redone; what it held unfinished (at most its in-flight bound) is.
    assert!(duplicates <= 8, "{duplicates} duplicate results");
}
