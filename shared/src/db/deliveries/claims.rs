//! The workers' side: claims before the provider call, outcomes after it,
//! expiry of what was never sent, deactivated device tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a claimed delivery is held before another worker may take it
/// over: well past the provider timeout, so a slow call is never doubled.
pub const CLAIM_LEASE: Duration = Duration::from_secs(120);

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
    sqlx::query!(
        "UPDATE deliveries SET status = 'expired', reason = 'expired before it could be sent', updated_at = now()
         WHERE created_at = $1 AND id = $2
           AND (status = 'pending'
                OR (status = 'sending' AND claimed_at < now() - make_interval(secs => $3)))",
        created_at,
        id,
        CLAIM_LEASE.as_secs_f64(),
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// The push delivery whose provider reported its token unregistered.
#[derive(Debug, Clone, Copy)]
pub struct Unregistered<'a> {
    /// `fcm` or `apns`.
    pub provider: &'a str,
    pub tenant: &'a str,
    pub user: &'a str,
    pub token: &'a str,
    pub reason: &'a str,
    pub created_at: DateTime<Utc>,
    pub delivery_id: Uuid,
}

/// Deactivates a device token the provider reported unregistered (FCM
/// `UNREGISTERED`, APNs 410), and keeps that answer as the delivery's
/// receipt (event `unregistered`), in one statement. The delivery itself is
/// recorded `failed` by the worker: the answer came to the send itself,
/// not after it (docs/receipts.md).
pub async fn deactivate_device(pool: &PgPool, u: &Unregistered<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH receipt AS (
             INSERT INTO receipts (provider, event_id, event, tenant_id, delivery_created_at, delivery_id, reason)
             VALUES ($5, $7::uuid::text || ':unregistered', 'unregistered', $1, $6, $7, $4)
             ON CONFLICT DO NOTHING)
         UPDATE devices SET active = false, deactivated_reason = $4, updated_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND token = $3",
        u.tenant,
        u.user,
        u.token,
        u.reason,
        u.provider,
        u.created_at,
        u.delivery_id,
    )
    .execute(pool)
    .await
    .map(|_| ())
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
    let rows = sqlx::query!(
        r#"SELECT claimed AS "claimed!", attempts, status
           FROM herald_claim_deliveries($1, $2, $3, $4, $5)"#,
        &created,
        &ids,
        &redelivered,
        lease.as_secs_f64(),
        &tokens,
    )
    .fetch_all(pool)
    .await?;
    let mut answers = rows.into_iter().map(|r| (r.claimed, r.attempts, r.status));
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
    sqlx::query_scalar!(
        r#"SELECT herald_settle_deliveries($1, $2, $3, $4, $5, $6, $7, $8) AS "recorded!""#,
        &created,
        &ids,
        &statuses as &[&str],
        &classes as &[Option<&str>],
        &errors as &[Option<&str>],
        &provider_ids as &[Option<&str>],
        &refunds,
        &tokens,
    )
    .fetch_one(pool)
    .await
}
