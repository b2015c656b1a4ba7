//! Idempotency records: the same key with the same body answers the first
//! response again for 24 hours; with another body, a conflict.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// How long a key is remembered (PRODUCT.md).
pub const RETENTION_HOURS: i64 = 24;

/// The record already stored under a key.
#[derive(Debug, sqlx::FromRow)]
pub struct Existing {
    pub request_hash: Vec<u8>,
    pub response_status: i32,
    pub response_body: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Outcome of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours: the caller goes on and its response is stored.
    Fresh,
    /// The key was used within 24 h.
    Taken(Existing),
}

/// Claims `key` for a request inside the caller's transaction, storing the
/// response it will get. A concurrent claim of the same key waits for ours.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    key: &str,
    request_hash: &[u8],
    response_status: i32,
    response_body: &serde_json::Value,
) -> Result<Claim, sqlx::Error> {
    let fresh: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response_status, response_body)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
             response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
             created_at = now(), completed_at = NULL
         WHERE idempotency_keys.created_at < now() - make_interval(hours => $6)
         RETURNING true",
    )
    .bind(tenant)
    .bind(key)
    .bind(request_hash)
    .bind(response_status)
    .bind(response_body)
    .bind(RETENTION_HOURS as i32)
    .fetch_optional(&mut **tx)
    .await?;
    if fresh.is_some() {
        return Ok(Claim::Fresh);
    }
    let existing = sqlx::query_as(
        "SELECT request_hash, response_status, response_body, created_at, completed_at
         FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Claim::Taken(existing))
}

/// Marks a key's request as durable: later replays may answer it.
pub async fn complete(pool: &PgPool, tenant: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET completed_at = now() WHERE tenant_id = $1 AND key = $2",
    )
    .bind(tenant)
    .bind(key)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Forgets a key whose request failed, so the client's retry starts afresh.
pub async fn release(pool: &PgPool, tenant: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2")
        .bind(tenant)
        .bind(key)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Deletes records past retention; returns how many.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(RETENTION_HOURS as i32)
    .execute(pool)
    .await?
    .rows_affected())
}
