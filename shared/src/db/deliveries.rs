//! Deliveries: written by the router in batches, claimed and settled by the
//! channel workers, released by the deferred-delivery scheduler.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// How long a claimed delivery is held before another worker may take it
/// over: well past the provider timeout, so a slow call is never doubled.
pub const CLAIM_LEASE: Duration = Duration::from_secs(120);

/// A delivery row to insert.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub user_id: String,
    pub channel: &'static str,
    pub destination: String,
    pub platform: Option<&'static str>,
    pub status: &'static str,
    pub reason: Option<String>,
    /// Kept only for deferred deliveries: pending ones carry their content in
    /// the broker message, and storing it for a billion rows a day is waste.
    pub rendered: Option<serde_json::Value>,
    pub not_before: Option<DateTime<Utc>>,
}

/// The notification-level columns shared by a batch of deliveries.
#[derive(Debug, Clone)]
pub struct BatchOf<'a> {
    pub created_at: DateTime<Utc>,
    pub notification_id: Uuid,
    pub tenant_id: &'a str,
    pub lane: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts deliveries in one statement; rows already there (same
/// notification, user, channel, destination) are left as they are.
pub async fn insert_batch(
    pool: &PgPool,
    of: &BatchOf<'_>,
    rows: &[NewDelivery],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let channels: Vec<&str> = rows.iter().map(|r| r.channel).collect();
    let destinations: Vec<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
    let platforms: Vec<Option<&str>> = rows.iter().map(|r| r.platform).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    let rendered: Vec<Option<serde_json::Value>> =
        rows.iter().map(|r| r.rendered.clone()).collect();
    let not_before: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.not_before).collect();
    let result = sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, lane, expires_at,
             user_id, channel, destination, platform, status, reason, rendered, not_before)
         SELECT u.id, $1, $2, $3, $4, $5, u.user_id, u.channel, u.destination, u.platform, u.status,
                u.reason, u.rendered, u.not_before
         FROM UNNEST($6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::jsonb[], $14::timestamptz[])
              AS u(id, user_id, channel, destination, platform, status, reason, rendered, not_before)
         ON CONFLICT (created_at, notification_id, user_id, channel, destination) DO NOTHING",
    )
    .bind(of.created_at)
    .bind(of.notification_id)
    .bind(of.tenant_id)
    .bind(of.lane)
    .bind(of.expires_at)
    .bind(&ids)
    .bind(&users)
    .bind(&channels)
    .bind(&destinations)
    .bind(&platforms)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&rendered)
    .bind(&not_before)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Id and status of a notification's deliveries to some users, as stored:
/// after a redelivered fan-out these are the first attempt's rows.
#[derive(Debug, sqlx::FromRow)]
pub struct Stored {
    pub id: Uuid,
    pub user_id: String,
    pub channel: String,
    pub destination: String,
    pub status: String,
}

/// The stored deliveries of `users` for one notification.
pub async fn stored_for_users(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    notification_id: Uuid,
    users: &[&str],
) -> Result<Vec<Stored>, sqlx::Error> {
    let (Some(first), Some(last)) = (users.iter().min(), users.iter().max()) else {
        return Ok(Vec::new());
    };
    // The range bounds the index scan to this batch's users: a topic page is
    // a contiguous id range, and without them the scan would walk every
    // delivery of the notification (a million for a large topic) per page.
    sqlx::query_as(
        "SELECT id, user_id, channel, destination, status FROM deliveries
         WHERE created_at = $1 AND notification_id = $2 AND user_id >= $3 AND user_id <= $4
           AND user_id = ANY($5)",
    )
    .bind(created_at)
    .bind(notification_id)
    .bind(first)
    .bind(last)
    .bind(users)
    .fetch_all(pool)
    .await
}

/// A deferred delivery that is due.
#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub notification_id: Uuid,
    pub tenant_id: String,
    pub user_id: String,
    pub channel: String,
    pub lane: String,
    pub destination: String,
    pub platform: Option<String>,
    pub rendered: Option<serde_json::Value>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Locks up to `limit` due deferred deliveries for this scheduler pass;
/// other replicas skip them. `rendered IS NOT NULL` selects the partial
/// index `deliveries_held` (held rows are those still keeping content).
pub async fn lock_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, notification_id, tenant_id, user_id, channel, lane, destination,
                platform, rendered, expires_at
         FROM deliveries WHERE rendered IS NOT NULL AND status = 'deferred' AND not_before <= now()
         ORDER BY not_before LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Sets the status of released deliveries and drops their stored content
