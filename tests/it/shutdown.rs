//! Shutdown, shutdown_now, join and drop: nothing lost, nothing hung, no thread left; and pool
//! handles (`pool.handle()`), which reach a pool without keeping it alive, on both faces.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::unbounded;
use slowpool::{AddError, AsyncPool, Mailbox, Stats, TaskError, TaskId, ThreadPool};

use crate::support::{
    assert_threads_gone, eventually, gated, id_result, threads_named, watchdog, PATIENCE,
};

/// A mailbox message as the pair an event loop matches on.
#[test]
fn shutdown_runs_everything_accepted_and_joins_every_thread() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let pool = AsyncPool::builder()
        .max_workers(4)
        .thread_name("sd-all")
        .build(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    eventually("workers named", || threads_named("sd-all") == 4);
    for n in 0..1_000 {
        drop(pool.add_task(n).unwrap());
    }
    pool.shutdown();
    assert_eq!(ran.load(Ordering::SeqCst), 1_000);
    assert_threads_gone("sd-all");
    assert_eq!(pool.stats().workers, 0);
}

#[test]
fn adding_after_shutdown_hands_the_input_back() {
    let pool = AsyncPool::new(1, |s: String| s).unwrap();
    pool.shutdown();
    assert!(pool.is_shut_down());
    match pool.add_task("kept".to_string()) {
        Err(AddError::ShutDown(input)) => assert_eq!(input, "kept"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        pool.task("t".into()).try_add().unwrap_err().into_inner(),
        "t"
    );
    let (mailbox, _results): (Mailbox<String>, _) = unbounded();
    assert_eq!(
        pool.add_task_to("m".into(), &mailbox).unwrap_err(),
        AddError::ShutDown("m".to_string())
    );
    pool.shutdown(); // idempotent
}

#[test]
fn a_refused_closure_is_handed_back_unrun() {
    let pool = ThreadPool::new(1).unwrap();
    pool.shutdown();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let refused = pool
        .spawn(move || counter.fetch_add(1, Ordering::SeqCst))
        .unwrap_err();
    assert!(refused.is_shut_down());
    let closure = refused.into_inner();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    closure();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_now_returns_exactly_the_unstarted_inputs() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(2));
    let running: Vec<_> = (0..2).map(|n| pool.add_task(n).unwrap()).collect();
    eventually("both workers busy", || pool.stats().busy == 2);
    let queued: Vec<_> = (2..10).map(|n| pool.add_task(n).unwrap()).collect();
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let mailed = pool.add_task_to(10, &mailbox).unwrap();
    // Release the running tasks only once the queued ones were cancelled.
    let releaser = {
        let first_queued = queued[0].receiver().clone();
        std::thread::spawn(move || {
            assert_eq!(first_queued.recv().unwrap(), Err(TaskError::Cancelled));
            key.pass(2);
        })
    };
    let unstarted = watchdog("shutdown_now", {
        let pool = pool.clone();
        move || pool.shutdown_now()
    });
    releaser.join().unwrap();
    assert_eq!(
        unstarted,
        (2..=10).collect::<Vec<_>>(),
        "inputs handed back in order"
    );
    for task in &queued[1..] {
        assert_eq!(task.recv(), Err(TaskError::Cancelled));
    }
    assert_eq!(
        id_result(results.recv().unwrap()),
        (mailed, Err(TaskError::Cancelled))
    );
    for (n, task) in running.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32), "started tasks finish");
    }
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled), (2, 9));
}

#[test]
fn join_waits_until_nothing_is_queued_or_running() {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let pool = AsyncPool::new(3, move |ms: u64| {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let (mailbox, results): (Mailbox<()>, _) = unbounded();
    for n in 0..30 {
        pool.add_task_to(n % 5, &mailbox).unwrap();
    }
    pool.join();
    assert_eq!(done.load(Ordering::SeqCst), 30);
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.queued), (0, 0));
    assert_eq!(
        results.try_iter().count(),
        30,
        "join returns after every result was delivered"
    );
    pool.join(); // an idle pool returns at once
}

