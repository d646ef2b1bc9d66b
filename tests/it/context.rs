//! What a callback built with `Builder::build_with` gets: a `Context` with its worker's own
//! state (made once per worker, on that worker, never shared; remade after a panic; alongside
//! `join`, timeouts, elastic workers and streams), its task's cancel token and a handle to its
//! pool, together. A state's `Drop` that panics never aborts the process, and one that is slow
//! or blocks never holds up `shutdown_timeout`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use slowpool::{AddError, AsyncPool, Mailbox, TaskError};

use crate::support::{assert_threads_gone, eventually, gate, watchdog, Concurrency, Gate};

/// A state that is neither `Send` nor `Sync`, and says which thread made it.
struct Local {
    made_on: thread::ThreadId,
    serial: usize,
    uses: Rc<RefCell<usize>>,
}

/// A state that counts its drops, and may panic in its `Drop` or wait on a gate there.
struct Counted {
    serial: usize,
    dropped: Arc<AtomicUsize>,
    panics: bool,
    blocks_on: Option<Gate>,
}

impl Counted {
    /// A maker of states numbered from 0, each counting its drop into `dropped`.
    fn maker(
        dropped: &Arc<AtomicUsize>,
        panics: bool,
        blocks_on: Option<Gate>,
    ) -> impl Fn() -> Counted + Send + Sync + 'static {
        let made = AtomicUsize::new(0);
        let dropped = dropped.clone();
        move || Counted {
            serial: made.fetch_add(1, SeqCst),
            dropped: dropped.clone(),
            panics,
            blocks_on: blocks_on.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(gate) = &self.blocks_on {
            gate.wait();
        }
        self.dropped.fetch_add(1, SeqCst);
        if self.panics && !thread::panicking() {
            panic!("state {} panics in its drop", self.serial);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-worker state
// ---------------------------------------------------------------------------------------------

#[test]
fn each_worker_makes_its_state_once_on_its_own_thread() {
    const WORKERS: usize = 4;
    let made = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WORKERS));
    let counter = made.clone();
    let pool = AsyncPool::builder()
        .max_workers(WORKERS)
        .thread_name("state1")
        .build_with(
            move || Local {
                made_on: thread::current().id(),
                serial: counter.fetch_add(1, SeqCst),
                uses: Rc::new(RefCell::new(0)),
            },
            move |cx, first_round: bool| {
                let local = cx.state();
                assert_eq!(
                    local.made_on,
                    thread::current().id(),
                    "used where it was made"
                );
                if first_round {
                    // Every worker takes one task of the first round.
                    barrier.wait();
                }
                *local.uses.borrow_mut() += 1;
                local.serial
            },
        )
        .unwrap();
    let first: Vec<_> = (0..WORKERS).map(|_| pool.add_task(true).unwrap()).collect();
    let serials: HashSet<usize> = first.iter().map(|t| t.recv().unwrap()).collect();
    assert_eq!(serials.len(), WORKERS, "one state per worker");
    let later: Vec<_> = (0..1_000).map(|_| pool.add_task(false).unwrap()).collect();
    for task in later {
        assert!(
            serials.contains(&task.recv().unwrap()),
            "no new state after the first"
        );
    }
    assert_eq!(made.load(SeqCst), WORKERS);
    pool.shutdown();
    assert_threads_gone("state1");
}

#[test]
fn a_panicking_callback_gets_a_new_state_and_the_old_one_is_dropped() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("state2")
        .build_with(Counted::maker(&dropped, false, None), |cx, panic: bool| {
            if panic {
                panic!("state {} may be half-updated", cx.state().serial);
            }
            cx.state().serial
        })
        .unwrap();
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(0));
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(0));
    assert_eq!(
        pool.add_task(true).unwrap().recv(),
        Err(TaskError::Panicked("state 0 may be half-updated".into()))
    );
    assert_eq!(
        dropped.load(SeqCst),
        1,
        "the state of the panicked task was dropped"
    );
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(1), "remade");
    pool.shutdown();
    assert_eq!(dropped.load(SeqCst), 2, "dropped when its worker left");
}

