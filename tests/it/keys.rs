//! Per-key concurrency and politeness: keyed tasks wait on their key, never on a worker — on
//! both faces of the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{eventually, gate, gated, watchdog, Concurrency};
use crossbeam_channel::{bounded, unbounded};
use slowpool::{AsyncPool, Mailbox, TaskError, ThreadPool};

/// Running-count and peak per key, kept by the callback itself.
#[derive(Default)]
struct PerKey {
    running: Mutex<HashMap<String, usize>>,
    peak: Mutex<HashMap<String, usize>>,
}

impl PerKey {
    fn enter(&self, key: &str) {
        let mut running = self.running.lock().unwrap();
        let now = running.entry(key.to_string()).or_default();
        *now += 1;
        let mut peak = self.peak.lock().unwrap();
        let p = peak.entry(key.to_string()).or_default();
        *p = (*p).max(*now);
    }

    fn leave(&self, key: &str) {
        *self.running.lock().unwrap().get_mut(key).unwrap() -= 1;
    }
}

#[test]
fn the_per_key_cap_holds_under_sixteen_producers() {
    let counts = Arc::new(PerKey::default());
    let probe = counts.clone();
    let pool = AsyncPool::builder()
        .max_workers(16)
        .max_per_key(3)
        .build(move |(host, n): (String, u64)| {
            probe.enter(&host);
            std::thread::sleep(Duration::from_micros(n % 300));
            probe.leave(&host);
            n
        })
        .unwrap();
    let producers: Vec<_> = (0..16)
        .map(|p| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let tasks: Vec<_> = (0..200u64)
                    .map(|n| {
                        let host = format!("host-{}", (n + p) % 5);
                        pool.task((host.clone(), n)).key(host).add().unwrap()
                    })
                    .collect();
                tasks.iter().all(|t| t.recv().is_ok())
            })
        })
        .collect();
    for producer in producers {
        assert!(watchdog("producer", move || producer.join().unwrap()));
    }
    let peaks = counts.peak.lock().unwrap();
    assert_eq!(peaks.len(), 5);
    for (host, peak) in peaks.iter() {
        assert!(*peak <= 3, "{host} ran {peak} at once");
    }
    assert_eq!(pool.stats().completed, 3_200);
}

#[test]
fn a_saturated_key_does_not_hold_back_the_other_keys() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(8)
        .max_per_key(2)
        .build(move |host: &'static str| {
            if host == "slow.example" {
                gate.wait();
            }
            host
        })
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let slow: Vec<_> = (0..50)
        .map(|_| pool.task("slow.example").key("slow.example").add().unwrap())
        .collect();
    eventually("two slow tasks running", || pool.stats().busy == 2);
    let stats = pool.stats();
    assert_eq!(
        (stats.waiting_on_key, stats.queued),
        (48, 0),
        "waiting keyed tasks hold no worker"
    );
    // Six workers are free: the other hosts' work runs on them while slow.example is full.
    let fast: Vec<_> = (0..300)
        .map(|n| {
            let host = ["a.example", "b.example", "c.example"][n % 3];
            pool.task(host).key(host).add().unwrap()
        })
        .collect();
    for task in &fast {
        assert!(task.recv().is_ok());
    }
    assert!(slow.iter().filter(|t| t.is_finished()).count() == 0);
    key.open();
    assert!(slow.iter().all(|t| t.recv() == Ok("slow.example")));
}

#[test]
fn a_str_and_a_string_with_the_same_text_are_the_same_key() {
    let (key, gate) = gate();
    let pool = AsyncPool::builder()
        .max_workers(4)
        .max_per_key(1)
        .build(move |_: u32| gate.wait())
        .unwrap();
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let first = pool.task(1).key("host").add().unwrap();
    let second = pool.task(2).key(String::from("host")).add().unwrap();
    eventually("first running", || first.is_running());
    assert_eq!(
        pool.stats().waiting_on_key,
        1,
        "the String key waits behind the &str key"
    );
    assert!(!second.is_running());
    key.open();
    assert!(first.recv().is_ok() && second.recv().is_ok());
}

