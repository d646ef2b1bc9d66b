//! A model-based property test of the accounting invariant: random sequences of adds (plain,
//! keyed, with a deadline, to a mailbox), joins, resizes, cancels, shutdowns and drops from
//! several producer threads, with callbacks that return, sleep, panic or `join` their own pool
//! from inside the task. After each case every accepted task ended exactly once, in a way its
//! caller was told (`TimedOut` only for tasks added with a deadline), `stats()` agrees, no key
//! ever had more than `max_per_key` callbacks running (timed-out ones included), and no pool
//! thread is left.
//!
//! A second pool, whose callback fails its first attempts, takes adds with a retry policy
//! (keyed or not, with a deadline or not, to a `RetryTask` or a mailbox) and cancels of them;
//! the shutdowns, joins and resizes reach it too. Each of its tasks ends once, after no more
//! attempts than the policy allows, `Ok` only once its failures are behind it, a failure with
//! its input back (unless cancelled one by one), and inputs handed back by `shutdown_now` are
//! exactly tasks that ended `Cancelled`.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64). Each case runs under a watchdog that
//! prints the case and aborts instead of hanging CI.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::assert_threads_gone;
use crossbeam_channel::{unbounded, Receiver, Sender};
use proptest::prelude::*;
use slowpool::{
    AddError, AsyncPool, Failed, Retried, Retry, RetryTask, TaskError, TaskId, ThreadPool,
};

/// What a task's callback does.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Return,
    Sleep(u8),
    PanicStr,
    PanicString,
    PanicOther,
    /// Calls `join()` on its own pool from inside the task.
    Join,
}

#[derive(Debug, Clone)]
enum Op {
    Add(Behaviour),
    /// Add under key 1..=3 (the pool may limit tasks per key).
    AddKeyed(u8, Behaviour),
    /// Add with a deadline of that many milliseconds.
    AddWithTimeout(Behaviour, u8),
    TryAdd(Behaviour),
    AddTo(Behaviour),
    /// Add to a mailbox whose receiver is dropped at once.
    AddToGone(Behaviour),
    /// Add, then drop the `Task` handle.
    AddAndDrop(Behaviour),
    Spawn(Behaviour),
    CancelLast,
    Join,
    SetMaxWorkers(usize),
    Shutdown,
    ShutdownNow,
    /// Add to the flaky pool with a retry policy: key (0: none), behaviour (never `Join`),
    /// attempts that fail before it behaves, an optional deadline, and whether to a mailbox.
    AddRetry {
        key: u8,
        behaviour: Behaviour,
        fails: u8,
        timeout_ms: Option<u8>,
        to_mailbox: bool,
    },
    /// Cancel the last `RetryTask` (it may be waiting to retry).
    CancelRetryLast,
}

/// Attempts the flaky pool's policy allows.
const ATTEMPTS: u32 = 3;

type Flaky = AsyncPool<u64, Result<u64, u64>>;
type FlakyEnding = Retried<u64, u64, u64>;

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        4 => Just(Behaviour::Return),
        4 => (0u8..=5).prop_map(Behaviour::Sleep),
        1 => Just(Behaviour::PanicStr),
        1 => Just(Behaviour::PanicString),
        1 => Just(Behaviour::PanicOther),
        1 => Just(Behaviour::Join),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => behaviour().prop_map(Op::Add),
        // Not `Join`: a task that joins while it fills its key's limit would wait for tasks of
        // that key that cannot start before it ends (documented on `join`).
        3 => (1u8..=3, behaviour())
            .prop_map(|(k, b)| Op::AddKeyed(k, if let Behaviour::Join = b { Behaviour::Return } else { b })),
        2 => (behaviour(), 1u8..=4).prop_map(|(b, ms)| Op::AddWithTimeout(b, ms)),
        2 => behaviour().prop_map(Op::TryAdd),
        4 => behaviour().prop_map(Op::AddTo),
        1 => behaviour().prop_map(Op::AddToGone),
        1 => behaviour().prop_map(Op::AddAndDrop),
        2 => behaviour().prop_map(Op::Spawn),
        1 => Just(Op::CancelLast),
        1 => Just(Op::Join),
        1 => (1usize..=64).prop_map(Op::SetMaxWorkers),
        1 => Just(Op::Shutdown),
        1 => Just(Op::ShutdownNow),
        4 => (0u8..=3, behaviour(), 0u8..=4, prop::option::of(1u8..=4), any::<bool>()).prop_map(
            |(key, b, fails, timeout_ms, to_mailbox)| Op::AddRetry {
                key,
                behaviour: if let Behaviour::Join = b { Behaviour::Return } else { b },
                fails,
                timeout_ms,
                to_mailbox,
            }
        ),
        1 => Just(Op::CancelRetryLast),
    ]
}

