//! Reading endings: the `Task` handle (`recv`, `try_recv`, `recv_timeout`, `attempts`, `tag`),
//! awaiting it from a minimal executor written here (no runtime), flat results for callbacks
//! returning `Result<T, E>`, and `TaskSet`: many tasks, from any pools, taken as they finish.

use std::collections::HashSet;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use crossbeam_channel::{bounded, select, tick, unbounded, RecvTimeoutError, TryRecvError};
use slowpool::{
    AsyncPool, Failed, Flat, Mailbox, Retry, Task, TaskError, TaskId, TaskSet, ThreadPool,
};

use crate::support::{eventually, gate, gated, quick, watchdog, GateKey, PATIENCE};

// ---------------------------------------------------------------------------------------------
// A minimal executor, and what the tests share
// ---------------------------------------------------------------------------------------------

/// Tasks awaited at once by `join_all`.
const MANY: usize = 2_000;

/// A waker that counts its wakes and unparks the thread that made it.
struct Signal {
    woken: AtomicUsize,
    thread: Thread,
}

impl Signal {
    fn new() -> Arc<Signal> {
        Arc::new(Signal {
            woken: AtomicUsize::new(0),
            thread: thread::current(),
        })
    }

    fn woken(&self) -> usize {
        self.woken.load(SeqCst)
    }

    /// Parks until this signal was woken at least `n` times in all.
    fn wait_woken(&self, n: usize) {
        while self.woken() < n {
            thread::park();
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, SeqCst);
        self.thread.unpark();
    }
}

/// Polls `future` once with `signal`'s waker.
fn poll_once<F: Future + Unpin>(future: &mut F, signal: &Arc<Signal>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::clone(signal));
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// The smallest executor: polls on this thread, parks until woken. Returns the output and the
/// number of wakes it received.
fn block_on<F: Future>(future: F) -> (F::Output, usize) {
    let signal = Signal::new();
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return (output, signal.woken()),
            Poll::Pending => thread::park(),
        }
    }
}