#[test]
fn starts_of_one_key_are_spaced_by_the_interval_and_other_keys_are_not() {
    let interval = Duration::from_millis(30);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let log = starts.clone();
    let pool = AsyncPool::builder()
        .max_workers(8)
        .min_interval_per_key(interval)
        .build(move |host: &'static str| {
            let now = Instant::now();
            log.lock().unwrap().push((host, now));
        })
        .unwrap();
    let began = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let host = if n % 2 == 0 {
                "polite.example"
            } else {
                "other.example"
            };
            pool.task(host).key(host).add().unwrap()
        })
        .collect();
    for task in &tasks {
        task.recv().unwrap();
    }
    let starts = starts.lock().unwrap();
    for host in ["polite.example", "other.example"] {
        let mut times: Vec<Instant> = starts
            .iter()
            .filter(|(h, _)| *h == host)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(times.len(), 8);
        times.sort();
        // A callback's timestamp comes some time after the pool's start of that task (longer
        // if the worker is descheduled in between), so the gap between two timestamps can be
        // shorter than the gap between the starts. What holds whatever the delays: the first
        // start is after `began`, each next one at least `interval` after the one before, and
        // a timestamp is never earlier than its start — so the k-th is `k` intervals after
        // `began`. Starts that were not spaced would come far sooner than that.
        for (k, at) in times.iter().enumerate() {
            let since = *at - began;
            assert!(
                since >= interval * k as u32,
                "{host}: start {k} only {since:?} after the adds"
            );
        }
    }
    drop(starts);
    drop(pool);

    // Another key's start does not wait for this key's interval. With an interval no test
    // outlasts, this is a matter of order, not of timing: the second start of "polite" stays
    // held back while first starts of other keys run at once.
    let pool = AsyncPool::builder()
        .max_workers(2)
        .min_interval_per_key(Duration::from_secs(3_600))
        .build(|host: &'static str| host)
        .unwrap();
    assert_eq!(
        pool.task("polite.example")
            .key("polite.example")
            .add()
            .unwrap()
            .recv(),
        Ok("polite.example")
    );
    let held = pool
        .task("polite.example")
        .key("polite.example")
        .add()
        .unwrap();
    let others: Vec<_> = ["a.example", "b.example", "c.example", "d.example"]
        .into_iter()
        .map(|host| pool.task(host).key(host).add().unwrap())
        .collect();
    let ran = watchdog("the other keys' tasks", move || {
        others.iter().map(|t| t.recv()).collect::<Vec<_>>()
    });
    assert_eq!(
        ran,
        [
            Ok("a.example"),
            Ok("b.example"),
            Ok("c.example"),
            Ok("d.example")
        ]
    );
    assert_eq!(
        pool.stats().waiting_on_key,
        1,
        "polite's second start waits"
    );
    assert!(!held.is_running() && !held.is_finished());
    assert!(held.cancel());
    assert_eq!(held.recv(), Err(TaskError::Cancelled));
}

#[test]
fn keyed_tasks_take_part_in_cancel_shutdown_now_and_stats() {
    let (key, pool) = gated(AsyncPool::builder().max_workers(2).max_per_key(1));
    // Declared after the pool: a failed assertion opens the gate before the pool's drop
    // waits for its tasks.
    let mut key = key;
    let running = pool.task(0).key("k").add().unwrap();
    eventually("running", || running.is_running());
    let waiting: Vec<_> = (1..6)
        .map(|n| pool.task(n).key("k").add().unwrap())
        .collect();
    let (tx, rx): (Mailbox<u32>, _) = unbounded();
    let mailed = pool.task(6).key("k").add_to(&tx).unwrap();
    assert_eq!(pool.stats().waiting_on_key, 6);
    assert!(waiting[0].cancel());
    assert!(pool.cancel(mailed));
    let done = rx.recv().unwrap();
    assert_eq!(
        (done.id, done.attempts, done.result),
        (mailed, 0, Err(TaskError::Cancelled))
    );
    assert_eq!(pool.stats().waiting_on_key, 4);
    let releaser = {
        let first = waiting[1].receiver().clone();
        std::thread::spawn(move || {
            assert_eq!(first.recv().unwrap(), Err(TaskError::Cancelled));
            key.open();
        })
    };
    assert_eq!(pool.shutdown_now(), vec![2, 3, 4, 5]);
    releaser.join().unwrap();
    assert_eq!(running.recv(), Ok(0));
    let stats = pool.stats();
    assert_eq!(
        (stats.waiting_on_key, stats.cancelled, stats.completed),
        (0, 6, 1)
    );
}

