//! Provider budgets: `<CHANNEL>_RATE_PER_SEC` for the whole channel, shared
//! by every replica, and a per-recipient limit.
//!
//! Sharing without a coordination point: each replica reads how many
//! consumers its `high` lane queue has (one per replica) and takes an equal
//! share of the budget, re-reading every few seconds. The trade-off: while
//! replicas come and go the sum can be off for one refresh period, and an
//! idle replica's share is unused; in exchange the hot path makes no network
//! call and a lost coordinator cannot stall delivery (docs/delivery.md).

use std::{
    num::NonZeroU32,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::model::Lane;

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

type Limiter = Arc<DefaultDirectRateLimiter>;

/// The channel budget of this replica.
pub struct Budget {
    total_per_sec: u32,
    replicas: RwLock<(u32, Option<Limiter>)>,
    per_recipient: Option<DefaultKeyedRateLimiter<String>>,
    high_waiting: AtomicUsize,
}

impl Budget {
    /// A budget of `total_per_sec` for the channel (0 = unlimited) and
    /// `per_recipient_per_min` per destination (0 = unlimited).
    pub fn new(total_per_sec: u32, per_recipient_per_min: u32) -> Self {
        let budget = Self {
            total_per_sec,
            replicas: RwLock::new((0, None)),
            per_recipient: NonZeroU32::new(per_recipient_per_min)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            high_waiting: AtomicUsize::new(0),
        };
        budget.set_replicas(1);
        budget
    }

    /// Re-divides the budget among `replicas` replicas.
    pub fn set_replicas(&self, replicas: u32) {
        let replicas = replicas.max(1);
        let mut guard = self.replicas.write().expect("not poisoned");
        if guard.0 == replicas {
            return;
        }
        let share = self.total_per_sec.div_ceil(replicas);
        let limiter = NonZeroU32::new(share).map(|rate| {
            // Burst of a tenth of a second's budget: smooth, but a lone
            // message never waits for a full token period.
            let burst = NonZeroU32::new((share / 10).max(1)).expect("non-zero");
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        *guard = (replicas, limiter);
        metrics::gauge!("herald_worker_budget_share_per_second").set(f64::from(share));
    }

    /// The replica count the budget is divided by.
    pub fn replicas(&self) -> u32 {
        self.replicas.read().expect("not poisoned").0
    }

    /// Waits for a token of the channel budget. `high` goes first: while a
    /// high-lane delivery waits, the other lanes take no token, so a bulk
    /// backlog that saturates the budget never delays a one-time code.
    pub async fn acquire(&self, lane: Lane) {
        let limiter = self.replicas.read().expect("not poisoned").1.clone();
        let Some(limiter) = limiter else {
            return;
        };
        if lane == Lane::High {
            self.high_waiting.fetch_add(1, Ordering::AcqRel);
            limiter.until_ready().await;
            self.high_waiting.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        loop {
            if self.high_waiting.load(Ordering::Acquire) == 0 {
                match limiter.check() {
                    Ok(()) => return,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Whether `destination` may get another message now; if not, how long
    /// until it may.
    pub fn recipient(&self, destination: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.per_recipient else {
            return Ok(());
        };
        limiter
            .check_key(&destination.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets idle recipients (run periodically).
    pub fn prune(&self) {
        if let Some(limiter) = &self.per_recipient {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_to_the_share() {
        let b = Budget::new(200, 0);
        b.set_replicas(2);
        let started = std::time::Instant::now();
        for _ in 0..60 {
            b.acquire(Lane::Bulk).await;
        }
        // 100/s with a burst of 10: 60 tokens take about half a second.
        let took = started.elapsed();
        assert!(
            took > Duration::from_millis(400) && took < Duration::from_millis(900),
            "{took:?}"
        );
    }

    #[test]
    fn per_recipient_limit() {
        let b = Budget::new(0, 2);
        assert!(b.recipient("+1").is_ok());
        assert!(b.recipient("+1").is_ok());
        assert!(b.recipient("+1").is_err());
        assert!(b.recipient("+2").is_ok());
    }
}