/// Awaits every future at once; outputs in the order of `futures`. Polls only those not done.
async fn join_all<F: Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<F>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match Pin::new(future).poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(outputs.iter_mut().map(|o| o.take().unwrap()).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}

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
fn pool_with_gate() -> (GateKey, AsyncPool<u32, Result<u32, Refused>>) {
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

/// A value whose `Drop` counts, then panics (unless already unwinding).
struct Explosive(Arc<AtomicUsize>);

impl Drop for Explosive {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
        if !thread::panicking() {
            panic!("dropped");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Task: reading the one result
// ---------------------------------------------------------------------------------------------

#[test]
fn try_recv_is_empty_then_the_result_then_disconnected() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(1));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let key = key;
    let task = pool.add_task(5).unwrap();
    assert_eq!(task.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(task.try_recv(), Err(TryRecvError::Empty), "asking is free");
    key.pass(1);
    pool.join();
    assert_eq!(task.try_recv(), Ok(Ok(5)));
    assert_eq!(task.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
    // A failed ending is a result like any other: `Ok(Err(..))`, then disconnected.
    let closures = ThreadPool::new(1).unwrap();
    let boom = closures.spawn(|| -> u8 { panic!("boom") }).unwrap();
    closures.join();
    assert_eq!(boom.try_recv(), Ok(Err(TaskError::Panicked("boom".into()))));
    assert_eq!(boom.try_recv(), Err(TryRecvError::Disconnected));
    // After `receiver()`, `try_recv` reads the channel: the same three answers.
    let forwarded = pool.add_task(6).unwrap();
    let _ = forwarded.receiver();
    assert_eq!(forwarded.try_recv(), Err(TryRecvError::Empty));
    key.pass(1);
    pool.join();
    assert_eq!(forwarded.try_recv(), Ok(Ok(6)));
    assert_eq!(forwarded.try_recv(), Err(TryRecvError::Disconnected));
}

#[test]
fn recv_timeout_times_out_then_reads_then_is_disconnected() {
    watchdog("recv_timeout", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let task = pool.add_task(8).unwrap();
        assert_eq!(
            task.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
        assert_eq!(
            task.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout),
            "a zero wait is a try"
        );
        assert!(
            !task.is_finished(),
            "a timed-out read leaves the task running"
        );
        key.pass(1);
        assert_eq!(task.recv_timeout(PATIENCE), Ok(Ok(8)));
        assert_eq!(
            task.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Disconnected)
        );
        // A read through the receiver counts as taken for `recv_timeout` too.
        let task = pool.add_task(9).unwrap();
        key.pass(1);
        assert_eq!(task.receiver().recv(), Ok(Ok(9)));
        assert_eq!(
            task.recv_timeout(PATIENCE),
            Err(RecvTimeoutError::Disconnected),
            "already taken: at once, without waiting out the patience"
        );
        // A huge timeout is a wait without a deadline, not an overflow.
        let task = pool.add_task(10).unwrap();
        key.pass(1);
        assert_eq!(task.recv_timeout(Duration::MAX), Ok(Ok(10)));
    });
}

#[test]
fn tags_ride_on_task_handles_through_every_option() {
    watchdog("tags on handles", || {
        let pool = AsyncPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build(|n: u32| if n % 2 == 0 { Ok(n) } else { Err(n) })
            .unwrap();
        let untagged = pool.add_task(2).unwrap();
        assert_eq!(
            format!("{:?}", untagged.tag()),
            "()",
            "untagged: the unit tag"
        );
        let tagged = pool
            .task(3)
            .key("k")
            .timeout(Duration::from_secs(60))
            .retry(quick(2))
            .tag(vec!["three".to_string()])
            .add()
            .unwrap();
        assert_eq!(tagged.tag(), &["three".to_string()]);
        assert_eq!(tagged.recv(), Ok(Err(3)));
        assert_eq!(tagged.attempts(), 2);
        assert_eq!(
            tagged.tag(),
            &["three".to_string()],
            "the tag stays after the read"
        );
        // The tag is given after the options or before them: the same task.
        let first = pool.task(4).tag(4u8).key("k").try_add().unwrap();
        assert_eq!((*first.tag(), first.recv()), (4, Ok(Ok(4))));
        let closures = ThreadPool::new(1).unwrap();
        let spawned = closures.task(|| 11).tag(("closure", 11)).add().unwrap();
        assert_eq!(spawned.recv(), Ok(11));
        assert_eq!(*spawned.tag(), ("closure", 11));
        assert_eq!(untagged.recv(), Ok(Ok(2)));
    });
}

#[test]
fn attempts_are_zero_before_the_start_and_one_after() {
    watchdog("attempts", || {
        let (key, gate) = gate();
        let (started_tx, started) = unbounded();
        let pool = AsyncPool::new(1, move |n: u32| {
            started_tx.send(n).unwrap();
            gate.wait();
            n
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let running = pool.add_task(1).unwrap();
        let queued = pool.add_task(2).unwrap();
        let cancelled = pool.add_task(3).unwrap();
        assert_eq!(queued.attempts(), 0, "queued: not started");
        assert_eq!(started.recv(), Ok(1));
        assert_eq!(running.attempts(), 1, "counted before the callback starts");
        assert_eq!(queued.attempts(), 0, "still queued");
        assert!(cancelled.cancel());
        assert_eq!(cancelled.recv(), Err(TaskError::Cancelled));
        assert_eq!(cancelled.attempts(), 0, "cancelled before it ever started");
        key.pass(2);
        assert_eq!((running.recv(), running.attempts()), (Ok(1), 1));
        assert_eq!((queued.recv(), queued.attempts()), (Ok(2), 1));
        // A task that timed out or panicked started once too.
        let stuck = pool
            .task(4)
            .timeout(Duration::from_millis(10))
            .add()
            .unwrap();
        assert_eq!(
            (stuck.recv(), stuck.attempts()),
            (Err(TaskError::TimedOut), 1)
        );
        key.pass(1); // the abandoned thread returns
        let closures = ThreadPool::new(1).unwrap();
        let boom = closures.spawn(|| -> u8 { panic!("boom") }).unwrap();
        assert_eq!(boom.recv(), Err(TaskError::Panicked("boom".into())));
        assert_eq!(boom.attempts(), 1);
    });
}

#[test]
fn a_task_seen_running_has_started_once() {
    // The state and the attempts change in one step: a reader never sees a running task that
    // has not started. (When the attempt was counted after the state changed, about 1 read in
    // 60 saw it.) Each callback waits for the reader, so the reader watches every task's start.
    watchdog("attempts while running", || {
        let (go, gone) = crossbeam_channel::unbounded::<()>();
        let pool = AsyncPool::new(1, move |n: u32| {
            gone.recv().unwrap();
            n
        })
        .unwrap();
        for n in 0..1_000u32 {
            let task = pool.add_task(n).unwrap();
            while !task.is_running() {
                // On a loaded machine the worker may be waiting for this very core.
                thread::yield_now();
            }
            assert_eq!(task.attempts(), 1, "task {n} runs, yet has 0 attempts");
            go.send(()).unwrap();
            assert_eq!(task.recv(), Ok(n));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Task: awaiting
// ---------------------------------------------------------------------------------------------

#[test]
fn a_task_is_a_send_unpin_future() {
    fn future<F: Future<Output = Result<u8, TaskError>> + Send + Unpin>() {}
    future::<Task<u8>>();
    future::<Task<u8, String>>();
}

#[test]
fn a_task_polled_before_its_result_is_woken_when_it_arrives() {
    watchdog("await before the result", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(7).unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        assert_eq!(
            poll_once(&mut task, &signal),
            Poll::Pending,
            "polled again: still pending"
        );
        assert_eq!(signal.woken(), 0);
        key.pass(1);
        signal.wait_woken(1);
        assert_eq!(poll_once(&mut task, &signal), Poll::Ready(Ok(7)));
        assert_eq!(signal.woken(), 1, "one delivery, one wake");
    });
}

#[test]
fn a_task_polled_after_its_result_arrived_is_ready_at_once() {
    watchdog("await after the result", || {
        let pool = AsyncPool::new(2, |n: u32| n * 2).unwrap();
        let mut task = pool.add_task(21).unwrap();
        pool.join();
        assert!(task.is_finished());
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Ready(Ok(42)));
        assert_eq!(signal.woken(), 0, "ready without a wake");
    });
}

#[test]
fn block_on_awaits_from_async_code_on_both_faces() {
    watchdog("async fn over both faces", || {
        let pool = AsyncPool::new(2, |s: String| s.len()).unwrap();
        let threads = ThreadPool::new(2).unwrap();
        let (total, _) = block_on(async {
            let a = pool.add_task("four".into()).unwrap().await?;
            let b = threads.spawn(move || a * 10).unwrap().await?;
            Ok::<_, TaskError>(a + b)
        });
        assert_eq!(total, Ok(44));
    });
}

#[test]
fn a_panic_cancel_and_timeout_are_awaited_as_errors() {
    watchdog("failed endings", || {
        let (key, gate) = gate();
        let pool = AsyncPool::new(1, move |n: u32| {
            gate.wait();
            if n == 0 {
                panic!("zero");
            }
            n
        })
        .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;

        // Panicked, polled while it runs.
        let mut panics = pool.add_task(0).unwrap();
        eventually("the panicking task runs", || panics.is_running());
        // Cancelled, polled while it is queued: the cancel wakes the awaiter.
        let mut queued = pool.add_task(1).unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut queued, &signal), Poll::Pending);
        assert!(queued.cancel());
        signal.wait_woken(1);
        assert_eq!(
            poll_once(&mut queued, &signal),
            Poll::Ready(Err(TaskError::Cancelled))
        );

        let panic_signal = Signal::new();
        assert_eq!(poll_once(&mut panics, &panic_signal), Poll::Pending);
        key.pass(1);
        panic_signal.wait_woken(1);
        assert_eq!(
            poll_once(&mut panics, &panic_signal),
            Poll::Ready(Err(TaskError::Panicked("zero".into())))
        );

        // TimedOut: the timer ends it while the callback is stuck on the gate.
        let stuck = pool
            .task(2)
            .timeout(Duration::from_millis(20))
            .add()
            .unwrap();
        let (ended, wakes) = block_on(stuck);
        assert_eq!(ended, Err(TaskError::TimedOut));
        assert!(wakes <= 1, "woken {wakes} times for one ending");
        key.pass(1); // the abandoned thread returns
    });
}

#[test]
fn a_second_await_or_read_finds_the_result_already_received() {
    watchdog("second reads", || {
        let pool = AsyncPool::new(1, |n: u32| n).unwrap();

        let mut task = pool.add_task(1).unwrap();
        assert_eq!(block_on(&mut task).0, Ok(1));
        assert_eq!(block_on(&mut task).0, Err(TaskError::AlreadyReceived));
        assert_eq!(task.recv(), Err(TaskError::AlreadyReceived));
        assert_eq!(task.try_recv(), Err(TryRecvError::Disconnected));

        let task = pool.add_task(2).unwrap();
        assert_eq!(task.recv(), Ok(2));
        assert_eq!(block_on(task).0, Err(TaskError::AlreadyReceived));
    });
}

#[test]
fn a_blocking_read_takes_a_result_an_await_was_waiting_for() {
    watchdog("poll, then recv", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(3).unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        assert_eq!(
            task.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        key.pass(1);
        assert_eq!(task.recv(), Ok(3));
        assert_eq!(
            poll_once(&mut task, &signal),
            Poll::Ready(Err(TaskError::AlreadyReceived))
        );
    });
}

#[test]
fn after_receiver_the_await_reads_the_channel() {
    watchdog("await after receiver()", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;

        // Called before the result: pending, woken when the worker sends into the channel.
        let mut task = pool.add_task(5).unwrap();
        let _ = task.receiver();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        key.pass(1);
        signal.wait_woken(1);
        assert_eq!(poll_once(&mut task, &signal), Poll::Ready(Ok(5)));
        assert!(task.receiver().is_empty());

        // Polled first, `receiver()` afterwards: the registered waker still fires.
        let mut task = pool.add_task(6).unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        let _ = task.receiver();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        key.pass(1);
        signal.wait_woken(1);
        assert_eq!(poll_once(&mut task, &signal), Poll::Ready(Ok(6)));

        // Taken out of the channel by someone else: the await finds it already received.
        let mut task = pool.add_task(7).unwrap();
        let elsewhere = task.receiver().clone();
        key.pass(1);
        assert_eq!(elsewhere.recv(), Ok(Ok(7)));
        let signal = Signal::new();
        assert_eq!(
            poll_once(&mut task, &signal),
            Poll::Ready(Err(TaskError::AlreadyReceived))
        );
    });
}

#[test]
fn dropping_an_awaited_task_releases_its_waker_and_the_task_still_runs() {
    watchdog("drop while awaited", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(1).unwrap();
        let signal = Signal::new();
        assert_eq!(Arc::strong_count(&signal), 1);
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        assert_eq!(Arc::strong_count(&signal), 2, "the slot keeps a waker");
        drop(task);
        assert_eq!(
            Arc::strong_count(&signal),
            1,
            "dropping the task releases it"
        );
        key.pass(1);
        pool.join();
        assert_eq!(pool.stats().completed, 1, "not cancelled: it ran");
        assert_eq!(signal.woken(), 0);

        // The same after `receiver()`: the waker waits in the forwarding state.
        let mut task = pool.add_task(2).unwrap();
        let _ = task.receiver();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        assert_eq!(Arc::strong_count(&signal), 2);
        drop(task);
        assert_eq!(Arc::strong_count(&signal), 1);
        key.pass(1);
        pool.join();
        assert_eq!(pool.stats().completed, 2);
    });
}

#[test]
fn the_delivery_drops_the_waker_after_waking_it() {
    watchdog("waker released on delivery", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(1).unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut task, &signal), Poll::Pending);
        key.pass(1);
        signal.wait_woken(1);
        // The worker drops the waker just after waking it.
        eventually("the slot let go of the waker", || {
            Arc::strong_count(&signal) == 1
        });
        assert_eq!(poll_once(&mut task, &signal), Poll::Ready(Ok(1)));
    });
}