/// What the flaky pool's callback reads and counts, per input (inputs are unique).
struct FlakyState {
    /// Attempts each input must fail before it behaves.
    fails: Mutex<HashMap<u64, u32>>,
    /// Calls so far, per input.
    calls: Mutex<HashMap<u64, u32>>,
    keys: PerKey,
}

/// The flaky pool's callback: fails (`Err(input)`) its first attempts, then behaves as `run`.
fn run_flaky(state: &FlakyState, input: u64) -> Result<u64, u64> {
    let key = key_of(input);
    let now = state.keys.running[key].fetch_add(1, Ordering::SeqCst) + 1;
    state.keys.peak[key].fetch_max(now, Ordering::SeqCst);
    let _running = Running(&state.keys.running[key]);
    let call = {
        let mut calls = state.calls.lock().unwrap();
        let call = calls.entry(input).or_default();
        *call += 1;
        *call
    };
    let fails = state
        .fails
        .lock()
        .unwrap()
        .get(&input)
        .copied()
        .unwrap_or(0);
    if call <= fails {
        return Err(input);
    }
    Ok(run(input))
}

fn policy() -> Retry<u64> {
    Retry::attempts(ATTEMPTS)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .jitter(false)
}

/// Input = sequence number << 8 | key << 6 | sleep milliseconds << 3 | behaviour code: unique,
/// and the callback can decode it.
fn encode(seq: u64, key: u8, b: Behaviour) -> u64 {
    let (code, ms) = match b {
        Behaviour::Return => (0, 0),
        Behaviour::Sleep(ms) => (1, u64::from(ms.min(7))),
        Behaviour::PanicStr => (2, 0),
        Behaviour::PanicString => (3, 0),
        Behaviour::PanicOther => (4, 0),
        Behaviour::Join => (5, 0),
    };
    (seq << 8) | (u64::from(key) << 6) | (ms << 3) | code
}

fn key_of(input: u64) -> usize {
    ((input >> 6) & 3) as usize
}

/// Callbacks of each key running right now, and the most ever seen at once.
#[derive(Default)]
struct PerKey {
    running: [AtomicUsize; 4],
    peak: [AtomicUsize; 4],
}

/// Leaves its key when the callback returns or unwinds.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pool's callback. `pool` is set right after the build, before any add.
fn run_in(pool: &OnceLock<AsyncPool<u64, u64>>, keys: &PerKey, input: u64) -> u64 {
    let key = key_of(input);
    let now = keys.running[key].fetch_add(1, Ordering::SeqCst) + 1;
    keys.peak[key].fetch_max(now, Ordering::SeqCst);
    let _running = Running(&keys.running[key]);
    if input & 7 == 5 {
        if let Some(pool) = pool.get() {
            pool.join();
        }
    }
    run(input)
}

fn run(input: u64) -> u64 {
    match input & 7 {
        1 => std::thread::sleep(Duration::from_millis((input >> 3) & 7)),
        2 => panic!("str panic"),
        3 => panic!("String panic {}", input >> 8),
        4 => std::panic::panic_any(input),
        _ => {}
    }
    input >> 8
}

fn expected(input: u64) -> Result<u64, TaskError> {
    match input & 7 {
        2 => Err(TaskError::Panicked("str panic".into())),
        3 => Err(TaskError::Panicked(format!("String panic {}", input >> 8))),
        4 => Err(TaskError::Panicked("non-string panic payload".into())),
        _ => Ok(input >> 8),
    }
}

/// What one producer saw.
#[derive(Default)]
struct Seen {
    /// Inputs accepted, with how their ending will be observed.
    tasks: Vec<(u64, slowpool::Task<u64>)>,
    spawned: Vec<(u64, slowpool::Task<u64>)>,
    mailed: HashMap<TaskId, u64>,
    /// Accepted but never observed (dropped handle or mailbox).
    unobserved: u64,
    /// Inputs handed back by shutdown_now.
    handed_back: Vec<u64>,
    /// Inputs added with a deadline: the only ones that may end `TimedOut`.
    timed: HashSet<u64>,
    accepted: u64,
    spawned_accepted: u64,
    /// The flaky pool: handles and mailboxed inputs, inputs handed back, accepted count.
    retry_tasks: Vec<(u64, RetryTask<u64, u64, u64>)>,
    retry_mailed: HashMap<TaskId, u64>,
    retry_handed_back: Vec<u64>,
    /// Inputs cancelled one by one (their ending has no input).
    retry_cancelled: HashSet<u64>,
    retry_accepted: u64,
}

