//! Retries with back-off, and tags that tell which input ended: what `Submit::retry` and
//! `Submit::tag` promise, alone and with keys, deadlines, cancellation, bounded mailboxes,
//! `join` and shutdown — for an `AsyncPool`'s callback and a `ThreadPool`'s `Clone` closures.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{assert_settled, eventually, gate, quick, watchdog, Concurrency};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, Failed, Flat, Mailbox, Retry, TaskError, ThreadPool};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A policy that retries once more, an hour later: a task that fails waits on the timer for
/// the rest of the test.
fn in_an_hour<E>(attempts: u32) -> Retry<E> {
    Retry::attempts(attempts).when(|_| Some(HOUR))
}

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
        let task = pool.task(4).retry(quick(5)).add().unwrap();
        assert_eq!(task.recv(), Ok(Ok(40)));
        assert_eq!(task.attempts(), 3);
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
fn out_of_attempts_the_last_error_comes_back_with_the_tagged_input() {
    watchdog("give up", || {
        let pool = AsyncPool::new(2, |s: String| -> Result<(), String> {
            Err(format!("no {s}"))
        })
        .unwrap();
        let task = pool
            .task("x".to_string())
            .retry(quick(4))
            .tag("x".to_string())
            .add()
            .unwrap();
        assert_eq!(
            task.recv().flat(),
            Err(Failed::Callback("no x".to_string()))
        );
        assert_eq!(task.attempts(), 4);
        assert_eq!(task.tag(), "x");
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
            Failed::Callback(wait) => Some(*wait),
            Failed::Task(_) => Some(attempt.backoff()),
        });
        let task = pool.task(1).retry(policy).add().unwrap();
        assert_eq!((task.recv(), task.attempts()), (Ok(Ok(())), 2));
        let starts = starts.lock().unwrap();
        assert!(starts[1] - starts[0] >= Duration::from_millis(150));
    });
}

#[test]
fn a_when_function_reads_the_callbacks_error_and_chooses_the_wait_or_gives_up() {
    // `attempt.error()` is a `Failed<&E>`: one dereference reaches inside the error.
    #[derive(Debug, Clone, PartialEq)]
    enum FetchError {
        NotFound,
        Busy { retry_after: Duration },
    }
    watchdog("when reads the error", || {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let s = starts.clone();
        let pool = AsyncPool::new(2, move |page: &'static str| {
            let mut starts = s.lock().unwrap();
            starts.push((page, Instant::now()));
            let tries = starts.iter().filter(|(p, _)| *p == page).count();
            match page {
                "gone" => Err(FetchError::NotFound),
                _ if tries < 3 => Err(FetchError::Busy {
                    retry_after: Duration::from_millis(40),
                }),
                _ => Ok(page.len()),
            }
        })
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let policy = Retry::<FetchError>::attempts(10)
            .backoff(MS, MS)
            .when(move |attempt| {
                log.lock().unwrap().push(attempt.number());
                match attempt.error() {
                    Failed::Callback(FetchError::NotFound) => None,
                    Failed::Callback(FetchError::Busy { retry_after }) => Some(*retry_after),
                    Failed::Task(_) => Some(attempt.backoff()),
                }
            });
        let gone = pool.task("gone").retry(policy.clone()).add().unwrap();
        assert_eq!(
            gone.recv().flat(),
            Err(Failed::Callback(FetchError::NotFound))
        );
        assert_eq!(gone.attempts(), 1, "None gives up at once");
        assert_eq!(*seen.lock().unwrap(), [1]);
        let busy = pool.task("busy").retry(policy).add().unwrap();
        assert_eq!(busy.recv().flat(), Ok(4));
        assert_eq!(busy.attempts(), 3);
        assert_eq!(*seen.lock().unwrap(), [1, 1, 2]);
        let starts = starts.lock().unwrap();
        let busy: Vec<Instant> = starts
            .iter()
            .filter(|(p, _)| *p == "busy")
            .map(|(_, at)| *at)
            .collect();
        for pair in busy.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(40), "{busy:?}");
        }
    });
}

#[test]
fn a_when_function_that_panics_gives_up_with_the_failure_it_was_asked_about() {
    watchdog("when panics", || {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(1, move |n: u32| -> Result<u32, u32> {
            c.fetch_add(1, SeqCst);
            if n == 0 {
                panic!("zero");
            }
            Err(n)
        })
        .unwrap();
        let policy = || {
            Retry::<u32>::attempts(5)
                .backoff(MS, MS)
                .when(|_| panic!("the policy panics"))
        };
        let failed = pool.task(3).retry(policy()).tag("err").add().unwrap();
        assert_eq!(failed.recv(), Ok(Err(3)));
        assert_eq!((failed.attempts(), *failed.tag()), (1, "err"));
        let panicked = pool.task(0).retry(policy()).tag("panic").add().unwrap();
        assert_eq!(
            panicked.recv().flat(),
            Err(Failed::Task(TaskError::Panicked("zero".into())))
        );
        assert_eq!((panicked.attempts(), *panicked.tag()), (1, "panic"));
        assert_eq!(calls.load(SeqCst), 2, "nothing ran again");
        let stats = pool.stats();
        assert_eq!((stats.retried, stats.workers), (0, 1));
        assert_settled(stats);
    });
}

