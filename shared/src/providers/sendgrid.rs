//! SendGrid's v3 Mail Send API (`EMAIL_PROVIDER=sendgrid`):
//! `POST /v3/mail/send` with a bearer API key. Each message carries two
//! `custom_args`, `herald_delivery_id` and `herald_created_at`, which
//! SendGrid copies into every Event Webhook event about it, so its receipts
//! find their delivery (crate::receipts::sendgrid).
//!
//! | answer | outcome |
//! |---|---|
//! | 202 | `Sent`, provider id = `X-Message-Id` |
//! | 400 naming the recipient (`personalizations.0.to...`) | `Permanent(InvalidAddress)` |
//! | 401 / 403 | `Permanent(Auth)` |
//! | 429 | `Retry(RateLimited)`, after `Retry-After` or `X-RateLimit-Reset` |
//! | 5xx | `Retry(Server)` |
//! | other 4xx (400, 413 ...) | `Permanent(Rejected)` |

use std::{fmt, time::Duration};

use chrono::Utc;
use reqwest::{Client, StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{
    ChannelProvider, Destination, EmailMessage, ErrorClass, Outcome, SendContext,
    http::{Refusal, client_builder, exchange, retry_after, snippet, trace_headers},
};

/// SendGrid's API host.
pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";

/// Sends email through SendGrid.
pub struct SendGridProvider {
    http: Client,
    url: String,
    api_key: SecretString,
    from: Value,
}

impl SendGridProvider {
    /// A client of `{base_url}/v3/mail/send` sending as `from`
    /// (`noreply@example.com` or `Name <noreply@example.com>`).
    pub fn new(
        base_url: &str,
        api_key: SecretString,
        from: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: client_builder(timeout).build()?,
            url: format!("{}/v3/mail/send", base_url.trim_end_matches('/')),
            api_key,
            from: sender(from),
        })
    }
}

/// `Name <addr>` as SendGrid's `{"email", "name"}`.
fn sender(from: &str) -> Value {
    match from.rsplit_once('<') {
        Some((name, rest)) => {
            let email = rest.trim_end_matches('>').trim();
            let name = name.trim().trim_matches('"');
            if name.is_empty() {
                json!({ "email": email })
            } else {
                json!({ "email": email, "name": name })
            }
        }
        None => json!({ "email": from.trim() }),
    }
}

impl fmt::Debug for SendGridProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGridProvider")
            .field("url", &self.url)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// The Mail Send body of one email.
pub fn mail_body(from: &Value, email: &EmailMessage, to: &str, ctx: &SendContext) -> Value {
    let mut content = Vec::new();
    if let Some(text) = &email.text {
        content.push(json!({"type": "text/plain", "value": text}));
    }
    if let Some(html) = &email.html {
        content.push(json!({"type": "text/html", "value": html}));
    }
    if content.is_empty() {
        // SendGrid refuses a message without content.
        content.push(json!({"type": "text/plain", "value": " "}));
    }
    json!({
        "personalizations": [{"to": [{"email": to}]}],
        "from": from,
        "subject": email.subject,
        "content": content,
        // Strings only: SendGrid refuses other custom arg values.
        "custom_args": {
            "herald_delivery_id": ctx.delivery_id.to_string(),
            "herald_created_at": ctx.created_at.timestamp_micros().to_string(),
        },
    })
}

impl ChannelProvider for SendGridProvider {
    type Message = EmailMessage;
    const NAME: &'static str = "sendgrid";

    async fn deliver(&self, email: &EmailMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        let body = mail_body(&self.from, email, &to.address, ctx);
        let request = self
            .http
            .post(&self.url)
            .headers(trace_headers())
            .bearer_auth(self.api_key.expose_secret())
            .json(&body);
        match exchange("sendgrid", request).await {
            Ok(answer) => classify(answer.status, &answer.headers, &answer.body),
            Err(outcome) => outcome,
        }
    }
}

/// When SendGrid says to come back: `Retry-After`, else its
/// `X-RateLimit-Reset` (a Unix time).
fn after(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let reset: i64 = headers
            .get("x-ratelimit-reset")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(Duration::from_secs(
            (reset - Utc::now().timestamp()).max(0) as u64
        ))
    })
}

/// Classifies SendGrid's answer (see the module's table).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    if status.is_success() {
        let id = headers
            .get("x-message-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return Outcome::Sent { provider_id: id };
    }
    let reason = format!("sendgrid {}: {}", status.as_u16(), snippet(body, 300));
    let refusal = Refusal {
        reason,
        after: after(headers),
    };
    match status.as_u16() {
        401 | 403 => refusal.permanent(ErrorClass::Auth),
        400 if body.contains("personalizations.0.to") => {
            refusal.permanent(ErrorClass::InvalidAddress)
        }
        _ => refusal.by_status(status, ErrorClass::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_and_body() {
        assert_eq!(
            sender("Herald <noreply@example.com>"),
            json!({"email": "noreply@example.com", "name": "Herald"})
        );
        assert_eq!(
            sender("noreply@example.com"),
            json!({"email": "noreply@example.com"})
        );
        let ctx = SendContext {
            delivery_id: uuid::Uuid::nil(),
            created_at: chrono::DateTime::from_timestamp_micros(1_764_500_000_000_001).unwrap(),
            notification_id: uuid::Uuid::nil(),
            lane: crate::model::Lane::Normal,
            expires_at: None,
        };
        let email = EmailMessage {
            subject: "Hi".into(),
            text: Some("t".into()),
            html: Some("<p>h</p>".into()),
        };
        let body = mail_body(&sender("a@example.com"), &email, "b@example.com", &ctx);
        assert_eq!(
            body["personalizations"][0]["to"][0]["email"],
            "b@example.com"
        );
        assert_eq!(body["content"][1]["type"], "text/html");
        assert_eq!(body["custom_args"]["herald_created_at"], "1764500000000001");
    }

    #[test]
    fn classifies() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-message-id", "m-1".parse().unwrap());
        assert_eq!(
            classify(s(202), &headers, ""),
            Outcome::Sent {
                provider_id: Some("m-1".into())
            }
        );
        let class = |o: Outcome| match o {
            Outcome::Retry { class, .. } | Outcome::Permanent { class, .. } => class,
            Outcome::Sent { .. } => panic!("sent"),
        };
        let none = HeaderMap::new();
        assert_eq!(class(classify(s(429), &none, "")), ErrorClass::RateLimited);
        assert_eq!(class(classify(s(503), &none, "")), ErrorClass::Server);
        assert_eq!(class(classify(s(401), &none, "")), ErrorClass::Auth);
        let bad_to = r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email"}]}"#;
        assert_eq!(
            class(classify(s(400), &none, bad_to)),
            ErrorClass::InvalidAddress
        );
        assert_eq!(class(classify(s(413), &none, "")), ErrorClass::Rejected);
    }
}
