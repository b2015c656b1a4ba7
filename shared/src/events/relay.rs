//! The event relay: publishes the outbox's rows in order, in batches, with
//! confirms, and deletes what the broker confirmed. Every router replica
//! runs one; `FOR UPDATE SKIP LOCKED` hands each replica its own rows, so
//! replicas share a backlog instead of publishing the same events twice.
//!
//! At-least-once: a row is deleted only after its confirm, in the same
//! transaction that locked it. A crash (or a lost commit) between the
//! confirm and the delete publishes that batch again, with the same event
//! ids, which is what consumers de-duplicate on.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::DeliveryEvent;
use crate::{
    broker::{PublishError, Publisher},
    db,
};

/// Rows per pass: hundreds, so a burst drains in a few round trips, and
/// bounded, so one pass never holds many row locks for long.
pub const BATCH: i64 = 500;
/// How often an idle relay looks for new rows: the added latency of an
/// event, against one index probe per replica per interval.
const IDLE: Duration = Duration::from_millis(200);
/// Longest pause between passes while the broker or database fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs passes until cancelled: at once again after a full batch, after
/// [`IDLE`] when the outbox was drained, with a growing pause while
/// publishing fails (the rows stay in the outbox meanwhile).
pub async fn run(pool: PgPool, publisher: Publisher, cancel: CancellationToken) {
    let mut failing = Duration::ZERO;
    loop {
        let pause = match pass(&pool, &publisher, BATCH).await {
            Ok(n) => {
                if !failing.is_zero() {
                    tracing::info!("event relay publishes again");
                }
                failing = Duration::ZERO;
                if n as i64 >= BATCH {
                    Duration::ZERO
                } else {
                    IDLE
                }
            }
            Err(e) => {
                failing = (failing * 2).clamp(Duration::from_millis(500), MAX_BACKOFF);
                tracing::warn!(error = format!("{e:#}"), retry_in = ?failing,
                    "event relay could not publish; the events stay in the outbox");
                failing
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One pass over at most `limit` rows; answers how many rows it settled
/// (published, or dropped because their delivery is gone). Fails when any
/// row could not be published: those stay for a later pass.
pub async fn pass(pool: &PgPool, publisher: &Publisher, limit: i64) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = db::events::lock_batch(&mut tx, limit).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let names = publisher.broker().names();
    let mut settled = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        match DeliveryEvent::from_pending(row) {
            Some(event) => events.push((row.seq, event)),
            None => {
                // Only a row written by an earlier version (without the
                // delivery's columns) whose delivery is older than the
                // retention (its partition dropped): nothing is left to say
                // who it was for.
                tracing::warn!(delivery_id = %row.delivery_id, status = %row.status,
                    "delivery event dropped: the delivery no longer exists");
                metrics::counter!("herald_events_skipped_total").increment(1);
                settled.push(row.seq);
            }
        }
    }
    // The events, then the webhook messages they make (one per matching
    // endpoint); a row is done once its event and all its webhook messages
    // are confirmed.
    let refs: Vec<&DeliveryEvent> = events.iter().map(|(_, e)| e).collect();
    let (owners, hooks): (Vec<usize>, Vec<_>) =
        crate::webhooks::send::for_events(pool, names, &refs)
            .await?
            .into_iter()
            .unzip();
    let mut msgs: Vec<_> = events.iter().map(|(_, e)| e.outgoing(names)).collect();
    msgs.extend(hooks);
    // Events are not mandatory: one no service has bound a queue for is
    // dropped by the topic exchange and confirmed all the same.
    let results = publisher.publish_all(&msgs).await;
    let (event_results, hook_results) = results.split_at(events.len());
    let mut done: Vec<bool> = event_results.iter().map(Result::is_ok).collect();
    for (event, result) in owners.iter().zip(hook_results) {
        if result.is_err() {
            done[*event] = false;
        }
    }
    let failure = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .map(PublishError::to_string);
    let mut published = 0u64;
    for ((seq, _), ok) in events.iter().zip(&done) {
        if *ok {
            settled.push(*seq);
            published += 1;
        }
    }
    db::events::delete(&mut tx, &settled).await?;
    tx.commit().await?;
    metrics::counter!("herald_events_published_total").increment(published);
    if let Some(e) = failure {
        let unpublished = events.len() as u64 - published;
        metrics::counter!("herald_events_publish_failures_total").increment(unpublished);
        anyhow::bail!("{unpublished} events not published: {e}");
    }
    Ok(settled.len())
}

/// Refreshes the backlog gauges until cancelled.
pub async fn watch_backlog(pool: PgPool, cancel: CancellationToken) {
    loop {
        match db::events::backlog(&pool).await {
            Ok((rows, oldest)) => {
                metrics::gauge!("herald_events_outbox_rows").set(rows as f64);
                metrics::gauge!("herald_events_outbox_oldest_seconds").set(oldest);
            }
            Err(e) => tracing::debug!(error = %e, "could not measure the event outbox"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}
