//! After the provider call: record the outcome, schedule the retry, or give
//! up into the dead letters.
//!
//! One message, one fate: the handler acks the original only after the
//! outcome is recorded and any successor (the retry, the dead letter) is
//! confirmed by the broker. Two orders matter:
//! - a retry is recorded (`pending`) before its message is published, so the
//!   retry can never arrive while the row still says `sending`;
//! - a give-up publishes its dead letter before recording `dead`, so a
//!   failure in between leaves the delivery claimable (its redelivered copy
//!   finishes the give-up) rather than `dead` with no dead letter.

use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    circuit::Pass,
    engine::{Done, Engine, source},
    retry::Next,
};
use crate::{
    broker::{Headers, Outgoing},
    db::deliveries::{self, Settle, SettleRequest},
    dlq::{self, DeadLetterReason},
    model::{message::DeliveryMessage, user::mask},
    outage::{self, Held},
    providers::{ErrorClass, Outcome},
};

/// The call whose outcome is being recorded.
pub(super) struct Call {
    /// Provider name, for logs and metrics.
    pub provider: &'static str,
    /// The pass through the provider's circuit, told how the call went.
    pub pass: Pass,
    /// Attempts including this one.
    pub attempts: u32,
    /// The claim the outcome belongs to.
    pub token: Uuid,
}

impl Engine {
    pub(super) async fn record(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        call: Call,
        outcome: Outcome,
        lost: &CancellationToken,
    ) -> anyhow::Result<Done> {
        let Call {
            provider,
            pass,
            attempts,
            token,
        } = call;
        let to = mask(&msg.destination.address);
        match outcome {
            Outcome::Sent { provider_id } => {
                pass.success();
                let sent = Settle::Sent {
                    provider_id: provider_id.as_deref(),
                };
                self.settle(msg, token, &sent).await?;
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
                pass.success();
                let failed = Settle::Failed {
                    class: class.as_str(),
                    error: &reason,
                };
                // The device first: whoever sees the delivery `failed`
                // then also sees its token inactive (a crash in between
                // redelivers the message, and deactivating again is
                // harmless).
                if deactivate {
                    self.must("deactivate_device", || async {
                        Ok(deliveries::deactivate_device(
                            &self.pool,
                            &deliveries::Unregistered {
                                provider,
                                tenant: &msg.tenant_id,
                                user: &msg.user_id,
                                token: &msg.destination.address,
                                reason: &reason,
                                created_at: msg.created_at,
                                delivery_id: msg.delivery_id,
                            },
                        )
                        .await?)
                    })
                    .await?;
                }
                self.settle(msg, token, &failed).await?;
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
                pass.throttled(after);
                let throttled = Settle::Retry {
                    class: ErrorClass::RateLimited.as_str(),
                    error: &reason,
                    refund: true,
                };
                self.settle(msg, token, &throttled).await?;
                let wait = after.unwrap_or(Duration::from_secs(1));
                let delay = self.policy.round_up(wait);
                if !self
                    .successor(delivery, msg, delay, attempts.saturating_sub(1), lost)
                    .await?
                {
                    return Ok(Done::HandBack);
                }
                self.count("throttled");
                tracing::info!(provider, to = %to, attempts, outcome = "throttled", retry_after_ms = wait.as_millis() as u64, "provider throttled; waiting");
            }
            Outcome::Retry {
                class,
                reason,
                after,
            } => {
                pass.failure();
                match self.policy.after_failure(attempts, after) {
                    Next::Retry { delay, tier } => {
                        let retry = Settle::Retry {
                            class: class.as_str(),
                            error: &reason,
                            refund: false,
                        };
                        self.settle(msg, token, &retry).await?;
                        if !self.successor(delivery, msg, delay, attempts, lost).await? {
                            return Ok(Done::HandBack);
                        }
                        metrics::counter!("herald_delivery_retries_total", "channel" => self.channel.as_str(), "tier" => tier.to_string())
                            .increment(1);
                        self.count("retry");
                        tracing::info!(provider, to = %to, attempts, outcome = "retry", error_class = class.as_str(), error = %reason, delay_ms = delay.as_millis() as u64, "delivery will be retried");
                    }
                    Next::GiveUp => {
                        let error = format!("gave up after {attempts} attempts: {reason}");
                        return self
                            .give_up(delivery, msg, token, class.as_str(), error, attempts)
                            .await;
                    }
                }
            }
        }
        Ok(Done::Ack)
    }

