//! The integration tests: one binary, a module per feature. Helpers live once, in `support`.
//! The Redis back-end (`tests/redis`) and the model-based test (`tests/model`) are targets of
//! their own.

mod support;

mod adding;
mod attack;
mod builder;
mod cancel;
mod combinations;
mod context;
mod handles;
mod hostile;
mod keys;
mod load;
#[cfg(feature = "tracing")]
mod observe;
mod panics;
mod pause;
mod retry;
mod retry_attack;
mod scheduler;
mod shutdown;
mod soak;
mod stats;
mod stream;
mod stream_attack;
mod timeouts;
mod workers;