#[test]
fn a_task_waiting_to_retry_holds_no_worker() {
    // One worker. The first task fails and asks to come back in an hour; meanwhile the single
    // worker runs other work, and the waiting task counts in `waiting_retry`, not `busy`.
    watchdog("no worker held", || {
        let pool = AsyncPool::new(1, |n: u32| if n == 0 { Err("later") } else { Ok(n) }).unwrap();
        let waiting = pool.task(0).retry(in_an_hour(2)).tag(0).add().unwrap();
        eventually("the first attempt failed", || {
            pool.stats().waiting_retry == 1
        });
        for n in 1..=20 {
            assert_eq!(pool.add_task(n).unwrap().recv(), Ok(Ok(n)));
        }
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.queued, stats.waiting_retry), (0, 0, 1));
        assert_eq!(waiting.attempts(), 1);
        // Cancelled while it waits: it ends at once, with its tag.
        assert!(waiting.cancel());
        assert_eq!(waiting.recv(), Err(TaskError::Cancelled));
        assert_eq!((waiting.attempts(), *waiting.tag()), (1, 0));
        assert_eq!(pool.stats().waiting_retry, 0);
    });
}

#[test]
fn cancel_all_and_shutdown_now_hand_back_inputs_waiting_to_retry() {
    watchdog("inputs back", || {
        let pool = AsyncPool::new(2, |s: String| -> Result<(), String> { Err(s) }).unwrap();
        let (mailbox, endings): (Mailbox<Result<(), String>, String>, _) = unbounded();
        for s in ["a", "b", "c"] {
            pool.task(s.to_string())
                .retry(in_an_hour(2))
                .tag(s.to_string())
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
        let mut tags = Vec::new();
        for _ in 0..3 {
            let done = endings.recv().unwrap();
            assert_eq!(done.attempts, 1);
            assert_eq!(done.result, Err(TaskError::Cancelled));
            tags.push(done.tag);
        }
        tags.sort();
        assert_eq!(tags, ["a", "b", "c"], "each ending carries its tag");
        let task = pool
            .task("d".to_string())
            .retry(in_an_hour(2))
            .tag("d")
            .add()
            .unwrap();
        eventually("d waits", || pool.stats().waiting_retry == 1);
        assert_eq!(pool.shutdown_now(), ["d"]);
        assert_eq!(task.recv(), Err(TaskError::Cancelled));
        assert_eq!((task.attempts(), *task.tag()), (1, "d"));
        let stats = pool.stats();
        assert_eq!((stats.cancelled, stats.waiting_retry), (4, 0));
    });
}

#[test]
fn tags_come_back_with_timed_out_and_panicked_failures() {
    watchdog("tags with failures", || {
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
        let panicked = pool.task(0).tag(0).add().unwrap();
        assert_eq!(
            panicked.recv().flat(),
            Err(Failed::Task(TaskError::Panicked("boom".into())))
        );
        assert_eq!(*panicked.tag(), 0);
        let timed_out = pool
            .task(1)
            .timeout(Duration::from_millis(30))
            .tag(1)
            .add()
            .unwrap();
        assert_eq!(
            timed_out.recv().flat(),
            Err(Failed::Task(TaskError::TimedOut))
        );
        assert_eq!((*timed_out.tag(), timed_out.attempts()), (1, 1));
        // Through a mailbox too.
        let (mailbox, endings): (Mailbox<Result<u32, ()>, u32>, _) = unbounded();
        let id = pool.task(0).tag(0).add_to(&mailbox).unwrap();
        let done = endings.recv().unwrap();
        assert_eq!((done.id, done.tag, done.attempts), (id, 0, 1));
        assert!(matches!(done.result, Err(TaskError::Panicked(_))));
        // And a success carries it as well.
        let worked = pool.task(5).tag(5).add().unwrap();
        assert_eq!((worked.recv(), *worked.tag()), (Ok(Ok(5)), 5));
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
        let task = pool
            .task(9)
            .timeout(Duration::from_millis(30))
            .retry(quick(3))
            .add()
            .unwrap();
        assert_eq!((task.recv(), task.attempts()), (Ok(Ok(9)), 2));
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
        let counts = Arc::new(Concurrency::default());
        let calls = Arc::new(AtomicU32::new(0));
        let (probe, c2) = (counts.clone(), calls.clone());
        let pool = AsyncPool::builder()
            .max_workers(8)
            .max_per_key(1)
            .build(move |(key, i): (u32, u32)| -> Result<u32, u32> {
                probe.enter(key);
                let call = c2.fetch_add(1, SeqCst);
                if call % 7 == 3 {
                    std::thread::sleep(Duration::from_millis(40)); // past its deadline
                }
                probe.leave(key);
                if call % 3 == 0 {
                    Err(i)
                } else {
                    Ok(i)
                }
            })
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<u32, u32>, u32>, _) = unbounded();
        for i in 0..60 {
            pool.task((i % 3, i))
                .key(i % 3)
                .timeout(Duration::from_millis(20))
                .retry(quick(10))
                .tag(i)
                .add_to(&mailbox)
                .unwrap();
        }
        let mut ok = 0;
        let mut tags = Vec::new();
        for _ in 0..60 {
            let done = endings.recv().unwrap();
            if let Ok(i) = done.result.clone().flat() {
                assert_eq!(i, done.tag);
                ok += 1;
            }
            tags.push(done.tag);
        }
        tags.sort_unstable();
        assert_eq!(tags, (0..60).collect::<Vec<_>>());
        assert_eq!(
            counts.peak_per_key.load(SeqCst),
            1,
            "two attempts of one key overlapped"
        );
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
        let (mailbox, endings): (Mailbox<Result<(), ()>>, _) = unbounded();
        pool.task(1).retry(policy.clone()).add_to(&mailbox).unwrap();
        pool.join();
        let done = endings.try_recv().expect("join returned before the ending");
        assert_eq!((done.attempts, done.result), (4, Ok(Ok(()))));
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
        let (mailbox, endings): (Mailbox<Result<u32, ()>, u32>, _) = bounded(1);
        for n in 0..40 {
            pool.task(n)
                .timeout(Duration::from_millis(10))
                .retry(quick(2))
                .tag(n)
                .add_to(&mailbox)
                .unwrap();
        }
        let mut inputs: Vec<u32> = (0..40)
            .map(|_| {
                let done = endings.recv().unwrap();
                assert_eq!(done.attempts, 2);
                assert!(done.result.clone().flat().is_err(), "{done:?}");
                done.tag
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
                // A panic that skips the panic hook: with `RUST_BACKTRACE` set, the hook's
                // backtrace (taken under a lock every panicking test shares) can outlast the
                // deadline meant for the third attempt.
                1 => std::panic::resume_unwind(Box::new("second")),
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
                    None
                } else {
                    Some(attempt.backoff())
                }
            });
        // The deadline only has to end the third attempt, which hangs; it is long enough that
        // no other attempt meets it, even on a loaded machine.
        let task = pool
            .task(0)
            .timeout(Duration::from_secs(1))
            .retry(policy)
            .add()
            .unwrap();
        assert_eq!(task.recv().flat(), Err(Failed::Callback("fourth")));
        assert_eq!(task.attempts(), 4);
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
    let refused = pool.task(3).retry(quick(2)).tag("three").add().unwrap_err();
    assert_eq!(refused.into_inner(), 3);
}

#[test]
fn cancel_by_id_during_the_back_off_ends_the_task_with_its_tag() {
    watchdog("cancel by id", || {
        let pool = AsyncPool::new(1, |s: String| -> Result<(), String> { Err(s) }).unwrap();
        let (mailbox, endings): (Mailbox<Result<(), String>, String>, _) = unbounded();
        let id = pool
            .task("page".to_string())
            .retry(in_an_hour(3))
            .tag("page".to_string())
            .add_to(&mailbox)
            .unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        assert!(pool.cancel(id));
        let done = endings.recv().unwrap();
        assert_eq!((done.id, done.attempts), (id, 1));
        assert_eq!(done.result, Err(TaskError::Cancelled));
        assert_eq!(done.tag, "page");
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
        assert_eq!((task.recv(), task.attempts()), (Ok(Ok(7)), 2));
        shutdown.join().unwrap();
        key.open();
    });
}

// ---------------------------------------------------------------------------------------------
// Retries on a ThreadPool: a closure that is `Clone` runs again, a copy per attempt.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_clone_closure_is_retried_past_an_error_a_panic_and_a_timeout_with_its_key_and_tag() {
    watchdog("closure retried", || {
        let (key, gate) = gate();
        let pool = ThreadPool::builder()
            .max_workers(2)
            // Room for the fourth attempt beside the hung third one, which holds its key
            // until it returns.
            .max_per_key(2)
            .max_abandoned(4)
            .build()
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let flaky = {
            let calls = calls.clone();
            move || -> Result<&'static str, &'static str> {
                match calls.fetch_add(1, SeqCst) {
                    0 => Err("busy"),
                    // Skips the panic hook (see `the_policy_sees_each_failure_and_its_number`).
                    1 => std::panic::resume_unwind(Box::new("boom")),
                    2 => {
                        gate.wait(); // past its deadline
                        Ok("too late")
                    }
                    _ => Ok("page"),
                }
            }
        };
        let log = seen.clone();
        let policy = Retry::<&'static str>::attempts(5)
            .backoff(MS, MS)
            .when(move |attempt| {
                log.lock().unwrap().push(attempt.error().to_string());
                Some(attempt.backoff())
            });
        let (mailbox, endings): (Mailbox<Result<&str, &str>, &str>, _) = unbounded();
        let id = pool
            .task(flaky)
            .key("a.example")
            // Only the third attempt has to meet it; long enough that no other one does, even on
            // a loaded machine.
            .timeout(Duration::from_secs(1))
            .retry(policy)
            .tag("flaky")
            .add_to(&mailbox)
            .unwrap();
        let done = endings.recv().unwrap();
        assert_eq!(
            (done.id, done.attempts, done.tag, done.result),
            (id, 4, "flaky", Ok(Ok("page")))
        );
        assert_eq!(
            *seen.lock().unwrap(),
            ["busy", "task panicked: boom", "task timed out"]
        );
        let stats = pool.stats();
        assert_eq!((stats.retried, stats.completed), (3, 1));
        drop(key);
    });
}

