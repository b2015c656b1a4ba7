//! The delivery engine: one message in, one provider call, one recorded
//! outcome, then the ack. Consumes, paces, claims, calls; what happens after
//! the call (outcome, retry, dead letter) is in [`super::outcome`].
//!
//! The order of the steps is the guarantee:
//! - the budget token is taken before the claim, so a claimed delivery goes
//!   out at once and never waits past its lease for its turn (another worker
//!   would take it over and send it twice); a message still waiting for its
//!   turn when the consumer stops is handed back unclaimed;
//! - a database or broker outage holds the message in process
//!   ([`crate::outage`]) instead of returning it to its queue, where each try
//!   would spend one of its deliveries and an outage would end in `poison`;
//! - once the provider was called, the outcome is recorded whatever it takes
//!   (through outages, and on shutdown for a grace period), since giving up
//!   would mean sending it again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use lapin::message::Delivery;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{
    budget::Budget,
    circuit::{Circuit, Pass},
    ledger::{Gather, Ledger},
    retry::RetryPolicy,
};
use crate::{
    broker::{Publisher, consumer::Incoming},
    db::{
        deliveries::{self, CLAIM_LEASE, Claim, ClaimRequest},
        kept::Kept,
    },
    dlq::{self, DeadLetterReason},
    model::{Channel, Lane, message::DeliveryMessage, user::mask},
    outage::{self, Held},
    priority::HighFirst,
    providers::{Destination, ErrorClass, Outcome, Provider, Providers, SendContext},
    telemetry::traces::TraceContext,
};

/// Pause before returning a message that failed on its own (not an outage)
/// to its queue, so a bad message does not spin.
const POISON_PAUSE: Duration = Duration::from_secs(1);
/// How the `normal` and `bulk` ledger fills a statement: up to 32 claims
/// (or outcomes), waiting at most 5 ms after the first. Taking only what
/// was queued made a statement and a commit per 6-7 rows at full load and
/// per 1-2 at moderate load, and the database's cost per delivery was
/// mostly that of its statements, not of its rows (docs/benchmarks.md,
/// "Fewer, fuller commits"). `high` takes what is queued: a code's claim
/// never waits for company.
const GATHER: Gather = Gather::Upto {
    rows: 32,
    wait: Duration::from_millis(5),
};
/// How long after shutdown begins a handler keeps trying to record the
/// outcome of a call it already made; inside Kubernetes' default 30 s grace.
const SETTLE_GRACE: Duration = Duration::from_secs(20);

/// What becomes of the message once a handler is done with it.
pub(super) enum Done {
    /// Settled (or a duplicate): ack.
    Ack,
    /// Not claimed, and the consumer is stopping or its channel is gone:
    /// give it back for another worker.
    HandBack,
}

/// Everything a channel worker's handlers share.
pub struct Engine {
    pub channel: Channel,
    pub pool: PgPool,
    pub publisher: Publisher,
    pub providers: Arc<dyn Providers>,
    pub budget: Budget,
    pub policy: RetryPolicy,
    /// Longest a provider call may take.
    pub timeout: Duration,
    /// The group-committed claims and outcomes: one ledger for `high`, one
    /// for the other lanes, so a one-time code's claim never waits in line
    /// behind a batch of bulk ones.
    ledgers: [Ledger; 2],
    /// `high` deliveries in flight: `normal` and `bulk` ones wait before
    /// their claim while there are any (bounded), so on a busy machine a
    /// draining campaign leaves the CPU and the database to the codes.
    high_first: HighFirst,
    circuits: Mutex<HashMap<&'static str, Arc<Circuit>>>,
    /// Fires [`SETTLE_GRACE`] after shutdown began.
    pub(super) settle_until: CancellationToken,
}

