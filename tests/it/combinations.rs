//! Features in combination: `join` inside tasks, timeouts, keys, bounded queues and mailboxes,
//! shrinking and shutdown, together. Each test is named after the behaviour it pins; most were
//! found as bugs in the first engine (whose "a task ends" bookkeeping was written three times)
//! and are kept as regression tests.

//!
//! A callback reaches its own pool (to `join` it, to add to it) through `cx.pool()`, a handle
//! given by `Builder::build_with`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{assert_threads_gone, eventually, gate, thread_names, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, BuildError, Mailbox, TaskError};

fn spin(micros: u64) {
    let until = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Input 0 joins the pool from inside its task; other inputs spin that many microseconds.
fn joining_pool(name: &str) -> AsyncPool<u64, u64> {
    AsyncPool::builder()
        .max_workers(3)
        .thread_name(name)
        .build_with(
            || (),
            |cx, n: u64| {
                if n == 0 {
                    cx.pool().join();
                } else {
                    spin(n);
                }
                n
            },
        )
        .unwrap()
}

#[test]
fn join_inside_a_task_never_misses_the_last_ending() {
    let pool = joining_pool("lostwake");
    watchdog("1,500 rounds of join inside a task", move || {
        for _ in 0..1_500 {
            let joiner = pool.add_task(0).unwrap();
            let a = pool.add_task(20).unwrap();
            let b = pool.add_task(20).unwrap();
            assert_eq!(joiner.recv(), Ok(0));
            assert_eq!((a.recv(), b.recv()), (Ok(20), Ok(20)));
        }
        pool.shutdown();
    });
}

#[test]
fn join_inside_a_task_racing_a_shutdown_from_another_thread_never_deadlocks() {
    for run in 0..30 {
        let pool = joining_pool(&format!("joinsd{run}"));
        let (rounds_tx, rounds) = unbounded::<()>();
        let adder = pool.clone();
        let producer = thread::spawn(move || {
            // Rounds until the pool refuses work.
            while let (Ok(j), Ok(a), Ok(b)) =
                (adder.add_task(0), adder.add_task(20), adder.add_task(20))
            {
                let _ = rounds_tx.send(());
                for task in [j, a, b] {
                    assert!(matches!(task.recv(), Ok(_) | Err(TaskError::Cancelled)));
                }
            }
        });
        for _ in 0..(run % 5) * 10 + 1 {
            let _ = rounds.recv();
        }
        watchdog("shutdown while a task joins", move || {
            pool.shutdown();
            producer.join().unwrap();
        });
        assert_threads_gone(&format!("joinsd{run}"));
    }
}

/// A pool of one worker whose input `Join` adds `Hang` then joins (so its worker runs `Hang`
/// inline, inside `join`), and whose `Hang` blocks until the gate opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Join,
    Hang,
    Quick,
}

#[test]
fn a_task_run_inside_join_that_times_out_leaves_no_phantom_idle_worker() {
    let (mut key, gate) = gate();
    let pool = AsyncPool::builder()
        .min_workers(0)
        .max_workers(1)
        .keep_alive(Duration::from_millis(10))
        .thread_name("phantom")
        .build_with(
            || (),
            move |cx, step: Step| {
                let pool = cx.pool();
                match step {
                    Step::Join => {
                        let hang = pool
                            .task(Step::Hang)
                            .timeout(Duration::from_millis(30))
                            .add();
                        pool.join();
                        assert_eq!(hang.unwrap().recv(), Err(TaskError::TimedOut));
                    }
                    Step::Hang => gate.wait(),
                    Step::Quick => {}
                }
                step
            },
        )
        .unwrap();
    let joiner = pool.add_task(Step::Join).unwrap();
    // The inline task timed out: its thread was abandoned and a replacement took its place.
    eventually("the inline task is abandoned", || {
        pool.stats().abandoned == 1
    });
    key.open();
    assert_eq!(watchdog("joiner", move || joiner.recv()), Ok(Step::Join));
    // The replacement retires after its keep-alive; a new task must still find a worker.
    eventually("every thread gone", || {
        let s = pool.stats();
        s.workers == 0 && s.abandoned == 0
    });
    let quick = pool.add_task(Step::Quick).unwrap();
    assert_eq!(
        watchdog("a task after", move || quick.recv()),
        Ok(Step::Quick)
    );
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.queued), (0, 0), "{stats:?}");
    pool.shutdown();
    assert_threads_gone("phantom");
}

