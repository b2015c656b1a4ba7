//! The suppression list: a tenant's addresses that must not be tried again.
//! The router reads it with the recipients (db::routing); these are the
//! list's own reads and writes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};

use crate::model::suppression::{SuppressedAddress, SuppressionReason};

/// A suppression as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SuppressionRow {
    pub tenant_id: String,
    pub channel: String,
    pub address: String,
    pub reason: String,
    pub source: String,
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What adds a suppression.
#[derive(Debug, Clone)]
pub struct NewSuppression<'a> {
    pub tenant_id: &'a str,
    pub address: &'a SuppressedAddress,
    pub reason: SuppressionReason,
    pub source: &'a str,
    pub detail: Option<&'a str>,
}

/// Adds a suppression, or replaces the reason, source and detail of the one
/// there (the time stays the first one's: it says since when the address is
/// suppressed). Answers whether it was new.
pub async fn put(db: impl PgExecutor<'_>, s: &NewSuppression<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"INSERT INTO suppressions (tenant_id, channel, address, reason, source, detail)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, channel, address) DO UPDATE
            SET reason = EXCLUDED.reason, source = EXCLUDED.source, detail = EXCLUDED.detail
         RETURNING (xmax = 0) AS "created!""#,
        s.tenant_id,
        s.address.channel().as_str(),
        s.address.as_str(),
        s.reason.as_str(),
        s.source,
        s.detail,
    )
    .fetch_one(db)
    .await
}

/// Adds a suppression unless the address is suppressed already (a provider's
/// receipt never overwrites an operator's note). Answers whether it was new.
pub async fn add_if_absent(
    db: impl PgExecutor<'_>,
    s: &NewSuppression<'_>,
) -> Result<bool, sqlx::Error> {
    let added = sqlx::query!(
        "INSERT INTO suppressions (tenant_id, channel, address, reason, source, detail)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        s.tenant_id,
        s.address.channel().as_str(),
        s.address.as_str(),
        s.reason.as_str(),
        s.source,
        s.detail,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(added > 0)
}

/// One suppression.
pub async fn get(
    pool: &PgPool,
    tenant: &str,
    address: &SuppressedAddress,
) -> Result<Option<SuppressionRow>, sqlx::Error> {
    sqlx::query_as!(
        SuppressionRow,
        "SELECT tenant_id, channel, address, reason, source, detail, created_at FROM suppressions
         WHERE tenant_id = $1 AND channel = $2 AND address = $3",
        tenant,
        address.channel().as_str(),
        address.as_str(),
    )
    .fetch_optional(pool)
    .await
}

/// Removes a suppression; answers whether there was one.
pub async fn remove(
    pool: &PgPool,
    tenant: &str,
    address: &SuppressedAddress,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND address = $3",
        tenant,
        address.channel().as_str(),
        address.as_str(),
    )
    .execute(pool)
    .await?
    .rows_affected()
        > 0)
}

/// Which suppressions a listing takes.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// One tenant; `None` for all (operators only).
    pub tenant: Option<&'a str>,
    /// One channel.
    pub channel: Option<&'a str>,
    /// After this (tenant, channel, address) in key order: the previous
    /// page's last.
    pub after: Option<(&'a str, &'a str, &'a str)>,
}

/// A page of suppressions in key order (tenant, channel, address): a range
/// of the primary key, however long the list.
pub async fn list(
    pool: &PgPool,
    filter: &Filter<'_>,
    limit: i64,
) -> Result<Vec<SuppressionRow>, sqlx::Error> {
    let (after_tenant, after_channel, after_address) = match filter.after {
        Some((t, c, a)) => (Some(t), Some(c), Some(a)),
        None => (None, None, None),
    };
    sqlx::query_as!(
        SuppressionRow,
        "SELECT tenant_id, channel, address, reason, source, detail, created_at FROM suppressions
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR channel = $2)
           AND ($3::text IS NULL OR (tenant_id, channel, address) > ($3, $4, $5))
         ORDER BY tenant_id, channel, address LIMIT $6",
        filter.tenant,
        filter.channel,
        after_tenant,
        after_channel,
        after_address,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// How many suppressions a tenant (or every tenant) has, per reason.
pub async fn count_by_reason(
    pool: &PgPool,
    tenant: Option<&str>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT reason, count(*) AS "count!" FROM suppressions
           WHERE ($1::text IS NULL OR tenant_id = $1)
           GROUP BY reason ORDER BY reason"#,
        tenant,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.reason, r.count)).collect())
}