#[test]
fn dropping_the_last_pool_finishes_queued_work_and_joins() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("sd-drop")
        .build(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let clone = pool.clone();
    for n in 0..100 {
        drop(pool.add_task(n).unwrap());
    }
    drop(pool);
    eventually("a clone keeps the pool alive", || {
        threads_named("sd-drop") == 2
    });
    drop(clone);
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    assert_threads_gone("sd-drop");
}

#[test]
fn dropping_the_last_pool_on_its_own_worker_does_not_deadlock() {
    let (pool_tx, pool_rx) = unbounded::<AsyncPool<u32, u32>>();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("sd-self")
        .build(move |n: u32| {
            if n == 0 {
                // The last handle to the pool is dropped here, on one of its workers.
                drop(pool_rx.recv().unwrap());
            }
            n
        })
        .unwrap();
    let first = pool.add_task(0).unwrap();
    let others: Vec<_> = (1..20).map(|n| pool.add_task(n).unwrap()).collect();
    pool_tx.send(pool).unwrap();
    assert_eq!(
        watchdog("task dropping its own pool", move || first.recv()),
        Ok(0)
    );
    for (n, task) in others.iter().enumerate() {
        assert_eq!(task.recv(), Ok(n as u32 + 1), "queued work still runs");
    }
    eventually("the pool's threads exit on their own", || {
        threads_named("sd-self") == 0
    });
}

#[test]
fn shutdown_from_inside_a_task_returns_and_the_pool_drains() {
    let (pool_tx, pool_rx) = unbounded::<AsyncPool<u32, u32>>();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("sd-in")
        .build(move |n: u32| {
            if n == 0 {
                pool_rx.recv().unwrap().shutdown();
            }
            n
        })
        .unwrap();
    let first = pool.add_task(0).unwrap();
    let queued = pool.add_task(1).unwrap();
    pool_tx.send(pool.clone()).unwrap();
    assert_eq!(
        watchdog("shutdown inside a task", move || first.recv()),
        Ok(0)
    );
    assert_eq!(queued.recv(), Ok(1));
    assert!(pool.add_task(2).is_err());
    eventually("worker exits", || threads_named("sd-in") == 0);
}

#[test]
fn an_add_blocked_on_a_full_queue_gets_its_input_back_at_shutdown() {
    let (mut key, pool) = gated(AsyncPool::builder().max_workers(1).queue_capacity(1));
    let running = pool.add_task(0).unwrap();
    let queued = pool.add_task(1).unwrap();
    let blocked = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.add_task(2).map(|_| ()))
    };
    eventually("the third add is blocked", || {
        !blocked.is_finished() && pool.stats().queued == 1
    });
    let stopper = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.shutdown_now())
    };
    let refused = watchdog("blocked add at shutdown", move || blocked.join().unwrap());
    assert_eq!(refused, Err(AddError::ShutDown(2)));
    // The blocked add is woken by `close`, before `shutdown_now` drains the queue: opening the
    // gate now would let the worker finish task 0 and start task 1 ahead of the drain. Wait for
    // the drain to cancel task 1 first.
    assert_eq!(queued.recv_timeout(PATIENCE), Ok(Err(TaskError::Cancelled)));
    key.open();
    assert_eq!(stopper.join().unwrap(), vec![1]);
    assert_eq!(running.recv(), Ok(0));
}

