//! slowpool against the async way (tokio tasks, `spawn_blocking`, reqwest) and against the
//! thread pools people use today (`threadpool`, rayon), side by side, on the work the library
//! exists for: many slow requests, most of the time waiting.
//!
//! `cargo run --release -p compare` runs everything and writes `docs/benchmarks.md` and the SVG
//! charts under `docs/`. `-- --quick` runs a small version (a smoke test, nothing written).
//! `-- inproc` runs the one-process view instead: every contender in this one process, rounds
//! alternating, medians printed (see `inproc.rs`).
//!
//! Every contender runs in a child process of its own (this binary, re-executed), so its CPU
//! time, peak memory and thread count are its own; the HTTP server runs in this parent
//! process. Every contender's results are checked (every body received, total length right);
//! a contender that fails is reported as failed.

mod inproc;
mod measure;
mod report;
mod server;
mod work;

use std::process::Command;
use std::time::{Duration, Instant};

use work::{Kind, CONTENDERS};

/// One contender's run of one workload.
#[derive(Clone, Debug)]
pub struct Run {
    pub workload: String,
    pub contender: String,
    pub concurrency: usize,
    pub tasks: usize,
    /// max(sum of delays ÷ concurrency, longest delay), seconds.
    pub lower_bound: f64,
    pub result: Result<Figures, String>,
}

/// What a child measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// From before the contender is built to the last result.
    pub makespan: f64,
    /// From the first add, on a contender already built (its threads started and idle).
    pub makespan_built: f64,
    /// Seconds from the start to the first add: building the contender.
    pub build: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu: f64,
    pub peak_rss_kib: u64,
    pub peak_threads: usize,
}

const SEED: u64 = 2026;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        Some("idle") => idle_child(&args[1..]),
        Some("inproc") => {
            let value = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            let list = |name: &str| {
                value(name).map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
            };
            inproc::main(inproc::Options {
                rounds: value("--rounds").map_or(5, |r| r.parse().expect("--rounds N")),
                sizes: list("--sizes").map_or(vec![2, 16, 64, 256], |l| {
                    l.iter().map(|n| n.parse().expect("--sizes 2,16")).collect()
                }),
                tasks: value("--tasks").map_or(200_000, |n| n.parse().expect("--tasks N")),
                only: value("--only"),
                contenders: list("--contenders"),
            })
        }
        _ => {
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned();
            // `--sizes 2,16,64`: the worker counts of the overhead and sweep workloads.
            let sizes = args
                .iter()
                .position(|a| a == "--sizes")
                .and_then(|i| args.get(i + 1))
                .map(|list| {
                    list.split(',')
                        .map(|n| n.parse().expect("--sizes takes numbers: 2,16,64"))
                        .collect::<Vec<usize>>()
                });
            parent(args.iter().any(|a| a == "--quick"), only, sizes)
        }
    }
}

/// `child <contender> <kind> <concurrency> <tasks> <lo> <hi> <base url>`: runs one workload and
/// prints one `RESULT` line.
fn child(args: &[String]) {
    let contender = &args[0];
    let kind = match args[1].as_str() {
        "http" => Kind::Http,
        "sleep" => Kind::Sleep,
        _ => Kind::Empty,
    };
    let num = |i: usize| args[i].parse::<u64>().unwrap();
    let (concurrency, tasks, lo, hi) = (num(2) as usize, num(3) as usize, num(4), num(5));
    let jobs = work::jobs(tasks, lo, hi, SEED, &args[6]);
    let expected: usize = jobs.iter().map(|j| j.len).sum();
    let sampler = measure::ThreadSampler::start();
    let cpu_before = measure::cpu_seconds();
    let started = Instant::now();
    let (outcomes, first, collected) = work::run(contender, kind, jobs, concurrency);
    // Building the contender (and the settle pause after it) is left out of both: `makespan`
    // adds the time its threads took to start.
    let build = (first - started).as_secs_f64();
    let makespan_built = (collected - first).as_secs_f64();
    let paused = if work::SETTLED.load(std::sync::atomic::Ordering::SeqCst) {
        work::SETTLE.as_secs_f64()
    } else {
        0.0
    };
    let build = build - paused;
    let makespan = makespan_built + build;
    let cpu_at_collect =
        f64::from_bits(work::CPU_AT_COLLECT.load(std::sync::atomic::Ordering::SeqCst));
    let cpu = cpu_at_collect - cpu_before;
    let threads = sampler.finish();
    let total: usize = outcomes.iter().map(|o| o.0).sum();
    if outcomes.len() != tasks || total != expected {
        println!(
            "FAILED got {} results totalling {total} bytes, expected {tasks} and {expected}",
            outcomes.len()
        );
        return;
    }
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.1).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "RESULT {makespan} {} {} {cpu} {} {threads} {makespan_built} {build}",
        pct(0.50),
        pct(0.99),
        measure::peak_rss_kib()
    );
}

