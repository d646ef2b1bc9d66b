//! The operating system's limits on threads, read before threads are started.
//!
//! Some limits make a failed thread start abort the whole process instead of returning an
//! error: with `vm.max_map_count` nearly used up, a new thread gets its stack but not the guard
//! page of its signal stack, and the Rust runtime aborts ("failed to set up alternative stack
//! guard page"). So the pool reads the limits once, when it is built, and never starts more
//! threads than they leave room for:
//!
//! - `vm.max_map_count` (`/proc/sys/vm/max_map_count`) against the process's memory maps
//!   (`/proc/self/maps`): each thread takes [`MAPS_PER_THREAD`] maps (stack, its guard page,
//!   the signal stack and its guard page);
//! - `kernel.threads-max` against the threads of the whole system (`/proc/loadavg`);
//! - `RLIMIT_NPROC` (`/proc/self/limits`, "Max processes"), which does not bind root, against
//!   the same count.
//!
//! A margin ([`MARGIN`]) is kept for the rest of the process. Where `/proc` cannot be read the
//! pool relies on thread starts failing with an error.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Memory maps one more thread costs: its stack and guard page, its signal stack and guard.
pub(crate) const MAPS_PER_THREAD: usize = 4;
/// Threads (and their maps) left to the rest of the process.
pub(crate) const MARGIN: usize = 256;

/// The tightest limit found: its name and how many more threads it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Headroom {
    pub(crate) limit: &'static str,
    pub(crate) threads: usize,
}

/// Reads the limits now. `None` if none could be read.
pub(crate) fn headroom() -> Option<Headroom> {
    let mut tightest: Option<Headroom> = None;
    let mut consider = |limit: &'static str, threads: usize| {
        if tightest.map_or(true, |t| threads < t.threads) {
            tightest = Some(Headroom { limit, threads });
        }
    };
    if let (Some(max), Some(used)) = (
        read_number("/proc/sys/vm/max_map_count"),
        fs::read_to_string("/proc/self/maps")
            .ok()
            .map(|maps| maps.lines().count()),
    ) {
        let free = max.saturating_sub(used + MARGIN * MAPS_PER_THREAD);
        consider("vm.max_map_count", free / MAPS_PER_THREAD);
    }
    let threads_now = fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        // "0.29 0.91 0.52 1/82 30345": the fourth field is running/total threads.
        s.split_whitespace()
            .nth(3)?
            .split('/')
            .nth(1)?
            .parse::<usize>()
            .ok()
    });
    if let Some(now) = threads_now {
        if let Some(max) = read_number("/proc/sys/kernel/threads-max") {
            consider("kernel.threads-max", max.saturating_sub(now + MARGIN));
        }
        if !is_root() {
            if let Some(max) = nproc_limit() {
                consider("RLIMIT_NPROC", max.saturating_sub(now + MARGIN));
            }
        }
    }
    tightest
}

fn read_number(path: &str) -> Option<usize> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// The soft "Max processes" limit; `None` when unlimited or unreadable.
fn nproc_limit() -> Option<usize> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
    line["Max processes".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many more threads the pool may start: the headroom read at build, less the threads
/// started since (given back as they exit).
pub(crate) struct ThreadBudget {
    left: AtomicUsize,
    limit: &'static str,
}

impl ThreadBudget {
    pub(crate) fn new(headroom: Option<Headroom>) -> ThreadBudget {
        match headroom {
            Some(h) => ThreadBudget {
                left: AtomicUsize::new(h.threads),
                limit: h.limit,
            },
            None => ThreadBudget {
                left: AtomicUsize::new(usize::MAX),
                limit: "",
            },
        }
    }

    /// Takes room for one thread, or refuses with an error that names the limit.
    pub(crate) fn take(&self) -> io::Result<()> {
        self.left
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .map(drop)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("no room for another thread under {}", self.limit),
                )
            })
    }

    /// A thread started with `take` has exited (or never started).
    pub(crate) fn put_back(&self) {
        let _ = self
            .left
            .fetch_update(SeqCst, SeqCst, |left| Some(left.saturating_add(1)));
    }
}
