//! Firebase Cloud Messaging, HTTP v1 API: one `messages:send` request per
//! device token, authorised by an OAuth2 access token from a service account.
//!
//! Classification follows FCM's documented error codes (the `errorCode` of the
//! `google.firebase.fcm.v1.FcmError` detail, else the Google `status`):
//!
//! | answer | outcome |
//! |---|---|
//! | 200 | `Sent`, provider id = the message `name` |
//! | `UNREGISTERED` (404) | `Permanent(Unregistered)`, deactivate the token |
//! | any other 404 | `Permanent(Config)`: a wrong base URL or project id, not a dead token |
//! | `INVALID_ARGUMENT` (400) naming the token | `Permanent(InvalidAddress)`, deactivate |
//! | `INVALID_ARGUMENT` (400), other | `Permanent(Rejected)` |
//! | `SENDER_ID_MISMATCH` (403) | `Permanent(InvalidAddress)`, token kept |
//! | `QUOTA_EXCEEDED` (429) | `Retry(RateLimited)`, after `Retry-After` |
//! | `UNAVAILABLE` (503), `INTERNAL` (500), any 5xx | `Retry(Server)`, after `Retry-After` |
//! | 401 | the cached access token is dropped and the send retried once with a new one; a second 401 is `Permanent(Auth)` |
//! | `THIRD_PARTY_AUTH_ERROR` (401), 403 | `Permanent(Auth)` at once: a new token of the same account has the same rights |
//! | no answer in time / no connection | `Retry(Timeout)` / `Retry(Connection)` |

mod errors;
mod oauth;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

pub use self::errors::classify;
pub use self::oauth::{DEFAULT_TOKEN_URL, FCM_SCOPE, ServiceAccount};
use self::{errors::error_code, oauth::TokenSource};
use super::{
    ChannelProvider, Destination, Outcome, PushMessage, SendContext,
    http::{Answer, client_builder, exchange, trace_headers},
};
use crate::model::Lane;

/// FCM's API host.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";

/// FCM's longest time-to-live (28 days); a longer one is refused.
const MAX_TTL_SECS: i64 = 28 * 24 * 3600;

/// Sends push notifications through FCM HTTP v1.
pub struct FcmProvider {
    http: Client,
    send_url: String,
    tokens: TokenSource,
}

impl FcmProvider {
    /// A client of `{base_url}/v1/projects/{project_id}/messages:send`, each
    /// request (token grants included) bounded by `timeout`.
    pub fn new(
        base_url: &str,
        project_id: &str,
        account: ServiceAccount,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: client_builder(timeout).build()?,
            send_url: format!(
                "{}/v1/projects/{project_id}/messages:send",
                base_url.trim_end_matches('/')
            ),
            tokens: TokenSource::new(account),
        })
    }

    async fn send_push(&self, message: &PushMessage, token: &str, ctx: &SendContext) -> Outcome {
        let body = message_body(message, token, ctx, Utc::now());
        let access = match self.tokens.token(&self.http).await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let answer = match self.post(&access, &body).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        // Google may revoke a token before its stated expiry (key rotation):
        // one fresh token is worth a try, a second 401 is not.
        if answer.status == StatusCode::UNAUTHORIZED
            && error_code(&answer.body) != "THIRD_PARTY_AUTH_ERROR"
        {
            self.tokens.invalidate(&access).await;
            let access = match self.tokens.token(&self.http).await {
                Ok(access) => access,
                Err(outcome) => return outcome,
            };
            return match self.post(&access, &body).await {
                Ok(answer) => classify(answer.status, &answer.body, answer.after),
                Err(outcome) => outcome,
            };
        }
        classify(answer.status, &answer.body, answer.after)
    }

    async fn post(&self, access: &SecretString, body: &SendRequest<'_>) -> Result<Answer, Outcome> {
        let request = self
            .http
            .post(&self.send_url)
            .headers(trace_headers())
            .bearer_auth(access.expose_secret())
            .json(body);
        exchange("fcm", request).await
    }
}

