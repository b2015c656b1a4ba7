//! Every metric Herald emits, described in one place per area, and the
//! series each process exposes at zero from its start.
//!
//! A counter that has never counted is not missing, it is zero: a dashboard
//! summing `rate()` over it draws a flat line instead of "no data", and an
//! alert on it is evaluated instead of silently absent. So each process
//! describes every metric it can emit and registers, at zero, every series
//! whose labels it can know at start (channel x outcome, its queues, its
//! providers). Histograms are registered empty (count 0). Gauges are
//! registered without a value being written, so none that a component set
//! first is overwritten.
//!
//! docs/operations.md's metric table lists the same names; a test starts
//! each long-running binary and checks that every name there is on a fresh
//! `/metrics`.

mod start;

use metrics::Label;

pub use start::{WorkerLabels, ingest, router, worker};

/// What kind of value a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind and help text (the `# HELP` line).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
    }
}

impl Metric {
    /// Gives the recorder this metric's help text.
    pub fn describe(&self) {
        match self.kind {
            Kind::Counter => metrics::describe_counter!(self.name, self.help),
            Kind::Gauge => metrics::describe_gauge!(self.name, self.help),
            Kind::Histogram => metrics::describe_histogram!(self.name, self.help),
        }
    }

    /// Registers the series with `labels`: a counter at zero, a histogram
    /// with no observation, a gauge at whatever it holds (zero if nothing
    /// set it yet).
    pub fn zero(&self, labels: &[(&'static str, String)]) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        match self.kind {
            Kind::Counter => metrics::counter!(self.name, labels).increment(0),
            Kind::Gauge => drop(metrics::gauge!(self.name, labels)),
            Kind::Histogram => drop(metrics::histogram!(self.name, labels)),
        }
    }
}

/// Ingest's HTTP API (`api`).
pub mod api {
    use super::*;

    pub const HTTP_REQUESTS: Metric = counter(
        "herald_http_requests_total",
        "HTTP requests answered (API and admin pages), by route, method and status",
    );
    pub const HTTP_DURATION: Metric = histogram(
        "herald_http_request_duration_seconds",
        "time to answer an HTTP request, by route and method",
    );
    pub const RATE_LIMITED: Metric = counter(
        "herald_api_rate_limited_total",
        "requests refused with 429 because their API key exceeded API_KEY_RATE_PER_SEC",
    );
    pub const KEY_LOOKUPS_REFUSED: Metric = counter(
        "herald_api_key_lookups_refused_total",
        "unknown API keys refused without a database lookup, by reason",
    );
    pub const TIMEOUTS: Metric = counter(
        "herald_api_timeouts_total",
        "API requests answered 503 after API_REQUEST_TIMEOUT",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[
        HTTP_REQUESTS,
        HTTP_DURATION,
        RATE_LIMITED,
        KEY_LOOKUPS_REFUSED,
        TIMEOUTS,
    ];
}

/// Provider receipts and the suppression list, in ingest (`receipts`,
/// `api::suppressions`).
pub mod receipts {
    use super::*;

    pub const RECEIVED: Metric = counter(
        "herald_receipts_total",
        "provider receipts verified and accepted, by provider and outcome \
         (applied: moved a delivery on; recorded: changed no status; duplicate: seen before)",
    );
    pub const REFUSED: Metric = counter(
        "herald_receipts_refused_total",
        "provider callbacks refused, by provider and reason (signature, malformed, unconfigured)",
    );
    pub const SUPPRESSIONS_ADDED: Metric = counter(
        "herald_suppressions_added_total",
        "addresses added to a suppression list, by channel and reason",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[RECEIVED, REFUSED, SUPPRESSIONS_ADDED];

    /// The providers whose callbacks ingest takes.
    pub const PROVIDERS: [&str; 2] = ["twilio", "sendgrid"];
    /// Every `outcome` of `herald_receipts_total`.
    pub const OUTCOMES: [&str; 3] = ["applied", "recorded", "duplicate"];
    /// Every `reason` of `herald_receipts_refused_total`.
    pub const REFUSALS: [&str; 3] = ["signature", "malformed", "unconfigured"];
}

/// Counts an address added to a suppression list.
pub fn count_suppression_added(
    channel: crate::model::Channel,
    reason: crate::model::suppression::SuppressionReason,
) {
    metrics::counter!(receipts::SUPPRESSIONS_ADDED.name, "channel" => channel.as_str(),
        "reason" => reason.as_str())
    .increment(1);
}

/// Accepting notifications over HTTP and `herald.ingest` (`intake`).
pub mod intake {
    use super::*;

