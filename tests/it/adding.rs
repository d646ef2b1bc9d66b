//! Adding work: `add_task` and its `Task`, the `pool.task(x)` chain (`key`, `timeout`,
//! `retry`, `tag`, then `add`, `try_add`, `add_to`, `try_add_to`) on both faces, and mailboxes:
//! `Done` messages sent to a channel the caller owns, tagged or not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, select, tick, unbounded, TryRecvError};
use slowpool::{AddError, AsyncPool, Done, Mailbox, Task, TaskError, TaskId, TaskSet, ThreadPool};

use crate::support::{eventually, gate, gated, id_result, quick, watchdog, GateKey};

/// A mailbox message as the pair an event loop matches on.
/// One worker, one task per key, a queue of `queue`; input 0 blocks until the gate opens,
/// others return at once.
fn gated_pool(name: &str, queue: usize) -> (GateKey, AsyncPool<u32, u32>) {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_per_key(1)
        .queue_capacity(queue)
        .thread_name(name)
        .build(move |n: u32| {
            if n == 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    (key, pool)
}

/// A value that counts its drops.
#[derive(Debug)]
struct Counted(u32, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, SeqCst);
    }
}

/// A tag whose `Drop` counts, then panics (unless already unwinding).
struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
        if !std::thread::panicking() {
            panic!("a tag's drop panicked");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `add_task` and its `Task`
// ---------------------------------------------------------------------------------------------

#[test]
fn a_task_delivers_the_callbacks_return_value() {
    let pool = AsyncPool::new(3, |s: String| s.len()).unwrap();
    let task: Task<usize> = pool.add_task("abc".to_string()).unwrap();
    let id: TaskId = task.id();
    assert_eq!(task.recv(), Ok(3));
    let next = pool.add_task("de".to_string()).unwrap();
    assert_ne!(next.id(), id, "ids are unique per pool");
    assert!(next.id() > id, "ids grow in the order tasks were added");
}

#[test]
fn add_task_returns_at_once_while_every_worker_is_busy() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(2));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    // Both workers block on the gate; 1,000 more adds must still return (the watchdog fails
    // the test if one waits for a worker).
    let tasks = watchdog("adding to a busy pool", {
        let pool = pool.clone();
        move || {
            (0..1_000)
                .map(|n| pool.add_task(n).unwrap())
                .collect::<Vec<_>>()
        }
    });
    assert!(tasks
        .iter()
        .all(|t| t.try_recv() == Err(TryRecvError::Empty)));
    key.open();
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32));
    }
}

#[test]
fn tasks_start_in_the_order_they_were_added() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let (mut key, gate) = gate();
    let log = started.clone();
    let pool = AsyncPool::new(1, move |n: u32| {
        if n == 0 {
            gate.wait();
        }
        log.lock().unwrap().push(n);
    })
    .unwrap();
    let tasks: Vec<_> = (0..200).map(|n| pool.add_task(n).unwrap()).collect();
    key.open();
    for task in &tasks {
        task.recv().unwrap();
    }
    assert_eq!(*started.lock().unwrap(), (0..200).collect::<Vec<_>>());
}

#[test]
fn fast_tasks_finish_while_a_slow_one_still_runs() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(4, move |slow: bool| {
        if slow {
            gate.wait();
        }
        slow
    })
    .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let slow = pool.add_task(true).unwrap();
    let fast: Vec<_> = (0..100).map(|_| pool.add_task(false).unwrap()).collect();
    // Every fast task ends while the slow one is still blocked: results arrive in the order
    // tasks finish, not the order they were added.
    for task in &fast {
        assert_eq!(task.recv(), Ok(false));
    }
    assert_eq!(
        slow.try_recv(),
        Err(TryRecvError::Empty),
        "the slow task is still running"
    );
    key.open();
    assert_eq!(slow.recv(), Ok(true));
}