#[test]
fn a_panicking_init_fails_that_task_and_the_next_tries_again() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .build_with(
            move || {
                if a.fetch_add(1, SeqCst) == 0 {
                    panic!("cannot connect");
                }
                10u32
            },
            |cx, n: u32| *cx.state() + n,
        )
        .unwrap();
    assert_eq!(
        pool.add_task(1).unwrap().recv(),
        Err(TaskError::Panicked("cannot connect".into()))
    );
    assert_eq!(pool.add_task(2).unwrap().recv(), Ok(12));
    assert_eq!(attempts.load(SeqCst), 2);
}

#[test]
fn a_task_run_inside_join_gets_a_fresh_state_not_its_joiners() {
    // One worker: the joiner's thread runs the queued task inside `join`, while the joiner's
    // own state is borrowed. The joiner joins only once the other task is queued: joining
    // before it was added would find the pool quiet and return at once, and the other task
    // would then run after it, on the worker's own state.
    let (key, gate) = gate();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("state3")
        .build_with(
            move || (m.fetch_add(1, SeqCst), Vec::<u32>::new()),
            move |cx, n: u32| {
                cx.state().1.push(n);
                if n == 0 {
                    gate.wait();
                    cx.pool().join();
                    // Still this task's own state, untouched by the task run meanwhile.
                    assert_eq!(cx.state().1, [0]);
                }
                cx.state().0
            },
        )
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let joiner = pool.add_task(0).unwrap();
    let inside = pool.add_task(1).unwrap();
    key.open();
    assert_eq!(watchdog("joiner", move || joiner.recv()), Ok(0));
    assert_eq!(inside.recv(), Ok(1), "a fresh state, made for it");
    assert_eq!(
        pool.add_task(2).unwrap().recv(),
        Ok(0),
        "the worker's own again"
    );
    assert_eq!(made.load(SeqCst), 2);
    pool.shutdown();
    assert_threads_gone("state3");
}

#[test]
fn an_abandoned_thread_keeps_its_state_and_its_replacement_makes_a_new_one() {
    let (key, gate) = gate();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("state4")
        .build_with(
            move || m.fetch_add(1, SeqCst),
            move |cx, hang: bool| {
                if hang {
                    gate.wait();
                }
                *cx.state()
            },
        )
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(0));
    // Only the hanging task has a deadline: a task that does not hang never times out, however
    // long a loaded machine leaves its worker descheduled.
    assert_eq!(
        pool.task(true)
            .timeout(Duration::from_millis(20))
            .add()
            .unwrap()
            .recv(),
        Err(TaskError::TimedOut)
    );
    assert_eq!(
        pool.add_task(false).unwrap().recv(),
        Ok(1),
        "the replacement's own"
    );
    key.open();
    eventually("the abandoned thread left", || pool.stats().abandoned == 0);
    assert_eq!(made.load(SeqCst), 2);
    pool.shutdown();
    assert_threads_gone("state4");
}

#[test]
fn elastic_workers_make_theirs_as_they_start_and_streams_use_them() {
    // Threads that made a state, in the order they made it. How many workers a stream has
    // over its life depends on timing: an idle worker retires after `keep_alive` and a later
    // task starts a new one (a descheduled consumer leaves them all idle). The claim is one
    // state per worker thread, made on it by its first task, whatever the number of threads.
    // `ThreadId`s are never reused, so a thread that made two would show.
    let makers = Arc::new(Mutex::new(Vec::new()));
    let m = makers.clone();
    let running = Arc::new(Concurrency::default());
    let probe = running.clone();
    let pool = AsyncPool::builder()
        .min_workers(0)
        .max_workers(8)
        .keep_alive(Duration::from_millis(20))
        .thread_name("state5")
        .build_with(
            move || {
                m.lock().unwrap().push(thread::current().id());
                (thread::current().id(), 0u64)
            },
            move |cx, n: u64| {
                probe.enter(0);
                let (made_on, sum) = cx.state();
                *sum += n;
                probe.leave(0);
                (n * 2, *made_on, thread::current().id())
            },
        )
        .unwrap();
    assert!(makers.lock().unwrap().is_empty(), "no worker, no state");
    let mut doubled = 0;
    let mut ran_on = HashSet::new();
    for done in pool.stream(0..2_000u64) {
        let (n, made_on, thread) = done.result.unwrap();
        assert_eq!(made_on, thread, "a task used another thread's state");
        doubled += n;
        ran_on.insert(thread);
    }
    assert_eq!(doubled, (0..2_000u64).map(|n| n * 2).sum());
    assert!(running.peak_total.load(SeqCst) <= 8, "more than 8 at once");
    // Every result is in, so every state those tasks made is recorded.
    let made = makers.lock().unwrap().clone();
    let makers_set: HashSet<_> = made.iter().copied().collect();
    assert_eq!(makers_set.len(), made.len(), "a thread made two states");
    assert_eq!(
        makers_set, ran_on,
        "each thread that ran a task made one state"
    );
    eventually("the workers retire", || pool.stats().workers == 0);
    assert_eq!(
        makers.lock().unwrap().len(),
        made.len(),
        "no state without a task"
    );
    // The next task starts a new worker, which makes its own state.
    let (_, made_on, thread) = pool.add_task(1).unwrap().recv().unwrap();
    assert_eq!(made_on, thread);
    assert!(!ran_on.contains(&thread), "a new thread");
    let after = makers.lock().unwrap().clone();
    assert_eq!(
        after[made.len()..],
        [thread],
        "one new state, made by the new worker"
    );
    pool.shutdown();
    assert_threads_gone("state5");
}

