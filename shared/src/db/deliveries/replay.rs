//! Replay's side: a dead delivery set back to `pending` before its message
//! is published again.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::CLAIM_LEASE;

/// What resetting a delivery for a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// Now `pending` with no attempts; what it was before, to restore it if
    /// the replay's publish fails.
    Done {
        previous_status: String,
        previous_attempts: i32,
    },
    /// Left alone: `sent`, `expired`, `suppressed` or `deferred` must not be
    /// sent again (or is still held by the scheduler).
    Kept { status: String },
    /// No such delivery (its partition was dropped).
    Missing,
}

/// Statuses a replayed delivery may be taken back from: given up on
/// (`dead`, `failed`) or stranded (`pending`, or `sending` by a worker whose
/// claim lease ran out: one still within its lease may be mid-call).
const REPLAYABLE: [&str; 4] = ["dead", "failed", "sending", "pending"];

/// Puts a delivery back to `pending` with no attempts, so the worker's claim
/// accepts the replayed message. Commits before the message is published:
/// a worker must never see the message before the row.
pub async fn reset_for_replay(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    id: Uuid,
) -> Result<Reset, sqlx::Error> {
    let previous = sqlx::query!(
        r#"WITH old AS (
             SELECT created_at, id, status, attempts FROM deliveries
             WHERE created_at = $1 AND id = $2 FOR UPDATE)
         UPDATE deliveries d SET status = 'pending', attempts = 0, claimed_at = NULL,
                claim_token = NULL, updated_at = now()
         FROM old
         WHERE d.created_at = old.created_at AND d.id = old.id AND old.status = ANY($3)
           AND (old.status <> 'sending' OR d.claimed_at < now() - make_interval(secs => $4))
         RETURNING old.status AS "status!", old.attempts AS "attempts!""#,
        created_at,
        id,
        &REPLAYABLE[..] as &[&str],
        CLAIM_LEASE.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    if let Some(previous) = previous {
        return Ok(Reset::Done {
            previous_status: previous.status,
            previous_attempts: previous.attempts,
        });
    }
    Ok(match status_of(pool, created_at, id).await? {
        Some(status) => Reset::Kept { status },
        None => Reset::Missing,
    })
}

/// Whether a delivery in `status` would be reset by [`reset_for_replay`].
pub fn replayable(status: &str) -> bool {
    REPLAYABLE.contains(&status)
}

/// Undoes [`reset_for_replay`] after the publish failed, unless a worker has
/// touched the row since: a `pending` row without a message would otherwise
/// stay pending forever.
pub async fn restore_after_replay(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    id: Uuid,
    status: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE deliveries SET status = $3, attempts = $4, updated_at = now()
         WHERE created_at = $1 AND id = $2 AND status = 'pending'",
        created_at,
        id,
        status,
        attempts,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// The status of one delivery, if it exists.
pub async fn status_of(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT status FROM deliveries WHERE created_at = $1 AND id = $2",
        created_at,
        id,
    )
    .fetch_optional(pool)
    .await
}