#[test]
fn a_callback_can_add_to_its_own_pool_without_keeping_it_alive() {
    // Was `build_with_handle(|handle| callback)`: the handle is `cx.pool()` now.
    let (mailbox, results): (Mailbox<u32>, _) = unbounded();
    let replies = mailbox.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("sd-cyc")
        .build_with(
            || (),
            move |cx, depth: u32| {
                if depth < 3 {
                    for _ in 0..2 {
                        cx.pool().add_task_to(depth + 1, &replies).unwrap();
                    }
                }
                depth
            },
        )
        .unwrap();
    let handle = pool.handle();
    pool.add_task_to(0, &mailbox).unwrap();
    // 1 + 2 + 4 + 8 tasks in the tree.
    let mut depths: Vec<u32> = (0..15)
        .map(|_| results.recv().unwrap().result.unwrap())
        .collect();
    depths.sort();
    assert_eq!(depths, [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]);
    drop(pool);
    // The handle inside the callback did not keep the pool alive.
    assert_threads_gone("sd-cyc");
    assert!(handle.is_shut_down());
    assert_eq!(
        handle.add_task_to(9, &mailbox).unwrap_err(),
        AddError::ShutDown(9)
    );
}

// ---------------------------------------------------------------------------------------------
// Pool handles
// ---------------------------------------------------------------------------------------------

#[test]
fn every_control_method_works_through_a_handle_of_a_live_pool() {
    watchdog("a live pool's handle", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1).thread_name("h-live"));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let handle = pool.handle();
        let clone = handle.clone();
        let handle_of_handle = handle.handle();
        assert!(format!("{pool:?}").contains("handle: false"));
        for h in [&handle, &clone, &handle_of_handle] {
            assert!(format!("{h:?}").contains("handle: true"), "{h:?}");
            assert!(!h.is_shut_down());
            assert_eq!(h.max_workers(), 1);
        }
        // Adds through each copy, on the one pool.
        let running = handle.add_task(0).unwrap();
        eventually("the worker took the first task", || running.is_running());
        let queued = clone.task(1).add().unwrap();
        let (mailbox, results): (Mailbox<u32, &str>, _) = unbounded();
        let mailed = handle_of_handle
            .task(2)
            .tag("two")
            .add_to(&mailbox)
            .unwrap();
        let last = handle_of_handle.task(3).try_add().unwrap();
        // Cancel by id, then all.
        assert!(handle_of_handle.cancel(mailed));
        let done = results.recv().unwrap();
        assert_eq!((done.id, done.tag, done.attempts), (mailed, "two", 0));
        assert_eq!(done.result, Err(TaskError::Cancelled));
        assert!(!clone.cancel(mailed), "ended already");
        assert!(!clone.cancel(running.id()), "running");
        assert_eq!(clone.cancel_all(), vec![1, 3]);
        assert_eq!(queued.recv(), Err(TaskError::Cancelled));
        assert_eq!(last.recv(), Err(TaskError::Cancelled));
        // The same snapshot through the pool and its handles.
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.submitted, stats.cancelled), (1, 4, 3));
        assert_eq!(handle.stats(), stats);
        assert_eq!(handle_of_handle.stats(), stats);
        // Resizing through a handle resizes the pool.
        assert!(handle.set_max_workers(3));
        assert_eq!((pool.max_workers(), clone.max_workers()), (3, 3));
        assert_eq!(pool.stats().workers, 3);
        assert!(!handle.set_max_workers(0));
        // A join through a handle waits for the pool's work.
        key.pass(1);
        handle_of_handle.join();
        assert_eq!(running.try_recv(), Ok(Ok(0)));
        // Dropping handles changes nothing.
        drop((handle, clone));
        assert!(!pool.is_shut_down());
        let after = pool.add_task(4).unwrap();
        key.pass(1);
        assert_eq!(after.recv(), Ok(4));
        // A shutdown through a handle shuts the pool down and joins its threads.
        handle_of_handle.shutdown();
        assert!(pool.is_shut_down() && handle_of_handle.is_shut_down());
        assert_threads_gone("h-live");
        assert!(matches!(pool.add_task(5), Err(AddError::ShutDown(5))));
    });
}