#[test]
fn a_timed_out_task_holds_its_key_until_its_callback_returns() {
    let (release, stuck) = bounded::<()>(0);
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let pool = AsyncPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .build(move |n: u32| {
            if n == 0 {
                let _ = stuck.recv();
            }
            counter.fetch_add(1, Ordering::SeqCst);
            n
        })
        .unwrap();
    // Declared after the pool, dropped before it: a failed assertion cannot leave the pool's
    // shutdown waiting on a task that waits on this.
    let release = release;
    // Only the stuck task has a deadline: the next one never times out, however long a loaded
    // machine leaves its worker descheduled.
    let stuck_task = pool
        .task(0)
        .key("k")
        .timeout(Duration::from_millis(30))
        .add()
        .unwrap();
    let next = pool.task(1).key("k").add().unwrap();
    assert_eq!(stuck_task.recv(), Err(TaskError::TimedOut));
    // The caller was told at the deadline, but the stuck callback still runs: the key stays
    // held, so `max_per_key` bounds what really runs against the host.
    let stats = pool.stats();
    assert_eq!(stats.waiting_on_key, 1, "{stats:?}");
    assert!(!next.is_finished() && !next.is_running());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // The callback returns: its key lets the next task go.
    drop(release);
    assert_eq!(watchdog("the key's next task", move || next.recv()), Ok(1));
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// Keys on a ThreadPool: the same engine, the same promises, for any closure.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_thread_pool_keeps_keyed_closures_to_max_per_key_under_eight_producers() {
    watchdog("keyed closures", || {
        let counts = Arc::new(Concurrency::default());
        let pool = ThreadPool::builder()
            .max_workers(12)
            .max_per_key(2)
            .build()
            .unwrap();
        let producers: Vec<_> = (0..8u32)
            .map(|p| {
                let (pool, counts) = (pool.clone(), counts.clone());
                std::thread::spawn(move || {
                    let tasks: Vec<_> = (0..150u32)
                        .map(|n| {
                            let host = (n + p) % 4;
                            let counts = counts.clone();
                            pool.task(move || {
                                counts.enter(host);
                                std::thread::sleep(Duration::from_micros(u64::from(n % 200)));
                                counts.leave(host);
                                (host, n)
                            })
                            .key(host)
                            .tag((p, n))
                            .add()
                            .unwrap()
                        })
                        .collect();
                    tasks.iter().all(|t| {
                        let (p, n) = *t.tag();
                        t.recv() == Ok(((n + p) % 4, n))
                    })
                })
            })
            .collect();
        for producer in producers {
            assert!(producer.join().unwrap(), "a closure's result went astray");
        }
        assert!(
            counts.peak_per_key.load(Ordering::SeqCst) <= 2,
            "a key ran {} closures at once",
            counts.peak_per_key.load(Ordering::SeqCst)
        );
        assert_eq!(counts.ran.load(Ordering::SeqCst), 1_200);
        assert_eq!(pool.stats().completed, 1_200);
    });
}

#[test]
fn a_saturated_key_of_a_thread_pool_holds_no_worker_and_no_other_key() {
    watchdog("saturated key, closures", || {
        let (key, gate) = gate();
        let pool = ThreadPool::builder()
            .max_workers(4)
            .max_per_key(1)
            .build()
            .unwrap();
        // Declared after the pool: a failed assertion opens the gate before the pool's drop
        // waits for its tasks.
        let mut key = key;
        let slow: Vec<_> = (0..20u32)
            .map(|n| {
                let gate = gate.clone();
                pool.task(move || {
                    gate.wait();
                    n
                })
                .key("slow.example")
                .tag(n)
                .add()
                .unwrap()
            })
            .collect();
        eventually("one slow closure running", || pool.stats().busy == 1);
        let stats = pool.stats();
        assert_eq!((stats.waiting_on_key, stats.queued), (19, 0), "{stats:?}");
        let fast: Vec<_> = (0..200u32)
            .map(|n| pool.task(move || n * 2).key(n % 7).add().unwrap())
            .collect();
        for (n, task) in fast.iter().enumerate() {
            assert_eq!(task.recv(), Ok(n as u32 * 2));
        }
        assert!(slow.iter().all(|t| !t.is_finished()));
        key.open();
        for task in &slow {
            assert_eq!(task.recv(), Ok(*task.tag()));
        }
    });
}

#[test]
fn keyed_closures_waiting_on_their_key_come_back_unrun_from_cancel_all_and_shutdown_now() {
    watchdog("keyed closures back", || {
        let (key, gate) = gate();
        let pool = ThreadPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build()
            .unwrap();
        let mut key = key;
        let ran = Arc::new(Mutex::new(Vec::new()));
        let closure = |n: u32| {
            let (gate, ran) = (gate.clone(), ran.clone());
            move || {
                if n == 0 {
                    gate.wait();
                }
                ran.lock().unwrap().push(n);
                n
            }
        };
        let running = pool.task(closure(0)).key("k").tag(0).add().unwrap();
        eventually("the first closure runs", || running.is_running());
        let (mailbox, endings): (Mailbox<u32, u32>, _) = unbounded();
        let waiting: Vec<_> = (1..4)
            .map(|n| pool.task(closure(n)).key("k").tag(n).add().unwrap())
            .collect();
        let mailed = pool
            .task(closure(4))
            .key("k")
            .tag(4)
            .add_to(&mailbox)
            .unwrap();
        assert_eq!(pool.stats().waiting_on_key, 4);
        // By id, then by handle: each ends Cancelled, with its tag, and never runs.
        assert!(pool.cancel(mailed));
        let done = endings.recv().unwrap();
        assert_eq!(
            (done.id, done.attempts, done.tag, done.result),
            (mailed, 0, 4, Err(TaskError::Cancelled))
        );
        assert!(waiting[0].cancel());
        assert_eq!(waiting[0].recv(), Err(TaskError::Cancelled));
        assert_eq!((*waiting[0].tag(), waiting[0].attempts()), (1, 0));
        // The rest come back unrun, in the order they were added; running one runs it here.
        let back = pool.cancel_all();
        assert_eq!(back.len(), 2);
        for task in &waiting[1..] {
            assert_eq!(task.recv(), Err(TaskError::Cancelled));
        }
        assert!(ran.lock().unwrap().is_empty());
        for unrun in back {
            unrun();
        }
        assert_eq!(*ran.lock().unwrap(), [2, 3]);
        // A new keyed closure waits again; `shutdown_now` hands it back.
        let late = pool.task(closure(5)).key("k").tag(5).add().unwrap();
        let releaser = {
            let late = late.receiver().clone();
            std::thread::spawn(move || {
                assert_eq!(late.recv().unwrap(), Err(TaskError::Cancelled));
                key.open();
            })
        };
        let back = pool.shutdown_now();
        releaser.join().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(*late.tag(), 5);
        assert_eq!(running.recv(), Ok(0));
        back.into_iter().for_each(|unrun| unrun());
        assert_eq!(*ran.lock().unwrap(), [2, 3, 0, 5]);
        let stats = pool.stats();
        assert_eq!(
            (stats.waiting_on_key, stats.cancelled, stats.completed),
            (0, 5, 1)
        );
    });
}

