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

use chrono::Utc;
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
        Lane,
        message::{DeliveryMessage, Page, RouteMessage},
        notification::{NotificationRequest, Recipients},
        user::{EmailAddress, PhoneE164, Platform, Profile},
    },
};

/// Subscribers per topic page: big enough that per-page overhead (a few
/// queries, one publish batch) is amortised, small enough that a page's
/// recipients and messages stay well under a megabyte or two in memory.
pub const PAGE_SIZE: i64 = 1000;
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
    publisher: Publisher,
    policies: Arc<Mutex<HashMap<String, CachedPolicy>>>,
    /// `high` routing messages in progress. Work of the other lanes pauses
    /// between its steps while there are any: on two cores, a bulk page's
    /// insert and publish otherwise compete with a one-time code for CPU
    /// and database.
    high_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a `high` message in flight for as long as it lives.
struct HighGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for HighGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn recipient(row: RecipientRow) -> Recipient {
    Recipient {
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
    /// A router writing to `pool` and publishing with `publisher`.
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        Self {
            pool,
            publisher,
            policies: Arc::default(),
            high_in_flight: Arc::default(),
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

    /// Waits while `high` work is in flight (bounded, so a stream of codes
    /// slows bulk work down but never stops it).
    async fn yield_to_high(&self, lane: Lane) {
        if lane == Lane::High {
            return;
        }
        for _ in 0..100 {
            if self
                .high_in_flight
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
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
        let _high = (lane == Lane::High).then(|| {
            self.high_in_flight
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            HighGuard(self.high_in_flight.clone())
        });
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
        let req: NotificationRequest = serde_json::from_value(row.request.clone())
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
            (Recipients::Topic(topic), None) => self.enumerate(&row, topic.as_str()).await?,
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
            .map(|id| {
                found.remove(*id).unwrap_or_else(|| Recipient {
                    user_id: (*id).to_owned(),
                    profile: None,
                    preferences: Default::default(),
                    devices: Vec::new(),
                })
            })
            .collect())
    }

    /// Hands a topic's subscribers out in pages, on the notification's own
    /// lane, checkpointing as it goes so a crash resumes where it stopped.
    async fn enumerate(&self, row: &NotificationRow, topic: &str) -> Result<(), RouteError> {
        db::routing::start_routing(&self.pool, row.id).await?;
        let names = self.publisher.broker().names();
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
            let msgs: Vec<Outgoing> = pages
                .iter()
                .map(|page| {
                    RouteMessage {
                        notification_id: row.id,
                        tenant_id: row.tenant_id.clone(),
                        page: Some(page.clone()),
                        replay: None,
                    }
                    .outgoing(names, &row.priority, row.created_at)
                })
                .collect();
            if let Some(Err(e)) = self
                .publisher
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
        let now = Utc::now();
        let (policy, caps) = self.policy(&row.tenant_id).await?;
        let by_user: HashMap<&str, &Recipient> =
            recipients.iter().map(|r| (r.user_id.as_str(), r)).collect();
        let mut planned: Vec<Planned> = recipients
            .iter()
            .flat_map(|r| plan::plan_recipient(req, &policy, r))
            .collect();
        caps::apply(
            &self.pool,
            &row.tenant_id,
            req.category.as_str(),
            row.id,
            row.created_at,
            &caps,
            &mut planned,
        )
        .await?;
        for p in &mut planned {
            plan::apply_timing(p, req, by_user[p.user_id.as_str()], now);
        }

        let lane = req.priority;
        // Routed before (a redelivery, a replay): a user's channel that
        // already has deliveries gets no extra "ended" row (opted out, no
        // destination); the stored rows take the new plan's word instead.
        let mut known = HashSet::new();
        if again {
            let users: Vec<&str> = by_user.keys().copied().collect();
            for s in
                db::deliveries::stored_for_users(&self.pool, row.created_at, row.id, &users).await?
            {
                known.insert((s.user_id, s.channel));
            }
        }
        let new_rows: Vec<NewDelivery> = planned
            .iter()
            .filter(|p| {
                !(p.destination.address.is_empty()
                    && known.contains(&(p.user_id.clone(), p.channel.as_str().to_owned())))
            })
            .map(|p| NewDelivery {
                id: Uuid::now_v7(),
                user_id: p.user_id.clone(),
                channel: p.channel.as_str(),
                destination: p.destination.address.clone(),
                platform: p.destination.platform.map(Platform::as_str),
                status: p.status.as_str(),
                reason: p.reason.clone(),
                rendered: (p.status == Initial::Deferred)
                    .then(|| {
                        p.rendered
                            .as_ref()
                            .map(|r| serde_json::to_value(r).expect("serialisable"))
                    })
                    .flatten(),
                not_before: p.not_before,
            })
            .collect();
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
        let users: Vec<&str> = by_user.keys().copied().collect();
        let stored =
            db::deliveries::stored_for_users(&self.pool, row.created_at, row.id, &users).await?;
        let stale = super::replan::stale(&stored, &planned);
        if !stale.is_empty() {
            let changed = db::deliveries::replan(&self.pool, row.created_at, &stale).await?;
            metrics::counter!("herald_router_replanned_total").increment(changed);
        }
        let pending: HashSet<(&str, &str, &str)> = stored
            .iter()
            .filter(|s| s.status == "pending")
            .map(|s| {
                (
                    s.user_id.as_str(),
                    s.channel.as_str(),
                    s.destination.as_str(),
                )
            })
            .collect();
        let ids: HashMap<(&str, &str, &str), Uuid> = stored
            .iter()
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
        let names = self.publisher.broker().names();
        let msgs: Vec<Outgoing> = planned
            .iter()
            .filter_map(|p| {
                let key = (
                    p.user_id.as_str(),
                    p.channel.as_str(),
                    p.destination.address.as_str(),
                );
                if !pending.contains(&key) {
                    return None;
                }
                let rendered = p.rendered.clone()?;
                Some(
                    DeliveryMessage {
                        delivery_id: ids[&key],
                        created_at: row.created_at,
                        notification_id: row.id,
                        tenant_id: row.tenant_id.clone(),
                        user_id: p.user_id.clone(),
                        channel: p.channel,
                        lane,
                        destination: p.destination.clone(),
                        rendered,
                        expires_at: req.expires_at,
                    }
                    .outgoing(names),
                )
                .map(|mut out| {
                    if let Some(number) = replay {
                        out.headers = out.headers.int(Headers::REPLAY, number);
                    }
                    out
                })
            })
            .collect();
        if let Some(Err(e)) = self
            .publisher
            .publish_all(&msgs)
            .await
            .into_iter()
            .find(Result::is_err)
        {
            return Err(RouteError::Transient(
                anyhow::Error::new(e).context("publishing deliveries"),
            ));
        }
        let lane_label = lane.as_str();
        for p in &planned {
            metrics::counter!("herald_router_deliveries_total", "channel" => p.channel.as_str(),
                "lane" => lane_label, "status" => p.status.as_str())
            .increment(1);
        }
        if lane == Lane::High {
            metrics::histogram!("herald_router_high_lag_seconds")
                .record((Utc::now() - row.created_at).num_milliseconds().max(0) as f64 / 1000.0);
        }
        Ok(())
    }
}
