//! Stress of the wake/park protocol (`src/engine/scheduler.rs`): every window the design notes
//! name — single producer/consumer hand-offs, bursts onto many parked workers, keep-alive
//! retirements racing adds, shrink/grow racing adds, adds from inside callbacks — runs under a
//! watchdog, so a lost wake-up fails the test instead of hanging it.
//!
//! The strongest check here is the barrier: a burst of N tasks that each wait for all N to have
//! started can only finish if N workers were woken at once. A fan-out that stops early is a
//! hang, which the watchdog turns into a failure.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use crate::support::{assert_settled, assert_threads_gone, eventually, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, Mailbox, ThreadPool};

/// Round trips for the ping-pong tests.
const PING_PONG_ROUNDS: u32 = 5_000;
/// Rounds of bursts onto parked workers.
const BURST_ROUNDS: usize = 30;

/// Everything accepted has ended, and the pool has `workers` workers.
fn assert_quiet(stats: slowpool::Stats, workers: usize) {
    assert_eq!(stats.workers, workers, "{stats:?}");
    assert_settled(stats);
}

#[test]
fn single_producer_single_consumer_ping_pong_never_loses_a_wake_up() {
    // Every add finds the worker(s) parked or about to park: the add/park race of "Why no
    // wake-up is lost", once per round.
    for workers in [1, 2, 7] {
        let name = format!("pingpong{workers}");
        let pool = AsyncPool::builder()
            .max_workers(workers)
            .thread_name(name.clone())
            .build(|n: u32| n.wrapping_mul(3))
            .unwrap();
        let p = pool.clone();
        watchdog("ping-pong through Task::recv", move || {
            for n in 0..PING_PONG_ROUNDS {
                assert_eq!(p.add_task(n).unwrap().recv(), Ok(n.wrapping_mul(3)));
            }
        });
        // The same through a mailbox, so the consumer blocks on a channel, not on a slot.
        let (tx, rx): (Mailbox<u32>, _) = unbounded();
        let p = pool.clone();
        watchdog("ping-pong through a mailbox", move || {
            for n in 0..PING_PONG_ROUNDS {
                let id = p.add_task_to(n, &tx).unwrap();
                let done = rx.recv().unwrap();
                assert_eq!((done.id, done.result), (id, Ok(n.wrapping_mul(3))));
            }
        });
        pool.join();
        assert_quiet(pool.stats(), workers);
        assert_eq!(pool.stats().completed, 2 * u64::from(PING_PONG_ROUNDS));
        pool.shutdown();
        assert_threads_gone(&name);
    }
}

#[test]
fn ping_pong_where_the_consumer_is_another_worker() {
    // The result of one task triggers the next add from a third thread: producer, worker and
    // consumer are three threads handing one token around.
    let pool = ThreadPool::new(2).unwrap();
    let (to_consumer, from_producer) = bounded::<slowpool::Task<u32>>(1);
    let (to_producer, from_consumer) = bounded::<u32>(1);
    let consumer = thread::spawn(move || {
        while let Ok(task) = from_producer.recv() {
            let v = task.recv().unwrap();
            if to_producer.send(v).is_err() {
                break;
            }
        }
    });
    let p = pool.clone();
    watchdog("three-thread ping-pong", move || {
        let mut v = 0u32;
        for _ in 0..PING_PONG_ROUNDS {
            to_consumer.send(p.spawn(move || v + 1).unwrap()).unwrap();
            v = from_consumer.recv().unwrap();
        }
        drop(to_consumer);
        assert_eq!(v, PING_PONG_ROUNDS);
    });
    consumer.join().unwrap();
}

#[test]
fn a_burst_wakes_every_parked_worker_at_once() {
    // N tasks that each wait until all N have started: only a fan-out that reaches every one
    // of the N parked workers lets them finish.
    const N: usize = 48;
    let pool = ThreadPool::builder()
        .max_workers(N)
        .thread_name("burst")
        .build()
        .unwrap();
    let p = pool.clone();
    watchdog("bursts onto parked workers", move || {
        for round in 0..BURST_ROUNDS {
            let barrier = Arc::new(Barrier::new(N));
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let barrier = barrier.clone();
                    p.spawn(move || {
                        barrier.wait();
                        i
                    })
                    .unwrap()
                })
                .collect();
            for (i, t) in tasks.iter().enumerate() {
                assert_eq!(t.recv(), Ok(i), "round {round}");
            }
            // Everyone parks again before the next burst, most of the time.
            if round % 3 == 0 {
                p.join();
            }
        }
    });
    pool.join();
    assert_quiet(pool.stats(), N);
    pool.shutdown();
    assert_threads_gone("burst");
}

