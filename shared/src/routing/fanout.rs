//! Routing one notification (or one page of a topic) into deliveries:
//! read recipients, decide (plan, caps, timing), record the deliveries in one
//! batch, publish one message per pending delivery.
//!
//! Every step is idempotent: deliveries are keyed by (notification, user,
//! channel, destination), so a redelivered routing message re-creates
//! nothing and re-publishes only what is still pending (the worker's claim
//! absorbs the duplicate).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    caps::{self, Caps},
    plan::{self, Initial, Planned, Policy, Recipient},
};
use crate::{
    broker::{Headers, Outgoing, Publisher},
    db::{
        self,
        deliveries::{BatchOf, NewDelivery},
        notifications::NotificationRow,
        routing::RecipientRow,
    },
    model::{
        Channel, Lane,
        message::{DeliveryMessage, Page, RouteMessage},
        notification::{NotificationRequest, Recipients},
        user::{EmailAddress, PhoneE164, Platform, Profile},
    },
    priority::HighFirst,
    telemetry::traces::TraceContext,
};

/// Subscribers per topic page: big enough that per-page overhead (a few
/// queries, one publish batch) is amortised, small enough that a page's
/// recipients and messages stay well under a megabyte or two in memory.
pub const PAGE_SIZE: i64 = 1000;
/// Deliveries a `normal` or `bulk` step publishes before it yields to `high`.
const PUBLISH_CHUNK: usize = 250;
/// Pages handed out per checkpoint.
const PAGES_PER_CHECKPOINT: usize = 20;
/// How long a tenant's policy is reused before it is read again.
const POLICY_TTL: Duration = Duration::from_secs(10);

/// Why routing a message failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Retrying cannot help: the message is dead-lettered with the reason.
    #[error("{0}")]
    Permanent(String),
    /// The database or broker failed: the message is requeued.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for RouteError {
    fn from(e: sqlx::Error) -> Self {
        RouteError::Transient(e.into())
    }
}

/// A tenant's policy and caps, and when they were read.
type CachedPolicy = (Policy, Caps, Instant);

/// The router's state, shared by its consumers.
#[derive(Clone)]
pub struct Fanout {
    pool: PgPool,
    /// One confirming publisher (AMQP channel) per lane: confirms come back
    /// in order per channel, so a `high` delivery published behind a bulk
    /// page of a thousand would wait for all of their confirms.
    publishers: Arc<[Publisher; 3]>,
    policies: Arc<Mutex<HashMap<String, CachedPolicy>>>,
    /// `high` routing messages in progress: work of the other lanes pauses
    /// between its steps while there are any.
    high_first: HighFirst,
    /// Topic work (enumerating, or routing a page of 1000) in progress per
    /// lane is bounded here rather than by the lane's prefetch, which is
    /// deep for the batches of one-off notifications.
    page_slots: Arc<[tokio::sync::Semaphore; 3]>,
}

/// Topic pages (or enumerations) routed at once per lane: `bulk` one at a
/// time, which keeps a million-subscriber topic well inside five minutes
/// while leaving the CPU and the database's commits to the other lanes.
fn page_slots(lane: Lane) -> usize {
    match lane {
        Lane::High => 8,
        Lane::Normal => 2,
        Lane::Bulk => 1,
    }
}

/// A recipient as stored, as the planner sees it.
pub(super) fn recipient(row: RecipientRow) -> Recipient {
    let suppressed = [
        (Channel::Email, row.email_suppressed),
        (Channel::Sms, row.phone_suppressed),
    ]
    .into_iter()
    .filter_map(|(channel, on)| on.then_some(channel))
    .collect();
    Recipient {
        suppressed,
        profile: Some(Profile {
            name: row.name,
            email: row.email.and_then(|e| EmailAddress::parse(e).ok()),
            phone: row.phone.and_then(|p| PhoneE164::parse(p).ok()),
            locale: row.locale,
            timezone: row.timezone,
        }),
        preferences: row.preferences.map(|p| p.0).unwrap_or_default(),
        devices: row
            .devices
            .0
            .into_iter()
            .filter_map(|(token, platform)| platform.parse::<Platform>().ok().map(|p| (token, p)))
            .collect(),
        user_id: row.id,
    }
}

