//! `high` before the rest. Each lane has its own consumer, channel and
//! prefetch, but on a busy machine they still share the CPU and the
//! database: a bulk page's insert and publish, or a batch of bulk claims,
//! compete with a one-time code. The router and the workers therefore count
//! their `high` work in flight, and `normal` and `bulk` work waits before
//! each step while there is any: for at most about 200 ms at a time, so a
//! stream of codes slows bulk work down but never stops it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::model::Lane;

/// Longest a `normal` or `bulk` step waits for `high` work.
const LONGEST: Duration = Duration::from_millis(200);

/// The `high` work in flight in one process. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HighFirst(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    in_flight: AtomicUsize,
    /// Woken when the last piece of `high` work ends.
    idle: Notify,
}

impl HighFirst {
    /// Counts work of `lane` as in flight for as long as the answer lives,
    /// if `lane` is `high`.
    pub fn track(&self, lane: Lane) -> Option<InFlight> {
        (lane == Lane::High).then(|| {
            self.0.in_flight.fetch_add(1, Ordering::AcqRel);
            InFlight(self.0.clone())
        })
    }

    /// Waits while `high` work is in flight, unless `lane` is `high`
    /// (bounded: see the module's documentation). Waiters sleep until the
    /// last `high` work ends rather than polling.
    pub async fn yield_to_high(&self, lane: Lane) {
        if lane == Lane::High {
            return;
        }
        if self.0.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        metrics::counter!(crate::telemetry::catalogue::consumers::YIELDED_TO_HIGH.name, "lane" => lane.as_str())
            .increment(1);
        let deadline = tokio::time::Instant::now() + LONGEST;
        loop {
            let idle = self.0.idle.notified();
            if self.0.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// One piece of `high` work in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn other_lanes_wait_for_high_work_but_not_for_ever() {
        let first = HighFirst::default();
        assert!(first.track(Lane::Bulk).is_none());
        let started = std::time::Instant::now();
        first.yield_to_high(Lane::Bulk).await;
        assert!(
            started.elapsed() < Duration::from_millis(2),
            "nothing in flight"
        );

        let code = first.track(Lane::High);
        let started = std::time::Instant::now();
        first.yield_to_high(Lane::High).await;
        assert!(
            started.elapsed() < Duration::from_millis(2),
            "high never waits"
        );
        first.yield_to_high(Lane::Bulk).await;
        let waited = started.elapsed();
        assert!(
            waited >= LONGEST && waited < Duration::from_secs(2),
            "bounded: {waited:?}"
        );

        let waiter = tokio::spawn({
            let first = first.clone();
            async move {
                let started = std::time::Instant::now();
                first.yield_to_high(Lane::Normal).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(code);
        let waited = waiter.await.unwrap();
        assert!(
            waited >= Duration::from_millis(30) && waited < LONGEST,
            "released when the high work ends: {waited:?}"
        );
    }
}
