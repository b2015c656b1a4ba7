//! The workers' side: claims before the provider call, outcomes after it,
//! expiry of what was never sent, deactivated device tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
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
    /// The broker redelivered the message: the consumer it was delivered
    /// to before lost its channel, maybe mid-send.
    pub redelivered: bool,
    /// `token` is the message copy's own id ([`Headers::COPY`]), the same
    /// on every redelivery of that copy. False for a message published
    /// before copies had ids: its token is made up per claim, and a
    /// redelivery of it takes over any claim, as it did then.
    ///
    /// [`Headers::COPY`]: crate::broker::Headers::COPY
    pub named: bool,
    /// Names this claim: a retry of it after a lost answer, or the same
    /// copy redelivered, is recognised, and only its holder records the
    /// outcome.
    pub token: Uuid,
}

/// Claims deliveries before calling the provider, so a message delivered
/// twice is sent once: many in one statement per delivery partition (one
/// commit for all, in the common batch of one day), answering per request in
/// order. A `sending` row is taken over only by the copy that claimed it
/// (the same claim retried, or the same copy redelivered after its
/// consumer's channel closed mid-send), or once its lease ran out. Another
/// copy of the same delivery, redelivered or not, leaves it to the copy
/// that holds it: a delivery published twice (a publish retried after its
/// confirm was lost) whose first copy came back after a broker restart
/// used to be sent by both. A message without a copy id (an earlier
/// version's) takes over any claim when redelivered, as before. A delivery
/// asked for twice in one batch is claimed for the first request only.
///
/// Run on a connection of a [`ledger_pool`]: its planner settings keep the
/// statement a nested loop of primary-key probes (see [`ByPartition`]).
pub async fn claim_many(
    conn: &mut PgConnection,
    requests: &[ClaimRequest],
    lease: Duration,
) -> Result<Vec<Claim>, sqlx::Error> {
    // Each delivery once: the statement must not claim a row twice in one
    // batch (the second copy would take over the first one's claim).
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = requests.iter().map(|r| seen.insert(r.id)).collect();
    let mut answers: Vec<Claim> = first
        .iter()
        .map(|_| Claim::Skip {
            // The same delivery twice in one batch: claimed for the first.
            status: "sending".into(),
        })
        .collect();
    let wanted = (0..requests.len())
        .filter(|i| first[*i])
        .map(|i| (i, requests[i].created_at));
    for (table, group) in partitions(wanted) {
        let created: Vec<DateTime<Utc>> = group.iter().map(|i| requests[*i].created_at).collect();
        let ids: Vec<Uuid> = group.iter().map(|i| requests[*i].id).collect();
        let redelivered: Vec<bool> = group.iter().map(|i| requests[*i].redelivered).collect();
        let tokens: Vec<Uuid> = group.iter().map(|i| requests[*i].token).collect();
        let named: Vec<bool> = group.iter().map(|i| requests[*i].named).collect();
        let (created, ids, redelivered, tokens, named) =
            (&created, &ids, &redelivered, &tokens, &named);
        let mut target = ByPartition::new(CLAIM, table);
        let rows: Vec<(bool, Option<i32>, Option<String>)> = loop {
            // The table is a partition name made from a date.
            let rows = sqlx::query_as(sqlx::AssertSqlSafe(target.sql()))
                .bind(created)
                .bind(ids)
                .bind(redelivered)
                .bind(lease.as_secs_f64())
                .bind(tokens)
                .bind(named)
                .fetch_all(&mut *conn)
                .await;
            if !target.fall_back(&rows) {
                break rows?;
            }
        };
        for (i, row) in group.iter().zip(rows) {
            answers[*i] = match row {
                (true, Some(attempts), _) => Claim::Claimed { attempts },
                (false, _, Some(status)) => Claim::Skip { status },
                _ => Claim::Missing,
            };
        }
    }
    Ok(answers)
}

