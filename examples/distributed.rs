//! Pools on many machines fed from one Redis Stream.
//!
//! ```sh
//! redis-server --port 6379 --save '' &            # any Redis 7
//! cargo run --release --features redis --example distributed -- produce 10000
//! cargo run --release --features redis --example distributed -- work      # on each machine
//! cargo run --release --features redis --example distributed -- bench     # entries/s, 1-3 processes
//! ```
//!
//! `work` runs until Ctrl-C (or, with `--drain`, until the stream has nothing left for it),
//! printing a progress line; on Ctrl-C it stops reading, lets the entries in flight finish,
//! acknowledges them and prints a tally. Kill it with `kill -9` instead and nothing is lost:
//! its unacknowledged entries are claimed by the other workers after `claim_after`.
//!
//! The Redis address comes from `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slowpool::redis::{Entry, Producer, StreamWorker};
use slowpool::AsyncPool;

const STREAM: &str = "async_pool:jobs";
const GROUP: &str = "workers";

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The work: a payload is a number of milliseconds to spend (a stand-in for a fetch).
fn process(entry: Entry) -> Result<Vec<u8>, String> {
    let text = String::from_utf8(entry.payload).map_err(|e| e.to_string())?;
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
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

fn work(name: &str, drain: bool) -> Result<(), Box<dyn std::error::Error>> {
    let pool = AsyncPool::builder()
        .max_workers(32)
        .thread_name("work")
        .build(process)?;
    let mut worker = StreamWorker::builder(&url(), STREAM, GROUP, name)
        .result_stream(format!("{STREAM}:results"))
        .claim_after(Duration::from_secs(5))
        .connect()?;
    let handle = worker.handle();
    let stopper = handle.clone();
    ctrlc::set_handler(move || stopper.stop())?;
    let progress = handle.clone();
    std::thread::spawn(move || {
        let mut idle_since = Instant::now();
        let mut last = 0;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let s = progress.stats();
            if !drain {
                eprintln!(
                    "read {} acked {} in flight {} retried {} claimed {} dead {}",
                    s.read, s.acked, s.in_flight, s.retried, s.claimed, s.dead_lettered
                );
            }
            if s.acked + s.dead_lettered != last || s.in_flight > 0 {
                last = s.acked + s.dead_lettered;
                idle_since = Instant::now();
            } else if drain && idle_since.elapsed() > Duration::from_millis(500) {
                progress.stop();
                return;
            }
        }
    });
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
fn bench() -> Result<(), Box<dyn std::error::Error>> {
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
            task.recv()??;
        }
        let local = n as f64 / started.elapsed().as_secs_f64();
        let mut row = format!("| {label} | {local:.0}/s |");
        for procs in 1..=3 {
            reset()?;
            produce(n, ms)?;
            let started = Instant::now();
            let children: Vec<_> = (0..procs)
                .map(|p| {
                    Command::new(&exe)
                        .args(["work", "--drain", "--name", &format!("bench-{p}")])
                        .stdout(Stdio::null())
                        .spawn()
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
            let name = flag("--name").unwrap_or_else(|| format!("worker-{}", std::process::id()));
            work(&name, args.iter().any(|a| a == "--drain"))
        }
        Some("bench") => bench(),
        Some("reset") => reset(),
        _ => {
            eprintln!("usage: distributed produce N [--ms MS] | work [--name NAME] [--drain] | bench | reset");
            std::process::exit(2);
        }
    }
}
