//! Temporary root while moving tests (removed when merged into tests/it/main.rs).
#[path = "it/attack.rs"]
mod attack;
#[path = "it/combinations.rs"]
mod combinations;
#[path = "it/hostile.rs"]
mod hostile;
#[path = "it/scheduler.rs"]
mod scheduler;
#[path = "it/support.rs"]
mod support;
