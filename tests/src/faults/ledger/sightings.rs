//! What the provider fakes saw, attributed to deliveries: each provider
//! request becomes a [`Sighting`] of one notification at one destination,
//! read from the identifiers Herald puts on the wire.

use std::time::Instant;

use uuid::Uuid;

use crate::fakes::Recorded;

/// One provider request, attributed to a delivery.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The notification the request carried (FCM's collapse key, APNs'
    /// collapse id); `None` if it carried none.
    pub notification_id: Option<Uuid>,
    /// The device token or address it went to.
    pub destination: String,
    pub at: Instant,
}

/// FCM `messages:send` requests as sightings: Herald sets the Android
/// collapse key to the notification id.
pub fn fcm_sightings(requests: &[Recorded]) -> Vec<Sighting> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/messages:send"))
        .map(|r| {
            let message = &r.json()["message"];
            Sighting {
                notification_id: message["android"]["collapse_key"]
                    .as_str()
                    .and_then(|s| s.parse().ok()),
                destination: message["token"].as_str().unwrap_or_default().to_owned(),
                at: r.received,
            }
        })
        .collect()
}

/// APNs requests as sightings (`apns-collapse-id`, token in the path).
pub fn apns_sightings(requests: &[Recorded]) -> Vec<Sighting> {
    requests
        .iter()
        .filter(|r| r.path.starts_with("/3/device/"))
        .map(|r| Sighting {
            notification_id: r.header("apns-collapse-id").and_then(|s| s.parse().ok()),
            destination: r.path.trim_start_matches("/3/device/").to_owned(),
            at: r.received,
        })
        .collect()
}
