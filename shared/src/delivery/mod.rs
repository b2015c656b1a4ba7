//! The delivery engine shared by the channel workers (docs/delivery.md).
//!
//! A worker consumes its channel's three lane queues, each with its own
//! consumer and prefetch so a `bulk` backlog never delays `high`; claims each
//! delivery in PostgreSQL before calling the provider; records the outcome;
//! and acks only after the outcome is durable.

pub mod budget;
pub mod circuit;
pub mod engine;
pub mod ledger;
mod outcome;
pub mod retry;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        Broker, Publisher,
        consumer::{self, ConsumerSpec},
    },
    config::CommonConfig,
    model::{Channel, Lane},
    ops,
    providers::Providers,
    telemetry::catalogue,
};
use engine::Engine;

/// Settings of a channel worker.
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "Herald's channel worker", version)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub runtime: crate::runtime::RuntimeConfig,
    /// Listen address of /healthz, /readyz and /metrics
    /// (default 0.0.0.0:9101 push, :9102 email, :9103 sms).
    #[arg(long, env = "HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Push provider budget, messages/s across all replicas (0 = unlimited).
    #[arg(long, env = "PUSH_RATE_PER_SEC", default_value_t = 1000)]
    pub push_rate_per_sec: u32,
    /// Email provider budget, messages/s across all replicas (0 = unlimited).
    #[arg(long, env = "EMAIL_RATE_PER_SEC", default_value_t = 200)]
    pub email_rate_per_sec: u32,
    /// SMS provider budget, messages/s across all replicas (0 = unlimited).
    #[arg(long, env = "SMS_RATE_PER_SEC", default_value_t = 50)]
    pub sms_rate_per_sec: u32,
    /// Most messages one recipient may get per minute on this channel (0 = unlimited).
    #[arg(long, env = "RECIPIENT_RATE_PER_MIN", default_value_t = 20)]
    pub recipient_rate_per_min: u32,
    /// Which providers deliver, and their settings.
    #[command(flatten)]
    pub providers: crate::providers::config::ProviderConfig,
}

impl WorkerConfig {
    /// Parses the command line and environment of `channel`'s worker.
    pub fn parse_for(channel: Channel) -> Self {
        let mut config = Self::parse();
        config
            .http_addr
            .get_or_insert_with(|| default_addr(channel));
        config
    }

    /// The listen address, defaulted per channel.
    pub fn listen_addr(&self, channel: Channel) -> SocketAddr {
        self.http_addr.unwrap_or_else(|| default_addr(channel))
    }

    /// The channel's budget in messages/s.
    pub fn rate_per_sec(&self, channel: Channel) -> u32 {
        match channel {
            Channel::Push => self.push_rate_per_sec,
            Channel::Email => self.email_rate_per_sec,
            Channel::Sms => self.sms_rate_per_sec,
        }
    }
}

fn default_addr(channel: Channel) -> SocketAddr {
    let port = match channel {
        Channel::Push => 9101,
        Channel::Email => 9102,
        Channel::Sms => 9103,
    };
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Unacked messages per lane consumer. Each lane has its own consumer and
/// channel, so `high` is never behind `bulk`. The prefetch bounds in-flight
/// work and memory; it is sized so that the two group commits a delivery
/// waits for (claim, outcome) never leave the provider idle: 512 in flight
/// keep ~40-50 rows in each ledger statement (docs/delivery.md).
pub fn prefetch(lane: Lane) -> u16 {
    match lane {
        Lane::High => 32,
        Lane::Normal => 512,
        Lane::Bulk => 512,
    }
}

/// The whole of a `worker-<channel>` binary: reads its settings, starts
/// logging, builds the channel's providers and runs until SIGTERM. The three
/// worker binaries differ only in the channel they pass.
pub fn main(channel: Channel) -> anyhow::Result<()> {
    let config = WorkerConfig::parse_for(channel);
    // One runtime thread per core unless told otherwise: on one thread a
    // `high` message waits behind a draining topic's tasks (crate::runtime).
    config.runtime.block_on(0, async move {
        crate::telemetry::init(&config.common, engine::source(channel));
        let providers = Arc::new(crate::providers::config::build(channel, &config.providers)?);
        let listener = TcpListener::bind(config.listen_addr(channel)).await?;
        let stopped = run(
            channel,
            config,
            providers,
            listener,
            crate::shutdown::on_signal(),
        )
        .await;
        crate::telemetry::traces::shutdown();
        stopped
    })?
}

/// How often a worker re-reads its replica count and queue depths.
const REFRESH: Duration = Duration::from_secs(5);

/// Runs `channel`'s worker until `cancel` fires.
pub async fn run(
    channel: Channel,
    config: WorkerConfig,
    providers: Arc<dyn Providers>,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ledger_connections = ledger::connections(config.common.database_max_connections);
    let service = ops::Service::start_with_reserve(&config.common, ledger_connections)?;
    catalogue::worker(&catalogue::WorkerLabels {
        channel,
        names: service.broker.names(),
        providers: providers.names(),
        failover: providers.failover_names(),
        tiers: config.common.retry_schedule.delays().len(),
    });
    let publisher = Publisher::new(service.broker.clone());
    let engine = Arc::new(Engine::new(
        channel,
        service.pool.clone(),
        ledger_connections,
        publisher,
        providers,
        budget::Budget::new(config.rate_per_sec(channel), config.recipient_rate_per_min),
        retry::RetryPolicy::new(config.common.retry_schedule.clone()),
        config.providers.provider_timeout,
        cancel.clone(),
    ));
    {
        let (broker, schedule, cancel) = (
            service.broker.clone(),
            config.common.retry_schedule.clone(),
            cancel.clone(),
        );
        let tasks = service.tasks.clone();
        service.tasks.spawn(async move {
            ops::declare_topology(&broker, &schedule, &cancel).await;
            for lane in Lane::ALL {
                for queue in broker.names().delivery_queues(channel, lane) {
                    let spec = ConsumerSpec {
                        queue,
                        prefetch: prefetch(lane),
                    };
                    let engine = engine.clone();
                    tasks.spawn(consumer::run(
                        broker.clone(),
                        spec,
                        cancel.clone(),
                        move |incoming| {
                            let engine = engine.clone();
                            async move { engine.handle(incoming).await }
                        },
                    ));
                }
            }
            refresh(broker, engine, channel, cancel).await;
        });
    }
    service
        .serve(
            listener,
            Router::new(),
            cancel,
            &format!("worker-{channel}"),
        )
        .await
}

/// Keeps the budget share in step with the replica count (consumers on the
/// `high` lane queue, one per replica) and publishes queue depths.
async fn refresh(
    broker: Arc<Broker>,
    engine: Arc<Engine>,
    channel: Channel,
    cancel: CancellationToken,
) {
    loop {
        for lane in Lane::ALL {
            for (shard, queue) in broker
                .names()
                .delivery_queues(channel, lane)
                .into_iter()
                .enumerate()
            {
                if let Ok(q) = broker.inspect(&queue).await {
                    metrics::gauge!("herald_queue_depth", "queue" => queue.clone())
                        .set(f64::from(q.messages));
                    metrics::gauge!("herald_queue_consumers", "queue" => queue)
                        .set(f64::from(q.consumers));
                    // Every replica consumes every shard: shard 0 of `high`
                    // counts the replicas.
                    if lane == Lane::High && shard == 0 && q.consumers > 0 {
                        engine.budget.set_replicas(q.consumers);
                    }
                }
            }
        }
        engine.budget.prune();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}
