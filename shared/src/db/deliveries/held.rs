//! The deferred-delivery scheduler's side: held rows that fall due.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// A deferred delivery that is due.
#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub notification_id: Uuid,
    pub tenant_id: String,
    pub user_id: String,
    pub channel: String,
    pub lane: String,
    pub destination: String,
    pub platform: Option<String>,
    pub rendered: Option<serde_json::Value>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Locks up to `limit` due deferred deliveries for this scheduler pass;
/// other replicas skip them. `rendered IS NOT NULL` selects the partial
/// index `deliveries_held` (held rows are those still keeping content).
pub async fn lock_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as!(
        Due,
        "SELECT id, created_at, notification_id, tenant_id, user_id, channel, lane, destination,
                platform, rendered, expires_at
         FROM deliveries WHERE rendered IS NOT NULL AND status = 'deferred' AND not_before <= now()
         ORDER BY not_before LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    .fetch_all(&mut **tx)
    .await
}

/// Sets the status of released deliveries and drops their stored content
/// (the released message carries it; `deliveries_held` indexes only rows
/// that still keep theirs).
pub async fn set_status(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[(DateTime<Utc>, Uuid)],
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let created: Vec<DateTime<Utc>> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    sqlx::query!(
        "UPDATE deliveries d SET status = $3, reason = COALESCE($4, d.reason), rendered = NULL, updated_at = now()
         FROM UNNEST($1::timestamptz[], $2::uuid[]) AS k(created_at, id)
         WHERE d.created_at = k.created_at AND d.id = k.id",
        &created,
        &ids,
        status,
        reason,
    )
    .execute(&mut **tx)
    .await
    .map(|_| ())
}