#[test]
fn a_bounded_queue_keeps_its_capacity_after_a_task_run_inside_join_times_out() {
    let (mut key, gate) = gate();
    let (mut hold_key, hold) = crate::support::gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .queue_capacity(1)
        .max_abandoned(4)
        .thread_name("phantomq")
        .build_with(
            || (),
            move |cx, step: Step| {
                let pool = cx.pool();
                match step {
                    Step::Join => {
                        let hang = pool
                            .task(Step::Hang)
                            .timeout(Duration::from_millis(30))
                            .add();
                        pool.join();
                        drop(hang);
                    }
                    Step::Hang => gate.wait(),
                    Step::Quick => hold.wait(),
                }
                step
            },
        )
        .unwrap();
    let joiner = pool.add_task(Step::Join).unwrap();
    eventually("the inline task is abandoned", || {
        pool.stats().abandoned == 1
    });
    key.open();
    assert_eq!(watchdog("joiner", move || joiner.recv()), Ok(Step::Join));
    eventually("the abandoned thread left", || pool.stats().abandoned == 0);
    // One worker, busy; one place in the queue.
    let busy = pool.add_task(Step::Quick).unwrap();
    eventually("the worker is busy", || busy.is_running());
    let queued = pool.task(Step::Quick).try_add().unwrap();
    match pool.task(Step::Quick).try_add() {
        Err(err) => assert!(err.is_full()),
        Ok(_) => panic!("a second queued task was accepted: {:?}", pool.stats()),
    }
    hold_key.open();
    assert_eq!(busy.recv(), Ok(Step::Quick));
    assert_eq!(queued.recv(), Ok(Step::Quick));
    pool.shutdown();
}

#[test]
fn a_thread_whose_joiner_and_inline_task_both_time_out_is_abandoned_once() {
    let (mut key, gate) = gate();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (running.clone(), most.clone());
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_abandoned(4)
        .task_timeout(Duration::from_millis(100))
        .thread_name("twice")
        .build_with(
            || (),
            move |cx, step: Step| {
                let pool = cx.pool();
                match step {
                    Step::Join => {
                        let hang = pool.add_task(Step::Hang);
                        pool.join();
                        drop(hang);
                    }
                    Step::Hang => gate.wait(),
                    Step::Quick => {
                        let n = now.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(n, SeqCst);
                        spin(200);
                        now.fetch_sub(1, SeqCst);
                    }
                }
                step
            },
        )
        .unwrap();
    let joiner = pool.add_task(Step::Join).unwrap();
    assert_eq!(joiner.recv(), Err(TaskError::TimedOut));
    eventually("both timed out", || pool.stats().timed_out == 2);
    let stats = pool.stats();
    assert_eq!(stats.abandoned, 1, "one thread, abandoned once: {stats:?}");
    assert_eq!(stats.workers, 1, "{stats:?}");
    let quick: Vec<_> = (0..20)
        .map(|_| pool.add_task(Step::Quick).unwrap())
        .collect();
    for task in quick {
        assert_eq!(task.recv(), Ok(Step::Quick));
    }
    assert_eq!(most.load(SeqCst), 1, "one worker runs one task at a time");
    key.open();
    eventually("the abandoned thread left", || pool.stats().abandoned == 0);
    pool.shutdown();
    assert_eq!(pool.stats().workers, 0);
    assert_threads_gone("twice");
}

#[test]
fn join_in_a_task_that_timed_out_still_waits_for_the_others() {
    let (mut key, gate) = gate();
    let other_done = Arc::new(AtomicBool::new(false));
    let (seen_tx, seen) = unbounded::<bool>();
    let done = other_done.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("latejoin")
        .build_with(
            || (),
            move |cx, step: Step| {
                match step {
                    Step::Join => {
                        cx.pool().join();
                        let _ = seen_tx.send(done.load(SeqCst));
                    }
                    Step::Hang => {
                        gate.wait();
                        done.store(true, SeqCst);
                    }
                    Step::Quick => {}
                }
                step
            },
        )
        .unwrap();
    let other = pool.add_task(Step::Hang).unwrap();
    let joiner = pool
        .task(Step::Join)
        .timeout(Duration::from_millis(30))
        .add()
        .unwrap();
    assert_eq!(joiner.recv(), Err(TaskError::TimedOut));
    key.open();
    assert_eq!(other.recv(), Ok(Step::Hang));
    assert!(
        watchdog("the joiner returns", move || seen.recv().unwrap()),
        "join returned before the other task ended"
    );
    pool.shutdown();
}