#[test]
fn select_waits_on_several_tasks_and_a_ticker() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(2, move |n: u64| {
        if n == 2 {
            gate.wait();
        }
        n * 10
    })
    .unwrap();
    let (a, b) = (pool.add_task(1).unwrap(), pool.add_task(2).unwrap());
    let ticker = tick(Duration::from_millis(1));
    let (mut got_a, mut got_b, mut ticks) = (None, None, 0);
    while got_a.is_none() || got_b.is_none() {
        let a_rx = if got_a.is_none() {
            a.receiver().clone()
        } else {
            crossbeam_channel::never()
        };
        let b_rx = if got_b.is_none() {
            b.receiver().clone()
        } else {
            crossbeam_channel::never()
        };
        select! {
            recv(a_rx) -> r => {
                got_a = Some(r.unwrap());
                key.pass(1); // b may finish once a has been seen
            }
            recv(b_rx) -> r => got_b = Some(r.unwrap()),
            recv(ticker) -> _ => ticks += 1,
        }
    }
    assert_eq!(got_a, Some(Ok(10)));
    assert_eq!(got_b, Some(Ok(20)));
    // The ticker fired or not, depending on timing; what matters is that it did not block
    // the results: `ticks` is only counted.
    let _ = ticks;
}

#[test]
fn the_issue_example_selects_over_two_receivers() {
    let pool = AsyncPool::new(3, |s: String| s.len()).unwrap();
    let (a, b) = (
        pool.add_task("a".into()).unwrap(),
        pool.add_task("bb".into()).unwrap(),
    );
    let first: Result<usize, TaskError> = select! {
        recv(a.receiver()) -> r => r.unwrap(),
        recv(b.receiver()) -> r => r.unwrap(),
    };
    assert!(first == Ok(1) || first == Ok(2));
}

#[test]
fn try_recv_and_recv_timeout_do_not_wait_for_a_running_task() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(1, move |n: u8| {
        gate.wait();
        n
    })
    .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let task = pool.add_task(9).unwrap();
    assert_eq!(task.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        task.recv_timeout(Duration::from_millis(5)),
        Err(crossbeam_channel::RecvTimeoutError::Timeout)
    );
    assert!(!task.is_finished());
    key.pass(1);
    assert_eq!(task.recv_timeout(Duration::from_secs(60)), Ok(Ok(9)));
    assert!(task.is_finished());
}

#[test]
fn a_result_is_received_once() {
    let pool = AsyncPool::new(1, |n: u8| n).unwrap();
    let task = pool.add_task(1).unwrap();
    assert_eq!(task.recv(), Ok(1));
    assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
    // Was `Some(Err(AlreadyReceived))`: a result already taken is a disconnected channel now.
    assert_eq!(task.try_recv(), Err(TryRecvError::Disconnected));
    // A receiver asked for afterwards is disconnected rather than silent for ever.
    assert!(task.receiver().recv().is_err());
}

#[test]
fn the_receiver_takes_over_from_recv_even_after_the_result_arrived() {
    let pool = AsyncPool::new(1, |n: u8| n).unwrap();
    let task = pool.add_task(4).unwrap();
    pool.join(); // the result is now waiting in the task's slot
    assert_eq!(task.receiver().recv().unwrap(), Ok(4));
    assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
}

#[test]
fn recv_on_one_thread_sees_a_receiver_made_on_another() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(1, move |n: u8| {
        gate.wait();
        n
    })
    .unwrap();
    let task = Arc::new(pool.add_task(3).unwrap());
    let waiter = {
        let task = task.clone();
        std::thread::spawn(move || task.recv())
    };
    let _ = task.receiver(); // switches delivery to the channel while `waiter` blocks
    key.pass(1);
    assert_eq!(
        watchdog("recv after receiver()", move || waiter.join().unwrap()),
        Ok(3)
    );
}

#[test]
fn dropping_a_task_does_not_cancel_it() {
    let (tx, rx) = unbounded();
    let pool = AsyncPool::new(2, move |n: u32| tx.send(n).unwrap()).unwrap();
    for n in 0..50 {
        drop(pool.add_task(n).unwrap());
    }
    pool.join();
    let mut ran: Vec<u32> = rx.try_iter().collect();
    ran.sort();
    assert_eq!(ran, (0..50).collect::<Vec<_>>());
    assert_eq!(pool.stats().completed, 50);
}

