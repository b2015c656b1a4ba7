//! `API_REQUEST_TIMEOUT`: no request holds its connection (and a database
//! connection, a lock, a permit) for longer. A request still running then is
//! dropped and answered 503 problem+json with `Retry-After`.
//!
//! Except a send past its point of no return ([`Commitment`]): its
//! notification may already be committed, and a 503 promises that nothing
//! was kept. It gets [`COMMIT_GRACE`] more to answer what really happened;
//! the steps after the commit are bounded (a publisher confirm waits at most
//! 5 s), so that is enough unless the database itself hangs.

use std::time::Duration;

use axum::{
    extract::{FromRequestParts, Request, State},
    http::request::Parts,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::problem::ApiError;
use crate::intake::Commitment;

/// Extra time a send that began committing gets to finish: the publisher's
/// 5 s confirm timeout, with room to withdraw the row if it fails.
pub const COMMIT_GRACE: Duration = Duration::from_secs(10);

/// Answers 503 for a request that runs longer than `timeout`.
pub async fn limit(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let commitment = Commitment::default();
    req.extensions_mut().insert(commitment.clone());
    let running = next.run(req);
    tokio::pin!(running);
    if let Ok(response) = tokio::time::timeout(timeout, &mut running).await {
        return response;
    }
    if commitment.begun() {
        if let Ok(response) = tokio::time::timeout(COMMIT_GRACE, &mut running).await {
            return response;
        }
        tracing::warn!(
            "a send still committing after the request timeout and its grace; answering 503 \
             (the outbox relay publishes it if the commit went through)"
        );
    }
    metrics::counter!("herald_api_timeouts_total").increment(1);
    ApiError::TimedOut(timeout).into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Commitment {
    type Rejection = std::convert::Infallible;

    /// The request's commitment, or a fresh one when no timeout watches it.
    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(parts
            .extensions
            .get::<Commitment>()
            .cloned()
            .unwrap_or_default())
    }
}