#[test]
fn a_poll_with_another_waker_replaces_the_first() {
    watchdog("re-registering", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(1).unwrap();
        let (first, second) = (Signal::new(), Signal::new());
        assert_eq!(poll_once(&mut task, &first), Poll::Pending);
        assert_eq!(Arc::strong_count(&first), 2);
        assert_eq!(poll_once(&mut task, &second), Poll::Pending);
        assert_eq!(Arc::strong_count(&first), 1, "the first waker was replaced");
        assert_eq!(Arc::strong_count(&second), 2);
        key.pass(1);
        second.wait_woken(1);
        assert_eq!(first.woken(), 0, "only the last waker is woken");
        assert_eq!(poll_once(&mut task, &second), Poll::Ready(Ok(1)));
    });
}

#[test]
fn a_task_moved_to_another_thread_between_polls_wakes_there() {
    watchdog("moved between threads", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut task = pool.add_task(9).unwrap();
        let here = Signal::new();
        assert_eq!(poll_once(&mut task, &here), Poll::Pending);
        let (polled, first_poll) = bounded(1);
        let there = thread::spawn(move || {
            let mut task = task;
            block_on(std::future::poll_fn(move |cx| {
                let poll = Pin::new(&mut task).poll(cx);
                let _ = polled.try_send(());
                poll
            }))
        });
        first_poll.recv().unwrap();
        assert_eq!(
            Arc::strong_count(&here),
            1,
            "the other thread's waker replaced ours"
        );
        key.pass(1);
        let (result, wakes) = there.join().unwrap();
        assert_eq!(result, Ok(9));
        assert_eq!(wakes, 1);
        assert_eq!(here.woken(), 0);
    });
}