#[test]
fn pools_handles_tasks_sets_and_messages_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<AsyncPool<String, usize>>();
    send_sync::<ThreadPool>();
    // A handle is a pool (`pool.handle()`): the same type, so the same bounds.
    send::<Task<String>>();
    send_sync::<Task<String>>();
    send_sync::<Task<String, String>>();
    send_sync::<TaskSet<String, String>>();
    send_sync::<Done<String, String>>();
    send_sync::<Mailbox<String, String>>();
}

// ---------------------------------------------------------------------------------------------
// The `pool.task(x)` chain
// ---------------------------------------------------------------------------------------------

#[test]
fn keyed_with_a_deadline_into_a_mailbox_without_waiting() {
    let pool = AsyncPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .build(|ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    let (mailbox, results): (Mailbox<u64>, _) = unbounded();
    let stuck = pool
        .task(60_000)
        .key("h")
        .timeout(Duration::from_millis(10))
        .try_add_to(&mailbox)
        .unwrap();
    let quick = pool
        .task(1)
        .timeout(Duration::from_secs(30))
        .add_to(&mailbox)
        .unwrap();
    let mut got: Vec<_> = (0..2).map(|_| id_result(results.recv().unwrap())).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, [(stuck, Err(TaskError::TimedOut)), (quick, Ok(1))]);
}

#[test]
fn try_add_of_a_task_held_by_its_key_is_never_full() {
    let (key, pool) = gated_pool("trykey", 0);
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(0).key("k").add().unwrap();
    eventually("it runs", || running.is_running());
    // Rendezvous queue and the only worker busy: an unkeyed try is Full…
    match pool.task(5).try_add() {
        Err(AddError::Full(input)) => assert_eq!(input, 5),
        other => panic!("expected Full, got {other:?}"),
    }
    // …but a task its key holds back takes no place in the queue.
    let (mailbox, results): (Mailbox<u32>, _) = bounded(4);
    let held = watchdog("try_add of a held key", {
        let pool = pool.clone();
        move || {
            let t = pool.task(1).key("k").try_add().unwrap();
            let id = pool.task(2).key("k").try_add_to(&mailbox).unwrap();
            (t, id)
        }
    });
    assert_eq!(pool.stats().waiting_on_key, 2);
    key.open();
    assert_eq!(running.recv(), Ok(0));
    assert_eq!(held.0.recv(), Ok(1));
    assert_eq!(id_result(results.recv().unwrap()), (held.1, Ok(2)));
    pool.shutdown();
}

#[test]
fn try_add_to_a_full_queue_hands_the_input_back() {
    let (key, pool) = gated_pool("trymail", 1);
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(0).add().unwrap();
    eventually("it runs", || running.is_running());
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let queued = pool.task(1).try_add_to(&mailbox).unwrap();
    match pool.task(2).try_add_to(&mailbox) {
        Err(AddError::Full(input)) => assert_eq!(input, 2),
        other => panic!("expected Full, got {other:?}"),
    }
    key.open();
    assert_eq!(id_result(results.recv().unwrap()), (queued, Ok(1)));
    assert!(results.try_recv().is_err(), "the refused input never ran");
    pool.shutdown();
}

#[test]
fn a_handle_submits_the_same_way_and_gets_its_input_back_once_the_pool_is_gone() {
    let pool = AsyncPool::builder()
        .max_workers(1)
        .max_per_key(1)
        .build(|n: u32| n * 2)
        .unwrap();
    let handle = pool.handle();
    let task = handle
        .task(4)
        .key("k")
        .timeout(Duration::from_secs(5))
        .add()
        .unwrap();
    assert_eq!(task.recv(), Ok(8));
    drop(pool);
    match handle.task(5).key("k").try_add() {
        Err(AddError::ShutDown(input)) => assert_eq!(input, 5),
        other => panic!("expected ShutDown, got {other:?}"),
    }
}