#[test]
fn a_trickle_of_blocking_tasks_reaches_every_worker() {
    // Added one at a time with the producer racing the searchers: each add must wake a worker
    // although the previous searcher may still be between its wake-up and its try_recv.
    const N: usize = 16;
    let pool = ThreadPool::new(N).unwrap();
    let p = pool.clone();
    watchdog("trickle onto parked workers", move || {
        for _ in 0..BURST_ROUNDS * 4 {
            let barrier = Arc::new(Barrier::new(N + 1));
            let tasks: Vec<_> = (0..N)
                .map(|_| {
                    let barrier = barrier.clone();
                    let t = p.spawn(move || barrier.wait().is_leader()).unwrap();
                    thread::yield_now();
                    t
                })
                .collect();
            barrier.wait();
            let leaders = tasks.iter().filter(|t| t.recv().unwrap()).count();
            assert!(leaders <= 1);
        }
    });
    pool.join();
    assert_quiet(pool.stats(), N);
}

#[test]
fn many_producers_onto_parked_workers_lose_nothing() {
    const PRODUCERS: u64 = 6;
    const PER: u64 = 2_000;
    let pool = AsyncPool::builder()
        .max_workers(12)
        .thread_name("manyprod")
        .build(|n: u64| n)
        .unwrap();
    let p = pool.clone();
    let total = watchdog("many producers", move || {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|k| {
                let p = p.clone();
                thread::spawn(move || {
                    let mut sum = 0;
                    for n in 0..PER {
                        // Alternate hand-offs and small bursts.
                        if n % 8 == 0 {
                            let ts: Vec<_> = (0..8)
                                .map(|j| p.add_task(k * PER + n + j).unwrap())
                                .collect();
                            sum += ts.iter().map(|t| t.recv().unwrap()).sum::<u64>();
                        } else {
                            sum += p.add_task(k).unwrap().recv().unwrap();
                        }
                    }
                    sum
                })
            })
            .collect();
        producers
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<u64>()
    });
    assert!(total > 0);
    pool.join();
    assert_quiet(pool.stats(), 12);
    pool.shutdown();
    assert_threads_gone("manyprod");
}

#[test]
fn keep_alive_retirements_racing_adds_never_strand_a_job() {
    // An elastic pool whose workers retire after 1 ms idle: the producer pauses around that
    // edge, so adds land while the last worker decides to retire.
    let pool = AsyncPool::builder()
        .min_workers(0)
        .max_workers(3)
        .keep_alive(Duration::from_millis(1))
        .thread_name("retire")
        .build(|n: u32| n + 1)
        .unwrap();
    let p = pool.clone();
    watchdog("adds racing keep-alive retirements", move || {
        for n in 0..1_500u32 {
            assert_eq!(p.add_task(n).unwrap().recv(), Ok(n + 1));
            // Pause 0..~1.5 ms: sometimes before the keep-alive, sometimes across it.
            let spin = Duration::from_micros(u64::from(n % 16) * 100);
            let until = std::time::Instant::now() + spin;
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            let s = p.stats();
            assert!(s.workers <= 3, "{s:?}");
        }
    });
    pool.join();
    eventually("all workers retire", || pool.stats().workers == 0);
    // An elastic pool at zero workers still runs the next task (it grows again).
    let p = pool.clone();
    watchdog("add after everyone retired", move || {
        assert_eq!(p.add_task(41).unwrap().recv(), Ok(42))
    });
    pool.shutdown();
    assert_threads_gone("retire");
}