impl Engine {
    /// An engine for `channel`; `shutdown` is the process's stop signal.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channel: Channel,
        pool: PgPool,
        ledger_connections: u32,
        publisher: Publisher,
        providers: Arc<dyn Providers>,
        budget: Budget,
        policy: RetryPolicy,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        // Connections of their own, for their planner settings, kept
        // between statements by the ledgers' writers (their only users).
        let kept = Kept::new(deliveries::ledger_pool(&pool, ledger_connections));
        let ledgers = [
            Ledger::start(kept.clone(), CLAIM_LEASE, channel, Gather::Queued),
            Ledger::start(kept, CLAIM_LEASE, channel, GATHER),
        ];
        let settle_until = CancellationToken::new();
        {
            let settle_until = settle_until.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(SETTLE_GRACE).await;
                settle_until.cancel();
            });
        }
        Self {
            channel,
            pool,
            publisher,
            providers,
            budget,
            policy,
            timeout,
            ledgers,
            high_first: HighFirst::default(),
            circuits: Mutex::default(),
            settle_until,
        }
    }

    fn circuit(&self, provider: &'static str) -> Arc<Circuit> {
        self.circuits
            .lock()
            .expect("not poisoned")
            .entry(provider)
            .or_insert_with(|| Arc::new(Circuit::new(provider)))
            .clone()
    }

    /// Handles one message of a lane queue; acks or nacks it.
    pub async fn handle(&self, incoming: Incoming) {
        let Incoming {
            delivery,
            lost,
            settle,
        } = incoming;
        let msg: DeliveryMessage = match serde_json::from_slice(&delivery.data) {
            Ok(msg) => msg,
            Err(e) => {
                let reason = DeadLetterReason {
                    source: source(self.channel),
                    error_class: "invalid",
                    error: format!("delivery message does not parse: {e}"),
                    tenant: None,
                };
                return dlq::reject(&self.publisher, &delivery, &settle, &reason, &lost).await;
            }
        };
        let span = tracing::info_span!("worker.deliver", tenant = %msg.tenant_id, notification_id = %msg.notification_id,
            delivery_id = %msg.delivery_id, channel = %self.channel);
        // A child of the routing span, whose context the router (and any
        // retry tier since) kept in the message's headers.
        let carried = TraceContext::from_amqp(delivery.properties.headers().as_ref());
        if carried.traceparent().is_some() {
            let _ = span.set_parent(carried.parent());
        }
        // `instrument`, not `enter`: an entered guard held across an await
        // would leak the span onto whatever else the thread runs meanwhile.
        let _high = self.high_first.track(msg.lane);
        match self.deliver(&delivery, &msg, &lost).instrument(span).await {
            Ok(Done::Ack) => {
                settle.ack(&delivery);
            }
            Ok(Done::HandBack) => {
                settle.requeue(&delivery).await;
            }
            Err(e) => {
                // The message's own failure: back to its queue, where the
                // delivery limit ends real poison.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "delivery failed; returning it to its queue"
                );
                settle.requeue_after(&delivery, POISON_PAUSE).await;
            }
        }
    }

    /// The provider to call for `to` and a pass through its circuit: the
    /// destination's provider, or while its circuit is open the channel's
    /// failover provider, if there is one and its own circuit lets the call
    /// through (then also the provider it stands in for). `Err`: how long
    /// to wait.
    fn choose(
        &self,
        to: &Destination,
    ) -> Result<(&dyn Provider, Pass, Option<&'static str>), Duration> {
        let primary = self.providers.for_destination(to);
        let wait = match self.circuit(primary.name()).pass() {
            Ok(pass) => return Ok((primary, pass, None)),
            Err(wait) => wait,
        };
        let Some(failover) = self.providers.failover(to) else {
            return Err(wait);
        };
        let pass = self
            .circuit(failover.name())
            .pass()
            .map_err(|other| wait.min(other))?;
        Ok((failover, pass, Some(primary.name())))
    }

    async fn deliver(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        lost: &CancellationToken,
    ) -> anyhow::Result<Done> {
        if self.expired(msg) {
            return self.expire(msg, lost).await;
        }
        let (provider, pass, instead_of) = match self.choose(&msg.destination) {
            Ok(chosen) => chosen,
            // The provider is refusing (and so is the failover, if any):
            // wait in a tier without claiming, so no attempt is burned.
            Err(wait) => return self.defer(delivery, msg, wait, "circuit_open", lost).await,
        };
        if let Err(wait) = self.budget.recipient(&msg.destination.address) {
            return self
                .defer(delivery, msg, wait, "recipient_limit", lost)
                .await;
        }
        tokio::select! {
            _ = self.budget.acquire(msg.lane) => {}
            _ = lost.cancelled() => return Ok(Done::HandBack),
        }
        // The turn may have come late: a code that arrives late is worse
        // than none.
        if self.expired(msg) {
            return self.expire(msg, lost).await;
        }
        // The copy's own id: a redelivery of this copy takes over its own
        // claim, never another copy's.
        let copy = crate::broker::header_str(
            delivery.properties.headers().as_ref(),
            crate::broker::Headers::COPY,
        )
        .and_then(|s| s.parse::<Uuid>().ok());
        let claim = ClaimRequest {
            created_at: msg.created_at,
            id: msg.delivery_id,
            redelivered: delivery.redelivered,
            named: copy.is_some(),
            token: copy.unwrap_or_else(Uuid::new_v4),
        };
        self.high_first.yield_to_high(msg.lane).await;
        let ledger = self.ledger(msg.lane);
        let claimed = outage::hold("claim", lost, || ledger.claim(claim.clone())).await;
        let attempts = match claimed {
            Ok(Claim::Claimed { attempts }) => attempts as u32,
            Ok(Claim::Skip { status }) => {
                // Already sent (or settled, or in another worker's hands):
                // this copy is a duplicate.
                tracing::info!(status = %status, "duplicate delivery message skipped");
                self.count("duplicate");
                return Ok(Done::Ack);
            }
            Ok(Claim::Missing) => {
                tracing::warn!("delivery row missing (partition dropped?); skipping");
                return Ok(Done::Ack);
            }
            Err(Held::Stopped) => return Ok(Done::HandBack),
            Err(Held::Failed(e)) => return Err(e),
        };
        if attempts > self.policy.max_attempts() {
            // A redelivered copy of a delivery that was given up on, before
            // its dead letter was recorded: finish the give-up, no extra call.
            let error = format!(
                "gave up after {} attempts (the last outcome was not recorded)",
                attempts - 1
            );
            return self
                .give_up(delivery, msg, claim.token, "exhausted", error, attempts - 1)
                .await;
        }

        if let Some(primary) = instead_of {
            // Counted per call made, so it matches the failover's traffic.
            metrics::counter!("herald_provider_failovers_total", "channel" => self.channel.as_str(), "from" => primary, "to" => provider.name())
                .increment(1);
        }
        let ctx = SendContext {
            delivery_id: msg.delivery_id,
            created_at: msg.created_at,
            notification_id: msg.notification_id,
            lane: msg.lane,
            expires_at: msg.expires_at,
        };
        let started = Instant::now();
        // The provider's HTTP request carries this span's `traceparent`.
        let call = tracing::info_span!(
            "provider.call",
            otel.kind = "client",
            provider = provider.name(),
            attempt = attempts
        );
        let outcome = match tokio::time::timeout(
            self.timeout,
            provider
                .send(&msg.rendered, &msg.destination, &ctx)
                .instrument(call),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                class: ErrorClass::Timeout,
                reason: format!("no answer within {:?}", self.timeout),
                after: None,
            },
        };
        metrics::histogram!("herald_provider_duration_seconds", "channel" => self.channel.as_str(), "provider" => provider.name())
            .record(started.elapsed().as_secs_f64());
        let call = super::outcome::Call {
            provider: provider.name(),
            pass,
            attempts,
            token: claim.token,
        };
        self.record(delivery, msg, call, outcome, lost).await
    }

    fn expired(&self, msg: &DeliveryMessage) -> bool {
        msg.expires_at.is_some_and(|e| e <= Utc::now())
    }

    async fn expire(
        &self,
        msg: &DeliveryMessage,
        lost: &CancellationToken,
    ) -> anyhow::Result<Done> {
        let expired = outage::hold("expire", lost, || async {
            Ok(deliveries::expire_unclaimed(&self.pool, msg.created_at, msg.delivery_id).await?)
        })
        .await;
        match expired {
            Ok(()) => {}
            Err(Held::Stopped) => return Ok(Done::HandBack),
            Err(Held::Failed(e)) => return Err(e),
        }
        self.count("expired");
        tracing::info!(to = %mask(&msg.destination.address), outcome = "expired", "delivery expired unsent");
        Ok(Done::Ack)
    }

    /// Parks a message in a retry tier without touching the delivery.
    async fn defer(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        wait: Duration,
        why: &'static str,
        lost: &CancellationToken,
    ) -> anyhow::Result<Done> {
        let attempts = crate::broker::header_i64(
            delivery.properties.headers().as_ref(),
            crate::broker::Headers::ATTEMPTS,
        )
        .unwrap_or(0) as u32;
        let parked = self
            .publish_retry(delivery, msg, self.policy.round_up(wait), attempts, lost)
            .await;
        match parked {
            Ok(()) => {
                self.count(why);
                Ok(Done::Ack)
            }
            Err(Held::Stopped) => Ok(Done::HandBack),
            Err(Held::Failed(e)) => Err(e),
        }
    }

    /// The ledger of `lane`.
    pub(super) fn ledger(&self, lane: Lane) -> &Ledger {
        &self.ledgers[usize::from(lane != Lane::High)]
    }

    pub(super) fn count(&self, outcome: &'static str) {
        metrics::counter!("herald_deliveries_total", "channel" => self.channel.as_str(), "outcome" => outcome).increment(1);
    }
}

/// The process name a channel's dead letters are recorded under.
pub(super) fn source(channel: Channel) -> &'static str {
    match channel {
        Channel::Push => "worker-push",
        Channel::Email => "worker-email",
        Channel::Sms => "worker-sms",
    }
}
