//! Nothing here: this package exists for its test, `model.rs` (`cargo test --test model` at the
//! repository root). It is a workspace member of its own so that proptest is compiled only for
//! it, not for every example of the root package.
