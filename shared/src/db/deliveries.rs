//! Deliveries: written by the router in batches, claimed and settled by the
//! channel workers, released by the deferred-delivery scheduler.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A delivery row to insert.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub user_id: String,
    pub channel: &'static str,
    pub destination: String,
    pub platform: Option<&'static str>,
    pub status: &'static str,
    pub reason: Option<String>,
    /// Kept only for deferred deliveries: pending ones carry their content in
    /// the broker message, and storing it for a billion rows a day is waste.
    pub rendered: Option<serde_json::Value>,
    pub not_before: Option<DateTime<Utc>>,
}

/// The notification-level columns shared by a batch of deliveries.
#[derive(Debug, Clone)]
pub struct BatchOf<'a> {
    pub created_at: DateTime<Utc>,
    pub notification_id: Uuid,
    pub tenant_id: &'a str,
    pub lane: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts deliveries in one statement; rows already there (same
/// notification, user, channel, destination) are left as they are.
pub async fn insert_batch(
    pool: &PgPool,
    of: &BatchOf<'_>,
    rows: &[NewDelivery],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let channels: Vec<&str> = rows.iter().map(|r| r.channel).collect();
    let destinations: Vec<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
    let platforms: Vec<Option<&str>> = rows.iter().map(|r| r.platform).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    let rendered: Vec<Option<serde_json::Value>> =
        rows.iter().map(|r| r.rendered.clone()).collect();
    let not_before: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.not_before).collect();
    let result = sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, lane, expires_at,
             user_id, channel, destination, platform, status, reason, rendered, not_before)
         SELECT u.id, $1, $2, $3, $4, $5, u.user_id, u.channel, u.destination, u.platform, u.status,
                u.reason, u.rendered, u.not_before
         FROM UNNEST($6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::jsonb[], $14::timestamptz[])
              AS u(id, user_id, channel, destination, platform, status, reason, rendered, not_before)
         ON CONFLICT (created_at, notification_id, user_id, channel, destination) DO NOTHING",
    )
    .bind(of.created_at)
    .bind(of.notification_id)
    .bind(of.tenant_id)
    .bind(of.lane)
    .bind(of.expires_at)
    .bind(&ids)
    .bind(&users)
    .bind(&channels)
    .bind(&destinations)
    .bind(&platforms)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&rendered)
    .bind(&not_before)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Id and status of a notification's deliveries to some users, as stored:
/// after a redelivered fan-out these are the first attempt's rows.
#[derive(Debug, sqlx::FromRow)]
pub struct Stored {
    pub id: Uuid,
    pub user_id: String,
    pub channel: String,
    pub destination: String,
    pub status: String,
}

/// The stored deliveries of `users` for one notification.
pub async fn stored_for_users(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    notification_id: Uuid,
    users: &[&str],
) -> Result<Vec<Stored>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND notification_id = $2 AND user_id = ANY($3)",
    )
    .bind(created_at)
    .bind(notification_id)
    .bind(users)
    .fetch_all(pool)
    .await
}

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
/// other replicas skip them.
pub async fn lock_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, notification_id, tenant_id, user_id, channel, lane, destination,
                platform, rendered, expires_at
         FROM deliveries WHERE status = 'deferred' AND not_before <= now()
         ORDER BY not_before LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Sets the status of released deliveries.
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
    sqlx::query(
        "UPDATE deliveries d SET status = $3, reason = COALESCE($4, d.reason), updated_at = now()
         FROM UNNEST($1::timestamptz[], $2::uuid[]) AS k(created_at, id)
         WHERE d.created_at = k.created_at AND d.id = k.id",
    )
    .bind(&created)
    .bind(&ids)
    .bind(status)
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}
