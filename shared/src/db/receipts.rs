//! Applying provider receipts: once per provider event id, in one
//! transaction with the delivery's new status and the suppression it adds.

use sqlx::PgPool;

use super::suppressions::{self, NewSuppression};
use crate::{
    model::{Channel, suppression::SuppressedAddress},
    receipts::Receipt,
};

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `applied` (moved a delivery on), `recorded` (changed no status) or
    /// `duplicate` (its event id was seen before: nothing changed).
    pub outcome: &'static str,
    /// The suppression it added: (channel, reason), when it added one.
    pub suppressed: Option<(Channel, crate::model::suppression::SuppressionReason)>,
}

/// Applies `receipt`: records its event id (a second one changes nothing),
/// moves its delivery on when the delivery is in a status the receipt moves
/// from, and adds the delivery's address to the tenant's suppression list
/// when the receipt says so.
pub async fn apply(pool: &PgPool, receipt: &Receipt) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let new: bool = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO receipts (provider, event_id, event, delivery_created_at, delivery_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(receipt.provider)
    .bind(&receipt.event_id)
    .bind(&receipt.event)
    .bind(receipt.delivery.map(|d| d.created_at))
    .bind(receipt.delivery.map(|d| d.id))
    .bind(&receipt.reason)
    .fetch_one(&mut *tx)
    .await?;
    if !new {
        return Ok(Applied {
            outcome: "duplicate",
            suppressed: None,
        });
    }
    let Some(d) = receipt.delivery else {
        tx.commit().await?;
        return Ok(Applied {
            outcome: "recorded",
            suppressed: None,
        });
    };
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT tenant_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND id = $2 FOR UPDATE",
    )
    .bind(d.created_at)
    .bind(d.id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tenant, channel, destination, status)) = row else {
        tx.commit().await?;
        return Ok(Applied {
            outcome: "recorded",
            suppressed: None,
        });
    };
    let mut moved = None;
    if let Some(to) = receipt.status
        && to.moves_from().contains(&status.as_str())
    {
        sqlx::query(
            "UPDATE deliveries SET status = $3, receipt_at = now(), receipt_reason = $4, updated_at = now()
             WHERE created_at = $1 AND id = $2",
        )
        .bind(d.created_at)
        .bind(d.id)
        .bind(to.as_str())
        .bind(&receipt.reason)
        .execute(&mut *tx)
        .await?;
        moved = Some(to.as_str());
    }
    let mut suppressed = None;
    if let (Some(reason), Ok(channel)) = (receipt.suppress, channel.parse::<Channel>())
        && let Ok(address) = SuppressedAddress::parse(channel, &destination)
    {
        let added = suppressions::add_if_absent(
            &mut *tx,
            &NewSuppression {
                tenant_id: &tenant,
                address: &address,
                reason,
                source: receipt.provider,
                detail: receipt.reason.as_deref(),
            },
        )
        .await?;
        if added {
            suppressed = Some((channel, reason));
        }
    }
    sqlx::query(
        "UPDATE receipts SET tenant_id = $3, status = $4 WHERE provider = $1 AND event_id = $2",
    )
    .bind(receipt.provider)
    .bind(&receipt.event_id)
    .bind(&tenant)
    .bind(moved)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Applied {
        outcome: if moved.is_some() {
            "applied"
        } else {
            "recorded"
        },
        suppressed,
    })
}

/// Receipts received in the last `window`, per provider and the status
/// each moved its delivery to (`recorded` when none), most first.
pub async fn counts(
    pool: &PgPool,
    window: std::time::Duration,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT provider, COALESCE(status, 'recorded'), count(*) FROM receipts
         WHERE received_at > now() - make_interval(secs => $1)
         GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
    )
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Deletes receipts older than `days`; answers how many.
pub async fn purge_older_than(pool: &PgPool, days: i32) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM receipts WHERE received_at < now() - make_interval(days => $1)")
            .bind(days)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