impl Fanout {
    /// A router writing to `pool` and publishing on `publisher`'s broker.
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        let broker = publisher.broker().clone();
        Self {
            pool,
            publishers: Arc::new(Lane::ALL.map(|lane| {
                Publisher::new(if lane == Lane::High {
                    broker.own_connection()
                } else {
                    broker.clone()
                })
            })),
            policies: Arc::default(),
            high_first: HighFirst::default(),
            page_slots: Arc::new(Lane::ALL.map(|l| tokio::sync::Semaphore::new(page_slots(l)))),
        }
    }

    async fn policy(&self, tenant: &str) -> Result<(Policy, Caps), RouteError> {
        if let Some((policy, caps, at)) = self.policies.lock().expect("not poisoned").get(tenant)
            && at.elapsed() < POLICY_TTL
        {
            return Ok((policy.clone(), caps.clone()));
        }
        let row = db::routing::policy(&self.pool, tenant)
            .await?
            .ok_or_else(|| RouteError::Permanent(format!("unknown tenant `{tenant}`")))?;
        let policy = Policy {
            required: row.required_categories.into_iter().collect(),
        };
        let caps = caps::parse(&row.frequency_caps);
        self.policies.lock().expect("not poisoned").insert(
            tenant.to_owned(),
            (policy.clone(), caps.clone(), Instant::now()),
        );
        Ok((policy, caps))
    }

    /// A slot for topic work on `lane`, held while it lasts.
    async fn page_slot(&self, lane: Lane) -> Result<tokio::sync::SemaphorePermit<'_>, RouteError> {
        let at = Lane::ALL.iter().position(|l| *l == lane).expect("a lane");
        self.page_slots[at]
            .acquire()
            .await
            .map_err(|e| RouteError::Transient(e.into()))
    }

    /// The database.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The confirming publisher of `lane`.
    pub(super) fn publisher(&self, lane: Lane) -> &Publisher {
        let at = Lane::ALL.iter().position(|l| *l == lane).expect("a lane");
        &self.publishers[at]
    }

    /// Counts `lane`'s work as `high` work in flight while the answer
    /// lives (when `lane` is `high`): the other lanes' steps yield to it.
    pub(super) fn track_high(&self, lane: Lane) -> Option<crate::priority::InFlight> {
        self.high_first.track(lane)
    }

    /// Waits while `high` work is in flight (bounded).
    pub(super) async fn yield_to_high(&self, lane: Lane) {
        self.high_first.yield_to_high(lane).await;
    }

    /// Routes one message from a route queue; `lane` is the queue's lane,
    /// `redelivered` whether the broker handed the message out before.
    #[tracing::instrument(skip_all, fields(notification_id = %msg.notification_id))]
    pub async fn route(
        &self,
        msg: &RouteMessage,
        lane: Lane,
        redelivered: bool,
    ) -> Result<(), RouteError> {
        let _high = self.high_first.track(lane);
        let Some(row) = db::routing::notification(&self.pool, msg.notification_id).await? else {
            // Withdrawn by ingest after a failed publish: nothing to route.
            tracing::info!("notification no longer exists; skipping");
            return Ok(());
        };
        if row.tenant_id != msg.tenant_id {
            return Err(RouteError::Permanent(
                "routing message names another tenant".into(),
            ));
        }
        let first_pass = msg.page.is_none() && msg.replay.is_none();
        if first_pass && matches!(row.status.as_str(), "routed" | "completed") {
            return Ok(());
        }
        let req: NotificationRequest = NotificationRequest::deserialize(&row.request)
            .map_err(|e| RouteError::Permanent(format!("stored request does not parse: {e}")))?;
        if let Some(replay) = &msg.replay {
            let ids: Vec<&str> = replay.users.iter().map(String::as_str).collect();
            let recipients = self.users(&row.tenant_id, &ids).await?;
            return self
                .deliver(&row, &req, recipients, true, Some(replay.number))
                .await;
        }
        match (&req.to, &msg.page) {
            (Recipients::Users(users), _) => {
                // A user list is routed in one step: `accepted -> routed`
                // directly, one commit fewer on the path of one-time codes.
                let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
                let recipients = self.users(&row.tenant_id, &ids).await?;
                self.deliver(&row, &req, recipients, redelivered, None)
                    .await?;
                db::routing::finish_routing(&self.pool, row.id).await?;
            }
            (Recipients::Topic(topic), Some(page)) => {
                let _slot = self.page_slot(lane).await?;
                let rows = db::routing::topic_page(
                    &self.pool,
                    &row.tenant_id,
                    topic.as_str(),
                    page.after.as_deref(),
                    &page.last,
                )
                .await?;
                self.deliver(
                    &row,
                    &req,
                    rows.into_iter().map(recipient).collect(),
                    redelivered,
                    None,
                )
                .await?;
                db::routing::page_done(&self.pool, row.id, &page.last).await?;
            }
            (Recipients::Topic(topic), None) => {
                let _slot = self.page_slot(lane).await?;
                self.enumerate(&row, topic.as_str()).await?
            }
        }
        Ok(())
    }

    /// The named users of a tenant as recipients; a user who does not exist
    /// (never created, or erased) is a recipient without a profile.
    async fn users(&self, tenant: &str, ids: &[&str]) -> Result<Vec<Recipient>, RouteError> {
        let rows = db::routing::recipients(&self.pool, tenant, ids).await?;
        let mut found: HashMap<String, Recipient> = rows
            .into_iter()
            .map(|r| (r.id.clone(), recipient(r)))
            .collect();
        Ok(ids
            .iter()
            .map(|id| found.remove(*id).unwrap_or_else(|| Recipient::unknown(id)))
            .collect())
    }

    /// Hands a topic's subscribers out in pages, on the notification's own
    /// lane, checkpointing as it goes so a crash resumes where it stopped.
    async fn enumerate(&self, row: &NotificationRow, topic: &str) -> Result<(), RouteError> {
        db::routing::start_routing(&self.pool, row.id).await?;
        let lane: Lane = row.priority.parse().unwrap_or(Lane::Normal);
        let names = self.publisher(lane).broker().names();
        let mut cursor = row.route_cursor.clone();
        loop {
            let mut pages = Vec::with_capacity(PAGES_PER_CHECKPOINT);
            while pages.len() < PAGES_PER_CHECKPOINT {
                let after = pages
                    .last()
                    .map(|p: &Page| Some(p.last.clone()))
                    .unwrap_or_else(|| cursor.clone());
                match db::routing::next_page_end(
                    &self.pool,
                    &row.tenant_id,
                    topic,
                    after.as_deref(),
                    PAGE_SIZE,
                )
                .await?
                {
                    Some(last) => pages.push(Page { after, last }),
                    None => break,
                }
            }
            if pages.is_empty() {
                break;
            }
            // Each page's routing continues the enumerating span's trace.
            let trace = TraceContext::current();
            let msgs: Vec<Outgoing> = pages
                .iter()
                .map(|page| {
                    let mut msg = RouteMessage {
                        notification_id: row.id,
                        tenant_id: row.tenant_id.clone(),
                        page: Some(page.clone()),
                        replay: None,
                    }
                    .outgoing(names, &row.priority, row.created_at);
                    msg.headers = trace.apply(msg.headers);
                    msg
                })
                .collect();
            if let Some(Err(e)) = self
                .publisher(lane)
                .publish_all(&msgs)
                .await
                .into_iter()
                .find(Result::is_err)
            {
                return Err(RouteError::Transient(
                    anyhow::Error::new(e).context("publishing topic pages"),
                ));
            }
            let lasts: Vec<&str> = pages.iter().map(|p| p.last.as_str()).collect();
            db::routing::pages_handed_out(&self.pool, row.id, &lasts).await?;
            cursor = pages.last().map(|p| p.last.clone());
            metrics::counter!("herald_router_topic_pages_total").increment(pages.len() as u64);
        }
        db::routing::pages_enumerated(&self.pool, row.id).await?;
        db::routing::complete_if_all_pages_done(&self.pool, row.id).await?;
        Ok(())
    }

    /// The plan for some recipients of a notification: channels and
    /// destinations, preferences, caps, then quiet hours, `send_at` and
    /// expiry as of now.
    pub(super) async fn plan(
        &self,
        of: Subject<'_>,
        req: &NotificationRequest,
        recipients: &[Recipient],
    ) -> Result<Vec<Planned>, RouteError> {
        let (policy, caps) = self.policy(of.tenant_id).await?;
        let mut planned = plan_before_caps(req, &policy, recipients);
        if caps.contains_key(req.category.as_str()) {
            let mut conn = self.pool.acquire().await?;
            caps::apply(
                &mut conn,
                of.tenant_id,
                req.category.as_str(),
                of.id,
                of.created_at,
                &caps,
                &mut planned,
            )
            .await?;
        }
        time(&mut planned, req, recipients);
        Ok(planned)
    }

    /// The plan of a notification whose category the tenant does not cap,
    /// for ingest's inline routing ([`super::inline`]); `None` when it is
    /// capped (caps are counted by the router alone, in committed rows) or
    /// the tenant is unknown.
    pub(super) async fn plan_uncapped(
        &self,
        tenant: &str,
        req: &NotificationRequest,
        recipients: &[Recipient],
    ) -> Option<Vec<Planned>> {
        let (policy, caps) = self.policy(tenant).await.ok()?;
        if caps.contains_key(req.category.as_str()) {
            return None;
        }
        let mut planned = plan_before_caps(req, &policy, recipients);
        time(&mut planned, req, recipients);
        Some(planned)
    }

    /// One message per planned delivery that `ids` names (the stored id of
    /// each pending one), carrying `replay` when an operator replays it and
    /// the routing span's `trace` context.
    pub(super) fn messages(
        &self,
        of: Subject<'_>,
        req: &NotificationRequest,
        planned: &[Planned],
        ids: &HashMap<DeliveryKey<'_>, Uuid>,
        replay: Option<i64>,
        trace: &TraceContext,
    ) -> Vec<Outgoing> {
        let names = self.publisher(req.priority).broker().names();
        planned
            .iter()
            .filter_map(|p| {
                let id = ids.get(&key_of(p))?;
                let rendered = p.rendered.clone()?;
                let mut out = DeliveryMessage {
                    delivery_id: *id,
                    created_at: of.created_at,
                    notification_id: of.id,
                    tenant_id: of.tenant_id.to_owned(),
                    user_id: p.user_id.clone(),
                    channel: p.channel,
                    lane: req.priority,
                    destination: p.destination.clone(),
                    rendered,
                    expires_at: req.expires_at,
                }
                .outgoing(names);
                if let Some(number) = replay {
                    out.headers = out.headers.int(Headers::REPLAY, number);
                }
                out.headers = trace.apply(out.headers);
                Some(out)
            })
            .collect()
    }

    /// Decides, records and publishes the deliveries of some recipients;
    /// `again` when they may have been routed before, `replay` the replay
    /// number when an operator replays them.
    async fn deliver(
        &self,
        row: &NotificationRow,
        req: &NotificationRequest,
        recipients: Vec<Recipient>,
        again: bool,
        replay: Option<i64>,
    ) -> Result<(), RouteError> {
        self.yield_to_high(req.priority).await;
        let planned = self.plan(Subject::of(row), req, &recipients).await?;
        let lane = req.priority;
        let users: Vec<&str> = recipients.iter().map(|r| r.user_id.as_str()).collect();
        // Routed before (a redelivery, a replay): a user's channel that
        // already has deliveries gets no extra "ended" row (opted out, no
        // destination); the stored rows take the new plan's word instead.
        let mut known = HashSet::new();
        if again {
            for s in
                db::deliveries::stored_for_users(&self.pool, row.created_at, row.id, &users).await?
            {
                known.insert((s.user_id, s.channel));
            }
        }
        let new_rows = new_rows(planned.iter().filter(|p| {
            !(p.destination.address.is_empty()
                && known.contains(&(p.user_id.clone(), p.channel.as_str().to_owned())))
        }));
        let batch = BatchOf {
            created_at: row.created_at,
            notification_id: row.id,
            tenant_id: &row.tenant_id,
            lane: lane.as_str(),
            expires_at: req.expires_at,
        };
        self.yield_to_high(lane).await;
        db::deliveries::insert_batch(&self.pool, &batch, &new_rows).await?;

        // Publish what is pending *as stored*: after a redelivery the rows
        // (and their ids) are the first attempt's.
        let stored =
            db::deliveries::stored_for_users(&self.pool, row.created_at, row.id, &users).await?;
        let stale = super::replan::stale(&stored, &planned);
        if !stale.is_empty() {
            let changed = db::deliveries::replan(&self.pool, row.created_at, &stale).await?;
            metrics::counter!("herald_router_replanned_total").increment(changed);
        }
        let pending: HashMap<DeliveryKey<'_>, Uuid> = stored
            .iter()
            .filter(|s| s.status == "pending")
            .map(|s| {
                (
                    (
                        s.user_id.as_str(),
                        s.channel.as_str(),
                        s.destination.as_str(),
                    ),
                    s.id,
                )
            })
            .collect();
        let msgs = self.messages(
            Subject::of(row),
            req,
            &planned,
            &pending,
            replay,
            &TraceContext::current(),
        );
        // `high` publishes at once; the other lanes in chunks, yielding to
        // `high` work in flight before each, so a one-time code arriving
        // mid-page waits for at most one chunk's publishes, not a page's.
        let chunk = if lane == Lane::High {
            msgs.len().max(1)
        } else {
            PUBLISH_CHUNK
        };
        for (i, part) in msgs.chunks(chunk).enumerate() {
            if i > 0 {
                self.yield_to_high(lane).await;
            }
            if let Some(Err(e)) = self
                .publisher(lane)
                .publish_all(part)
                .await
                .into_iter()
                .find(Result::is_err)
            {
                return Err(RouteError::Transient(
                    anyhow::Error::new(e).context("publishing deliveries"),
                ));
            }
        }
        count(&planned, lane, row.created_at);
        Ok(())
    }
}