#[test]
fn a_closure_cancelled_while_it_backs_off_never_runs_again() {
    watchdog("closure cancelled in back-off", || {
        let pool = ThreadPool::new(1).unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let failing = move || -> Result<(), u32> { Err(c.fetch_add(1, SeqCst)) };
        let by_handle = pool
            .task(failing.clone())
            .retry(in_an_hour(3))
            .tag("handle")
            .add()
            .unwrap();
        let (mailbox, endings): (Mailbox<Result<(), u32>, &str>, _) = unbounded();
        let id = pool
            .task(failing)
            .key("k")
            .retry(in_an_hour(3))
            .tag("id")
            .add_to(&mailbox)
            .unwrap();
        eventually("both wait to retry", || pool.stats().waiting_retry == 2);
        assert!(by_handle.cancel());
        assert!(pool.cancel(id));
        assert_eq!(by_handle.recv(), Err(TaskError::Cancelled));
        assert_eq!((by_handle.attempts(), *by_handle.tag()), (1, "handle"));
        let done = endings.recv().unwrap();
        assert_eq!(
            (done.id, done.attempts, done.tag, done.result),
            (id, 1, "id", Err(TaskError::Cancelled))
        );
        assert!(!by_handle.cancel() && !pool.cancel(id), "each ended once");
        pool.join();
        assert_eq!(calls.load(SeqCst), 2, "a cancelled closure ran again");
        let stats = pool.stats();
        assert_eq!((stats.cancelled, stats.retried), (2, 2));
        assert_settled(stats);
    });
}

