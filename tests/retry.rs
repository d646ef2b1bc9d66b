//! Retries with back-off, and inputs handed back with failures: what `Submit::retry` and
//! `Submit::keep_input` promise, alone and with keys, deadlines, cancellation, bounded
//! mailboxes, `join` and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, gate, quick, watchdog};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, Decision, Failed, Retried, Retry, TaskError};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_task_failing_twice_then_working_ends_ok_after_three_attempts() {
    watchdog("retry", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |n: u32| {
            if c.fetch_add(1, SeqCst) < 2 {
                Err("flaky")
            } else {
                Ok(n * 10)
            }
        })
        .unwrap();
        let done = pool.task(4).retry(quick(5)).add().unwrap().recv();
        assert_eq!(done.result, Ok(40));
        assert_eq!(done.attempts, 3);
        assert_eq!(calls.load(SeqCst), 3);
        let stats = pool.stats();
        assert_eq!(
            (stats.retried, stats.completed, stats.waiting_retry),
            (2, 1, 0)
        );
        assert_eq!((stats.busy, stats.queued), (0, 0));
    });
}

#[test]
fn out_of_attempts_the_last_error_comes_back_with_the_input() {
    watchdog("give up", || {
        let pool = AsyncPool::new(2, |s: String| -> Result<(), String> {
            Err(format!("no {s}"))
        })
        .unwrap();
        let done = pool
            .task("x".to_string())
            .retry(quick(4))
            .add()
            .unwrap()
            .recv();
        assert_eq!(done.attempts, 4);
        let failure = done.result.unwrap_err();
        assert_eq!(failure.input.as_deref(), Some("x"));
        assert_eq!(failure.error, Failed::Callback("no x".to_string()));
        assert_eq!(pool.stats().retried, 3);
    });
}

#[test]
fn a_retry_after_from_the_callback_is_honoured() {
    // The callback asks for a 150 ms wait (a server's Retry-After); the policy's own back-off
    // is 1 ms. Start times are recorded, not slept on.
    watchdog("retry-after", || {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let s = starts.clone();
        let pool = AsyncPool::new(2, move |_: u32| {
            let mut starts = s.lock().unwrap();
            starts.push(Instant::now());
            if starts.len() == 1 {
                Err(Duration::from_millis(150))
            } else {
                Ok(())
            }
        })
        .unwrap();
        let policy = quick(3).when(|attempt| match attempt.error() {
            Failed::Callback(wait) => Decision::RetryAfter(**wait),
            Failed::Task(_) => Decision::Retry,
        });
        let done = pool.task(1).retry(policy).add().unwrap().recv();
        assert_eq!((done.result, done.attempts), (Ok(()), 2));
        let starts = starts.lock().unwrap();
        assert!(starts[1] - starts[0] >= Duration::from_millis(150));
    });
}

#[test]
fn a_task_waiting_to_retry_holds_no_worker() {
    // One worker. The first task fails and asks to come back in an hour; meanwhile the single
    // worker runs other work, and the waiting task counts in `waiting_retry`, not `busy`.
    watchdog("no worker held", || {
        let pool = AsyncPool::new(1, |n: u32| if n == 0 { Err("later") } else { Ok(n) }).unwrap();
        let policy = Retry::attempts(2).when(|_| Decision::RetryAfter(HOUR));
        let waiting = pool.task(0).retry(policy).add().unwrap();
        eventually("the first attempt failed", || {
            pool.stats().waiting_retry == 1
        });
        for n in 1..=20 {
            assert_eq!(pool.add_task(n).unwrap().recv(), Ok(Ok(n)));
        }
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.queued, stats.waiting_retry), (0, 0, 1));
        assert_eq!(waiting.attempts(), 1);
        // Cancelled while it waits: it ends at once, without its input.
        assert!(waiting.cancel());
        let done = waiting.recv();
        assert_eq!(
            done.result.unwrap_err().error,
            Failed::Task(TaskError::Cancelled)
        );
        assert_eq!(pool.stats().waiting_retry, 0);
    });
}

