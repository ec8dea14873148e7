//! Retry spacing: exponential backoff with full jitter, capped.
//!
//! The n-th consecutive failure waits a uniformly random time in
//! `[0, min(cap, base * 2^n))`. Full jitter (rather than a fixed doubling) keeps
//! a fleet of agents that lost the server at the same moment from coming back in
//! lockstep and knocking it over again. The randomness is passed in, so the
//! schedule itself is pure and tested exactly.

use std::time::Duration;

/// Exponential backoff state; [`reset`](Backoff::reset) after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 1 s doubling up to 5 min.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 seconds is past any cap; stop doubling long before overflow.
        let factor = 1u32 << self.attempt.min(31);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay for a uniform sample `unit` in `[0, 1)`; counts a failure.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay drawn from `rng`; counts a failure.
    pub fn next(&mut self, rng: &mut impl rand::Rng) -> Duration {
        self.next_with(rng.gen::<f64>())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(S(1), S(300));
        let ceilings: Vec<_> = (0..12)
            .map(|_| {
                let c = b.ceiling();
                b.next_with(0.5);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300].map(S)
        );
    }

    #[test]
    fn delay_is_the_sample_times_the_ceiling() {
        let mut b = Backoff::new(S(1), S(300));
        assert_eq!(b.next_with(0.0), S(0));
        assert_eq!(b.next_with(0.5), S(1));
        assert_eq!(b.next_with(0.25), S(1));
        assert_eq!(b.next_with(0.999), Duration::from_secs(8).mul_f64(0.999));
        // Out-of-range samples are clamped rather than trusted.
        assert_eq!(b.next_with(7.0), S(16));
        assert_eq!(b.next_with(-1.0), S(0));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_with(0.5);
        }
        assert_eq!(b.attempt(), 5);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), S(1));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::default();
        for _ in 0..10_000 {
            assert!(b.next_with(0.999_999) <= S(300));
        }
        assert_eq!(b.ceiling(), S(300));
    }

    #[test]
    fn random_delays_stay_within_the_ceiling() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::default();
        for _ in 0..50 {
            let ceiling = b.ceiling();
            let d = b.next(&mut rng);
            assert!(d < ceiling || ceiling.is_zero(), "{d:?} >= {ceiling:?}");
        }
    }
}
