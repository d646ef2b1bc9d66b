//! The integration tests' shared helpers (`tests/it/support.rs`), for `model.rs`.

#[path = "../it/support.rs"]
mod shared;

pub use shared::*;