impl ChannelProvider for FcmProvider {
    type Message = PushMessage;
    const NAME: &'static str = "fcm";

    async fn deliver(&self, push: &PushMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        self.send_push(push, &to.address, ctx).await
    }
}

/// The `messages:send` body for one device token.
///
/// The notification id is the collapse key, so the copies an at-least-once
/// pipeline may send of one notification replace each other on the device
/// instead of stacking up. The TTL is the time left until `expires_at`, so
/// FCM drops what a phone that was off would get too late.
pub fn message_body<'a>(
    message: &'a PushMessage,
    token: &'a str,
    ctx: &SendContext,
    now: DateTime<Utc>,
) -> SendRequest<'a> {
    let high = ctx.lane == Lane::High;
    let (ttl, expiration) = ctx
        .expires_at
        .map(|at| {
            let secs = (at - now).num_seconds().clamp(0, MAX_TTL_SECS);
            (format!("{secs}s"), at.timestamp().max(1).to_string())
        })
        .unzip();
    let notification = (message.title.is_some() || message.body.is_some()).then_some(Notice {
        title: message.title.as_deref(),
        body: message.body.as_deref(),
    });
    SendRequest {
        message: Message {
            token,
            notification,
            data: (!message.data.is_empty()).then_some(&message.data),
            android: Android {
                priority: if high { "HIGH" } else { "NORMAL" },
                collapse_key: ctx.notification_id,
                ttl,
            },
            apns: Apns {
                headers: ApnsHeaders {
                    priority: if high { "10" } else { "5" },
                    collapse_id: ctx.notification_id,
                    expiration,
                },
            },
        },
    }
}

/// A `messages:send` request body, serialised as it is built: the worker
/// builds one per delivery, so no JSON tree in between.
#[derive(Debug, serde::Serialize)]
pub struct SendRequest<'a> {
    message: Message<'a>,
}

#[derive(Debug, serde::Serialize)]
struct Message<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a std::collections::BTreeMap<String, String>>,
    android: Android,
    apns: Apns,
}

#[derive(Debug, serde::Serialize)]
struct Notice<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

#[derive(Debug, serde::Serialize)]
struct Android {
    priority: &'static str,
    /// The notification id, hyphenated.
    collapse_key: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct Apns {
    headers: ApnsHeaders,
}

#[derive(Debug, serde::Serialize)]
struct ApnsHeaders {
    #[serde(rename = "apns-priority")]
    priority: &'static str,
    #[serde(rename = "apns-collapse-id")]
    collapse_id: Uuid,
    #[serde(rename = "apns-expiration", skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn body_carries_priority_ttl_and_collapse_key() {
        let now = Utc::now();
        let ctx = SendContext {
            delivery_id: Uuid::nil(),
            created_at: now,
            notification_id: Uuid::from_u128(7),
            lane: Lane::High,
            expires_at: Some(now + chrono::Duration::seconds(90)),
        };
        let msg = PushMessage {
            title: Some("Hi".into()),
            body: None,
            data: [("k".to_owned(), "v".to_owned())].into(),
        };
        let body = serde_json::to_value(message_body(&msg, "tok", &ctx, now)).unwrap();
        let m = &body["message"];
        assert_eq!(m["token"], "tok");
        assert_eq!(m["notification"], json!({"title": "Hi"}));
        assert_eq!(m["data"], json!({"k": "v"}));
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["ttl"], "90s");
        assert_eq!(
            m["android"]["collapse_key"],
            ctx.notification_id.to_string()
        );
        assert_eq!(m["apns"]["headers"]["apns-priority"], "10");

        let bulk = SendContext {
            lane: Lane::Bulk,
            expires_at: None,
            ..ctx
        };
        let empty = PushMessage::default();
        let body = serde_json::to_value(message_body(&empty, "tok", &bulk, now)).unwrap();
        assert_eq!(body["message"]["android"]["priority"], "NORMAL");
        assert!(body["message"]["android"].get("ttl").is_none());
        assert!(body["message"].get("notification").is_none());
    }
}