#[test]
fn shutdown_now_and_shutdown_timeout_through_a_handle_stop_the_pool() {
    watchdog("shutting down through handles", || {
        // shutdown_now: the queue comes back through the handle.
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        let handle = pool.handle().handle();
        let running = pool.add_task(0).unwrap();
        eventually("running", || running.is_running());
        let queued: Vec<_> = (1..4).map(|n| handle.add_task(n).unwrap()).collect();
        let releaser = {
            let last = queued[2].receiver().clone();
            std::thread::spawn(move || {
                assert_eq!(last.recv().unwrap(), Err(TaskError::Cancelled));
                key.pass(1);
            })
        };
        assert_eq!(handle.shutdown_now(), vec![1, 2, 3]);
        releaser.join().unwrap();
        assert_eq!(running.recv(), Ok(0));
        assert!(pool.is_shut_down());
        assert_eq!(handle.shutdown_now(), Vec::<u32>::new(), "nothing left");

        // shutdown_timeout: true when everything ended in time, through a handle.
        let quick = ThreadPool::new(2).unwrap();
        let handle = quick.handle();
        let tasks: Vec<_> = (0..10).map(|n| handle.spawn(move || n).unwrap()).collect();
        assert!(handle.shutdown_timeout(Duration::from_secs(60)));
        assert!(quick.is_shut_down());
        for (n, task) in tasks.iter().enumerate() {
            assert_eq!(task.recv(), Ok(n));
        }
    });
}

/// Checks every control method of `handle`, a handle to a pool that is gone.
fn assert_gone<K: slowpool::Kind>(what: &str, handle: &slowpool::Pool<K>, id: TaskId) {
    assert!(handle.is_shut_down(), "{what}");
    assert_eq!(handle.stats(), Stats::default(), "{what}");
    assert_eq!(handle.max_workers(), 0, "{what}");
    assert!(!handle.set_max_workers(4), "{what}");
    assert!(!handle.cancel(id), "{what}");
    assert!(handle.cancel_all().is_empty(), "{what}");
    handle.join();
    handle.shutdown();
    assert!(handle.shutdown_now().is_empty(), "{what}");
    assert!(handle.shutdown_timeout(Duration::from_millis(1)), "{what}");
    assert!(format!("{handle:?}").contains("handle: true"), "{what}");
}

#[test]
fn a_handle_to_a_pool_that_is_gone_refuses_adds_and_answers_as_a_shut_down_pool() {
    watchdog("a dead pool's handle", || {
        let pool = AsyncPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .thread_name("h-dead")
            .build(|s: String| s.len())
            .unwrap();
        let id = pool.add_task("before".into()).unwrap().id();
        let handle = pool.handle();
        drop(pool);
        assert_threads_gone("h-dead");
        let (mailbox, results): (Mailbox<usize>, _) = unbounded();
        let (tagged, tagged_results): (Mailbox<usize, u8>, _) = unbounded();
        for h in [handle.clone(), handle.handle(), handle.clone().handle()] {
            assert_gone("AsyncPool handle", &h, id);
            let shut_down = |s: &str| AddError::ShutDown(s.to_string());
            assert_eq!(h.add_task("a".into()).map(|_| ()), Err(shut_down("a")));
            assert_eq!(
                h.task("b".into()).try_add().map(|_| ()),
                Err(shut_down("b"))
            );
            assert_eq!(h.add_task_to("c".into(), &mailbox), Err(shut_down("c")));
            let keyed = h.task("d".into()).key("k").timeout(Duration::from_secs(1));
            assert_eq!(keyed.tag(4).try_add_to(&tagged), Err(shut_down("d")));
            // A stream ends at once: its first input refused, as Cancelled, none after it.
            let endings: Vec<_> = h.stream(["e".to_string(), "f".to_string()]).collect();
            assert_eq!(endings.len(), 1, "{endings:?}");
            assert_eq!(
                (endings[0].tag, endings[0].attempts, &endings[0].result),
                (0, 0, &Err(TaskError::Cancelled))
            );
        }
        drop((mailbox, tagged));
        assert!(results.recv().is_err() && tagged_results.recv().is_err());

        let closures = ThreadPool::builder()
            .max_workers(1)
            .thread_name("h-dead-t")
            .build()
            .unwrap();
        let id = closures.spawn(|| ()).unwrap().id();
        let handle = closures.handle();
        drop(closures);
        assert_threads_gone("h-dead-t");
        for h in [handle.clone(), handle.handle()] {
            assert_gone("ThreadPool handle", &h, id);
            let refused = h.spawn(|| 42).unwrap_err();
            assert!(refused.is_shut_down());
            assert_eq!(refused.into_inner()(), 42, "the closure comes back unrun");
            let refused = h.task(|| 43).tag("t").try_add().unwrap_err();
            assert_eq!(refused.into_inner()(), 43);
        }
    });
}

