//! Twilio Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! a form post authorised with HTTP basic auth (account SID : auth token).
//! With a receipts base URL ([`TwilioProvider::with_status_callbacks`]),
//! each message also carries `StatusCallback`, where Twilio reports what
//! became of it (crate::receipts::twilio).
//!
//! Twilio's error body (`code`, `message`, `more_info`, `status`) carries a
//! numeric code that says more than the HTTP status:
//!
//! | answer | outcome |
//! |---|---|
//! | 201 | `Sent`, provider id = the message `sid` |
//! | 21211 invalid `To`, 21614 not a mobile number, 21610 recipient unsubscribed (STOP) | `Permanent(InvalidAddress)` |
//! | 21408 region not enabled, 21612 unroutable from our `From` | `Permanent(Rejected)` |
//! | 20003 / HTTP 401 | `Permanent(Auth)` |
//! | 20429 / HTTP 429 | `Retry(RateLimited)`, after `Retry-After` |
//! | 5xx | `Retry(Server)`, after `Retry-After` |
//! | other 4xx | `Permanent(Rejected)` |
//! | no answer in time / no connection | `Retry(Timeout)` / `Retry(Connection)` |

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{
    ChannelProvider, Destination, ErrorClass, Outcome, SendContext, SmsMessage,
    http::{Refusal, client_builder, exchange, snippet, trace_headers},
};

/// Twilio's API host.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Sends SMS through Twilio's Messages API.
pub struct TwilioProvider {
    http: Client,
    messages_url: String,
    account_sid: String,
    auth_token: SecretString,
    from: String,
    /// Public base URL of ingest: when set, each message asks Twilio for
    /// status callbacks there ([`status_callback_url`]).
    receipts_base_url: Option<String>,
}

/// The status callback URL of a delivery: ingest's
/// `/v1/receipts/twilio/{created_at in µs}/{delivery id}`. It names the
/// delivery by its ledger address, so a receipt finds its row with one
/// primary-key probe, and Twilio's signature covers it.
pub fn status_callback_url(base: &str, created_at: DateTime<Utc>, delivery_id: Uuid) -> String {
    format!(
        "{}/v1/receipts/twilio/{}/{delivery_id}",
        base.trim_end_matches('/'),
        created_at.timestamp_micros()
    )
}

impl TwilioProvider {
    /// A client of `{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`.
    /// `from` is a sender number (E.164) or a Messaging Service SID (`MG…`),
    /// which lets Twilio pick the sender from a pool.
    pub fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: SecretString,
        from: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: client_builder(timeout).build()?,
            messages_url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                base_url.trim_end_matches('/')
            ),
            account_sid: account_sid.to_owned(),
            auth_token,
            from: from.to_owned(),
            receipts_base_url: None,
        })
    }

    /// Asks Twilio for status callbacks on every message, to ingest at
    /// `base` (its public URL).
    pub fn with_status_callbacks(mut self, base: Option<&str>) -> Self {
        self.receipts_base_url = base.map(str::to_owned);
        self
    }

    /// Posts a Messages.json form as is. [`Provider::send`] builds `To`,
    /// `From` (or `MessagingServiceSid`) and `Body`; this is the way to pass
    /// Twilio parameters Herald does not model, and to test how Twilio's
    /// refusal of a malformed request is classified.
    pub async fn post_message(&self, form: &[(&str, &str)]) -> Outcome {
        let request = self
            .http
            .post(&self.messages_url)
            .headers(trace_headers())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(form);
        match exchange("twilio", request).await {
            Ok(answer) => classify(answer.status, &answer.body, answer.after),
            Err(outcome) => outcome,
        }
    }

    fn sender_field(&self) -> &'static str {
        let service_sid = self.from.len() == 34 && self.from.starts_with("MG");
        if service_sid {
            "MessagingServiceSid"
        } else {
            "From"
        }
    }
}

