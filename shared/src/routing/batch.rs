//! Routing many notifications in one go. The common notification names one
//! user: routed alone it costs a handful of database round trips and a
//! publisher confirm, and the router spends its time waiting on them. The
//! lane's handlers hand their routing messages to a [`Batcher`], which
//! routes whatever is queued together: one read of the notifications, one
//! of the recipients, one insert of every delivery, one batch of confirms,
//! one update of the notifications' status. Nothing waits to fill a batch:
//! a batch is whatever arrived while the previous one was being written.
//!
//! What is not a first routing of a user list takes the one-message path
//! ([`Fanout::route`]): a topic (enumerated in pages), a page, a replay, a
//! redelivered message, and a notification some of whose deliveries turn
//! out to be stored already (it was routed before).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{
    fanout::{DeliveryKey, Fanout, RouteError, Subject, count, key_of, new_rows, recipients_of},
    plan::{Initial, Recipient},
};
use crate::{
    db::{self, deliveries::BatchOf, notifications::NotificationRow},
    model::{
        Lane,
        message::RouteMessage,
        notification::{NotificationRequest, Recipients},
    },
    outage,
    telemetry::traces::TraceContext,
};

/// Most routing messages in one batch: a batch's rows and messages stay
/// well under a few megabytes.
const BATCH: usize = 256;
/// Batches in flight at once: while one waits for its commit or confirms,
/// the next is already being read and planned.
const SLOTS: usize = 2;

/// How a routing message was handled by the batch.
#[derive(Debug)]
pub enum Routed {
    /// Routed (or nothing to do): ack it.
    Done,
    /// Not for the batch: route it on the one-message path; `again` when
    /// it was found routed before.
    Single { again: bool },
}

type Reply = oneshot::Sender<Result<Routed, RouteError>>;

/// A routing message queued for the batch, with the trace context of the
/// span that routes it: its deliveries carry that span's, not the batch's.
type Job = (RouteMessage, TraceContext, Reply);

