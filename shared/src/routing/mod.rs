//! The router: turns accepted notifications into deliveries (docs/routing.md).
//!
//! One consumer per priority lane, each on its own channel and prefetch, so a
//! million-subscriber `bulk` topic never holds up a `high` one-time code; the
//! deferred-delivery scheduler; the dead-letter archiver; the relay of
//! delivery events (crate::events); and housekeeping (delivery partitions,
//! cap ledger).

pub mod batch;
pub mod caps;
pub mod fanout;
pub mod inline;
pub mod plan;
pub mod quiet;
pub mod replan;
pub mod scheduler;

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    broker::{
        Publisher,
        consumer::{self, ConsumerSpec, Incoming},
    },
    config::CommonConfig,
    db,
    dlq::{self, DeadLetterReason},
    model::{Lane, message::RouteMessage},
    ops,
    outage::{self, Held},
    telemetry::traces::TraceContext,
};
use batch::{Batcher, Routed};
use fanout::{Fanout, RouteError};

/// Settings of the `router` binary.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "router",
    about = "Herald's router: fans notifications out into deliveries",
    version
)]
pub struct RouterConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub runtime: crate::runtime::RuntimeConfig,
    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9100")]
    pub http_addr: SocketAddr,
    /// Days of delivery history kept; older daily partitions are dropped.
    #[arg(long, env = "DELIVERY_RETENTION_DAYS", default_value_t = 30)]
    pub delivery_retention_days: i32,
    /// Networks (CIDR, comma-separated) webhook endpoints may resolve to
    /// besides public addresses. Unset: public addresses only.
    #[arg(long, env = "WEBHOOK_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub webhook_allowed_networks: Vec<crate::webhooks::address::Network>,
    /// How long an endpoint may keep failing before it is disabled.
    #[arg(long, env = "WEBHOOK_DISABLE_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_disable_after: Duration,
    /// Longest webhook call.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// Most POSTs per second to one webhook endpoint, per router replica
    /// (0 = unlimited).
    #[arg(long, env = "WEBHOOK_RATE_PER_SEC", default_value_t = 50)]
    pub webhook_rate_per_sec: u32,
}

/// Routing messages held at once per lane: what the lane's batches are made
/// of (routing/batch.rs). One-off notifications are routed in batches, so
/// deep prefetches cost no more concurrency on the database; a topic's
/// enumeration and pages are bounded separately ([`Fanout`]'s page slots).
fn prefetch(lane: Lane) -> u16 {
    match lane {
        Lane::High => 64,
        Lane::Normal => 512,
        Lane::Bulk => 256,
    }
}

/// Pause before returning a message that failed on its own (not an outage)
/// to its queue.
const TRANSIENT_PAUSE: Duration = Duration::from_secs(1);

/// Runs the router until `cancel` fires.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let service = ops::Service::start(&config.common)?;
    crate::telemetry::catalogue::router(service.broker.names());
    let publisher = Publisher::new(service.broker.clone());
    let fanout = Fanout::new(service.pool.clone(), publisher.clone());
    {
        let (broker, pool, schedule, cancel) = (
            service.broker.clone(),
            service.pool.clone(),
            config.common.retry_schedule.clone(),
            cancel.clone(),
        );
        let publisher = publisher.clone();
        let tasks = service.tasks.clone();
        let webhook_networks = config.webhook_allowed_networks.clone();
        let (webhook_disable_after, webhook_timeout, webhook_rate) = (
            config.webhook_disable_after,
            config.webhook_timeout,
            config.webhook_rate_per_sec,
        );
        service.tasks.spawn(async move {
            ops::declare_topology(&broker, &schedule, &cancel).await;
            for lane in Lane::ALL {
                // One batcher per lane: every shard's messages share its
                // batches.
                let batcher = Batcher::start(fanout.clone(), lane);
                for queue in broker.names().route_queues(lane) {
                    let spec = ConsumerSpec {
                        queue,
                        prefetch: prefetch(lane),
                    };
                    let (fanout, publisher, batcher) =
                        (fanout.clone(), publisher.clone(), batcher.clone());
                    tasks.spawn(consumer::run(
                        broker.clone(),
                        spec,
                        cancel.clone(),
                        move |incoming| {
                            let (fanout, publisher, batcher) =
                                (fanout.clone(), publisher.clone(), batcher.clone());
                            async move {
                                handle(&fanout, &batcher, &publisher, incoming, lane).await
                            }
                        },
                    ));
                }
            }
            // A channel of its own: a batch of events never queues ahead of
            // deliveries on the router's channel, and an error that closes
            // the events' channel leaves routing alone.
            tasks.spawn(crate::events::relay::run(
                pool.clone(),
                Publisher::new(broker.clone()),
                cancel.clone(),
            ));
            tasks.spawn(crate::events::relay::watch_backlog(
                pool.clone(),
                cancel.clone(),
            ));
            tasks.spawn(crate::webhooks::send::run(
                crate::webhooks::send::Sender::new(
                    pool.clone(),
                    Publisher::new(broker.clone()),
                    crate::webhooks::address::Policy::new(webhook_networks),
                    crate::delivery::retry::RetryPolicy::new(schedule.clone()),
                    webhook_disable_after,
                    webhook_timeout,
                )
                .with_rate_per_endpoint(webhook_rate),
                broker.clone(),
                cancel.clone(),
            ));
            tasks.spawn(scheduler::run(
                pool.clone(),
                publisher.clone(),
                cancel.clone(),
            ));
            tasks.spawn(housekeeping(
                pool.clone(),
                config.delivery_retention_days,
                cancel.clone(),
            ));
            dlq::archive::run(broker, pool, cancel).await;
        });
    }
    service
        .serve(listener, Router::new(), cancel, "router")
        .await
}

