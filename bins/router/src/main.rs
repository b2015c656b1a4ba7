//! `router`: expands accepted notifications into deliveries.

/// mimalloc rather than the system allocator: the request and message
/// paths allocate and free many small values across threads, and glibc's
/// malloc spent about a third of ingest's CPU on it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use herald::{routing, shutdown, telemetry};

fn main() -> anyhow::Result<()> {
    let config = routing::RouterConfig::parse();
    // One runtime thread per core unless told otherwise (herald::runtime).
    config.runtime.block_on(0, async move {
        telemetry::init(&config.common, "router");
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let stopped = routing::run(config, listener, shutdown::on_signal()).await;
        telemetry::traces::shutdown();
        stopped
    })?
}
