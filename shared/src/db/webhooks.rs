//! Webhook endpoints of a tenant: written by the API, read and marked
//! (failing, disabled) by the sender in the router.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One endpoint as stored. Its `Debug` leaves the secrets out.
#[derive(Clone, sqlx::FromRow)]
pub struct Webhook {
    pub tenant_id: String,
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("tenant_id", &self.tenant_id)
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// A checked `query_as!` into `$row` of `$head`, the [`Webhook`] columns,
/// then `$tail`: one column list for every query that answers endpoints.
/// (`query_as!` takes string literals only, so the list cannot be a `const`.)
macro_rules! with_webhook_columns {
    ($row:ident, $head:tt, $tail:tt $($args:tt)*) => {
        sqlx::query_as!(
            $row,
            $head
                + "tenant_id, id, url, events, secret, previous_secret, previous_until,
                   failing_since, disabled_at, created_at, updated_at "
                + $tail
            $($args)*
        )
    };
}

/// Creates the endpoint with `secret`, or replaces its URL and filters
/// (keeping its secret, and enabling it again if it was disabled). Answers
/// the row and whether it was created.
pub async fn put(
    pool: &PgPool,
    tenant: &str,
    id: &str,
    url: &str,
    events: &[String],
    secret: &str,
) -> Result<(Webhook, bool), sqlx::Error> {
    // The endpoint's columns and whether the insert created it.
    struct Put {
        tenant_id: String,
        id: String,
        url: String,
        events: Vec<String>,
        secret: String,
        previous_secret: Option<String>,
        previous_until: Option<DateTime<Utc>>,
        failing_since: Option<DateTime<Utc>>,
        disabled_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        created: bool,
    }
    let r = with_webhook_columns!(
        Put,
        "INSERT INTO webhooks (tenant_id, id, url, events, secret) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, id) DO UPDATE
           SET url = EXCLUDED.url, events = EXCLUDED.events, failing_since = NULL,
               disabled_at = NULL, updated_at = now()
         RETURNING ",
        r#", (xmax = 0) AS "created!""#,
        tenant,
        id,
        url,
        events,
        secret,
    )
    .fetch_one(pool)
    .await?;
    let row = Webhook {
        tenant_id: r.tenant_id,
        id: r.id,
        url: r.url,
        events: r.events,
        secret: r.secret,
        previous_secret: r.previous_secret,
        previous_until: r.previous_until,
        failing_since: r.failing_since,
        disabled_at: r.disabled_at,
        created_at: r.created_at,
        updated_at: r.updated_at,
    };
    Ok((row, r.created))
}

/// One endpoint of the tenant.
pub async fn get(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<Webhook>, sqlx::Error> {
    with_webhook_columns!(
        Webhook,
        "SELECT ",
        "FROM webhooks WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Every endpoint of the tenant, by id.
pub async fn list(pool: &PgPool, tenant: &str) -> Result<Vec<Webhook>, sqlx::Error> {
    with_webhook_columns!(
        Webhook,
        "SELECT ",
        "FROM webhooks WHERE tenant_id = $1 ORDER BY id",
        tenant,
    )
    .fetch_all(pool)
    .await
}

/// The enabled endpoints of these tenants (the relay filters them by event).
pub async fn enabled_for(pool: &PgPool, tenants: &[&str]) -> Result<Vec<Webhook>, sqlx::Error> {
    with_webhook_columns!(
        Webhook,
        "SELECT ",
        "FROM webhooks
         WHERE tenant_id = ANY($1) AND disabled_at IS NULL ORDER BY tenant_id, id",
        tenants as &[&str],
    )
    .fetch_all(pool)
    .await
}

/// Deletes an endpoint; whether it existed.
pub async fn delete(pool: &PgPool, tenant: &str, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2",
        tenant,
        id,
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Replaces the secret; the old one keeps signing until `overlap` from now.
pub async fn rotate(
    pool: &PgPool,
    tenant: &str,
    id: &str,
    secret: &str,
    overlap_secs: i64,
) -> Result<Option<Webhook>, sqlx::Error> {
    with_webhook_columns!(
        Webhook,
        "UPDATE webhooks SET previous_secret = secret, secret = $3,
                previous_until = now() + make_interval(secs => $4), updated_at = now()
         WHERE tenant_id = $1 AND id = $2 RETURNING ",
        "",
        tenant,
        id,
        secret,
        overlap_secs as f64,
    )
    .fetch_optional(pool)
    .await
}

/// Records a success: the endpoint is no longer failing.
pub async fn succeeded(pool: &PgPool, tenant: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE webhooks SET failing_since = NULL
         WHERE tenant_id = $1 AND id = $2 AND failing_since IS NOT NULL",
        tenant,
        id,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// When an endpoint was disabled, and since when it had been failing.
#[derive(Debug, Clone, Copy)]
pub struct Disabled {
    pub failing_since: DateTime<Utc>,
    pub disabled_at: DateTime<Utc>,
}

/// Records a failure; disables the endpoint when it has been failing for
/// longer than `disable_after_secs`. Answers when, if this call disabled it.
pub async fn failed(
    pool: &PgPool,
    tenant: &str,
    id: &str,
    disable_after_secs: f64,
) -> Result<Option<Disabled>, sqlx::Error> {
    let row = sqlx::query!(
        r#"UPDATE webhooks
            SET failing_since = COALESCE(failing_since, now()),
                disabled_at = CASE
                    WHEN disabled_at IS NULL
                     AND COALESCE(failing_since, now()) <= now() - make_interval(secs => $3)
                    THEN now() ELSE disabled_at END
          WHERE tenant_id = $1 AND id = $2
         RETURNING disabled_at IS NOT NULL AND disabled_at = now() AS "now!", failing_since,
                   disabled_at"#,
        tenant,
        id,
        disable_after_secs,
    )
    .fetch_optional(pool)
    .await?
    .map(|r| (r.now, r.failing_since, r.disabled_at));
    Ok(match row {
        Some((true, Some(failing_since), Some(disabled_at))) => Some(Disabled {
            failing_since,
            disabled_at,
        }),
        _ => None,
    })
}

/// What the admin page lists: every tenant's endpoints, optionally one
/// tenant's or only active or disabled ones, in (tenant, id) order after
/// `after`.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub tenant: Option<&'a str>,
    /// `Some(true)`: only disabled endpoints; `Some(false)`: only active ones.
    pub disabled: Option<bool>,
    /// Continue after this (tenant, id).
    pub after: Option<(&'a str, &'a str)>,
}

/// Up to `limit` endpoints of any tenant matching `filter` (admin page).
pub async fn list_all(
    pool: &PgPool,
    filter: &Filter<'_>,
    limit: i64,
) -> Result<Vec<Webhook>, sqlx::Error> {
    let (after_tenant, after_id) = filter.after.unzip();
    with_webhook_columns!(
        Webhook,
        "SELECT ",
        "FROM webhooks
         WHERE ($1::text IS NULL OR tenant_id = $1)
           AND ($2::bool IS NULL OR (disabled_at IS NOT NULL) = $2)
           AND ($3::text IS NULL OR (tenant_id, id) > ($3, $4::text))
         ORDER BY tenant_id, id LIMIT $5",
        filter.tenant,
        filter.disabled,
        after_tenant,
        after_id,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Enables a disabled endpoint again (as the API's PUT does): it is no
/// longer disabled nor failing. Answers whether it was disabled.
pub async fn enable(pool: &PgPool, tenant: &str, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE webhooks SET disabled_at = NULL, failing_since = NULL, updated_at = now()
         WHERE tenant_id = $1 AND id = $2 AND disabled_at IS NOT NULL",
        tenant,
        id,
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}