#[test]
fn a_thread_pool_gets_keys_and_deadlines_through_the_same_chain() {
    let (key, gate) = gate();
    let pool = ThreadPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .thread_name("spawnchain")
        .build()
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let first = {
        let gate = gate.clone();
        pool.task(move || {
            gate.wait();
            1
        })
        .key("h")
        .add()
        .unwrap()
    };
    eventually("the first runs", || first.is_running());
    // Same key: held back although a worker is free.
    let second = pool.task(|| 2).key("h").try_add().unwrap();
    let other = pool.task(|| 3).key("other").add().unwrap();
    assert_eq!(other.recv(), Ok(3));
    assert!(!second.is_finished() && !second.is_running());
    key.open();
    assert_eq!((first.recv(), second.recv()), (Ok(1), Ok(2)));
    // A deadline; the stuck closure's thread is replaced.
    let (release, hang) = bounded::<()>(0);
    let stuck = pool
        .task(move || hang.recv().is_ok())
        .timeout(Duration::from_millis(10))
        .add()
        .unwrap();
    assert_eq!(stuck.recv(), Err(TaskError::TimedOut));
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let id = pool.task(|| 7).try_add_to(&mailbox).unwrap();
    assert_eq!(id_result(results.recv().unwrap()), (id, Ok(7)));
    drop(release);
    pool.shutdown();
    match pool.task(|| 9).add() {
        Err(AddError::ShutDown(f)) => assert_eq!(f(), 9, "the closure comes back unrun"),
        other => panic!("expected ShutDown, got {:?}", other.map(|_| ())),
    }
}

// ---------------------------------------------------------------------------------------------
// Mailboxes
// ---------------------------------------------------------------------------------------------

#[test]
fn results_arrive_with_their_id_and_one_attempt() {
    let pool = AsyncPool::new(3, |s: String| s.len()).unwrap();
    let (mailbox, results): (Mailbox<usize>, _) = unbounded();
    let id = pool.add_task_to("abcd".into(), &mailbox).unwrap();
    let done = results.recv().unwrap();
    assert_eq!((done.id, done.attempts, done.tag), (id, 1, ()));
    assert_eq!(done.result, Ok(4));
}

#[test]
fn every_result_reaches_the_mailbox_once() {
    let pool = AsyncPool::new(8, |n: u64| n * 2).unwrap();
    let (mailbox, results): (Mailbox<u64>, _) = unbounded();
    let ids: HashSet<TaskId> = (0..1_000)
        .map(|n| pool.add_task_to(n, &mailbox).unwrap())
        .collect();
    let mut seen = HashSet::new();
    for _ in 0..1_000 {
        let (id, result) = id_result(results.recv().unwrap());
        assert!(result.unwrap() % 2 == 0);
        assert!(seen.insert(id), "{id} delivered twice");
    }
    assert_eq!(seen, ids);
    pool.join();
    assert!(results.try_recv().is_err(), "no extra messages");
}

#[test]
fn a_mailbox_whose_receiver_is_gone_never_blocks_a_worker() {
    let pool = AsyncPool::new(2, |n: u32| n).unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = bounded(1);
    drop(results);
    for n in 0..100 {
        pool.add_task_to(n, &mailbox).unwrap();
    }
    watchdog("join with a dropped mailbox", {
        let pool = pool.clone();
        move || pool.join()
    });
    assert_eq!(pool.stats().completed, 100);
    // The pool is still fully usable.
    assert_eq!(pool.add_task(7).unwrap().recv(), Ok(7));
}

#[test]
fn a_bounded_mailbox_applies_backpressure_and_loses_nothing() {
    let pool = AsyncPool::new(4, |n: u32| n).unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = bounded(1);
    let ids: HashSet<TaskId> = (0..200)
        .map(|n| pool.add_task_to(n, &mailbox).unwrap())
        .collect();
    // Nobody reads yet: workers wait for room instead of dropping results.
    let received = watchdog("draining a bounded mailbox", move || {
        (0..200)
            .map(|_| results.recv().unwrap().id)
            .collect::<HashSet<_>>()
    });
    assert_eq!(received, ids);
}