#[test]
fn many_tasks_awaited_at_once_each_deliver_once() {
    watchdog("join_all", || {
        let (mut key, gate) = gate();
        let pool = AsyncPool::new(8, move |n: usize| {
            if n % 100 == 0 {
                gate.wait(); // some finish only after the first poll
            }
            n * 3
        })
        .unwrap();
        let tasks: Vec<_> = (0..MANY).map(|n| pool.add_task(n).unwrap()).collect();
        let opener = thread::spawn(move || key.open());
        let (results, wakes) = block_on(join_all(tasks));
        opener.join().unwrap();
        let expected: Vec<_> = (0..MANY).map(|n| Ok(n * 3)).collect();
        assert_eq!(results, expected);
        assert!(wakes <= MANY, "{wakes} wakes for {MANY} tasks");
    });
}

#[test]
fn an_awaited_result_flattens() {
    watchdog("await + flat", || {
        let pool = AsyncPool::new(2, |n: i32| if n < 0 { Err("negative") } else { Ok(n) }).unwrap();
        let (results, _) = block_on(async {
            let ok = pool.add_task(1).unwrap().await.flat();
            let bad = pool.add_task(-1).unwrap().await.flat();
            (ok, bad)
        });
        assert_eq!(results, (Ok(1), Err(Failed::Callback("negative"))));
    });
}

#[test]
fn a_retried_task_is_awaited_like_a_task() {
    // An awaited retried task wakes its executor when the last attempt ends, after back-offs
    // the executor did not poll through; its attempts and tag are on the handle.
    watchdog("await a retried task", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |s: String| -> Result<usize, String> {
            if c.fetch_add(1, SeqCst) < 2 {
                Err(format!("{s} not yet"))
            } else {
                Ok(s.len())
            }
        })
        .unwrap();
        let policy = Retry::attempts(5).backoff(Duration::from_millis(5), Duration::from_millis(5));
        let mut task = pool.task("four".to_string()).retry(policy).add().unwrap();
        let (result, woken) = block_on(&mut task);
        assert_eq!((task.attempts(), result), (3, Ok(Ok(4))));
        assert!(woken >= 1, "the ending woke the executor");
        // Was `.keep_input()`: the input rides along as the tag.
        let mut task = pool
            .task("x".to_string())
            .tag("x".to_string())
            .add()
            .unwrap();
        let (result, _) = block_on(&mut task);
        assert_eq!(result, Ok(Ok(1))); // the fourth call works
        assert_eq!((task.attempts(), task.tag().as_str()), (1, "x"));
    });
}

// ---------------------------------------------------------------------------------------------
// Flat results
// ---------------------------------------------------------------------------------------------