#[test]
fn an_elastic_burst_grows_to_the_maximum_after_retirements() {
    // After every worker retired, a burst of `MAX` tasks that wait for each other must grow the
    // pool all the way to `MAX` again; and it never goes above.
    const MAX: usize = 12;
    let pool = ThreadPool::builder()
        .min_workers(1)
        .max_workers(MAX)
        .keep_alive(Duration::from_millis(2))
        .thread_name("elburst")
        .build()
        .unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    for _round in 0..8 {
        eventually("back to the minimum", || pool.stats().workers == 1);
        let barrier = Arc::new(Barrier::new(MAX));
        let p = pool.clone();
        let (peak2, running2) = (peak.clone(), running.clone());
        watchdog("elastic burst", move || {
            let tasks: Vec<_> = (0..MAX)
                .map(|_| {
                    let (barrier, peak, running) =
                        (barrier.clone(), peak2.clone(), running2.clone());
                    p.spawn(move || {
                        let now = running.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        barrier.wait();
                        running.fetch_sub(1, SeqCst);
                    })
                    .unwrap()
                })
                .collect();
            assert!(p.stats().workers <= MAX);
            for t in &tasks {
                t.recv().unwrap();
            }
        });
    }
    assert_eq!(peak.load(SeqCst), MAX);
    pool.join();
    let s = pool.stats();
    assert!(s.workers <= MAX && s.busy == 0 && s.queued == 0, "{s:?}");
    pool.shutdown();
    assert_threads_gone("elburst");
}

#[test]
fn shrink_and_grow_racing_adds_lose_nothing_and_come_back_to_size() {
    const MAX: usize = 8;
    for elastic in [false, true] {
        let name = format!("resize{}", u8::from(elastic));
        let mut builder = ThreadPool::builder()
            .max_workers(MAX)
            .thread_name(name.clone());
        if elastic {
            builder = builder.min_workers(2).keep_alive(Duration::from_millis(3));
        }
        let pool = builder.build().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let resizer = {
            let (pool, stop) = (pool.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(SeqCst) {
                    assert!(pool.set_max_workers(1 + (n * 5) % MAX));
                    n += 1;
                    thread::yield_now();
                }
                n
            })
        };
        let p = pool.clone();
        watchdog("adds racing set_max_workers", move || {
            let producers: Vec<_> = (0..3u64)
                .map(|k| {
                    let p = p.clone();
                    thread::spawn(move || {
                        for n in 0..600u64 {
                            let v = k * 10_000 + n;
                            if n % 4 == 0 {
                                let ts: Vec<_> = (0..4u64)
                                    .map(|j| p.spawn(move || (v + j) * 2).unwrap())
                                    .collect();
                                for (j, t) in ts.iter().enumerate() {
                                    assert_eq!(t.recv(), Ok((v + j as u64) * 2));
                                }
                            } else {
                                assert_eq!(p.spawn(move || v * 2).unwrap().recv(), Ok(v * 2));
                            }
                        }
                    })
                })
                .collect();
            for h in producers {
                h.join().unwrap();
            }
        });
        stop.store(true, SeqCst);
        assert!(resizer.join().unwrap() > 0);
        assert!(pool.set_max_workers(MAX));
        pool.join();
        let s = pool.stats();
        assert_eq!((s.busy, s.queued), (0, 0), "{s:?}");
        assert!(s.workers <= MAX, "{s:?}");
        if !elastic {
            // Growing a fixed pool starts its workers at once.
            eventually("fixed pool back at its size", || {
                pool.stats().workers == MAX
            });
        }
        // All MAX workers exist (or can be started) and can be woken at once.
        let p = pool.clone();
        watchdog("workers regrown after the resizing", move || {
            for _ in 0..5 {
                let barrier = Arc::new(Barrier::new(MAX));
                let ts: Vec<_> = (0..MAX)
                    .map(|_| {
                        let b = barrier.clone();
                        p.spawn(move || {
                            b.wait();
                        })
                        .unwrap()
                    })
                    .collect();
                for t in ts {
                    t.recv().unwrap();
                }
                assert!(p.stats().workers <= MAX);
            }
        });
        pool.join();
        let s = pool.stats();
        assert_eq!((s.busy, s.queued), (0, 0), "{s:?}");
        if !elastic {
            assert_eq!(s.workers, MAX, "{s:?}");
        }
        pool.shutdown();
        assert_threads_gone(&name);
    }
}