impl fmt::Debug for TwilioProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioProvider")
            .field("messages_url", &self.messages_url)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl ChannelProvider for TwilioProvider {
    type Message = SmsMessage;
    const NAME: &'static str = "twilio";

    async fn deliver(&self, sms: &SmsMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        let callback = self
            .receipts_base_url
            .as_deref()
            .map(|base| status_callback_url(base, ctx.created_at, ctx.delivery_id));
        let mut form = vec![
            ("To", to.address.as_str()),
            (self.sender_field(), self.from.as_str()),
            ("Body", sms.text.as_str()),
        ];
        if let Some(url) = &callback {
            form.push(("StatusCallback", url.as_str()));
        }
        self.post_message(&form).await
    }
}

/// Twilio's error resource.
#[derive(Deserialize, Default)]
struct TwilioError {
    code: Option<u32>,
    #[serde(default)]
    message: String,
    more_info: Option<String>,
}

/// Classifies Twilio's answer (see the module's table).
pub fn classify(status: StatusCode, body: &str, after: Option<Duration>) -> Outcome {
    if status.is_success() {
        #[derive(Deserialize)]
        struct Message {
            sid: Option<String>,
        }
        let sid = serde_json::from_str::<Message>(body)
            .ok()
            .and_then(|m| m.sid);
        return Outcome::Sent { provider_id: sid };
    }
    let err: TwilioError = serde_json::from_str(body).unwrap_or_default();
    let reason = match err.code {
        Some(code) => format!(
            "twilio {} {code}: {}{}",
            status.as_u16(),
            err.message,
            err.more_info
                .map(|url| format!(" ({url})"))
                .unwrap_or_default()
        ),
        None => format!("twilio {}: {}", status.as_u16(), snippet(body, 300)),
    };
    // An SMS number is not a device token: nothing is ever deactivated.
    let refusal = Refusal { reason, after };
    match (status.as_u16(), err.code) {
        (_, Some(21211 | 21614 | 21610)) => refusal.permanent(ErrorClass::InvalidAddress),
        (_, Some(21408 | 21612)) => refusal.permanent(ErrorClass::Rejected),
        (_, Some(20003)) | (401, _) => refusal.permanent(ErrorClass::Auth),
        (_, Some(20429)) => refusal.retry(ErrorClass::RateLimited),
        _ => refusal.by_status(status, ErrorClass::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: u32, status: u16) -> String {
        serde_json::json!({
            "code": code,
            "message": "m",
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })
        .to_string()
    }

    fn class(outcome: Outcome) -> ErrorClass {
        match outcome {
            Outcome::Retry { class, .. } | Outcome::Permanent { class, .. } => class,
            Outcome::Sent { .. } => panic!("not an error"),
        }
    }

    #[test]
    fn classifies_error_codes() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        for code in [21211, 21614, 21610] {
            assert_eq!(
                class(classify(s(400), &error(code, 400), None)),
                ErrorClass::InvalidAddress
            );
        }
        for code in [21408, 21612] {
            assert_eq!(
                class(classify(s(400), &error(code, 400), None)),
                ErrorClass::Rejected
            );
        }
        assert_eq!(
            class(classify(s(401), &error(20003, 401), None)),
            ErrorClass::Auth
        );
        assert_eq!(class(classify(s(401), "", None)), ErrorClass::Auth);
        let after = Some(Duration::from_secs(3));
        match classify(s(429), &error(20429, 429), after) {
            Outcome::Retry {
                class,
                after: a,
                reason,
            } => {
                assert_eq!((class, a), (ErrorClass::RateLimited, after));
                assert!(reason.contains("20429") && reason.contains("docs/errors/20429"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            class(classify(s(503), "unavailable", None)),
            ErrorClass::Server
        );
        assert_eq!(class(classify(s(422), "{}", None)), ErrorClass::Rejected);
    }

    #[test]
    fn created_carries_the_sid() {
        let body = r#"{"sid":"SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","status":"queued"}"#;
        assert_eq!(
            classify(StatusCode::CREATED, body, None),
            Outcome::Sent {
                provider_id: Some("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into())
            }
        );
    }
}