    pub const ACCEPTED: Metric = counter(
        "herald_notifications_accepted_total",
        "notifications made durable and answered 202 (HTTP and herald.ingest)",
    );
    pub const PUBLISH_FAILURES: Metric = counter(
        "herald_ingest_publish_failures_total",
        "accepted rows withdrawn because the broker did not confirm (the client got 503)",
    );
    pub const PUBLISH_UNCONFIRMED: Metric = counter(
        "herald_ingest_publish_unconfirmed_total",
        "routing or delivery messages whose confirm failed after the commit, accepted and published again",
    );
    pub const AMQP: Metric = counter(
        "herald_ingest_amqp_total",
        "messages of the herald.ingest exchange handled, by outcome",
    );
    pub const RELAY_REPUBLISHED: Metric = counter(
        "herald_relay_republished_total",
        "committed but unconfirmed notifications the outbox relay published",
    );
    pub const ROUTED_INLINE: Metric = counter(
        "herald_ingest_routed_inline_total",
        "notifications routed by ingest in the commit that accepted them (INLINE_ROUTING_MAX_USERS)",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[
        ACCEPTED,
        PUBLISH_FAILURES,
        PUBLISH_UNCONFIRMED,
        AMQP,
        RELAY_REPUBLISHED,
        ROUTED_INLINE,
    ];
}

/// Routing, the scheduler of held deliveries and the dead-letter archive,
/// all in the router.
pub mod router {
    use super::*;

    pub const DELIVERIES: Metric = counter(
        "herald_router_deliveries_total",
        "deliveries recorded by routing (the router, or ingest's inline routing), by channel, lane and the status decided",
    );
    pub const TOPIC_PAGES: Metric = counter(
        "herald_router_topic_pages_total",
        "pages of topic fan-outs enumerated",
    );
    pub const REPLANNED: Metric = counter(
        "herald_router_replanned_total",
        "pending deliveries a notification routed again changed to its new plan",
    );
    pub const HIGH_LAG: Metric = histogram(
        "herald_router_high_lag_seconds",
        "acceptance to routing of high-priority notifications",
    );
    pub const RELEASED: Metric = counter(
        "herald_scheduler_released_total",
        "held (quiet hours, send_at) deliveries released",
    );
    pub const EXPIRED: Metric = counter(
        "herald_scheduler_expired_total",
        "held deliveries that expired before release",
    );
    pub const ARCHIVED: Metric = counter(
        "herald_dead_letters_archived_total",
        "dead letters moved from the dead-letter queue into the store, by source and error class",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[
        DELIVERIES,
        TOPIC_PAGES,
        REPLANNED,
        HIGH_LAG,
        RELEASED,
        EXPIRED,
        ARCHIVED,
    ];

    /// The statuses the router decides for a delivery.
    pub const STATUSES: [&str; 5] = ["pending", "suppressed", "deferred", "expired", "failed"];
}

/// Delivery events: the outbox and its relay (`events`), and webhooks
/// (`webhooks::send`), in the router.
pub mod events {
    use super::*;

    pub const PUBLISHED: Metric = counter(
        "herald_events_published_total",
        "delivery events the broker confirmed on the events exchange (including those no queue was bound for)",
    );
    pub const PUBLISH_FAILURES: Metric = counter(
        "herald_events_publish_failures_total",
        "delivery events a relay pass could not publish; they stay in the outbox for the next pass",
    );
    pub const SKIPPED: Metric = counter(
        "herald_events_skipped_total",
        "outbox rows dropped unpublished because their delivery no longer exists (past retention)",
    );
    pub const OUTBOX_ROWS: Metric = gauge(
        "herald_events_outbox_rows",
        "delivery events waiting in the outbox to be published",
    );
    pub const OUTBOX_OLDEST: Metric = gauge(
        "herald_events_outbox_oldest_seconds",
        "age of the oldest delivery event waiting in the outbox (0 when empty)",
    );

    pub const WEBHOOKS: Metric = counter(
        "herald_webhooks_total",
        "webhook attempts, by outcome (delivered, retry, dead)",
    );
    pub const WEBHOOKS_DISABLED: Metric = counter(
        "herald_webhooks_disabled_total",
        "webhook endpoints disabled after failing for WEBHOOK_DISABLE_AFTER",
    );
    pub const WEBHOOKS_DISABLED_EVENT_FAILURES: Metric = counter(
        "herald_webhooks_disabled_event_failures_total",
        "herald.webhook.disabled events not published (broker unavailable through every attempt); the endpoint is disabled all the same",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[
        PUBLISHED,
        PUBLISH_FAILURES,
        SKIPPED,
        OUTBOX_ROWS,
        OUTBOX_OLDEST,
        WEBHOOKS,
        WEBHOOKS_DISABLED,
        WEBHOOKS_DISABLED_EVENT_FAILURES,
    ];

    /// Every `outcome` of `herald_webhooks_total`.
    pub const WEBHOOK_OUTCOMES: [&str; 5] =
        ["delivered", "retry", "dead", "circuit_open", "rate_limited"];
}

/// The channel workers (`delivery`).
pub mod delivery {
    use super::*;

