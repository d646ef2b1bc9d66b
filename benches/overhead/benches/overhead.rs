//! Per-task overhead: 200,000 empty tasks submitted, then every result collected.
//!
//! Beside the pool, in the same run, two floors built from raw threads looping on a crossbeam
//! channel of boxed closures, replying (a) on one shared unbounded channel, (b) on a
//! `bounded(1)` channel per task. Also prints the memory each outstanding task costs.
//!
//! `cargo bench -p overhead` (set `OVERHEAD_WORKERS=2,16,64` to choose the pool sizes).

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use slowpool::{AsyncPool, Mailbox};

const TASKS: usize = 200_000;

type Job = Box<dyn FnOnce() + Send>;

/// Raw threads on one channel of boxed closures: what any pool costs at least.
struct Floor {
    jobs: Option<Sender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Floor {
    fn new(workers: usize) -> Floor {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = unbounded();
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

    fn send(&self, job: Job) {
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

fn worker_counts() -> Vec<usize> {
    std::env::var("OVERHEAD_WORKERS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 64])
}

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("overhead");
    group.throughput(Throughput::Elements(TASKS as u64));
    group.sample_size(10);
    for workers in worker_counts() {
        let floor = Floor::new(workers);
        group.bench_with_input(
            BenchmarkId::new("floor_shared_channel", workers),
            &workers,
            |b, _| {
                b.iter(|| {
                    let (tx, rx) = unbounded::<u64>();
                    for i in 0..TASKS as u64 {
                        let tx = tx.clone();
                        floor.send(Box::new(move || {
                            let _ = tx.send(black_box(i));
                        }));
                    }
                    for _ in 0..TASKS {
                        black_box(rx.recv().unwrap());
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("floor_bounded1_per_task", workers),
            &workers,
            |b, _| {
                b.iter(|| {
                    let receivers: Vec<Receiver<u64>> = (0..TASKS as u64)
                        .map(|i| {
                            let (tx, rx) = bounded(1);
                            floor.send(Box::new(move || {
                                let _ = tx.send(black_box(i));
                            }));
                            rx
                        })
                        .collect();
                    for rx in receivers {
                        black_box(rx.recv().unwrap());
                    }
                })
            },
        );
        drop(floor);

        let pool = AsyncPool::new(workers, |i: u64| black_box(i)).unwrap();
        group.bench_with_input(BenchmarkId::new("add_task", workers), &workers, |b, _| {
            b.iter(|| {
                let tasks: Vec<_> = (0..TASKS as u64)
                    .map(|i| pool.add_task(i).unwrap())
                    .collect();
                for task in tasks {
                    black_box(task.recv().unwrap());
                }
            })
        });
        group.bench_with_input(
            BenchmarkId::new("add_task_to", workers),
            &workers,
            |b, _| {
                b.iter(|| {
                    let (tx, rx): (Mailbox<u64>, _) = unbounded();
                    for i in 0..TASKS as u64 {
                        pool.add_task_to(i, &tx).unwrap();
                    }
                    for _ in 0..TASKS {
                        let _ = black_box(rx.recv().unwrap());
                    }
                })
            },
        );
    }
    group.finish();
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Bytes per outstanding task: the pool's single worker is held on a gate while 200,000 tasks
/// wait, each with its `Task` handle (and, for the floor, its `bounded(1)` receiver).
fn memory_per_task() {
    const N: usize = TASKS;
    let (release, gate) = bounded::<()>(0);
    let pool = AsyncPool::new(1, move |i: u64| {
        if i == 0 {
            let _ = gate.recv();
        }
        i
    })
    .unwrap();
    let before = rss();
    let tasks: Vec<_> = (0..N as u64).map(|i| pool.add_task(i).unwrap()).collect();
    let pool_bytes = rss().saturating_sub(before) as f64 / N as f64;
    release.send(()).unwrap();
    drop(tasks);
    pool.join();

    let floor = Floor::new(1);
    let (release, gate) = bounded::<()>(0);
    floor.send(Box::new(move || {
        let _ = gate.recv();
    }));
    let before = rss();
    let receivers: Vec<Receiver<u64>> = (0..N as u64)
        .map(|i| {
            let (tx, rx) = bounded(1);
            floor.send(Box::new(move || {
                let _ = tx.send(i);
            }));
            rx
        })
        .collect();
    let floor_bytes = rss().saturating_sub(before) as f64 / N as f64;
    release.send(()).unwrap();
    drop(receivers);
    drop(floor);
    eprintln!(
        "memory per outstanding task: add_task {pool_bytes:.0} B, floor bounded(1) per task {floor_bytes:.0} B"
    );
}

fn memory(_: &mut Criterion) {
    memory_per_task();
}

criterion_group!(benches, memory, overhead);
criterion_main!(benches);
