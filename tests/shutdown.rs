//! Shutdown, shutdown_now, join and drop: nothing lost, nothing hung, no thread left.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{assert_threads_gone, eventually, gated, threads_named, watchdog, PATIENCE};
use crossbeam_channel::unbounded;
use slowpool::{AddError, AsyncPool, TaskError, ThreadPool};

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
    assert_eq!(pool.try_add_task("t".into()).unwrap_err().into_inner(), "t");
    let (tx, _rx) = unbounded();
    assert_eq!(
        pool.add_task_to("m".into(), &tx).unwrap_err(),
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
    let (mail_tx, mail_rx) = unbounded();
    let mailed = pool.add_task_to(10, &mail_tx).unwrap();
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
    assert_eq!(mail_rx.recv().unwrap(), (mailed, Err(TaskError::Cancelled)));
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
    let (tx, rx) = unbounded();
    for n in 0..30 {
        pool.add_task_to(n % 5, &tx).unwrap();
    }
    pool.join();
    assert_eq!(done.load(Ordering::SeqCst), 30);
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.queued), (0, 0));
    assert_eq!(
        rx.try_iter().count(),
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
    assert_eq!(
        queued.recv_timeout(PATIENCE),
        Some(Err(TaskError::Cancelled))
    );
    key.open();
    assert_eq!(stopper.join().unwrap(), vec![1]);
    assert_eq!(running.recv(), Ok(0));
}

#[test]
fn a_callback_can_add_to_its_own_pool_without_keeping_it_alive() {
    let (tx, rx) = unbounded();
    let results = tx.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .thread_name("sd-cyc")
        .build_with_handle(move |handle| {
            move |depth: u32| {
                if depth < 3 {
                    for _ in 0..2 {
                        handle.add_task_to(depth + 1, &results).unwrap();
                    }
                }
                depth
            }
        })
        .unwrap();
    let handle = pool.handle();
    pool.add_task_to(0, &tx).unwrap();
    // 1 + 2 + 4 + 8 tasks in the tree.
    let mut depths: Vec<u32> = (0..15).map(|_| rx.recv().unwrap().1.unwrap()).collect();
    depths.sort();
    assert_eq!(depths, [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]);
    drop(pool);
    // The handle inside the callback did not keep the pool alive.
    assert_threads_gone("sd-cyc");
    assert!(handle.is_shut_down());
    assert_eq!(
        handle.add_task_to(9, &tx).unwrap_err(),
        AddError::ShutDown(9)
    );
}
