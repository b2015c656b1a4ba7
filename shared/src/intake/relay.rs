//! The outbox relay: republishes notifications that were committed but whose
//! routing message was never confirmed (ingest died in between). Every ingest
//! replica runs one; `FOR UPDATE SKIP LOCKED` keeps them off each other's rows.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{RELAY_GRACE, route_message};
use crate::{broker::Publisher, db};

/// How often the relay looks for stranded notifications.
const INTERVAL: Duration = Duration::from_secs(5);
/// Rows per pass: bounded so one pass never holds many locks for long.
const BATCH: i64 = 500;

/// Runs passes until cancelled.
pub async fn run(pool: PgPool, publisher: Publisher, cancel: CancellationToken) {
    loop {
        match pass(&pool, &publisher, RELAY_GRACE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(republished = n, "relay republished stranded notifications"),
            Err(e) => tracing::warn!(error = %e, "relay pass failed; will retry"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// One pass: publishes stranded notifications older than `grace`, marks them
/// published, and returns how many.
pub async fn pass(pool: &PgPool, publisher: &Publisher, grace: Duration) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = db::notifications::lock_unpublished(&mut tx, grace, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let names = publisher.broker().names();
    let msgs: Vec<_> = rows
        .iter()
        .map(|r| route_message(names, r.id, &r.tenant_id, &r.priority, r.created_at))
        .collect();
    let results = publisher.publish_all(&msgs).await;
    let published: Vec<_> = rows
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(row, _)| row.id)
        .collect();
    sqlx::query!(
        "UPDATE notifications SET published_at = now() WHERE id = ANY($1)",
        &published,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("herald_relay_republished_total").increment(published.len() as u64);
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("some notifications could not be republished: {e}");
    }
    Ok(published.len())
}
