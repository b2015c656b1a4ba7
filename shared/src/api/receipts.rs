//! Provider callbacks under `/v1/receipts/...`: no API key, each verified
//! with its provider's own signature (401 without one, 403 when it does not
//! verify, and nothing changes either way), idempotent on the provider's
//! event id. Not in the OpenAPI document: providers call these, API clients
//! never do (docs/receipts.md describes them).

use axum::{
    Json,
    body::Bytes,
    extract::{OriginalUri, Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{
    db,
    receipts::{Receipt, Refused, sendgrid, twilio},
    telemetry::catalogue::{count_suppression_added, receipts as metric},
};

/// What verifies each provider's callbacks; a provider left unconfigured
/// has no receipt route (404).
#[derive(Debug, Default)]
pub struct ReceiptKeys {
    /// The public base URL providers call (`RECEIPTS_BASE_URL`): Twilio signs
    /// the URL it called, which a proxy in front of ingest may have changed.
    pub base_url: Option<String>,
    /// `TWILIO_AUTH_TOKEN`.
    pub twilio_auth_token: Option<SecretString>,
    /// `SENDGRID_WEBHOOK_PUBLIC_KEY`.
    pub sendgrid_key: Option<sendgrid::EventKey>,
}

/// What a callback did, per outcome.
#[derive(Debug, Default, Serialize)]
struct Answer {
    applied: u32,
    recorded: u32,
    duplicate: u32,
}

fn refused(
    provider: &'static str,
    reason: &'static str,
    status: StatusCode,
    detail: String,
) -> Response {
    metrics::counter!(metric::REFUSED.name, "provider" => provider, "reason" => reason)
        .increment(1);
    tracing::warn!(provider, reason, %detail, "receipt refused");
    let (kind, title) = match status {
        StatusCode::UNAUTHORIZED => ("unsigned", "Unsigned callback"),
        StatusCode::FORBIDDEN => ("bad-signature", "Signature does not verify"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        _ => ("malformed-request", "Malformed request"),
    };
    let mut response = (
        status,
        Json(Problem {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors: None,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn refusal(provider: &'static str, r: Refused) -> Response {
    let (reason, status) = match r {
        Refused::Unsigned(_) => ("signature", StatusCode::UNAUTHORIZED),
        Refused::BadSignature => ("signature", StatusCode::FORBIDDEN),
        Refused::Malformed(_) => ("malformed", StatusCode::BAD_REQUEST),
    };
    refused(provider, reason, status, r.to_string())
}

fn unconfigured(provider: &'static str, what: &str) -> Response {
    refused(
        provider,
        "unconfigured",
        StatusCode::NOT_FOUND,
        format!("{provider} receipts are not configured on this ingest ({what} is not set)"),
    )
}

/// Applies verified receipts, counting each, and answers the tally.
async fn apply(state: &AppState, receipts: &[Receipt]) -> Result<Response, ApiError> {
    let mut answer = Answer::default();
    for r in receipts {
        let applied = db::receipts::apply(&state.pool, r).await?;
        metrics::counter!(metric::RECEIVED.name, "provider" => r.provider, "outcome" => applied.outcome)
            .increment(1);
        match applied.outcome {
            "applied" => answer.applied += 1,
            "duplicate" => answer.duplicate += 1,
            _ => answer.recorded += 1,
        }
        if let Some((channel, reason)) = applied.suppressed {
            count_suppression_added(channel, reason);
            tracing::info!(provider = r.provider, %channel, %reason, "address suppressed by a receipt");
        }
    }
    Ok(Json(answer).into_response())
}

/// `POST /v1/receipts/twilio/{created}/{delivery}`: a Twilio status callback.
pub async fn twilio(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Path((created, delivery)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let keys = &state.receipts;
    let (Some(token), Some(base)) = (&keys.twilio_auth_token, &keys.base_url) else {
        return Ok(unconfigured(
            twilio::PROVIDER,
            "TWILIO_AUTH_TOKEN or RECEIPTS_BASE_URL",
        ));
    };
    let signature = headers.get(twilio::SIGNATURE).and_then(|v| v.to_str().ok());
    if signature.is_none() {
        return Ok(refusal(
            twilio::PROVIDER,
            Refused::Unsigned("X-Twilio-Signature"),
        ));
    }
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return Ok(refusal(
            twilio::PROVIDER,
            Refused::Malformed("the body is not a form".into()),
        ));
    };
    let url = format!(
        "{}{}",
        base.trim_end_matches('/'),
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    if let Err(r) = twilio::verify(token.expose_secret().as_bytes(), &url, &params, signature) {
        return Ok(refusal(twilio::PROVIDER, r));
    }
    // Signed by Twilio for a URL Herald made: a path that names no
    // delivery is recorded without one.
    let receipt = match twilio::receipt(&params, twilio::delivery_of(&created, &delivery)) {
        Ok(r) => r,
        Err(r) => return Ok(refusal(twilio::PROVIDER, r)),
    };
    apply(&state, &[receipt]).await
}

/// `POST /v1/receipts/sendgrid`: a batch of SendGrid Event Webhook events.
pub async fn sendgrid(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(key) = &state.receipts.sendgrid_key else {
        return Ok(unconfigured(
            sendgrid::PROVIDER,
            "SENDGRID_WEBHOOK_PUBLIC_KEY",
        ));
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(r) = key.verify(
        header(sendgrid::SIGNATURE),
        header(sendgrid::TIMESTAMP),
        &body,
    ) {
        return Ok(refusal(sendgrid::PROVIDER, r));
    }
    match sendgrid::receipts(&body) {
        Ok(receipts) => apply(&state, &receipts).await,
        Err(r) => Ok(refusal(sendgrid::PROVIDER, r)),
    }
}
