//! The delivery engine: one message in, one provider call, one recorded
//! outcome, then the ack. Consumes, claims, paces, calls, classifies,
//! schedules retries, dead-letters.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use lapin::{message::Delivery, options::BasicAckOptions};
use sqlx::PgPool;
use tracing::Instrument;

use super::{
    budget::Budget,
    circuit::{Circuit, Permit},
    ledger::Ledger,
    retry::{Next, RetryPolicy},
};
use crate::{
    broker::{Headers, Outgoing, Publisher, header_i64},
    db::deliveries::{self, Claim, ClaimRequest, Settle, SettleRequest},
    dlq::{self, DeadLetterReason},
    model::{Channel, message::DeliveryMessage, user::mask},
    providers::{Destination, ErrorClass, Outcome, Provider, Providers, SendContext},
};

/// How long a claimed delivery is held before another worker may take it
/// over: well past the provider timeout, so a slow call is never doubled.
const CLAIM_LEASE: Duration = Duration::from_secs(120);
/// Pause before requeueing when the database or broker failed.
const TRANSIENT_PAUSE: Duration = Duration::from_secs(1);

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
    ledger: Ledger,
    circuits: Mutex<HashMap<&'static str, Arc<Circuit>>>,
}

impl Engine {
    /// An engine for `channel`.
    pub fn new(
        channel: Channel,
        pool: PgPool,
        publisher: Publisher,
        providers: Arc<dyn Providers>,
        budget: Budget,
        policy: RetryPolicy,
        timeout: Duration,
    ) -> Self {
        let ledger = Ledger::start(pool.clone(), CLAIM_LEASE, channel);
        Self {
            channel,
            pool,
            publisher,
            providers,
            budget,
            policy,
            timeout,
            ledger,
            circuits: Mutex::default(),
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
    pub async fn handle(&self, delivery: Delivery) {
        let msg: DeliveryMessage = match serde_json::from_slice(&delivery.data) {
            Ok(msg) => msg,
            Err(e) => {
                let reason = DeadLetterReason {
                    source: source(self.channel),
                    error_class: "invalid",
                    error: format!("delivery message does not parse: {e}"),
                    tenant: None,
                };
                return dlq::reject(&self.publisher, &delivery, &reason, TRANSIENT_PAUSE).await;
            }
        };
        let span = tracing::info_span!("deliver", tenant = %msg.tenant_id, notification_id = %msg.notification_id,
            delivery_id = %msg.delivery_id, channel = %self.channel);
        // `instrument`, not `enter`: an entered guard held across an await
        // would leak the span onto whatever else the thread runs meanwhile.
        match self.deliver(&delivery, &msg).instrument(span).await {
            Ok(()) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "delivery could not be recorded; requeueing");
                crate::broker::consumer::requeue_after(&delivery, TRANSIENT_PAUSE).await;
            }
        }
    }

    /// The provider to call for `to`, its circuit, and whether the call is
    /// that circuit's half-open probe: the destination's provider, or while
    /// its circuit is open the channel's failover provider, if there is one
    /// and its own circuit lets the call through. `Err`: how long to wait.
    fn choose(&self, to: &Destination) -> Result<(&dyn Provider, Arc<Circuit>, bool), Duration> {
        let primary = self.providers.for_destination(to);
        let circuit = self.circuit(primary.name());
        let wait = match circuit.permit() {
            Permit::Go => return Ok((primary, circuit, false)),
            Permit::Probe => return Ok((primary, circuit, true)),
            Permit::Wait(wait) => wait,
        };
        let Some(failover) = self.providers.failover(to) else {
            return Err(wait);
        };
        let backup = self.circuit(failover.name());
        let probe = match backup.permit() {
            Permit::Go => false,
            Permit::Probe => true,
            Permit::Wait(other) => return Err(wait.min(other)),
        };
        metrics::counter!("herald_provider_failovers_total", "channel" => self.channel.as_str(), "from" => primary.name(), "to" => failover.name())
            .increment(1);
        Ok((failover, backup, probe))
    }

