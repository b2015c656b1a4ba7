//! Sending delivery events to webhook endpoints, in the router.
//!
//! 1. **Fan-out**, in the event relay (events/relay.rs): for each batch of
//!    events, one query finds the enabled endpoints of the batch's tenants;
//!    every matching (event, endpoint) pair becomes a message (id
//!    `{event id}:{endpoint}`) on the deliveries exchange under the key
//!    `webhook`, published with the events and confirmed before their
//!    outbox rows are deleted. Events nobody has an endpoint for cost that
//!    one query per batch and nothing on the broker.
//! 2. **Sender**: consumes those messages, signs the event (Standard
//!    Webhooks, every secret in its overlap) and POSTs it. A failure goes to
//!    the same retry tiers as deliveries (`RETRY_SCHEDULE`, the headers
//!    exchange routing on the tier delay, back under the key `webhook`), and
//!    after the last attempt to the dead-letter exchange (source
//!    `webhooks`), where the archiver stores it like any dead letter. An
//!    endpoint that keeps failing for `WEBHOOK_DISABLE_AFTER` is disabled,
//!    and a `herald.webhook.disabled` event says so on the events exchange
//!    ([`super::disabled`]).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{address::Policy, disabled::WebhookDisabledEvent, filter::any_matches, signature};
use crate::{
    broker::{
        Broker, Headers, Names, Outgoing, Publisher,
        consumer::{self, ConsumerSpec, Incoming},
        header_i64,
    },
    db,
    delivery::{
        circuit::Circuit,
        retry::{Next, RetryPolicy},
    },
    dlq::{self, DeadLetterReason},
    events::DeliveryEvent,
};

/// Pause before an event or message that failed on a dependency (database,
/// broker) goes back to its queue.
const TRANSIENT_PAUSE: Duration = Duration::from_secs(1);
/// Longest wait for an endpoint's rate budget taken while holding the
/// message; a longer one parks it in a retry tier.
const MAX_RATE_WAIT: Duration = Duration::from_millis(500);

/// One event for one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub tenant_id: String,
    pub webhook_id: String,
    /// The event id: the `webhook-id` header, stable across retries.
    pub event_id: String,
    /// The CloudEvent, sent as the body.
    pub event: serde_json::Value,
}

impl WebhookMessage {
    fn outgoing(&self, names: &Names) -> Outgoing {
        let headers = Headers::default().str(Headers::TENANT, &self.tenant_id);
        let mut msg = Outgoing::json(
            names.deliveries_exchange(),
            Names::WEBHOOK_KEY,
            serde_json::to_vec(self).expect("serialisable"),
            headers,
        );
        msg.message_id = format!("{}:{}", self.event_id, self.webhook_id);
        msg
    }
}

/// What the sender needs; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub policy: Arc<Policy>,
    pub retry: RetryPolicy,
    pub disable_after: Duration,
    pub timeout: Duration,
    /// Each endpoint's circuit and rate budget, in this replica.
    guards: Arc<Guards>,
}

/// An endpoint: (tenant, webhook id).
type Endpoint = (String, String);

/// Per endpoint, what the workers have per provider: a circuit breaker (a
/// run of failures opens it, and messages for the endpoint wait in a retry
/// tier without spending an attempt) and a rate budget.
#[derive(Default)]
struct Guards {
    circuits: Mutex<HashMap<Endpoint, Arc<Circuit>>>,
    rate: Option<DefaultKeyedRateLimiter<Endpoint>>,
}

impl Guards {
    fn circuit(&self, endpoint: &Endpoint) -> Arc<Circuit> {
        self.circuits
            .lock()
            .expect("not poisoned")
            .entry(endpoint.clone())
            .or_insert_with(|| Arc::new(Circuit::one_of_many("webhook")))
            .clone()
    }

    /// How long `endpoint` must wait for its next POST, if at all.
    fn rate(&self, endpoint: &Endpoint) -> Result<(), Duration> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        limiter
            .check_key(endpoint)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl Sender {
    /// A sender whose HTTP calls time out after `timeout`.
    pub fn new(
        pool: PgPool,
        publisher: Publisher,
        policy: Policy,
        retry: RetryPolicy,
        disable_after: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            publisher,
            policy: Arc::new(policy),
            retry,
            disable_after,
            timeout,
            guards: Arc::default(),
        }
    }

    /// At most `per_sec` POSTs a second to each endpoint (0: unlimited).
    pub fn with_rate_per_endpoint(mut self, per_sec: u32) -> Self {
        self.guards = Arc::new(Guards {
            circuits: Mutex::default(),
            rate: NonZeroU32::new(per_sec).map(|n| RateLimiter::keyed(Quota::per_second(n))),
        });
        self
    }
}

/// Runs the sender until cancelled.
pub async fn run(sender: Sender, broker: Arc<Broker>, cancel: CancellationToken) {
    let queue = broker.names().webhook_queue();
    consumer::run(
        broker,
        ConsumerSpec {
            queue,
            prefetch: 32,
        },
        cancel,
        move |incoming| {
            let sender = sender.clone();
            async move { send(&sender, incoming).await }
        },
    )
    .await;
}

