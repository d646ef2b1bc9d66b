//! A pool of blocking OS threads for slow, unpredictable work — scraping or archiving websites
//! from a queue, calling a slow endpoint — with each result delivered as soon as its task ends.
//! No async runtime: plain threads, plain blocking code, and
//! [`crossbeam_channel`](https://docs.rs/crossbeam-channel) to wait on results.
//!
//! Work arrives at any time and most of it waits on the network, so a pool of many mostly-idle
//! workers keeps the network busy; the slowest jobs never hold back the fast ones, because every
//! result is delivered the moment its own task ends. This is the Rust form of the Elixir
//! package `async_pool` (`AsyncPool.start_link(callback: &process/1, max_workers: 3)`,
//! `AsyncPool.add_task(pool, data)`, the callback's return value delivered later as
//! `{ref, value}`).
//!
//! # Three ways to use it
//!
//! **A handle per task.** [`AsyncPool::add_task`](Pool::add_task) returns at once with a
//! [`Task`]; read it when you need it.
//!
//! ```
//! use slowpool::AsyncPool;
//!
//! let pool = AsyncPool::new(3, |url: String| url.len())?; // the callback: fetch, parse, ...
//! let task = pool.add_task("https://example.com/".to_string())?;
//! assert_eq!(task.recv(), Ok(20));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **A mailbox, the Elixir way.** [`AsyncPool::add_task_to`](Pool::add_task_to) sends a
//! [`Done`] — the task's id and result, the original's `{ref, value}` — to a channel you own,
//! in completion order; an event loop `select!`s over it together with its inputs and tickers.
//!
//! ```
//! use slowpool::{AsyncPool, Mailbox};
//! use crossbeam_channel::{select, tick, unbounded};
//! use std::time::Duration;
//!
//! let pool = AsyncPool::new(4, |n: u64| n * n)?;
//! let (mailbox, results): (Mailbox<u64>, _) = unbounded();
//! for n in 1..=10 {
//!     pool.add_task_to(n, &mailbox)?;
//! }
//! let ticker = tick(Duration::from_millis(100));
//! let (mut received, mut sum) = (0, 0);
//! while received < 10 {
//!     select! {
//!         recv(results) -> done => {
//!             sum += done?.result?;
//!             received += 1;
//!         }
//!         recv(ticker) -> _ => println!("{received} results so far"),
//!     }
//! }
//! assert_eq!(sum, 385);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Any closure.** [`ThreadPool::spawn`](Pool::spawn) runs a different closure per task, on
//! the same engine.
//!
//! ```
//! use slowpool::ThreadPool;
//!
//! let pool = ThreadPool::new(2)?;
//! let task = pool.spawn(|| 6 * 7)?;
//! assert_eq!(task.recv(), Ok(42));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # One of each thing
//!
//! - **Adding**: `pool.task(input)` starts a [`Submit`]; its options compose — `.key(host)`
//!   (per-key limits and politeness: [`Builder::max_per_key`],
//!   [`Builder::min_interval_per_key`]), `.timeout(d)`, `.retry(policy)` (a [`Retry`], for
//!   callbacks returning `Result<T, E>`), `.tag(t)` — and one of `.add()`, `.try_add()`,
//!   `.add_to(&mailbox)`, `.try_add_to(&mailbox)` ends it. `add_task`, `add_task_to` and
//!   `spawn` are its short forms.
//! - **Endings**: a [`Task`] handle per task (also a [`Future`](std::future::Future), with no
//!   runtime behind it), or a [`Done`] message — id, attempts, tag, result — in a mailbox, a
//!   [`TaskSet`] (many tasks, taken as they finish) or a [`Stream`]. For callbacks returning
//!   `Result<T, E>`, [`Flat::flat`] gives `Result<T, Failed<E>>` instead of nested results.
//!   Retrying changes none of these types.
//! - **Streams**: `pool.stream(inputs)` pulls a (possibly endless) iterator through the pool
//!   in bounded memory, `.ordered()`, `.key(f)`, `.retry(policy)`, `.keep_input()` in any
//!   combination.
//! - **Control**: `cancel`, `cancel_all`, `join`, `stats`, `key_stats`, `busiest_keys`,
//!   `pause_key`, `set_max_workers`, `shutdown`,
//!   `shutdown_now`, `shutdown_timeout` and [`handle`](Pool::handle), the same on both faces:
//!   both are a [`Pool`].
//! - **Building**: [`Builder`]; `build(callback)`, or
//!   [`build_with(init, callback)`](Builder::build_with) for a callback that gets a [`Context`]:
//!   its worker's own state, its task's [`CancelToken`] and a handle to its pool, together.
//!
//! # Guarantees
//!
//! - **Every accepted task ends exactly once**, in one of: `Ok(output)`,
//!   `Err(TaskError::Panicked(message))`, `Err(TaskError::Cancelled)` (it never ran, or will
//!   not run again), or `Err(TaskError::TimedOut)` (it was still running at its deadline).
//!   `shutdown_now` and `cancel_all` also hand back the inputs of the tasks they cancelled.
//!   [`stats`](Pool::stats) count each ending before it is delivered.
//! - **A refused add hands the input back**: [`AddError::ShutDown`] once the pool is shut down,
//!   [`AddError::Full`] from `try_add` on a full bounded queue.
//! - **A panic stays in its task**: the caller gets `Panicked` with the message, the worker
//!   lives on, the pool keeps its size.
//! - **`add_task` never waits for a worker**, only for room in a bounded queue
//!   ([`Builder::queue_capacity`]). Tasks start in the order they were added; results arrive
//!   as tasks finish.
//! - **Shutdown** (`shutdown`, or dropping the last owning clone of the pool) stops accepting work,
//!   runs everything accepted and joins every thread. `shutdown_now` cancels what has not
//!   started. `shutdown_timeout` bounds the wait. Called from inside one of the pool's own
//!   tasks, none of them waits (the task would wait for itself): they return and the workers
//!   finish on their own.
//! - **Dropping a [`Task`] does not cancel it**; a mailbox whose receiver is gone never blocks
//!   or panics a worker.
//!
//! What is **not** promised: a running task cannot be killed — a timeout or `shutdown_timeout`
//! stops *waiting* for it, delivers `TimedOut`, and leaves its thread to finish on its own (a
//! [`CancelToken`] lets a callback that checks stop early). A stack overflow in a callback
//! aborts the process, as anywhere in Rust. Keyed tasks are compared by 64-bit hash.
//!
//! # Threads
//!
//! A fixed pool starts `max_workers` threads at build and keeps them; an elastic pool
//! (`min_workers < max_workers`) starts threads as work arrives and retires them after
//! `keep_alive` idle. `AsyncPool::new` and `ThreadPool::new` build fixed pools; a
//! [`Builder`] whose worker counts are left alone builds an elastic pool of up to 512 threads,
//! none of them started before work arrives (see [`Builder::max_workers`] for why that
//! default). A pool that uses timeouts or per-key intervals starts one timer thread; one that
//! must deliver a cancellation or a timeout into a full bounded mailbox starts one courier
//! thread. Nothing else: no thread per task, key, deadline or blocked delivery.
//!
//! # Features
//!
//! - `redis`: the `redis` module, pools fed from a Redis Stream.
//! - `tracing`: a [`tracing`](https://docs.rs/tracing) span `slowpool.task` per task attempt
//!   (`task_id`, `key` — the key's hash, when set — and `attempt`) at `DEBUG` level, target
//!   `slowpool`, and an event at each ending: `task attempt ended` inside the span when a
//!   callback returns (`outcome`: `completed`, `panicked`, `retrying`, or `late` after a
//!   timeout; `queue_wait_s`, from the add to this attempt's call; `run_time_s`), `task ended`
//!   for a task cancelled or timed out (`task_id`, `outcome`). With no subscriber that wants
//!   them, a task pays one cached level check: no clock read, no span.
//!
//! Idle workers park each on a slot of their own, and an add wakes at most one of them, only
//! when no worker is already looking for work: a wake-up costs the same with 16 workers or
//! 4,096. Thread counts the operating system would refuse are refused first, with
//! [`BuildError::ThreadLimit`] (see [`MAX_WORKERS`]).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]
#![deny(unreachable_pub)]

mod async_pool;
mod backoff;
mod builder;
mod cell;
mod context;
mod delivery;
mod done;
mod engine;
mod error;
mod id;
mod in_flight;
mod key_stats;
mod observe;
mod pool;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod retry;
mod slot;
mod stats;
mod stream;
mod submit;
mod task;
mod task_set;
mod thread_pool;
mod token;
mod work;

pub use crate::builder::Builder;
pub use crate::context::Context;
pub use crate::done::{Done, Failed, Flat, Mailbox, TaskError};
pub use crate::error::{AddError, BuildError, PauseError, MAX_PAUSE, MAX_WORKERS};
pub use crate::id::TaskId;
pub use crate::key_stats::KeyStats;
pub use crate::pool::{AsyncPool, Kind, Pool, ThreadPool};
pub use crate::retry::{Attempt, Retry};
pub use crate::stats::Stats;
pub use crate::stream::Stream;
pub use crate::submit::Submit;
pub use crate::task::Task;
pub use crate::task_set::TaskSet;
pub use crate::token::CancelToken;

/// README.md's code, compiled and run by `cargo test --doc`: a snippet that stops compiling
/// fails the tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
