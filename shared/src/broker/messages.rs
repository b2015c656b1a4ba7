//! How notifications and deliveries travel on the broker: exchange, routing
//! key, message id, and the headers that let one notification be followed
//! across processes.

use chrono::{DateTime, Utc};

use super::{Headers, Names, Outgoing};
use crate::model::message::{DeliveryMessage, RouteMessage};

impl RouteMessage {
    /// The message routing this notification (or its page, or its replay)
    /// on `lane`. Its id is stable however often it is (re)published.
    pub fn outgoing(&self, names: &Names, lane: &str, accepted_at: DateTime<Utc>) -> Outgoing {
        let mut headers = Headers::default()
            .str(Headers::TENANT, &self.tenant_id)
            .str(Headers::NOTIFICATION, self.notification_id.to_string())
            .int(Headers::ACCEPTED_AT_MS, accepted_at.timestamp_millis());
        if let Some(replay) = &self.replay {
            headers = headers.int(Headers::REPLAY, replay.number);
        }
        let mut msg = Outgoing::json(
            names.notifications_exchange(),
            names.route_key(lane, self.notification_id),
            serde_json::to_vec(self).expect("serialisable"),
            headers,
        );
        msg.message_id = match (&self.page, &self.replay) {
            (Some(page), _) => format!("{}:{}", self.notification_id, page.last),
            (None, Some(replay)) => format!(
                "{}:replay{}:{}",
                self.notification_id,
                replay.number,
                replay.users.join(",")
            ),
            (None, None) => self.notification_id.to_string(),
        };
        msg
    }
}

impl DeliveryMessage {
    /// The message to publish for this delivery, with the ids in headers so
    /// one notification can be followed across processes.
    pub fn outgoing(&self, names: &Names) -> Outgoing {
        let headers = Headers::default()
            .str(Headers::TENANT, &self.tenant_id)
            .str(Headers::NOTIFICATION, self.notification_id.to_string())
            .str(Headers::DELIVERY, self.delivery_id.to_string())
            .str(Headers::CHANNEL, self.channel.as_str())
            .str(Headers::LANE, self.lane.as_str())
            .int(Headers::ACCEPTED_AT_MS, self.created_at.timestamp_millis());
        let mut msg = Outgoing::json(
            names.deliveries_exchange(),
            names.user_delivery_key(self.channel, self.lane, &self.tenant_id, &self.user_id),
            serde_json::to_vec(self).expect("serialisable"),
            headers,
        );
        msg.copies = true;
        msg
    }
}
