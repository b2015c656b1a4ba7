//! Accepting notifications, from HTTP and from `herald.ingest` alike.
//!
//! Durability is a transactional outbox with an eager publish: the
//! notification (and its idempotency record) commit in PostgreSQL, then its
//! routing message is published with a confirm, and only then is it accepted
//! (202). If ingest dies between the commit and the confirm, the relay
//! ([`relay`]) republishes the committed row; the router's fan-out key makes
//! the possible duplicate harmless. If the broker certainly holds none of
//! the messages, the rows are withdrawn and the caller gets 503; if it may
//! hold them (a confirm timed out), the request is accepted and the messages
//! published again until confirmed. See docs/ingest.md for the trade-off.

pub mod amqp;
mod commitment;
mod group;
pub mod relay;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    broker::{Names, Outgoing, PublishError, Publisher},
    db::{
        self,
        idempotency::{self, KeyClaim},
        notifications::NewNotification,
    },
    model::{FieldError, IdempotencyKey, message::RouteMessage, notification::NotificationRequest},
    telemetry::traces::TraceContext,
};
pub use commitment::Commitment;
use group::{Claimed, InsertReply, Mark, Share, insert_batches, mark_published_batches};

/// Pauses (and their length) a request waits for an earlier request with
/// the same idempotency key to be published: about a second.
const IN_PROGRESS_WAITS: usize = 20;
const IN_PROGRESS_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a committed notification may stay unconfirmed before the relay
/// takes it over. Long enough that the eager publish always wins normally.
pub const RELAY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("invalid notification")]
    Invalid(Vec<FieldError>),
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    #[error("a request with this idempotency key is still in progress")]
    KeyInProgress,
    #[error("cannot make the request durable now: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for IntakeError {
    fn from(e: sqlx::Error) -> Self {
        IntakeError::Unavailable(format!("database: {e}"))
    }
}

/// What one item of a batch came to. Stored as the idempotent response of a
/// batch, so a replay answers exactly the same items.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum ItemOutcome {
    Accepted { id: Uuid },
    Invalid { errors: Vec<FieldError> },
}

/// An accepted request.
#[derive(Debug, Clone)]
pub struct Accepted<T> {
    /// The notification id, or the batch's item outcomes.
    pub value: T,
    /// True when this is the stored answer of an earlier request with the
    /// same idempotency key.
    pub replayed: bool,
}

/// Builds the routing message of a notification, sent to its lane.
pub fn route_message(
    names: &Names,
    id: Uuid,
    tenant: &str,
    lane: &str,
    accepted_at: DateTime<Utc>,
) -> Outgoing {
    RouteMessage {
        notification_id: id,
        tenant_id: tenant.to_owned(),
        page: None,
        replay: None,
    }
    .outgoing(names, lane, accepted_at)
}

/// Accepts notification requests for a tenant.
#[derive(Clone)]
pub struct Intake {
    pool: PgPool,
    publisher: Publisher,
    marks: tokio::sync::mpsc::UnboundedSender<Mark>,
    inserts: tokio::sync::mpsc::Sender<(Share, InsertReply)>,
}

struct Prepared {
    row: NewNotification,
    lane: String,
}

fn request_hash(body: &Value) -> Vec<u8> {
    // serde_json's map is ordered by key, so this is a canonical form:
    // the same JSON with keys in another order hashes the same.
    Sha256::digest(body.to_string().as_bytes()).to_vec()
}

fn prepare(
    tenant: &str,
    req: NotificationRequest,
    key: Option<&IdempotencyKey>,
    now: DateTime<Utc>,
) -> Prepared {
    let lane = req.priority.as_str().to_owned();
    Prepared {
        row: NewNotification {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            category: req.category.as_str().to_owned(),
            priority: lane.clone(),
            request: serde_json::to_string(&req).expect("serialisable"),
            idempotency_key: key.map(|k| k.as_str().to_owned()),
            created_at: now,
        },
        lane,
    }
}