/// `idle <contender> <workers>`: resident memory per idle worker, printed as `IDLE <KiB>`.
fn idle_child(args: &[String]) {
    let workers: usize = args[1].parse().unwrap();
    let settle = |expected: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while measure::threads() != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let base_threads = measure::threads();
    let before = measure::rss_kib();
    let keep: Box<dyn std::any::Any> = match args[0].as_str() {
        "slowpool" => Box::new(slowpool::ThreadPool::new(workers).unwrap()),
        "slowpool_retired" => {
            // Elastic: grow to `workers` threads, then let them all retire.
            let pool = slowpool::ThreadPool::builder()
                .min_workers(0)
                .max_workers(workers)
                .keep_alive(Duration::from_millis(20))
                .build()
                .unwrap();
            let (tx, rx) = crossbeam_channel::bounded::<()>(0);
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let rx = rx.clone();
                    pool.spawn(move || {
                        let _ = rx.recv();
                    })
                    .unwrap()
                })
                .collect();
            drop(tx);
            for t in tasks {
                t.recv().unwrap();
            }
            settle(base_threads);
            Box::new(pool)
        }
        "threadpool" => {
            let pool = threadpool::ThreadPool::new(workers);
            // threadpool starts its threads lazily? No: at `new`. Touch each once anyway.
            let (tx, rx) = crossbeam_channel::unbounded();
            for _ in 0..workers {
                let tx = tx.clone();
                pool.execute(move || tx.send(()).unwrap());
            }
            for _ in 0..workers {
                rx.recv().unwrap();
            }
            Box::new(pool)
        }
        "rayon_spawn" => Box::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .build()
                .unwrap(),
        ),
        "std_threads" => {
            let (tx, rx) = crossbeam_channel::unbounded::<()>();
            let threads: Vec<_> = (0..workers)
                .map(|_| {
                    let rx = rx.clone();
                    std::thread::spawn(move || while rx.recv().is_ok() {})
                })
                .collect();
            Box::new((tx, threads))
        }
        other => panic!("unknown contender {other}"),
    };
    if args[0] != "slowpool_retired" {
        settle(base_threads + workers as u64);
    }
    let after = measure::rss_kib();
    println!("IDLE {}", (after as f64 - before as f64) / workers as f64);
    drop(keep);
}