#[test]
fn a_result_is_counted_before_it_is_delivered() {
    let pool = AsyncPool::new(4, |n: u32| n).unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    for n in 0..500 {
        pool.add_task_to(n, &mailbox).unwrap();
    }
    for received in 1..=500u64 {
        let _ = results.recv().unwrap();
        assert!(pool.stats().completed >= received);
    }
}

#[test]
fn the_elixir_genserver_test_collects_all_hundred() {
    // 10 workers; a producer adds 1..=100 and its mailbox collects every reply.
    let pool = AsyncPool::new(10, |n: u32| n).unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let mut refs = HashSet::new();
    for n in 1..=100 {
        refs.insert(pool.add_task_to(n, &mailbox).unwrap());
    }
    let mut values = Vec::new();
    for _ in 0..100 {
        let (id, value) = id_result(results.recv().unwrap());
        assert!(refs.remove(&id));
        values.push(value.unwrap());
    }
    values.sort();
    assert_eq!(values, (1..=100).collect::<Vec<_>>());
}

#[test]
fn a_thread_pool_adds_to_a_mailbox_through_the_same_chain() {
    // Was `ThreadPool::spawn_to(f, &mailbox)`.
    let pool = ThreadPool::new(4).unwrap();
    let (mailbox, results): (Mailbox<i32>, _) = unbounded();
    let id = pool.task(|| 7_i32).add_to(&mailbox).unwrap();
    assert_eq!(id_result(results.recv().unwrap()), (id, Ok(7)));
}

#[test]
fn a_panicking_task_reports_through_the_mailbox() {
    let (key, gate) = gate();
    let pool = AsyncPool::new(1, move |n: u32| {
        gate.wait();
        if n == 1 {
            panic!("bad input {n}");
        }
        n
    })
    .unwrap();
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let bad = pool.add_task_to(1, &mailbox).unwrap();
    let good = pool.add_task_to(2, &mailbox).unwrap();
    key.pass(2);
    let panicked = results.recv().unwrap();
    assert_eq!(panicked.attempts, 1, "it ran once");
    assert_eq!(
        id_result(panicked),
        (bad, Err(TaskError::Panicked("bad input 1".into())))
    );
    assert_eq!(id_result(results.recv().unwrap()), (good, Ok(2)));
}

// ---------------------------------------------------------------------------------------------
// Tags on mailboxes
// ---------------------------------------------------------------------------------------------

