//! The supervised consumer loop shared by every consuming process.
//!
//! It (re)connects, sets the prefetch, consumes, and hands each message to a
//! handler running concurrently up to the prefetch. The handler owns the
//! message and must ack or nack it on the message's own channel. A lost
//! connection or a broken channel restarts the loop after a pause and a log
//! line; it is never a silent stall. On cancellation the loop cancels its
//! consumer, waits for in-flight handlers, then returns.
//!
//! Each message travels with a token that fires when its channel is gone
//! (the connection broke, or the consumer is stopping): from then on the
//! broker owns the message again and will hand it out anew, so a handler
//! holding it through an outage (see [`crate::outage`]) lets go.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Broker, acks::Settler};

/// What to consume and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Queue to consume.
    pub queue: String,
    /// Unacked messages this consumer may hold: the bound on in-flight work.
    pub prefetch: u16,
}

/// A message and what its handler needs to know about its channel.
pub struct Incoming {
    /// The message; settle it with [`Incoming::settle`].
    pub delivery: Delivery,
    /// Acks (coalesced with the channel's others) and requeues.
    pub settle: Settler,
    /// Fires when the message's channel is gone or the consumer is stopping:
    /// the broker hands the message out again, so holding it is pointless.
    pub lost: CancellationToken,
}

/// Longest a stopping consumer waits for its in-flight handlers: inside
/// Kubernetes' default 30 s grace, and past the engine's own grace for
/// recording outcomes.
const DRAIN_LIMIT: Duration = Duration::from_secs(25);
/// Longest a consumer whose channel broke waits for its in-flight handlers
/// before reconnecting: long enough for a provider call to finish
/// (`PROVIDER_TIMEOUT` is 10 s by default).
const BROKEN_LIMIT: Duration = Duration::from_secs(12);

/// First pause before reconnecting.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between reconnect attempts: how late a consumer may notice
/// that the broker is back. Attempts against a broker that is down are
/// refused at once and cost nothing worth saving.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Runs a consumer until `cancel` fires, restarting it after any error.
pub async fn run<H, F>(
    broker: Arc<Broker>,
    spec: ConsumerSpec,
    cancel: CancellationToken,
    handler: H,
) where
    H: Fn(Incoming) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut pause = FIRST_PAUSE;
    while !cancel.is_cancelled() {
        let mut consumed = false;
        match consume_once(&broker, &spec, &cancel, handler.clone(), &mut consumed).await {
            Ok(()) => return,
            Err(err) => {
                // A consumer that got going before it broke starts its
                // backoff afresh: each outage is waited out on its own.
                if consumed {
                    pause = FIRST_PAUSE;
                }
                metrics::counter!("herald_consumer_restarts_total", "queue" => spec.queue.clone())
                    .increment(1);
                tracing::warn!(queue = %spec.queue, error = %err, pause_ms = pause.as_millis() as u64,
                    "consumer stopped; reconnecting after a pause");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

async fn consume_once<H, F>(
    broker: &Broker,
    spec: &ConsumerSpec,
    cancel: &CancellationToken,
    handler: H,
    consumed: &mut bool,
) -> anyhow::Result<()>
where
    H: Fn(Incoming) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let channel = broker.channel().await?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{}-{}", spec.queue, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            spec.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %spec.queue, prefetch = spec.prefetch, "consuming");
    *consumed = true;
    let tracker = TaskTracker::new();
    let lost = cancel.child_token();
    let (settler, coalescer) = Settler::start();
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Stop taking work; messages already here are finished below
                // and anything unacked is requeued when the channel closes.
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                break Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (acker, tag) = (delivery.acker.clone(), delivery.delivery_tag);
                    let handler = handler.clone();
                    let queue = spec.queue.clone();
                    settler.delivered(&delivery);
                    let settle = settler.clone();
                    let incoming = Incoming { delivery, lost: lost.clone(), settle: settler.clone() };
                    tracker.spawn(async move {
                        // One task per message; a panic is caught here rather
                        // than by a second task around the handler.
                        if let Err(panic) = AssertUnwindSafe(handler(incoming)).catch_unwind().await {
                            // A panicking handler must not strand its message:
                            // requeue it, and let the delivery limit catch poison.
                            let error = panic_message(&*panic);
                            tracing::error!(queue = %queue, error = %error, "handler panicked; requeueing");
                            settle.requeue_tag(tag, &acker).await;
                        }
                    });
                }
                Some(Err(err)) => break Err(err.into()),
                None => break Err(anyhow::anyhow!("consumer stream ended (channel closed)")),
            }
        }
    };
    lost.cancel();
    tracker.close();
    // Let in-flight handlers finish: on shutdown so their outcomes are
    // recorded and acked; when the channel broke so that a handler still
    // calling its provider is not raced by the redelivered copy of its
    // message. Bounded either way: a consumer must never stall on a handler.
    let limit = if outcome.is_ok() {
        DRAIN_LIMIT
    } else {
        BROKEN_LIMIT
    };
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(queue = %spec.queue, left = tracker.len(), limit_ms = limit.as_millis() as u64,
            "handlers still running; going on without them");
    }
    // The acks of the last settled messages go out before the channel
    // closes (handlers still running hold a settler and are given up on).
    drop(settler);
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, coalescer).await;
    let _ = tokio::time::timeout(
        SETTLE_TIMEOUT,
        channel.close(200, "consumer stopped".into()),
    )
    .await;
    outcome
}

/// The text a panic carried, if it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic without a message")
}

/// Longest the last acks or the channel's close may take. On a connection
/// that died under them, the answer may never come; the broker redelivers
/// the messages anyway, and the consumer must not hang on it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