/// Runs one child; parses its line.
fn spawn_child(args: &[String], timeout: Duration) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let output = child.wait_with_output().map_err(|e| e.to_string())?;
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            if !status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(format!("exited with {status}: {last}"));
            }
            return Ok(stdout);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("did not finish in {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn measure_run(
    workload: &str,
    contender: &str,
    kind: &str,
    concurrency: usize,
    tasks: usize,
    (lo, hi): (u64, u64),
    base: &str,
) -> Run {
    let jobs = work::jobs(tasks, lo, hi, SEED, base);
    let sum: f64 = jobs.iter().map(|j| j.delay.as_secs_f64()).sum();
    let longest = jobs
        .iter()
        .map(|j| j.delay.as_secs_f64())
        .fold(0.0, f64::max);
    let lower_bound = (sum / concurrency as f64).max(longest);
    let args: Vec<String> = vec![
        "child".into(),
        contender.into(),
        kind.into(),
        concurrency.to_string(),
        tasks.to_string(),
        lo.to_string(),
        hi.to_string(),
        base.into(),
    ];
    let timeout = Duration::from_secs_f64(lower_bound * 10.0 + 60.0);
    let result = spawn_child(&args, timeout).and_then(|out| {
        let line = out
            .lines()
            .find(|l| l.starts_with("RESULT") || l.starts_with("FAILED"));
        match line {
            Some(l) if l.starts_with("RESULT") => {
                let f: Vec<f64> = l
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap())
                    .collect();
                Ok(Figures {
                    makespan: f[0],
                    p50_ms: f[1],
                    p99_ms: f[2],
                    cpu: f[3],
                    peak_rss_kib: f[4] as u64,
                    peak_threads: f[5] as usize,
                    makespan_built: f[6],
                    build: f[7],
                })
            }
            Some(l) => Err(l.to_string()),
            None => Err("no result line".into()),
        }
    });
    let run = Run {
        workload: workload.into(),
        contender: contender.into(),
        concurrency,
        tasks,
        lower_bound,
        result,
    };
    match &run.result {
        Ok(f) => eprintln!(
            "{workload:>10} c={concurrency:<5} {contender:<22} makespan {:>7.3} s  ratio {:.3}  built {:.3} (build {:.3} s)  cpu {:.2} s  rss {:>6} KiB  threads {}",
            f.makespan,
            f.makespan / lower_bound,
            f.makespan_built / lower_bound,
            f.build,
            f.cpu,
            f.peak_rss_kib,
            f.peak_threads
        ),
        Err(e) => eprintln!("{workload:>10} c={concurrency:<5} {contender:<22} FAILED: {e}"),
    }
    run
}