#[test]
fn a_flat_read_gives_the_value_or_one_of_two_failures() {
    watchdog("recv().flat()", || {
        let (key, pool) = pool_with_gate();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        assert_eq!(pool.add_task(8).unwrap().recv().flat(), Ok(4));
        assert_eq!(
            pool.add_task(3).unwrap().recv().flat(),
            Err(Failed::Callback(Refused { cause: Cause }))
        );
        assert_eq!(
            pool.add_task(0).unwrap().recv().flat(),
            Err(Failed::Task(TaskError::Panicked("zero".into())))
        );

        let running = pool.add_task(1).unwrap();
        let queued = pool.add_task(2).unwrap();
        assert!(queued.cancel());
        assert_eq!(
            queued.recv().flat(),
            Err(Failed::Task(TaskError::Cancelled))
        );
        key.pass(1);
        assert_eq!(running.recv().flat(), Ok(1));
        assert_eq!(
            running.recv().flat(),
            Err(Failed::Task(TaskError::AlreadyReceived))
        );
    });
}

#[test]
fn try_and_timed_flat_reads_wait_like_their_plain_forms() {
    watchdog("try_recv / recv_timeout + flat", || {
        let (key, pool) = pool_with_gate();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let task = pool.add_task(1).unwrap();
        assert_eq!(task.try_recv().map(Flat::flat), Err(TryRecvError::Empty));
        assert_eq!(
            task.recv_timeout(Duration::from_millis(5)).map(Flat::flat),
            Err(RecvTimeoutError::Timeout)
        );
        key.pass(1);
        assert_eq!(task.recv_timeout(PATIENCE).map(Flat::flat), Ok(Ok(1)));
        // Was `Some(Err(Failed::Task(AlreadyReceived)))`: a taken result is disconnected.
        assert_eq!(
            task.try_recv().map(Flat::flat),
            Err(TryRecvError::Disconnected)
        );

        let failing = pool.add_task(5).unwrap();
        pool.join();
        assert_eq!(
            failing.try_recv().map(Flat::flat),
            Ok(Err(Failed::Callback(Refused { cause: Cause })))
        );
    });
}

#[test]
fn a_timed_out_task_is_a_task_failure() {
    watchdog("flat TimedOut", || {
        let (key, pool) = pool_with_gate();
        let stuck = pool
            .task(1)
            .timeout(Duration::from_millis(20))
            .add()
            .unwrap();
        assert_eq!(stuck.recv().flat(), Err(Failed::Task(TaskError::TimedOut)));
        key.pass(1); // the abandoned thread returns
    });
}

