//! `ingest`: Herald's HTTP API and event-driven ingest.

/// mimalloc rather than the system allocator: the request and message
/// paths allocate and free many small values across threads, and glibc's
/// malloc spent about a third of ingest's CPU on it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use herald::{api, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let config = api::IngestConfig::parse();
    // One runtime thread unless told otherwise (herald::runtime).
    config.runtime.block_on(1, async move {
        telemetry::init(&config.common, "ingest");
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let stopped = api::run(config, listener, shutdown::on_signal()).await;
        telemetry::traces::shutdown();
        stopped
    })?
}
