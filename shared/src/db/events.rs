//! The delivery-event outbox (`event_outbox`): rows written by a trigger on
//! `deliveries` in the transaction of each status change users see, read
//! and deleted by the router's event relay (events/relay.rs).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// One status change waiting to be published, with what the event says of
/// its delivery. The delivery's columns are `None` only for a row an
/// earlier version wrote (without them) whose delivery no longer exists
/// (its day was dropped by retention before the relay got to it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub seq: i64,
    pub event_id: Uuid,
    /// The delivery's creation time (its partition key) and id.
    pub created_at: DateTime<Utc>,
    pub delivery_id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    /// When the status changed.
    pub at: DateTime<Utc>,
    pub tenant_id: Option<String>,
    pub notification_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub channel: Option<String>,
    /// Unmasked; whoever shows it masks it.
    pub destination: Option<String>,
    pub category: Option<String>,
}

/// Locks up to `limit` of the oldest outbox rows that no other relay holds
/// (`SKIP LOCKED`: replicas share the backlog instead of publishing the same
/// rows), with their notification's category.
///
/// The row carries its delivery's columns (migration
/// `..._event_outbox_carries_delivery.sql`), so the statement reads only
/// the outbox and `notifications`, never the partitioned `deliveries`. Only
/// a row an earlier version wrote without them (a rolling upgrade) reads
/// its delivery, in a second statement that runs only when the batch holds
/// such a row ([`fill_from_deliveries`]). Naming `deliveries` in this one,
/// even behind a test that skips it for every row, made each pass plan and
/// open every partition and its indexes: 5 ms of planning and about 13 ms
/// of executor start-up per pass of 400 rows with 17 partitions, several
/// times the rows' own cost (docs/benchmarks.md).
pub async fn lock_batch(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    let mut rows = sqlx::query_as!(
        PendingEvent,
        r#"SELECT b.seq AS "seq!", b.event_id AS "event_id!", b.created_at AS "created_at!",
                b.delivery_id AS "delivery_id!", b.status AS "status!", b.reason AS "reason?", b.error_class AS "error_class?",
                b.error AS "error?", b.attempts AS "attempts!",
                b.at AS "at!",
                b.tenant_id AS "tenant_id?", b.notification_id AS "notification_id?",
                b.user_id AS "user_id?", b.channel AS "channel?",
                b.destination AS "destination?",
                n.category AS "category?"
         FROM (SELECT * FROM event_outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) b
         LEFT JOIN LATERAL (
             SELECT category FROM notifications n
             WHERE n.id = b.notification_id LIMIT 1) n ON true
         ORDER BY b.seq"#,
        limit,
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.iter().any(|r| r.tenant_id.is_none()) {
        fill_from_deliveries(tx, &mut rows).await?;
    }
    Ok(rows)
}

/// Fills in, from the delivery and its notification, what rows written by an
/// earlier version's trigger do not carry. A row whose delivery is gone
/// (its day dropped by the retention) keeps its `None`s.
async fn fill_from_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    rows: &mut [PendingEvent],
) -> Result<(), sqlx::Error> {
    let legacy: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].tenant_id.is_none())
        .collect();
    let created: Vec<DateTime<Utc>> = legacy.iter().map(|i| rows[*i].created_at).collect();
    let ids: Vec<Uuid> = legacy.iter().map(|i| rows[*i].delivery_id).collect();
    // Each join is a `LATERAL ... LIMIT 1` so it stays one primary-key probe
    // per row (partitions pruned as each row executes) rather than a join
    // the planner might answer by reading a whole day of deliveries.
    let found = sqlx::query!(
        r#"SELECT r.n AS "n!", d.tenant_id, d.notification_id, d.user_id, d.channel::text AS "channel!",
                  d.destination, n.category AS "category?"
           FROM unnest($1::timestamptz[], $2::uuid[]) WITH ORDINALITY AS r(created, id, n)
           JOIN LATERAL (
               SELECT tenant_id, notification_id, user_id, channel, destination FROM deliveries d
               WHERE d.created_at = r.created AND d.id = r.id LIMIT 1) d ON true
           LEFT JOIN LATERAL (
               SELECT category FROM notifications n
               WHERE n.id = d.notification_id LIMIT 1) n ON true"#,
        &created,
        &ids,
    )
    .fetch_all(&mut **tx)
    .await?;
    for f in found {
        let row = &mut rows[legacy[(f.n - 1) as usize]];
        row.tenant_id = Some(f.tenant_id);
        row.notification_id = Some(f.notification_id);
        row.user_id = Some(f.user_id);
        row.channel = Some(f.channel);
        row.destination = Some(f.destination);
        row.category = f.category;
    }
    Ok(())
}

/// Deletes published (or unpublishable) rows.
pub async fn delete(tx: &mut Transaction<'_, Postgres>, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query!("DELETE FROM event_outbox WHERE seq = ANY($1)", seqs)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The outbox backlog: rows waiting, and the age in seconds of the oldest
/// (0 when empty). Up to 100,000 rows the count is exact; past that it is
/// the span of sequence numbers waiting (two index probes, where a count
/// would read every row of a backlog that a long broker outage made large;
/// the span over-counts only by rows already taken by another relay).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH span AS (SELECT min(seq) AS lo, max(seq) AS hi FROM event_outbox)
         SELECT CASE WHEN span.lo IS NULL THEN 0
                     WHEN span.hi - span.lo < 100000 THEN (SELECT count(*) FROM event_outbox)
                     ELSE span.hi - span.lo + 1 END AS "waiting!",
                COALESCE((SELECT extract(epoch FROM now() - o.at)::float8
                          FROM event_outbox o WHERE o.seq = span.lo), 0) AS "age!"
         FROM span"#,
    )
    .fetch_one(pool)
    .await?;
    Ok((row.waiting, row.age))
}