#[test]
fn shutdown_now_hands_back_the_closure_that_backs_off_unrun() {
    watchdog("closure back from shutdown_now", || {
        let pool = ThreadPool::new(2).unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let failing = move || -> Result<(), &'static str> {
            c.fetch_add(1, SeqCst);
            Err("later")
        };
        let first = pool
            .task(failing.clone())
            .retry(in_an_hour(2))
            .tag(1)
            .add()
            .unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        // `cancel_all` takes it out of the timer and hands it back; the pool stays open.
        let back = pool.cancel_all();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (first.recv(), first.attempts()),
            (Err(TaskError::Cancelled), 1)
        );
        assert_eq!(*first.tag(), 1);
        let second = pool
            .task(failing)
            .retry(in_an_hour(2))
            .tag(2)
            .add()
            .unwrap();
        eventually("it waits to retry", || pool.stats().waiting_retry == 1);
        let mut back2 = pool.shutdown_now();
        assert_eq!(back2.len(), 1);
        assert_eq!(
            (second.recv(), second.attempts()),
            (Err(TaskError::Cancelled), 1)
        );
        assert_eq!(*second.tag(), 2);
        assert_eq!(calls.load(SeqCst), 2, "nothing ran after the cancellations");
        // Each closure handed back is the task's next attempt, unrun: calling it runs it here
        // (its result goes nowhere, its task has ended).
        back.into_iter().for_each(|unrun| unrun());
        back2.pop().unwrap()();
        assert_eq!(calls.load(SeqCst), 4);
        let stats = pool.stats();
        assert_eq!(
            (stats.cancelled, stats.waiting_retry, stats.workers),
            (2, 0, 0)
        );
    });
}
