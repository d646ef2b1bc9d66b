//! Per-worker state (`build_with_init`): made once per worker, on that worker, never shared;
//! remade after a panic; alongside `join`, timeouts, elastic workers and streams.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use common::{assert_threads_gone, eventually, gate, watchdog};
use slowpool::{AsyncPool, TaskError};

/// A state that is neither `Send` nor `Sync`, and says which thread made it.
struct Local {
    made_on: thread::ThreadId,
    serial: usize,
    uses: Rc<RefCell<usize>>,
}

#[test]
fn each_worker_makes_its_state_once_on_its_own_thread() {
    const WORKERS: usize = 4;
    let made = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WORKERS));
    let counter = made.clone();
    let pool = AsyncPool::builder()
        .max_workers(WORKERS)
        .thread_name("state1")
        .build_with_init(
            move || Local {
                made_on: thread::current().id(),
                serial: counter.fetch_add(1, SeqCst),
                uses: Rc::new(RefCell::new(0)),
            },
            move |local: &mut Local, first_round: bool| {
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
    let made = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Counted(usize, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, SeqCst);
        }
    }
    let (m, d) = (made.clone(), dropped.clone());
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("state2")
        .build_with_init(
            move || Counted(m.fetch_add(1, SeqCst), d.clone()),
            |state: &mut Counted, panic: bool| {
                if panic {
                    panic!("state {} may be half-updated", state.0);
                }
                state.0
            },
        )
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
    assert_eq!(made.load(SeqCst), 2);
    pool.shutdown();
    assert_eq!(dropped.load(SeqCst), 2, "dropped when its worker left");
}

#[test]
fn a_panicking_init_fails_that_task_and_the_next_tries_again() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .build_with_init(
            move || {
                if a.fetch_add(1, SeqCst) == 0 {
                    panic!("cannot connect");
                }
                10u32
            },
            |base: &mut u32, n: u32| *base + n,
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
    // own state is borrowed.
    let me: Arc<OnceLock<AsyncPool<u32, usize>>> = Arc::new(OnceLock::new());
    let inner = me.clone();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("state3")
        .build_with_init(
            move || (m.fetch_add(1, SeqCst), Vec::<u32>::new()),
            move |state: &mut (usize, Vec<u32>), n: u32| {
                state.1.push(n);
                if n == 0 {
                    inner.get().unwrap().join();
                    // Still this task's own state, untouched by the task run meanwhile.
                    assert_eq!(state.1, [0]);
                }
                state.0
            },
        )
        .unwrap();
    me.set(pool.clone()).ok().unwrap();
    let joiner = pool.add_task(0).unwrap();
    let inside = pool.add_task(1).unwrap();
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
        .task_timeout(Duration::from_millis(20))
        .thread_name("state4")
        .build_with_init(
            move || m.fetch_add(1, SeqCst),
            move |serial: &mut usize, hang: bool| {
                if hang {
                    gate.wait();
                }
                *serial
            },
        )
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    assert_eq!(pool.add_task(false).unwrap().recv(), Ok(0));
    assert_eq!(
        pool.add_task(true).unwrap().recv(),
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
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let pool = AsyncPool::builder()
        .min_workers(0)
        .max_workers(8)
        .keep_alive(Duration::from_millis(20))
        .thread_name("state5")
        .build_with_init(
            move || {
                m.fetch_add(1, SeqCst);
                0u64
            },
            |sum: &mut u64, n: u64| {
                *sum += n;
                n * 2
            },
        )
        .unwrap();
    assert_eq!(made.load(SeqCst), 0, "no worker, no state");
    let doubled: u64 = pool
        .map_unordered(0..2_000u64)
        .map(|(_, r)| r.unwrap())
        .sum();
    assert_eq!(doubled, (0..2_000u64).map(|n| n * 2).sum());
    let states = made.load(SeqCst);
    assert!(
        (1..=8).contains(&states),
        "{states} states for at most 8 workers"
    );
    eventually("the workers retire", || pool.stats().workers == 0);
    pool.shutdown();
    assert_threads_gone("state5");
}
