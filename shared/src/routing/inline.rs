//! Inline routing: ingest routes the common notification (a few named
//! users) inside the transaction that accepts it, instead of handing it to
//! the router through a routing message.
//!
//! In that one commit go the notification, its idempotency record and its
//! deliveries, planned by the router's own code (channels, destinations,
//! preferences, suppressions, quiet hours, `send_at`, expiry). Ingest then
//! publishes the delivery messages in place of the routing message, with
//! the same confirm wait, and answers 202. One broker hop, two commits and
//! the router's reads are saved per notification; the guarantees are the
//! router's:
//!
//! - the notification stays `accepted` until its delivery messages are
//!   confirmed; a batched, asynchronously committed update then marks it
//!   `routed`. If ingest dies before (or the mark is lost), the outbox relay
//!   finds an `accepted`, unpublished row after its grace and publishes a
//!   routing message: the router finds the deliveries stored and publishes
//!   the pending ones again (the worker's claim absorbs a second copy);
//! - a notification whose category the tenant caps goes to the router:
//!   caps are counted against committed rows, which the router alone
//!   writes, so two transactions never both see room under a cap;
//! - topics and longer lists go to the router, as before.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    fanout::{DeliveryKey, Fanout, Subject, count, key_of, new_rows, recipients_of},
    plan::{Initial, Planned, Recipient},
};
use crate::{
    broker::{Outgoing, Publisher},
    db::{self, deliveries::BatchOf, notifications::NewNotification},
    model::{
        Lane,
        notification::{NotificationRequest, Recipients},
    },
    telemetry::traces::TraceContext,
};

/// Routing in ingest's commit, for user lists of at most `max_users`.
#[derive(Clone)]
pub struct Inline {
    fanout: Fanout,
    max_users: usize,
}

/// A notification offered for inline routing, with the trace context its
/// delivery messages carry.
pub struct Offer<'a> {
    pub row: &'a NewNotification,
    pub req: &'a NotificationRequest,
    pub trace: &'a TraceContext,
}

/// A notification routed inline: its deliveries are in the transaction,
/// these are the messages of the pending ones.
#[derive(Debug)]
pub struct Routed {
    pub messages: Vec<Outgoing>,
    lane: Lane,
    accepted_at: chrono::DateTime<chrono::Utc>,
    planned: Vec<Planned>,
}

impl Routed {
    /// Counts what was planned (`herald_router_deliveries_total`), once
    /// the notification is routed.
    pub fn count(&self) {
        count(&self.planned, self.lane, self.accepted_at);
    }
}

impl Inline {
    /// Inline routing of user lists up to `max_users` long; `None` when
    /// `max_users` is 0 (the router routes everything).
    pub fn new(pool: sqlx::PgPool, publisher: Publisher, max_users: usize) -> Option<Self> {
        (max_users > 0).then(|| Self {
            fanout: Fanout::new(pool, publisher),
            max_users,
        })
    }

    /// Whether a request may be routed inline: a list of at most
    /// `max_users` users (the tenant's caps are checked when planning).
    pub fn takes(&self, req: &NotificationRequest) -> bool {
        matches!(&req.to, Recipients::Users(users) if users.len() <= self.max_users)
    }

    /// Plans the offered notifications and inserts their deliveries in
    /// `tx`, whose notifications are inserted already. One answer per
    /// offer, in order: its delivery messages, or `None` when the router
    /// must route it (its category is capped).
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        offers: &[Offer<'_>],
    ) -> Result<Vec<Option<Routed>>, sqlx::Error> {
        if offers.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(&str, &str)> = offers
            .iter()
            .flat_map(|o| users(o.req).map(|u| (o.row.tenant_id.as_str(), u)))
            .collect();
        let found: HashMap<(String, String), Recipient> = recipients_of(&mut *tx, &pairs).await?;
        let mut plans = Vec::with_capacity(offers.len());
        for o in offers {
            let recipients: Vec<Recipient> = users(o.req)
                .map(|u| {
                    found
                        .get(&(o.row.tenant_id.clone(), u.to_owned()))
                        .cloned()
                        .unwrap_or_else(|| Recipient::unknown(u))
                })
                .collect();
            plans.push(
                self.fanout
                    .plan_uncapped(&o.row.tenant_id, o.req, &recipients)
                    .await,
            );
        }
        let of: Vec<BatchOf<'_>> = offers
            .iter()
            .map(|o| BatchOf {
                created_at: o.row.created_at,
                notification_id: o.row.id,
                tenant_id: &o.row.tenant_id,
                lane: o.req.priority.as_str(),
                expires_at: o.req.expires_at,
            })
            .collect();
        let new: Vec<_> = plans
            .iter()
            .map(|p| p.as_ref().map(|p| new_rows(p.iter())).unwrap_or_default())
            .collect();
        let rows: Vec<_> = of
            .iter()
            .zip(&new)
            .flat_map(|(of, rows)| rows.iter().map(move |r| (of, r)))
            .collect();
        // Fresh notifications: every row is new, nothing conflicts.
        let inserted: HashSet<Uuid> = db::deliveries::insert_many(&mut *tx, &rows)
            .await?
            .into_iter()
            .collect();
        Ok(offers
            .iter()
            .zip(plans)
            .zip(&new)
            .map(|((o, plan), rows)| {
                let planned = plan?;
                let ids: HashMap<DeliveryKey<'_>, Uuid> = planned
                    .iter()
                    .zip(rows)
                    .filter(|(p, r)| p.status == Initial::Pending && inserted.contains(&r.id))
                    .map(|(p, r)| (key_of(p), r.id))
                    .collect();
                let subject = Subject {
                    id: o.row.id,
                    tenant_id: &o.row.tenant_id,
                    created_at: o.row.created_at,
                };
                let messages = self
                    .fanout
                    .messages(subject, o.req, &planned, &ids, None, o.trace);
                Some(Routed {
                    messages,
                    lane: o.req.priority,
                    accepted_at: o.row.created_at,
                    planned,
                })
            })
            .collect())
    }
}

/// The users a request names (none for a topic).
fn users(req: &NotificationRequest) -> impl Iterator<Item = &str> {
    let users: &[_] = match &req.to {
        Recipients::Users(users) => users,
        Recipients::Topic(_) => &[],
    };
    users.iter().map(|u| u.as_str())
}
