//! The dead-letter store: what the archiver moved off the broker.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

/// A dead letter to store.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub message_key: String,
    pub source: String,
    pub tenant_id: Option<String>,
    pub channel: Option<String>,
    pub lane: Option<String>,
    pub notification_id: Option<Uuid>,
    pub delivery_id: Option<Uuid>,
    /// The recipient of a dead delivery, so erasing the user reaches it.
    pub user_id: Option<String>,
    pub error_class: String,
    pub last_error: String,
    pub attempts: i32,
    pub exchange: String,
    pub routing_key: String,
    pub headers: serde_json::Value,
    pub payload: Vec<u8>,
    pub failed_at: DateTime<Utc>,
}

/// Stores a dead letter once: a second insert of the same message key (the
/// archiver crashed between commit and ack) is a no-op. True if stored now.
pub async fn insert(pool: &PgPool, d: &NewDeadLetter) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "INSERT INTO dead_letters (id, message_key, source, tenant_id, channel, lane, notification_id,
             delivery_id, error_class, last_error, attempts, exchange, routing_key, headers, payload,
             failed_at, user_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (message_key) DO NOTHING",
        Uuid::now_v7(),
        d.message_key,
        d.source,
        d.tenant_id,
        d.channel,
        d.lane,
        d.notification_id,
        d.delivery_id,
        d.error_class,
        d.last_error,
        d.attempts,
        d.exchange,
        d.routing_key,
        d.headers,
        d.payload,
        d.failed_at,
        d.user_id,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A stored dead letter.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "tenant")]
    pub tenant_id: Option<String>,
    pub channel: Option<String>,
    pub lane: Option<String>,
    pub notification_id: Option<Uuid>,
    pub delivery_id: Option<Uuid>,
    pub error_class: String,
    pub last_error: String,
    pub attempts: i32,
    pub exchange: String,
    pub routing_key: String,
    pub headers: serde_json::Value,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub failed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replay_count: i32,
}

/// Which dead letters to select. Every field narrows; none selects all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: Option<Uuid>,
    pub tenant: Option<String>,
    pub channel: Option<String>,
    pub error_class: Option<String>,
    pub notification_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Leave out records already replayed.
    pub only_unreplayed: bool,
}

fn push_filter(q: &mut QueryBuilder<Postgres>, f: &Filter) {
    q.push(" WHERE true");
    if let Some(id) = f.id {
        q.push(" AND id = ").push_bind(id);
    }
    if let Some(t) = &f.tenant {
        q.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(c) = &f.channel {
        q.push(" AND channel = ").push_bind(c);
    }
    if let Some(e) = &f.error_class {
        q.push(" AND error_class = ").push_bind(e);
    }
    if let Some(n) = f.notification_id {
        q.push(" AND notification_id = ").push_bind(n);
    }
    if let Some(s) = f.since {
        q.push(" AND failed_at >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        q.push(" AND failed_at < ").push_bind(u);
    }
    if f.only_unreplayed {
        q.push(" AND replayed_at IS NULL");
    }
}

/// Dead letters matching `filter`, newest first, at most `limit`.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    // Runtime query: the WHERE clause depends on which filter fields are set.
    let mut q = QueryBuilder::new("SELECT * FROM dead_letters");
    push_filter(&mut q, filter);
    q.push(" ORDER BY failed_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q.build_query_as().fetch_all(pool).await
}

/// Number of dead letters matching `filter`.
pub async fn count(pool: &PgPool, filter: &Filter) -> Result<i64, sqlx::Error> {
    // Runtime query: the WHERE clause depends on which filter fields are set.
    let mut q = QueryBuilder::new("SELECT count(*) FROM dead_letters");
    push_filter(&mut q, filter);
    q.build_query_scalar().fetch_one(pool).await
}

/// Dead letters matching `filter` in the order they failed, oldest first, at
/// most `limit`: a replay puts messages back in their original order.
pub async fn list_oldest_first(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    // Runtime query: the WHERE clause depends on which filter fields are set.
    let mut q = QueryBuilder::new("SELECT * FROM dead_letters");
    push_filter(&mut q, filter);
    q.push(" ORDER BY failed_at, id LIMIT ").push_bind(limit);
    q.build_query_as().fetch_all(pool).await
}

/// Locks one record for replay, skipping it if another replay holds it or
/// (with `only_unreplayed`) it was replayed since it was selected. The lock
/// lasts until `tx` ends, so two operators replaying at once never publish
/// the same record twice.
pub async fn lock_for_replay(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    only_unreplayed: bool,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as!(
        DeadLetter,
        "SELECT id, source, tenant_id, channel, lane, notification_id, delivery_id, error_class,
                last_error, attempts, exchange, routing_key, headers, payload, failed_at,
                created_at, replayed_at, replay_count
         FROM dead_letters WHERE id = $1 AND (NOT $2 OR replayed_at IS NULL)
         FOR UPDATE SKIP LOCKED",
        id,
        only_unreplayed,
    )
    .fetch_optional(&mut **tx)
    .await
}

/// Marks a record replayed.
pub async fn mark_replayed<'c>(executor: impl PgExecutor<'c>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE dead_letters SET replayed_at = now(), replay_count = replay_count + 1 WHERE id = $1",
        id,
    )
    .execute(executor)
        .await
        .map(|_| ())
}

/// Deletes dead letters matching `filter`; returns how many.
pub async fn purge(pool: &PgPool, filter: &Filter) -> Result<u64, sqlx::Error> {
    // Runtime query: the WHERE clause depends on which filter fields are set.
    let mut q = QueryBuilder::new("DELETE FROM dead_letters");
    push_filter(&mut q, filter);
    Ok(q.build().execute(pool).await?.rows_affected())
}

/// What an erased user's dead letters keep of their payload.
pub const ERASED_PAYLOAD: &[u8] = br#"{"erased":true}"#;

/// Scrubs the dead letters of an erased user in the caller's transaction:
/// the payload (address and content) and the error texts (a provider's
/// error may quote the address) go; ids, classes, counts and times stay for
/// the operator's record. Answers how many were scrubbed.
pub async fn erase_user(
    db: impl PgExecutor<'_>,
    tenant: &str,
    user: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE dead_letters
         SET payload = $3, last_error = 'erased with its user',
             headers = headers - 'x-herald-error'
         WHERE tenant_id = $1 AND user_id = $2",
        tenant,
        user,
        ERASED_PAYLOAD,
    )
    .execute(db)
    .await?
    .rows_affected())
}