    /// Dead-letters the delivery (confirmed by the broker), then records it
    /// `dead`.
    pub(super) async fn give_up(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        token: Uuid,
        class: &'static str,
        error: String,
        attempts: u32,
    ) -> anyhow::Result<Done> {
        let headers = Headers::from_table(delivery.properties.headers().as_ref())
            .int(Headers::ATTEMPTS, attempts as i64)
            .str(Headers::TENANT, &msg.tenant_id);
        let reason = DeadLetterReason {
            source: source(self.channel),
            error_class: class,
            error: error.clone(),
            tenant: Some(msg.tenant_id.clone()),
        };
        let mut copy = Outgoing::json("", "", delivery.data.clone(), headers);
        // Stable: a give-up finished twice is archived once.
        copy.message_id = format!("{}:dead", msg.delivery_id);
        self.must("dead_letter", || async {
            Ok(dlq::publish_outgoing(&self.publisher, copy.clone(), delivery, &reason).await?)
        })
        .await?;
        let dead = Settle::Dead {
            class,
            error: &error,
        };
        self.settle(msg, token, &dead).await?;
        self.count("dead");
        tracing::warn!(to = %mask(&msg.destination.address), attempts, outcome = "dead", error_class = class, "delivery is dead; dead-lettered");
        Ok(Done::Ack)
    }

    /// Records an outcome through any outage: the provider call already
    /// happened, and giving up here would mean sending it again.
    async fn settle(
        &self,
        msg: &DeliveryMessage,
        token: Uuid,
        outcome: &Settle<'_>,
    ) -> anyhow::Result<()> {
        let request = SettleRequest::new(msg.created_at, msg.delivery_id, token, outcome);
        let ledger = self.ledger(msg.lane);
        self.must("record_outcome", || ledger.settle(request.clone()))
            .await
    }

    /// Publishes the message that carries the delivery on (its retry), held
    /// through outages. `false` when the original's channel went first: the
    /// broker hands the original out again, and since the row is already
    /// `pending` that copy makes the retry (early, rather than as a second
    /// message that would then travel beside it).
    async fn successor(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        delay: Duration,
        attempts: u32,
        lost: &CancellationToken,
    ) -> anyhow::Result<bool> {
        match self
            .publish_retry(delivery, msg, delay, attempts, lost)
            .await
        {
            Ok(()) => Ok(true),
            Err(Held::Stopped) => Ok(false),
            Err(Held::Failed(e)) => Err(e),
        }
    }

    /// Runs a step that follows a provider call until it succeeds, holding
    /// the message through outages until [`Engine::settle_until`] fires.
    async fn must<F, Fut>(&self, what: &str, step: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        match outage::hold(what, &self.settle_until, step).await {
            Ok(()) => Ok(()),
            Err(Held::Stopped) => Err(anyhow::anyhow!(
                "stopping before `{what}` could be done; the message goes back to its queue"
            )),
            Err(Held::Failed(e)) => Err(e),
        }
    }

    /// Publishes the delivery to the retry tier of `delay`, held through
    /// outages until `until` fires.
    pub(super) async fn publish_retry(
        &self,
        delivery: &Delivery,
        msg: &DeliveryMessage,
        delay: Duration,
        attempts: u32,
        until: &CancellationToken,
    ) -> Result<(), Held> {
        let names = self.publisher.broker().names();
        let headers = Headers::from_table(delivery.properties.headers().as_ref())
            .int(Headers::RETRY_DELAY_MS, delay.as_millis() as i64)
            .int(Headers::ATTEMPTS, attempts as i64);
        let mut out = msg.outgoing(names);
        out.exchange = names.retry_exchange();
        out.headers = headers;
        outage::hold("publish_retry", until, || async {
            Ok(self.publisher.publish(&out).await?)
        })
        .await
    }
}
