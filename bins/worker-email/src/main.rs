//! `worker-email`: delivers the email channel's queues through its provider.

use herald::{delivery, model::Channel, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = delivery::WorkerConfig::parse_for(Channel::Email);
    telemetry::init_logging(config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen_addr(Channel::Email)).await?;
    delivery::run(
        Channel::Email,
        config,
        std::sync::Arc::new(herald::providers::log::LogOnly::default()),
        listener,
        shutdown::on_signal(),
    )
    .await
}
