//! Provider clients: plain protocol clients that take a rendered message and
//! a destination and answer an [`Outcome`]. They know nothing of RabbitMQ,
//! the database or each other, so each is tested alone against its fake.
//!
//! [`config`] reads the provider settings and [`config::build`] picks, per
//! channel, the provider each destination goes to.

pub mod apns;
pub mod config;
pub mod fcm;
mod http;
pub mod http_email;
pub mod log;
pub mod sendgrid;
mod set;
pub mod smtp;
pub mod twilio;

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::Lane;

pub use crate::model::message::{Destination, EmailMessage, PushMessage, Rendered, SmsMessage};

/// What a provider may use beyond the message: ids for idempotency and
/// collapse keys, the lane for priority, the expiry for TTL headers, and
/// the delivery's address in the ledger (`created_at`, `delivery_id`) for
/// the receipts a provider sends back.
#[derive(Debug, Clone)]
pub struct SendContext {
    pub delivery_id: Uuid,
    /// The delivery's partition key (its notification's acceptance time).
    pub created_at: DateTime<Utc>,
    pub notification_id: Uuid,
    pub lane: Lane,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A filterable class of failure, stored with the delivery and dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// The provider failed (5xx, SMTP 4xx).
    Server,
    /// The provider throttled us (429, quota).
    RateLimited,
    /// The address or number is not valid for the provider.
    InvalidAddress,
    /// The device token is no longer registered.
    Unregistered,
    /// The provider refused this message (content, size, policy).
    Rejected,
    /// Our credentials were refused.
    Auth,
    /// Herald is misconfigured for this provider.
    Config,
}

impl ErrorClass {
    /// Every class, in a stable order.
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::Timeout,
        ErrorClass::Connection,
        ErrorClass::Server,
        ErrorClass::RateLimited,
        ErrorClass::InvalidAddress,
        ErrorClass::Unregistered,
        ErrorClass::Rejected,
        ErrorClass::Auth,
        ErrorClass::Config,
    ];

    /// Snake-case name, as stored and filtered on.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connection => "connection",
            ErrorClass::Server => "server",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::InvalidAddress => "invalid_address",
            ErrorClass::Unregistered => "unregistered",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Auth => "auth",
            ErrorClass::Config => "config",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What came of one send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the provider.
    Sent { provider_id: Option<String> },
    /// Worth trying again, no sooner than `after` if the provider said so
    /// (`Retry-After`).
    Retry {
        class: ErrorClass,
        reason: String,
        after: Option<Duration>,
    },
    /// Will never succeed as is. `deactivate` asks the engine to deactivate
    /// the device token (unregistered).
    Permanent {
        class: ErrorClass,
        reason: String,
        deactivate: bool,
    },
}

impl Outcome {
    /// A message handed to a provider of another channel: a wiring bug in
    /// Herald, which no retry fixes.
    pub fn wrong_channel(provider: &str, message: &Rendered) -> Outcome {
        Outcome::Permanent {
            class: ErrorClass::Config,
            reason: format!("{provider} cannot send a {} message", message.channel()),
            deactivate: false,
        }
    }
}

/// A provider client.
pub trait Provider: Send + Sync {
    /// Short name for logs and metrics (`fcm`, `apns`, `smtp`, `twilio`, `log`).
    fn name(&self) -> &'static str;

    /// Sends one message. Never panics on a provider answer; every failure is
    /// an [`Outcome`].
    fn send<'a>(
        &'a self,
        message: &'a Rendered,
        to: &'a Destination,
        ctx: &'a SendContext,
    ) -> BoxFuture<'a, Outcome>;
}

/// A provider of one channel, written as a plain async method on that
/// channel's message. Every such provider is a [`Provider`]: a message of
/// another channel is refused there, in one place, and the boxing `dyn
/// Provider` needs happens there too.
pub trait ChannelProvider: Send + Sync {
    /// The message of the channel it serves.
    type Message: ChannelMessage;
    /// Short name for logs and metrics, as [`Provider::name`].
    const NAME: &'static str;

    /// Sends one message. Never panics on a provider answer; every failure
    /// is an [`Outcome`].
    fn deliver(
        &self,
        message: &Self::Message,
        to: &Destination,
        ctx: &SendContext,
    ) -> impl Future<Output = Outcome> + Send;
}

impl<P: ChannelProvider> Provider for P {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn send<'a>(
        &'a self,
        message: &'a Rendered,
        to: &'a Destination,
        ctx: &'a SendContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match P::Message::of(message) {
                Some(message) => self.deliver(message, to, ctx).await,
                None => Outcome::wrong_channel(P::NAME, message),
            }
        })
    }
}

/// A channel's message type, picked out of a [`Rendered`] message.
pub trait ChannelMessage: Sync {
    /// The message, if `rendered` is of this channel.
    fn of(rendered: &Rendered) -> Option<&Self>;
}

impl ChannelMessage for PushMessage {
    fn of(rendered: &Rendered) -> Option<&Self> {
        match rendered {
            Rendered::Push(push) => Some(push),
            _ => None,
        }
    }
}

impl ChannelMessage for EmailMessage {
    fn of(rendered: &Rendered) -> Option<&Self> {
        match rendered {
            Rendered::Email(email) => Some(email),
            _ => None,
        }
    }
}

impl ChannelMessage for SmsMessage {
    fn of(rendered: &Rendered) -> Option<&Self> {
        match rendered {
            Rendered::Sms(sms) => Some(sms),
            _ => None,
        }
    }
}

/// Chooses the provider for a destination (push: by device platform).
pub trait Providers: Send + Sync {
    /// The provider that serves `to`.
    fn for_destination(&self, to: &Destination) -> &dyn Provider;

    /// The provider that serves `to` while the first one's circuit is open,
    /// if the channel has one.
    fn failover(&self, _to: &Destination) -> Option<&dyn Provider> {
        None
    }

    /// Names of every provider it may choose, for metrics at start.
    fn names(&self) -> Vec<&'static str>;

    /// The first provider's name and its failover's, if the channel has one.
    fn failover_names(&self) -> Option<(&'static str, &'static str)> {
        None
    }
}
