//! Per-worker state (`build_with_init`): made once per worker, on that worker, never shared;
//! remade after a panic; alongside `join`, timeouts, elastic workers and streams.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{assert_threads_gone, eventually, gate, watchdog, Concurrency};
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
    // own state is borrowed. The joiner joins only once the other task is queued: joining
    // before it was added would find the pool quiet and return at once, and the other task
    // would then run after it, on the worker's own state.
    let (key, gate) = gate();
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
                    gate.wait();
                    inner.get().unwrap().join();
                    // Still this task's own state, untouched by the task run meanwhile.
                    assert_eq!(state.1, [0]);
                }
                state.0
            },
        )
        .unwrap();
    me.set(pool.clone()).ok().unwrap();
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
    // Only the hanging task has a deadline: a task that does not hang never times out, however
    // long a loaded machine leaves its worker descheduled.
    assert_eq!(
        pool.add_task_with_timeout(true, Duration::from_millis(20))
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
        .build_with_init(
            move || {
                m.lock().unwrap().push(thread::current().id());
                (thread::current().id(), 0u64)
            },
            move |(made_on, sum): &mut (thread::ThreadId, u64), n: u64| {
                probe.enter(0);
                *sum += n;
                probe.leave(0);
                (n * 2, *made_on, thread::current().id())
            },
        )
        .unwrap();
    assert!(makers.lock().unwrap().is_empty(), "no worker, no state");
    let mut doubled = 0;
    let mut ran_on = HashSet::new();
    for (_, result) in pool.map_unordered(0..2_000u64) {
        let (n, made_on, thread) = result.unwrap();
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