#[test]
fn cancel_all_and_shutdown_now_hand_back_inputs_waiting_to_retry() {
    watchdog("inputs back", || {
        let pool = AsyncPool::new(2, |s: String| -> Result<(), String> { Err(s) }).unwrap();
        let later = || Retry::attempts(2).when(|_| Decision::RetryAfter(HOUR));
        let (mailbox, endings) = unbounded::<Retried<String, (), String>>();
        for s in ["a", "b", "c"] {
            pool.task(s.to_string())
                .retry(later())
                .add_to(&mailbox)
                .unwrap();
        }
        // Counted in `waiting_retry` only once in the timer, where `cancel_all` looks.
        eventually("all three wait", || pool.stats().waiting_retry == 3);
        let back = pool.cancel_all();
        if back != ["a", "b", "c"] {
            // What it missed would wait an hour to retry, and the pool's drop with it: stop it
            // first, so that this fails at once rather than at the watchdog.
            let missed = pool.shutdown_now();
            panic!("cancel_all handed back {back:?}; shutdown_now then {missed:?}");
        }
        for _ in 0..3 {
            let done = endings.recv().unwrap();
            assert_eq!(done.attempts, 1);
            assert_eq!(
                done.result.unwrap_err().error,
                Failed::Task(TaskError::Cancelled)
            );
        }
        let task = pool.task("d".to_string()).retry(later()).add().unwrap();
        eventually("d waits", || pool.stats().waiting_retry == 1);
        assert_eq!(pool.shutdown_now(), ["d"]);
        assert!(task.recv().result.is_err());
        let stats = pool.stats();
        assert_eq!((stats.cancelled, stats.waiting_retry), (4, 0));
    });
}

