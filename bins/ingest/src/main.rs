//! `ingest`: Herald's HTTP API and event-driven ingest.

use clap::Parser;
use herald::{api, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = api::IngestConfig::parse();
    telemetry::init_logging(config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    api::run(config, listener, shutdown::on_signal()).await
}
