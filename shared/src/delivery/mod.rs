//! The delivery engine shared by the channel workers.

use std::net::SocketAddr;

use axum::Router;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::CommonConfig, model::Channel, ops};

/// Settings of a channel worker.
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "Herald's channel worker", version)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Listen address of /healthz, /readyz and /metrics
    /// (default 0.0.0.0:9101 push, :9102 email, :9103 sms).
    #[arg(long, env = "HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
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
}

fn default_addr(channel: Channel) -> SocketAddr {
    let port = match channel {
        Channel::Push => 9101,
        Channel::Email => 9102,
        Channel::Sms => 9103,
    };
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Runs `channel`'s worker until `cancel` fires.
pub async fn run(
    channel: Channel,
    config: WorkerConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let service = ops::Service::start(&config.common)?;
    {
        let (broker, schedule, cancel) = (
            service.broker.clone(),
            config.common.retry_schedule.clone(),
            cancel.clone(),
        );
        service.tasks.spawn(async move {
            ops::declare_topology(&broker, &schedule, &cancel).await;
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