/// (the released message carries it; `deliveries_held` indexes only rows
/// that still keep theirs).
pub async fn set_status(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[(DateTime<Utc>, Uuid)],
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let created: Vec<DateTime<Utc>> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    sqlx::query(
        "UPDATE deliveries d SET status = $3, reason = COALESCE($4, d.reason), rendered = NULL, updated_at = now()
         FROM UNNEST($1::timestamptz[], $2::uuid[]) AS k(created_at, id)
         WHERE d.created_at = k.created_at AND d.id = k.id",
    )
    .bind(&created)
    .bind(&ids)
    .bind(status)
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// How a claim went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to send; `attempts` counts this one.
    Claimed { attempts: i32 },
    /// Not to be sent: already settled (or being sent by another worker).
    Skip { status: String },
    /// No such delivery.
    Missing,
}

/// The outcome of an attempt, as recorded.
#[derive(Debug, Clone)]
pub enum Settle<'a> {
    Sent {
        provider_id: Option<&'a str>,
    },
    /// Back to pending for a retry; `refund` un-counts the attempt (a
    /// throttle is not the delivery's fault).
    Retry {
        class: &'a str,
        error: &'a str,
        refund: bool,
    },
    Failed {
        class: &'a str,
        error: &'a str,
    },
    Dead {
        class: &'a str,
        error: &'a str,
    },
    Expired,
}

/// Expires a delivery that nobody is sending: still pending, or claimed by
/// a worker whose lease ran out. A delivery another worker is sending right
/// now is left to that worker's outcome.
pub async fn expire_unclaimed(
    pool: &PgPool,
    created_at: DateTime<Utc>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET status = 'expired', reason = 'expired before it could be sent', updated_at = now()
         WHERE created_at = $1 AND id = $2
           AND (status = 'pending'
                OR (status = 'sending' AND claimed_at < now() - make_interval(secs => $3)))",
    )
    .bind(created_at)
    .bind(id)
    .bind(CLAIM_LEASE.as_secs_f64())
    .execute(pool)
    .await
    .map(|_| ())
}