/// The webhook messages of a batch of events: one per event and enabled
/// endpoint of its tenant whose filters match, each with the index of its
/// event. One query per batch, whatever its size.
pub async fn for_events(
    pool: &PgPool,
    names: &Names,
    events: &[&DeliveryEvent],
) -> Result<Vec<(usize, Outgoing)>, sqlx::Error> {
    let mut tenants: Vec<&str> = events.iter().map(|e| e.data.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let endpoints = db::webhooks::enabled_for(pool, &tenants).await?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let data = &event.data;
        for hook in endpoints
            .iter()
            .filter(|w| w.tenant_id == data.tenant_id)
            .filter(|w| any_matches(&w.events, &data.channel, &data.status))
        {
            let msg = WebhookMessage {
                tenant_id: data.tenant_id.clone(),
                webhook_id: hook.id.clone(),
                event_id: event.id.to_string(),
                event: serde_json::to_value(event).expect("serialisable"),
            };
            out.push((i, msg.outgoing(names)));
        }
    }
    Ok(out)
}

/// How one POST went.
enum Attempt {
    Delivered,
    Failed(String),
}

async fn post(sender: &Sender, msg: &WebhookMessage, hook: &db::webhooks::Webhook) -> Attempt {
    let url = match reqwest::Url::parse(&hook.url) {
        Ok(url) => url,
        Err(e) => return Attempt::Failed(format!("the endpoint URL does not parse: {e}")),
    };
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    // Checked at every send, not only at registration: what a name resolves
    // to can change.
    let addrs = match sender.policy.resolve(&host, port).await {
        Ok(addrs) => addrs,
        Err(e) => return Attempt::Failed(e),
    };
    let mut secrets = Vec::new();
    if let Ok(s) = signature::Secret::parse(&hook.secret) {
        secrets.push(s);
    }
    if let (Some(previous), Some(until)) = (&hook.previous_secret, hook.previous_until)
        && until > chrono::Utc::now()
        && let Ok(s) = signature::Secret::parse(previous)
    {
        secrets.push(s);
    }
    let body = serde_json::to_vec(&msg.event).expect("serialisable");
    let timestamp = chrono::Utc::now().timestamp();
    let refs: Vec<&signature::Secret> = secrets.iter().collect();
    let signatures = signature::header(&refs, &msg.event_id, timestamp, &body);
    // A client per call, pinned to the addresses that were checked (not
    // whatever the name resolves to a moment later), and following no
    // redirect (it could lead to an address the policy refuses).
    let client = match reqwest::Client::builder()
        .timeout(sender.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(&host, &addrs)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(format!("no HTTP client: {e}")),
    };
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header(signature::ID_HEADER, &msg.event_id)
        .header(signature::TIMESTAMP_HEADER, timestamp.to_string())
        .header(signature::SIGNATURE_HEADER, signatures)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => Attempt::Failed(format!("the endpoint answered {}", r.status())),
        Err(e) => Attempt::Failed(format!("the endpoint could not be reached: {e}")),
    }
}