    async fn deliver(&self, delivery: &Delivery, msg: &DeliveryMessage) -> anyhow::Result<()> {
        let now = Utc::now();
        if msg.expires_at.is_some_and(|e| e <= now) {
            deliveries::expire_unclaimed(&self.pool, msg.created_at, msg.delivery_id).await?;
            self.count("expired");
            tracing::info!(to = %mask(&msg.destination.address), outcome = "expired", "delivery expired unsent");
            return Ok(());
        }
        let (provider, circuit, probe) = match self.choose(&msg.destination) {
            Ok(chosen) => chosen,
            Err(wait) => {
                // The provider is refusing (and so is the failover, if any):
                // wait in a tier without claiming, so no attempt is burned.
                return self.defer(delivery, msg, wait, "circuit_open").await;
            }
        };
        if let Err(wait) = self.budget.recipient(&msg.destination.address) {
            if probe {
                circuit.abandon_probe();
            }
            return self.defer(delivery, msg, wait, "recipient_limit").await;
        }
        let claim = ClaimRequest {
            created_at: msg.created_at,
            id: msg.delivery_id,
            redelivered: delivery.redelivered,
        };
        let attempts = match self.ledger.claim(claim).await? {
            Claim::Claimed { attempts } => attempts as u32,
            Claim::Skip { status } => {
                if probe {
                    circuit.abandon_probe();
                }
                // Already sent (or settled, or in another worker's hands):
                // this copy is a duplicate.
                tracing::info!(status = %status, "duplicate delivery message skipped");
                self.count("duplicate");
                return Ok(());
            }
            Claim::Missing => {
                if probe {
                    circuit.abandon_probe();
                }
                tracing::warn!("delivery row missing (partition dropped?); skipping");
                return Ok(());
            }
        };

        self.budget.acquire(msg.lane).await;
        let ctx = SendContext {
            delivery_id: msg.delivery_id,
            notification_id: msg.notification_id,
            lane: msg.lane,
            expires_at: msg.expires_at,
        };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            self.timeout,
            provider.send(&msg.rendered, &msg.destination, &ctx),
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
        self.record(delivery, msg, provider.name(), &circuit, attempts, outcome)
            .await
    }

