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

/// Forgets a key whose request failed, so the client's retry starts afresh.
pub async fn release(pool: &PgPool, tenant: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant,
        key,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Deletes records past retention; returns how many.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        RETENTION_HOURS as i32,
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// A key a request claims: the request's hash and the response it will get.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub tenant: String,
    pub key: String,
    pub request_hash: Vec<u8>,
    pub response_status: i32,
    pub response_body: serde_json::Value,
}

/// Claims many keys in the caller's transaction (one statement for a group
/// of requests); answers the (tenant, key) pairs claimed fresh. Keys must be
/// distinct within the call. Any other key was used within 24 h: see
/// [`existing_many`].
pub async fn claim_many(
    tx: &mut Transaction<'_, Postgres>,
    claims: &[KeyClaim],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let tenants: Vec<&str> = claims.iter().map(|c| c.tenant.as_str()).collect();
    let keys: Vec<&str> = claims.iter().map(|c| c.key.as_str()).collect();
    let hashes: Vec<&[u8]> = claims.iter().map(|c| c.request_hash.as_slice()).collect();
    let statuses: Vec<i32> = claims.iter().map(|c| c.response_status).collect();
    let bodies: Vec<&serde_json::Value> = claims.iter().map(|c| &c.response_body).collect();
    let rows = sqlx::query!(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response_status, response_body)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::int[], $5::jsonb[])
         ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
             response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
             created_at = now(), completed_at = NULL
         WHERE idempotency_keys.created_at < now() - make_interval(hours => $6)
         RETURNING tenant_id, key",
        &tenants as &[&str],
        &keys as &[&str],
        &hashes as &[&[u8]],
        &statuses,
        &bodies as &[&serde_json::Value],
        RETENTION_HOURS as i32,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.tenant_id, r.key)).collect())
}

/// The records stored under (tenant, key) pairs, with their pair.
pub async fn existing_many(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &[(&str, &str)],
) -> Result<Vec<(String, String, Existing)>, sqlx::Error> {
    let tenants: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let keys: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    let rows = sqlx::query!(
        "SELECT tenant_id, key, request_hash, response_status, response_body, created_at, completed_at
         FROM idempotency_keys WHERE (tenant_id, key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        &tenants as &[&str],
        &keys as &[&str],
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let existing = Existing {
                request_hash: r.request_hash,
                response_status: r.response_status,
                response_body: r.response_body,
                created_at: r.created_at,
                completed_at: r.completed_at,
            };
            (r.tenant_id, r.key, existing)
        })
        .collect())
}