fn parent(quick: bool, only: Option<String>, sizes: Option<Vec<usize>>) {
    let wanted = |workload: &str| only.as_deref().is_none_or(|o| o == workload);
    let started = Instant::now();
    let addr = server::start();
    let base = format!("http://{addr}");
    let scale = |n: usize| if quick { n / 10 } else { n };

    let mut runs = Vec::new();
    for (workload, kind) in [("http", "http"), ("sleep", "sleep")] {
        if !wanted(workload) {
            continue;
        }
        for contender in CONTENDERS {
            runs.push(measure_run(
                workload,
                contender,
                kind,
                256,
                scale(2_000),
                (5, 100),
                &base,
            ));
        }
    }
    let sweep_levels: &[usize] = if !wanted("sweep") {
        &[]
    } else if let Some(sizes) = &sizes {
        sizes
    } else if quick {
        &[16, 256]
    } else {
        &[16, 64, 256, 1024, 4096]
    };
    for &concurrency in sweep_levels {
        for contender in CONTENDERS {
            runs.push(measure_run(
                "sweep",
                contender,
                "sleep",
                concurrency,
                scale(20_000),
                (1, 20),
                &base,
            ));
        }
    }

    // Per-task overhead: empty tasks, median of three runs each.
    let mut overhead = Vec::new();
    let overhead_sizes: &[usize] = match &sizes {
        _ if !wanted("overhead") => &[],
        Some(sizes) => sizes,
        None => &[2, 64],
    };
    for &workers in overhead_sizes {
        for contender in CONTENDERS.iter().filter(|c| **c != "thread_per_request") {
            let mut rates: Vec<f64> = (0..3)
                .filter_map(|_| {
                    let run = measure_run(
                        "overhead",
                        contender,
                        "empty",
                        workers,
                        scale(200_000),
                        (0, 0),
                        &base,
                    );
                    run.result.ok().map(|f| run.tasks as f64 / f.makespan)
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            overhead.push((
                contender.to_string(),
                workers,
                rates.get(rates.len() / 2).copied(),
            ));
        }
    }

    // Idle cost per worker.
    let idle_workers = if quick { 100 } else { 1_000 };
    let idle_pools: &[&str] = if wanted("idle") {
        &[
            "slowpool",
            "slowpool_retired",
            "threadpool",
            "rayon_spawn",
            "std_threads",
        ]
    } else {
        &[]
    };
    let idle: Vec<(String, Option<f64>)> = idle_pools
        .iter()
        .map(|c| {
            let out = spawn_child(
                &["idle".into(), c.to_string(), idle_workers.to_string()],
                Duration::from_secs(120),
            );
            let kib = out.ok().and_then(|o| {
                o.lines()
                    .find(|l| l.starts_with("IDLE"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            });
            eprintln!("idle {c:<20} {kib:?} KiB per worker");
            (c.to_string(), kib)
        })
        .collect();

    let keyed = wanted("keyed").then(|| keyed_stream(quick));

    let elapsed = started.elapsed();
    if quick || only.is_some() || sizes.is_some() {
        eprintln!(
            "partial run done in {:.1} s (nothing written)",
            elapsed.as_secs_f64()
        );
        if let Some(keyed) = &keyed {
            // The section the full run writes into docs/benchmarks.md.
            println!("{}", report::keyed_section(keyed));
        }
        return;
    }
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    report::write(
        &docs,
        &runs,
        &overhead,
        &idle,
        idle_workers,
        keyed.as_ref(),
        elapsed,
    )
    .expect("write docs");
    eprintln!(
        "wrote docs/benchmarks.md and charts in {:.1} s",
        elapsed.as_secs_f64()
    );
}

/// What the keyed-stream benchmark measured: each round's makespans (sorted, shuffled) and
/// the lower bound.
pub struct KeyedRun {
    pub inputs: u64,
    pub rounds: Vec<(f64, f64)>,
    pub lower_bound: f64,
}

impl KeyedRun {
    /// Medians of the sorted and the shuffled makespans.
    pub fn medians(&self) -> (f64, f64) {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (
            median(self.rounds.iter().map(|r| r.0).collect()),
            median(self.rounds.iter().map(|r| r.1).collect()),
        )
    }
}

/// A keyed stream over input sorted by key against the same input shuffled: 10,000 sleeps of
/// 1–3 ms across 10 keys, `max_per_key(2)`, 20 workers. Prints each run, the medians and
/// their ratio (sorted ÷ shuffled), rounds alternating.
fn keyed_stream(quick: bool) -> KeyedRun {
    let n: u64 = if quick { 1_000 } else { 10_000 };
    let keys = 10;
    let work = |i: u64| Duration::from_micros(1_000 + (i * 7_919) % 2_000);
    let sorted: Vec<(u64, u64)> = (0..n).map(|i| (i / (n / keys), i)).collect();
    let mut shuffled = sorted.clone();
    // A fixed permutation (multiplicative, co-prime step): the same "shuffle" every run.
    let step = 7_927 % n;
    shuffled = (0..n)
        .map(|i| shuffled[((i * step) % n) as usize])
        .collect();
    let lower_bound: f64 = (0..n).map(|i| work(i).as_secs_f64()).sum::<f64>() / 20.0;
    let run = |items: &[(u64, u64)]| {
        let pool = slowpool::AsyncPool::builder()
            .max_workers(20)
            .max_per_key(2)
            .build(move |(_, i): (u64, u64)| std::thread::sleep(work(i)))
            .expect("pool");
        let start = Instant::now();
        let done = pool
            .stream(items.iter().copied())
            .key(|&(key, _)| key)
            .count();
        assert_eq!(done as u64, n);
        start.elapsed().as_secs_f64()
    };
    let mut rounds = Vec::new();
    for round in 0..3 {
        let (a, b) = (run(&sorted), run(&shuffled));
        eprintln!("     keyed round {round}: sorted {a:.3} s  shuffled {b:.3} s");
        rounds.push((a, b));
    }
    let keyed = KeyedRun {
        inputs: n,
        rounds,
        lower_bound,
    };
    let (sorted_s, shuffled_s) = keyed.medians();
    eprintln!(
        "     keyed {n} inputs, 10 keys, max_per_key 2, 20 workers: sorted {sorted_s:.3} s, shuffled {shuffled_s:.3} s, \
         ratio {:.3} (lower bound {lower_bound:.3} s)",
        sorted_s / shuffled_s
    );
    keyed
}
