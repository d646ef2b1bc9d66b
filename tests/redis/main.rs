//! The `redis` feature's tests, one binary: feeding pools from a Redis Stream (`stream`), and
//! what production does to a Redis-fed fleet — restarts, pauses, a frozen link (`outage`).
//!
//! Needs `redis-server` on the PATH: the tests start their own servers on free loopback
//! ports; those of `stream` use `ASYNC_POOL_REDIS_URL` instead when it is set (as CI does).
#![cfg(feature = "redis")]

mod outage;
mod stream;
mod support;
