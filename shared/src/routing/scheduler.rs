//! The deferred-delivery scheduler: releases deliveries held for quiet hours
//! or `send_at` when they fall due.
//!
//! Held deliveries live in PostgreSQL, not in broker delay queues: their
//! times are arbitrary (minutes to months), RabbitMQ's per-message TTLs block
//! behind the head of a queue, and a row can be queried, counted and expired.
//! Every router replica runs a scheduler; `FOR UPDATE SKIP LOCKED` shares the
//! due rows among them, and a row becomes `pending` only in the transaction
//! that saw its message confirmed, so a crash re-releases rather than loses it.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Publisher,
    db,
    model::message::{DeliveryMessage, Destination, Rendered},
};

/// How often the scheduler looks for due deliveries: the most a held delivery
/// can be late.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries released per transaction.
const BATCH: i64 = 500;

/// Runs until cancelled.
pub async fn run(pool: PgPool, publisher: Publisher, cancel: CancellationToken) {
    loop {
        let released = match pass(&pool, &publisher).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler pass failed; will retry");
                0
            }
        };
        // A full batch means more are due: go again at once.
        if released < BATCH as usize {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        } else if cancel.is_cancelled() {
            return;
        }
    }
}

/// One pass: releases up to one batch of due deliveries; returns how many
/// rows it settled (released or expired).
pub async fn pass(pool: &PgPool, publisher: &Publisher) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let due = db::deliveries::lock_due(&mut tx, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let names = publisher.broker().names();
    let mut expired = Vec::new();
    let mut broken = Vec::new();
    let mut release = Vec::new();
    let mut msgs = Vec::new();
    for d in &due {
        if d.expires_at.is_some_and(|e| e <= now) {
            expired.push((d.created_at, d.id));
            continue;
        }
        let parsed = (
            d.channel.parse(),
            d.lane.parse(),
            d.rendered.clone().map(serde_json::from_value::<Rendered>),
        );
        let (Ok(channel), Ok(lane), Some(Ok(rendered))) = parsed else {
            broken.push((d.created_at, d.id));
            continue;
        };
        release.push((d.created_at, d.id));
        msgs.push(
            DeliveryMessage {
                delivery_id: d.id,
                created_at: d.created_at,
                notification_id: d.notification_id,
                tenant_id: d.tenant_id.clone(),
                user_id: d.user_id.clone(),
                channel,
                lane,
                destination: Destination {
                    address: d.destination.clone(),
                    platform: d.platform.as_deref().and_then(|p| p.parse().ok()),
                },
                rendered,
                expires_at: d.expires_at,
            }
            .outgoing(names),
        );
    }
    let results = publisher.publish_all(&msgs).await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        // Roll back: every row stays deferred and is released next pass.
        anyhow::bail!("publishing released deliveries: {e}");
    }
    db::deliveries::set_status(&mut tx, &release, "pending", None).await?;
    db::deliveries::set_status(
        &mut tx,
        &expired,
        "expired",
        Some("expired before it could be sent"),
    )
    .await?;
    db::deliveries::set_status(
        &mut tx,
        &broken,
        "failed",
        Some("held delivery could not be read back"),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("herald_scheduler_released_total").increment(release.len() as u64);
    metrics::counter!("herald_scheduler_expired_total").increment(expired.len() as u64);
    Ok(due.len())
}
