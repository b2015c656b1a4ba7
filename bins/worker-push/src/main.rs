//! `worker-push`: delivers the push channel's queues through its provider.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald::delivery::main(herald::model::Channel::Push).await
}