// ---------------------------------------------------------------------------------------------
// State, token and pool together
// ---------------------------------------------------------------------------------------------

/// What the crawl callback below reports.
#[derive(Debug, PartialEq)]
struct Report {
    n: u32,
    /// Inputs this worker's state has seen, this one included.
    seen: Vec<u32>,
    /// Whether an add to its own pool was refused (and the input handed back).
    refused: Option<u32>,
}

#[test]
fn state_token_and_pool_work_together_in_one_callback() {
    // One worker. Each input n > 0 records itself in the worker's state and adds n - 1 through
    // the pool handle; input 100 spins until its token is raised (by shutdown_now), then tries
    // to add once more: refused, the input handed back. The state it sees holds every input
    // this worker ran, in order.
    watchdog("state + token + pool", || {
        let (links, results): (Mailbox<Report>, _) = unbounded();
        let (started_tx, started) = unbounded();
        let found = links.clone();
        let pool = AsyncPool::builder()
            .max_workers(1)
            .thread_name("context-all")
            .build_with(Vec::new, move |cx, n: u32| {
                cx.state().push(n);
                let mut refused = None;
                if n == 100 {
                    started_tx.send(()).unwrap();
                    while !cx.token().is_cancelled() {
                        thread::sleep(Duration::from_millis(1)); // one more page
                    }
                    assert!(cx.pool().is_shut_down(), "raised by the shutdown");
                    refused = match cx.pool().add_task_to(7, &found) {
                        Err(AddError::ShutDown(input)) => Some(input),
                        other => panic!("added to a pool shutting down: {other:?}"),
                    };
                } else if n > 0 {
                    cx.pool()
                        .add_task_to(n - 1, &found)
                        .expect("the pool is open");
                }
                Report {
                    n,
                    seen: cx.state().clone(),
                    refused,
                }
            })
            .unwrap();
        pool.add_task_to(3, &links).unwrap();
        let chain: Vec<Report> = results.iter().take(4).map(|d| d.result.unwrap()).collect();
        for (k, report) in chain.iter().enumerate() {
            let expected: Vec<u32> = (0..=k as u32).map(|j| 3 - j).collect();
            assert_eq!(report.n, 3 - k as u32);
            assert_eq!(report.seen, expected, "one worker, one state");
            assert_eq!(report.refused, None);
        }
        let spinner = pool.add_task(100).unwrap();
        started.recv().unwrap();
        assert_eq!(pool.shutdown_now(), Vec::<u32>::new(), "nothing queued");
        assert_eq!(
            spinner.recv(),
            Ok(Report {
                n: 100,
                seen: vec![3, 2, 1, 0, 100],
                refused: Some(7),
            })
        );
        assert!(
            results.try_recv().is_err(),
            "the refused add delivered nothing"
        );
        assert_threads_gone("context-all");
    });
}