    pub const DELIVERIES: Metric = counter(
        "herald_deliveries_total",
        "messages a worker handled, by channel and outcome",
    );
    pub const E2E: Metric = histogram(
        "herald_delivery_e2e_seconds",
        "acceptance by ingest to acceptance by the provider, for sent deliveries",
    );
    pub const PROVIDER_DURATION: Metric = histogram(
        "herald_provider_duration_seconds",
        "one provider call, by channel and provider",
    );
    pub const LEDGER_BATCH_ROWS: Metric = histogram(
        "herald_ledger_batch_rows",
        "deliveries written per group-committed statement, by channel and write (claim, outcome)",
    );
    pub const LEDGER_WRITE: Metric = histogram(
        "herald_ledger_write_seconds",
        "one group-committed ledger statement, commit included",
    );
    pub const OUTCOMES_NOT_RECORDED: Metric = counter(
        "herald_outcomes_not_recorded_total",
        "outcomes dropped because their claim no longer held the delivery (already recorded, or taken over)",
    );
    pub const RETRIES: Metric = counter(
        "herald_delivery_retries_total",
        "retries scheduled, by channel and retry tier (1 = first retry)",
    );
    pub const CIRCUIT_STATE: Metric = gauge(
        "herald_circuit_state",
        "circuit of each provider: 0 closed, 1 half-open (probing), 2 open",
    );
    pub const CIRCUIT_OPENED: Metric = counter(
        "herald_circuit_opened_total",
        "times a provider's circuit opened",
    );
    pub const FAILOVERS: Metric = counter(
        "herald_provider_failovers_total",
        "calls made to the failover provider because the first provider's circuit was open",
    );
    pub const BUDGET_SHARE: Metric = gauge(
        "herald_worker_budget_share_per_second",
        "this replica's share of <CHANNEL>_RATE_PER_SEC",
    );
    pub const QUEUE_DEPTH: Metric = gauge(
        "herald_queue_depth",
        "messages ready in each of the worker's lane queues",
    );
    pub const QUEUE_CONSUMERS: Metric = gauge(
        "herald_queue_consumers",
        "consumers on each of the worker's lane queues",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[
        DELIVERIES,
        E2E,
        PROVIDER_DURATION,
        LEDGER_BATCH_ROWS,
        LEDGER_WRITE,
        OUTCOMES_NOT_RECORDED,
        RETRIES,
        CIRCUIT_STATE,
        CIRCUIT_OPENED,
        FAILOVERS,
        BUDGET_SHARE,
        QUEUE_DEPTH,
        QUEUE_CONSUMERS,
    ];

    /// Every `outcome` of `herald_deliveries_total`.
    pub const OUTCOMES: [&str; 9] = [
        "sent",
        "failed",
        "dead",
        "expired",
        "retry",
        "throttled",
        "duplicate",
        "circuit_open",
        "recipient_limit",
    ];
    /// The two group-committed writes of the ledger.
    pub const WRITES: [&str; 2] = ["claim", "outcome"];
}

/// What every consuming process shares: the consumer loop (`broker`) and
/// holding messages through outages (`outage`).
pub mod consumers {
    use super::*;

    pub const RESTARTS: Metric = counter(
        "herald_consumer_restarts_total",
        "times a consumer lost its channel or connection and reconnected, by queue",
    );
    pub const OUTAGE_RETRIES: Metric = counter(
        "herald_outage_retries_total",
        "retries of a step held through a database or broker outage, by step",
    );
    pub const HELD: Metric = gauge(
        "herald_messages_held",
        "messages this process holds while a dependency is down",
    );

    pub const YIELDED_TO_HIGH: Metric = counter(
        "herald_yielded_to_high_total",
        "normal and bulk steps of the router or a worker that waited for high work in flight, by lane",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[RESTARTS, OUTAGE_RETRIES, HELD, YIELDED_TO_HIGH];
}

/// Replaying dead letters (`dlq::replay`): the admin page in ingest, and
/// `heraldctl`.
pub mod replay {
    use super::*;

    pub const REPLAYED: Metric = counter(
        "herald_dead_letters_replayed_total",
        "dead letters replayed, by outcome",
    );

    /// Every metric of the area.
    pub const ALL: &[Metric] = &[REPLAYED];

    /// Every `outcome` of the counter.
    pub const OUTCOMES: [&str; 5] = [
        "replayed",
        "would_replay",
        "skipped",
        "failed",
        "not_attempted",
    ];
}