/// CPU time this thread has used (Linux: utime + stime in /proc/thread-self/stat, in ticks).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn join_in_a_task_after_the_pool_shrank_waits_without_spinning() {
    let (mut key, gate) = gate();
    let (cpu_tx, cpu) = unbounded::<(u64, Duration)>();
    let (joining_tx, joining) = unbounded::<()>();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("nospin")
        .build_with(
            || (),
            move |cx, step: Step| {
                match step {
                    Step::Join => {
                        let (ticks, started) = (thread_cpu_ticks(), Instant::now());
                        let _ = joining_tx.send(());
                        cx.pool().join();
                        let _ = cpu_tx.send((thread_cpu_ticks() - ticks, started.elapsed()));
                    }
                    Step::Hang => gate.wait(),
                    Step::Quick => {}
                }
                step
            },
        )
        .unwrap();
    let hang = pool.add_task(Step::Hang).unwrap();
    let joiner = pool.add_task(Step::Join).unwrap();
    eventually("both running", || hang.is_running() && joiner.is_running());
    joining.recv().unwrap();
    assert!(pool.set_max_workers(1));
    // Let the joiner wait a while; a spinning join would burn that time on the CPU.
    thread::sleep(Duration::from_millis(300));
    key.open();
    let (ticks, waited) = watchdog("joiner", move || cpu.recv().unwrap());
    assert!(waited >= Duration::from_millis(300));
    // Ticks are 10 ms: a waiting join uses none or one; a spinning one about 30.
    assert!(ticks <= 5, "join used {ticks} ticks of CPU in {waited:?}");
    pool.shutdown();
}