/// Which notification a plan or a message is for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subject<'a> {
    pub id: Uuid,
    pub tenant_id: &'a str,
    pub created_at: DateTime<Utc>,
}

impl<'a> Subject<'a> {
    /// The notification of a stored row.
    pub fn of(row: &'a NotificationRow) -> Self {
        Self {
            id: row.id,
            tenant_id: &row.tenant_id,
            created_at: row.created_at,
        }
    }
}

/// Channels, destinations and preferences of every recipient: the plan
/// before caps and timing.
fn plan_before_caps(
    req: &NotificationRequest,
    policy: &Policy,
    recipients: &[Recipient],
) -> Vec<Planned> {
    recipients
        .iter()
        .flat_map(|r| plan::plan_recipient(req, policy, r))
        .collect()
}

/// Quiet hours, `send_at` and expiry, as of now.
fn time(planned: &mut [Planned], req: &NotificationRequest, recipients: &[Recipient]) {
    let now = Utc::now();
    let by_user: HashMap<&str, &Recipient> =
        recipients.iter().map(|r| (r.user_id.as_str(), r)).collect();
    for p in planned {
        plan::apply_timing(p, req, by_user[p.user_id.as_str()], now);
    }
}

/// A delivery's fan-out key within its notification: user, channel,
/// destination.
pub(super) type DeliveryKey<'a> = (&'a str, &'a str, &'a str);

