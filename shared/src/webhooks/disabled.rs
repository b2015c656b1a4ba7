//! The `herald.webhook.disabled` event: published on the events exchange
//! when the sender disables an endpoint that kept failing, so a tenant's
//! own services (or an operator's alerting) learn of it without polling the
//! API. It goes to the events exchange only, never to webhook endpoints:
//! the endpoint it is about is the one that cannot receive it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    broker::{Headers, Names, Outgoing, Publisher},
    db::webhooks::Disabled,
    events::CloudEvent,
};

/// The event's `type`.
pub const TYPE: &str = "herald.webhook.disabled";

/// Attempts to publish the event, and the pause between them: enough to
/// ride out a broker connection being re-established, short enough not to
/// hold the sender's message for long.
const ATTEMPTS: u32 = 3;
const PAUSE: Duration = Duration::from_millis(500);

/// The event as published.
pub type WebhookDisabledEvent = CloudEvent<WebhookDisabledData>;

/// What the event says of the endpoint (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookDisabledData {
    pub tenant_id: String,
    pub webhook_id: String,
    pub url: String,
    pub failing_since: DateTime<Utc>,
    pub disabled_at: DateTime<Utc>,
}

impl CloudEvent<WebhookDisabledData> {
    /// The event of endpoint `webhook_id` of `tenant` at `url` just disabled.
    pub fn new(tenant: &str, webhook_id: &str, url: &str, disabled: Disabled) -> Self {
        Self {
            specversion: "1.0",
            id: Uuid::now_v7(),
            source: format!("/tenants/{tenant}/webhooks/{webhook_id}"),
            kind: TYPE.to_owned(),
            subject: webhook_id.to_owned(),
            time: disabled.disabled_at,
            datacontenttype: "application/json",
            data: WebhookDisabledData {
                tenant_id: tenant.to_owned(),
                webhook_id: webhook_id.to_owned(),
                url: url.to_owned(),
                failing_since: disabled.failing_since,
                disabled_at: disabled.disabled_at,
            },
        }
    }

    /// Routing key: `{tenant}.webhook.disabled`.
    pub fn routing_key(&self) -> String {
        Names::event_key(&self.data.tenant_id, "webhook", "disabled")
    }

    /// The message to publish, the tenant in its headers.
    pub fn outgoing(&self, names: &Names) -> Outgoing {
        let headers = Headers::default().str(Headers::TENANT, &self.data.tenant_id);
        self.outgoing_with(names, self.routing_key(), headers)
    }
}

/// Publishes the event with confirms, a few times while the broker fails;
/// a queue-less key (nobody bound) is not a failure. When every attempt
/// fails the endpoint stays disabled all the same: the failure is logged
/// and counted (`herald_webhooks_disabled_event_failures_total`).
pub async fn publish(publisher: &Publisher, event: &WebhookDisabledEvent) {
    let msg = event.outgoing(publisher.broker().names());
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match publisher.publish(&msg).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(PAUSE).await;
        }
    }
    metrics::counter!("herald_webhooks_disabled_event_failures_total").increment(1);
    tracing::warn!(
        webhook = %event.data.webhook_id, tenant = %event.data.tenant_id,
        error = %last.map(|e| e.to_string()).unwrap_or_default(),
        "could not publish herald.webhook.disabled; the endpoint is disabled all the same"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CONTENT_TYPE;

    #[test]
    fn the_event_is_a_cloud_event_keyed_by_tenant() {
        let at = Utc::now();
        let event = WebhookDisabledEvent::new(
            "acme",
            "hook-1",
            "https://example.com/h",
            Disabled {
                failing_since: at - chrono::Duration::hours(1),
                disabled_at: at,
            },
        );
        let names = Names::new("p");
        let msg = event.outgoing(&names);
        assert_eq!(msg.exchange, "p.events");
        assert_eq!(msg.routing_key, "acme.webhook.disabled");
        assert_eq!(msg.content_type, CONTENT_TYPE);
        let json: serde_json::Value = serde_json::from_slice(&msg.body).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], TYPE);
        assert_eq!(json["source"], "/tenants/acme/webhooks/hook-1");
        assert_eq!(json["data"]["url"], "https://example.com/h");
        assert_eq!(json["id"], msg.message_id.as_str());
        assert!(json["data"].get("secret").is_none());
    }
}
