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
//!   the signal stack and its guard page), and the threads together may make glibc's malloc
//!   create up to 8 arenas per CPU of two maps each ([`arena_maps`]), reserved once;
//! - `kernel.threads-max` against the threads of the whole system (`/proc/loadavg`);
//! - `RLIMIT_NPROC` (`/proc/self/limits`, "Max processes"), which does not bind root, against
//!   the same count.
//!
//! A pool refuses to build if its initial threads do not fit ([`headroom`], read fresh). Every
//! later thread start — growth, replacements — takes room from one budget shared by all the
//! pools of the process ([`take`]), re-read when it runs low. A margin ([`MARGIN`]) is kept for
//! the rest of the process. Where `/proc` cannot be read the
//! pool relies on thread starts failing with an error.

use std::fs;
use std::io;

use parking_lot::Mutex;

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
        let free = max.saturating_sub(used + MARGIN * MAPS_PER_THREAD + arena_maps());
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

/// Maps that malloc arenas may still add as threads allocate: glibc makes up to 8 arenas per
/// CPU (on 64-bit), each a heap of two maps (the part in use and its reserved rest). A bound
/// for the whole process, not a cost per thread: 256 maps on 16 CPUs.
pub(crate) fn arena_maps() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    2 * 8 * cpus
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

/// Below this many threads of room, the next thread start reads the limits again.
const REREAD_BELOW: usize = 1024;

/// Room for threads, shared by every pool of the process: the headroom read from `/proc`, less
/// the threads started since (given back as they exit). Read again whenever it runs low, so
/// threads and memory maps the rest of the program added meanwhile are counted too; far from the
/// limits a thread start costs one uncontended lock.
static ROOM: Mutex<Option<Room>> = Mutex::new(None);

struct Room {
    left: usize,
    limit: &'static str,
}

/// Takes room for one more thread, or refuses with an error that names the limit.
pub(crate) fn take() -> io::Result<()> {
    let mut room = ROOM.lock();
    if room.as_ref().map_or(true, |r| r.left < REREAD_BELOW) {
        // Unreadable limits: only the operating system's own refusal applies.
        *room = Some(headroom().map_or(
            Room {
                left: usize::MAX,
                limit: "",
            },
            |h| Room {
                left: h.threads,
                limit: h.limit,
            },
        ));
    }
    let room = room.as_mut().expect("just filled");
    if room.left == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("no room for another thread under {}", room.limit),
        ));
    }
    room.left -= 1;
    Ok(())
}

/// A thread started after `take` has exited, or never started.
pub(crate) fn put_back() {
    if let Some(room) = ROOM.lock().as_mut() {
        room.left = room.left.saturating_add(1);
    }
}
