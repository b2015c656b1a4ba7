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
//!
//! A notification naming a few users is routed inline: its deliveries are
//! planned and recorded in the same commit, and its delivery messages take
//! the routing message's place (crate::routing::inline).

pub mod amqp;
mod commitment;
mod group;
pub mod relay;

use std::sync::Arc;

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
        kept::Kept,
        notifications::NewNotification,
    },
    model::{FieldError, IdempotencyKey, message::RouteMessage, notification::NotificationRequest},
    routing::inline::{Inline, Routed},
    telemetry::traces::TraceContext,
};
pub use commitment::Commitment;
use group::{Claimed, InsertReply, Mark, Share, insert_batches, mark_published_batches};

/// Pauses (and their length) a request waits for an earlier request with
/// the same idempotency key to be published: about a second.
const IN_PROGRESS_WAITS: usize = 20;
const IN_PROGRESS_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Connections of ingest's marks (one batch is written at a time), besides
/// `DATABASE_MAX_CONNECTIONS`.
pub const MARK_CONNECTIONS: u32 = 1;

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
    inline: Option<Inline>,
    marks: tokio::sync::mpsc::UnboundedSender<Mark>,
    inserts: tokio::sync::mpsc::Sender<(Share, InsertReply)>,
}

struct Prepared {
    row: NewNotification,
    lane: String,
    /// The request, when it may be routed inline.
    inline: Option<Arc<NotificationRequest>>,
}

/// What committing a request came to.
enum Committed {
    /// Its notifications are committed; for each, what inline routing
    /// recorded (`None`: it goes to the router).
    New(Vec<Option<Routed>>),
    /// The stored answer of an earlier request with the same key.
    Stored(Value),
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
    inline: Option<&Inline>,
) -> Prepared {
    let lane = req.priority.as_str().to_owned();
    let row = NewNotification {
        id: Uuid::now_v7(),
        tenant_id: tenant.to_owned(),
        category: req.category.as_str().to_owned(),
        priority: lane.clone(),
        request: serde_json::to_string(&req).expect("serialisable"),
        idempotency_key: key.map(|k| k.as_str().to_owned()),
        created_at: now,
    };
    Prepared {
        inline: inline.filter(|i| i.takes(&req)).map(|_| Arc::new(req)),
        row,
        lane,
    }
}

