//! Task timeouts: reported at the deadline, capacity kept, threads abandoned and accounted.

use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, RecvTimeoutError, TryRecvError};
use slowpool::{AsyncPool, Mailbox, TaskError};

use crate::support::{eventually, gate, threads_named, watchdog, PATIENCE};

#[test]
fn a_stuck_task_is_reported_at_its_deadline_while_its_thread_still_blocks() {
    let (release, stuck) = bounded::<()>(0);
    let (late_tx, late_rx) = unbounded();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .thread_name("to-stuck")
        .task_timeout(Duration::from_millis(50))
        .build(move |n: u32| {
            if n == 0 {
                let _ = stuck.recv(); // the test never sends: blocked until released
                late_tx.send(()).unwrap();
            }
            n
        })
        .unwrap();
    // Declared after the pool, dropped before it: a failed assertion cannot leave the pool's
    // shutdown waiting on a task that waits on this.
    let release = release;
    let started = Instant::now();
    let task = pool.add_task(0).unwrap();
    assert_eq!(
        watchdog("timed-out result", move || task.recv()),
        Err(TaskError::TimedOut)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "not before the deadline"
    );
    let stats = pool.stats();
    assert_eq!((stats.timed_out, stats.abandoned, stats.workers), (1, 1, 1));
    eventually("the stuck thread and its replacement", || {
        threads_named("to-stuck") == 2
    });

    // Released, the abandoned thread finishes its callback; its late result goes nowhere.
    drop(release);
    late_rx.recv().unwrap();
    eventually("the abandoned thread leaves", || {
        pool.stats().abandoned == 0 && threads_named("to-stuck") == 1
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.timed_out),
        (0, 1),
        "the late result was dropped"
    );
    // A task that must finish gets a deadline of its own: under a loaded machine, the pool's
    // 50 ms could pass while it is merely descheduled.
    let after = pool.task(5).timeout(PATIENCE).add().unwrap();
    assert_eq!(after.recv(), Ok(5));
}

#[test]
fn two_stuck_tasks_do_not_take_the_capacity_of_a_two_worker_pool() {
    let (_release, stuck) = bounded::<()>(0);
    let pool = AsyncPool::builder()
        .max_workers(2)
        .task_timeout(Duration::from_millis(30))
        .build(move |n: u32| {
            if n < 2 {
                let _ = stuck.recv();
            }
            n
        })
        .unwrap();
    let stuck_tasks: Vec<_> = (0..2).map(|n| pool.add_task(n).unwrap()).collect();
    // Its own, generous deadline: it must finish, even on a loaded machine.
    let third = pool.task(2).timeout(PATIENCE).add().unwrap();
    assert_eq!(watchdog("third task", move || third.recv()), Ok(2));
    for task in &stuck_tasks {
        assert_eq!(task.recv(), Err(TaskError::TimedOut));
    }
    assert_eq!(pool.stats().workers, 2);
}

#[test]
fn a_per_task_timeout_applies_to_that_task_only() {
    let (release, gate) = bounded::<()>(0);
    let pool = AsyncPool::new(2, move |wait: bool| {
        if wait {
            let _ = gate.recv();
        }
        wait
    })
    .unwrap();
    // Declared after the pool, dropped before it: a failed assertion cannot leave the pool's
    // shutdown waiting on a task that waits on this.
    let release = release;
    let short = pool
        .task(true)
        .timeout(Duration::from_millis(20))
        .add()
        .unwrap();
    let untimed = pool.add_task(true).unwrap();
    assert_eq!(short.recv(), Err(TaskError::TimedOut));
    assert_eq!(
        untimed.try_recv(),
        Err(TryRecvError::Empty),
        "no pool-wide timeout"
    );
    drop(release);
    assert_eq!(untimed.recv(), Ok(true));
}

#[test]
fn time_in_the_queue_does_not_count_toward_the_deadline() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .task_timeout(Duration::from_millis(200))
        .build(move |n: u32| {
            if n == 0 {
                gate.wait();
            }
            n
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let blocker = pool
        .task(0)
        .timeout(Duration::from_secs(120))
        .add()
        .unwrap();
    let queued = pool.add_task(1).unwrap();
    // The queued task waits far longer than its 200 ms timeout before it starts.
    assert_eq!(
        queued.recv_timeout(Duration::from_millis(400)),
        Err(RecvTimeoutError::Timeout)
    );
    key.open();
    assert_eq!(blocker.recv(), Ok(0));
    assert_eq!(queued.recv(), Ok(1));
}

#[test]
fn past_max_abandoned_a_timed_out_thread_stays_a_worker() {
    let (release, stuck) = bounded::<()>(0);
    let pool = AsyncPool::builder()
        .max_workers(2)
        .max_abandoned(1)
        .task_timeout(Duration::from_millis(20))
        .thread_name("to-max")
        .build(move |n: u32| {
            if n < 2 {
                let _ = stuck.recv();
            }
            n
        })
        .unwrap();
    let release = release;
    let first = pool.add_task(0).unwrap();
    assert_eq!(first.recv(), Err(TaskError::TimedOut));
    let second = pool.add_task(1).unwrap();
    assert_eq!(
        second.recv(),
        Err(TaskError::TimedOut),
        "still reported at its deadline"
    );
    let stats = pool.stats();
    assert_eq!((stats.abandoned, stats.timed_out), (1, 2));
    eventually("one replacement only", || threads_named("to-max") == 3);
    assert_eq!(pool.stats().workers, 2, "no runaway growth");
    drop(release);
    eventually("the abandoned thread leaves", || {
        pool.stats().abandoned == 0
    });
    // Its own, generous deadline: it must finish, even on a loaded machine.
    let after = pool.task(7).timeout(PATIENCE).add().unwrap();
    assert_eq!(after.recv(), Ok(7));
}

#[test]
fn a_cancel_token_tells_a_timed_out_callback_to_stop() {
    let (stopped_tx, stopped_rx) = unbounded();
    let pool = AsyncPool::builder()
        .max_workers(1)
        .task_timeout(Duration::from_millis(20))
        .build_with(
            || (),
            move |cx, _: ()| {
                while !cx.token().is_cancelled() {
                    std::thread::yield_now();
                }
                stopped_tx.send(()).unwrap();
            },
        )
        .unwrap();
    assert_eq!(pool.add_task(()).unwrap().recv(), Err(TaskError::TimedOut));
    watchdog("the callback saw its token", move || {
        stopped_rx.recv().unwrap()
    });
}

#[test]
fn a_timed_out_mailbox_task_reports_to_its_mailbox() {
    let (_release, stuck) = bounded::<()>(0);
    let pool = AsyncPool::builder()
        .max_workers(1)
        .task_timeout(Duration::from_millis(20))
        .build(move |_: ()| {
            let _ = stuck.recv();
        })
        .unwrap();
    let (mailbox, results): (Mailbox<()>, _) = unbounded();
    let id = pool.add_task_to((), &mailbox).unwrap();
    let done = results.recv().unwrap();
    assert_eq!((done.id, done.attempts), (id, 1), "it started once");
    assert_eq!(done.result, Err(TaskError::TimedOut));
}
