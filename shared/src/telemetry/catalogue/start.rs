//! What each process registers at zero when it starts: the catalogue's
//! metrics over the label values it knows then.

use super::{
    Metric, api, consumers, delivery, events, intake, receipts, replay, router as routing,
};
use crate::{
    broker::Names,
    model::{Channel, Lane},
    providers::ErrorClass,
};

/// Describes every metric of `areas`, installing the recorder first so
/// nothing goes to the no-op one.
fn describe(areas: &[&[Metric]]) {
    crate::telemetry::metrics();
    for metric in areas.iter().flat_map(|a| a.iter()) {
        metric.describe();
    }
}

fn zero_each(metric: &Metric, label: &'static str, values: impl IntoIterator<Item = String>) {
    for value in values {
        metric.zero(&[(label, value)]);
    }
}

fn outage_steps(steps: &[&str]) {
    zero_each(
        &consumers::OUTAGE_RETRIES,
        "step",
        steps.iter().map(|s| (*s).to_owned()),
    );
    consumers::HELD.zero(&[]);
}

/// The router and the workers: lanes whose steps yield to `high`.
fn yields() {
    zero_each(
        &consumers::YIELDED_TO_HIGH,
        "lane",
        [Lane::Normal, Lane::Bulk].map(|l| l.to_string()),
    );
}

/// Ingest at start. `routes` are the API's (route, method, status) triples
/// as its OpenAPI document lists them, each counted at zero.
pub fn ingest(names: &Names, routes: impl IntoIterator<Item = (String, String, u16)>) {
    describe(&[
        api::ALL,
        intake::ALL,
        consumers::ALL,
        replay::ALL,
        receipts::ALL,
        // Inline routing records deliveries as the router does.
        &[routing::DELIVERIES, routing::HIGH_LAG],
    ]);
    routed_deliveries();
    routing::HIGH_LAG.zero(&[]);
    for provider in receipts::PROVIDERS {
        for outcome in receipts::OUTCOMES {
            receipts::RECEIVED.zero(&[
                ("provider", provider.to_owned()),
                ("outcome", outcome.to_owned()),
            ]);
        }
        for reason in receipts::REFUSALS {
            receipts::REFUSED.zero(&[
                ("provider", provider.to_owned()),
                ("reason", reason.to_owned()),
            ]);
        }
    }
    for channel in [Channel::Email, Channel::Sms] {
        for reason in crate::model::suppression::SuppressionReason::ALL {
            receipts::SUPPRESSIONS_ADDED.zero(&[
                ("channel", channel.as_str().to_owned()),
                ("reason", reason.as_str().to_owned()),
            ]);
        }
    }
    for (route, method, status) in routes {
        api::HTTP_REQUESTS.zero(&[
            ("route", route.clone()),
            ("method", method.clone()),
            ("status", status.to_string()),
        ]);
        api::HTTP_DURATION.zero(&[("route", route), ("method", method)]);
    }
    api::RATE_LIMITED.zero(&[]);
    api::TIMEOUTS.zero(&[]);
    zero_each(
        &api::KEY_LOOKUPS_REFUSED,
        "reason",
        ["busy", "client_failures"].map(String::from),
    );
    for metric in [
        intake::ACCEPTED,
        intake::PUBLISH_FAILURES,
        intake::PUBLISH_UNCONFIRMED,
        intake::RELAY_REPUBLISHED,
        intake::ROUTED_INLINE,
    ] {
        metric.zero(&[]);
    }
    zero_each(
        &intake::AMQP,
        "outcome",
        ["accepted", "dead_lettered"].map(String::from),
    );
    zero_each(
        &replay::REPLAYED,
        "outcome",
        replay::OUTCOMES.map(String::from),
    );
    consumers::RESTARTS.zero(&[("queue", names.ingest_queue())]);
    outage_steps(&["ingest", "dead_letter"]);
}

/// The classes a dead letter is archived under, per source: what ingest,
/// the router and the workers dead-letter themselves, and what the broker
/// dead-letters (`poison`: over the delivery limit).
fn dead_letter_classes() -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = vec![
        ("broker".into(), "poison".into()),
        ("broker".into(), "broker".into()),
        ("ingest".into(), "invalid".into()),
        ("ingest".into(), "idempotency_conflict".into()),
        ("router".into(), "unroutable".into()),
    ];
    for channel in Channel::ALL {
        let source = format!("worker-{channel}");
        pairs.push((source.clone(), "invalid".into()));
        for class in ErrorClass::ALL {
            pairs.push((source.clone(), class.as_str().into()));
        }
    }
    pairs
}