#[test]
fn a_timed_out_callback_stops_on_its_token_and_its_thread_leaves_with_its_state() {
    // The token is raised at the deadline: the callback stops, its thread (abandoned) exits
    // and drops its state; the replacement made a state of its own.
    watchdog("token on timeout", || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = AsyncPool::builder()
            .max_workers(1)
            .thread_name("context-token")
            .build_with(Counted::maker(&dropped, false, None), |cx, spin: bool| {
                let mut turns = 0u64;
                while spin && !cx.token().is_cancelled() {
                    turns += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                (cx.state().serial, turns)
            })
            .unwrap();
        assert_eq!(pool.add_task(false).unwrap().recv(), Ok((0, 0)));
        let spinner = pool
            .task(true)
            .timeout(Duration::from_millis(30))
            .add()
            .unwrap();
        assert_eq!(spinner.recv(), Err(TaskError::TimedOut));
        eventually("the abandoned thread stopped and left", || {
            pool.stats().abandoned == 0
        });
        eventually("its state was dropped", || dropped.load(SeqCst) == 1);
        let (serial, _) = pool.add_task(false).unwrap().recv().unwrap();
        assert_eq!(serial, 1, "the replacement's own state");
        pool.shutdown();
        assert_eq!(dropped.load(SeqCst), 2);
        assert_threads_gone("context-token");
    });
}

// ---------------------------------------------------------------------------------------------
// A state whose Drop panics, is slow, or blocks
// ---------------------------------------------------------------------------------------------

#[test]
fn a_state_whose_drop_panics_is_dropped_quietly_when_its_worker_retires() {
    // If the worker's thread-local destructor dropped it, the panic would abort the process
    // (this test binary): reaching the assertions is the test.
    watchdog("drop panics on retirement", || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = AsyncPool::builder()
            .min_workers(0)
            .max_workers(2)
            .keep_alive(Duration::from_millis(10))
            .thread_name("context-retire")
            .build_with(Counted::maker(&dropped, true, None), |cx, n: u32| {
                cx.state().serial as u32 + n
            })
            .unwrap();
        assert_eq!(pool.add_task(10).unwrap().recv(), Ok(10));
        eventually("the worker retired", || pool.stats().workers == 0);
        eventually("its state was dropped", || dropped.load(SeqCst) == 1);
        assert_threads_gone("context-retire");
        // The pool goes on: a new worker, a new state.
        assert_eq!(pool.add_task(10).unwrap().recv(), Ok(11));
        pool.shutdown();
        assert_eq!(dropped.load(SeqCst), 2);
        assert_threads_gone("context-retire");
    });
}

#[test]
fn a_state_whose_drop_panics_is_dropped_quietly_at_shutdown() {
    watchdog("drop panics on shutdown", || {
        const WORKERS: usize = 3;
        let dropped = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(WORKERS));
        let b = barrier.clone();
        let pool = AsyncPool::builder()
            .max_workers(WORKERS)
            .thread_name("context-shutdown")
            .build_with(Counted::maker(&dropped, true, None), move |cx, _: ()| {
                b.wait(); // every worker makes a state
                cx.state().serial
            })
            .unwrap();
        let tasks: Vec<_> = (0..WORKERS).map(|_| pool.add_task(()).unwrap()).collect();
        let serials: HashSet<usize> = tasks.iter().map(|t| t.recv().unwrap()).collect();
        assert_eq!(serials.len(), WORKERS);
        pool.shutdown();
        assert_eq!(dropped.load(SeqCst), WORKERS, "every state dropped");
        assert_threads_gone("context-shutdown");
    });
}

#[test]
fn a_state_whose_drop_panics_is_dropped_quietly_by_an_abandoned_thread() {
    watchdog("drop panics on an abandoned thread", || {
        let (key, gate) = gate();
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = AsyncPool::builder()
            .max_workers(1)
            .thread_name("context-abandoned")
            .build_with(
                Counted::maker(&dropped, true, None),
                move |cx, hang: bool| {
                    if hang {
                        gate.wait();
                    }
                    cx.state().serial
                },
            )
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let stuck = pool
            .task(true)
            .timeout(Duration::from_millis(20))
            .add()
            .unwrap();
        assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
        assert_eq!(pool.add_task(false).unwrap().recv(), Ok(1), "replacement");
        key.open();
        eventually("the abandoned thread left", || pool.stats().abandoned == 0);
        eventually("its state was dropped", || dropped.load(SeqCst) == 1);
        assert_eq!(pool.add_task(false).unwrap().recv(), Ok(1), "pool goes on");
        pool.shutdown();
        assert_eq!(dropped.load(SeqCst), 2);
        assert_threads_gone("context-abandoned");
    });
}