#[test]
fn inputs_come_back_with_timed_out_and_panicked_failures() {
    watchdog("keep_input", || {
        let (key, gate) = gate();
        let pool = AsyncPool::new(2, move |n: u32| -> Result<u32, ()> {
            match n {
                0 => panic!("boom"),
                1 => {
                    gate.wait();
                    Ok(1)
                }
                n => Ok(n),
            }
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let panicked = pool.task(0).keep_input().add().unwrap().recv();
        let failure = panicked.result.unwrap_err();
        assert_eq!(failure.input, Some(0));
        assert_eq!(
            failure.error,
            Failed::Task(TaskError::Panicked("boom".into()))
        );
        let timed_out = pool
            .task(1)
            .timeout(Duration::from_millis(30))
            .keep_input()
            .add()
            .unwrap()
            .recv();
        let failure = timed_out.result.unwrap_err();
        assert_eq!(failure.input, Some(1));
        assert_eq!(failure.error, Failed::Task(TaskError::TimedOut));
        assert_eq!(timed_out.attempts, 1);
        // Through a mailbox too.
        let (mailbox, endings) = unbounded();
        let id = pool.task(0).keep_input().add_to(&mailbox).unwrap();
        let done: Retried<u32, u32, ()> = endings.recv().unwrap();
        assert_eq!((done.id, done.result.unwrap_err().input), (id, Some(0)));
        // And a success drops the copy.
        assert_eq!(
            pool.task(5).keep_input().add().unwrap().recv().result,
            Ok(5)
        );
        drop(key);
    });
}

#[test]
fn a_timed_out_attempt_is_retried_without_waiting_for_the_hung_one() {
    watchdog("timeout retried", || {
        let (key, gate) = gate();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |n: u32| -> Result<u32, ()> {
            if c.fetch_add(1, SeqCst) == 0 {
                gate.wait(); // hangs until the test ends
            }
            Ok(n)
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let done = pool
            .task(9)
            .timeout(Duration::from_millis(30))
            .retry(quick(3))
            .add()
            .unwrap()
            .recv();
        assert_eq!((done.result, done.attempts), (Ok(9), 2));
        let stats = pool.stats();
        assert_eq!((stats.retried, stats.timed_out, stats.completed), (1, 0, 1));
        drop(key);
    });
}

#[test]
fn retries_keep_to_their_key_even_past_hung_attempts() {
    // max_per_key(1): attempts of one key never overlap — not even with a timed-out attempt
    // whose callback still runs (it holds the key until it returns).
    watchdog("keyed retries", || {
        let now: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let peak = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        let (n2, p2, c2) = (now.clone(), peak.clone(), calls.clone());
        let pool = AsyncPool::builder()
            .max_workers(8)
            .max_per_key(1)
            .build(move |(key, i): (u32, u32)| -> Result<u32, u32> {
                let at = {
                    let mut now = n2.lock().unwrap();
                    let at = now.entry(key).or_default();
                    *at += 1;
                    p2.fetch_max(*at, SeqCst);
                    *at
                };
                let call = c2.fetch_add(1, SeqCst);
                if call % 7 == 3 {
                    std::thread::sleep(Duration::from_millis(40)); // past its deadline
                }
                n2.lock().unwrap().entry(key).and_modify(|at| *at -= 1);
                let _ = at;
                if call % 3 == 0 {
                    Err(i)
                } else {
                    Ok(i)
                }
            })
            .unwrap();
        let (mailbox, endings) = unbounded();
        for i in 0..60 {
            pool.task((i % 3, i))
                .key(i % 3)
                .timeout(Duration::from_millis(20))
                .retry(quick(10))
                .add_to(&mailbox)
                .unwrap();
        }
        let mut ok = 0;
        for _ in 0..60 {
            let done: Retried<(u32, u32), u32, u32> = endings.recv().unwrap();
            if done.result.is_ok() {
                ok += 1;
            }
        }
        assert_eq!(peak.load(SeqCst), 1, "two attempts of one key overlapped");
        assert!(ok > 0);
        pool.join();
        let stats = pool.stats();
        assert_eq!(stats.waiting_retry + stats.waiting_on_key + stats.queued, 0);
    });
}

#[test]
fn join_and_graceful_shutdown_wait_for_the_last_attempt() {
    watchdog("join waits", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |_: u32| -> Result<(), ()> {
            if c.fetch_add(1, SeqCst) % 4 == 3 {
                Ok(())
            } else {
                Err(())
            }
        })
        .unwrap();
        let policy =
            Retry::attempts(4).backoff(Duration::from_millis(5), Duration::from_millis(20));
        let (mailbox, endings) = unbounded();
        pool.task(1).retry(policy.clone()).add_to(&mailbox).unwrap();
        pool.join();
        let done: Retried<u32, (), ()> =
            endings.try_recv().expect("join returned before the ending");
        assert_eq!(done.attempts, 4);
        pool.task(2).retry(policy).add_to(&mailbox).unwrap();
        pool.shutdown();
        assert_eq!(endings.try_recv().unwrap().attempts, 4);
        assert_eq!(calls.load(SeqCst), 8);
    });
}

#[test]
fn endings_into_a_full_bounded_mailbox_all_arrive() {
    // The timer delivers timed-out endings; into a full mailbox they go to the courier. Every
    // hung attempt's thread is abandoned and replaced (`max_abandoned`), so the pool goes on.
    watchdog("bounded mailbox", || {
        let (key, gate) = gate();
        let pool = AsyncPool::builder()
            .max_workers(4)
            .max_abandoned(64)
            .build(move |n: u32| -> Result<u32, ()> {
                if n % 2 == 0 {
                    gate.wait();
                }
                Err(())
            })
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let (mailbox, endings) = bounded(1);
        for n in 0..40 {
            pool.task(n)
                .timeout(Duration::from_millis(10))
                .retry(quick(2))
                .add_to(&mailbox)
                .unwrap();
        }
        let mut inputs: Vec<u32> = (0..40)
            .map(|_| {
                let done: Retried<u32, u32, ()> = endings.recv().unwrap();
                assert_eq!(done.attempts, 2);
                done.result.unwrap_err().input.unwrap()
            })
            .collect();
        inputs.sort();
        assert_eq!(inputs, (0..40).collect::<Vec<_>>());
        drop(key);
    });
}

#[test]
fn the_policy_sees_each_failure_and_its_number() {
    watchdog("policy", || {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (key, gate) = gate();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |_: u32| -> Result<(), &'static str> {
            match c.fetch_add(1, SeqCst) {
                0 => Err("first"),
                1 => panic!("second"),
                2 => {
                    gate.wait();
                    Ok(())
                }
                _ => Err("fourth"),
            }
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let policy = Retry::<&'static str>::attempts(10)
            .backoff(MS, MS)
            .when(move |attempt| {
                let error = match attempt.error() {
                    Failed::Callback(e) => e.to_string(),
                    Failed::Task(e) => e.to_string(),
                };
                let half = Duration::from_micros(500);
                assert!(attempt.backoff() >= half && attempt.backoff() <= MS);
                s.lock().unwrap().push((attempt.number(), error));
                if attempt.number() == 4 {
                    Decision::GiveUp
                } else {
                    Decision::Retry
                }
            });
        // The deadline only has to end the third attempt, which hangs; it is long enough that
        // the second one's panic (printed by the panic hook, slow on a loaded machine) never
        // meets it first.
        let done = pool
            .task(0)
            .timeout(Duration::from_secs(1))
            .retry(policy)
            .add()
            .unwrap()
            .recv();
        assert_eq!(done.attempts, 4);
        assert_eq!(done.result.unwrap_err().error, Failed::Callback("fourth"));
        let seen = seen.lock().unwrap();
        let numbers: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
        assert_eq!(seen[0].1, "first");
        assert_eq!(seen[1].1, "task panicked: second");
        assert_eq!(seen[2].1, "task timed out");
        drop(key);
    });
}

#[test]
fn a_refused_add_hands_the_input_back() {
    let pool = AsyncPool::new(1, |n: u32| -> Result<u32, ()> { Ok(n) }).unwrap();
    pool.shutdown();
    let refused = pool.task(3).retry(quick(2)).add().unwrap_err();
    assert_eq!(refused.into_inner(), 3);
}

#[test]
fn cancel_by_id_during_the_back_off_hands_the_input_back_in_the_ending() {
    watchdog("cancel by id", || {
        let pool = AsyncPool::new(1, |s: String| -> Result<(), String> { Err(s) }).unwrap();
        let (mailbox, endings) = unbounded::<Retried<String, (), String>>();
        let later = Retry::attempts(3).when(|_| Decision::RetryAfter(HOUR));
        let id = pool
            .task("page".to_string())
            .retry(later)
            .add_to(&mailbox)
            .unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        assert!(pool.cancel(id));
        let done = endings.recv().unwrap();
        assert_eq!((done.id, done.attempts), (id, 1));
        let failure = done.result.unwrap_err();
        assert_eq!(failure.error, Failed::Task(TaskError::Cancelled));
        assert_eq!(failure.input.as_deref(), Some("page"));
        assert!(!pool.cancel(id), "it ended once");
        let stats = pool.stats();
        assert_eq!(
            (stats.cancelled, stats.waiting_retry, stats.retried),
            (1, 0, 1)
        );
    });
}

#[test]
fn a_shutdown_waits_for_a_retry_whose_timed_out_attempt_held_the_last_worker() {
    // One worker; the first attempt hangs past its deadline while a graceful shutdown is already
    // under way. Its thread is abandoned, and — although this is the last task — a replacement
    // must start, since the task will run again.
    watchdog("retry after the last worker was abandoned", || {
        let (key, gate) = gate();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::builder()
            .max_workers(1)
            .max_abandoned(1)
            .build(move |n: u32| -> Result<u32, ()> {
                if c.fetch_add(1, SeqCst) == 0 {
                    gate.wait();
                }
                Ok(n)
            })
            .unwrap();
        let mut key = key;
        let task = pool
            .task(7)
            .timeout(Duration::from_millis(200))
            .retry(quick(2))
            .add()
            .unwrap();
        eventually("the first attempt runs", || pool.stats().busy == 1);
        let closer = pool.clone();
        let shutdown = std::thread::spawn(move || closer.shutdown());
        eventually("the pool is closing", || pool.is_shut_down());
        let done = task.recv();
        assert_eq!((done.attempts, done.result), (2, Ok(7)));
        shutdown.join().unwrap();
        key.open();
    });
}
