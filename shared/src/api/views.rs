//! What the API answers, as types: each handler returns one of these, and
//! the OpenAPI document describes these same types, so the two cannot
//! drift apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::problem::Problem;
use crate::{
    db::{notifications::DeliveryView, recipients},
    model::{
        Channel, Lane,
        user::{Platform, mask},
    },
};

/// `202 Accepted` of a send.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    /// Always `accepted`.
    #[schema(value_type = String, pattern = "^accepted$")]
    pub status: &'static str,
}

/// The answer of a batch: one result per item, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// One item of a batch: accepted, or its own problem.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(BatchAccepted),
    Problem(Problem),
}

/// A batch item accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// Always 202.
    #[schema(minimum = 202, maximum = 202)]
    pub status: u16,
    pub id: Uuid,
    /// Where its status is, `/v1/notifications/{id}`.
    pub location: String,
}

/// A notification's status (schema only: the database holds it as text).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum NotificationState {
    Accepted,
    Routing,
    Routed,
    /// Routed, and nothing left to deliver.
    Completed,
}

/// A delivery's status (schema only: the database holds it as text).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum DeliveryState {
    Pending,
    Deferred,
    Sending,
    Sent,
    Failed,
    Suppressed,
    Expired,
    Dead,
    /// After a provider receipt: handed to the device or mailbox.
    Delivered,
    /// After a provider receipt: the mailbox does not exist.
    Bounced,
    /// After a provider receipt: the recipient reported it as spam.
    Complained,
    /// After a provider receipt: the carrier or receiving server would not take it.
    Undelivered,
}

/// `GET /v1/notifications/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationStatus {
    pub id: Uuid,
    #[schema(value_type = NotificationState)]
    pub status: String,
    pub category: String,
    #[schema(value_type = Lane)]
    pub priority: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deliveries per status.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub counts: BTreeMap<String, i64>,
    /// One page of deliveries.
    pub deliveries: Vec<Delivery>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<Uuid>,
}

/// One delivery of a notification; the destination is masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub user_id: String,
    #[schema(value_type = Channel)]
    pub channel: String,
    #[schema(value_type = Lane)]
    pub priority: String,
    pub destination: String,
    #[schema(value_type = DeliveryState)]
    pub status: String,
    /// Why it was suppressed, expired or failed.
    pub reason: Option<String>,
    pub attempts: i32,
    pub error_class: Option<String>,
    pub last_error: Option<String>,
    /// Held until then (quiet hours, `send_at`).
    pub deliver_after: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    /// When the provider's receipt (`delivered`, `bounced`, `complained`,
    /// `undelivered`) arrived.
    pub receipt_at: Option<DateTime<Utc>>,
    /// What the receipt said: an error code, a bounce reason.
    pub receipt_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeliveryView> for Delivery {
    fn from(d: DeliveryView) -> Self {
        Self {
            id: d.id,
            user_id: d.user_id,
            channel: d.channel,
            priority: d.lane,
            destination: mask(&d.destination),
            status: d.status,
            reason: d.reason,
            attempts: d.attempts,
            error_class: d.error_class,
            last_error: d.last_error,
            deliver_after: d.not_before,
            sent_at: d.sent_at,
            receipt_at: d.receipt_at,
            receipt_reason: d.receipt_reason,
            updated_at: d.updated_at,
        }
    }
}

/// A recipient, with their devices (tokens masked).
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub devices: Vec<Device>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// The answer for `row` and its devices.
    pub fn new(row: recipients::UserRow, devices: Vec<recipients::DeviceRow>) -> Self {
        Self {
            id: row.id,
            name: row.name,
            email: row.email,
            phone: row.phone,
            locale: row.locale,
            timezone: row.timezone,
            devices: devices.into_iter().map(Device::from).collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A device of a recipient; the token is masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub token: String,
    #[schema(value_type = Platform)]
    pub platform: String,
    pub active: bool,
    /// Why it was deactivated (an unregistered token).
    pub deactivated_reason: Option<String>,
}

impl From<recipients::DeviceRow> for Device {
    fn from(d: recipients::DeviceRow) -> Self {
        Self {
            token: mask(&d.token),
            platform: d.platform,
            active: d.active,
            deactivated_reason: d.deactivated_reason,
        }
    }
}

/// A topic subscription made.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscription {
    pub topic: String,
    pub user_id: String,
    /// Always true.
    pub subscribed: bool,
}

/// `GET /v1/topics/{topic}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Topic {
    pub topic: String,
    /// Subscribers now.
    pub subscribers: i64,
}
