//! Feeding pools on many machines from one durable Redis Stream (feature `redis`).
//!
//! Redis Streams with consumer groups already give durable entries, a pending list per
//! consumer, acknowledgements and claiming of a dead consumer's work; this module feeds an
//! [`AsyncPool`](crate::AsyncPool) from one correctly:
//!
//! - [`Producer`] adds payloads (`XADD`), one at a time or in pipelined batches, optionally
//!   refusing past a [capacity](Producer::capacity);
//! - [`StreamWorker`] reads entries for one consumer of a group (`XREADGROUP`), hands each to
//!   the pool through a mailbox, holds at most `in_flight` entries, and settles each finished
//!   entry in one atomic, *fenced* step: its output to the result stream, its
//!   acknowledgement (`XACK`), its deletion from the job stream — only if this consumer still
//!   holds the entry;
//! - every entry a worker holds — waiting in the pool's queue, running, or waiting for a
//!   retry — is kept on a **lease**: every `claim_after / 3` the worker re-claims its entries
//!   to itself (`XCLAIM … JUSTID`, which leaves the delivery count alone), so only a worker
//!   that stopped talking to Redis for `claim_after` loses its entries to the others'
//!   `XAUTOCLAIM`, whatever the length of its tasks;
//! - a failed entry is retried by the same worker after an exponential
//!   [backoff](StreamWorkerBuilder::retry_backoff) with jitter; after `max_deliveries`, on a
//!   [permanent](Failure::permanent) failure, or when malformed (no `payload` field), it goes
//!   to the dead-letter stream with every field it had and the reason;
//! - the connection has connect and response timeouts, and is re-established with a capped
//!   exponential backoff: Redis restarting, a frozen link or `CLIENT PAUSE` cost time, not
//!   the worker. Entries held survive; results that finish meanwhile are settled afterwards;
//! - [`StreamWorkerHandle::stop`] (Ctrl-C in the example) stops reading, hands entries not
//!   yet started back to the group for immediate claiming, waits for the running ones (at
//!   most [`stop_timeout`](StreamWorkerBuilder::stop_timeout)), settles them, and returns —
//!   during an outage too.
//!
//! Targets **Redis 7.0 or newer** (`XAUTOCLAIM`'s deleted-ids reply, `XINFO GROUPS`' `lag`,
//! and Lua scripts calling the stream commands).
//!
//! # Guarantees, and what is not guaranteed
//!
//! Delivery is **at least once**, and the *result* of an entry is written **exactly once**:
//! a result is written and the entry acknowledged by one script that first checks this
//! consumer still holds the entry, so of two consumers that ran the same entry, only the
//! holder writes. A callback runs more than once for one entry only when a worker lost it
//! — killed, or cut off from Redis for `claim_after` — while holding it. Callbacks with side
//! effects beyond their output must be idempotent: store pages under a key derived from the
//! URL (or the entry id) with an overwrite (`SET`, an upsert), and key side effects
//! (`SET NX`).
//!
//! Not guaranteed: order (entries run concurrently, across machines); that a callback runs
//! only once; anything Redis itself loses (without AOF `appendfsync always`, a crashed Redis
//! can forget the last second of adds and acknowledgements — the entries then run again,
//! still with one result each).
//!
//! # Payloads
//!
//! An entry's payload is bytes, in the field `payload`. Serialize with the format you already
//! use (JSON, bincode, a URL as text): a typed `serde` layer would add a format dependency for
//! what is one line at each end.
//!
//! ```no_run
//! use slowpool::redis::{Entry, Failure, Producer, StreamWorker};
//! use slowpool::AsyncPool;
//! use std::time::Duration;
//!
//! let mut producer = Producer::connect("redis://127.0.0.1/", "urls")?;
//! producer.push(b"https://example.com/")?;
//!
//! let pool = AsyncPool::new(16, |entry: Entry| -> Result<Vec<u8>, Failure> {
//!     let url = entry.payload_str()?; // not UTF-8: dead-lettered at once
//!     Ok(url.len().to_string().into_bytes()) // fetch, parse, store ...
//! })?;
//! let mut worker = StreamWorker::builder("redis://127.0.0.1/", "urls", "crawlers", "machine-1")
//!     .result_stream("urls:results")
//!     .claim_after(Duration::from_secs(30)) // how long a dead worker's entries wait
//!     .stop_timeout(Duration::from_secs(10))
//!     .connect()?;
//! let handle = worker.handle(); // handle.stop() from another thread ends `run`
//! let stats = worker.run(&pool)?;
//! println!("{} acknowledged", stats.acked);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
mod entry;
mod error;
mod link;
mod producer;
mod scripts;
mod stats;
mod worker;

pub use builder::StreamWorkerBuilder;
pub use entry::{Entry, EntryError, Failure};
pub use error::StreamError;
pub use producer::Producer;
pub use stats::{Backlog, StreamStats};
pub use worker::{StreamWorker, StreamWorkerHandle};

/// The field that holds an entry's payload.
const PAYLOAD: &str = "payload";
