//! Apple Push Notification service, provider API over HTTP/2, authorised by a
//! token (ES256 JWT signed with a `.p8` key) rather than a certificate, so one
//! key serves every app of the team and never expires.
//!
//! | answer | outcome |
//! |---|---|
//! | 200 | `Sent`, provider id = the `apns-id` |
//! | 410 `Unregistered` | `Permanent(Unregistered)`, deactivate the token |
//! | 400 `BadDeviceToken`, `DeviceTokenNotForTopic` | `Permanent(InvalidAddress)`, deactivate |
//! | 400, 404, 405, 413, other | `Permanent(Rejected)` |
//! | 403 `ExpiredProviderToken` | a new JWT and one more try if ours is old enough to replace, else `Permanent(Auth)` |
//! | 403, other | `Permanent(Auth)` |
//! | 429 `TooManyRequests`, `TooManyProviderTokenUpdates` | `Retry(RateLimited)` |
//! | 500, 503, any 5xx | `Retry(Server)` |
//! | no answer in time / no connection | `Retry(Timeout)` / `Retry(Connection)` |

mod token;

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use self::token::ApnsKey;
use self::token::TokenCache;
use super::{
    ChannelProvider, Destination, ErrorClass, Outcome, PushMessage, SendContext,
    http::{Answer, Refusal, client_builder, exchange, snippet, trace_headers},
};
use crate::model::Lane;

/// Apple's production endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";

/// Sends push notifications through APNs.
pub struct ApnsProvider {
    http: Client,
    base_url: String,
    topic: String,
    tokens: TokenCache,
}

impl ApnsProvider {
    /// A client of `base_url` (`https://api.push.apple.com`, or an `http://`
    /// h2c fake) sending to the app `topic` (its bundle id).
    pub fn new(
        base_url: &str,
        topic: &str,
        key: ApnsKey,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut builder = client_builder(timeout)
            // APNs closes connections it finds idle; pings keep the one
            // HTTP/2 connection (and its TLS handshake) alive between bursts.
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true);
        if base_url.starts_with("http://") {
            // Cleartext has no ALPN to agree on HTTP/2, and APNs speaks
            // nothing else: say it up front (h2c prior knowledge).
            builder = builder.http2_prior_knowledge();
        }
        Ok(Self {
            http: builder.build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            topic: topic.to_owned(),
            tokens: TokenCache::new(key),
        })
    }

    async fn send_push(&self, message: &PushMessage, token: &str, ctx: &SendContext) -> Outcome {
        // Tokens are hex; anything else would also change the request path.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::Permanent {
                class: ErrorClass::InvalidAddress,
                reason: "apns: device token is not hexadecimal".into(),
                deactivate: true,
            };
        }
        let body = payload(message);
        let jwt = match self.tokens.jwt() {
            Ok(jwt) => jwt,
            Err(outcome) => return outcome,
        };
        let answer = match self.post(token, &jwt, &body, ctx).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if answer.status == StatusCode::FORBIDDEN
            && answer.body.contains("ExpiredProviderToken")
            && self.tokens.expire(&jwt)
        {
            let jwt = match self.tokens.jwt() {
                Ok(jwt) => jwt,
                Err(outcome) => return outcome,
            };
            return match self.post(token, &jwt, &body, ctx).await {
                Ok(answer) => classify_answer(&answer),
                Err(outcome) => outcome,
            };
        }
        classify_answer(&answer)
    }

    async fn post(
        &self,
        token: &str,
        jwt: &str,
        body: &Value,
        ctx: &SendContext,
    ) -> Result<Answer, Outcome> {
        let mut request = self
            .http
            .post(format!("{}/3/device/{token}", self.base_url))
            .headers(trace_headers())
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            // 10 = now; 5 = when the device's power budget allows, which
            // Apple asks for anything that is not time-sensitive.
            .header(
                "apns-priority",
                if ctx.lane == Lane::High { "10" } else { "5" },
            )
            // A UUID's text is 36 bytes, inside Apple's 64-byte limit; the same
            // notification re-sent after a retry replaces, not stacks.
            .header("apns-collapse-id", ctx.notification_id.to_string())
            .header("apns-id", ctx.delivery_id.to_string())
            .json(body);
        // With no expiry the header is left out, so APNs stores the push for
        // an offline device; an `apns-expiration` of 0 would mean "deliver
        // now or never".
        if let Some(at) = ctx.expires_at {
            request = request.header("apns-expiration", at.timestamp().max(1).to_string());
        }
        exchange("apns", request).await
    }
}