#[test]
fn cancelling_into_a_full_bounded_mailbox_starts_one_courier_not_a_thread_per_result() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("courier")
        .build(move |n: u32| {
            if n == 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    // Dropped before the pool if an assertion fails: the held task returns, the pool shuts down.
    let mut key = key;
    let (mailbox, results): (Mailbox<u32>, _) = bounded(1);
    // Fill the mailbox, then hold the only worker.
    let first = pool.add_task_to(1, &mailbox).unwrap();
    eventually("the mailbox is full", || results.is_full());
    let held = pool.add_task(0).unwrap();
    eventually("the worker is held", || held.is_running());
    for n in 2..2_002 {
        pool.add_task_to(n, &mailbox).unwrap();
    }
    // The pool's own threads only: other tests run beside this one.
    let pool_threads = || {
        thread_names()
            .iter()
            .filter(|name| name.starts_with("courier"))
            .count()
    };
    let threads_before = pool_threads();
    let cancelled = pool.cancel_all();
    assert_eq!(cancelled.len(), 2_000);
    assert_eq!(pool.stats().cancelled, 2_000);
    assert!(
        pool_threads() <= threads_before + 1,
        "2,000 blocked deliveries started threads: {:?}",
        thread_names()
    );
    key.open();
    assert_eq!(held.recv(), Ok(0));
    // `join` waits until every ending has been delivered.
    let joined = Arc::new(AtomicBool::new(false));
    let joiner = {
        let (pool, joined) = (pool.clone(), joined.clone());
        thread::spawn(move || {
            pool.join();
            joined.store(true, SeqCst);
        })
    };
    let done = results.recv().unwrap();
    assert_eq!((done.id, done.result), (first, Ok(1)));
    for _ in 0..1_000 {
        assert_eq!(results.recv().unwrap().result, Err(TaskError::Cancelled));
    }
    assert!(
        !joined.load(SeqCst),
        "join returned with 1,000 deliveries left"
    );
    for _ in 0..1_000 {
        assert_eq!(results.recv().unwrap().result, Err(TaskError::Cancelled));
    }
    watchdog("join after the last delivery", move || {
        joiner.join().unwrap()
    });
    assert!(results.try_recv().is_err(), "exactly one message per task");
    pool.shutdown();
    assert_threads_gone("courier");
}

#[test]
fn shutdown_timeout_returns_while_workers_block_on_a_full_mailbox_nobody_reads() {
    let pool = AsyncPool::builder()
        .max_workers(4)
        .thread_name("fullbox")
        .build(|n: u32| n)
        .unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = bounded(2);
    for n in 0..10 {
        pool.add_task_to(n, &mailbox).unwrap();
    }
    eventually("the mailbox is full", || results.is_full());
    // Called from the receiver's own thread, which will not read until it returns.
    let started = Instant::now();
    let finished = watchdog("shutdown_timeout", move || {
        let finished = pool.shutdown_timeout(Duration::from_millis(300));
        (finished, pool.stats())
    });
    let (finished, stats) = finished;
    assert!(!finished, "results were still undelivered");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Each task was counted with its own ending (the queued ones were cancelled when the time
    // ran out); results that could not be delivered were dropped.
    assert_eq!(stats.completed + stats.cancelled, 10, "{stats:?}");
    assert!(
        stats.completed >= 6,
        "two delivered, four blocked workers: {stats:?}"
    );
    let delivered: Vec<_> = results.try_iter().collect();
    assert!(delivered.len() <= 10 && delivered.iter().all(|done| done.result.is_ok()));
    assert_threads_gone("fullbox");
}

#[test]
fn a_keyed_add_held_back_by_its_key_does_not_wait_for_room_in_the_queue() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_per_key(1)
        .queue_capacity(1)
        .thread_name("keyroom")
        .build(move |n: u32| {
            gate.wait();
            n
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(1).key("k").add().unwrap();
    eventually("the key's task runs", || running.is_running());
    let queued = pool.add_task(2).unwrap();
    assert!(
        pool.task(3).try_add().unwrap_err().is_full(),
        "the queue is full"
    );
    // Key "k" is at its limit: this task waits on its key, not for room in the queue.
    let held = {
        let pool = pool.clone();
        watchdog("a keyed add held by its key", move || {
            (4..8)
                .map(|n| pool.task(n).key("k").add().unwrap())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(pool.stats().waiting_on_key, 4);
    key.open();
    assert_eq!(running.recv(), Ok(1));
    assert_eq!(queued.recv(), Ok(2));
    let held: Vec<_> = held.iter().map(|t| t.recv()).collect();
    assert_eq!(held, [Ok(4), Ok(5), Ok(6), Ok(7)]);
    pool.shutdown();
}

#[test]
fn lowering_max_workers_below_the_minimum_and_raising_it_again_restores_the_minimum() {
    let pool = AsyncPool::builder()
        .min_workers(4)
        .max_workers(8)
        .keep_alive(Duration::from_millis(10))
        .thread_name("minback")
        .build(|n: u32| n)
        .unwrap();
    assert_eq!(pool.stats().workers, 4);
    assert!(pool.set_max_workers(2));
    eventually("shrunk to 2", || pool.stats().workers == 2);
    assert!(pool.set_max_workers(8));
    assert_eq!(pool.stats().workers, 4, "the minimum is back");
    pool.shutdown();
    assert_threads_gone("minback");
}

#[test]
fn more_workers_than_the_os_limits_allow_is_a_typed_error_not_an_abort() {
    let max_maps: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(usize::MAX);
    // Each thread takes four memory maps: 20,000 threads pass the default limit of 65,530.
    let requested = 20_000;
    match AsyncPool::new(requested, |n: u32| n) {
        Err(BuildError::ThreadLimit {
            limit,
            requested: r,
            available,
        }) => {
            assert_eq!(r, requested);
            assert!(available < requested);
            assert!(!limit.is_empty());
        }
        Err(BuildError::Spawn(_)) => {}
        Err(other) => panic!("unexpected {other}"),
        Ok(pool) => {
            assert!(max_maps >= requested * 4, "built past vm.max_map_count");
            pool.shutdown();
        }
    }
    if max_maps < requested * 4 {
        let err = AsyncPool::new(requested, |n: u32| n).unwrap_err();
        assert!(
            err.to_string().contains("vm.max_map_count"),
            "the error names the limit: {err}"
        );
    }
}

#[test]
fn a_thread_costs_no_more_memory_maps_than_the_limit_check_assumes() {
    // Measured alone: tests running beside it here would add (and free) maps of their own.
    let name = crate::test_name!("a_thread_costs_no_more_memory_maps_than_the_limit_check_assumes");
    if !crate::support::alone_in_a_child_process(&name) {
        return;
    }
    let maps = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    };
    let before = maps();
    let pool = AsyncPool::builder()
        .max_workers(200)
        .thread_name("mapcost")
        .build(|n: u32| n)
        .unwrap();
    let during = maps();
    pool.shutdown();
    // Four maps a thread, plus malloc's arenas (at most 8 per CPU, two maps each: a constant
    // the limit check reserves once, see `limits::arena_maps`), plus a little for the rest.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        during.saturating_sub(before) <= 200 * 4 + 16 * cpus + 64,
        "200 threads took {} maps",
        during.saturating_sub(before)
    );
}
