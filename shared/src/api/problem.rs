//! The API's one error type, answered as `application/problem+json` (RFC 9457).

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{intake::IntakeError, model::FieldError};

/// A problem document (RFC 9457): what every error answers, and each failed
/// item of a batch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, `/problems/<slug>`.
    #[serde(rename = "type")]
    #[schema(pattern = "^/problems/[a-z-]+$")]
    pub kind: String,
    /// The kind in words, the same for every problem of the kind.
    pub title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Each invalid field with its path, when the request had invalid fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The first request with this `Idempotency-Key` is still between
    /// commit and confirm (or its process died there and the relay has not
    /// taken it over yet): `Retry-After` says when to ask again.
    #[error("a request with this Idempotency-Key is still in progress; retry after {0} s")]
    KeyInProgress(u64),
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is larger than the {0} limit")]
    TooLarge(&'static str),
    #[error("send the body as `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("this API key made too many requests; retry after {0} s")]
    RateLimited(u64),
    #[error("too many wrong keys from this address; retry after {0} s")]
    TooManyFailures(u64),
    #[error("this path does not support the method")]
    MethodNotAllowed,
    #[error("the service cannot take the request right now; retry shortly")]
    Unavailable(String),
    /// Every permit to look up an unknown API key is taken (a flood of wrong
    /// keys, or many new keys at once). No log line per request: the metric
    /// `herald_api_key_lookups_refused_total` counts them.
    #[error("too many API keys are being verified right now; retry shortly")]
    Busy,
    #[error("the request took longer than {}; retry shortly", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// One invalid field: where it is and why.
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> Self {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            message: message.to_string(),
        }])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            KeyInProgress(_) => (
                StatusCode::CONFLICT,
                "key-in-progress",
                "Request in progress",
            ),
            Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request",
            ),
            BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request body too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            RateLimited(_) | TooManyFailures(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            TimedOut(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timeout",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem document, also used for the items of a batch answer.
    pub fn body(&self) -> Problem {
        let (status, slug, title) = self.parts();
        Problem {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match self {
                ApiError::Invalid(errors) => Some(errors.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "answering 503"),
            ApiError::TimedOut(t) => {
                tracing::warn!(timeout = %humantime::format_duration(*t), "request timed out; answering 503")
            }
            _ => {}
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::RateLimited(secs)
            | ApiError::TooManyFailures(secs)
            | ApiError::KeyInProgress(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            // Long enough for a broker or database failover to finish.
            ApiError::Unavailable(_) | ApiError::TimedOut(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // A permit frees up within a lookup's time.
            ApiError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The database is unreachable or overloaded: the client may retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(format!("database: {e}"))
            }
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c == "57P01") =>
            {
                ApiError::Unavailable(format!("database: {e}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(vec![e])
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Invalid(errors) => ApiError::Invalid(errors),
            IntakeError::KeyReused => ApiError::Conflict(
                "this Idempotency-Key was already used with a different request body".into(),
            ),
            IntakeError::KeyInProgress => ApiError::KeyInProgress(1),
            IntakeError::Unavailable(e) => ApiError::Unavailable(e),
        }
    }
}