    async fn record(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        provider: &'static str,
        circuit: &Circuit,
        attempts: u32,
        outcome: Outcome,
    ) -> anyhow::Result<()> {
        let to = mask(&msg.destination.address);
        match outcome {
            Outcome::Sent { provider_id } => {
                circuit.success();
                self.settle(
                    msg,
                    &Settle::Sent {
                        provider_id: provider_id.as_deref(),
                    },
                )
                .await?;
                self.count("sent");
                if let Some(accepted) = crate::broker::header_i64(
                    delivery.properties.headers().as_ref(),
                    Headers::ACCEPTED_AT_MS,
                ) {
                    let e2e = (Utc::now().timestamp_millis() - accepted).max(0) as f64 / 1000.0;
                    metrics::histogram!("herald_delivery_e2e_seconds", "channel" => self.channel.as_str(), "lane" => msg.lane.as_str())
                        .record(e2e);
                }
                tracing::info!(provider, to = %to, attempts, outcome = "sent", "delivered");
            }
            Outcome::Permanent {
                class,
                reason,
                deactivate,
            } => {
                // A definite answer: the provider is up.
                circuit.success();
                self.settle(
                    msg,
                    &Settle::Failed {
                        class: class.as_str(),
                        error: &reason,
                    },
                )
                .await?;
                if deactivate {
                    deliveries::deactivate_device(
                        &self.pool,
                        &msg.tenant_id,
                        &msg.user_id,
                        &msg.destination.address,
                        &reason,
                    )
                    .await?;
                }
                self.count("failed");
                tracing::info!(provider, to = %to, attempts, outcome = "failed", error_class = class.as_str(), error = %reason, deactivated = deactivate, "delivery failed permanently");
            }
            Outcome::Retry {
                class: ErrorClass::RateLimited,
                reason,
                after,
            } => {
                // A throttle slows the whole channel and is not the
                // delivery's fault: the attempt is refunded.
                circuit.throttled(after);
                self.settle(
                    msg,
                    &Settle::Retry {
                        class: ErrorClass::RateLimited.as_str(),
                        error: &reason,
                        refund: true,
                    },
                )
                .await?;
                let wait = after.unwrap_or(Duration::from_secs(1));
                self.publish_retry(
                    delivery,
                    msg,
                    self.policy.round_up(wait),
                    attempts.saturating_sub(1),
                )
                .await?;
                self.count("throttled");
                tracing::info!(provider, to = %to, attempts, outcome = "throttled", retry_after_ms = wait.as_millis() as u64, "provider throttled; waiting");
            }
            Outcome::Retry {
                class,
                reason,
                after,
            } => {
                circuit.failure();
                match self.policy.after_failure(attempts, after) {
                    Next::Retry { delay, tier } => {
                        self.settle(
                            msg,
                            &Settle::Retry {
                                class: class.as_str(),
                                error: &reason,
                                refund: false,
                            },
                        )
                        .await?;
                        self.publish_retry(delivery, msg, delay, attempts).await?;
                        metrics::counter!("herald_delivery_retries_total", "channel" => self.channel.as_str(), "tier" => tier.to_string())
                            .increment(1);
                        self.count("retry");
                        tracing::info!(provider, to = %to, attempts, outcome = "retry", error_class = class.as_str(), error = %reason, delay_ms = delay.as_millis() as u64, "delivery will be retried");
                    }
                    Next::GiveUp => {
                        let error = format!("gave up after {attempts} attempts: {reason}");
                        self.settle(
                            msg,
                            &Settle::Dead {
                                class: class.as_str(),
                                error: &error,
                            },
                        )
                        .await?;
                        let mut headers =
                            Headers::from_table(delivery.properties.headers().as_ref())
                                .int(Headers::ATTEMPTS, attempts as i64);
                        headers = headers.str(Headers::TENANT, &msg.tenant_id);
                        let reason = DeadLetterReason {
                            source: source(self.channel),
                            error_class: class.as_str(),
                            error,
                            tenant: Some(msg.tenant_id.clone()),
                        };
                        let mut copy = Outgoing::json("", "", delivery.data.clone(), headers);
                        copy.message_id = format!("{}:dead", msg.delivery_id);
                        dlq::publish_outgoing(&self.publisher, copy, delivery, &reason).await?;
                        self.count("dead");
                        tracing::warn!(provider, to = %to, attempts, outcome = "dead", error_class = class.as_str(), "delivery is dead; dead-lettered");
                    }
                }
            }
        }
        Ok(())
    }

    /// Records an outcome, retrying a few times: the provider call already
    /// happened, and giving up here would mean sending it again.
    async fn settle(&self, msg: &DeliveryMessage, outcome: &Settle<'_>) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(200);
        for attempt in 1.. {
            match self
                .ledger
                .settle(SettleRequest::new(msg.created_at, msg.delivery_id, outcome))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 6 => {
                    tracing::warn!(error = %e, "could not record outcome; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// Parks a message in a retry tier without touching the delivery.
    async fn defer(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        wait: Duration,
        why: &'static str,
    ) -> anyhow::Result<()> {
        let attempts = header_i64(delivery.properties.headers().as_ref(), Headers::ATTEMPTS)
            .unwrap_or(0) as u32;
        self.publish_retry(delivery, msg, self.policy.round_up(wait), attempts)
            .await?;
        self.count(why);
        Ok(())
    }

    async fn publish_retry(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        delay: Duration,
        attempts: u32,
    ) -> anyhow::Result<()> {
        let names = self.publisher.broker().names();
        let headers = Headers::from_table(delivery.properties.headers().as_ref())
            .int(Headers::RETRY_DELAY_MS, delay.as_millis() as i64)
            .int(Headers::ATTEMPTS, attempts as i64);
        let mut out = msg.outgoing(names);
        out.exchange = names.retry_exchange();
        out.headers = headers;
        self.publisher.publish(&out).await?;
        Ok(())
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!("herald_deliveries_total", "channel" => self.channel.as_str(), "outcome" => outcome).increment(1);
    }
}

fn source(channel: Channel) -> &'static str {
    match channel {
        Channel::Push => "worker-push",
        Channel::Email => "worker-email",
        Channel::Sms => "worker-sms",
    }
}
