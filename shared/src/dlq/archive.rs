//! The archiver: moves every message of the dead-letter queue into the
//! `dead_letters` table. The broker message is acked only after the row is
//! committed, and the row is keyed by the message, so a crash between the two
//! stores it once, not twice.

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        Broker, Headers,
        consumer::{self, ConsumerSpec, Incoming},
        header_i64, header_str,
    },
    db::dead_letters::{self, NewDeadLetter},
    outage::{self, Held},
};

/// Dead letters archived at once.
const PREFETCH: u16 = 32;

/// Runs the archiver until cancelled.
pub async fn run(broker: Arc<Broker>, pool: PgPool, cancel: CancellationToken) {
    let spec = ConsumerSpec {
        queue: broker.names().dead_queue(),
        prefetch: PREFETCH,
    };
    consumer::run(broker, spec, cancel, move |incoming| {
        let pool = pool.clone();
        async move { handle(&pool, incoming).await }
    })
    .await;
}

/// Stores one dead letter, holding it while the database is down.
async fn handle(pool: &PgPool, incoming: Incoming) {
    let Incoming {
        delivery,
        lost,
        settle,
    } = incoming;
    let record = to_record(&delivery);
    let stored = outage::hold("archive", &lost, || async {
        Ok(dead_letters::insert(pool, &record).await?)
    })
    .await;
    match stored {
        Ok(stored) => {
            if stored {
                metrics::counter!("herald_dead_letters_archived_total",
                    "source" => record.source.clone(), "error_class" => record.error_class.clone())
                .increment(1);
                tracing::info!(source = %record.source, error_class = %record.error_class,
                    tenant = record.tenant_id.as_deref().unwrap_or(""), "dead letter archived");
            }
            settle.ack(&delivery);
        }
        Err(Held::Stopped) => {}
        Err(Held::Failed(e)) => {
            // The dead-letter queue has no delivery limit: a record the
            // database refuses waits there, visible in its depth.
            tracing::error!(
                error = format!("{e:#}"),
                "could not archive dead letter; requeueing"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            settle.requeue(&delivery).await;
        }
    }
}

/// The first `x-death` entry RabbitMQ adds when it dead-letters by itself
/// (delivery limit, expiry, rejection).
fn x_death(headers: Option<&FieldTable>) -> Option<&FieldTable> {
    match headers?.inner().get("x-death")? {
        AMQPValue::FieldArray(entries) => match entries.as_slice().first()? {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// `text` as PostgreSQL can store it in `text` and `jsonb`: NUL (which
/// either refuses) shown as U+FFFD. A message carrying one must still be
/// archived, or it would be requeued for good.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// Turns a dead-letter queue message into a store record.
pub fn to_record(delivery: &Delivery) -> NewDeadLetter {
    let headers = delivery.properties.headers().as_ref();
    let death = x_death(headers);
    let get = |k: &str| header_str(headers, k).map(storable);
    // A message Herald dead-lettered itself carries its reason in headers;
    // one the broker dead-lettered carries x-death (e.g. delivery_limit).
    let (source, error_class, last_error) = match get(Headers::ERROR_CLASS) {
        Some(class) => (
            get(Headers::SOURCE).unwrap_or_else(|| "unknown".into()),
            class,
            get(Headers::ERROR).unwrap_or_default(),
        ),
        None => {
            let reason = header_str(death, "reason").unwrap_or_else(|| "unknown".into());
            let queue = header_str(death, "queue").unwrap_or_default();
            let class = if reason == "delivery_limit" {
                "poison"
            } else {
                "broker"
            };
            (
                "broker".into(),
                class.into(),
                storable(format!(
                    "dead-lettered by the broker from `{queue}`: {reason}"
                )),
            )
        }
    };
    let (exchange, routing_key) = match (get(Headers::ORIGINAL_EXCHANGE), death) {
        (Some(ex), _) => (ex, get(Headers::ORIGINAL_ROUTING_KEY).unwrap_or_default()),
        (None, Some(d)) => (
            header_str(Some(d), "exchange").unwrap_or_default(),
            match d.inner().get("routing-keys") {
                Some(AMQPValue::FieldArray(keys)) => match keys.as_slice().first() {
                    Some(AMQPValue::LongString(s)) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
                    _ => String::new(),
                },
                _ => String::new(),
            },
        ),
        (None, None) => (
            delivery.exchange.to_string(),
            delivery.routing_key.to_string(),
        ),
    };
    let (exchange, routing_key) = (storable(exchange), storable(routing_key));
    let message_key = match delivery.properties.message_id() {
        // A worker gives a dead delivery a stable id, and a replay strips
        // x-death: the replay number tells a replayed message that died again
        // from a redelivery of the first death.
        Some(id) => match header_i64(headers, Headers::REPLAY) {
            Some(replay) => format!(
                "{id}:{}:replay{replay}",
                header_i64(death, "count").unwrap_or(0)
            ),
            None => format!("{id}:{}", header_i64(death, "count").unwrap_or(0)),
        },
        None => {
            // Without a message id (some external publishers), the content
            // identifies the message.
            let mut h = Sha256::new();
            h.update(&delivery.data);
            h.update(format!("{headers:?}").as_bytes());
            hex::encode(h.finalize())
        }
    };
    let failed_at = delivery
        .properties
        .timestamp()
        .and_then(|t| Utc.timestamp_opt(t as i64, 0).single())
        .filter(|_| get(Headers::ERROR_CLASS).is_some())
        .unwrap_or_else(Utc::now);
    NewDeadLetter {
        message_key,
        source,
        tenant_id: get(Headers::TENANT),
        channel: get(Headers::CHANNEL),
        lane: get(Headers::LANE),
        notification_id: get(Headers::NOTIFICATION).and_then(|s| s.parse().ok()),
        delivery_id: get(Headers::DELIVERY).and_then(|s| s.parse().ok()),
        user_id: get(Headers::DELIVERY).and(recipient(&delivery.data)),
        error_class,
        last_error,
        attempts: header_i64(headers, Headers::ATTEMPTS).unwrap_or(0) as i32,
        exchange,
        routing_key,
        headers: headers_json(headers),
        payload: delivery.data.clone(),
        failed_at,
    }
}

/// The user a dead delivery was for, from its payload.
fn recipient(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Recipient {
        user_id: String,
    }
    serde_json::from_slice::<Recipient>(payload)
        .ok()
        .map(|r| r.user_id)
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AMQPValue::LongString(s) => {
            Value::String(storable(String::from_utf8_lossy(s.as_bytes()).into_owned()))
        }
        AMQPValue::ShortString(s) => Value::String(storable(s.as_str().to_owned())),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::FieldTable(t) => headers_json(Some(t)),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        other => header_i64(
            Some(&FieldTable::from(std::collections::BTreeMap::from([(
                "v".into(),
                other.clone(),
            )]))),
            "v",
        )
        .map_or_else(|| Value::String(format!("{other:?}")), Value::from),
    }
}

/// An AMQP header table as JSON, for the store and the operator's view.
pub fn headers_json(headers: Option<&FieldTable>) -> serde_json::Value {
    let map = headers
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (storable(k.as_str().to_owned()), value_json(v)))
                .collect()
        })
        .unwrap_or_default();
    serde_json::Value::Object(map)
}
