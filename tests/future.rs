//! Awaiting a `Task`: from a minimal executor written here (no runtime), before and after the
//! result arrives, through every ending, after `receiver()`, and many tasks at once.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use common::{eventually, gate, gated, watchdog};
use crossbeam_channel::bounded;
use slowpool::{AsyncPool, Failed, Flat, Retry, Task, TaskError, ThreadPool};

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
        self.woken.load(Ordering::SeqCst)
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
        self.woken.fetch_add(1, Ordering::SeqCst);
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

#[test]
fn a_task_is_a_send_unpin_future() {
    fn future<F: Future<Output = Result<u8, TaskError>> + Send + Unpin>() {}
    future::<Task<u8>>();
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
            .add_task_with_timeout(2, Duration::from_millis(20))
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
        assert_eq!(task.try_recv(), Some(Err(TaskError::AlreadyReceived)));

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
        assert_eq!(task.recv_timeout(Duration::from_millis(1)), None);
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
    // An awaited RetryTask wakes its executor when the last attempt ends, after back-offs the
    // executor did not poll through.
    watchdog("await a RetryTask", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let pool = AsyncPool::new(2, move |s: String| -> Result<usize, String> {
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(format!("{s} not yet"))
            } else {
                Ok(s.len())
            }
        })
        .unwrap();
        let policy = Retry::attempts(5).backoff(Duration::from_millis(5), Duration::from_millis(5));
        let task = pool.task("four".to_string()).retry(policy).add().unwrap();
        let (done, woken) = block_on(task);
        assert_eq!((done.attempts, done.result), (3, Ok(4)));
        assert!(woken >= 1, "the ending woke the executor");
        let task = pool.task("x".to_string()).keep_input().add().unwrap();
        let (attempts, _) = block_on(async {
            let done = task.await;
            done.attempts
        });
        assert_eq!(attempts, 1); // the fourth call works
    });
}
