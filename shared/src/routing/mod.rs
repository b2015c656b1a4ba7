//! The router: turns accepted notifications into deliveries.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::CommonConfig, dlq, ops};

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
    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9100")]
    pub http_addr: SocketAddr,
}

/// Runs the router until `cancel` fires.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let service = ops::Service::start(&config.common)?;
    {
        let (broker, pool, schedule, cancel) = (
            service.broker.clone(),
            service.pool.clone(),
            config.common.retry_schedule.clone(),
            cancel.clone(),
        );
        service.tasks.spawn(async move {
            ops::declare_topology(&broker, &schedule, &cancel).await;
            dlq::archive::run(broker, pool, cancel).await;
        });
    }
    service
        .serve(listener, Router::new(), cancel, "router")
        .await
}
