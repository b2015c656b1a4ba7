//! Dead letters: how a process sends a message it cannot handle to the
//! dead-letter exchange, and the archiver that moves them into PostgreSQL.

pub mod archive;

use lapin::message::Delivery;

use crate::broker::{Headers, Outgoing, PublishError, Publisher};

/// Why a message is dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetterReason {
    /// The process that gave up on it (`ingest`, `router`, `worker-sms` ...).
    pub source: &'static str,
    /// A short, filterable class: `invalid`, `exhausted`, `permanent`, `unroutable` ...
    pub error_class: &'static str,
    /// The last error, in words.
    pub error: String,
    /// The tenant, when known.
    pub tenant: Option<String>,
}

/// Publishes `delivery`'s payload and headers to the dead-letter exchange
/// with the reason attached, and waits for the confirm. The caller acks the
/// original only after this returns `Ok`.
pub async fn publish(
    publisher: &Publisher,
    delivery: &Delivery,
    reason: &DeadLetterReason,
) -> Result<(), PublishError> {
    let mut headers = Headers::from_table(delivery.properties.headers().as_ref())
        .str(Headers::SOURCE, reason.source)
        .str(Headers::ERROR_CLASS, reason.error_class)
        .str(Headers::ERROR, &reason.error)
        .str(Headers::ORIGINAL_EXCHANGE, delivery.exchange.as_str())
        .str(Headers::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str());
    if let Some(tenant) = &reason.tenant {
        headers = headers.str(Headers::TENANT, tenant);
    }
    let msg = Outgoing::json(
        publisher.broker().names().dead_exchange(),
        "",
        delivery.data.clone(),
        headers,
    );
    publisher.publish(&msg).await
}

/// Like [`publish`], for a message whose headers and id the caller prepared
/// (a dead delivery keeps its attempt count and a stable id).
pub async fn publish_outgoing(
    publisher: &Publisher,
    mut msg: Outgoing,
    delivery: &Delivery,
    reason: &DeadLetterReason,
) -> Result<(), PublishError> {
    msg.exchange = publisher.broker().names().dead_exchange();
    msg.routing_key = String::new();
    msg.headers = msg
        .headers
        .str(Headers::SOURCE, reason.source)
        .str(Headers::ERROR_CLASS, reason.error_class)
        .str(Headers::ERROR, &reason.error)
        .str(Headers::ORIGINAL_EXCHANGE, delivery.exchange.as_str())
        .str(Headers::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str());
    publisher.publish(&msg).await
}
