//! `worker-sms`: delivers the sms channel's queues through its provider.

use herald::{delivery, model::Channel, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = delivery::WorkerConfig::parse_for(Channel::Sms);
    telemetry::init_logging(config.common.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen_addr(Channel::Sms)).await?;
    delivery::run(
        Channel::Sms,
        config,
        std::sync::Arc::new(herald::providers::log::LogOnly::default()),
        listener,
        shutdown::on_signal(),
    )
    .await
}