#[test]
fn tagged_and_untagged_adds_go_to_their_mailboxes_with_every_option() {
    watchdog("tagged and untagged mailboxes", || {
        let calls = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
        let seen = calls.clone();
        // Fails the first attempt of every input divisible by 3; 99 blocks until its deadline.
        let (_release, stuck) = bounded::<()>(0);
        let pool = AsyncPool::builder()
            .max_workers(4)
            .max_per_key(2)
            .build(move |n: u32| -> Result<u32, String> {
                if n == 99 {
                    let _ = stuck.recv();
                }
                let mut calls = seen.lock().unwrap();
                let call = calls.entry(n).or_default();
                *call += 1;
                if n % 3 == 0 && *call == 1 {
                    Err(format!("{n} failed once"))
                } else {
                    Ok(n * 2)
                }
            })
            .unwrap();
        let (untagged, plain): (Mailbox<Result<u32, String>>, _) = unbounded();
        let (tagged, labelled): (Mailbox<Result<u32, String>, String>, _) = unbounded();
        let mut untagged_ids = HashMap::new();
        let mut tagged_ids = HashMap::new();
        for n in 0..60u32 {
            let label = format!("input {n}");
            let id = match n % 6 {
                0 => pool.add_task_to(n, &untagged).unwrap(),
                1 => pool.task(n).key(n % 4).add_to(&untagged).unwrap(),
                2 => pool.task(n).tag(()).try_add_to(&untagged).unwrap(),
                3 => pool
                    .task(n)
                    .retry(quick(2))
                    .tag(label.clone())
                    .add_to(&tagged)
                    .unwrap(),
                4 => pool
                    .task(n)
                    .tag(label.clone())
                    .key(n % 4)
                    .timeout(Duration::from_secs(60))
                    .try_add_to(&tagged)
                    .unwrap(),
                _ => pool
                    .task(n)
                    .key(n % 4)
                    .timeout(Duration::from_secs(60))
                    .retry(quick(3))
                    .tag(label.clone())
                    .add_to(&tagged)
                    .unwrap(),
            };
            if n % 6 < 3 {
                untagged_ids.insert(id, n);
            } else {
                tagged_ids.insert(id, (n, label));
            }
        }
        // A timed-out, tagged task: its tag comes back with `TimedOut`.
        let stuck_id = pool
            .task(99)
            .timeout(Duration::from_millis(10))
            .tag("stuck".to_string())
            .add_to(&tagged)
            .unwrap();
        for _ in 0..30 {
            let done = plain.recv().unwrap();
            let n = untagged_ids
                .remove(&done.id)
                .expect("an id of an untagged add");
            // Untagged tasks are never retried: a failed first attempt is their ending.
            let expected = if n % 3 == 0 {
                Ok(Err(format!("{n} failed once")))
            } else {
                Ok(Ok(n * 2))
            };
            assert_eq!((done.attempts, done.result), (1, expected), "input {n}");
        }
        for _ in 0..31 {
            let done = labelled.recv().unwrap();
            if done.id == stuck_id {
                assert_eq!(done.tag, "stuck");
                assert_eq!((done.attempts, done.result), (1, Err(TaskError::TimedOut)));
                continue;
            }
            let (n, label) = tagged_ids.remove(&done.id).expect("an id of a tagged add");
            assert_eq!(done.tag, label, "the tag of its own add");
            let attempts = if n % 3 == 0 && n % 6 != 4 { 2 } else { 1 };
            let result = if n % 6 == 4 && n % 3 == 0 {
                Err(format!("{n} failed once"))
            } else {
                Ok(n * 2)
            };
            assert_eq!(
                (done.attempts, done.result),
                (attempts, Ok(result)),
                "{label}"
            );
        }
        assert!(untagged_ids.is_empty() && tagged_ids.is_empty());
        pool.join();
        assert!(plain.try_recv().is_err() && labelled.try_recv().is_err());
    });
}

