//! Publishing with confirms. Every message is persistent, and `mandatory`
//! unless it is a fire-and-forget broadcast (delivery events: a topic
//! exchange nobody has bound drops them, as it should); a mandatory message
//! is published only when the broker confirmed it *and* did not return it as
//! unroutable (a returned message is still acked by the broker).

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::Mutex;

use super::{Broker, Headers};

/// How long a confirm may take before the publish counts as failed. A broker
/// under a memory or disk alarm blocks publishers; the caller must get an
/// answer (503) rather than hang.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a publish did not happen, or may not have.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message was not sent: no channel, or the channel refused it.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The message was sent but no confirm came back (timeout, or the
    /// channel closed while waiting): the broker may or may not hold it.
    #[error("broker did not confirm the message: {0}")]
    Unconfirmed(String),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for exchange `{exchange}` key `{key}`")]
    Unroutable { exchange: String, key: String },
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    /// Stable id of the message (dead-letter dedupe and tracing).
    pub message_id: String,
    /// Media type of the body: `application/json` unless a format of its
    /// own says otherwise (CloudEvents in structured mode).
    pub content_type: &'static str,
    /// Whether the broker must return the message when no queue is bound
    /// for it (then it is [`PublishError::Unroutable`]). True for every
    /// message Herald itself consumes; false for events, which services may
    /// or may not bind (a returned message costs the broker a
    /// `basic.return` and the publisher a warning carrying the whole body).
    pub mandatory: bool,
    /// Whether every publish of it carries a fresh [`Headers::COPY`] id:
    /// delivery messages, whose claim a redelivered copy may take over only
    /// from itself. Set at each publish, so a message published again (an
    /// unconfirmed publish retried) is a copy of its own.
    pub copies: bool,
}

impl PublishError {
    /// Whether the broker certainly does not hold the message (as opposed
    /// to [`PublishError::Unconfirmed`], which cannot tell).
    pub fn certainly_not_queued(&self) -> bool {
        !matches!(self, PublishError::Unconfirmed(_))
    }

    /// Whether the broker itself is out of reach or not answering.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable(_) | PublishError::Unconfirmed(_)
        )
    }

    /// Whether the channel must not be used again. Besides a broker out of
    /// reach, a nack: a RabbitMQ 3.10 channel remembers a quorum queue as
    /// "rejecting publishes" when its first publish there found no leader
    /// (the node that led it was just lost), and nacks every later publish
    /// to that queue until the queue itself says otherwise, which a queue
    /// that is not full never does. A fresh channel asks the queue's
    /// current leader again.
    fn spoils_channel(&self) -> bool {
        self.is_unavailable() || matches!(self, PublishError::Nacked)
    }
}

impl Outgoing {
    /// A JSON message with a fresh message id.
    pub fn json(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: Vec<u8>,
        headers: Headers,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            headers,
            message_id: uuid::Uuid::now_v7().to_string(),
            content_type: "application/json",
            mandatory: true,
            copies: false,
        }
    }

    fn properties(&self) -> BasicProperties {
        let mut headers = self.headers.clone();
        if self.copies {
            headers = headers.str(Headers::COPY, uuid::Uuid::new_v4().to_string());
        }
        BasicProperties::default()
            .with_content_type(self.content_type.into())
            .with_delivery_mode(2)
            .with_message_id(self.message_id.as_str().into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers.into_table())
    }
}

/// A confirm-mode channel, reopened when it breaks. Clone freely: clones
/// share the channel, and confirms of concurrent publishes are in flight
/// together rather than one round trip each.
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<Broker>,
    channel: Arc<Mutex<Option<Channel>>>,
}

impl Publisher {
    /// A publisher on the broker's connection; the channel opens on first use.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            channel: Arc::new(Mutex::new(None)),
        }
    }

    /// The broker this publisher uses.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut guard = self.channel.lock().await;
        if let Some(ch) = guard.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let open = async {
            let ch = self.broker.channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        };
        let ch = tokio::time::timeout(CONFIRM_TIMEOUT, open)
            .await
            .map_err(|_| PublishError::Unavailable("connect timed out".into()))?
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// Stops using `used` (if it is still the current channel): the next
    /// publish opens a fresh one. A channel still open is closed once the
    /// confirms in flight on it had their time, so channels do not pile up
    /// on the connection.
    async fn forget(&self, used: &Channel) {
        let mut guard = self.channel.lock().await;
        if guard.as_ref().is_some_and(|ch| ch.id() == used.id()) {
            *guard = None;
        }
        drop(guard);
        if used.status().connected() {
            let ch = used.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CONFIRM_TIMEOUT).await;
                let _ = ch.close(200, "reopened".into()).await;
            });
        }
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError> {
        let ch = self.channel().await?;
        let result = tokio::time::timeout(CONFIRM_TIMEOUT, publish_on(&ch, msg))
            .await
            .unwrap_or_else(|_| Err(PublishError::Unconfirmed("confirm timed out".into())));
        if result.as_ref().is_err_and(PublishError::spoils_channel) {
            self.forget(&ch).await;
        }
        result
    }

    /// Publishes many messages with their confirms in flight together; one
    /// result per message, in order.
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Vec<Result<(), PublishError>> {
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                return msgs
                    .iter()
                    .map(|_| Err(PublishError::Unavailable(e.to_string())))
                    .collect();
            }
        };
        let results = join_all(msgs.iter().map(|m| async {
            tokio::time::timeout(CONFIRM_TIMEOUT, publish_on(&ch, m))
                .await
                .unwrap_or_else(|_| Err(PublishError::Unconfirmed("confirm timed out".into())))
        }))
        .await;
        if results
            .iter()
            .any(|r| r.as_ref().is_err_and(PublishError::spoils_channel))
        {
            self.forget(&ch).await;
        }
        results
    }
}

async fn publish_on(ch: &Channel, msg: &Outgoing) -> Result<(), PublishError> {
    let confirm = ch
        .basic_publish(
            msg.exchange.as_str().into(),
            msg.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: msg.mandatory,
                ..Default::default()
            },
            &msg.body,
            msg.properties(),
        )
        .await
        // Refused before it was sent (the channel is closed).
        .map_err(|e| PublishError::Unavailable(e.to_string()))?
        .await
        // Sent, but the channel went before its confirm came back.
        .map_err(|e| PublishError::Unconfirmed(e.to_string()))?;
    match confirm {
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
            exchange: msg.exchange.clone(),
            key: msg.routing_key.clone(),
        }),
        Confirmation::Ack(None) => Ok(()),
        Confirmation::NotRequested => Err(PublishError::Unavailable(
            "channel is not in confirm mode".into(),
        )),
    }
}