#[test]
fn mailbox_messages_flatten_with_their_id() {
    watchdog("mailbox flat", || {
        let (_key, pool) = pool_with_gate();
        let (mailbox, results): (Mailbox<Result<u32, Refused>>, _) = unbounded();
        let ids: Vec<TaskId> = [2, 3, 0, 4]
            .into_iter()
            .map(|n| pool.add_task_to(n, &mailbox).unwrap())
            .collect();
        let mut got: Vec<(TaskId, Result<u32, Failed<Refused>>)> = (0..4)
            .map(|_| {
                let done = results.recv().unwrap();
                (done.id, done.result.flat())
            })
            .collect();
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
    watchdog("stream flat", || {
        let pool = AsyncPool::new(3, |n: u32| {
            if n % 3 == 0 {
                Err(format!("{n} divisible by 3"))
            } else {
                Ok(n)
            }
        })
        .unwrap();
        let ordered: Vec<Result<u32, Failed<String>>> = pool
            .stream(1..=4)
            .ordered()
            .map(|done| done.result.flat())
            .collect();
        assert_eq!(
            ordered,
            [
                Ok(1),
                Ok(2),
                Err(Failed::Callback("3 divisible by 3".into())),
                Ok(4)
            ]
        );
        // Unordered: the tag is the input's index.
        let mut unordered: Vec<(usize, Result<u32, Failed<String>>)> = pool
            .stream(1..=4)
            .map(|done| (done.tag, done.result.flat()))
            .collect();
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
    // Was `is_callback()` / `is_task()` / `task_error()`: a `matches!` or a `match` now.
    assert!(matches!(callback, Failed::Callback(_)) && !matches!(callback, Failed::Task(_)));
    let task_error = |failed: &Failed<Refused>| match failed {
        Failed::Task(error) => Some(error.clone()),
        Failed::Callback(_) => None,
    };
    assert_eq!(task_error(&callback), None);

    let task: Failed<Refused> = TaskError::Panicked("boom".into()).into();
    assert_eq!(task.to_string(), "task panicked: boom");
    assert!(task.source().is_none());
    assert_eq!(task_error(&task), Some(TaskError::Panicked("boom".into())));
    // Was `into_callback()`.
    let into_callback = match task {
        Failed::Callback(error) => Some(error),
        Failed::Task(_) => None,
    };
    assert_eq!(into_callback, None);
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
        Ok(task.recv().flat()?)
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

// ---------------------------------------------------------------------------------------------
// TaskSet
// ---------------------------------------------------------------------------------------------

#[test]
fn a_set_takes_tasks_from_both_faces_and_several_pools() {
    watchdog("one set, three pools", || {
        let squares = AsyncPool::new(2, |n: u64| n * n).unwrap();
        let doubles = AsyncPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build(|n: u64| n * 2)
            .unwrap();
        let closures = ThreadPool::new(2).unwrap();
        let mut set = TaskSet::new();
        let mut ids = HashSet::new();
        for n in 0..40u64 {
            let square = squares.task(n).tag(("square", n)).add().unwrap();
            let double = doubles.task(n).key(n % 3).tag(("double", n)).add().unwrap();
            let closure = closures
                .task(move || n + 1)
                .timeout(Duration::from_secs(60))
                .tag(("closure", n))
                .add()
                .unwrap();
            for task in [square, double, closure] {
                ids.insert((task.tag().0, task.id()));
                set.push(task);
            }
        }
        let mut seen = HashSet::new();
        while let Some(done) = set.recv() {
            let (face, n) = done.tag;
            let expected = match face {
                "square" => n * n,
                "double" => n * 2,
                _ => n + 1,
            };
            assert_eq!(
                (done.attempts, done.result),
                (1, Ok(expected)),
                "{face} {n}"
            );
            assert!(
                ids.remove(&(face, done.id)),
                "{face} {n}: its own task's id"
            );
            assert!(seen.insert(done.tag), "{face} {n} came out twice");
        }
        assert_eq!(seen.len(), 120);
        assert!(ids.is_empty() && set.is_empty());
    });
}

#[test]
fn a_task_pushed_after_it_ended_or_was_read_comes_out_once() {
    watchdog("late pushes", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut set = TaskSet::new();
        let mut push = |task: Task<u32, &'static str>| {
            let id = task.id();
            set.push(task);
            let done = set.recv().expect("one pushed, one out");
            assert!(set.is_empty() && set.recv().is_none(), "{}: once", done.tag);
            assert_eq!(done.id, id, "{}", done.tag);
            (done.tag, done.attempts, done.result)
        };
        // Ended, unread: its result.
        key.pass(10);
        let ended = pool.task(1).tag("ended").add().unwrap();
        pool.join();
        assert_eq!(push(ended), ("ended", 1, Ok(1)));
        // Read through the handle: already received.
        let read = pool.task(2).tag("read").add().unwrap();
        assert_eq!(read.recv(), Ok(2));
        assert_eq!(push(read), ("read", 1, Err(TaskError::AlreadyReceived)));
        // Read with try_recv: the same.
        let tried = pool.task(3).tag("tried").add().unwrap();
        pool.join();
        assert_eq!(tried.try_recv(), Ok(Ok(3)));
        assert_eq!(push(tried), ("tried", 1, Err(TaskError::AlreadyReceived)));
        // `receiver()` called, the result forwarded into it but not read: the set takes it.
        let forwarded = pool.task(4).tag("forwarded").add().unwrap();
        let _ = forwarded.receiver();
        pool.join();
        assert_eq!(forwarded.receiver().len(), 1);
        assert_eq!(push(forwarded), ("forwarded", 1, Ok(4)));
        // `receiver()` called and the result read from it: already received.
        let drained = pool.task(5).tag("drained").add().unwrap();
        assert_eq!(drained.receiver().recv(), Ok(Ok(5)));
        assert_eq!(
            push(drained),
            ("drained", 1, Err(TaskError::AlreadyReceived))
        );
        // `receiver()` called before the task ended: the set gets the ending when it comes.
        let (later_key, later_pool) = gated(AsyncPool::builder().max_workers(1));
        let later_key = later_key;
        let pending = later_pool.task(6).tag("pending").add().unwrap();
        let _ = pending.receiver();
        let mut set = TaskSet::new();
        set.push(pending);
        assert!(!set.is_empty());
        later_key.pass(1);
        let done = set.recv().unwrap();
        assert_eq!((done.tag, done.result), ("pending", Ok(6)));
        // Awaited (a waker left in it), then pushed: the ending still comes out of the set.
        let mut awaited = later_pool.task(7).tag("awaited").add().unwrap();
        let signal = Signal::new();
        assert_eq!(poll_once(&mut awaited, &signal), Poll::Pending);
        set.push(awaited);
        later_key.pass(1);
        let done = set.recv().unwrap();
        assert_eq!((done.tag, done.result), ("awaited", Ok(7)));
        assert!(set.is_empty());
    });
}

#[test]
fn is_empty_is_exact_while_tasks_end_as_they_are_pushed() {
    watchdog("is_empty under races", || {
        let pool = AsyncPool::new(4, |n: u32| n).unwrap();
        let closures = ThreadPool::new(2).unwrap();
        let mut set = TaskSet::new();
        for round in 0..1_000u32 {
            // Each task may end before, during or after its push.
            let tasks = (0..round % 4 + 1).map(|i| {
                if i % 2 == 0 {
                    pool.add_task(round).unwrap()
                } else {
                    closures.spawn(move || round).unwrap()
                }
            });
            let mut pushed = 0;
            for task in tasks {
                set.push(task);
                pushed += 1;
                assert!(
                    !set.is_empty(),
                    "round {round}: a pushed task is not taken yet"
                );
            }
            // Take all but one: never empty before the last is taken.
            for _ in 1..pushed {
                let done = if round % 2 == 0 {
                    set.recv().unwrap()
                } else {
                    set.receiver().recv().unwrap()
                };
                assert_eq!(done.result, Ok(round));
                assert!(!set.is_empty(), "round {round}: one is left");
            }
            let last = if round % 3 == 0 {
                set.receiver().recv().unwrap()
            } else {
                set.recv().unwrap()
            };
            assert_eq!(last.result, Ok(round));
            assert!(set.is_empty(), "round {round}: every ending taken");
            assert!(set.recv().is_none(), "round {round}: nothing to wait for");
            assert!(set.receiver().try_recv().is_err());
        }
    });
}

#[test]
fn select_over_a_set_and_a_ticker_wakes_once_per_ending_and_never_spins() {
    watchdog("select! over a set", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(4));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let set = TaskSet::new();
        const ENDINGS: usize = 20;
        for n in 0..ENDINGS as u32 {
            set.push(pool.add_task(n).unwrap());
        }
        let ticker = tick(Duration::from_millis(2));
        let (mut iterations, mut ticks, mut endings) = (0, 0, HashSet::new());
        while !set.is_empty() {
            iterations += 1;
            select! {
                recv(set.receiver()) -> done => {
                    let done = done.unwrap();
                    assert!(endings.insert(done.result.unwrap()), "an ending came twice");
                }
                recv(ticker) -> _ => {
                    ticks += 1;
                    // Let one task end every few ticks.
                    if ticks % 3 == 0 {
                        key.pass(1);
                    }
                }
            }
        }
        assert_eq!(endings.len(), ENDINGS);
        assert!(
            iterations <= ENDINGS + ticks,
            "{iterations} iterations for {ENDINGS} endings and {ticks} ticks: the set spun"
        );
        // An empty set selected beside a ticker: only the ticks wake the loop (a finished
        // task's own receiver, disconnected, would fire every time).
        let (mut iterations, mut ticks) = (0, 0);
        while ticks < 10 {
            iterations += 1;
            select! {
                recv(set.receiver()) -> done => panic!("an empty set yielded {done:?}"),
                recv(ticker) -> _ => ticks += 1,
            }
        }
        assert_eq!(iterations, ticks, "no busy loop on an empty set");
    });
}

#[test]
fn dropping_a_set_with_tasks_outstanding_drops_their_endings_quietly() {
    watchdog("dropping a set", || {
        let (key, gate) = gate();
        let exploded = Arc::new(AtomicUsize::new(0));
        let counter = exploded.clone();
        let pool = AsyncPool::builder()
            .max_workers(2)
            .thread_name("set-drop")
            .build(move |n: u32| {
                if n >= 5 {
                    gate.wait();
                }
                Explosive(counter.clone())
            })
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let tags = Arc::new(AtomicUsize::new(0));
        let set = TaskSet::new();
        // Five end before the set is dropped (their endings wait in it), five after.
        for n in 0..10 {
            set.push(pool.task(n).tag(Explosive(tags.clone())).add().unwrap());
        }
        eventually("the first five endings wait in the set", || {
            set.receiver().len() == 5
        });
        drop(set); // on this thread: the five endings in it are dropped quietly
        assert_eq!((exploded.load(SeqCst), tags.load(SeqCst)), (5, 5));
        key.open();
        pool.join();
        // The five later endings are dropped by the workers that deliver them.
        eventually("every ending dropped", || {
            exploded.load(SeqCst) == 10 && tags.load(SeqCst) == 10
        });
        let stats = pool.stats();
        assert_eq!(
            (stats.completed, stats.workers),
            (10, 2),
            "the workers survived"
        );
    });
}

#[test]
fn a_cancelled_task_in_a_set_comes_out_cancelled_with_its_tag() {
    watchdog("cancelled in a set", || {
        let (key, pool) = gated(AsyncPool::builder().max_workers(1));
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let key = key;
        let mut set = TaskSet::new();
        let running = pool.task(0).tag("running").add().unwrap();
        eventually("the worker is busy", || running.is_running());
        set.push(running);
        // Cancelled through its handle before the push, by id after it, by `cancel_all`.
        let before = pool.task(1).tag("before").add().unwrap();
        assert!(before.cancel());
        set.push(before);
        let by_id = pool.task(2).tag("by id").add().unwrap();
        let id = by_id.id();
        set.push(by_id);
        assert!(pool.cancel(id));
        for (n, tag) in [(3, "all"), (4, "all")] {
            set.push(pool.task(n).tag(tag).add().unwrap());
        }
        assert_eq!(pool.cancel_all(), vec![3, 4]);
        let mut cancelled = Vec::new();
        for _ in 0..4 {
            let done = set.recv().unwrap();
            assert_eq!((done.attempts, done.result), (0, Err(TaskError::Cancelled)));
            cancelled.push(done.tag);
        }
        cancelled.sort();
        assert_eq!(cancelled, ["all", "all", "before", "by id"]);
        assert!(!set.is_empty(), "the running one is left");
        key.pass(1);
        let done = set.recv().unwrap();
        assert_eq!(
            (done.tag, done.attempts, done.result),
            ("running", 1, Ok(0))
        );
        assert!(set.recv().is_none());
    });
}

#[test]
fn a_set_holds_every_kind_of_ending_through_a_shutdown_now() {
    watchdog("endings of every kind in one set", || {
        let (key, gate) = gate();
        let pool = AsyncPool::builder()
            .max_workers(2)
            .build(move |n: u32| -> Result<u32, u32> {
                match n {
                    0 => {
                        gate.wait();
                        Ok(0)
                    }
                    1 => panic!("one"),
                    n if n % 2 == 1 => Err(n),
                    n => Ok(n),
                }
            })
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let mut set = TaskSet::new();
        set.push(pool.task(1).tag("panics").add().unwrap());
        set.push(
            pool.task(3)
                .retry(quick(3))
                .tag("fails thrice")
                .add()
                .unwrap(),
        );
        set.push(
            pool.task(0)
                .timeout(Duration::from_millis(10))
                .tag("times out")
                .add()
                .unwrap(),
        );
        set.push(pool.task(0).tag("blocks").add().unwrap());
        // The first three endings: everything but the blocker.
        let mut ended = Vec::new();
        for _ in 0..3 {
            let done = set.recv().unwrap();
            ended.push((done.tag, done.attempts, done.result));
        }
        ended.sort_by_key(|(tag, _, _)| *tag);
        assert_eq!(
            ended,
            [
                ("fails thrice", 3, Ok(Err(3))),
                ("panics", 1, Err(TaskError::Panicked("one".into()))),
                ("times out", 1, Err(TaskError::TimedOut)),
            ]
        );
        // Both workers are now held (the blocker, and the timed-out thread's replacement took
        // nothing yet): queue more, then shut down now.
        for n in [10, 12] {
            set.push(pool.task(n).tag("queued").add().unwrap());
        }
        let stopper = {
            let pool = pool.clone();
            thread::spawn(move || pool.shutdown_now())
        };
        let mut queued = 0;
        let mut blocked = None;
        while let Some(done) = set.recv() {
            match done.tag {
                "queued" => {
                    // Run by the replacement worker, or cancelled by the shutdown.
                    assert!(
                        matches!(
                            (done.attempts, &done.result),
                            (1, Ok(Ok(_))) | (0, Err(TaskError::Cancelled))
                        ),
                        "{done:?}"
                    );
                    queued += 1;
                }
                "blocks" => blocked = Some(done.result),
                other => panic!("{other} came out twice"),
            }
            if queued == 2 && blocked.is_none() {
                key.open();
            }
        }
        assert_eq!((queued, blocked), (2, Some(Ok(Ok(0)))));
        stopper.join().unwrap();
    });
}

#[test]
fn a_set_of_ten_thousand_tasks_comes_out_complete() {
    watchdog("10,000 tasks in one set", || {
        const TASKS: u32 = 10_000;
        let pool = AsyncPool::new(8, |n: u32| n ^ 0x5555).unwrap();
        let closures = ThreadPool::new(2).unwrap();
        let mut set = TaskSet::new();
        for n in 0..TASKS {
            let task = if n % 5 == 0 {
                closures.task(move || n ^ 0x5555).tag(n).add().unwrap()
            } else {
                pool.task(n).tag(n).add().unwrap()
            };
            set.push(task);
        }
        let mut seen = vec![false; TASKS as usize];
        let mut taken = 0;
        while let Some(done) = set.recv() {
            assert_eq!(done.result, Ok(done.tag ^ 0x5555));
            assert!(!seen[done.tag as usize], "task {} came out twice", done.tag);
            seen[done.tag as usize] = true;
            taken += 1;
        }
        assert_eq!(taken, TASKS);
        assert!(seen.iter().all(|&s| s), "every task came out");
    });
}

#[test]
fn threads_push_into_one_set_while_its_endings_are_taken() {
    watchdog("concurrent pushes", || {
        const PUSHERS: u32 = 4;
        const EACH: u32 = 500;
        let pool = AsyncPool::new(4, |n: u32| n).unwrap();
        let closures = ThreadPool::new(2).unwrap();
        let set = Arc::new(TaskSet::new());
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let (set, pool, closures) = (set.clone(), pool.clone(), closures.clone());
                thread::spawn(move || {
                    for i in 0..EACH {
                        let n = p * EACH + i;
                        let task = if i % 2 == 0 {
                            pool.task(n).tag(n).add().unwrap()
                        } else {
                            closures.task(move || n).tag(n).add().unwrap()
                        };
                        set.push(task);
                    }
                })
            })
            .collect();
        // Taken as they come, while the pushers push.
        let mut seen = HashSet::new();
        for _ in 0..PUSHERS * EACH {
            let done = set.receiver().recv().unwrap();
            assert_eq!(done.result, Ok(done.tag));
            assert!(seen.insert(done.tag), "{} came out twice", done.tag);
        }
        for pusher in pushers {
            pusher.join().unwrap();
        }
        assert!(set.is_empty());
        // A task of a pool dropped since: it ran at the pool's shutdown, and comes out.
        let gone = AsyncPool::new(1, |n: u32| n + 1).unwrap();
        let task = gone.task(41).tag(41).add().unwrap();
        drop(gone);
        set.push(task);
        let done = Arc::into_inner(set).unwrap().recv().unwrap();
        assert_eq!((done.tag, done.result), (41, Ok(42)));
    });
}

#[test]
fn a_set_is_empty_and_recv_returns_at_once_before_any_push() {
    let mut set: TaskSet<u32, String> = TaskSet::default();
    assert!(set.is_empty());
    assert!(set.recv().is_none());
    assert!(set.receiver().try_recv().is_err());
    assert!(format!("{set:?}").contains("TaskSet"));
}
