//! Pools on many machines fed from one Redis Stream.
//!
//! ```sh
//! redis-server --port 6379 --save '' &            # Redis 7.0 or newer
//! cargo run --release --features redis --example distributed -- produce 10000
//! cargo run --release --features redis --example distributed -- work      # on each machine
//! cargo run --release --features redis --example distributed -- bench     # entries/s, 1-3 processes
//! # (`bench --keep-acked`: the same without deleting acknowledged entries)
//! ```
//!
//! `work` runs until Ctrl-C (or, with `--drain`, until the stream has nothing left for it),
//! printing a progress line; on Ctrl-C it stops reading, hands entries not yet started back
//! to the group, lets the running ones finish (at most 10 s), settles them and prints a tally.
//! Kill it with `kill -9` instead and nothing is lost: its entries are claimed by the other
//! workers after `claim_after`. It rides out Redis restarts, reconnecting with a backoff.
//!
//! `--name` is the consumer name, by default the host name: keep it stable across restarts
//! and give each process on one host its own. `--drain` exits with status 3 while entries are
//! still pending with other consumers (a crashed one's, not yet claimable).
//!
//! The Redis address comes from `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
use slowpool::AsyncPool;

const STREAM: &str = "async_pool:jobs";
const GROUP: &str = "workers";

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The work: a payload is a number of milliseconds to spend (a stand-in for a fetch). A
/// payload that is not a number can never succeed: it is dead-lettered at once.
fn process(entry: Entry) -> Result<Vec<u8>, Failure> {
    let text = entry.payload_str()?;
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| Failure::permanent(format!("not a number: {text:?}")))?;
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
    Ok(format!("slept {ms} ms").into_bytes())
}

fn produce(n: usize, ms: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut producer = Producer::connect(&url(), STREAM)?;
    let started = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(1_000) {
        producer.push_batch(batch.iter().map(|_| ms.to_string()))?;
    }
    println!(
        "added {n} entries of {ms} ms to {STREAM} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The host name, the default consumer name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

fn work(name: &str, drain: bool, keep_acked: bool) -> Result<(), Box<dyn std::error::Error>> {
    let pool = AsyncPool::builder()
        .max_workers(32)
        .thread_name("work")
        .build(process)?;
    let mut worker = StreamWorker::builder(&url(), STREAM, GROUP, name)
        .result_stream(format!("{STREAM}:results"))
        .claim_after(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(1))
        .stop_timeout(Duration::from_secs(10))
        .drain(drain)
        .delete_acked(!keep_acked)
        .connect()?;
    let handle = worker.handle();
    let stopper = handle.clone();
    ctrlc::set_handler(move || stopper.stop())?;
    if !drain {
        let progress = handle.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            let s = progress.stats();
            eprintln!(
                "read {} acked {} in flight {} retried {} claimed {} dead {} lost {} reconnects {}",
                s.read,
                s.acked,
                s.in_flight,
                s.retried,
                s.claimed,
                s.dead_lettered,
                s.lost_lease,
                s.reconnects
            );
        });
    }
    let started = Instant::now();
    let stats = worker.run(&pool)?;
    println!(
        "{name}: {} acknowledged in {:.2} s ({} read, {} claimed, {} retried, {} dead-lettered)",
        stats.acked,
        started.elapsed().as_secs_f64(),
        stats.read,
        stats.claimed,
        stats.retried,
        stats.dead_lettered
    );
    if drain {
        let backlog = worker.backlog()?;
        if !backlog.is_empty() {
            eprintln!(
                "not drained: {} pending, {:?} undelivered",
                backlog.pending, backlog.undelivered
            );
            for (consumer, pending, idle_ms) in backlog.consumers.iter().filter(|c| c.1 > 0) {
                eprintln!("  {consumer}: {pending} pending, last seen {idle_ms} ms ago");
            }
            std::process::exit(3);
        }
    }
    Ok(())
}

fn reset() -> Result<(), Box<dyn std::error::Error>> {
    let mut con = redis::Client::open(url().as_str())?.get_connection()?;
    redis::cmd("DEL")
        .arg(STREAM)
        .arg(format!("{STREAM}:results"))
        .arg(format!("{STREAM}:dead"))
        .arg(format!("{STREAM}:errors:{GROUP}"))
        .query::<()>(&mut con)?;
    Ok(())
}

/// Entries per second through Redis with 1, 2 and 3 worker processes, beside the same tasks on
/// one in-process pool.
fn bench(keep_acked: bool) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    println!("| tasks | in-process pool | 1 process | 2 processes | 3 processes |");
    println!("|---|---:|---:|---:|---:|");
    for (label, n, ms) in [("empty", 20_000usize, 0u64), ("10 ms", 6_000, 10)] {
        let pool = AsyncPool::builder().max_workers(32).build(process)?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let entry = Entry {
                    id: i.to_string(),
                    payload: ms.to_string().into_bytes(),
                    deliveries: 1,
                };
                pool.add_task(entry)
            })
            .collect::<Result<_, _>>()?;
        for task in tasks {
            task.recv()?.map_err(|e| e.to_string())?;
        }
        let local = n as f64 / started.elapsed().as_secs_f64();
        let mut row = format!("| {label} | {local:.0}/s |");
        for procs in 1..=3 {
            reset()?;
            produce(n, ms)?;
            let started = Instant::now();
            let children: Vec<_> = (0..procs)
                .map(|p| {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["work", "--drain", "--name", &format!("bench-{p}")]);
                    if keep_acked {
                        cmd.arg("--keep-acked");
                    }
                    cmd.stdout(Stdio::null()).spawn()
                })
                .collect::<Result<_, _>>()?;
            let mut con = redis::Client::open(url().as_str())?.get_connection()?;
            loop {
                let done: usize = redis::cmd("XLEN")
                    .arg(format!("{STREAM}:results"))
                    .query(&mut con)?;
                if done >= n {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            for mut child in children {
                child.wait()?;
            }
            row.push_str(&format!(" {rate:.0}/s |"));
        }
        println!("{row}");
    }
    reset()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("produce") => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1_000);
            let ms = flag("--ms").and_then(|m| m.parse().ok()).unwrap_or(10);
            produce(n, ms)
        }
        Some("work") => {
            let name = flag("--name").unwrap_or_else(host_name);
            let has = |f: &str| args.iter().any(|a| a == f);
            work(&name, has("--drain"), has("--keep-acked"))
        }
        Some("bench") => bench(args.iter().any(|a| a == "--keep-acked")),
        Some("reset") => reset(),
        _ => {
            eprintln!("usage: distributed produce N [--ms MS] | work [--name NAME] [--drain] [--keep-acked] | bench [--keep-acked] | reset");
            std::process::exit(2);
        }
    }
}
