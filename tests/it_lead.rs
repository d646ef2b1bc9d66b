//! Temporary root while moving tests (removed when merged into tests/it/main.rs).
#[path = "/work/scratch/bugs.rs"]
mod bugs;
#[path = "it/stats.rs"]
mod stats;
#[path = "it/support.rs"]
mod support;
