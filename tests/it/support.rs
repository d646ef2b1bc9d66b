//! Helpers shared by the integration tests (and the property test): gates, watchdogs, thread
//! counts, concurrency counters, inputs, and checks of a settled pool. Written once, here.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

/// How long any single wait in a test may take before the test fails instead of hanging CI.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and fails the test (naming `what`) if it does not return within
/// `PATIENCE`: a deadlock fails instead of hanging.
pub fn watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    watchdog_within(what, PATIENCE, f)
}

/// [`watchdog`] with a patience of the caller's choosing.
pub fn watchdog_within<T: Send + 'static>(
    what: &str,
    patience: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(patience) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the closure returned without sending"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: `{what}` did not finish in {patience:?}")
        }
    }
}

/// Runs `f` on a thread; `Some(result)` if it returned within `limit`, `None` if not (the
/// thread is left to finish). For checks that a call *returns* in time (a bounded shutdown).
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Polls `condition` for at most `limit`; whether it came true. For a state that must *not*
/// come (checked over a generous time), or one to wait for without failing.
pub fn comes_true_within(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_micros(500));
    }
    true
}

/// Polls `condition` (yielding the CPU) until it holds; fails the test after `PATIENCE`.
/// For states the pool reaches on its own (a worker retiring); never a substitute for a gate.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::yield_now();
        thread::sleep(Duration::from_micros(200));
    }
}

/// A gate tasks block on until the test opens it, one pass or all at once.
#[derive(Clone)]
pub struct Gate {
    pass: Receiver<()>,
}

pub struct GateKey {
    tx: Option<Sender<()>>,
}

pub fn gate() -> (GateKey, Gate) {
    let (tx, rx) = unbounded();
    (GateKey { tx: Some(tx) }, Gate { pass: rx })
}

impl Gate {
    /// Blocks until the test lets one task through (or opens the gate for good).
    pub fn wait(&self) {
        let _ = self.pass.recv();
    }
}

impl GateKey {
    /// Lets `n` waiting (or future) tasks through.
    pub fn pass(&self, n: usize) {
        if let Some(tx) = &self.tx {
            for _ in 0..n {
                tx.send(()).unwrap();
            }
        }
    }

    /// Lets every task through, now and later.
    pub fn open(&mut self) {
        self.tx = None;
    }
}

impl Drop for GateKey {
    fn drop(&mut self) {
        self.open();
    }
}

/// Names of this process's threads (Linux: /proc/self/task/*/comm).
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let path = entry.ok()?.path().join("comm");
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end().to_string())
    })
    .collect()
}

/// Number of live worker threads of the pool named `prefix`: `{prefix}-{index}` (the pool's
/// `{prefix}-timer` is not a worker).
pub fn threads_named(prefix: &str) -> usize {
    let prefix = format!("{prefix}-");
    thread_names()
        .iter()
        .filter_map(|name| name.strip_prefix(&prefix))
        .filter(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .count()
}

/// Resident memory of this process in bytes (Linux).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

/// Asserts that the pool named `prefix` has no worker thread left. A joined thread can stay
/// listed in /proc for a moment after `pthread_join` returns (the kernel removes its entry
/// after waking the joiner), so this allows it a short grace period.
pub fn assert_threads_gone(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while threads_named(prefix) > 0 {
        assert!(
            Instant::now() < deadline,
            "threads of {prefix} still alive: {:?}",
            thread_names()
        );
        thread::yield_now();
    }
}

/// A pool built from `builder` whose every task blocks on a gate the test holds, then returns
/// its input.
pub fn gated(
    builder: slowpool::Builder<slowpool::AsyncPool<u32, u32>>,
) -> (GateKey, slowpool::AsyncPool<u32, u32>) {
    let (key, gate) = gate();
    let pool = builder
        .build(move |n: u32| {
            gate.wait();
            n
        })
        .unwrap();
    (key, pool)
}

/// A retry policy that retries at once (1 ms, no jitter), up to `n` attempts.
pub fn quick<E>(n: u32) -> slowpool::Retry<E> {
    let ms = Duration::from_millis(1);
    slowpool::Retry::attempts(n).backoff(ms, ms).jitter(false)
}

/// Everything accepted has ended and nothing is left in flight.
pub fn assert_settled(stats: slowpool::Stats) {
    assert_eq!(
        (
            stats.waiting_retry,
            stats.busy,
            stats.queued,
            stats.waiting_on_key
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.submitted,
        stats.completed + stats.panicked + stats.cancelled + stats.timed_out,
        "{stats:?}"
    );
}

/// Per-key and total concurrency, counted inside a callback: `enter` first, `leave` last.
#[derive(Default)]
pub struct Concurrency {
    running: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
    total: AtomicUsize,
    /// Most callbacks running at once.
    pub peak_total: AtomicUsize,
    /// Most callbacks of one key running at once.
    pub peak_per_key: AtomicUsize,
    /// Most keys with a callback running at once.
    pub peak_keys: AtomicUsize,
    /// Callbacks that returned.
    pub ran: AtomicUsize,
}

impl Concurrency {
    pub fn enter(&self, key: u32) {
        let mut running = self.running.lock().unwrap();
        let now = running.entry(key).or_default();
        *now += 1;
        self.peak_per_key.fetch_max(*now, SeqCst);
        let keys = running.values().filter(|n| **n > 0).count();
        self.peak_keys.fetch_max(keys, SeqCst);
        let total = self.total.fetch_add(1, SeqCst) + 1;
        self.peak_total.fetch_max(total, SeqCst);
    }

    pub fn leave(&self, key: u32) {
        *self.running.lock().unwrap().get_mut(&key).unwrap() -= 1;
        self.total.fetch_sub(1, SeqCst);
        self.ran.fetch_add(1, SeqCst);
    }
}

/// A fixed pseudo-random permutation of `items`.
pub fn shuffled<T>(mut items: Vec<T>) -> Vec<T> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
    items
}

/// `n` inputs `(key, i)` sorted by key across `keys` keys (as URL lists sorted by host are).
pub fn sorted_items(n: u32, keys: u32) -> Vec<(u32, u32)> {
    (0..n).map(|i| (i * keys / n, i)).collect()
}

/// A small deterministic generator, so a failure can be replayed.
pub fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// A message's id and result, to compare with `assert_eq!` (`Done` is `non_exhaustive`).
pub fn id_result<O, Tag>(
    done: slowpool::Done<O, Tag>,
) -> (slowpool::TaskId, Result<O, slowpool::TaskError>) {
    (done.id, done.result)
}

/// For a test that measures the whole process (its memory, its maps): `false` in the test
/// run, after running the test again alone in a child process and checking it passed there;
/// `true` in that child, where the caller measures. Tests running beside it in this binary
/// would add to (and free from) what it measures.
pub fn alone_in_a_child_process(name: &str) -> bool {
    if std::env::var_os("SLOWPOOL_TEST_ALONE").is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env("SLOWPOOL_TEST_ALONE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the measuring child failed: {}: {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run {name}: {stdout}"
    );
    false
}

/// The name a test of the calling module runs under in this binary (for a test that re-runs
/// the binary as a child process: `--exact <name>`).
#[macro_export]
macro_rules! test_name {
    ($name:expr) => {{
        let module = module_path!().split_once("::").map_or("", |(_, path)| path);
        format!("{module}::{}", $name)
    }};
}