/// Deactivates a device token the provider reported unregistered.
pub async fn deactivate_device(
    pool: &PgPool,
    tenant: &str,
    user: &str,
    token: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE devices SET active = false, deactivated_reason = $4, updated_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND token = $3",
    )
    .bind(tenant)
    .bind(user)
    .bind(token)
    .bind(reason)
    .execute(pool)
    .await
    .map(|_| ())
}

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
    let previous: Option<(String, i32)> = sqlx::query_as(
        "WITH old AS (
             SELECT created_at, id, status, attempts FROM deliveries
             WHERE created_at = $1 AND id = $2 FOR UPDATE)
         UPDATE deliveries d SET status = 'pending', attempts = 0, claimed_at = NULL,
                claim_token = NULL, updated_at = now()
         FROM old
         WHERE d.created_at = old.created_at AND d.id = old.id AND old.status = ANY($3)
           AND (old.status <> 'sending' OR d.claimed_at < now() - make_interval(secs => $4))
         RETURNING old.status, old.attempts",
    )
    .bind(created_at)
    .bind(id)
    .bind(&REPLAYABLE[..])
    .bind(CLAIM_LEASE.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    if let Some((previous_status, previous_attempts)) = previous {
        return Ok(Reset::Done {
            previous_status,
            previous_attempts,
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
    sqlx::query(
        "UPDATE deliveries SET status = $3, attempts = $4, updated_at = now()
         WHERE created_at = $1 AND id = $2 AND status = 'pending'",
    )
    .bind(created_at)
    .bind(id)
    .bind(status)
    .bind(attempts)
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
    sqlx::query_scalar("SELECT status FROM deliveries WHERE created_at = $1 AND id = $2")
        .bind(created_at)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// One claim request of a batch.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
    pub redelivered: bool,
    /// Names this claim: a retry of it after a lost answer is recognised,
    /// and only its holder records the outcome.
    pub token: Uuid,
}

/// Claims deliveries before calling the provider, so a message delivered
/// twice is sent once: many in one statement (one commit for all), answering
/// per request in order. The statement is `herald_claim_deliveries` (its
/// migration says why the batch is a loop of primary-key updates). A
/// `sending` row is taken over only when the broker redelivered the message
/// (its previous holder's channel closed), its lease ran out, or it is this
/// same claim retried. A delivery asked for twice in one batch is claimed for
/// the first request only.
pub async fn claim_many(
    pool: &PgPool,
    requests: &[ClaimRequest],
    lease: Duration,
) -> Result<Vec<Claim>, sqlx::Error> {
    // Each delivery once: the function must not claim a row twice in one
    // batch (the second copy would take over the first one's claim).
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = requests.iter().map(|r| seen.insert(r.id)).collect();
    let (mut created, mut ids, mut redelivered, mut tokens) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, _) in requests.iter().zip(&first).filter(|(_, first)| **first) {
        created.push(r.created_at);
        ids.push(r.id);
        redelivered.push(r.redelivered);
        tokens.push(r.token);
    }
    let rows: Vec<(bool, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT claimed, attempts, status FROM herald_claim_deliveries($1, $2, $3, $4, $5)",
    )
    .bind(&created)
    .bind(&ids)
    .bind(&redelivered)
    .bind(lease.as_secs_f64())
    .bind(&tokens)
    .fetch_all(pool)
    .await?;
    let mut answers = rows.into_iter();
    Ok(first
        .iter()
        .map(|first| {
            if !first {
                // The same delivery twice in one batch: claimed for the first.
                return Claim::Skip {
                    status: "sending".into(),
                };
            }
            match answers.next() {
                Some((true, Some(attempts), _)) => Claim::Claimed { attempts },
                Some((false, _, Some(status))) => Claim::Skip { status },
                _ => Claim::Missing,
            }
        })
        .collect())
}

/// An outcome to record, owned, for a batch.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
    pub status: &'static str,
    pub class: Option<String>,
    pub error: Option<String>,
    pub provider_id: Option<String>,
    pub refund: bool,
    /// The claim this outcome belongs to.
    pub token: Uuid,
}

impl SettleRequest {
    /// The request recording `outcome` on a delivery claimed with `token`.
    pub fn new(created_at: DateTime<Utc>, id: Uuid, token: Uuid, outcome: &Settle<'_>) -> Self {
        let (status, class, error, provider_id, refund) = match outcome {
            Settle::Sent { provider_id } => {
                ("sent", None, None, provider_id.map(str::to_owned), false)
            }
            Settle::Retry {
                class,
                error,
                refund,
            } => ("pending", Some(*class), Some(*error), None, *refund),
            Settle::Failed { class, error } => ("failed", Some(*class), Some(*error), None, false),
            Settle::Dead { class, error } => ("dead", Some(*class), Some(*error), None, false),
            Settle::Expired => (
                "expired",
                None,
                Some("expired before it could be sent"),
                None,
                false,
            ),
        };
        Self {
            created_at,
            id,
            status,
            class: class.map(str::to_owned),
            error: error.map(str::to_owned),
            provider_id,
            refund,
            token,
        }
    }
}

/// Records many outcomes in one statement (one commit for all), through
/// `herald_settle_deliveries`; each only while its claim still holds the
/// row. Answers how many were recorded.
pub async fn settle_many(pool: &PgPool, requests: &[SettleRequest]) -> Result<i32, sqlx::Error> {
    let created: Vec<DateTime<Utc>> = requests.iter().map(|r| r.created_at).collect();
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = requests.iter().map(|r| r.status).collect();
    let classes: Vec<Option<&str>> = requests.iter().map(|r| r.class.as_deref()).collect();
    let errors: Vec<Option<&str>> = requests.iter().map(|r| r.error.as_deref()).collect();
    let provider_ids: Vec<Option<&str>> =
        requests.iter().map(|r| r.provider_id.as_deref()).collect();
    let refunds: Vec<bool> = requests.iter().map(|r| r.refund).collect();
    let tokens: Vec<Uuid> = requests.iter().map(|r| r.token).collect();
    sqlx::query_scalar("SELECT herald_settle_deliveries($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&created)
        .bind(&ids)
        .bind(&statuses)
        .bind(&classes)
        .bind(&errors)
        .bind(&provider_ids)
        .bind(&refunds)
        .bind(&tokens)
        .fetch_one(pool)
        .await
}