/// Deliveries recorded by routing, every channel, lane and status at zero.
fn routed_deliveries() {
    for channel in Channel::ALL {
        for lane in Lane::ALL {
            for status in routing::STATUSES {
                routing::DELIVERIES.zero(&[
                    ("channel", channel.to_string()),
                    ("lane", lane.to_string()),
                    ("status", status.to_owned()),
                ]);
            }
        }
    }
}

/// The router at start.
pub fn router(names: &Names) {
    describe(&[
        routing::ALL,
        events::ALL,
        consumers::ALL,
        &[delivery::CIRCUIT_OPENED],
    ]);
    // The webhook endpoints' circuits, all together.
    delivery::CIRCUIT_OPENED.zero(&[("provider", "webhook".to_owned())]);
    for metric in events::ALL
        .iter()
        .filter(|m| m.name != events::WEBHOOKS.name)
    {
        metric.zero(&[]);
    }
    zero_each(
        &events::WEBHOOKS,
        "outcome",
        events::WEBHOOK_OUTCOMES.map(String::from),
    );
    routed_deliveries();
    for metric in [
        routing::TOPIC_PAGES,
        routing::REPLANNED,
        routing::HIGH_LAG,
        routing::RELEASED,
        routing::EXPIRED,
    ] {
        metric.zero(&[]);
    }
    for (source, class) in dead_letter_classes() {
        routing::ARCHIVED.zero(&[("source", source), ("error_class", class)]);
    }
    let mut queues: Vec<String> = Lane::ALL
        .iter()
        .flat_map(|lane| names.route_queues(*lane))
        .collect();
    queues.push(names.dead_queue());
    queues.push(names.webhook_queue());
    zero_each(&consumers::RESTARTS, "queue", queues);
    outage_steps(&["route", "archive", "dead_letter"]);
    yields();
}

/// What a worker knows of itself at start.
#[derive(Debug, Clone)]
pub struct WorkerLabels<'a> {
    pub channel: Channel,
    pub names: &'a Names,
    /// Every provider it may call.
    pub providers: Vec<&'static str>,
    /// The failover pair (first provider, failover), if it has one.
    pub failover: Option<(&'static str, &'static str)>,
    /// Retry tiers in `RETRY_SCHEDULE`.
    pub tiers: usize,
}

/// A channel worker at start.
pub fn worker(w: &WorkerLabels<'_>) {
    use delivery as d;
    describe(&[d::ALL, consumers::ALL]);
    let channel = || ("channel", w.channel.to_string());
    for outcome in d::OUTCOMES {
        d::DELIVERIES.zero(&[channel(), ("outcome", outcome.to_owned())]);
    }
    for lane in Lane::ALL {
        d::E2E.zero(&[channel(), ("lane", lane.to_string())]);
        for queue in w.names.delivery_queues(w.channel, lane) {
            d::QUEUE_DEPTH.zero(&[("queue", queue.clone())]);
            d::QUEUE_CONSUMERS.zero(&[("queue", queue.clone())]);
            consumers::RESTARTS.zero(&[("queue", queue)]);
        }
    }
    for provider in &w.providers {
        d::PROVIDER_DURATION.zero(&[channel(), ("provider", (*provider).to_owned())]);
        d::CIRCUIT_STATE.zero(&[("provider", (*provider).to_owned())]);
        d::CIRCUIT_OPENED.zero(&[("provider", (*provider).to_owned())]);
    }
    if let Some((from, to)) = w.failover {
        d::FAILOVERS.zero(&[channel(), ("from", from.to_owned()), ("to", to.to_owned())]);
    }
    for write in d::WRITES {
        d::LEDGER_BATCH_ROWS.zero(&[channel(), ("write", write.to_owned())]);
        d::LEDGER_WRITE.zero(&[channel(), ("write", write.to_owned())]);
    }
    d::OUTCOMES_NOT_RECORDED.zero(&[channel()]);
    for tier in 1..=w.tiers {
        d::RETRIES.zero(&[channel(), ("tier", tier.to_string())]);
    }
    d::BUDGET_SHARE.zero(&[]);
    outage_steps(&[
        "claim",
        "expire",
        "record_outcome",
        "deactivate_device",
        "publish_retry",
        "dead_letter",
    ]);
    yields();
}