#[test]
fn a_handle_to_a_pool_shut_down_but_not_dropped_keeps_its_counts() {
    let pool = AsyncPool::new(2, |n: u32| n).unwrap();
    let handle = pool.handle();
    assert_eq!(handle.add_task(1).unwrap().recv(), Ok(1));
    pool.shutdown();
    assert!(handle.is_shut_down());
    let stats = handle.stats();
    assert_eq!((stats.submitted, stats.completed, stats.workers), (1, 1, 0));
    assert_eq!(stats, pool.stats());
    assert!(matches!(handle.add_task(2), Err(AddError::ShutDown(2))));
    assert!(
        !handle.set_max_workers(4),
        "a shut-down pool is not resized"
    );
    assert!(handle.shutdown_timeout(Duration::from_millis(1)));
    assert!(handle.shutdown_now().is_empty());
}

#[test]
fn adds_through_handles_racing_the_last_owners_drop_run_once_or_come_back() {
    // Four threads add through handles while the last owner is dropped: every input is either
    // accepted, and then runs exactly once (the drop runs everything accepted), or refused
    // with exactly that input handed back. Never lost, never run twice, never hung.
    for round in 0..20 {
        watchdog("adds racing the drop", move || {
            let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = ran.clone();
            let pool = AsyncPool::new(2, move |n: u32| log.lock().unwrap().push(n)).unwrap();
            let closures = ThreadPool::new(1).unwrap();
            // Each adder reports once it made `midway` adds; the owners are dropped then, while
            // the adders go on: a different point of the stream each round.
            let midway = 10 + round * 20;
            let (progress_tx, progress) = unbounded::<()>();
            let adders: Vec<_> = (0..4u32)
                .map(|a| {
                    let (handle, closure_handle) = (pool.handle(), closures.handle());
                    let (progress, ran) = (progress_tx.clone(), ran.clone());
                    std::thread::spawn(move || {
                        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
                        for i in 0..500 {
                            if i == midway {
                                progress.send(()).unwrap();
                            }
                            let n = a * 1_000 + i;
                            let outcome = if i % 5 == 0 {
                                let ran = ran.clone();
                                closure_handle
                                    .spawn(move || ran.lock().unwrap().push(n))
                                    .map(|_| ())
                                    .map_err(|e| {
                                        assert!(e.is_shut_down());
                                        n
                                    })
                            } else {
                                handle.add_task(n).map(|_| ()).map_err(|e| {
                                    assert!(e.is_shut_down());
                                    e.into_inner()
                                })
                            };
                            match outcome {
                                Ok(()) => accepted.push(n),
                                Err(back) => {
                                    assert_eq!(back, n, "the refused input itself");
                                    refused.push(n);
                                }
                            }
                        }
                        (accepted, refused)
                    })
                })
                .collect();
            for _ in 0..4 {
                progress.recv().unwrap();
            }
            drop(pool);
            drop(closures);
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            for adder in adders {
                let (a, r) = adder.join().unwrap();
                accepted.extend(a);
                refused.extend(r);
            }
            let mut ran = ran.lock().unwrap().clone();
            ran.sort();
            accepted.sort();
            assert_eq!(
                ran, accepted,
                "round {round}: every accepted input ran once"
            );
            assert_eq!(accepted.len() + refused.len(), 2_000, "round {round}");
            assert!(accepted.len() >= 4 * midway as usize, "round {round}");
        });
    }
}
