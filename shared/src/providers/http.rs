//! What the HTTP providers (FCM, APNs, Twilio, the HTTP email API) share: a
//! client with a deadline, `Retry-After` parsing and the classification of
//! failures that never reached an HTTP answer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{
    StatusCode,
    header::{HeaderMap, RETRY_AFTER},
};

use super::{ErrorClass, Outcome};

/// `User-Agent` of every provider request, so a provider's support can find
/// our traffic in their logs.
pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// A client whose every request (connect, send, read) must finish within
/// `timeout`: a provider that hangs costs one timeout, then a retry later,
/// never a stuck worker.
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        // A connect that has not finished in a few seconds will not; leave
        // the rest of the budget to a slow answer.
        .connect_timeout(timeout.min(Duration::from_secs(5)))
}

/// The current span's trace context as request headers (`traceparent`, and
/// `tracestate` when there is one): sent with every provider request from
/// inside the engine's provider-call span, so the provider's side of a call
/// can be joined to ours. Empty outside any span.
pub fn trace_headers() -> HeaderMap {
    crate::telemetry::traces::TraceContext::current().http_headers()
}

/// The provider's `Retry-After`, as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

/// Parses a `Retry-After` value relative to `now`; a date in the past means
/// "now" (zero), not "no advice".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A provider's answer that was not a success, on its way to an [`Outcome`]:
/// the reason to record and the provider's `Retry-After`. Each provider
/// decides the class from its own error codes; what the status alone says
/// is the same for all of them ([`Refusal::by_status`]).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: String,
    pub after: Option<Duration>,
}

impl Refusal {
    /// Worth trying again, no sooner than the provider's `Retry-After`.
    pub fn retry(&self, class: ErrorClass) -> Outcome {
        Outcome::Retry {
            class,
            reason: self.reason.clone(),
            after: self.after,
        }
    }

    /// Will never succeed as is; the address stays in use.
    pub fn permanent(&self, class: ErrorClass) -> Outcome {
        Outcome::Permanent {
            class,
            reason: self.reason.clone(),
            deactivate: false,
        }
    }

    /// Will never succeed, and the device token is to be deactivated.
    pub fn deactivate(&self, class: ErrorClass) -> Outcome {
        Outcome::Permanent {
            class,
            reason: self.reason.clone(),
            deactivate: true,
        }
    }

    /// What the status says when no error code of the provider decided:
    /// 429 is throttling and any 5xx a server failure, both retried;
    /// anything else is a permanent failure of class `otherwise`.
    pub fn by_status(&self, status: StatusCode, otherwise: ErrorClass) -> Outcome {
        match status.as_u16() {
            429 => self.retry(ErrorClass::RateLimited),
            500.. => self.retry(ErrorClass::Server),
            _ => self.permanent(otherwise),
        }
    }
}

/// A provider's whole HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The provider's `Retry-After`, as of the answer's arrival.
    pub after: Option<Duration>,
    pub body: String,
}

/// Sends `request` and reads the whole answer. A request that got no answer,
/// or whose answer broke off, is the [`transport_outcome`] of `provider`.
pub async fn exchange(provider: &str, request: reqwest::RequestBuilder) -> Result<Answer, Outcome> {
    let mut response = request
        .send()
        .await
        .map_err(|err| transport_outcome(provider, &err))?;
    let status = response.status();
    // Taken, not copied: the body is read as bytes, which needs no headers.
    let headers = std::mem::take(response.headers_mut());
    let after = retry_after(&headers);
    let body = response
        .bytes()
        .await
        .map_err(|err| transport_outcome(provider, &err))?;
    // Every provider answers UTF-8 (JSON, or text in error pages); anything
    // else is replaced, as `Response::text` would for a UTF-8 body.
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(Answer {
        status,
        headers,
        after,
        body,
    })
}

/// Classifies a request that got no HTTP answer: a timeout, or a connection
/// that could not be made or broke. Both are worth retrying.
pub fn transport_outcome(provider: &str, err: &reqwest::Error) -> Outcome {
    let class = if err.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connection
    };
    Outcome::Retry {
        class,
        reason: format!("{provider}: {}", error_chain(err)),
        after: None,
    }
}

/// An error and its sources on one line: reqwest's own message ("error
/// sending request") hides the useful part (refused, reset, timed out).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// At most `max` bytes of a provider's answer, for error messages: enough to
/// diagnose, never a whole HTML error page in the dead-letter store.
pub fn snippet(body: &str, max: usize) -> &str {
    if body.len() <= max {
        return body.trim();
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn snippet_cuts_on_char_boundary() {
        assert_eq!(snippet("héllo", 2), "h");
        assert_eq!(snippet(" ok ", 10), "ok");
    }
}
