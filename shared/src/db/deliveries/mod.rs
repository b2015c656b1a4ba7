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
    let rows: Vec<(&BatchOf<'_>, &NewDelivery)> = rows.iter().map(|r| (of, r)).collect();
    Ok(insert_many(pool, &rows).await?.len() as u64)
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
    sqlx::query_as!(
        Stored,
        "SELECT id, user_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND notification_id = $2 AND user_id >= $3 AND user_id <= $4
           AND user_id = ANY($5)",
        created_at,
        notification_id,
        *first,
        *last,
        users as &[&str],
    )
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
    let result = sqlx::query!(
        "UPDATE deliveries d
         SET status = u.status, reason = u.reason, rendered = u.rendered,
             not_before = u.not_before, updated_at = now()
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[])
              AS u(id, status, reason, rendered, not_before)
         WHERE d.created_at = $1 AND d.id = ANY($2) AND d.id = u.id AND d.status = 'pending'",
        created_at,
        &ids,
        &statuses as &[&str],
        &reasons as &[Option<&str>],
        &rendered as &[Option<serde_json::Value>],
        &not_before as &[Option<DateTime<Utc>>],
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Inserts the deliveries of several notifications in one statement; rows
/// already there (same notification, user, channel, destination) are left
/// as they are. Answers the ids actually inserted: a planned row whose id
/// is missing was there before (its notification was routed already).
pub async fn insert_many<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[(&BatchOf<'_>, &NewDelivery)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut cols = InsertColumns::default();
    for (of, row) in rows {
        cols.created.push(of.created_at);
        cols.notifications.push(of.notification_id);
        cols.tenants.push(of.tenant_id);
        cols.lanes.push(of.lane);
        cols.expires.push(of.expires_at);
        cols.push(row);
    }
    sqlx::query_scalar!(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, lane, expires_at,
             user_id, channel, destination, platform, status, reason, rendered, not_before)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[],
                              $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::text[], $12::text[], $13::jsonb[], $14::timestamptz[])
         ON CONFLICT (created_at, notification_id, user_id, channel, destination) DO NOTHING
         RETURNING id",
        &cols.ids,
        &cols.created,
        &cols.notifications,
        &cols.tenants as &[&str],
        &cols.lanes as &[&str],
        &cols.expires as &[Option<DateTime<Utc>>],
        &cols.users as &[&str],
        &cols.channels as &[&str],
        &cols.destinations as &[&str],
        &cols.platforms as &[Option<&str>],
        &cols.statuses as &[&str],
        &cols.reasons as &[Option<&str>],
        &cols.rendered as &[Option<serde_json::Value>],
        &cols.not_before as &[Option<DateTime<Utc>>],
    )
    .fetch_all(db)
    .await
}

/// Column arrays of an UNNEST insert.
#[derive(Default)]
struct InsertColumns<'a> {
    ids: Vec<Uuid>,
    created: Vec<DateTime<Utc>>,
    notifications: Vec<Uuid>,
    tenants: Vec<&'a str>,
    lanes: Vec<&'a str>,
    expires: Vec<Option<DateTime<Utc>>>,
    users: Vec<&'a str>,
    channels: Vec<&'a str>,
    destinations: Vec<&'a str>,
    platforms: Vec<Option<&'a str>>,
    statuses: Vec<&'a str>,
    reasons: Vec<Option<&'a str>>,
    rendered: Vec<Option<serde_json::Value>>,
    not_before: Vec<Option<DateTime<Utc>>>,
}

impl<'a> InsertColumns<'a> {
    fn push(&mut self, r: &'a NewDelivery) {
        self.ids.push(r.id);
        self.users.push(&r.user_id);
        self.channels.push(r.channel);
        self.destinations.push(&r.destination);
        self.platforms.push(r.platform);
        self.statuses.push(r.status);
        self.reasons.push(r.reason.as_deref());
        self.rendered.push(r.rendered.clone());
        self.not_before.push(r.not_before);
    }
}
