//! `worker-sms`: delivers the sms channel's queues through its provider.

use std::sync::Arc;

use herald::{delivery, model::Channel, providers, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = delivery::WorkerConfig::parse_for(Channel::Sms);
    telemetry::init_logging(config.common.log_format);
    let providers = Arc::new(providers::config::build(Channel::Sms, &config.providers)?);
    let listener = tokio::net::TcpListener::bind(config.listen_addr(Channel::Sms)).await?;
    delivery::run(
        Channel::Sms,
        config,
        providers,
        listener,
        shutdown::on_signal(),
    )
    .await
}