#[test]
fn a_state_whose_drop_panics_after_its_callback_panicked_leaves_the_callbacks_panic() {
    watchdog("drop panics after a panic", || {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = AsyncPool::builder()
            .max_workers(1)
            .build_with(Counted::maker(&dropped, true, None), |cx, panic: bool| {
                if panic {
                    panic!("callback of state {}", cx.state().serial);
                }
                cx.state().serial
            })
            .unwrap();
        assert_eq!(pool.add_task(false).unwrap().recv(), Ok(0));
        assert_eq!(
            pool.add_task(true).unwrap().recv(),
            Err(TaskError::Panicked("callback of state 0".into()))
        );
        assert_eq!(dropped.load(SeqCst), 1);
        assert_eq!(pool.add_task(false).unwrap().recv(), Ok(1), "remade");
        assert_eq!(pool.stats().workers, 1, "the worker lived on");
        pool.shutdown();
        assert_eq!(dropped.load(SeqCst), 2);
    });
}

/// Builds a pool of `workers` whose states' `Drop` takes `slow_drop` (or blocks on `gate`),
/// gives every worker a state, and returns how long `shutdown_timeout(100 ms)` took.
fn shutdown_timeout_with_slow_drops(
    workers: usize,
    slow_drop: Duration,
    gate: Option<Gate>,
) -> (Duration, Arc<AtomicUsize>) {
    struct Slow {
        drop_for: Duration,
        dropped: Arc<AtomicUsize>,
        gate: Option<Gate>,
    }
    impl Drop for Slow {
        fn drop(&mut self) {
            thread::sleep(self.drop_for); // the slow drop under test, not a synchronisation
            if let Some(gate) = &self.gate {
                gate.wait();
            }
            self.dropped.fetch_add(1, SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let barrier = Arc::new(Barrier::new(workers));
    let b = barrier.clone();
    let pool = AsyncPool::builder()
        .max_workers(workers)
        .build_with(
            move || Slow {
                drop_for: slow_drop,
                dropped: d.clone(),
                gate: gate.clone(),
            },
            move |cx, n: u32| {
                let _ = cx.state();
                b.wait(); // every worker makes a state
                n
            },
        )
        .unwrap();
    let tasks: Vec<_> = (0..workers as u32)
        .map(|n| pool.add_task(n).unwrap())
        .collect();
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
    let began = Instant::now();
    pool.shutdown_timeout(Duration::from_millis(100));
    (began.elapsed(), dropped)
}

#[test]
fn a_per_worker_state_whose_drop_takes_two_seconds_does_not_hold_up_shutdown_timeout() {
    watchdog("slow drop", || {
        let (took, dropped) = shutdown_timeout_with_slow_drops(2, Duration::from_secs(2), None);
        assert!(
            took < Duration::from_secs(1),
            "shutdown_timeout(100 ms) took {took:?}: it waited for the states' drops"
        );
        // The states are still dropped, by their threads, on their own time.
        eventually("the slow drops finished", || dropped.load(SeqCst) == 2);
    });
}

#[test]
fn a_per_worker_state_whose_drop_blocks_does_not_hold_up_shutdown_timeout() {
    watchdog("blocked drop", || {
        let (key, gate) = gate();
        let (took, dropped) = shutdown_timeout_with_slow_drops(2, Duration::ZERO, Some(gate));
        assert!(
            took < Duration::from_secs(1),
            "shutdown_timeout(100 ms) took {took:?}: it waited for the states' drops"
        );
        assert_eq!(dropped.load(SeqCst), 0, "still blocked");
        drop(key); // the drops go on, and the threads leave
        eventually("the blocked drops finished", || dropped.load(SeqCst) == 2);
    });
}