#[test]
fn one_tagged_mailbox_takes_endings_from_both_faces_and_several_pools() {
    watchdog("one mailbox, three pools", || {
        let squares = AsyncPool::new(2, |n: u64| n * n).unwrap();
        let doubles = AsyncPool::new(2, |n: u64| n * 2).unwrap();
        let closures = ThreadPool::new(2).unwrap();
        let (mailbox, results): (Mailbox<u64, (&str, u64)>, _) = unbounded();
        for n in 0..50u64 {
            squares.task(n).tag(("square", n)).add_to(&mailbox).unwrap();
            doubles
                .task(n)
                .tag(("double", n))
                .try_add_to(&mailbox)
                .unwrap();
            closures
                .task(move || n + 1)
                .tag(("closure", n))
                .add_to(&mailbox)
                .unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..150 {
            let done = results.recv().unwrap();
            let (face, n) = done.tag;
            let expected = match face {
                "square" => n * n,
                "double" => n * 2,
                _ => n + 1,
            };
            assert_eq!(done.result, Ok(expected), "{face} {n}");
            assert!(seen.insert(done.tag), "{face} {n} delivered twice");
        }
        // Ids are per pool: the three pools may hand out the same ids.
        assert_eq!(seen.len(), 150);
    });
}

#[test]
fn a_refused_tagged_add_hands_the_input_back_and_drops_only_the_tag() {
    let (key, pool) = gated(
        AsyncPool::builder()
            .max_workers(1)
            .queue_capacity(0)
            .thread_name("refused-tag"),
    );
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let inputs = Arc::new(AtomicUsize::new(0));
    let tags = Arc::new(AtomicUsize::new(0));
    let (mailbox, results): (Mailbox<u32, Counted>, _) = unbounded();
    let running = pool.task(0).try_add().unwrap();
    eventually("the only worker is busy", || running.is_running());
    let submitted = pool.stats().submitted;

    // Full: the rendezvous has no free worker.
    let counted = |n| Counted(n, tags.clone());
    match pool.task(1).tag(counted(1)).try_add_to(&mailbox) {
        Err(AddError::Full(1)) => {}
        other => panic!("expected Full(1), got {other:?}"),
    }
    assert_eq!(
        tags.load(SeqCst),
        1,
        "the tag of a refused add is dropped once"
    );
    match pool.task(2).tag(counted(2)).try_add() {
        Err(AddError::Full(2)) => {}
        other => panic!("expected Full(2), got {:?}", other.map(|_| ())),
    }
    assert_eq!(tags.load(SeqCst), 2);

    // An input with its own drop count: handed back, not dropped.
    let input_pool = AsyncPool::new(1, |c: Counted| c.0).unwrap();
    let (input_mailbox, input_results): (Mailbox<u32, Counted>, _) = unbounded();
    input_pool.shutdown();
    let refused = input_pool
        .task(Counted(3, inputs.clone()))
        .tag(counted(3))
        .add_to(&input_mailbox)
        .unwrap_err();
    assert!(refused.is_shut_down());
    assert_eq!(
        inputs.load(SeqCst),
        0,
        "the input is handed back, not dropped"
    );
    assert_eq!(tags.load(SeqCst), 3);
    let input = refused.into_inner();
    assert_eq!(input.0, 3);
    drop(input);
    assert_eq!(inputs.load(SeqCst), 1);
    let refused = input_pool
        .task(Counted(4, inputs.clone()))
        .tag(counted(4))
        .add()
        .unwrap_err();
    assert_eq!((refused.into_inner().0, tags.load(SeqCst)), (4, 4));

    // An add waiting for room in the full rendezvous (or coming just after the shutdown began):
    // refused by the shutdown either way.
    let blocked = {
        let (pool, mailbox, tag) = (pool.clone(), mailbox.clone(), counted(5));
        std::thread::spawn(move || pool.task(5).tag(tag).add_to(&mailbox).map(|_| ()))
    };
    let stopper = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown())
    };
    let refused = watchdog("blocked add at shutdown", move || blocked.join().unwrap());
    assert_eq!(refused, Err(AddError::ShutDown(5)));
    assert_eq!(tags.load(SeqCst), 5);
    key.open();
    stopper.join().unwrap();
    assert_eq!(running.recv(), Ok(0));

    // Nothing refused reached a mailbox or the counts.
    drop(mailbox);
    drop(input_mailbox);
    assert!(results.recv().is_err() && input_results.recv().is_err());
    assert_eq!(pool.stats().submitted, submitted);
    assert_eq!(input_pool.stats().submitted, 0);
}

