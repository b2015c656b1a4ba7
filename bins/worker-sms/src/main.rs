//! `worker-sms`: delivers the sms channel's queues through its provider.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald::delivery::main(herald::model::Channel::Sms).await
}
