//! How a delivery travels on the broker: its routing key and the headers
//! that let one notification be followed across processes.

use super::{Headers, Names, Outgoing};
use crate::model::message::DeliveryMessage;

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
        Outgoing::json(
            names.deliveries_exchange(),
            Names::delivery_key(self.channel, self.lane),
            serde_json::to_vec(self).expect("serialisable"),
            headers,
        )
    }
}
