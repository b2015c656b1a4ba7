//! Telling a dependency outage from a bad message, and holding a message
//! through an outage.
//!
//! A database or broker that is down says nothing about the message being
//! handled. Returning such a message to its queue would spend one of its
//! quorum-queue deliveries (`x-delivery-limit`) per try, so a long enough
//! outage would turn live messages into `poison` dead letters. Instead the
//! handler keeps the message and retries the step in process with a capped
//! backoff ([`hold`]); with every prefetch slot held, the consumer takes no
//! more work, which is the pause. Only an error that is the message's own
//! (the database answered, and refused it) goes back to the queue, where the
//! delivery limit catches real poison.

use std::{
    future::Future,
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::broker::PublishError;

/// First pause after an outage error.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between tries: how late a held message can notice that the
/// dependency is back.
const MAX_PAUSE: Duration = Duration::from_secs(3);

/// Messages held through an outage right now, across the process; exported
/// as `herald_messages_held` so a stalled dependency shows on a dashboard.
static HELD: AtomicI64 = AtomicI64::new(0);

/// A dependency is unavailable, as a caller that already classified its
/// error says (ingest's `503`s): [`is_outage`] takes it as one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Whether `err` means a dependency is unavailable (or briefly unable to
/// serve: a deadlock, a serialization failure, a standby not yet promoted),
/// rather than that this message is bad.
pub fn is_outage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return sqlx_outage(e);
        }
        if let Some(e) = cause.downcast_ref::<std::sync::Arc<sqlx::Error>>() {
            return sqlx_outage(e);
        }
        // Every publish failure is the broker's, not the message's: down,
        // blocked by an alarm (nack, confirm timeout), or missing topology
        // that the next declare restores.
        cause.downcast_ref::<PublishError>().is_some()
            || cause.downcast_ref::<Unavailable>().is_some()
            || cause.downcast_ref::<lapin::Error>().is_some()
            || cause.downcast_ref::<std::io::Error>().is_some()
    })
}

/// Whether a database error is the database's state rather than the query's.
pub fn sqlx_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources;
            // 57P0x: shutting down or starting up; 40001/40P01:
            // serialization failure, deadlock; 25006: read-only (a standby,
            // or a primary being demoted).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
                || code == "40001"
                || code == "40P01"
                || code == "25006"
        }),
        _ => false,
    }
}

/// How a held step ended without succeeding.
#[derive(Debug)]
pub enum Held {
    /// `until` fired first (the message's channel is gone, or the process is
    /// stopping): the caller lets go of the message.
    Stopped,
    /// The step failed for a reason of the message's own.
    Failed(anyhow::Error),
}

/// Runs `step` until it succeeds, retrying every outage error after a
/// capped, jittered pause, until `until` fires. `what` names the step in the
/// log line each retry writes.
pub async fn hold<T, F, Fut>(what: &str, until: &CancellationToken, mut step: F) -> Result<T, Held>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut pause = FIRST_PAUSE;
    let mut counted = None;
    loop {
        let err = match step().await {
            Ok(value) => return Ok(value),
            Err(e) if is_outage(&e) => e,
            Err(e) => return Err(Held::Failed(e)),
        };
        let _holding = counted.get_or_insert_with(Holding::new);
        tracing::warn!(step = what, error = %format!("{err:#}"), pause_ms = pause.as_millis() as u64,
            "dependency unavailable; holding the message and retrying");
        metrics::counter!("herald_outage_retries_total", "step" => what.to_owned()).increment(1);
        let jittered = pause.mul_f64(0.75 + rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = until.cancelled() => return Err(Held::Stopped),
            _ = tokio::time::sleep(jittered) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Counts one held message for as long as it lives.
struct Holding;

impl Holding {
    fn new() -> Self {
        let now = HELD.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("herald_messages_held").set(now as f64);
        Holding
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let now = HELD.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("herald_messages_held").set(now as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn outages_are_told_from_bad_messages() {
        assert!(is_outage(&anyhow::Error::new(sqlx::Error::PoolTimedOut)));
        assert!(is_outage(
            &anyhow::Error::new(sqlx::Error::PoolClosed).context("claiming")
        ));
        assert!(is_outage(&anyhow::Error::new(PublishError::Nacked)));
        assert!(!is_outage(&anyhow::Error::new(sqlx::Error::RowNotFound)));
        assert!(!is_outage(&anyhow::anyhow!("does not parse")));
    }

    #[tokio::test]
    async fn holds_through_outage_errors_until_the_step_succeeds() {
        let tries = AtomicU32::new(0);
        let never = CancellationToken::new();
        let got = hold("test", &never, || async {
            if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(anyhow::Error::new(sqlx::Error::PoolTimedOut))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn lets_go_when_told_and_passes_bad_messages_back() {
        let stop = CancellationToken::new();
        stop.cancel();
        let got: Result<(), Held> = hold("test", &stop, || async {
            Err(anyhow::Error::new(sqlx::Error::PoolClosed))
        })
        .await;
        assert!(matches!(got, Err(Held::Stopped)));
        let got: Result<(), Held> =
            hold("test", &stop, || async { Err(anyhow::anyhow!("refused")) }).await;
        assert!(matches!(got, Err(Held::Failed(_))));
    }
}
