//! Recent activity for operators (`heraldctl stats`, the admin overview):
//! deliveries by status, deliveries per minute, dead letters by class.
//!
//! These read the live tables, so they are bounded: deliveries are counted on
//! the partitions of the window's days only (today's, and yesterday's during
//! the first part of a day), and every query gives up after a few seconds
//! rather than compete with the pipeline. At the reference load the metrics
//! (`herald_deliveries_total`) are the better source; these answer "what is
//! happening right now" on any installation without Prometheus.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// Starts an activity transaction whose statements give up after
/// 5 s: an overview that times out is better than one that slows the
/// workers' claims.
async fn bounded(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET LOCAL statement_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

// The deliveries queries below bound the partitions they read the same way:
// deliveries of notifications accepted since the start of the UTC day the
// window starts in (`created_at >= date_trunc('day', ...)`). Held deliveries
// of older notifications released within the window are not counted.

/// A count per key (a status or an error class).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Count {
    pub key: String,
    pub count: i64,
}

/// Deliveries per status, among those updated within `window`.
pub async fn deliveries_by_status(
    pool: &PgPool,
    window: Duration,
) -> Result<Vec<Count>, sqlx::Error> {
    let mut tx = bounded(pool).await?;
    let rows = sqlx::query_as!(
        Count,
        r#"SELECT status AS "key!", count(*) AS "count!" FROM deliveries
           WHERE created_at >= date_trunc('day', (now() - make_interval(secs => $1)) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             AND updated_at >= now() - make_interval(secs => $1)
           GROUP BY status ORDER BY count(*) DESC, status"#,
        window.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Deliveries updated in one minute, with the status they reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct MinuteCount {
    pub minute: DateTime<Utc>,
    pub status: String,
    pub count: i64,
}

/// Deliveries per minute and status over `window` (by `updated_at`), oldest
/// minute first.
pub async fn deliveries_per_minute(
    pool: &PgPool,
    window: Duration,
) -> Result<Vec<MinuteCount>, sqlx::Error> {
    let mut tx = bounded(pool).await?;
    let rows = sqlx::query_as!(
        MinuteCount,
        r#"SELECT date_trunc('minute', updated_at) AS "minute!", status AS "status!",
                  count(*) AS "count!"
           FROM deliveries
           WHERE created_at >= date_trunc('day', (now() - make_interval(secs => $1)) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             AND updated_at >= now() - make_interval(secs => $1)
           GROUP BY 1, 2 ORDER BY 1, 2"#,
        window.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Dead letters per error class that failed within `window`.
pub async fn dead_letters_by_class(
    pool: &PgPool,
    window: Duration,
) -> Result<Vec<Count>, sqlx::Error> {
    let mut tx = bounded(pool).await?;
    let rows = sqlx::query_as!(
        Count,
        r#"SELECT error_class AS "key!", count(*) AS "count!" FROM dead_letters
           WHERE failed_at >= now() - make_interval(secs => $1)
           GROUP BY error_class ORDER BY count(*) DESC, error_class"#,
        window.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
