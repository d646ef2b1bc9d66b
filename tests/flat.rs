//! Flat results for callbacks returning `Result<T, E>`: `Failed<E>` from a `Task`, a mailbox, a
//! stream, and as an error among others.

mod common;

use std::error::Error;
use std::fmt;
use std::time::Duration;

use common::{gate, watchdog};
use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, Failed, Flat, TaskError, TaskId, ThreadPool};

/// A callback error with a source, to check that `Failed` is transparent.
#[derive(Debug, PartialEq)]
struct Refused {
    cause: Cause,
}

#[derive(Debug, PartialEq)]
struct Cause;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused by the server")
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset")
    }
}

impl Error for Refused {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.cause)
    }
}

impl Error for Cause {}

/// A pool whose callback fails on odd inputs, panics on 0 and blocks on its gate for 1.
fn pool_with_gate() -> (common::GateKey, AsyncPool<u32, Result<u32, Refused>>) {
    let (key, gate) = gate();
    let pool = AsyncPool::new(1, move |n: u32| match n {
        0 => panic!("zero"),
        1 => {
            gate.wait();
            Ok(1)
        }
        n if n % 2 == 1 => Err(Refused { cause: Cause }),
        n => Ok(n / 2),
    })
    .unwrap();
    (key, pool)
}

#[test]
fn recv_flat_gives_the_value_or_one_of_two_failures() {
    watchdog("recv_flat", || {
        let (key, pool) = pool_with_gate();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        assert_eq!(pool.add_task(8).unwrap().recv_flat(), Ok(4));
        assert_eq!(
            pool.add_task(3).unwrap().recv_flat(),
            Err(Failed::Callback(Refused { cause: Cause }))
        );
        assert_eq!(
            pool.add_task(0).unwrap().recv_flat(),
            Err(Failed::Task(TaskError::Panicked("zero".into())))
        );

        let running = pool.add_task(1).unwrap();
        let queued = pool.add_task(2).unwrap();
        assert!(queued.cancel());
        assert_eq!(queued.recv_flat(), Err(Failed::Task(TaskError::Cancelled)));
        key.pass(1);
        assert_eq!(running.recv_flat(), Ok(1));
        assert_eq!(
            running.recv_flat(),
            Err(Failed::Task(TaskError::AlreadyReceived))
        );
    });
}

#[test]
fn try_and_timed_flat_reads_wait_like_their_plain_forms() {
    watchdog("try_recv_flat, recv_timeout_flat", || {
        let (key, pool) = pool_with_gate();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let task = pool.add_task(1).unwrap();
        assert_eq!(task.try_recv_flat(), None);
        assert_eq!(task.recv_timeout_flat(Duration::from_millis(5)), None);
        key.pass(1);
        assert_eq!(task.recv_timeout_flat(common::PATIENCE), Some(Ok(1)));
        assert_eq!(
            task.try_recv_flat(),
            Some(Err(Failed::Task(TaskError::AlreadyReceived)))
        );

        let failing = pool.add_task(5).unwrap();
        pool.join();
        assert_eq!(
            failing.try_recv_flat(),
            Some(Err(Failed::Callback(Refused { cause: Cause })))
        );
    });
}

#[test]
fn a_timed_out_task_is_a_task_failure() {
    watchdog("flat TimedOut", || {
        let (key, pool) = pool_with_gate();
        let stuck = pool
            .add_task_with_timeout(1, Duration::from_millis(20))
            .unwrap();
        assert_eq!(stuck.recv_flat(), Err(Failed::Task(TaskError::TimedOut)));
        key.pass(1); // the abandoned thread returns
    });
}

#[test]
fn mailbox_messages_flatten_with_their_id() {
    watchdog("mailbox flat", || {
        let (_key, pool) = pool_with_gate();
        let (mailbox, results) = unbounded();
        let ids: Vec<TaskId> = [2, 3, 0, 4]
            .into_iter()
            .map(|n| pool.add_task_to(n, &mailbox).unwrap())
            .collect();
        let mut got: Vec<(TaskId, Result<u32, Failed<Refused>>)> =
            (0..4).map(|_| results.recv().unwrap().flat()).collect();
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(
            got,
            [
                (ids[0], Ok(1)),
                (ids[1], Err(Failed::Callback(Refused { cause: Cause }))),
                (
                    ids[2],
                    Err(Failed::Task(TaskError::Panicked("zero".into())))
                ),
                (ids[3], Ok(2)),
            ]
        );
    });
}

#[test]
fn stream_items_flatten_ordered_and_unordered() {
    watchdog("map_* flat", || {
        let pool = AsyncPool::new(3, |n: u32| {
            if n % 3 == 0 {
                Err(format!("{n} divisible by 3"))
            } else {
                Ok(n)
            }
        })
        .unwrap();
        let ordered: Vec<Result<u32, Failed<String>>> =
            pool.map_ordered(1..=4).map(Flat::flat).collect();
        assert_eq!(
            ordered,
            [
                Ok(1),
                Ok(2),
                Err(Failed::Callback("3 divisible by 3".into())),
                Ok(4)
            ]
        );
        let mut unordered: Vec<(usize, Result<u32, Failed<String>>)> =
            pool.map_unordered(1..=4).map(Flat::flat).collect();
        unordered.sort_by_key(|(index, _)| *index);
        assert_eq!(
            unordered[2],
            (2, Err(Failed::Callback("3 divisible by 3".into())))
        );
        assert_eq!(unordered[3], (3, Ok(4)));
    });
}

#[test]
fn failed_reads_as_the_error_inside() {
    let callback: Failed<Refused> = Failed::Callback(Refused { cause: Cause });
    assert_eq!(callback.to_string(), "refused by the server");
    assert_eq!(
        callback.source().map(ToString::to_string),
        Some("connection reset".to_string()),
        "transparent: the source is the callback error's source"
    );
    assert!(callback.is_callback() && !callback.is_task());
    assert_eq!(callback.task_error(), None);

    let task: Failed<Refused> = TaskError::Panicked("boom".into()).into();
    assert_eq!(task.to_string(), "task panicked: boom");
    assert!(task.source().is_none());
    assert_eq!(task.task_error(), Some(&TaskError::Panicked("boom".into())));
    assert_eq!(task.into_callback(), None);
    assert_eq!(
        format!("{:?}", Failed::<u8>::Task(TaskError::Cancelled)),
        "Task(Cancelled)"
    );
}

#[test]
fn failed_converts_with_question_mark() {
    fn fetch(pool: &ThreadPool) -> Result<u8, Box<dyn Error + Send + Sync>> {
        let task = pool
            .spawn(|| Err::<u8, _>(Refused { cause: Cause }))
            .map_err(|_| "pool refused")?;
        Ok(task.recv_flat()?)
    }
    fn task_only(result: Result<u8, TaskError>) -> Result<u8, Failed<Refused>> {
        Ok(result?) // From<TaskError>
    }

    watchdog("? into Box<dyn Error>", || {
        let pool = ThreadPool::new(1).unwrap();
        let error = fetch(&pool).unwrap_err();
        assert_eq!(error.to_string(), "refused by the server");
        assert!(error.downcast_ref::<Failed<Refused>>().is_some());
    });
    assert_eq!(
        task_only(Err(TaskError::Cancelled)),
        Err(Failed::Task(TaskError::Cancelled))
    );
}
