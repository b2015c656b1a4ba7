//! Notifications and the delivery views the status API answers from.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A notification to insert.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: Uuid,
    pub tenant_id: String,
    pub category: String,
    pub priority: String,
    /// The validated request as JSON text: serialised once, straight from
    /// the typed request, and stored as `jsonb` by the database.
    pub request: String,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Inserts notifications in one statement (UNNEST).
pub async fn insert_many<'e>(
    db: impl sqlx::Executor<'e, Database = Postgres>,
    rows: &[&NewNotification],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut tenants = Vec::with_capacity(rows.len());
    let mut categories = Vec::with_capacity(rows.len());
    let mut priorities = Vec::with_capacity(rows.len());
    let mut requests = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    let mut created = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.id);
        tenants.push(r.tenant_id.as_str());
        categories.push(r.category.as_str());
        priorities.push(r.priority.as_str());
        requests.push(r.request.as_str());
        keys.push(r.idempotency_key.as_deref());
        created.push(r.created_at);
    }
    sqlx::query!(
        "INSERT INTO notifications (id, tenant_id, category, priority, request, idempotency_key, created_at)
         SELECT u.id, u.tenant, u.category, u.priority, u.request::jsonb, u.key, u.created
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
              AS u(id, tenant, category, priority, request, key, created)",
        &ids,
        &tenants as &[&str],
        &categories as &[&str],
        &priorities as &[&str],
        &requests as &[&str],
        &keys as &[Option<&str>],
        &created,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A pool for [`mark_published`], on the same database as `pool`, of
/// `connections` connections whose settings its statement needs: commits
/// that do not wait for the disk (a lost mark costs only a republish, see
/// there), and lookups by primary key whatever the statistics say (a table
/// they still think small, in a new deployment's first minutes before
/// autovacuum's first `ANALYZE`, would otherwise be read whole for a batch
/// of a few dozen ids, dozens of times a second), planned once: with
/// its arrays' lengths known, PostgreSQL's estimate of a custom plan was
/// always below that of the generic one, so it planned the statement
/// again on every call, and the planning cost more than the updates
/// (docs/benchmarks.md, "Planned once"). Set per session, the marks are
/// one statement and one round trip, without a transaction to open and
/// settings to make for each batch.
pub fn marks_pool(pool: &PgPool, connections: u32) -> PgPool {
    let options = (*pool.connect_options()).clone().options([
        ("synchronous_commit", "off"),
        ("enable_seqscan", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    crate::db::connect_lazy_with(options, connections)
}

/// Records that the broker confirmed these notifications' routing messages
/// (those the router has not routed yet: a routed one needs no mark), that
/// the `routed` ones (routed inline by ingest) have their delivery messages
/// confirmed, and that the requests behind these idempotency keys are
/// durable. One statement, on a connection of a [`marks_pool`], so
/// committed asynchronously: if the marks are lost in a database crash the
/// relay merely republishes (the router's fan-out key absorbs the
/// duplicate, and publishes an inline-routed notification's pending
/// deliveries again), and a replay of the key waits for the relay's grace.
pub async fn mark_published(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
    routed: &[Uuid],
    keys: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let marked: Vec<Uuid> = ids.iter().chain(routed).copied().collect();
    let inline: Vec<bool> = ids
        .iter()
        .map(|_| false)
        .chain(routed.iter().map(|_| true))
        .collect();
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    // A notification is routed inline or by the router, never both, so no
    // row is named twice; an inline-routed one is `routed` once its
    // delivery messages are confirmed, another only `published`.
    sqlx::query!(
        "WITH marks AS (
             SELECT * FROM UNNEST($1::uuid[], $2::boolean[]) AS m(id, inline)
         ), noted AS (
             UPDATE notifications n
                SET status = CASE WHEN m.inline THEN 'routed' ELSE n.status END,
                    routed_at = CASE WHEN m.inline THEN now() ELSE n.routed_at END,
                    updated_at = CASE WHEN m.inline THEN now() ELSE n.updated_at END,
                    published_at = CASE WHEN m.inline THEN n.published_at ELSE now() END
               FROM marks m
              WHERE n.id = m.id AND n.status = 'accepted'
                AND (m.inline OR n.published_at IS NULL)
         )
         UPDATE idempotency_keys SET completed_at = now()
          WHERE (tenant_id, key) IN (SELECT * FROM UNNEST($3::text[], $4::text[]))",
        &marked,
        &inline,
        &tenants as &[&str],
        &names as &[&str],
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Withdraws notifications whose messages could not be published, with
/// the deliveries inline routing recorded for them; `created` holds each
/// one's `created_at` (the deliveries' partition key).
pub async fn delete(
    pool: &PgPool,
    ids: &[Uuid],
    created: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "DELETE FROM deliveries WHERE (created_at, notification_id) IN
             (SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[]))",
        created,
        ids,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM notifications WHERE id = ANY($1)", ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// What the router needs to route, and the relay to republish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub category: String,
    pub priority: String,
    pub status: String,
    pub request: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub routed_at: Option<DateTime<Utc>>,
    pub route_cursor: Option<String>,
}

/// One notification of a tenant.
pub async fn get(
    pool: &PgPool,
    tenant: &str,
    id: Uuid,
) -> Result<Option<NotificationRow>, sqlx::Error> {
    sqlx::query_as!(
        NotificationRow,
        "SELECT id, tenant_id, category, priority, status, request, created_at, updated_at,
                routed_at, route_cursor
         FROM notifications WHERE id = $1 AND tenant_id = $2",
        id,
        tenant,
    )
    .fetch_optional(pool)
    .await
}

/// Notifications committed but never confirmed by the broker for `grace`,
/// locked for this relay pass (other replicas skip them).
pub async fn lock_unpublished(
    tx: &mut Transaction<'_, Postgres>,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as!(
        NotificationRow,
        "SELECT id, tenant_id, category, priority, status, request, created_at, updated_at,
                routed_at, route_cursor
         FROM notifications
         WHERE status = 'accepted' AND published_at IS NULL
           AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        grace.as_secs_f64(),
        limit,
    )
    .fetch_all(&mut **tx)
    .await
}

/// Delivery counts of a notification by status.
pub async fn delivery_counts(
    pool: &PgPool,
    id: Uuid,
    created_at: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status!", count(*) AS "count!" FROM deliveries
           WHERE created_at = $1 AND notification_id = $2
           GROUP BY status ORDER BY status"#,
        created_at,
        id,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}

/// One delivery as the status API shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryView {
    pub id: Uuid,
    pub user_id: String,
    pub channel: String,
    pub lane: String,
    pub destination: String,
    pub status: String,
    pub reason: Option<String>,
    pub attempts: i32,
    pub error_class: Option<String>,
    pub last_error: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub receipt_at: Option<DateTime<Utc>>,
    pub receipt_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A page of a notification's deliveries after `cursor` (a delivery id).
pub async fn deliveries_page(
    pool: &PgPool,
    id: Uuid,
    created_at: DateTime<Utc>,
    cursor: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    sqlx::query_as!(
        DeliveryView,
        "SELECT id, user_id, channel, lane, destination, status, reason, attempts, error_class,
                last_error, not_before, sent_at, receipt_at, receipt_reason, updated_at
         FROM deliveries WHERE created_at = $1 AND notification_id = $2 AND ($3::uuid IS NULL OR id > $3)
         ORDER BY id LIMIT $4",
        created_at,
        id,
        cursor,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The smallest UUIDv7 of the millisecond `at`: notification ids are
/// UUIDv7, so ids below it were made before `at`, and a primary-key range
/// finds them without an index on `created_at`.
fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70; // version 7
    bytes[8] = 0x80; // RFC 4122 variant
    Uuid::from_bytes(bytes)
}

/// Deletes up to `limit` routed notifications accepted before `cutoff`
/// (their topic pages go with them), keeping any that still has a held
/// delivery; answers how many were deleted. Deliveries have the same
/// retention, by dropping their day partitions.
pub async fn purge_older_than(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM notifications WHERE id IN (
             SELECT n.id FROM notifications n
             WHERE n.id < $1 AND n.created_at < $2 AND n.status = 'routed'
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.created_at = n.created_at AND d.notification_id = n.id
                                 AND d.rendered IS NOT NULL)
             ORDER BY n.id LIMIT $3)",
        v7_floor(cutoff),
        cutoff,
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v7_floor_sorts_below_ids_made_at_that_time() {
        let at = Utc::now();
        let floor = v7_floor(at);
        assert_eq!(floor.get_version_num(), 7);
        let later = Uuid::now_v7();
        assert!(floor <= later);
        let earlier = v7_floor(at - chrono::Duration::milliseconds(1));
        assert!(earlier < floor);
    }
}
