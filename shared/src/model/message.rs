//! Messages rendered for one recipient, and where they go: what the router
//! produces and the channel workers hand to providers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::user::Platform;

/// A push notification, rendered for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// An email, rendered for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailMessage {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// An SMS, rendered for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmsMessage {
    pub text: String,
}

/// A message rendered for one recipient on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Rendered {
    Push(PushMessage),
    Email(EmailMessage),
    Sms(SmsMessage),
}

impl Rendered {
    /// The channel this message is for.
    pub fn channel(&self) -> super::Channel {
        match self {
            Rendered::Push(_) => super::Channel::Push,
            Rendered::Email(_) => super::Channel::Email,
            Rendered::Sms(_) => super::Channel::Sms,
        }
    }
}

/// Where a message goes: a device token (with its platform), an email
/// address or an E.164 number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// One delivery, as published by the router to the channel's lane queue and
/// consumed by the channel worker. Self-contained: the worker needs the
/// database only to claim and settle it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub delivery_id: uuid::Uuid,
    /// The notification's acceptance time: the deliveries partition key.
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub notification_id: uuid::Uuid,
    pub tenant_id: String,
    pub user_id: String,
    pub channel: super::Channel,
    pub lane: super::Lane,
    pub destination: Destination,
    pub rendered: Rendered,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The routing message of a notification: small, since the router reads the
/// request itself from PostgreSQL. A topic notification is routed in pages;
/// each page travels as a routing message of its own. A replayed delivery
/// travels as one too, so it takes the normal path again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteMessage {
    pub notification_id: Uuid,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

/// A page of a topic's subscribers: ids in `(after, last]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub after: Option<String>,
    pub last: String,
}

/// An operator's replay of dead deliveries: route the notification again for
/// these users only, with preferences, erasure, suppressions, quiet hours and
/// expiry applied as of now. Only deliveries set back to `pending` go out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub users: Vec<String>,
    /// How many times the dead letter was replayed, this time included: it
    /// travels on to a new dead letter, so a replay that dies again is
    /// archived anew.
    pub number: i64,
}