/// Classifies an answer of APNs, its `apns-id` the provider id.
fn classify_answer(answer: &Answer) -> Outcome {
    let apns_id = answer.headers.get("apns-id").and_then(|v| v.to_str().ok());
    classify(answer.status, apns_id, &answer.body, answer.after)
}

impl ChannelProvider for ApnsProvider {
    type Message = PushMessage;
    const NAME: &'static str = "apns";

    async fn deliver(&self, push: &PushMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        self.send_push(push, &to.address, ctx).await
    }
}

/// The JSON payload: the alert under `aps`, the data keys beside it (where
/// the app reads custom keys). A data key named `aps` is dropped rather than
/// allowed to replace the alert.
pub fn payload(message: &PushMessage) -> Value {
    let mut alert = Map::new();
    if let Some(title) = &message.title {
        alert.insert("title".into(), json!(title));
    }
    if let Some(body) = &message.body {
        alert.insert("body".into(), json!(body));
    }
    let mut root = Map::new();
    root.insert("aps".into(), json!({ "alert": alert }));
    for (key, value) in &message.data {
        if key != "aps" {
            root.insert(key.clone(), json!(value));
        }
    }
    Value::Object(root)
}

/// Classifies APNs' answer (see the module's table).
pub fn classify(
    status: StatusCode,
    apns_id: Option<&str>,
    body: &str,
    after: Option<Duration>,
) -> Outcome {
    if status == StatusCode::OK {
        return Outcome::Sent {
            provider_id: apns_id.map(str::to_owned),
        };
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        reason: String,
    }
    let reason_code = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.reason)
        .unwrap_or_default();
    let reason = if reason_code.is_empty() {
        format!("apns {}: {}", status.as_u16(), snippet(body, 200))
    } else {
        format!("apns {} {reason_code}", status.as_u16())
    };
    let refusal = Refusal { reason, after };
    match (status.as_u16(), reason_code.as_str()) {
        (410, _) | (_, "Unregistered") => refusal.deactivate(ErrorClass::Unregistered),
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            refusal.deactivate(ErrorClass::InvalidAddress)
        }
        (403, _) => refusal.permanent(ErrorClass::Auth),
        _ => refusal.by_status(status, ErrorClass::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_of(status: u16, body: &str) -> Outcome {
        classify(StatusCode::from_u16(status).unwrap(), None, body, None)
    }

    #[test]
    fn classifies_documented_reasons() {
        use ErrorClass::*;
        #[rustfmt::skip]
        let cases = [
            (410, r#"{"reason":"Unregistered","timestamp":1}"#, Unregistered, true),
            (400, r#"{"reason":"BadDeviceToken"}"#, InvalidAddress, true),
            (400, r#"{"reason":"DeviceTokenNotForTopic"}"#, InvalidAddress, true),
            (400, r#"{"reason":"PayloadEmpty"}"#, Rejected, false),
            (413, r#"{"reason":"PayloadTooLarge"}"#, Rejected, false),
            (403, r#"{"reason":"InvalidProviderToken"}"#, Auth, false),
            (429, r#"{"reason":"TooManyRequests"}"#, RateLimited, false),
            (503, r#"{"reason":"ServiceUnavailable"}"#, Server, false),
            (500, "oops", Server, false),
        ];
        for (status, body, want, want_deactivate) in cases {
            match outcome_of(status, body) {
                Outcome::Permanent {
                    class, deactivate, ..
                } => assert_eq!((class, deactivate), (want, want_deactivate), "{body}"),
                Outcome::Retry { class, .. } => assert_eq!(class, want, "{body}"),
                Outcome::Sent { .. } => panic!("not sent: {body}"),
            }
        }
        assert_eq!(
            classify(StatusCode::OK, Some("abc"), "", None),
            Outcome::Sent {
                provider_id: Some("abc".into())
            }
        );
    }

    #[test]
    fn payload_puts_data_beside_aps() {
        let msg = PushMessage {
            title: Some("T".into()),
            body: Some("B".into()),
            data: [
                ("order".to_owned(), "1".to_owned()),
                ("aps".to_owned(), "x".to_owned()),
            ]
            .into(),
        };
        assert_eq!(
            payload(&msg),
            json!({"aps": {"alert": {"title": "T", "body": "B"}}, "order": "1"})
        );
    }
}
