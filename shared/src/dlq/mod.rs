//! Dead letters: how a process sends a message it cannot handle to the
//! dead-letter exchange, the archiver that moves them into PostgreSQL, and
//! replay, which puts them back.

pub mod archive;
pub mod replay;

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};

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

/// Longest error text a dead letter carries in its headers. Every header
/// must fit in one AMQP frame (128 KiB on RabbitMQ by default, all headers
/// together), and an error may quote its input (the name of an unknown
/// field, megabytes long): a larger header makes the publish a connection
/// error, so the message could never be dead-lettered at all.
pub const MAX_ERROR_HEADER: usize = 4096;

/// `error` cut to [`MAX_ERROR_HEADER`] bytes at a character boundary.
fn header_error(error: &str) -> Cow<'_, str> {
    if error.len() <= MAX_ERROR_HEADER {
        return Cow::Borrowed(error);
    }
    let mut end = MAX_ERROR_HEADER;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… (cut from {} bytes)",
        &error[..end],
        error.len()
    ))
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
        .str(Headers::ERROR, header_error(&reason.error))
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
        .str(Headers::ERROR, header_error(&reason.error))
        .str(Headers::ORIGINAL_EXCHANGE, delivery.exchange.as_str())
        .str(Headers::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str());
    publisher.publish(&msg).await
}

/// A stored payload for display: its JSON if it is JSON, else its text.
pub fn payload_json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// A time bound of a dead-letter filter, as operators write it: an RFC 3339
/// time, a `YYYY-MM-DDTHH:MM` time in UTC (what an HTML time input sends), or
/// a duration meaning that long ago (`2h`, `7d`).
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("`{s}` is neither a time (RFC 3339) nor a duration such as 2h or 7d")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| format!("`{s}` is too long ago"))
}

/// Dead-letters `delivery` with `reason` and acks it. While the dead letter
/// cannot be published (the broker is down or blocked) the message is held
/// and the publish retried; if its channel goes first, the broker hands the
/// message out again. It is never dropped.
pub async fn reject(
    publisher: &Publisher,
    delivery: &Delivery,
    settle: &crate::broker::acks::Settler,
    reason: &DeadLetterReason,
    lost: &tokio_util::sync::CancellationToken,
) {
    let published = crate::outage::hold("dead_letter", lost, || async {
        publish(publisher, delivery, reason)
            .await
            .map_err(anyhow::Error::new)
    })
    .await;
    match published {
        Ok(()) => {
            tracing::info!(source = reason.source, error_class = reason.error_class, error = %reason.error,
                tenant = reason.tenant.as_deref().unwrap_or(""), "message dead-lettered");
            settle.ack(delivery);
        }
        Err(e) => {
            tracing::warn!(error = ?e, "could not dead-letter before the channel went; the broker will redeliver");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_ERROR_HEADER, header_error, parse_when};

    #[test]
    fn long_errors_are_cut_to_fit_a_header() {
        assert_eq!(header_error("short"), "short");
        let long = format!("unknown field `{}`", "é".repeat(200_000));
        let cut = header_error(&long);
        assert!(cut.len() < MAX_ERROR_HEADER + 64, "{}", cut.len());
        assert!(cut.starts_with("unknown field `é") && cut.ends_with("bytes)"));
    }

    #[test]
    fn times_parse_in_every_form_operators_use() {
        assert_eq!(
            parse_when("2026-11-22T18:00:00Z").unwrap().to_rfc3339(),
            "2026-11-22T18:00:00+00:00"
        );
        assert_eq!(
            parse_when("2026-11-22T18:00").unwrap().to_rfc3339(),
            "2026-11-22T18:00:00+00:00"
        );
        let ago = chrono::Utc::now() - parse_when("2h").unwrap();
        assert!((ago.num_seconds() - 7200).abs() < 5);
        assert!(parse_when("yesterday-ish").is_err());
    }
}
