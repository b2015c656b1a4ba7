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

/// Names of every exchange and queue, derived from one prefix and the
/// number of shards of each lane queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
    shards: u16,
}

impl Names {
    /// Names under `prefix` (`herald` in production), one queue per lane.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            shards: 1,
        }
    }

    /// The same names with every lane queue (the router's and each
    /// channel's) split into `shards` queues (`QUEUE_SHARDS`, at least 1).
    pub fn with_shards(mut self, shards: u16) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many queues each lane is split into.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The routing key of the shard that `key` (a user, a notification)
    /// falls in: `base` itself for shard 0, so the unsharded names stay as
    /// they were and a queue declared before sharding keeps its traffic;
    /// `base.N` for shard N. The hash is FNV-1a, fixed here rather than
    /// taken from the standard library, because every process of every
    /// version must pick the same shard for the same key.
    pub fn shard_key(&self, base: &str, key: &[&[u8]]) -> String {
        match shard_of(key, self.shards) {
            0 => base.to_owned(),
            shard => format!("{base}.{shard}"),
        }
    }

    /// `name` for each shard: `name`, `name.1`, `name.2`, ...
    fn sharded(&self, name: String) -> Vec<String> {
        (0..self.shards)
            .map(|shard| match shard {
                0 => name.clone(),
                shard => format!("{name}.{shard}"),
            })
            .collect()
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
    /// Shard 0 when the lane is sharded.
    pub fn route_queue(&self, lane: Lane) -> String {
        format!("{}.route.{lane}", self.prefix)
    }
    /// Every shard of the router's queue for one lane, shard 0 first.
    pub fn route_queues(&self, lane: Lane) -> Vec<String> {
        self.sharded(self.route_queue(lane))
    }
    /// Routing key of a notification's routing message (and its pages) on
    /// `lane`: its shard is chosen by the notification id.
    pub fn route_key(&self, lane: &str, notification: uuid::Uuid) -> String {
        self.shard_key(lane, &[notification.as_bytes()])
    }
    /// Direct exchange of deliveries, keyed `channel.lane`; also where retry
    /// tiers dead-letter back to.
    pub fn deliveries_exchange(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }
    /// Routing key of a delivery queue (shard 0 when sharded).
    pub fn delivery_key(channel: DeliveryChannel, lane: Lane) -> String {
        format!("{channel}.{lane}")
    }
    /// Routing key of one user's deliveries on a channel and lane: the
    /// shard is chosen by tenant and user, so one user's deliveries stay in
    /// one queue, in order.
    pub fn user_delivery_key(
        &self,
        channel: DeliveryChannel,
        lane: Lane,
        tenant: &str,
        user: &str,
    ) -> String {
        let key: [&[u8]; 3] = [tenant.as_bytes(), &[0], user.as_bytes()];
        self.shard_key(&Self::delivery_key(channel, lane), &key)
    }
    /// A channel worker's queue for one lane (shard 0 when sharded).
    pub fn delivery_queue(&self, channel: DeliveryChannel, lane: Lane) -> String {
        format!("{}.{channel}.{lane}", self.prefix)
    }
    /// Every shard of a channel worker's queue for one lane, shard 0 first.
    pub fn delivery_queues(&self, channel: DeliveryChannel, lane: Lane) -> Vec<String> {
        self.sharded(self.delivery_queue(channel, lane))
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
        queues.extend(Lane::ALL.iter().flat_map(|l| self.route_queues(*l)));
        for channel in DeliveryChannel::ALL {
            queues.extend(
                Lane::ALL
                    .iter()
                    .flat_map(|l| self.delivery_queues(channel, *l)),
            );
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

/// The shard (`0..shards`) of `key`: FNV-1a 64 of its parts' bytes, in
/// order (hashed where they lie, nothing joined per message).
fn shard_of(key: &[&[u8]], shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let hash = key
        .iter()
        .flat_map(|part| part.iter())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % u64::from(shards)) as u16
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

/// Arguments of one shard of a lane queue. Shards after the first place
/// their leader on the cluster node leading the fewest queues (`balanced`),
/// so a lane's shards spread over the nodes. Shard 0 keeps the arguments it
/// was first declared with: RabbitMQ refuses to redeclare a queue with a
/// leader locator it was not created with (operators spread existing
/// leaders with `rabbitmq-queues rebalance quorum`).
fn shard_args(shard: usize, dlx: &str) -> FieldTable {
    let mut args = quorum_args(dlx);
    if shard > 0 {
        args.insert("x-queue-leader-locator".into(), long_str("balanced"));
    }
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
        let queues = names.route_queues(lane);
        let keys = names.sharded(lane.as_str().to_owned());
        for (shard, (q, key)) in queues.iter().zip(&keys).enumerate() {
            queue(ch, q, shard_args(shard, &dead)).await?;
            bind(ch, q, &names.notifications_exchange(), key).await?;
        }
    }

    for channel in DeliveryChannel::ALL {
        for lane in Lane::ALL {
            let queues = names.delivery_queues(channel, lane);
            let keys = names.sharded(Names::delivery_key(channel, lane));
            for (shard, (q, key)) in queues.iter().zip(&keys).enumerate() {
                queue(ch, q, shard_args(shard, &dead)).await?;
                bind(ch, q, &names.deliveries_exchange(), key).await?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_unsharded_names_and_keys() {
        let names = Names::new("herald");
        let key = names.user_delivery_key(DeliveryChannel::Push, Lane::Normal, "acme", "u1");
        assert_eq!(key, "push.normal");
        assert_eq!(
            names.delivery_queues(DeliveryChannel::Push, Lane::Normal),
            ["herald.push.normal"]
        );
        assert_eq!(names.route_queues(Lane::High), ["herald.route.high"]);
        assert_eq!(names.route_key("high", uuid::Uuid::nil()), "high");
    }

    #[test]
    fn shards_spread_users_and_keep_each_user_in_one() {
        let names = Names::new("herald").with_shards(3);
        assert_eq!(
            names.delivery_queues(DeliveryChannel::Sms, Lane::Bulk),
            ["herald.sms.bulk", "herald.sms.bulk.1", "herald.sms.bulk.2"]
        );
        let keys: Vec<String> = (0..3000)
            .map(|u| {
                names.user_delivery_key(DeliveryChannel::Sms, Lane::Bulk, "acme", &format!("u{u}"))
            })
            .collect();
        for shard in ["sms.bulk", "sms.bulk.1", "sms.bulk.2"] {
            let n = keys.iter().filter(|k| *k == shard).count();
            assert!((800..1200).contains(&n), "{shard}: {n} of 3000");
        }
        // Stable: the same user, the same shard, in every process.
        assert_eq!(
            keys[42],
            names.user_delivery_key(DeliveryChannel::Sms, Lane::Bulk, "acme", "u42")
        );
        // Fixed values: a change of hash would move users between shards
        // while their older deliveries still wait in the old ones.
        assert_eq!(shard_of(&[], 3), (0xcbf2_9ce4_8422_2325_u64 % 3) as u16);
        assert_eq!(shard_of(&[b"acme\0u1"], 1), 0);
    }

    #[test]
    fn every_shard_is_listed_for_stats_and_cleanup() {
        let schedule = RetrySchedule::default();
        let one = Names::new("h").all_queues(&schedule);
        let three = Names::new("h").with_shards(3).all_queues(&schedule);
        // 3 route lanes and 9 channel lanes gain two shards each.
        assert_eq!(three.len(), one.len() + 2 * 12);
        assert!(three.contains(&"h.route.normal.2".to_owned()));
        assert!(three.contains(&"h.email.high.1".to_owned()));
    }
}
