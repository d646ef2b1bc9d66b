//! The job every contender does, and the contenders.
//!
//! Every contender gets the same list of jobs (the same seeded delays), runs them with the same
//! concurrency, and returns, per job, the body length it got and the time from the job's
//! submission to the end of its work. The caller checks the lengths.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};
use futures::StreamExt;

/// What one job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GET the server's page with this delay and body length.
    Http,
    /// Sleep for the delay (std sleep on threads, tokio sleep on the async contender).
    Sleep,
    /// Nothing: the per-task overhead.
    Empty,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub delay: Duration,
    pub len: usize,
    pub url: Arc<str>,
}

/// The seeded jobs of one run: delays uniform in `lo..=hi` ms, body lengths 16..80 bytes.
pub fn jobs(n: usize, lo: u64, hi: u64, seed: u64, base: &str) -> Vec<Job> {
    let mut state = seed;
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let delay = if hi == 0 {
                0
            } else {
                lo + (state >> 33) % (hi - lo + 1)
            };
            let len = 16 + i % 64;
            Job {
                delay: Duration::from_millis(delay),
                len,
                url: format!("{base}/?d={delay}&n={len}").into(),
            }
        })
        .collect()
}

/// One job's outcome: body length, and submission-to-done latency.
pub type Outcome = (usize, Duration);

fn agent(concurrency: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_idle_connections(concurrency)
        .max_idle_connections_per_host(concurrency)
        // No timeouts: with any, ureq resolves each address on a thread of its own.
        // 16 KiB buffers: ureq's default 128 KiB in and out per connection would be most of the
        // memory measured, and the bodies here are tiny.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(16 * 1024)
        .build()
        .into()
}

/// The blocking form of a job, shared by every thread-based contender.
fn run_blocking(kind: Kind, job: &Job, agent: &ureq::Agent, added: Instant) -> Outcome {
    let len = match kind {
        Kind::Http => {
            let mut body = Vec::with_capacity(job.len);
            agent
                .get(&*job.url)
                .call()
                .expect("request")
                .body_mut()
                .as_reader()
                .read_to_end(&mut body)
                .expect("body");
            body.len()
        }
        Kind::Sleep => {
            std::thread::sleep(job.delay);
            job.len
        }
        Kind::Empty => job.len,
    };
    (len, added.elapsed())
}

pub const CONTENDERS: &[&str] = &[
    "slowpool",
    "slowpool_mailbox",
    "threadpool",
    "rayon_spawn",
    "tokio_spawn_blocking",
    "tokio_async",
    "thread_per_request",
    "crossbeam_floor",
];

/// Waits until the `workers` threads a pool started at build are running and have had time to
/// go idle, so a makespan measured from the next instant excludes starting them. Returns that
/// instant (the first add).
fn built(workers: usize) -> Instant {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while (crate::measure::threads() as usize) < workers && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(SETTLE);
    SETTLED.store(true, std::sync::atomic::Ordering::SeqCst);
    Instant::now()
}

/// The instant the last outcome was collected; also records the process's CPU time then, so
/// that tearing the contender down (joining thousands of threads, or not) is not counted.
fn collected() -> Instant {
    let cpu = crate::measure::cpu_seconds();
    CPU_AT_COLLECT.store(cpu.to_bits(), std::sync::atomic::Ordering::SeqCst);
    Instant::now()
}