/// One message: POST, then retry, dead-letter or done.
async fn send(sender: &Sender, incoming: Incoming) {
    let Incoming {
        delivery,
        settle,
        lost,
    } = incoming;
    let msg: WebhookMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            let reason = DeadLetterReason {
                source: "webhooks",
                error_class: "invalid",
                error: format!("webhook message does not parse: {e}"),
                tenant: None,
            };
            dlq::reject(&sender.publisher, &delivery, &settle, &reason, &lost).await;
            return;
        }
    };
    let attempts = header_i64(delivery.properties.headers().as_ref(), Headers::ATTEMPTS)
        .unwrap_or(0) as u32
        + 1;
    let hook = match db::webhooks::get(&sender.pool, &msg.tenant_id, &msg.webhook_id).await {
        Ok(Some(h)) if h.disabled_at.is_none() => h,
        Ok(Some(_)) => {
            // Disabled while this message waited for a retry: kept as a
            // dead letter, to replay once the endpoint is enabled again.
            give_up(
                sender,
                &delivery,
                &settle,
                &msg,
                attempts - 1,
                "endpoint_disabled",
                "the endpoint was disabled after failing for WEBHOOK_DISABLE_AFTER".into(),
            )
            .await;
            return;
        }
        Ok(None) => {
            // Deleted since: nobody wants it any more.
            settle.ack(&delivery);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the webhook endpoint; the message waits");
            settle.requeue_after(&delivery, TRANSIENT_PAUSE).await;
            return;
        }
    };
    let endpoint = (msg.tenant_id.clone(), hook.id.clone());
    // A short wait for the endpoint's budget is taken here; a longer one,
    // or an open circuit, parks the message in a retry tier.
    let pass = match sender.guards.rate(&endpoint) {
        Err(wait) if wait > MAX_RATE_WAIT => Err((wait, "rate_limited")),
        limited => {
            if let Err(wait) = limited {
                tokio::time::sleep(wait).await;
            }
            sender
                .guards
                .circuit(&endpoint)
                .pass()
                .map_err(|wait| (wait, "circuit_open"))
        }
    };
    let pass = match pass {
        Ok(pass) => pass,
        Err((wait, why)) => {
            park(sender, &delivery, &settle, &msg, attempts - 1, wait, why).await;
            return;
        }
    };
    let attempt = post(sender, &msg, &hook).await;
    match &attempt {
        Attempt::Delivered => pass.success(),
        Attempt::Failed(_) => pass.failure(),
    }
    let error = match attempt {
        Attempt::Delivered => {
            metrics::counter!("herald_webhooks_total", "outcome" => "delivered").increment(1);
            if let Err(e) = db::webhooks::succeeded(&sender.pool, &msg.tenant_id, &hook.id).await {
                tracing::warn!(error = %e, "could not record the endpoint's success");
            }
            settle.ack(&delivery);
            return;
        }
        Attempt::Failed(error) => error,
    };
    tracing::warn!(webhook = %hook.id, tenant = %msg.tenant_id, attempts, error = %error, "webhook attempt failed");
    match db::webhooks::failed(
        &sender.pool,
        &msg.tenant_id,
        &hook.id,
        sender.disable_after.as_secs_f64(),
    )
    .await
    {
        Ok(Some(disabled)) => {
            metrics::counter!("herald_webhooks_disabled_total").increment(1);
            tracing::warn!(webhook = %hook.id, tenant = %msg.tenant_id,
                "webhook endpoint disabled: it kept failing for WEBHOOK_DISABLE_AFTER");
            let event = WebhookDisabledEvent::new(&msg.tenant_id, &hook.id, &hook.url, disabled);
            super::disabled::publish(&sender.publisher, &event).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not record the endpoint's failure"),
    }
    let names = sender.publisher.broker().names();
    match sender.retry.after_failure(attempts, None) {
        Next::Retry { delay, .. } => {
            metrics::counter!("herald_webhooks_total", "outcome" => "retry").increment(1);
            let mut out = msg.outgoing(names);
            out.exchange = names.retry_exchange();
            out.headers = out
                .headers
                .int(Headers::RETRY_DELAY_MS, delay.as_millis() as i64)
                .int(Headers::ATTEMPTS, attempts as i64);
            match sender.publisher.publish(&out).await {
                Ok(()) => settle.ack(&delivery),
                Err(e) => {
                    tracing::warn!(error = %e, "could not schedule the webhook's retry; the message waits");
                    settle.requeue_after(&delivery, TRANSIENT_PAUSE).await;
                }
            }
        }
        Next::GiveUp => {
            give_up(
                sender,
                &delivery,
                &settle,
                &msg,
                attempts,
                "exhausted",
                error,
            )
            .await
        }
    }
}

/// Parks the message in the retry tier at or above `wait` without
/// spending an attempt (`attempts` is what it had spent), then acks it.
async fn park(
    sender: &Sender,
    delivery: &lapin::message::Delivery,
    settle: &crate::broker::acks::Settler,
    msg: &WebhookMessage,
    attempts: u32,
    wait: Duration,
    why: &'static str,
) {
    metrics::counter!("herald_webhooks_total", "outcome" => why).increment(1);
    let names = sender.publisher.broker().names();
    let mut out = msg.outgoing(names);
    out.exchange = names.retry_exchange();
    out.headers = out
        .headers
        .int(
            Headers::RETRY_DELAY_MS,
            sender.retry.round_up(wait).as_millis() as i64,
        )
        .int(Headers::ATTEMPTS, attempts as i64);
    match sender.publisher.publish(&out).await {
        Ok(()) => settle.ack(delivery),
        Err(e) => {
            tracing::warn!(error = %e, "could not park the webhook message; it waits");
            settle.requeue_after(delivery, TRANSIENT_PAUSE).await;
        }
    }
}

/// Dead-letters the message (source `webhooks`), then acks it.
async fn give_up(
    sender: &Sender,
    delivery: &lapin::message::Delivery,
    settle: &crate::broker::acks::Settler,
    msg: &WebhookMessage,
    attempts: u32,
    class: &'static str,
    error: String,
) {
    metrics::counter!("herald_webhooks_total", "outcome" => "dead").increment(1);
    let mut out = msg.outgoing(sender.publisher.broker().names());
    out.headers = out.headers.int(Headers::ATTEMPTS, attempts as i64);
    // Stable: a give-up finished twice is archived once.
    out.message_id = format!("{}:dead", out.message_id);
    let reason = DeadLetterReason {
        source: "webhooks",
        error_class: class,
        error,
        tenant: Some(msg.tenant_id.clone()),
    };
    match dlq::publish_outgoing(&sender.publisher, out, delivery, &reason).await {
        Ok(()) => settle.ack(delivery),
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter the webhook message; it waits");
            settle.requeue_after(delivery, TRANSIENT_PAUSE).await;
        }
    }
}
