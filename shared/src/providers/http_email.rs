//! A generic HTTP email API (`EMAIL_PROVIDER=http`): one JSON POST per email,
//! `{"from", "to", "subject", "text", "html"}`, with a bearer token. Most
//! transactional email services accept this shape, or a thin adapter does.
//!
//! 2xx is `Sent`; 429 and 5xx are retried (after `Retry-After`); 401/403 are
//! `Auth`; a 422 that complains about the address is `InvalidAddress`; any
//! other 4xx is `Rejected`.

use std::{fmt, time::Duration};

use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{
    ChannelProvider, Destination, EmailMessage, ErrorClass, Outcome, SendContext,
    http::{Refusal, client_builder, exchange, snippet, trace_headers},
};

/// Sends email through an HTTP API.
pub struct HttpEmailProvider {
    http: Client,
    url: String,
    token: Option<SecretString>,
    from: String,
}

#[derive(Serialize)]
struct Email<'a> {
    from: &'a str,
    to: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
}

impl HttpEmailProvider {
    /// A client posting to `url` as `from`, with `token` as bearer if given.
    pub fn new(
        url: &str,
        token: Option<SecretString>,
        from: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: client_builder(timeout).build()?,
            url: url.to_owned(),
            token,
            from: from.to_owned(),
        })
    }
}

impl fmt::Debug for HttpEmailProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmailProvider")
            .field("url", &crate::config::redact_url(&self.url))
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl ChannelProvider for HttpEmailProvider {
    type Message = EmailMessage;
    const NAME: &'static str = "http";

    async fn deliver(&self, email: &EmailMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        let body = Email {
            from: &self.from,
            to: &to.address,
            subject: &email.subject,
            text: email.text.as_deref(),
            html: email.html.as_deref(),
        };
        // The delivery id as idempotency key: a retry after a lost answer
        // is not a second email where the API de-duplicates.
        let mut request = self
            .http
            .post(&self.url)
            .headers(trace_headers())
            .header("Idempotency-Key", ctx.delivery_id.to_string())
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        match exchange("http email", request).await {
            Ok(answer) => classify(answer.status, &answer.body, answer.after),
            Err(outcome) => outcome,
        }
    }
}

/// Classifies the API's answer (see the module doc). The provider id is the
/// answer's `id` or `message_id`, the names most such APIs use.
pub fn classify(status: StatusCode, body: &str, after: Option<Duration>) -> Outcome {
    if status.is_success() {
        #[derive(Deserialize)]
        struct Accepted {
            id: Option<String>,
            message_id: Option<String>,
        }
        let id = serde_json::from_str::<Accepted>(body)
            .ok()
            .and_then(|a| a.id.or(a.message_id));
        return Outcome::Sent { provider_id: id };
    }
    let reason = format!("http email {}: {}", status.as_u16(), snippet(body, 300));
    let refusal = Refusal { reason, after };
    match status.as_u16() {
        401 | 403 => refusal.permanent(ErrorClass::Auth),
        422 if complains_about_address(body) => refusal.permanent(ErrorClass::InvalidAddress),
        _ => refusal.by_status(status, ErrorClass::Rejected),
    }
}

/// Whether a validation error is about the recipient: the `to` field named
/// as a JSON key or path, or the words an API uses for an address.
fn complains_about_address(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("\"to\"") || lower.contains("address") || lower.contains("recipient")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        assert_eq!(
            classify(s(202), r#"{"id":"m-1"}"#, None),
            Outcome::Sent {
                provider_id: Some("m-1".into())
            }
        );
        let class = |o: Outcome| match o {
            Outcome::Retry { class, .. } | Outcome::Permanent { class, .. } => class,
            Outcome::Sent { .. } => panic!("sent"),
        };
        assert_eq!(class(classify(s(429), "", None)), ErrorClass::RateLimited);
        assert_eq!(class(classify(s(502), "", None)), ErrorClass::Server);
        assert_eq!(class(classify(s(401), "", None)), ErrorClass::Auth);
        let bad_to = r#"{"errors":[{"field":"to","message":"is not a valid email address"}]}"#;
        assert_eq!(
            class(classify(s(422), bad_to, None)),
            ErrorClass::InvalidAddress
        );
        assert_eq!(
            class(classify(s(422), r#"{"error":"subject too long"}"#, None)),
            ErrorClass::Rejected
        );
        assert_eq!(class(classify(s(400), "bad", None)), ErrorClass::Rejected);
    }
}