/// Routes one message. A database or broker outage holds the message and
/// retries the (idempotent) routing in process rather than returning it to
/// its queue, where each try would spend one of its deliveries.
async fn handle(
    fanout: &Fanout,
    batcher: &Batcher,
    publisher: &Publisher,
    incoming: Incoming,
    lane: Lane,
) {
    let Incoming {
        delivery,
        lost,
        settle,
    } = incoming;
    let routed = match serde_json::from_slice::<RouteMessage>(&delivery.data) {
        Ok(msg) => {
            // A child of the accepting span when the message carries its
            // `traceparent` (the relay's republished ones do not).
            let span = tracing::info_span!("router.route", notification_id = %msg.notification_id,
                tenant = %msg.tenant_id, lane = lane.as_str());
            let carried = TraceContext::from_amqp(delivery.properties.headers().as_ref());
            if carried.traceparent().is_some() {
                let _ = span.set_parent(carried.parent());
            }
            outage::hold("route", &lost, || async {
                let outcome = route(fanout, batcher, &msg, lane, delivery.redelivered).await;
                match outcome {
                    Ok(()) => Ok(Ok(())),
                    Err(RouteError::Permanent(reason)) => Ok(Err(reason)),
                    Err(RouteError::Transient(e)) => Err(e),
                }
            })
            .instrument(span)
            .await
        }
        Err(e) => Ok(Err(format!("routing message does not parse: {e}"))),
    };
    match routed {
        Ok(Ok(())) => {
            settle.ack(&delivery);
        }
        Ok(Err(reason)) => {
            tracing::error!(error = %reason, "routing message cannot be routed; dead-lettering");
            let reason = DeadLetterReason {
                source: "router",
                error_class: "unroutable",
                error: reason,
                tenant: None,
            };
            dlq::reject(publisher, &delivery, &settle, &reason, &lost).await;
        }
        Err(Held::Stopped) => {
            settle.requeue(&delivery).await;
        }
        Err(Held::Failed(e)) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "routing failed; returning the message to its queue"
            );
            settle.requeue_after(&delivery, TRANSIENT_PAUSE).await;
        }
    }
}

/// A first routing of a message goes through the lane's batch; what the
/// batch hands back, and anything routed before, takes the one-message path.
async fn route(
    fanout: &Fanout,
    batcher: &Batcher,
    msg: &RouteMessage,
    lane: Lane,
    redelivered: bool,
) -> Result<(), RouteError> {
    // From here to the end `high` work is in flight, the batch included:
    // `normal` and `bulk` steps of this router yield to it.
    let _high = fanout.track_high(lane);
    let mut again = redelivered || msg.replay.is_some();
    if !again && msg.page.is_none() {
        match batcher.route(msg.clone()).await? {
            Routed::Done => return Ok(()),
            Routed::Single { again: before } => again = before,
        }
    }
    fanout.route(msg, lane, again).await
}

/// Hourly: create upcoming delivery partitions, drop expired ones (unless
/// they still hold a delivery not yet due), purge notifications past the
/// same retention, trim the frequency-cap ledger.
async fn housekeeping(pool: PgPool, retention_days: i32, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = db::ensure_partitions(&pool).await {
            tracing::warn!(error = %e, "could not create delivery partitions");
        }
        match sqlx::query_scalar!(
            r#"SELECT herald_drop_delivery_partitions($1) AS "dropped!""#,
            retention_days,
        )
        .fetch_one(&pool)
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "old delivery partitions dropped"),
            Err(e) => tracing::warn!(error = %e, "could not drop old delivery partitions"),
        }
        // Notifications go with their deliveries' retention, in batches so
        // no one statement holds many locks.
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
        loop {
            match db::notifications::purge_older_than(&pool, cutoff, 1000).await {
                Ok(1000) => continue,
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "old notifications purged"),
                Err(e) => tracing::warn!(error = %e, "could not purge old notifications"),
            }
            break;
        }
        // Caps windows are at most 31 days.
        if let Err(e) =
            sqlx::query!("DELETE FROM frequency_events WHERE at < now() - interval '31 days'")
                .execute(&pool)
                .await
        {
            tracing::warn!(error = %e, "could not trim the frequency-cap ledger");
        }
    }
}
