//! Deliveries: written by the router in batches, claimed and settled by the
//! channel workers, released by the deferred-delivery scheduler, reset by
//! replay. One file per party.

mod claims;
mod held;
mod replay;

pub use claims::*;
pub use held::*;
pub use replay::*;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
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
    let (Some(first), Some(last)) = (users.iter().min(), users.iter().max()) else {
        return Ok(Vec::new());
    };
    // The range bounds the index scan to this batch's users: a topic page is
    // a contiguous id range, and without them the scan would walk every
    // delivery of the notification (a million for a large topic) per page.
    sqlx::query_as(
        "SELECT id, user_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND notification_id = $2 AND user_id >= $3 AND user_id <= $4
           AND user_id = ANY($5)",
    )
    .bind(created_at)
    .bind(notification_id)
    .bind(first)
    .bind(last)
    .bind(users)
    .fetch_all(pool)
    .await
}

/// A stored delivery whose status the router's current plan changes.
#[derive(Debug, Clone)]
pub struct Replanned {
    pub id: Uuid,
    pub status: &'static str,
    pub reason: Option<String>,
    /// Content kept for a delivery now held (see [`NewDelivery::rendered`]).
    pub rendered: Option<serde_json::Value>,
    pub not_before: Option<DateTime<Utc>>,
}

/// Applies a new plan to deliveries that are still `pending`: a routing
/// message routed again (after a crash, or a replay) plans with the clock
/// and preferences of now, and a row the new plan holds, expires or
/// suppresses must not wait as `pending` for a message that will not come.
/// A row a worker already claimed is left to the worker. (`id = ANY` gives
/// the planner the primary-key probe whatever the statistics of the day's
/// partition say.)
pub async fn replan(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    rows: &[Replanned],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    let rendered: Vec<Option<serde_json::Value>> =
        rows.iter().map(|r| r.rendered.clone()).collect();
    let not_before: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.not_before).collect();
    let result = sqlx::query(
        "UPDATE deliveries d
         SET status = u.status, reason = u.reason, rendered = u.rendered,
             not_before = u.not_before, updated_at = now()
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[])
              AS u(id, status, reason, rendered, not_before)
         WHERE d.created_at = $1 AND d.id = ANY($2) AND d.id = u.id AND d.status = 'pending'",
    )
    .bind(created_at)
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&rendered)
    .bind(&not_before)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
