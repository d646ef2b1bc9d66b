//! The integration tests' shared helpers (`tests/common/mod.rs`), for `model.rs`.

#[path = "../common/mod.rs"]
mod shared;

pub use shared::*;