/// The fan-out key of a planned delivery.
pub(super) fn key_of(p: &Planned) -> DeliveryKey<'_> {
    (
        p.user_id.as_str(),
        p.channel.as_str(),
        p.destination.address.as_str(),
    )
}

/// The named users of several tenants in one read, as the planner sees
/// them, by (tenant, user); missing ones are absent.
pub(super) async fn recipients_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    pairs: &[(&str, &str)],
) -> Result<HashMap<(String, String), Recipient>, sqlx::Error> {
    Ok(db::routing::recipients_of(db, pairs)
        .await?
        .into_iter()
        .map(|r| {
            (
                (r.tenant_id, r.recipient.id.clone()),
                recipient(r.recipient),
            )
        })
        .collect())
}

/// The rows to insert for planned deliveries, each with a fresh id.
pub(super) fn new_rows<'a>(planned: impl Iterator<Item = &'a Planned>) -> Vec<NewDelivery> {
    planned
        .map(|p| NewDelivery {
            id: Uuid::now_v7(),
            user_id: p.user_id.clone(),
            channel: p.channel.as_str(),
            destination: p.destination.address.clone(),
            platform: p.destination.platform.map(Platform::as_str),
            status: p.status.as_str(),
            reason: p.reason.clone(),
            // Only a held delivery keeps its content: a pending one travels
            // with it, and storing it for a billion rows a day is waste.
            rendered: (p.status == Initial::Deferred)
                .then(|| {
                    p.rendered
                        .as_ref()
                        .map(|r| serde_json::to_value(r).expect("serialisable"))
                })
                .flatten(),
            not_before: p.not_before,
        })
        .collect()
}

/// Counts what was planned, and how late a `high` notification was routed.
pub(super) fn count(planned: &[Planned], lane: Lane, accepted_at: DateTime<Utc>) {
    let lane_label = lane.as_str();
    for p in planned {
        metrics::counter!("herald_router_deliveries_total", "channel" => p.channel.as_str(),
            "lane" => lane_label, "status" => p.status.as_str())
        .increment(1);
    }
    if lane == Lane::High {
        metrics::histogram!("herald_router_high_lag_seconds")
            .record((Utc::now() - accepted_at).num_milliseconds().max(0) as f64 / 1000.0);
    }
}
