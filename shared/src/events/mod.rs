//! Delivery events: every status change users see, published as a
//! CloudEvents 1.0 JSON event (structured mode) on the `herald.events` topic
//! exchange, keyed `{tenant}.{channel}.{status}` (docs/events.md).
//!
//! A trigger on `deliveries` writes each change to the `event_outbox` table
//! in the change's own transaction (migrations/20261201000100); the router's
//! [`relay`] publishes the rows with confirms and deletes them. The delivery
//! path therefore only ever inserts a row: a slow or absent broker grows the
//! outbox, never the time a delivery takes.

pub mod relay;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    broker::{Headers, Names, Outgoing},
    db::events::PendingEvent,
    model::user::mask,
};

/// Media type of a CloudEvent in JSON structured mode; the AMQP binding
/// puts it in `content-type` so a CloudEvents SDK reads the body as the
/// whole event.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// Prefix of every event's `type`: `herald.delivery.sent`, ...
pub const TYPE_PREFIX: &str = "herald.delivery.";

/// A CloudEvents 1.0 envelope in structured mode, around `data`: what
/// Herald publishes on the events exchange (delivery events, and
/// `herald.webhook.disabled`).
#[derive(Debug, Clone, Serialize)]
pub struct CloudEvent<D> {
    pub specversion: &'static str,
    /// Stable across republishing: consumers de-duplicate on it.
    pub id: Uuid,
    /// What the event is about, e.g.
    /// `/tenants/{tenant}/notifications/{notification_id}`.
    pub source: String,
    /// e.g. `herald.delivery.{status}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id of the thing within `source` (a delivery, a webhook).
    pub subject: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    pub datacontenttype: &'static str,
    pub data: D,
}

impl<D: Serialize> CloudEvent<D> {
    /// The message: on the events exchange under `key`, persistent, message
    /// id = event id, with `headers`; not mandatory, so an event no service
    /// has bound a queue for is dropped, not returned.
    pub(crate) fn outgoing_with(&self, names: &Names, key: String, headers: Headers) -> Outgoing {
        let mut msg = Outgoing::json(
            names.events_exchange(),
            key,
            serde_json::to_vec(self).expect("serialisable"),
            headers,
        );
        msg.message_id = self.id.to_string();
        msg.content_type = CONTENT_TYPE;
        msg.mandatory = false;
        msg
    }
}

/// A delivery event as published.
pub type DeliveryEvent = CloudEvent<DeliveryData>;

/// What an event says of its delivery: the same fields as the status API's
/// delivery, destination masked the same way.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryData {
    pub tenant_id: String,
    pub notification_id: Uuid,
    pub delivery_id: Uuid,
    pub user_id: String,
    pub channel: String,
    /// The notification's category; `null` once the notification itself
    /// is past retention.
    pub category: Option<String>,
    /// Masked as in logs and the status API.
    pub destination: String,
    pub status: String,
    /// Why it was suppressed, expired or failed.
    pub reason: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
}

impl CloudEvent<DeliveryData> {
    /// The event of an outbox row, or `None` when its delivery no longer
    /// exists (nothing is left to say who it was for).
    pub fn from_pending(row: &PendingEvent) -> Option<Self> {
        let (Some(tenant_id), Some(notification_id), Some(user_id), Some(channel)) = (
            row.tenant_id.clone(),
            row.notification_id,
            row.user_id.clone(),
            row.channel.clone(),
        ) else {
            return None;
        };
        Some(Self {
            specversion: "1.0",
            id: row.event_id,
            source: format!("/tenants/{tenant_id}/notifications/{notification_id}"),
            kind: format!("{TYPE_PREFIX}{}", row.status),
            subject: row.delivery_id.to_string(),
            time: row.at,
            datacontenttype: "application/json",
            data: DeliveryData {
                tenant_id,
                notification_id,
                delivery_id: row.delivery_id,
                user_id,
                channel,
                category: row.category.clone(),
                destination: mask(row.destination.as_deref().unwrap_or_default()),
                status: row.status.clone(),
                reason: row.reason.clone(),
                error_class: row.error_class.clone(),
                error: row.error.clone(),
                attempts: row.attempts,
            },
        })
    }

    /// Routing key: `{tenant}.{channel}.{status}`.
    pub fn routing_key(&self) -> String {
        Names::event_key(&self.data.tenant_id, &self.data.channel, &self.data.status)
    }

    /// The message to publish, the ids in headers like every other Herald
    /// message.
    pub fn outgoing(&self, names: &Names) -> Outgoing {
        let headers = Headers::default()
            .str(Headers::TENANT, &self.data.tenant_id)
            .str(Headers::NOTIFICATION, self.data.notification_id.to_string())
            .str(Headers::DELIVERY, self.data.delivery_id.to_string())
            .str(Headers::CHANNEL, &self.data.channel);
        self.outgoing_with(names, self.routing_key(), headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> PendingEvent {
        PendingEvent {
            seq: 7,
            event_id: Uuid::nil(),
            created_at: "2026-12-01T09:59:00Z".parse().unwrap(),
            delivery_id: Uuid::from_u128(2),
            status: "failed".into(),
            reason: None,
            error_class: Some("permanent".into()),
            error: Some("550 no such mailbox".into()),
            attempts: 1,
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
            tenant_id: Some("acme".into()),
            notification_id: Some(Uuid::from_u128(1)),
            user_id: Some("u-1".into()),
            channel: Some("email".into()),
            destination: Some("ada@example.com".into()),
            category: Some("order.shipped".into()),
        }
    }

    #[test]
    fn a_row_becomes_a_structured_cloud_event() {
        let event = DeliveryEvent::from_pending(&row()).unwrap();
        assert_eq!(event.routing_key(), "acme.email.failed");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "herald.delivery.failed");
        assert_eq!(json["id"], Uuid::nil().to_string());
        assert_eq!(json["time"], "2026-12-01T10:00:00Z");
        assert_eq!(json["data"]["destination"], "a***@example.com");
        let msg = event.outgoing(&Names::new("herald"));
        assert_eq!(msg.exchange, "herald.events");
        assert_eq!(msg.message_id, Uuid::nil().to_string());
        assert_eq!(msg.content_type, CONTENT_TYPE);
        assert!(
            !msg.mandatory,
            "an event nobody binds is dropped, not returned"
        );
    }

    #[test]
    fn a_row_whose_delivery_is_gone_has_no_event() {
        let mut gone = row();
        gone.tenant_id = None;
        gone.notification_id = None;
        gone.user_id = None;
        gone.channel = None;
        assert!(DeliveryEvent::from_pending(&gone).is_none());
    }
}