/// Collects one lane's routing messages into batches. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the collector of `lane`.
    pub fn start(fanout: Fanout, lane: Lane) -> Self {
        let (jobs, rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(collect(fanout, lane, rx));
        Self { jobs }
    }

    /// Routes `msg` with whatever else is queued; its deliveries carry the
    /// current span's trace context.
    pub async fn route(&self, msg: RouteMessage) -> Result<Routed, RouteError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RouteError::Transient(anyhow::anyhow!("the router is stopping"));
        self.jobs
            .send((msg, TraceContext::current(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn collect(fanout: Fanout, lane: Lane, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(SLOTS));
    let mut queued = Vec::with_capacity(BATCH);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut queued, BATCH).await == 0 {
            return;
        }
        let mut msgs = Vec::with_capacity(queued.len());
        let mut traces = Vec::with_capacity(queued.len());
        let mut replies = Vec::with_capacity(queued.len());
        for (msg, trace, reply) in queued.drain(..) {
            msgs.push(msg);
            traces.push(trace);
            replies.push(reply);
        }
        let fanout = fanout.clone();
        tokio::spawn(async move {
            metrics::histogram!("herald_router_batch_messages", "lane" => lane.as_str())
                .record(msgs.len() as f64);
            let results = fanout.route_batch(&msgs, &traces, lane).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}

/// A user-list notification of the batch being routed.
struct Work {
    /// Index of its message in the batch.
    at: usize,
    row: NotificationRow,
    req: NotificationRequest,
}

/// Turns a batch-wide failure into one error per waiting message, keeping
/// whether it was an outage (so each message is held, not returned).
fn shared(e: &anyhow::Error) -> RouteError {
    let text = format!("{e:#}");
    RouteError::Transient(if outage::is_outage(e) {
        anyhow::Error::new(outage::Unavailable(text))
    } else {
        anyhow::anyhow!(text)
    })
}

impl Fanout {
    /// Routes a batch of routing messages of `lane`, each message's
    /// deliveries carrying its trace context in `traces` (the same order);
    /// one result per message, in order.
    pub async fn route_batch(
        &self,
        msgs: &[RouteMessage],
        traces: &[TraceContext],
        lane: Lane,
    ) -> Vec<Result<Routed, RouteError>> {
        let mut results: Vec<Option<Result<Routed, RouteError>>> =
            msgs.iter().map(|_| None).collect();
        let mut seen = HashSet::new();
        for (at, msg) in msgs.iter().enumerate() {
            // A page or a replay takes the one-message path; so does a
            // second copy of a notification in the same batch (the one-message
            // path then finds it routed).
            if msg.page.is_some() || msg.replay.is_some() || !seen.insert(msg.notification_id) {
                results[at] = Some(Ok(Routed::Single { again: true }));
            }
        }
        let ids: Vec<Uuid> = seen.into_iter().collect();
        let rows = match db::routing::notifications(self.pool(), &ids).await {
            Ok(rows) => rows,
            Err(e) => return fill(results, &anyhow::Error::new(e)),
        };
        let mut rows: HashMap<Uuid, NotificationRow> =
            rows.into_iter().map(|r| (r.id, r)).collect();
        let mut work = Vec::new();
        for (at, msg) in msgs.iter().enumerate() {
            if results[at].is_some() {
                continue;
            }
            match first_routing(msg, rows.remove(&msg.notification_id)) {
                Ok(Some((row, req))) => work.push(Work { at, row, req }),
                Ok(None) => results[at] = Some(Ok(Routed::Done)),
                Err(routed) => results[at] = Some(routed),
            }
        }
        if let Err(e) = self.route_work(&work, traces, lane, &mut results).await {
            return fill(results, &e);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Ok(Routed::Done)))
            .collect()
    }

    /// Plans, records and publishes the deliveries of `work`, recording each
    /// one's result; `Err` when the batch as a whole failed.
    async fn route_work(
        &self,
        work: &[Work],
        traces: &[TraceContext],
        lane: Lane,
        results: &mut [Option<Result<Routed, RouteError>>],
    ) -> anyhow::Result<()> {
        if work.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&str, &str)> = work
            .iter()
            .flat_map(|w| match &w.req.to {
                Recipients::Users(users) => users
                    .iter()
                    .map(|u| (w.row.tenant_id.as_str(), u.as_str()))
                    .collect::<Vec<_>>(),
                Recipients::Topic(_) => Vec::new(),
            })
            .collect();
        let found: HashMap<(String, String), Recipient> =
            recipients_of(self.pool(), &pairs).await?;

        self.yield_to_high(lane).await;
        let mut planned = Vec::with_capacity(work.len());
        for w in work {
            let Recipients::Users(users) = &w.req.to else {
                continue;
            };
            let recipients: Vec<Recipient> = users
                .iter()
                .map(|u| {
                    found
                        .get(&(w.row.tenant_id.clone(), u.as_str().to_owned()))
                        .cloned()
                        .unwrap_or_else(|| Recipient::unknown(u.as_str()))
                })
                .collect();
            match self.plan(Subject::of(&w.row), &w.req, &recipients).await {
                Ok(plan) => planned.push((w, plan)),
                Err(e) => results[w.at] = Some(Err(e)),
            }
        }

        let of: Vec<BatchOf<'_>> = planned
            .iter()
            .map(|(w, _)| BatchOf {
                created_at: w.row.created_at,
                notification_id: w.row.id,
                tenant_id: &w.row.tenant_id,
                lane: w.req.priority.as_str(),
                expires_at: w.req.expires_at,
            })
            .collect();
        let new: Vec<_> = planned.iter().map(|(_, p)| new_rows(p.iter())).collect();
        let rows: Vec<_> = of
            .iter()
            .zip(&new)
            .flat_map(|(of, rows)| rows.iter().map(move |r| (of, r)))
            .collect();
        let inserted: HashSet<Uuid> = db::deliveries::insert_many(self.pool(), &rows)
            .await?
            .into_iter()
            .collect();

        let mut msgs = Vec::new();
        let mut owners = Vec::new();
        let mut routed = Vec::new();
        for ((w, plan), rows) in planned.iter().zip(&new) {
            if rows.iter().any(|r| !inserted.contains(&r.id)) {
                // Some of its deliveries were there before: routed before.
                results[w.at] = Some(Ok(Routed::Single { again: true }));
                continue;
            }
            let ids: HashMap<DeliveryKey<'_>, Uuid> = plan
                .iter()
                .zip(rows)
                .filter(|(p, _)| p.status == Initial::Pending)
                .map(|(p, r)| (key_of(p), r.id))
                .collect();
            let trace = traces.get(w.at).cloned().unwrap_or_default();
            for m in self.messages(Subject::of(&w.row), &w.req, plan, &ids, None, &trace) {
                msgs.push(m);
                owners.push(w.at);
            }
            routed.push((w, plan));
        }
        let mut failed = HashSet::new();
        for (result, at) in self
            .publisher(lane)
            .publish_all(&msgs)
            .await
            .into_iter()
            .zip(&owners)
        {
            if let Err(e) = result
                && failed.insert(*at)
            {
                results[*at] = Some(Err(RouteError::Transient(
                    anyhow::Error::new(e).context("publishing deliveries"),
                )));
            }
        }
        let done: Vec<Uuid> = routed
            .iter()
            .filter(|(w, _)| !failed.contains(&w.at))
            .map(|(w, _)| w.row.id)
            .collect();
        db::routing::finish_routing_many(self.pool(), &done).await?;
        for (w, plan) in routed.iter().filter(|(w, _)| !failed.contains(&w.at)) {
            count(plan, w.req.priority, w.row.created_at);
            results[w.at] = Some(Ok(Routed::Done));
        }
        Ok(())
    }
}

/// What a routing message asks of the batch, given its notification: the
/// notification and its request when it is a user list to route for the
/// first time; `None` when there is nothing to do (withdrawn, or routed
/// already); `Err` with the message's result otherwise.
#[allow(clippy::result_large_err)]
fn first_routing(
    msg: &RouteMessage,
    row: Option<NotificationRow>,
) -> Result<Option<(NotificationRow, NotificationRequest)>, Result<Routed, RouteError>> {
    let Some(row) = row else {
        // Withdrawn by ingest after a failed publish: nothing to route.
        return Ok(None);
    };
    if row.tenant_id != msg.tenant_id {
        return Err(Err(RouteError::Permanent(
            "routing message names another tenant".into(),
        )));
    }
    if matches!(row.status.as_str(), "routed" | "completed") {
        return Ok(None);
    }
    let req: NotificationRequest = NotificationRequest::deserialize(&row.request).map_err(|e| {
        Err(RouteError::Permanent(format!(
            "stored request does not parse: {e}"
        )))
    })?;
    match req.to {
        Recipients::Users(_) => Ok(Some((row, req))),
        Recipients::Topic(_) => Err(Ok(Routed::Single { again: false })),
    }
}

/// Every message without a result yet gets the batch's failure.
fn fill(
    results: Vec<Option<Result<Routed, RouteError>>>,
    e: &anyhow::Error,
) -> Vec<Result<Routed, RouteError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(shared(e))))
        .collect()
}