#[allow(clippy::too_many_arguments)]
fn producer(
    ops: Vec<Op>,
    pool: AsyncPool<u64, u64>,
    threads: ThreadPool,
    flaky: Flaky,
    state: Arc<FlakyState>,
    seq: Arc<AtomicU64>,
    mailbox: Sender<(TaskId, Result<u64, TaskError>)>,
    retry_mailbox: Sender<FlakyEnding>,
) -> Seen {
    let mut seen = Seen::default();
    let next_keyed = |key, b| encode(seq.fetch_add(1, Ordering::SeqCst), key, b);
    let next = |b| next_keyed(0, b);
    for op in ops {
        match op {
            Op::AddKeyed(key, b) => {
                let input = next_keyed(key, b);
                match pool.add_task_keyed(key, input) {
                    Ok(task) => {
                        seen.accepted += 1;
                        seen.tasks.push((input, task));
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::AddWithTimeout(b, ms) => {
                let input = next(b);
                match pool.add_task_with_timeout(input, Duration::from_millis(ms.into())) {
                    Ok(task) => {
                        seen.accepted += 1;
                        seen.timed.insert(input);
                        seen.tasks.push((input, task));
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::Add(b) => {
                let input = next(b);
                match pool.add_task(input) {
                    Ok(task) => {
                        seen.accepted += 1;
                        seen.tasks.push((input, task));
                    }
                    Err(e) => assert_eq!(
                        e,
                        AddError::ShutDown(input),
                        "refused adds hand the input back"
                    ),
                }
            }
            Op::TryAdd(b) => {
                let input = next(b);
                match pool.try_add_task(input) {
                    Ok(task) => {
                        seen.accepted += 1;
                        seen.tasks.push((input, task));
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::AddTo(b) => {
                let input = next(b);
                match pool.add_task_to(input, &mailbox) {
                    Ok(id) => {
                        seen.accepted += 1;
                        seen.mailed.insert(id, input);
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::AddToGone(b) => {
                let input = next(b);
                let (tx, rx) = unbounded();
                drop(rx);
                match pool.add_task_to(input, &tx) {
                    Ok(_) => {
                        seen.accepted += 1;
                        seen.unobserved += 1;
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::AddAndDrop(b) => {
                let input = next(b);
                match pool.add_task(input) {
                    Ok(task) => {
                        drop(task);
                        seen.accepted += 1;
                        seen.unobserved += 1;
                    }
                    Err(e) => assert_eq!(e.into_inner(), input),
                }
            }
            Op::Spawn(b) => {
                // A spawned closure has no pool to join: `Join` just returns there.
                let input = next(b);
                match threads.spawn(move || run(input)) {
                    Ok(task) => {
                        seen.spawned_accepted += 1;
                        seen.spawned.push((input, task));
                    }
                    Err(e) => assert!(e.is_shut_down()),
                }
            }
            Op::CancelLast => {
                if let Some((_, task)) = seen.tasks.last() {
                    task.cancel();
                }
            }
            Op::Join => {
                pool.join();
                threads.join();
                flaky.join();
            }
            Op::SetMaxWorkers(n) => {
                pool.set_max_workers(n);
                threads.set_max_workers(n);
                flaky.set_max_workers(n);
            }
            Op::Shutdown => {
                pool.shutdown();
                threads.shutdown();
                flaky.shutdown();
            }
            Op::ShutdownNow => {
                seen.handed_back.extend(pool.shutdown_now());
                threads.shutdown_now();
                seen.retry_handed_back.extend(flaky.shutdown_now());
            }
            Op::AddRetry {
                key,
                behaviour,
                fails,
                timeout_ms,
                to_mailbox,
            } => {
                let input = next_keyed(key, behaviour);
                state.fails.lock().unwrap().insert(input, fails.into());
                let mut submit = flaky.task(input).retry(policy());
                if key > 0 {
                    submit = submit.key(key);
                }
                if let Some(ms) = timeout_ms {
                    submit = submit.timeout(Duration::from_millis(ms.into()));
                }
                if to_mailbox {
                    match submit.add_to(&retry_mailbox) {
                        Ok(id) => {
                            seen.retry_accepted += 1;
                            seen.retry_mailed.insert(id, input);
                        }
                        Err(e) => assert_eq!(e.into_inner(), input),
                    }
                } else {
                    match submit.add() {
                        Ok(task) => {
                            seen.retry_accepted += 1;
                            seen.retry_tasks.push((input, task));
                        }
                        Err(e) => assert_eq!(e.into_inner(), input),
                    }
                }
            }
            Op::CancelRetryLast => {
                if let Some((input, task)) = seen.retry_tasks.last() {
                    if task.cancel() {
                        seen.retry_cancelled.insert(*input);
                    }
                }
            }
        }
    }
    seen
}

fn check_case(
    case: u64,
    workers: usize,
    capacity: Option<usize>,
    per_key: Option<usize>,
    producers: Vec<Vec<Op>>,
) {
    let name = format!("m{case}");
    let mut builder = AsyncPool::builder()
        .max_workers(workers)
        .max_abandoned(2)
        .thread_name(name.clone());
    if let Some(c) = capacity {
        builder = builder.queue_capacity(c);
    }
    if let Some(n) = per_key {
        builder = builder.max_per_key(n);
    }
    let me: Arc<OnceLock<AsyncPool<u64, u64>>> = Arc::new(OnceLock::new());
    let keys = Arc::new(PerKey::default());
    let (inner, counts) = (me.clone(), keys.clone());
    let pool = builder
        .build(move |input| run_in(&inner, &counts, input))
        .unwrap();
    // A clone inside the callback's reach: the pool is shut down explicitly below.
    me.set(pool.clone()).ok().unwrap();
    let threads_name = format!("t{case}");
    let threads = ThreadPool::builder()
        .max_workers(workers)
        .thread_name(threads_name.clone())
        .build()
        .unwrap();
    let flaky_name = format!("f{case}");
    let mut flaky_builder = AsyncPool::builder()
        .max_workers(workers)
        .max_abandoned(2)
        .thread_name(flaky_name.clone());
    if let Some(c) = capacity {
        flaky_builder = flaky_builder.queue_capacity(c);
    }
    if let Some(n) = per_key {
        flaky_builder = flaky_builder.max_per_key(n);
    }
    let state = Arc::new(FlakyState {
        fails: Mutex::new(HashMap::new()),
        calls: Mutex::new(HashMap::new()),
        keys: PerKey::default(),
    });
    let in_flaky = state.clone();
    let flaky: Flaky = flaky_builder
        .build(move |input| run_flaky(&in_flaky, input))
        .unwrap();
    let seq = Arc::new(AtomicU64::new(1));
    let (mailbox, mail): (_, Receiver<(TaskId, Result<u64, TaskError>)>) = unbounded();
    let (retry_mailbox, retry_mail) = unbounded::<FlakyEnding>();
    let handles: Vec<_> = producers
        .into_iter()
        .map(|ops| {
            let (pool, threads, flaky, state, seq, mailbox, retry_mailbox) = (
                pool.clone(),
                threads.clone(),
                flaky.clone(),
                state.clone(),
                seq.clone(),
                mailbox.clone(),
                retry_mailbox.clone(),
            );
            std::thread::spawn(move || {
                producer(
                    ops,
                    pool,
                    threads,
                    flaky,
                    state,
                    seq,
                    mailbox,
                    retry_mailbox,
                )
            })
        })
        .collect();
    let seen: Vec<Seen> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    pool.shutdown();
    threads.shutdown();
    flaky.shutdown();

    // No pool thread is left after shutdown.
    assert_threads_gone(&name);
    assert_threads_gone(&threads_name);
    assert_threads_gone(&flaky_name);
    check_flaky(&flaky, &state, &seen, retry_mailbox, retry_mail, per_key);

    // Every observed task ended exactly once, the way its behaviour says, or was cancelled.
    let handed_back: HashSet<u64> = seen
        .iter()
        .flat_map(|s| s.handed_back.iter().copied())
        .collect();
    let timed: HashSet<u64> = seen.iter().flat_map(|s| s.timed.iter().copied()).collect();
    let mut outcomes = (0u64, 0u64, 0u64, 0u64); // ok, panicked, cancelled, timed out
    let mut tally = |input: u64, result: Result<u64, TaskError>| {
        match &result {
            Ok(_) => outcomes.0 += 1,
            Err(TaskError::Panicked(_)) => outcomes.1 += 1,
            Err(TaskError::Cancelled) => outcomes.2 += 1,
            Err(TaskError::TimedOut) => {
                assert!(
                    timed.contains(&input),
                    "timed out without a deadline: {input:#x}"
                );
                outcomes.3 += 1;
            }
            Err(other) => panic!("unexpected ending {other:?}"),
        }
        if !matches!(result, Err(TaskError::Cancelled | TaskError::TimedOut)) {
            assert_eq!(result, expected(input), "input {input:#x}");
            assert!(
                !handed_back.contains(&input),
                "ran and was handed back: {input:#x}"
            );
        }
    };
    let mut mailed = HashMap::new();
    for s in &seen {
        for (input, task) in &s.tasks {
            tally(*input, task.recv());
            assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
        }
        mailed.extend(s.mailed.iter().map(|(id, input)| (*id, *input)));
    }
    drop(mailbox);
    for (id, result) in mail.iter() {
        let input = mailed
            .remove(&id)
            .expect("one message per mailed task, no strays");
        tally(input, result);
    }
    assert!(mailed.is_empty(), "mailed tasks never reported: {mailed:?}");
    // Handed-back inputs are exactly accepted tasks that ended Cancelled (or were unobserved).
    let accepted: u64 = seen.iter().map(|s| s.accepted).sum();
    let unobserved: u64 = seen.iter().map(|s| s.unobserved).sum();
    let stats = pool.stats();
    assert_eq!(stats.submitted, accepted);
    assert_eq!(
        stats.completed + stats.panicked + stats.cancelled + stats.timed_out,
        accepted,
        "every accepted task ended once: {stats:?}"
    );
    assert_eq!((stats.busy, stats.queued, stats.workers), (0, 0, 0));
    assert!(stats.completed >= outcomes.0 && stats.completed <= outcomes.0 + unobserved);
    assert!(stats.panicked >= outcomes.1 && stats.panicked <= outcomes.1 + unobserved);
    assert!(stats.cancelled >= outcomes.2 && stats.cancelled <= outcomes.2 + unobserved);
    assert!(stats.timed_out >= outcomes.3 && stats.timed_out <= outcomes.3 + unobserved);
    assert!(handed_back.len() as u64 <= stats.cancelled);
    // Keyed callbacks never exceeded the per-key limit, counting timed-out ones still running.
    if let Some(limit) = per_key {
        for key in 1..4 {
            let peak = keys.peak[key].load(Ordering::SeqCst);
            assert!(
                peak <= limit,
                "key {key}: {peak} callbacks at once, limit {limit}"
            );
        }
    }

    // The ThreadPool side.
    let spawned: u64 = seen.iter().map(|s| s.spawned_accepted).sum();
    for s in &seen {
        for (input, task) in &s.spawned {
            let result = task.recv();
            if result != Err(TaskError::Cancelled) {
                assert_eq!(result, expected(*input));
            }
        }
    }
    let t = threads.stats();
    assert_eq!(t.submitted, spawned);
    assert_eq!(
        t.completed + t.panicked + t.cancelled + t.timed_out,
        spawned
    );
}

/// The flaky pool's side of a case: see the module docs.
fn check_flaky(
    flaky: &Flaky,
    state: &FlakyState,
    seen: &[Seen],
    retry_mailbox: Sender<FlakyEnding>,
    retry_mail: Receiver<FlakyEnding>,
    per_key: Option<usize>,
) {
    let handed_back: HashSet<u64> = seen
        .iter()
        .flat_map(|s| s.retry_handed_back.iter().copied())
        .collect();
    let cancelled_one_by_one: HashSet<u64> = seen
        .iter()
        .flat_map(|s| s.retry_cancelled.iter().copied())
        .collect();
    let mut endings: Vec<(u64, FlakyEnding)> = Vec::new();
    let mut mailed: HashMap<TaskId, u64> = HashMap::new();
    for s in seen {
        for (input, task) in &s.retry_tasks {
            let ending = task.try_recv().expect("ended by shutdown");
            assert_eq!(ending.id, task.id());
            assert!(task.try_recv().is_none(), "one ending per task");
            endings.push((*input, ending));
        }
        mailed.extend(s.retry_mailed.iter().map(|(id, input)| (*id, *input)));
    }
    drop(retry_mailbox);
    for ending in retry_mail.iter() {
        let input = mailed
            .remove(&ending.id)
            .expect("one message per mailed task, no strays");
        endings.push((input, ending));
    }
    assert!(
        mailed.is_empty(),
        "mailed retried tasks never reported: {mailed:?}"
    );
    let (mut least_retries, mut most_retries) = (0u64, 0u64);
    let mut cancelled_inputs = HashSet::new();
    for (input, ending) in &endings {
        let (input, attempts) = (*input, ending.attempts);
        assert!(attempts <= ATTEMPTS, "{input:#x}: {attempts} attempts");
        let calls = state
            .calls
            .lock()
            .unwrap()
            .get(&input)
            .copied()
            .unwrap_or(0);
        assert_eq!(calls, attempts, "{input:#x}: calls and attempts differ");
        least_retries += u64::from(attempts.saturating_sub(1));
        most_retries += u64::from(attempts);
        let fails = state.fails.lock().unwrap()[&input];
        match &ending.result {
            Ok(value) => {
                assert!(
                    attempts > fails,
                    "{input:#x}: Ok before its failures were over"
                );
                assert_eq!(Ok(*value), expected(input), "{input:#x}");
                assert!(!handed_back.contains(&input));
            }
            Err(failure) => {
                match &failure.error {
                    Failed::Task(TaskError::Cancelled) => {
                        cancelled_inputs.insert(input);
                    }
                    Failed::Callback(e) => assert_eq!(*e, input),
                    Failed::Task(TaskError::Panicked(_)) => {
                        assert_eq!(
                            Err(failure.error.task_error().unwrap().clone()),
                            expected(input)
                        );
                    }
                    Failed::Task(TaskError::TimedOut) => {}
                    Failed::Task(other) => panic!("unexpected ending {other:?}"),
                }
                if cancelled_one_by_one.contains(&input)
                    && failure.error.task_error() == Some(&TaskError::Cancelled)
                {
                    // With its input if it was waiting to retry, without if it was queued.
                    assert!(failure.input.is_none() || failure.input == Some(input));
                } else if handed_back.contains(&input) {
                    // shutdown_now returned it; the ending has none.
                    assert_eq!(failure.input, None);
                } else {
                    assert_eq!(failure.input, Some(input), "the input comes back");
                }
            }
        }
    }
    assert!(
        handed_back.is_subset(&cancelled_inputs),
        "handed back but not cancelled: {:?}",
        handed_back
            .difference(&cancelled_inputs)
            .collect::<Vec<_>>()
    );
    let accepted: u64 = seen.iter().map(|s| s.retry_accepted).sum();
    assert_eq!(endings.len() as u64, accepted);
    let stats = flaky.stats();
    assert_eq!(stats.submitted, accepted);
    assert_eq!(
        stats.completed + stats.panicked + stats.cancelled + stats.timed_out,
        accepted,
        "every accepted retried task ended once: {stats:?}"
    );
    assert!(
        (least_retries..=most_retries).contains(&stats.retried),
        "retried {} outside {least_retries}..={most_retries}",
        stats.retried
    );
    assert_eq!(
        (
            stats.busy,
            stats.queued,
            stats.waiting_retry,
            stats.waiting_on_key
        ),
        (0, 0, 0, 0)
    );
    if let Some(limit) = per_key {
        for key in 1..4 {
            let peak = state.keys.peak[key].load(Ordering::SeqCst);
            assert!(
                peak <= limit,
                "flaky key {key}: {peak} at once, limit {limit}"
            );
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64)
}

static CASE: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_task_ends_exactly_once(
        workers in 1usize..=8,
        capacity in prop::option::of(0usize..=4),
        per_key in prop::option::of(1usize..=2),
        producers in prop::collection::vec(prop::collection::vec(op(), 0..40), 1..=4),
    ) {
        // Silence the expected panics of callbacks.
        std::panic::set_hook(Box::new(|_| {}));
        let case = CASE.fetch_add(1, Ordering::SeqCst);
        let description = format!(
            "workers={workers} capacity={capacity:?} per_key={per_key:?} producers={producers:?}"
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            check_case(case, workers, capacity, per_key, producers);
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => runner.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = std::panic::take_hook();
                std::panic::resume_unwind(runner.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("watchdog: case did not finish in 60 s: {description}");
                std::process::abort();
            }
        }
        let _ = std::panic::take_hook();
    }
}
