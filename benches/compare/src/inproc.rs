//! The one-process view: every contender in this one process, in one harness, rounds
//! alternating, medians reported. Beside the fresh-process runs of `compare` (each contender in
//! a child of its own, which adds each one's warm-up), this is how a program that keeps a pool
//! sees it.
//!
//! `cargo run --release -p compare -- inproc` runs both parts:
//!
//! - **overhead**: 200,000 empty tasks added to a pool built first, then every result read;
//!   `slowpool_mailbox` (`add_task_to`), `slowpool` (`add_task`, a `Task` each), `threadpool`
//!   (`execute` of a closure that sends on one result channel) and `crossbeam_floor` (raw
//!   threads on a crossbeam channel of boxed closures), at 2, 16, 64 and 256 workers;
//! - **sweep**: 20,000 sleeps of 1–20 ms (the seeded delays of `compare`'s sweep) on 4,096
//!   workers started and idle before the first add; makespan ÷ lower bound, and the process's
//!   context switches and CPU time per task from `getrusage`, between the first add and the
//!   last result. `static_floor` is what sleeping alone costs: 4,096 plain threads, each given
//!   its share of the sleeps up front (no queue, no hand-over; its makespan is not a bound);
//!   `tokio_async` is the async way: tokio sleeps on a runtime of 2 threads, at most 4,096 at
//!   once.
//!
//! Options: `--rounds N` (default 5), `--sizes 2,16`, `--tasks N`, `--only overhead|sweep`,
//! `--contenders a,b` (a subset, e.g. for timing one contender from outside).

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::work;

/// What one round of one contender cost the whole process.
#[derive(Clone, Copy, Debug)]
struct Cost {
    wall: f64,
    cpu: f64,
    switches: f64,
}

/// The process's CPU seconds (user + system) and context switches (voluntary + involuntary),
/// all threads, from `getrusage(RUSAGE_SELF)`.
fn usage() -> (f64, f64) {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        (ru.ru_nvcsw + ru.ru_nivcsw) as f64,
    )
}

