//! `add_task` and the `Task` handle: results, order, select!, and reading a result once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{gate, gated, watchdog};
use crossbeam_channel::{select, tick, unbounded};
use slowpool::{AsyncPool, Task, TaskError, TaskId};

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
    assert!(tasks.iter().all(|t| t.try_recv().is_none()));
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
    assert_eq!(slow.try_recv(), None, "the slow task is still running");
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
    assert_eq!(task.try_recv(), None);
    assert_eq!(task.recv_timeout(Duration::from_millis(5)), None);
    assert!(!task.is_finished());
    key.pass(1);
    assert_eq!(task.recv_timeout(Duration::from_secs(60)), Some(Ok(9)));
    assert!(task.is_finished());
}

#[test]
fn a_result_is_received_once() {
    let pool = AsyncPool::new(1, |n: u8| n).unwrap();
    let task = pool.add_task(1).unwrap();
    assert_eq!(task.recv(), Ok(1));
    assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
    assert_eq!(task.try_recv(), Some(Err(TaskError::AlreadyReceived)));
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
fn pools_are_send_and_sync_and_tasks_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<AsyncPool<String, usize>>();
    send_sync::<slowpool::ThreadPool>();
    send_sync::<slowpool::PoolHandle<String, usize>>();
    send::<Task<String>>();
    send_sync::<Task<String>>();
}