impl Intake {
    /// An intake writing to `pool` and publishing with `publisher`, routing
    /// notifications of at most `inline_max_users` users inline (0: none).
    /// Spawns the tasks that group inserts and mark notifications published.
    pub fn new(pool: PgPool, publisher: Publisher, inline_max_users: usize) -> Self {
        let inline = Inline::new(pool.clone(), publisher.clone(), inline_max_users);
        let (marks, rx) = tokio::sync::mpsc::unbounded_channel();
        let marks_pool = db::notifications::marks_pool(&pool, MARK_CONNECTIONS);
        tokio::spawn(mark_published_batches(Kept::new(marks_pool), rx));
        let (inserts, rx) = tokio::sync::mpsc::channel(1024);
        // One group commits at a time, on a connection it keeps.
        tokio::spawn(insert_batches(Kept::new(pool.clone()), inline.clone(), rx));
        Self {
            pool,
            publisher,
            inline,
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
        // Only an idempotency record keeps the hash.
        let hash = key
            .as_ref()
            .map(|_| request_hash(&body))
            .unwrap_or_default();
        let req = NotificationRequest::parse(body, now).map_err(IntakeError::Invalid)?;
        let prepared = prepare(tenant, req, key.as_ref(), now, self.inline.as_ref());
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
            Committed::Stored(existing) => {
                let id = existing["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| IntakeError::Unavailable("corrupt idempotency record".into()))?;
                Ok(Accepted {
                    value: id,
                    replayed: true,
                })
            }
            Committed::New(routed) => {
                self.publish(tenant, key.as_ref(), &[&prepared], routed)
                    .await?;
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
        let hash = match &key {
            Some(_) => request_hash(&Value::Array(items.clone())),
            None => Vec::new(),
        };
        let mut outcomes = Vec::with_capacity(items.len());
        let mut prepared = Vec::new();
        for item in items {
            match NotificationRequest::parse(item, now) {
                Ok(req) => {
                    let p = prepare(tenant, req, key.as_ref(), now, self.inline.as_ref());
                    outcomes.push(ItemOutcome::Accepted { id: p.row.id });
                    prepared.push(p);
                }
                Err(errors) => outcomes.push(ItemOutcome::Invalid { errors }),
            }
        }
        let response = serde_json::to_value(&outcomes).expect("serialisable");
        let refs: Vec<&Prepared> = prepared.iter().collect();
        let routed = match self
            .commit(
                tenant,
                key.as_ref(),
                (&hash, 200, &response),
                &refs,
                commitment,
            )
            .await?
        {
            Committed::Stored(existing) => {
                let outcomes = serde_json::from_value(existing)
                    .map_err(|_| IntakeError::Unavailable("corrupt idempotency record".into()))?;
                return Ok(Accepted {
                    value: outcomes,
                    replayed: true,
                });
            }
            Committed::New(routed) => routed,
        };
        if !refs.is_empty() {
            self.publish(tenant, key.as_ref(), &refs, routed).await?;
        }
        Ok(Accepted {
            value: outcomes,
            replayed: false,
        })
    }

    /// Commits the notifications and the idempotency record (request hash,
    /// status and response) together, with the deliveries of those routed
    /// inline. Returns the stored response when the key was already used
    /// for the same body.
    async fn commit(
        &self,
        tenant: &str,
        key: Option<&IdempotencyKey>,
        claim: (&[u8], i32, &Value),
        items: &[&Prepared],
        commitment: &Commitment,
    ) -> Result<Committed, IntakeError> {
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
    ) -> Result<Committed, IntakeError> {
        let rows: Vec<NewNotification> = items.iter().map(|p| p.row.clone()).collect();
        if rows.is_empty() && key.is_none() {
            return Ok(Committed::New(Vec::new()));
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
            inline: items.iter().map(|p| p.inline.clone()).collect(),
            trace: TraceContext::current(),
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
            Claimed::Fresh(routed) => Ok(Committed::New(routed)),
            Claimed::Alone(_) => Err(IntakeError::Unavailable(
                "the request's share was not committed".into(),
            )),
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
                    Ok(Committed::Stored(existing.response_body))
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
        let claimed = group::write(&mut tx, self.inline.as_ref(), std::slice::from_ref(&share))
            .await?
            .pop()
            .expect("one answer per share");
        commitment.begin();
        tx.commit().await?;
        Ok(claimed)
    }

    /// Publishes the routing messages, or for a notification routed inline
    /// its delivery messages. The rows are already committed, so they are
    /// durable whatever the broker says: the outbox relay publishes a
    /// routing message for any notification the broker did not confirm.
    /// Only when the broker certainly holds none of the messages (no
    /// channel, refused, unroutable) are the rows withdrawn and the caller
    /// told 503. When it may hold some (a confirm timed out, the channel
    /// closed while waiting) withdrawing could lose a notification already
    /// being delivered, and a 503 would make the client send it again: the
    /// request is accepted, and the unconfirmed messages are published
    /// again until confirmed (the router's fan-out key and the worker's
    /// claim make a second copy harmless).
    async fn publish(
        &self,
        tenant: &str,
        key: Option<&IdempotencyKey>,
        items: &[&Prepared],
        routed: Vec<Option<Routed>>,
    ) -> Result<(), IntakeError> {
        let names = self.publisher.broker().names();
        // The accepting span's context travels on, so the router's (or the
        // worker's) spans join the caller's trace (one context for all the
        // items of a batch).
        let trace = TraceContext::current();
        let mut routed = routed;
        routed.resize_with(items.len(), || None);
        let mut pending = Vec::with_capacity(items.len());
        let mut msgs = Vec::with_capacity(items.len());
        let mut owners = Vec::with_capacity(items.len());
        for (at, (p, routed)) in items.iter().zip(&mut routed).enumerate() {
            pending.push(Pending {
                id: p.row.id,
                inline: routed.is_some(),
                msgs: Vec::new(),
            });
            match routed {
                Some(r) => {
                    owners.extend(r.messages.iter().map(|_| at));
                    msgs.append(&mut r.messages);
                }
                None => {
                    let mut msg = route_message(names, p.row.id, tenant, &p.lane, p.row.created_at);
                    msg.headers = trace.apply(msg.headers);
                    msgs.push(msg);
                    owners.push(at);
                }
            }
        }
        let results = self.publisher.publish_all(&msgs).await;
        let refused = if msgs.is_empty() {
            // Nothing to publish (every delivery held, suppressed or without
            // a destination): accepted only while the broker is reachable,
            // as every other request is; during an outage all are told 503.
            self.publisher
                .broker()
                .connection()
                .await
                .err()
                .map(|e| e.to_string())
        } else {
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(PublishError::certainly_not_queued))
                .then(|| results.first().and_then(|r| r.as_ref().err()))
                .flatten()
                .map(ToString::to_string)
        };
        if let Some(err) = refused {
            metrics::counter!("herald_ingest_publish_failures_total").increment(1);
            // Withdraw: the caller gets 503 and may retry. If the withdrawal
            // fails too, the relay publishes the rows later and a retry with
            // the same idempotency key is answered as accepted.
            let ids: Vec<Uuid> = items.iter().map(|p| p.row.id).collect();
            let created: Vec<DateTime<Utc>> = items.iter().map(|p| p.row.created_at).collect();
            if let Err(e) = db::notifications::delete(&self.pool, &ids, &created).await {
                tracing::warn!(error = %e, "could not withdraw unpublished notifications; the relay will publish them");
            } else if let Some(key) = key {
                let _ = idempotency::release(&self.pool, tenant, key.as_str()).await;
            }
            return Err(IntakeError::Unavailable(err));
        }
        for ((msg, at), result) in msgs.into_iter().zip(owners).zip(results) {
            if let Err(e) = result {
                let p = &mut pending[at];
                tracing::warn!(notification_id = %p.id, error = %e,
                    "message not confirmed; accepted, and publishing it again");
                p.msgs.push(msg);
            }
        }
        let inline = routed.iter().filter(|r| r.is_some()).count();
        for (p, routed) in pending.iter().zip(&routed) {
            if p.msgs.is_empty() {
                let _ = self.marks.send(p.mark());
            }
            if let Some(r) = routed {
                r.count();
            }
        }
        pending.retain(|p| !p.msgs.is_empty());
        if !pending.is_empty() {
            metrics::counter!("herald_ingest_publish_unconfirmed_total")
                .increment(pending.iter().map(|p| p.msgs.len() as u64).sum());
            tokio::spawn(republish(
                self.publisher.clone(),
                self.marks.clone(),
                pending,
            ));
        }
        if let Some(key) = key {
            let _ = self.marks.send(Mark::Completed {
                tenant: tenant.to_owned(),
                key: key.as_str().to_owned(),
            });
        }
        metrics::counter!("herald_notifications_accepted_total").increment(items.len() as u64);
        metrics::counter!("herald_ingest_routed_inline_total").increment(inline as u64);
        Ok(())
    }
}

/// An accepted notification's messages not yet confirmed: its routing
/// message, or its delivery messages when it was routed inline.
struct Pending {
    id: Uuid,
    inline: bool,
    msgs: Vec<Outgoing>,
}

impl Pending {
    /// The mark to write once every message is confirmed.
    fn mark(&self) -> Mark {
        if self.inline {
            Mark::Routed(self.id)
        } else {
            Mark::Published(self.id)
        }
    }
}

/// Publishes accepted notifications' unconfirmed messages, with a growing
/// pause, for as long as the relay's grace lasts; after that (or if this
/// process dies) the relay takes the rows over.
async fn republish(
    publisher: Publisher,
    marks: tokio::sync::mpsc::UnboundedSender<Mark>,
    mut pending: Vec<Pending>,
) {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(500);
    while !pending.is_empty() && started.elapsed() + pause < RELAY_GRACE {
        tokio::time::sleep(pause).await;
        let msgs: Vec<Outgoing> = pending.iter().flat_map(|p| p.msgs.clone()).collect();
        let mut results = publisher.publish_all(&msgs).await.into_iter();
        for p in &mut pending {
            let sent = std::mem::take(&mut p.msgs);
            p.msgs = sent
                .into_iter()
                .zip(results.by_ref())
                .filter_map(|(msg, result)| result.is_err().then_some(msg))
                .collect();
            if p.msgs.is_empty() {
                let _ = marks.send(p.mark());
            }
        }
        pending.retain(|p| !p.msgs.is_empty());
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