impl Intake {
    /// An intake writing to `pool` and publishing with `publisher`. Spawns
    /// the tasks that group inserts and mark notifications published.
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        let (marks, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(mark_published_batches(pool.clone(), rx));
        let (inserts, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(insert_batches(pool.clone(), rx));
        Self {
            pool,
            publisher,
            marks,
            inserts,
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Validates and accepts one notification. `commitment` is marked when
    /// the notification is about to be committed.
    pub async fn accept(
        &self,
        tenant: &str,
        body: Value,
        key: Option<IdempotencyKey>,
        commitment: &Commitment,
    ) -> Result<Accepted<Uuid>, IntakeError> {
        let now = Utc::now();
        let hash = request_hash(&body);
        let req = NotificationRequest::parse(body, now).map_err(IntakeError::Invalid)?;
        let prepared = prepare(tenant, req, key.as_ref(), now);
        let id = prepared.row.id;
        let response = serde_json::json!({ "id": id });
        match self
            .commit(
                tenant,
                key.as_ref(),
                (&hash, 202, &response),
                &[&prepared],
                commitment,
            )
            .await?
        {
            Some(existing) => {
                let id = existing["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| IntakeError::Unavailable("corrupt idempotency record".into()))?;
                Ok(Accepted {
                    value: id,
                    replayed: true,
                })
            }
            None => {
                self.publish(tenant, key.as_ref(), &[&prepared]).await?;
                Ok(Accepted {
                    value: id,
                    replayed: false,
                })
            }
        }
    }

    /// Validates and accepts a batch: valid items are accepted together,
    /// invalid ones answered with their errors.
    pub async fn accept_batch(
        &self,
        tenant: &str,
        items: Vec<Value>,
        key: Option<IdempotencyKey>,
        commitment: &Commitment,
    ) -> Result<Accepted<Vec<ItemOutcome>>, IntakeError> {
        let now = Utc::now();
        let hash = request_hash(&Value::Array(items.clone()));
        let mut outcomes = Vec::with_capacity(items.len());
        let mut prepared = Vec::new();
        for item in items {
            match NotificationRequest::parse(item, now) {
                Ok(req) => {
                    let p = prepare(tenant, req, key.as_ref(), now);
                    outcomes.push(ItemOutcome::Accepted { id: p.row.id });
                    prepared.push(p);
                }
                Err(errors) => outcomes.push(ItemOutcome::Invalid { errors }),
            }
        }
        let response = serde_json::to_value(&outcomes).expect("serialisable");
        let refs: Vec<&Prepared> = prepared.iter().collect();
        if let Some(existing) = self
            .commit(
                tenant,
                key.as_ref(),
                (&hash, 200, &response),
                &refs,
                commitment,
            )
            .await?
        {
            let outcomes = serde_json::from_value(existing)
                .map_err(|_| IntakeError::Unavailable("corrupt idempotency record".into()))?;
            return Ok(Accepted {
                value: outcomes,
                replayed: true,
            });
        }
        if !refs.is_empty() {
            self.publish(tenant, key.as_ref(), &refs).await?;
        }
        Ok(Accepted {
            value: outcomes,
            replayed: false,
        })
    }

    /// Commits the notifications and the idempotency record (request hash,
    /// status and response) together. Returns the stored response when the
    /// key was already used for the same body.
    async fn commit(
        &self,
        tenant: &str,
        key: Option<&IdempotencyKey>,
        claim: (&[u8], i32, &Value),
        items: &[&Prepared],
        commitment: &Commitment,
    ) -> Result<Option<Value>, IntakeError> {
        // A retry that overtook the first request's publish (its client
        // lost the 202 and asked again at once) waits a moment for it
        // rather than being told "in progress".
        for _ in 0..IN_PROGRESS_WAITS {
            match self
                .commit_once(tenant, key, claim, items, commitment)
                .await
            {
                Err(IntakeError::KeyInProgress) => {
                    tokio::time::sleep(IN_PROGRESS_PAUSE).await;
                }
                other => return other,
            }
        }
        self.commit_once(tenant, key, claim, items, commitment)
            .await
    }

    async fn commit_once(
        &self,
        tenant: &str,
        key: Option<&IdempotencyKey>,
        (hash, status, response): (&[u8], i32, &Value),
        items: &[&Prepared],
        commitment: &Commitment,
    ) -> Result<Option<Value>, IntakeError> {
        let rows: Vec<NewNotification> = items.iter().map(|p| p.row.clone()).collect();
        if rows.is_empty() && key.is_none() {
            return Ok(None);
        }
        let keyed = key.map(|k| KeyClaim {
            tenant: tenant.to_owned(),
            key: k.as_str().to_owned(),
            request_hash: hash.to_vec(),
            response_status: status,
            response_body: response.clone(),
        });
        if keyed.is_none() {
            // Once queued, the group commits the rows whether or not this
            // request waits for it. (A keyed request's commitment is marked
            // by the group just before its commit.)
            commitment.begin();
        }
        let share = Share {
            rows,
            key: keyed.map(|k| (k, commitment.clone())),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inserts
            .send((share, tx))
            .await
            .map_err(|_| IntakeError::Unavailable("intake is stopping".into()))?;
        let mut claimed = rx
            .await
            .map_err(|_| IntakeError::Unavailable("intake is stopping".into()))?
            .map_err(|e| IntakeError::Unavailable(format!("database: {e}")))?;
        if let Claimed::Alone(share) = claimed {
            claimed = self.commit_alone(share, commitment).await?;
        }
        match claimed {
            Claimed::Fresh | Claimed::Alone(_) => Ok(None),
            Claimed::Taken(existing) if existing.request_hash != hash => {
                Err(IntakeError::KeyReused)
            }
            Claimed::Taken(existing) => {
                // Answer the stored response only once the first request is
                // durable (or old enough that the relay owns it).
                let settled = existing.completed_at.is_some()
                    || Utc::now() - existing.created_at
                        > chrono::Duration::from_std(RELAY_GRACE).expect("small");
                if settled {
                    Ok(Some(existing.response_body))
                } else {
                    Err(IntakeError::KeyInProgress)
                }
            }
        }
    }

    /// Makes one keyed request durable in a transaction of its own, which
    /// this request's future owns: if the request is abandoned (its API
    /// timeout) before the commit begins, the transaction rolls back and
    /// nothing is kept.
    async fn commit_alone(
        &self,
        share: Share,
        commitment: &Commitment,
    ) -> Result<Claimed, IntakeError> {
        let mut tx = self.pool.begin().await?;
        let claimed = group::write(&mut tx, std::slice::from_ref(&share))
            .await?
            .pop()
            .expect("one answer per share");
        commitment.begin();
        tx.commit().await?;
        Ok(claimed)
    }

    /// Publishes the routing messages. The rows are already committed, so
    /// they are durable whatever the broker says: the outbox relay publishes
    /// any row the broker did not confirm. Only when the broker certainly
    /// holds none of the messages (no channel, refused, unroutable) are the
    /// rows withdrawn and the caller told 503. When it may hold some (a
    /// confirm timed out, the channel closed while waiting) withdrawing could
    /// lose a notification the router is already delivering, and a 503 would
    /// make the client send it again: the request is accepted, and the
    /// unconfirmed messages are published again until confirmed (the router's
    /// fan-out key makes a second copy harmless).
    async fn publish(
        &self,
        tenant: &str,
        key: Option<&IdempotencyKey>,
        items: &[&Prepared],
    ) -> Result<(), IntakeError> {
        let names = self.publisher.broker().names();
        // The accepting span's context travels on, so the router's spans
        // join the caller's trace (one context for all the items of a batch).
        let trace = TraceContext::current();
        let msgs: Vec<Outgoing> = items
            .iter()
            .map(|p| {
                let mut msg = route_message(names, p.row.id, tenant, &p.lane, p.row.created_at);
                msg.headers = trace.apply(msg.headers);
                msg
            })
            .collect();
        let results = self.publisher.publish_all(&msgs).await;
        let ids: Vec<Uuid> = items.iter().map(|p| p.row.id).collect();
        let certainly_none = results
            .iter()
            .all(|r| r.as_ref().is_err_and(PublishError::certainly_not_queued));
        if certainly_none && let Some(Err(err)) = results.first() {
            metrics::counter!("herald_ingest_publish_failures_total").increment(1);
            // Withdraw: the caller gets 503 and may retry. If the withdrawal
            // fails too, the relay publishes the rows later and a retry with
            // the same idempotency key is answered as accepted.
            if let Err(e) = db::notifications::delete(&self.pool, &ids).await {
                tracing::warn!(error = %e, "could not withdraw unpublished notifications; the relay will publish them");
            } else if let Some(key) = key {
                let _ = idempotency::release(&self.pool, tenant, key.as_str()).await;
            }
            return Err(IntakeError::Unavailable(err.to_string()));
        }
        let mut unconfirmed = Vec::new();
        for ((id, msg), result) in ids.iter().zip(msgs).zip(results) {
            match result {
                Ok(()) => {
                    let _ = self.marks.send(Mark::Published(*id));
                }
                Err(e) => {
                    tracing::warn!(notification_id = %id, error = %e,
                        "routing message not confirmed; accepted, and publishing it again");
                    unconfirmed.push((*id, msg));
                }
            }
        }
        if !unconfirmed.is_empty() {
            metrics::counter!("herald_ingest_publish_unconfirmed_total")
                .increment(unconfirmed.len() as u64);
            tokio::spawn(republish(
                self.publisher.clone(),
                self.marks.clone(),
                unconfirmed,
            ));
        }
        if let Some(key) = key {
            let _ = self.marks.send(Mark::Completed {
                tenant: tenant.to_owned(),
                key: key.as_str().to_owned(),
            });
        }
        metrics::counter!("herald_notifications_accepted_total").increment(ids.len() as u64);
        Ok(())
    }
}

/// Publishes accepted notifications whose routing message was not confirmed,
/// with a growing pause, for as long as the relay's grace lasts; after that
/// (or if this process dies) the relay takes the rows over.
async fn republish(
    publisher: Publisher,
    marks: tokio::sync::mpsc::UnboundedSender<Mark>,
    mut pending: Vec<(Uuid, Outgoing)>,
) {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(500);
    while !pending.is_empty() && started.elapsed() + pause < RELAY_GRACE {
        tokio::time::sleep(pause).await;
        let msgs: Vec<Outgoing> = pending.iter().map(|(_, m)| m.clone()).collect();
        let results = publisher.publish_all(&msgs).await;
        let mut left = Vec::new();
        for ((id, msg), result) in pending.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    let _ = marks.send(Mark::Published(id));
                }
                Err(_) => left.push((id, msg)),
            }
        }
        pending = left;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
