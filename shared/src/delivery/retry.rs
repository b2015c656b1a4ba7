//! The retry policy: data, not code paths. An explicit schedule (one tier per
//! entry of `RETRY_SCHEDULE`), jitter, a hard cap, and `Retry-After`
//! honoured. Waiting happens in broker-side tier queues, never in a worker.
//!
//! The `backoff` crate only draws the jittered delay; it is unmaintained
//! (RUSTSEC-2025-0012), and this type is the one place that would change to
//! replace it.

use std::time::Duration;

use backoff::{ExponentialBackoff, backoff::Backoff};

use crate::config::RetrySchedule;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait in the tier queue of this delay, then try again. `tier` is the
    /// retry's place in the schedule, 1 for the first retry.
    Retry { delay: Duration, tier: usize },
    /// The schedule is exhausted: the delivery is dead.
    GiveUp,
}

/// Decides retries from the schedule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: RetrySchedule,
    queue_delays: Vec<Duration>,
}

impl RetryPolicy {
    /// A policy over `schedule`.
    pub fn new(schedule: RetrySchedule) -> Self {
        let queue_delays = schedule.queue_delays();
        Self {
            schedule,
            queue_delays,
        }
    }

    /// Most attempts a delivery gets: the first plus one per tier.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.delays().len() as u32 + 1
    }

    /// After `attempts` attempts failed: the tier to wait in, or give up.
    /// A provider's `Retry-After` is honoured by rounding up to a tier.
    pub fn after_failure(&self, attempts: u32, retry_after: Option<Duration>) -> Next {
        let index = attempts.saturating_sub(1) as usize;
        let Some(base) = self.schedule.delays().get(index) else {
            return Next::GiveUp;
        };
        let jittered = jitter(*base);
        let wanted = retry_after.map_or(jittered, |ra| ra.max(jittered));
        Next::Retry {
            delay: self.round_up(wanted),
            tier: index + 1,
        }
    }

    /// The smallest tier queue delay at or above `wanted` (the longest if
    /// none is): how long something must wait without burning an attempt,
    /// e.g. while a circuit is open.
    pub fn round_up(&self, wanted: Duration) -> Duration {
        self.queue_delays
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .or_else(|| self.queue_delays.last().copied())
            .unwrap_or(wanted)
    }
}

/// `base` stretched by a random 0-30%, matching the jitter steps of the
/// tier queues.
fn jitter(base: Duration) -> Duration {
    let steps = RetrySchedule::JITTER_STEPS;
    let (lo, hi) = (steps[0], steps[steps.len() - 1]);
    let mid = (lo + hi) / 2.0;
    let mut b = ExponentialBackoff {
        current_interval: base.mul_f64(mid),
        initial_interval: base.mul_f64(mid),
        randomization_factor: (hi - lo) / 2.0 / mid,
        multiplier: 1.0,
        max_interval: base.mul_f64(hi),
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    };
    // Never below the tier itself: the schedule is a floor.
    b.next_backoff().unwrap_or(base).max(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let p = RetryPolicy::new("10s,1m".parse().unwrap());
        assert_eq!(p.max_attempts(), 3);
        for _ in 0..50 {
            let Next::Retry { delay, tier } = p.after_failure(1, None) else {
                panic!()
            };
            assert_eq!(tier, 1);
            assert!(
                [10_000, 11_000, 12_000, 13_000].contains(&(delay.as_millis() as u64)),
                "{delay:?}"
            );
            let Next::Retry { delay, tier } = p.after_failure(2, None) else {
                panic!()
            };
            assert_eq!(tier, 2);
            assert!(delay >= Duration::from_secs(60) && delay <= Duration::from_secs(78));
        }
        assert_eq!(p.after_failure(3, None), Next::GiveUp);
    }

    #[test]
    fn jitter_spreads_over_the_steps() {
        let p = RetryPolicy::new("10s".parse().unwrap());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            if let Next::Retry { delay, .. } = p.after_failure(1, None) {
                seen.insert(delay.as_millis());
            }
        }
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn retry_after_rounds_up_to_a_tier() {
        let p = RetryPolicy::new("1s,30s".parse().unwrap());
        let Next::Retry { delay, .. } = p.after_failure(1, Some(Duration::from_secs(20))) else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(30));
        // Longer than any tier: the longest.
        let Next::Retry { delay, .. } = p.after_failure(1, Some(Duration::from_secs(3600))) else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(39));
    }
}
