//! Event-driven ingest: services publish the same JSON as the HTTP API to the
//! `herald.ingest` exchange, routing key = tenant id, header
//! `idempotency-key`. A message that fails validation is dead-lettered with
//! the reason, never dropped.

use std::{sync::Arc, time::Duration};

use lapin::{message::Delivery, options::BasicAckOptions};
use tokio_util::sync::CancellationToken;

use super::{Commitment, Intake, IntakeError};
use crate::{
    broker::{
        Broker, Headers, Publisher,
        consumer::{self, ConsumerSpec},
        header_str,
    },
    db,
    dlq::{self, DeadLetterReason},
    model::{IdempotencyKey, TenantId, notification::MAX_REQUEST_BYTES},
};

/// Messages processed at once per ingest replica.
const PREFETCH: u16 = 64;
/// Pause before requeueing a message the database or broker could not take,
/// so an outage is waited out instead of burning the delivery limit.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);

/// Consumes the ingest queue until cancelled.
pub async fn run(
    broker: Arc<Broker>,
    intake: Intake,
    publisher: Publisher,
    cancel: CancellationToken,
) {
    let spec = ConsumerSpec {
        queue: broker.names().ingest_queue(),
        prefetch: PREFETCH,
    };
    consumer::run(broker, spec, cancel, move |delivery| {
        let intake = intake.clone();
        let publisher = publisher.clone();
        async move { handle(&intake, &publisher, delivery).await }
    })
    .await;
}

async fn handle(intake: &Intake, publisher: &Publisher, delivery: Delivery) {
    let tenant = delivery.routing_key.as_str().to_owned();
    let headers = delivery.properties.headers().as_ref();
    let outcome = match check(intake, &tenant, headers, &delivery.data).await {
        Ok((body, key)) => intake
            .accept(&tenant, body, key, &Commitment::default())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    // Only a routing key that can be a tenant is recorded as one.
    let known_tenant = TenantId::parse(tenant.as_str()).ok().map(String::from);
    let reject = |class: &'static str, error: String| DeadLetterReason {
        source: "ingest",
        error_class: class,
        error,
        tenant: known_tenant.clone(),
    };
    let reason = match outcome {
        Ok(()) => {
            metrics::counter!("herald_ingest_amqp_total", "outcome" => "accepted").increment(1);
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Err(IntakeError::Unavailable(e)) => {
            tracing::warn!(error = %e, "ingest message could not be made durable; requeueing");
            consumer::requeue_after(&delivery, UNAVAILABLE_PAUSE).await;
            return;
        }
        Err(IntakeError::KeyInProgress) => {
            consumer::requeue_after(&delivery, UNAVAILABLE_PAUSE).await;
            return;
        }
        Err(IntakeError::Invalid(errors)) => {
            let detail: Vec<String> = errors
                .iter()
                .map(|e| {
                    if e.field.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.field, e.message)
                    }
                })
                .collect();
            reject("invalid", detail.join("; "))
        }
        Err(IntakeError::KeyReused) => reject(
            "idempotency_conflict",
            "idempotency-key was already used with a different body".into(),
        ),
    };
    metrics::counter!("herald_ingest_amqp_total", "outcome" => "dead_lettered").increment(1);
    dlq::reject(publisher, &delivery, &reason, UNAVAILABLE_PAUSE).await;
}

/// Parses what the message carries: tenant, JSON body, idempotency key.
async fn check(
    intake: &Intake,
    tenant: &str,
    headers: Option<&lapin::types::FieldTable>,
    data: &[u8],
) -> Result<(serde_json::Value, Option<IdempotencyKey>), IntakeError> {
    let field = |field: &str, message: String| {
        IntakeError::Invalid(vec![crate::model::FieldError {
            field: field.into(),
            message,
        }])
    };
    // The same limit as the HTTP API, checked before the body is parsed.
    if data.len() > MAX_REQUEST_BYTES {
        return Err(field(
            "",
            format!(
                "the body is larger than the {} KiB limit",
                MAX_REQUEST_BYTES / 1024
            ),
        ));
    }
    if TenantId::parse(tenant).is_err() || !db::tenants::exists(intake.pool(), tenant).await? {
        return Err(field("routing_key", format!("unknown tenant `{tenant}`")));
    }
    let key = header_str(headers, Headers::IDEMPOTENCY_KEY)
        .map(|k| IdempotencyKey::parse(&k).map_err(|e| field("idempotency-key", e)))
        .transpose()?;
    let body = serde_json::from_slice(data)
        .map_err(|e| field("", format!("body is not valid JSON: {e}")))?;
    Ok((body, key))
}
