//! Reconnect backoff: 1 s, 2 s, 4 s … up to 60 s (for the default base), with
//! jitter so that a fleet does not reconnect in lock-step.
//!
//! The n-th delay is drawn uniformly from `[¾·d, d]` where `d = min(base·2ⁿ, cap)`:
//! never longer than the protocol's schedule, never much shorter.

use std::time::Duration;

/// Exponential backoff with jitter inside the protocol's bounds.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff starting at `base` and never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The nominal (un-jittered) delay of the next attempt.
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: plenty for jitter
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 bits
        let unit = r as f64 / (1u64 << 53) as f64; // [0, 1)
        nominal.mul_f64(0.75 + 0.25 * unit).min(nominal)
    }

    /// Back to the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let nominal = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for _ in 0..200 {
            b.reset();
            for &n in &nominal {
                let d = b.next_delay();
                let n = Duration::from_secs(n);
                assert!(d <= n, "{d:?} > {n:?}");
                assert!(d >= n.mul_f64(0.75), "{d:?} < ¾·{n:?}");
            }
        }
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn jitter_varies() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            b.reset();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "no jitter");
    }

    #[test]
    fn reset_goes_back_to_base() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(6));
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.nominal(), Duration::from_secs(6));
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }
}
