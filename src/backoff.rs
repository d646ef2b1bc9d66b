//! Capped exponential back-off with jitter: the waits between a task's retries
//! ([`Retry`](crate::Retry)) and, with the `redis` feature, between a Redis entry's deliveries
//! and between reconnects.
//!
//! Attempt `n` (from 1) waits `d = min(cap, first × 2ⁿ⁻¹)`; with jitter, a time drawn in
//! `[d/2, d]`, so that work that failed together does not come back together.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) cap: Duration,
    pub(crate) jitter: bool,
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based).
    pub(crate) fn after(&self, attempt: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31) as u32;
        let full = self
            .first
            .checked_mul(1 << doublings)
            .map_or(self.cap, |wait| wait.min(self.cap));
        if self.jitter {
            let half = full / 2;
            half + half.mul_f64(random_unit())
        } else {
            full
        }
    }
}

/// A number in `[0, 1)`: xorshift, seeded per thread from std's random hasher keys.
fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn waits_double_from_the_first_up_to_the_cap_with_jitter_in_the_upper_half() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            jitter: true,
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let wait = backoff.after(attempt);
                assert!(
                    wait >= full / 2 && wait <= full,
                    "attempt {attempt}: {wait:?} for {full:?}"
                );
            }
        }
        let spread: HashSet<_> = (0..50).map(|_| backoff.after(3)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    #[test]
    fn without_jitter_the_wait_is_exact_and_a_huge_first_wait_is_capped() {
        let exact = Backoff {
            first: Duration::from_millis(10),
            cap: Duration::from_millis(35),
            jitter: false,
        };
        let waits: Vec<_> = (1..=4).map(|n| exact.after(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 35, 35]);
        let huge = Backoff {
            first: Duration::MAX,
            cap: Duration::from_secs(5),
            jitter: false,
        };
        assert_eq!(huge.after(u64::MAX), Duration::from_secs(5));
    }
}
