//! AMQP headers Herald puts on every message, so one notification can be
//! followed across processes and a dead letter explains itself.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Builder over an AMQP header table.
#[derive(Debug, Clone, Default)]
pub struct Headers(FieldTable);

impl Headers {
    /// Tenant the message belongs to.
    pub const TENANT: &'static str = "x-herald-tenant";
    /// Notification id.
    pub const NOTIFICATION: &'static str = "x-herald-notification-id";
    /// Delivery id.
    pub const DELIVERY: &'static str = "x-herald-delivery-id";
    /// Channel of a delivery.
    pub const CHANNEL: &'static str = "x-herald-channel";
    /// Lane of a delivery.
    pub const LANE: &'static str = "x-herald-lane";
    /// Attempts made so far.
    pub const ATTEMPTS: &'static str = "x-herald-attempts";
    /// Error class of a dead letter (`invalid`, `exhausted`, `permanent`, ...).
    pub const ERROR_CLASS: &'static str = "x-herald-error-class";
    /// Last error of a dead letter, in words.
    pub const ERROR: &'static str = "x-herald-error";
    /// What dead-lettered the message (`ingest`, `router`, `worker-push` ...).
    pub const SOURCE: &'static str = "x-herald-source";
    /// Delay of the retry tier a message waits in, in ms; the retry exchange
    /// routes on it. Deliberately without the `x-` prefix: a headers
    /// exchange ignores binding arguments named `x-...` (unless `x-match`
    /// is `all-with-x`), so a binding on such a header matches every message.
    pub const RETRY_DELAY_MS: &'static str = "herald-retry-delay-ms";
    /// The name the retry header had before: its bindings matched every
    /// message. Kept only to remove those bindings from existing brokers.
    pub const LEGACY_RETRY_DELAY_MS: &'static str = "x-herald-retry-delay-ms";
    /// When the notification was accepted (Unix ms), for end-to-end latency.
    pub const ACCEPTED_AT_MS: &'static str = "x-herald-accepted-at-ms";
    /// Routing key the message had when it was dead-lettered, so replay can
    /// put it back where it came from.
    pub const ORIGINAL_ROUTING_KEY: &'static str = "x-herald-original-routing-key";
    /// Exchange the message had when it was dead-lettered.
    pub const ORIGINAL_EXCHANGE: &'static str = "x-herald-original-exchange";
    /// How many times an operator replayed this message from the dead-letter
    /// store. Part of the archiver's dedupe key, so a replayed message that
    /// dies again is stored again instead of being taken for a redelivery.
    pub const REPLAY: &'static str = "x-herald-replay";
    /// Id of one publish of a delivery message, fresh each time it is
    /// published (a second publish of the same message is another copy):
    /// the worker claims the delivery under it, so a redelivered copy takes
    /// over only its own claim (`db::deliveries::claim_many`).
    pub const COPY: &'static str = "x-herald-copy";
    /// Idempotency key of event-driven ingest (PRODUCT.md).
    pub const IDEMPOTENCY_KEY: &'static str = "idempotency-key";

    /// Starts from an existing table (to forward a message's headers).
    pub fn from_table(table: Option<&FieldTable>) -> Self {
        Self(table.cloned().unwrap_or_default())
    }

    /// Sets a string header.
    pub fn str(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.as_ref().as_bytes().to_vec())),
        );
        self
    }

    /// Sets an integer header.
    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongLongInt(value));
        self
    }

    /// The table, for `BasicProperties::with_headers`.
    pub fn into_table(self) -> FieldTable {
        self.0
    }
}

/// Reads a string header (long or short string).
pub fn header_str(table: Option<&FieldTable>, key: &str) -> Option<String> {
    match table?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header of any width.
pub fn header_i64(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    match table?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}
