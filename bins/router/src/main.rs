//! `router`: expands accepted notifications into deliveries.

use clap::Parser;
use herald::{routing, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = routing::RouterConfig::parse();
    telemetry::init_logging(config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    routing::run(config, listener, shutdown::on_signal()).await
}