/// CPU seconds of the process when the last outcome was collected (`f64` bits).
pub static CPU_AT_COLLECT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The pause `built` makes after the threads started, so they are idle at the first add.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);
/// Set when `built` paused: the pause is no part of any makespan.
pub static SETTLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `jobs` on the contender `name` with `concurrency` workers; returns the outcomes in any
/// order, the instant of the first add (after the contender's threads were built and idle, for
/// pools that start them at build), and the instant the last outcome was collected (before the
/// contender is torn down).
pub fn run(
    name: &str,
    kind: Kind,
    jobs: Vec<Job>,
    concurrency: usize,
) -> (Vec<Outcome>, Instant, Instant) {
    let agent = agent(concurrency);
    let n = jobs.len();
    match name {
        "slowpool" => {
            let pool =
                slowpool::AsyncPool::new(concurrency, move |(job, added): (Job, Instant)| {
                    run_blocking(kind, &job, &agent, added)
                })
                .unwrap();
            let first = built(concurrency);
            let tasks: Vec<_> = jobs
                .into_iter()
                .map(|job| pool.add_task((job, Instant::now())).unwrap())
                .collect();
            (
                tasks.iter().map(|t| t.recv().unwrap()).collect(),
                first,
                collected(),
            )
        }
        "slowpool_mailbox" => {
            let pool =
                slowpool::AsyncPool::new(concurrency, move |(job, added): (Job, Instant)| {
                    run_blocking(kind, &job, &agent, added)
                })
                .unwrap();
            let first = built(concurrency);
            let (tx, rx) = unbounded();
            for job in jobs {
                pool.add_task_to((job, Instant::now()), &tx).unwrap();
            }
            (
                (0..n).map(|_| rx.recv().unwrap().result.unwrap()).collect(),
                first,
                collected(),
            )
        }
        "threadpool" => {
            let pool = threadpool::ThreadPool::new(concurrency);
            let first = built(concurrency);
            let (tx, rx) = unbounded();
            for job in jobs {
                let (tx, agent, added) = (tx.clone(), agent.clone(), Instant::now());
                pool.execute(move || tx.send(run_blocking(kind, &job, &agent, added)).unwrap());
            }
            let out = (
                (0..n).map(|_| rx.recv().unwrap()).collect(),
                first,
                collected(),
            );
            pool.join();
            out
        }
        "rayon_spawn" => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(concurrency)
                .build()
                .unwrap();
            let first = built(concurrency);
            let (tx, rx) = unbounded();
            for job in jobs {
                let (tx, agent, added) = (tx.clone(), agent.clone(), Instant::now());
                pool.spawn(move || tx.send(run_blocking(kind, &job, &agent, added)).unwrap());
            }
            (
                (0..n).map(|_| rx.recv().unwrap()).collect(),
                first,
                collected(),
            )
        }
        "tokio_spawn_blocking" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(concurrency)
                .enable_all()
                .build()
                .unwrap();
            let first = Instant::now();
            runtime.block_on(async move {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|job| {
                        let (agent, added) = (agent.clone(), Instant::now());
                        tokio::task::spawn_blocking(move || run_blocking(kind, &job, &agent, added))
                    })
                    .collect();
                let mut out = Vec::with_capacity(n);
                for h in handles {
                    out.push(h.await.unwrap());
                }
                (out, first, collected())
            })
        }
        "tokio_async" => tokio_async(kind, jobs, concurrency),
        "thread_per_request" => {
            // No queue: every job is "added" at the start and waits for a free slot.
            let added = Instant::now();
            let first = added;
            let mut alive: VecDeque<std::thread::JoinHandle<Outcome>> = VecDeque::new();
            let mut out = Vec::with_capacity(n);
            for job in jobs {
                if alive.len() == concurrency {
                    out.push(alive.pop_front().unwrap().join().unwrap());
                }
                let agent = agent.clone();
                alive.push_back(std::thread::spawn(move || {
                    run_blocking(kind, &job, &agent, added)
                }));
            }
            out.extend(alive.into_iter().map(|h| h.join().unwrap()));
            (out, first, collected())
        }
        "crossbeam_floor" => {
            // Raw threads looping on one channel of boxed closures: what any pool costs at
            // least.
            type Boxed = Box<dyn FnOnce() + Send>;
            let (jobs_tx, jobs_rx) = unbounded::<Boxed>();
            let threads: Vec<_> = (0..concurrency)
                .map(|_| {
                    let rx = jobs_rx.clone();
                    std::thread::spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })
                })
                .collect();
            let first = built(concurrency);
            let (tx, rx): (Sender<Outcome>, _) = unbounded();
            for job in jobs {
                let (tx, agent, added) = (tx.clone(), agent.clone(), Instant::now());
                jobs_tx
                    .send(Box::new(move || {
                        tx.send(run_blocking(kind, &job, &agent, added)).unwrap()
                    }))
                    .unwrap();
            }
            let out = (
                (0..n).map(|_| rx.recv().unwrap()).collect(),
                first,
                collected(),
            );
            drop(jobs_tx);
            for t in threads {
                t.join().unwrap();
            }
            out
        }
        other => panic!("unknown contender {other}"),
    }
}

/// The async way: tokio tasks (reqwest for HTTP, tokio's sleep), at most `concurrency` at
/// once through `buffer_unordered`; empty jobs are one `tokio::spawn` each.
fn tokio_async(kind: Kind, jobs: Vec<Job>, concurrency: usize) -> (Vec<Outcome>, Instant, Instant) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if kind == Kind::Empty { concurrency } else { 2 })
        .enable_all()
        .build()
        .unwrap();
    let first = Instant::now();
    runtime.block_on(async move {
        if kind == Kind::Empty {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|job| {
                    let added = Instant::now();
                    tokio::spawn(async move { (job.len, added.elapsed()) })
                })
                .collect();
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await.unwrap());
            }
            return (out, first, collected());
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .unwrap();
        // No queue: every job is "added" at the start and waits for a free slot.
        let added = Instant::now();
        let out = futures::stream::iter(jobs)
            .map(|job| {
                let client = client.clone();
                async move {
                    let len = match kind {
                        Kind::Http => client
                            .get(&*job.url)
                            .send()
                            .await
                            .expect("request")
                            .bytes()
                            .await
                            .expect("body")
                            .len(),
                        _ => {
                            tokio::time::sleep(job.delay).await;
                            job.len
                        }
                    };
                    (len, added.elapsed())
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        (out, first, collected())
    })
}