/// The claim of a batch: one `UPDATE` joined to the batch's arrays, then
/// how each row not claimed stands (the statement's snapshot, which the
/// claims do not change). One row per input, in input order. For requests
/// that are not `named`, the same semantics as `herald_claim_deliveries`,
/// which binaries of earlier versions call. `{deliveries}` stands for the
/// table.
pub const CLAIM: &str = r"
    WITH req AS (
        SELECT r.created, r.id, r.redelivered, r.token, r.named, r.n
          FROM unnest($1::timestamptz[], $2::uuid[], $3::boolean[], $5::uuid[], $6::boolean[])
               WITH ORDINALITY AS r(created, id, redelivered, token, named, n)
    ), took AS (
        UPDATE {deliveries} d
           SET status = 'sending',
               -- Our own claim, retried after a lost answer, counts once;
               -- our copy redelivered counts the attempt it may have made.
               attempts = d.attempts + CASE WHEN d.status = 'sending' AND d.claim_token = req.token
                                             AND NOT (req.named AND req.redelivered)
                                            THEN 0 ELSE 1 END,
               claim_token = req.token, claimed_at = now(), updated_at = now()
          FROM req
         WHERE d.created_at = req.created AND d.id = req.id
           AND (d.status = 'pending'
                OR (d.status = 'sending'
                    AND (d.claim_token = req.token
                         OR (req.redelivered AND NOT req.named)
                         OR d.claimed_at < now() - make_interval(secs => $4::double precision))))
        RETURNING req.n, d.attempts, d.status
    )
    SELECT took.n IS NOT NULL, COALESCE(took.attempts, cur.attempts),
           COALESCE(took.status, cur.status)::text
      FROM req
      LEFT JOIN took ON took.n = req.n
      LEFT JOIN LATERAL (
          SELECT d.attempts, d.status FROM {deliveries} d
           WHERE took.n IS NULL AND d.created_at = req.created AND d.id = req.id) cur ON true
     ORDER BY req.n";

/// The outcomes of a batch: one `UPDATE` joined to the batch's arrays, each
/// only while its row is `sending` under the claim's token; of one delivery
/// named twice, the first outcome is applied. Answers how many were
/// recorded. Same semantics as `herald_settle_deliveries`, which binaries
/// of earlier versions call. `{deliveries}` stands for the table.
pub const SETTLE: &str = r"
    WITH req AS (
        SELECT DISTINCT ON (r.created, r.id) r.*
          FROM unnest($1::timestamptz[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                      $6::text[], $7::boolean[], $8::uuid[])
               WITH ORDINALITY AS r(created, id, status, class, error, provider_id, refund, token, n)
         ORDER BY r.created, r.id, r.n
    ), done AS (
        UPDATE {deliveries} d
           SET status = req.status::herald_delivery_status,
               error_class = COALESCE(req.class, d.error_class),
               last_error = COALESCE(req.error, d.last_error),
               provider_id = COALESCE(req.provider_id, d.provider_id),
               sent_at = CASE WHEN req.status = 'sent' THEN now() ELSE d.sent_at END,
               attempts = d.attempts - CASE WHEN req.refund THEN 1 ELSE 0 END,
               reason = CASE WHEN req.status = 'expired' THEN req.error ELSE d.reason END,
               updated_at = now()
          FROM req
         WHERE d.created_at = req.created AND d.id = req.id
           AND d.status = 'sending' AND d.claim_token = req.token
        RETURNING 1
    )
    SELECT count(*)::integer FROM done";

/// The positions of a batch's rows grouped by the delivery partition their
/// creation time falls in (`deliveries_YYYYMMDD`, a UTC day, as
/// `herald_ensure_delivery_partitions` names them), each group in the
/// batch's order.
fn partitions(rows: impl IntoIterator<Item = (usize, DateTime<Utc>)>) -> Vec<(String, Vec<usize>)> {
    let mut days: Vec<(chrono::NaiveDate, Vec<usize>)> = Vec::new();
    for (i, created_at) in rows {
        let day = created_at.date_naive();
        match days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, group)) => group.push(i),
            None => days.push((day, vec![i])),
        }
    }
    days.into_iter()
        .map(|(day, group)| (format!("deliveries_{}", day.format("%Y%m%d")), group))
        .collect()
}

