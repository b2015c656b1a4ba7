//! Event-driven ingest: services publish the same JSON as the HTTP API to the
//! `herald.ingest` exchange, routing key = tenant id, header
//! `idempotency-key`. A message that fails validation is dead-lettered with
//! the reason, never dropped.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Commitment, Intake, IntakeError};
use crate::{
    broker::{
        Broker, Headers, Publisher,
        consumer::{self, ConsumerSpec, Incoming},
        header_str,
    },
    db,
    dlq::{self, DeadLetterReason},
    model::{IdempotencyKey, TenantId, notification::MAX_REQUEST_BYTES},
    outage::{self, Held, Unavailable},
    telemetry::traces::TraceContext,
};

/// Messages processed at once per ingest replica.
const PREFETCH: u16 = 64;
/// Pause before returning a message that failed on its own to its queue.
const POISON_PAUSE: Duration = Duration::from_secs(2);

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
    consumer::run(broker, spec, cancel, move |incoming| {
        let intake = intake.clone();
        let publisher = publisher.clone();
        async move { handle(&intake, &publisher, incoming).await }
    })
    .await;
}

/// Accepts one message. While the database or broker cannot make it
/// durable the message is held and retried in process, never returned to
/// its queue (which would spend its delivery limit on an outage).
async fn handle(intake: &Intake, publisher: &Publisher, incoming: Incoming) {
    let Incoming {
        delivery,
        lost,
        settle,
    } = incoming;
    let tenant = delivery.routing_key.as_str().to_owned();
    let headers = delivery.properties.headers().as_ref();
    // A child of the publisher's span when the message carries a
    // `traceparent`, else the root of a new trace.
    let span = tracing::info_span!("ingest.accept", tenant = %tenant, source = "amqp");
    let carried = TraceContext::from_amqp(headers);
    if carried.traceparent().is_some() {
        let _ = span.set_parent(carried.parent());
    }
    let outcome = outage::hold("ingest", &lost, || async {
        let accepted = match check(intake, &tenant, headers, &delivery.data).await {
            Ok((body, key)) => intake
                .accept(&tenant, body, key, &Commitment::default())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match accepted {
            Err(IntakeError::Unavailable(e)) => Err(anyhow::Error::new(Unavailable(e))),
            // Another message with the same key is being made durable.
            Err(IntakeError::KeyInProgress) => Err(anyhow::Error::new(Unavailable(
                "a message with the same idempotency-key is in progress".into(),
            ))),
            other => Ok(other),
        }
    })
    .instrument(span)
    .await;
    // Only a routing key that can be a tenant is recorded as one.
    let known_tenant = TenantId::parse(tenant.as_str()).ok().map(String::from);
    let reject = |class: &'static str, error: String| DeadLetterReason {
        source: "ingest",
        error_class: class,
        error,
        tenant: known_tenant.clone(),
    };
    let reason = match outcome {
        Ok(Ok(())) => {
            metrics::counter!("herald_ingest_amqp_total", "outcome" => "accepted").increment(1);
            settle.ack(&delivery);
            return;
        }
        Err(Held::Stopped) => {
            settle.requeue(&delivery).await;
            return;
        }
        Err(Held::Failed(e)) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "ingest message failed; returning it to its queue"
            );
            settle.requeue_after(&delivery, POISON_PAUSE).await;
            return;
        }
        Ok(Err(IntakeError::Unavailable(_) | IntakeError::KeyInProgress)) => {
            unreachable!("held above")
        }
        Ok(Err(IntakeError::Invalid(errors))) => {
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
        Ok(Err(IntakeError::KeyReused)) => reject(
            "idempotency_conflict",
            "idempotency-key was already used with a different body".into(),
        ),
    };
    metrics::counter!("herald_ingest_amqp_total", "outcome" => "dead_lettered").increment(1);
    dlq::reject(publisher, &delivery, &settle, &reason, &lost).await;
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
