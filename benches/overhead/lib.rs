//! Nothing here: this package exists for its benchmark, `benches/overhead.rs`
//! (`cargo bench -p overhead`). It is a workspace member of its own so that criterion is
//! compiled only for it.