/// A statement run against one delivery partition, or against the
/// partitioned table when that partition does not exist (rows kept in the
/// default partition, or a partition already dropped by the retention).
///
/// Why the partition itself: a statement on the partitioned table that
/// finds its rows through a join (the batch's arrays) cannot prune
/// partitions before it runs, so every execution opened and locked every
/// partition and its indexes: about 8 us per partition per statement on the
/// reference machine, with 17 partitions (a fresh deployment) more than the
/// update itself, and the partition count grows with the retention. On the
/// partition, a batch of 8 claims took 0.20 ms instead of 0.33
/// (docs/benchmarks.md). A day partition, once it exists, holds every row
/// of its day (PostgreSQL refuses to create it while the default partition
/// holds any), so the fallback is needed only where there is none.
///
/// `statement` names the table `{deliveries}`; the caller runs
/// [`ByPartition::sql`] and runs it again while [`ByPartition::fall_back`]
/// says so. A batch that
/// spans two days is two statements and two commits: a failure of the
/// second fails the whole batch while the first day's rows stay claimed or
/// settled under their token: a redelivered message takes such a claim
/// over, and a retried outcome finds its row already recorded.
struct ByPartition<'s> {
    statement: &'s str,
    /// The partition, until it turned out not to exist.
    partition: Option<String>,
}

impl<'s> ByPartition<'s> {
    fn new(statement: &'s str, partition: String) -> Self {
        Self {
            statement,
            partition: Some(partition),
        }
    }

    /// The statement on the partition, or on the partitioned table.
    fn sql(&self) -> String {
        let table = self.partition.as_deref().unwrap_or("deliveries");
        self.statement.replace("{deliveries}", table)
    }

    /// Whether `result` says the partition does not exist, in which case
    /// the statement is to be run again on the partitioned table.
    fn fall_back<T>(&mut self, result: &Result<T, sqlx::Error>) -> bool {
        let missing = matches!(result, Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some(UNDEFINED_TABLE));
        missing && self.partition.take().is_some()
    }
}

/// SQLSTATE of a relation that does not exist.
const UNDEFINED_TABLE: &str = "42P01";

/// A pool for the workers' claims and outcomes, on the same database as
/// `pool`: connections whose planner keeps [`CLAIM`] and [`SETTLE`] what they
/// must be whatever the statistics say, a generic plan (made once per
/// connection) that is a nested loop probing each row by primary key. Left
/// to the statistics, a plan made while a partition was empty (a new
/// deployment, the first calls of the day) was a hash join over sequential
/// scans, and it stayed one as the partition grew: the end-to-end
/// benchmark's latency at half load went from 46 to 174 ms at the median.
/// The functions of earlier versions set the same for themselves; setting
/// them per call cost more than their statement.
pub fn ledger_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options()).clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
    ]);
    crate::db::connect_lazy_with(options, max_connections)
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

/// Records many outcomes in one statement per delivery partition (one
/// commit for all, in the common batch of one day); each only while its
/// claim still holds the row. Answers how many were recorded. Run on a
/// connection of a [`ledger_pool`].
pub async fn settle_many(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
) -> Result<i32, sqlx::Error> {
    let mut recorded = 0;
    for (table, group) in partitions(requests.iter().map(|r| r.created_at).enumerate()) {
        let group: Vec<&SettleRequest> = group.iter().map(|i| &requests[*i]).collect();
        let created: Vec<DateTime<Utc>> = group.iter().map(|r| r.created_at).collect();
        let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
        let statuses: Vec<&str> = group.iter().map(|r| r.status).collect();
        let classes: Vec<Option<&str>> = group.iter().map(|r| r.class.as_deref()).collect();
        let errors: Vec<Option<&str>> = group.iter().map(|r| r.error.as_deref()).collect();
        let provider_ids: Vec<Option<&str>> =
            group.iter().map(|r| r.provider_id.as_deref()).collect();
        let refunds: Vec<bool> = group.iter().map(|r| r.refund).collect();
        let tokens: Vec<Uuid> = group.iter().map(|r| r.token).collect();
        let (created, ids, statuses, classes) = (&created, &ids, &statuses, &classes);
        let (errors, provider_ids, refunds, tokens) = (&errors, &provider_ids, &refunds, &tokens);
        let mut target = ByPartition::new(SETTLE, table);
        recorded += loop {
            let n = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(target.sql()))
                .bind(created)
                .bind(ids)
                .bind(statuses)
                .bind(classes)
                .bind(errors)
                .bind(provider_ids)
                .bind(refunds)
                .bind(tokens)
                .fetch_one(&mut *conn)
                .await;
            if !target.fall_back(&n) {
                break n?;
            }
        };
    }
    Ok(recorded)
}
