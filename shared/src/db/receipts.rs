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
    let new = sqlx::query_scalar!(
        r#"WITH ins AS (
             INSERT INTO receipts (provider, event_id, event, delivery_created_at, delivery_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM ins) AS "new!""#,
        receipt.provider,
        receipt.event_id,
        receipt.event,
        receipt.delivery.map(|d| d.created_at),
        receipt.delivery.map(|d| d.id),
        receipt.reason,
    )
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
    let row = sqlx::query!(
        "SELECT tenant_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND id = $2 FOR UPDATE",
        d.created_at,
        d.id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| (r.tenant_id, r.channel, r.destination, r.status));
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
        sqlx::query!(
            "UPDATE deliveries SET status = $3, receipt_at = now(), receipt_reason = $4, updated_at = now()
             WHERE created_at = $1 AND id = $2",
            d.created_at,
            d.id,
            to.as_str(),
            receipt.reason,
        )
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
    sqlx::query!(
        "UPDATE receipts SET tenant_id = $3, status = $4 WHERE provider = $1 AND event_id = $2",
        receipt.provider,
        receipt.event_id,
        tenant,
        moved,
    )
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
    let rows = sqlx::query!(
        r#"SELECT provider, COALESCE(status, 'recorded') AS "status!", count(*) AS "count!"
           FROM receipts
           WHERE received_at > now() - make_interval(secs => $1)
           GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"#,
        window.as_secs_f64(),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.provider, r.status, r.count))
        .collect())
}

/// Deletes receipts older than `days`; answers how many.
pub async fn purge_older_than(pool: &PgPool, days: i32) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM receipts WHERE received_at < now() - make_interval(days => $1)",
        days,
    )
    .execute(pool)
    .await?
    .rows_affected())
}