#[test]
fn shrink_to_one_while_everyone_is_parked_then_a_burst() {
    // Shrinking wakes parked workers with CHECK; a burst racing that must still run, and the
    // one worker left must get every job.
    let pool = ThreadPool::builder()
        .max_workers(8)
        .thread_name("shrinkburst")
        .build()
        .unwrap();
    let p = pool.clone();
    watchdog("burst racing a shrink", move || {
        for round in 0..200usize {
            let shrink = {
                let p = p.clone();
                thread::spawn(move || assert!(p.set_max_workers(1 + round % 2)))
            };
            let ts: Vec<_> = (0..16usize).map(|n| p.spawn(move || n).unwrap()).collect();
            shrink.join().unwrap();
            for (n, t) in ts.iter().enumerate() {
                assert_eq!(t.recv(), Ok(n));
            }
            assert!(p.set_max_workers(8));
        }
    });
    pool.join();
    eventually("back to eight", || pool.stats().workers == 8);
    assert_quiet(pool.stats(), 8);
    pool.shutdown();
    assert_threads_gone("shrinkburst");
}

#[test]
fn adds_from_inside_callbacks_chain_and_fan_out() {
    // Every task adds its children to its own pool: the adding thread is a worker, so the
    // worker that would otherwise be woken is the adder itself, busy.
    const DEPTH: u32 = 9; // 2^10 - 1 tasks
    for workers in [1usize, 2, 5] {
        let (tx, rx): (Mailbox<u32>, _) = unbounded();
        let results = tx.clone();
        let pool = AsyncPool::builder()
            .max_workers(workers)
            .build_with(
                || (),
                move |cx, depth: u32| {
                    if depth < DEPTH {
                        cx.pool().add_task_to(depth + 1, &results).unwrap();
                        cx.pool().add_task_to(depth + 1, &results).unwrap();
                    }
                    depth
                },
            )
            .unwrap();
        pool.add_task_to(0, &tx).unwrap();
        let per_depth = watchdog("callback fan-out", move || {
            let mut per_depth = [0usize; DEPTH as usize + 1];
            for _ in 0..(1usize << (DEPTH + 1)) - 1 {
                per_depth[rx.recv().unwrap().result.unwrap() as usize] += 1;
            }
            per_depth
        });
        for (depth, n) in per_depth.iter().enumerate() {
            assert_eq!(*n, 1 << depth, "tasks at depth {depth}");
        }
        pool.join();
        assert_quiet(pool.stats(), workers);
    }
}

#[test]
fn a_chain_of_single_adds_from_callbacks_hands_off_between_workers() {
    // Each task adds exactly one successor and returns: a ping-pong where the producer is the
    // previous worker, racing its own return to the park path.
    const CHAIN: u32 = 4_000;
    let (done_tx, done_rx) = bounded::<u32>(1);
    let pool = AsyncPool::builder()
        .max_workers(3)
        .build_with(
            || (),
            move |cx, n: u32| {
                if n == CHAIN {
                    done_tx.send(n).unwrap();
                } else {
                    // Dropping the Task does not cancel it.
                    drop(cx.pool().add_task(n + 1).unwrap());
                }
                n
            },
        )
        .unwrap();
    drop(pool.add_task(0).unwrap());
    assert_eq!(
        watchdog("chain of callback adds", move || done_rx.recv().unwrap()),
        CHAIN
    );
    pool.join();
    let s = pool.stats();
    assert_quiet(s, 3);
    assert_eq!(s.completed, u64::from(CHAIN) + 1);
}

#[test]
fn hundreds_of_parked_workers_all_wake_for_a_burst_and_lifo_keeps_hand_offs_on_few() {
    const N: usize = 384;
    let pool = ThreadPool::builder()
        .max_workers(N)
        .stack_size(128 * 1024)
        .thread_name("deepstack")
        .build()
        .unwrap();
    let p = pool.clone();
    watchdog("bursts onto hundreds of parked workers", move || {
        for _ in 0..4 {
            let barrier = Arc::new(Barrier::new(N));
            let tasks: Vec<_> = (0..N)
                .map(|_| {
                    let b = barrier.clone();
                    p.spawn(move || {
                        b.wait();
                    })
                    .unwrap()
                })
                .collect();
            for t in tasks {
                t.recv().unwrap();
            }
        }
        // Sequential hand-offs: the most recently parked worker is woken each time, so a
        // handful of threads serve them all while hundreds stay parked.
        let mut names = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let name = p
                .spawn(|| thread::current().name().unwrap_or("").to_string())
                .unwrap()
                .recv()
                .unwrap();
            names.insert(name);
        }
        assert!(
            names.len() <= 8,
            "{} distinct workers served sequential hand-offs",
            names.len()
        );
    });
    pool.join();
    assert_quiet(pool.stats(), N);
    pool.shutdown();
    assert_threads_gone("deepstack");
}