#[test]
fn a_tag_whose_drop_panics_is_dropped_quietly_by_the_pool() {
    watchdog("tags that panic when dropped", || {
        let (key, gate) = gate();
        let pool = AsyncPool::builder()
            .max_workers(1)
            .thread_name("bomb-tag")
            .build(move |n: u32| {
                if n == 0 {
                    gate.wait();
                }
                if n == 1 {
                    panic!("one");
                }
                n
            })
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let dropped = Arc::new(AtomicUsize::new(0));
        let bomb = || Bomb(dropped.clone());
        let (mailbox, results): (Mailbox<u32, Bomb>, _) = unbounded();
        drop(results); // every ending is dropped by whoever delivers it

        // Stuck on the gate past its deadline: the timer delivers `TimedOut`.
        let stuck = pool
            .task(0)
            .timeout(Duration::from_millis(10))
            .tag(bomb())
            .add_to(&mailbox)
            .unwrap();
        eventually("the stuck task timed out", || pool.stats().timed_out == 1);
        // Queued behind a blocker: cancelled by id and by `cancel_all`, on this thread.
        let blocker = pool.task(0).add().unwrap();
        eventually("the blocker runs", || blocker.is_running());
        let by_id = pool.task(2).tag(bomb()).add_to(&mailbox).unwrap();
        for n in 3..6 {
            pool.task(n).tag(bomb()).add_to(&mailbox).unwrap();
        }
        assert!(pool.cancel(by_id));
        assert_eq!(pool.cancel_all(), vec![3, 4, 5]);
        key.open();
        assert_eq!(blocker.recv(), Ok(0));
        // Completed and panicked, on the worker.
        pool.task(1).tag(bomb()).add_to(&mailbox).unwrap();
        pool.task(7).tag(bomb()).add_to(&mailbox).unwrap();
        pool.join();
        eventually("every tag dropped", || dropped.load(SeqCst) == 7);
        let stats = pool.stats();
        assert_eq!(
            (
                stats.completed,
                stats.panicked,
                stats.cancelled,
                stats.timed_out
            ),
            (2, 1, 4, 1)
        );
        assert_eq!(stats.workers, 1, "the worker survived every drop");
        assert_ne!(stuck, by_id);

        // A receiver that exists gets its tags intact; they are the caller's to drop.
        let (mailbox, results): (Mailbox<u32, Bomb>, _) = unbounded();
        let id = pool.task(8).tag(bomb()).add_to(&mailbox).unwrap();
        let done = results.recv().unwrap();
        assert_eq!((done.id, &done.result), (id, &Ok(8)));
        assert_eq!(dropped.load(SeqCst), 7, "a delivered tag is not dropped");
        std::mem::forget(done); // dropping it here would panic this test's thread
    });
}

#[test]
fn a_refused_add_with_a_tag_whose_drop_panics_still_hands_the_input_back() {
    // `add_to` and `try_add_to` drop the refused task's tag quietly and return the input;
    // `add` and `try_add` drop it on the caller's stack as they return, so its panic unwinds
    // through the add and the `Err(ShutDown(input))` being returned is dropped with it.
    let dropped = Arc::new(AtomicUsize::new(0));
    let bomb = || Bomb(dropped.clone());
    // Runs a refused add that returns the input it got back; checks it returned (no panic
    // escaped), with the input, and dropped the tag once.
    let refused = |what: &str, add: &dyn Fn() -> Option<String>| {
        let before = dropped.load(SeqCst);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(add));
        assert_eq!(
            outcome.ok(),
            Some(Some("kept".to_string())),
            "{what}: the tag's panic escaped the add, and the input with it"
        );
        assert_eq!(
            dropped.load(SeqCst),
            before + 1,
            "{what}: the tag dropped once"
        );
    };
    let pool = AsyncPool::new(1, |s: String| s.len()).unwrap();
    let closures = ThreadPool::new(1).unwrap();
    pool.shutdown();
    closures.shutdown();
    let (mailbox, _results): (Mailbox<usize, Bomb>, _) = unbounded();
    let input = |refused: AddError<String>| refused.is_shut_down().then(|| refused.into_inner());
    refused("add_to", &|| {
        let add = pool.task("kept".into()).tag(bomb()).add_to(&mailbox);
        add.err().and_then(input)
    });
    refused("try_add_to", &|| {
        let add = pool.task("kept".into()).tag(bomb()).try_add_to(&mailbox);
        add.err().and_then(input)
    });
    refused("add", &|| {
        let add = pool.task("kept".into()).tag(bomb()).add();
        add.err().and_then(input)
    });
    refused("try_add", &|| {
        let add = pool.task("kept".into()).tag(bomb()).try_add();
        add.err().and_then(input)
    });
    refused("ThreadPool add", &|| {
        let add = closures.task(|| "kept".to_string()).tag(bomb()).add();
        add.err().map(|refused| refused.into_inner()())
    });
}
