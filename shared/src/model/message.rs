//! Messages rendered for one recipient, and where they go: what the router
//! produces and the channel workers hand to providers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// Where a message goes: a device token (with its platform), an email
/// address or an E.164 number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