/// Times `f` (which returns once every result is in), with the process's CPU and switches.
fn measure(f: impl FnOnce()) -> Cost {
    let (cpu0, sw0) = usage();
    let start = Instant::now();
    f();
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, sw1) = usage();
    Cost {
        wall,
        cpu: cpu1 - cpu0,
        switches: sw1 - sw0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

type Boxed = Box<dyn FnOnce() + Send>;

/// Raw threads looping on one crossbeam channel of boxed closures.
struct Floor {
    jobs: Option<Sender<Boxed>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Floor {
    fn new(workers: usize) -> Floor {
        let (tx, rx) = unbounded::<Boxed>();
        let threads = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            })
            .collect();
        Floor {
            jobs: Some(tx),
            threads,
        }
    }

    fn send(&self, job: Boxed) {
        self.jobs.as_ref().unwrap().send(job).unwrap();
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

/// A contender, built with its threads started: runs one round of `n` tasks of `job`'s kind.
enum Pool {
    Mailbox(slowpool::AsyncPool<u64, u64>),
    Handle(slowpool::AsyncPool<u64, u64>),
    Threadpool(threadpool::ThreadPool),
    Floor(Floor),
}

const OVERHEAD: &[&str] = &[
    "slowpool_mailbox",
    "slowpool",
    "threadpool",
    "crossbeam_floor",
];

fn build_empty(name: &str, workers: usize) -> Pool {
    match name {
        "slowpool_mailbox" => Pool::Mailbox(slowpool::AsyncPool::new(workers, |n: u64| n).unwrap()),
        "slowpool" => Pool::Handle(slowpool::AsyncPool::new(workers, |n: u64| n).unwrap()),
        "threadpool" => Pool::Threadpool(threadpool::ThreadPool::new(workers)),
        "crossbeam_floor" => Pool::Floor(Floor::new(workers)),
        other => panic!("unknown contender {other}"),
    }
}

/// Adds `n` empty tasks, then reads every result; checks the sum.
fn run_empty(pool: &Pool, n: u64) {
    let expected = n * (n - 1) / 2;
    let sum: u64 = match pool {
        Pool::Mailbox(pool) => {
            let (tx, rx) = unbounded();
            for i in 0..n {
                pool.add_task_to(i, &tx).unwrap();
            }
            (0..n).map(|_| rx.recv().unwrap().result.unwrap()).sum()
        }
        Pool::Handle(pool) => {
            let tasks: Vec<_> = (0..n).map(|i| pool.add_task(i).unwrap()).collect();
            tasks.iter().map(|t| t.recv().unwrap()).sum()
        }
        Pool::Threadpool(pool) => {
            let (tx, rx) = unbounded();
            for i in 0..n {
                let tx = tx.clone();
                pool.execute(move || tx.send(i).unwrap());
            }
            (0..n).map(|_| rx.recv().unwrap()).sum()
        }
        Pool::Floor(floor) => {
            let (tx, rx) = unbounded();
            for i in 0..n {
                let tx = tx.clone();
                floor.send(Box::new(move || tx.send(i).unwrap()));
            }
            (0..n).map(|_| rx.recv().unwrap()).sum()
        }
    };
    assert_eq!(sum, expected, "every result received");
}

/// Waits until the process has `threads` threads, then a moment for them to go idle.
fn settle(threads: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::measure::threads() < threads && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(50));
}

/// Options of the `inproc` command.
pub struct Options {
    pub rounds: usize,
    pub sizes: Vec<usize>,
    pub tasks: u64,
    pub only: Option<String>,
    pub contenders: Option<Vec<String>>,
}

pub fn main(opts: Options) {
    let chosen = |list: &[&'static str]| -> Vec<&'static str> {
        list.iter()
            .copied()
            .filter(|c| {
                opts.contenders
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|o| o == c))
            })
            .collect()
    };
    println!(
        "one process, {} rounds alternating; {} logical CPUs",
        opts.rounds,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    if opts.only.as_deref().is_none_or(|o| o == "overhead") {
        overhead(&opts, &chosen(OVERHEAD));
    }
    if opts.only.as_deref().is_none_or(|o| o == "sweep") {
        sweep(&opts, &chosen(SWEEP));
    }
}

fn overhead(opts: &Options, contenders: &[&str]) {
    let n = opts.tasks;
    println!("\n## overhead: {n} empty tasks on a pool built first, then every result\n");
    println!("| workers | contender | median M tasks/s | ÷ threadpool (median of per-round ratios) | CPU µs/task | switches/task | rounds (M/s) |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for &workers in &opts.sizes {
        let base = crate::measure::threads();
        let pools: Vec<(&str, Pool)> = contenders
            .iter()
            .map(|&c| (c, build_empty(c, workers)))
            .collect();
        settle(base + (workers * pools.len()) as u64);
        // One warm-up round each, not counted.
        for (_, pool) in &pools {
            run_empty(pool, n / 10);
        }
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); pools.len()];
        for round in 0..opts.rounds {
            // Rotate who goes first, so no contender always follows the same one.
            for k in 0..pools.len() {
                let i = (round + k) % pools.len();
                thread::sleep(Duration::from_millis(20));
                costs[i].push(measure(|| run_empty(&pools[i].1, n)));
            }
        }
        let tp = pools.iter().position(|(c, _)| *c == "threadpool");
        for (i, (name, _)) in pools.iter().enumerate() {
            let rates: Vec<f64> = costs[i].iter().map(|c| n as f64 / c.wall / 1e6).collect();
            let vs = tp.map(|t| {
                median(
                    (0..opts.rounds)
                        .map(|r| costs[t][r].wall / costs[i][r].wall)
                        .collect(),
                )
            });
            println!(
                "| {workers} | {name} | {:.2} | {} | {:.2} | {:.3} | {} |",
                median(rates.clone()),
                vs.map_or("–".into(), |v| format!("{v:.2}×")),
                median(costs[i].iter().map(|c| c.cpu / n as f64 * 1e6).collect()),
                median(costs[i].iter().map(|c| c.switches / n as f64).collect()),
                rates
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        drop(pools);
    }
}

const SWEEP: &[&str] = &[
    "slowpool",
    "slowpool_mailbox",
    "threadpool",
    "crossbeam_floor",
    "static_floor",
    "tokio_async",
];

const SWEEP_WORKERS: usize = 4096;

/// One round of the sweep on `name`: built, settled, then measured from the first add to the
/// last result.
fn sweep_round(name: &str, delays: &[Duration]) -> Cost {
    let workers = SWEEP_WORKERS;
    let base = crate::measure::threads();
    let n = delays.len();
    let sleep = |d: Duration| {
        thread::sleep(d);
        1u64
    };
    let cost = match name {
        "slowpool" | "slowpool_mailbox" => {
            let pool = slowpool::AsyncPool::new(workers, sleep).unwrap();
            settle(base + workers as u64);
            let cost = if name == "slowpool" {
                measure(|| {
                    let tasks: Vec<_> = delays.iter().map(|&d| pool.add_task(d).unwrap()).collect();
                    assert_eq!(
                        tasks.iter().map(|t| t.recv().unwrap()).sum::<u64>(),
                        n as u64
                    );
                })
            } else {
                measure(|| {
                    let (tx, rx) = unbounded();
                    for &d in delays {
                        pool.add_task_to(d, &tx).unwrap();
                    }
                    let got: u64 = (0..n).map(|_| rx.recv().unwrap().result.unwrap()).sum();
                    assert_eq!(got, n as u64);
                })
            };
            drop(pool);
            cost
        }
        "threadpool" => {
            let pool = threadpool::ThreadPool::new(workers);
            // Its threads start at `new`; touch each once so all are running.
            let (tx, rx) = unbounded();
            for _ in 0..workers {
                let tx = tx.clone();
                pool.execute(move || tx.send(()).unwrap());
            }
            (0..workers).for_each(|_| rx.recv().unwrap());
            settle(base + workers as u64);
            let cost = measure(|| {
                let (tx, rx) = unbounded();
                for &d in delays {
                    let tx = tx.clone();
                    pool.execute(move || tx.send(sleep(d)).unwrap());
                }
                assert_eq!((0..n).map(|_| rx.recv().unwrap()).sum::<u64>(), n as u64);
            });
            pool.join();
            cost
        }
        "crossbeam_floor" => {
            let floor = Floor::new(workers);
            settle(base + workers as u64);
            let cost = measure(|| {
                let (tx, rx) = unbounded();
                for &d in delays {
                    let tx = tx.clone();
                    floor.send(Box::new(move || tx.send(sleep(d)).unwrap()));
                }
                assert_eq!((0..n).map(|_| rx.recv().unwrap()).sum::<u64>(), n as u64);
            });
            drop(floor);
            cost
        }
        "static_floor" => {
            // Each thread gets every `workers`-th sleep up front and starts at a barrier.
            let start = Arc::new(Barrier::new(workers + 1));
            let (tx, rx): (Sender<u64>, Receiver<u64>) = unbounded();
            let threads: Vec<_> = (0..workers)
                .map(|w| {
                    let mine: Vec<Duration> =
                        delays.iter().copied().skip(w).step_by(workers).collect();
                    let (start, tx) = (start.clone(), tx.clone());
                    thread::spawn(move || {
                        start.wait();
                        for d in mine {
                            tx.send(sleep(d)).unwrap();
                        }
                    })
                })
                .collect();
            settle(base + workers as u64);
            let cost = measure(|| {
                start.wait();
                assert_eq!((0..n).map(|_| rx.recv().unwrap()).sum::<u64>(), n as u64);
            });
            threads.into_iter().for_each(|t| t.join().unwrap());
            cost
        }
        "tokio_async" => {
            // The async way: tokio sleeps on a runtime of 2 threads, at most `workers` at once
            // (`buffer_unordered`, as `compare` runs it).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            settle(base + 2);
            let cost = measure(|| {
                let got: u64 = runtime.block_on(async {
                    use futures::StreamExt;
                    futures::stream::iter(delays.iter().copied())
                        .map(|d| async move {
                            tokio::time::sleep(d).await;
                            1u64
                        })
                        .buffer_unordered(workers)
                        .fold(0, |sum, one| async move { sum + one })
                        .await
                });
                assert_eq!(got, n as u64);
            });
            drop(runtime);
            cost
        }
        other => panic!("unknown contender {other}"),
    };
    // Let the threads of this round leave before the next is built.
    settle_down(base);
    cost
}

fn settle_down(threads: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::measure::threads() > threads && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

fn sweep(opts: &Options, contenders: &[&str]) {
    let n = 20_000;
    let delays: Vec<Duration> = work::jobs(n, 1, 20, crate::SEED, "")
        .iter()
        .map(|j| j.delay)
        .collect();
    let sum: f64 = delays.iter().map(Duration::as_secs_f64).sum();
    let longest = delays.iter().map(Duration::as_secs_f64).fold(0.0, f64::max);
    let bound = (sum / SWEEP_WORKERS as f64).max(longest);
    println!(
        "\n## sweep: {n} sleeps of 1–20 ms on {SWEEP_WORKERS} workers built first (lower bound {:.1} ms)\n",
        bound * 1e3
    );
    println!("| contender | median ÷ lower bound | CPU µs/task | switches/task | rounds (÷ lower bound) |");
    println!("|---|---:|---:|---:|---|");
    let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); contenders.len()];
    for round in 0..opts.rounds {
        for k in 0..contenders.len() {
            let i = (round + k) % contenders.len();
            costs[i].push(sweep_round(contenders[i], &delays));
        }
    }
    for (i, name) in contenders.iter().enumerate() {
        let ratios: Vec<f64> = costs[i].iter().map(|c| c.wall / bound).collect();
        println!(
            "| {name} | {:.3} | {:.1} | {:.2} | {} |",
            median(ratios.clone()),
            median(costs[i].iter().map(|c| c.cpu / n as f64 * 1e6).collect()),
            median(costs[i].iter().map(|c| c.switches / n as f64).collect()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
}
