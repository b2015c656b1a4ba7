//! Exchanges and queues, declared idempotently by every binary at start and
//! by `heraldctl topology`. See docs/topology.md for the picture.
//!
//! Every durable queue is a quorum queue with an explicit delivery limit and
//! at-least-once dead-lettering (RabbitMQ 3.10 has neither by default).

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    config::RetrySchedule,
    model::{Channel as DeliveryChannel, Lane},
};

use super::Headers;

/// How often a message may be handed out (crash, nack, shutdown requeue)
/// before the broker dead-letters it as poison. High enough that rolling
/// restarts never trip it, low enough that a message crashing every worker
/// leaves the queue within minutes.
pub const DELIVERY_LIMIT: i32 = 20;

/// Names of every exchange and queue, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`herald` in production).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange other services publish notification requests to; the
    /// routing key is the tenant id.
    pub fn ingest_exchange(&self) -> String {
        format!("{}.ingest", self.prefix)
    }
    /// Queue behind [`Self::ingest_exchange`], consumed by `ingest`.
    pub fn ingest_queue(&self) -> String {
        format!("{}.ingest", self.prefix)
    }
    /// Direct exchange of accepted notifications, keyed by lane.
    pub fn notifications_exchange(&self) -> String {
        format!("{}.notifications", self.prefix)
    }
    /// The router's queue for one lane: notifications of that priority, and
    /// the pages of their topic fan-outs, so a bulk topic never delays `high`.
    pub fn route_queue(&self, lane: Lane) -> String {
        format!("{}.route.{lane}", self.prefix)
    }
    /// Direct exchange of deliveries, keyed `channel.lane`; also where retry
    /// tiers dead-letter back to.
    pub fn deliveries_exchange(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }
    /// Routing key of a delivery queue.
    pub fn delivery_key(channel: DeliveryChannel, lane: Lane) -> String {
        format!("{channel}.{lane}")
    }
    /// A channel worker's queue for one lane.
    pub fn delivery_queue(&self, channel: DeliveryChannel, lane: Lane) -> String {
        format!("{}.{channel}.{lane}", self.prefix)
    }
    /// Headers exchange in front of the retry tiers; routes on
    /// [`Headers::RETRY_DELAY_MS`] so a message keeps its original routing key.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }
    /// The retry tier queue for one delay. The delay is in the name, so a new
    /// `RETRY_SCHEDULE` declares new queues instead of clashing with old ones.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.prefix, delay.as_millis())
    }
    /// Topic exchange of delivery events (CloudEvents), keyed
    /// `{tenant}.{channel}.{status}`; other services bind their own queues.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Routing key of a delivery event.
    pub fn event_key(tenant: &str, channel: &str, status: &str) -> String {
        format!("{tenant}.{channel}.{status}")
    }
    /// Routing key of webhook messages on the deliveries exchange (and back
    /// from the retry tiers).
    pub const WEBHOOK_KEY: &'static str = "webhook";
    /// Queue of webhook messages (one event for one endpoint), consumed by
    /// the webhook sender.
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    /// Fanout exchange every dead letter goes to.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    /// The dead-letter queue, drained into PostgreSQL by the archiver.
    pub fn dead_queue(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// Every queue name, for stats and for deleting a test's topology.
    pub fn all_queues(&self, schedule: &RetrySchedule) -> Vec<String> {
        let mut queues = vec![self.ingest_queue(), self.dead_queue()];
        queues.extend(Lane::ALL.iter().map(|l| self.route_queue(*l)));
        for channel in DeliveryChannel::ALL {
            queues.extend(Lane::ALL.iter().map(|l| self.delivery_queue(channel, *l)));
        }
        queues.push(self.webhook_queue());
        queues.extend(schedule.queue_delays().iter().map(|d| self.retry_queue(*d)));
        queues.dedup();
        queues
    }

    /// Every exchange name.
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.ingest_exchange(),
            self.notifications_exchange(),
            self.deliveries_exchange(),
            self.retry_exchange(),
            self.dead_exchange(),
            self.events_exchange(),
        ]
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Arguments of a quorum queue that dead-letters to `dlx` at least once.
fn quorum_args(dlx: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_str("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    args.insert("x-dead-letter-exchange".into(), long_str(dlx));
    // At-least-once dead-lettering needs reject-publish overflow; without it
    // RabbitMQ dead-letters fire-and-forget.
    args.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
    args.insert("x-overflow".into(), long_str("reject-publish"));
    args
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

async fn queue(ch: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map(|_| ())
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The binding arguments of one retry tier: messages whose `header` is `tier`.
fn retry_match(header: &str, tier: AMQPValue) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long_str("all"));
    args.insert(ShortString::from(header), tier);
    args
}

/// Declares every exchange, queue and binding. Safe to run concurrently from
/// many processes and again on every start.
pub async fn declare(ch: &Channel, names: &Names, schedule: &RetrySchedule) -> lapin::Result<()> {
    let dead = names.dead_exchange();
    exchange(ch, &names.ingest_exchange(), ExchangeKind::Topic).await?;
    exchange(ch, &names.notifications_exchange(), ExchangeKind::Direct).await?;
    exchange(ch, &names.deliveries_exchange(), ExchangeKind::Direct).await?;
    exchange(ch, &names.retry_exchange(), ExchangeKind::Headers).await?;
    exchange(ch, &dead, ExchangeKind::Fanout).await?;
    // No queue of Herald's own: the services that want events bind theirs.
    exchange(ch, &names.events_exchange(), ExchangeKind::Topic).await?;

    // The dead-letter queue is the end of the line: its archiver stores even
    // bytes it cannot parse, so it needs no delivery limit or DLX of its own.
    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), long_str("quorum"));
    queue(ch, &names.dead_queue(), dlq_args).await?;
    bind(ch, &names.dead_queue(), &dead, "").await?;

    queue(ch, &names.ingest_queue(), quorum_args(&dead)).await?;
    bind(ch, &names.ingest_queue(), &names.ingest_exchange(), "#").await?;

    for lane in Lane::ALL {
        let q = names.route_queue(lane);
        queue(ch, &q, quorum_args(&dead)).await?;
        bind(ch, &q, &names.notifications_exchange(), lane.as_str()).await?;
    }

    for channel in DeliveryChannel::ALL {
        for lane in Lane::ALL {
            let q = names.delivery_queue(channel, lane);
            queue(ch, &q, quorum_args(&dead)).await?;
            bind(
                ch,
                &q,
                &names.deliveries_exchange(),
                &Names::delivery_key(channel, lane),
            )
            .await?;
        }
    }

    // Webhooks: one message per event and endpoint, on the deliveries
    // exchange so the retry tiers bring it back.
    queue(ch, &names.webhook_queue(), quorum_args(&dead)).await?;
    bind(
        ch,
        &names.webhook_queue(),
        &names.deliveries_exchange(),
        Names::WEBHOOK_KEY,
    )
    .await?;

    for delay in schedule.queue_delays() {
        let q = names.retry_queue(delay);
        // A message waits out the queue-level TTL, then dead-letters back to
        // the deliveries exchange under its original routing key. Queue-level
        // (not per-message) TTL, so messages never block behind a longer one.
        let mut args = quorum_args(&names.deliveries_exchange());
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        queue(ch, &q, args).await?;
        let tier = AMQPValue::LongLongInt(delay.as_millis() as i64);
        ch.queue_bind(
            q.as_str().into(),
            names.retry_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            retry_match(Headers::RETRY_DELAY_MS, tier.clone()),
        )
        .await?;
        // Brokers set up by earlier versions bound the tier on a header named
        // `x-...`, which a headers exchange ignores: that binding matched
        // every retry, copying it into every tier. Unbinding a binding that
        // does not exist is a no-op, so this is safe on every start.
        ch.queue_unbind(
            q.as_str().into(),
            names.retry_exchange().into(),
            "".into(),
            retry_match(Headers::LEGACY_RETRY_DELAY_MS, tier),
        )
        .await?;
    }
    Ok(())
}