#[test]
fn a_timed_out_keyed_closure_holds_its_key_until_it_returns() {
    watchdog("timed-out closure holds its key", || {
        let (release, stuck) = bounded::<()>(0);
        let pool = ThreadPool::builder()
            .max_workers(2)
            .max_per_key(1)
            .build()
            .unwrap();
        let release = release;
        let returned = Arc::new(AtomicUsize::new(0));
        let r = returned.clone();
        let stuck_task = pool
            .task(move || {
                let _ = stuck.recv();
                r.fetch_add(1, Ordering::SeqCst);
            })
            .key("k")
            .timeout(Duration::from_millis(30))
            .tag("stuck")
            .add()
            .unwrap();
        let r = returned.clone();
        let next = pool
            .task(move || r.fetch_add(1, Ordering::SeqCst))
            .key("k")
            .add()
            .unwrap();
        assert_eq!(stuck_task.recv(), Err(TaskError::TimedOut));
        assert_eq!(*stuck_task.tag(), "stuck");
        let stats = pool.stats();
        assert_eq!(stats.waiting_on_key, 1, "{stats:?}");
        assert!(!next.is_finished() && !next.is_running());
        drop(release);
        // The stuck closure returns first (it held the key), then the next one runs.
        assert_eq!(next.recv(), Ok(1));
        assert_eq!(returned.load(Ordering::SeqCst), 2);
    });
}

/// An input whose copy is slow: a task with a retry policy copies its input for the next
/// attempt before its callback runs, between the worker taking the task and the call.
struct SlowToCopy(u32);

impl Clone for SlowToCopy {
    fn clone(&self) -> Self {
        std::thread::sleep(Duration::from_millis(4));
        SlowToCopy(self.0)
    }
}

#[test]
fn callback_starts_of_one_key_are_at_least_the_interval_apart() {
    // Tasks with a retry policy (a slow copy before the call) alternate with plain ones:
    // stamped when a worker took the task, a plain task's call came up to 4 ms early after a
    // retrying one's. The instants are taken inside the callbacks, where it matters.
    const TASKS: u32 = 40;
    let interval = Duration::from_millis(10);
    let pool = AsyncPool::builder()
        .max_workers(8)
        .min_interval_per_key(interval)
        .max_per_key(4)
        .build(|_: SlowToCopy| Ok::<Instant, ()>(Instant::now()))
        .unwrap();
    let began = Instant::now();
    let starts = watchdog("callback starts", move || {
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                let submit = pool.task(SlowToCopy(n)).key("host");
                let submit = if n % 2 == 0 {
                    submit.retry(slowpool::Retry::attempts(2))
                } else {
                    submit
                };
                submit.add().unwrap()
            })
            .collect();
        let mut starts: Vec<Instant> = tasks
            .into_iter()
            .map(|task| task.recv().unwrap().unwrap())
            .collect();
        starts.sort();
        starts
    });
    // An instant taken inside a callback trails its start by however long the thread waits
    // for a core, so pairs of records prove nothing on a loaded machine. What holds whatever
    // the delays: the k-th call (in time order) comes at least k intervals after the adds.
    // Calls let through early (half of them came up to 4 ms early) pile up and break it.
    for (k, at) in starts.iter().enumerate() {
        let since = *at - began;
        assert!(
            since >= interval * k as u32,
            "call {k} only {since:?} after the adds under a {interval:?} interval"
        );
    }
}
