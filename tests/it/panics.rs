//! A panicking callback: reported to its caller, counted, and the pool keeps its workers.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, Mailbox, TaskError, ThreadPool};

use crate::support::{eventually, gate};

fn payload_pool() -> AsyncPool<u8, u8> {
    AsyncPool::new(2, |kind: u8| match kind {
        0 => panic!("static str"),
        1 => panic!("formatted {}", "String"),
        2 => std::panic::panic_any(42_u32),
        n => n,
    })
    .unwrap()
}

#[test]
fn the_panic_message_reaches_the_caller() {
    let pool = payload_pool();
    assert_eq!(
        pool.add_task(0).unwrap().recv(),
        Err(TaskError::Panicked("static str".into()))
    );
    assert_eq!(
        pool.add_task(1).unwrap().recv(),
        Err(TaskError::Panicked("formatted String".into()))
    );
    assert_eq!(
        pool.add_task(2).unwrap().recv(),
        Err(TaskError::Panicked("non-string panic payload".into()))
    );
}

#[test]
fn panics_are_counted_and_workers_kept() {
    let pool = payload_pool();
    // Many more panics than workers: if a panic killed its worker, the pool would run dry.
    let tasks: Vec<_> = (0..300)
        .map(|n| pool.add_task((n % 4) as u8).unwrap())
        .collect();
    let panicked = tasks.iter().filter(|t| t.recv().is_err()).count();
    assert_eq!(panicked, 225);
    let stats = pool.stats();
    assert_eq!(stats.panicked, 225);
    assert_eq!(stats.completed, 75);
    assert_eq!(stats.workers, 2);
    assert_eq!(pool.add_task(9).unwrap().recv(), Ok(9));
}

#[test]
fn a_panicking_closure_on_a_thread_pool_is_reported_too() {
    let pool = ThreadPool::new(1).unwrap();
    let task = pool.spawn(|| -> u8 { panic!("closure") }).unwrap();
    assert_eq!(task.recv(), Err(TaskError::Panicked("closure".into())));
    assert_eq!(pool.spawn(|| 1).unwrap().recv(), Ok(1));
}

#[test]
fn task_error_is_a_std_error_with_a_message() {
    fn is_error<E: std::error::Error + Clone + Eq + std::fmt::Debug>(_: &E) {}
    let error = TaskError::Panicked("boom".into());
    is_error(&error);
    assert_eq!(error.to_string(), "task panicked: boom");
    assert_eq!(
        TaskError::Cancelled.to_string(),
        "task was cancelled before it started"
    );
    assert_eq!(TaskError::TimedOut.to_string(), "task timed out");
}

#[test]
fn a_result_whose_drop_panics_does_not_hurt_the_worker() {
    struct Explosive(Arc<AtomicUsize>);
    impl Drop for Explosive {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                self.0.fetch_add(1, SeqCst);
                panic!("dropped");
            }
        }
    }
    let (key, gate) = gate();
    let exploded = Arc::new(AtomicUsize::new(0));
    let counter = exploded.clone();
    let pool = AsyncPool::new(1, move |_: ()| {
        gate.wait();
        Explosive(counter.clone())
    })
    .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    // Fire and forget: every handle is dropped while its task is still queued or blocked, so
    // no result has been delivered yet and each is dropped by the pool, on the worker. (A
    // handle dropped after its result arrived would drop the result on this thread, as the
    // result then belongs to the caller.)
    for _ in 0..10 {
        drop(pool.add_task(()).unwrap());
    }
    key.open();
    pool.join();
    let stats = pool.stats();
    assert_eq!(stats.completed, 10);
    assert_eq!(stats.workers, 1);
    eventually("every result dropped", || exploded.load(SeqCst) == 10);
    // A mailbox whose receiver is gone drops it on the worker too.
    let (mailbox, results): (Mailbox<Explosive>, _) = unbounded();
    drop(results);
    pool.add_task_to((), &mailbox).unwrap();
    pool.join();
    assert_eq!(pool.stats().completed, 11);
    eventually("the mailed result dropped", || exploded.load(SeqCst) == 11);
    let kept = pool.add_task(()).unwrap().recv();
    assert!(kept.is_ok());
    assert_eq!(
        exploded.load(SeqCst),
        11,
        "a received result is the caller's"
    );
    std::mem::forget(kept); // dropping it here would panic this test's thread
}
