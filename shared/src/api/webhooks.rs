//! Webhook endpoints (scope `manage`): register, list, rotate the signing
//! secret, delete. The secret is shown once, when it is made.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    ApiJson, AppState, Auth, delete_answer,
    openapi::{ReadErrors, WriteErrors},
    problem::ApiError,
    put_answer,
};
use crate::{
    db::{self, keys::Scope},
    model::FieldError,
    webhooks::{
        filter::{EventFilter, MAX_FILTERS},
        signature::Secret,
    },
};

/// Longest endpoint URL accepted.
const MAX_URL_LEN: usize = 2048;
/// Longest overlap of a rotation: a week is ample to roll a secret out.
const MAX_OVERLAP_SECS: i64 = 7 * 24 * 3600;
/// Overlap when the request names none: a day.
const DEFAULT_OVERLAP_SECS: i64 = 24 * 3600;

/// An endpoint to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// `https://` (or `http://`) URL events are POSTed to. Its host must
    /// resolve to public addresses only, unless the operator allow-listed
    /// the network (`WEBHOOK_ALLOWED_NETWORKS`).
    #[schema(example = "https://hooks.example.com/herald", max_length = 2048)]
    pub url: String,
    /// Filters `{channel}.{status}`; `*` for either part, or `*` alone.
    #[schema(example = json!(["email.bounced", "push.*"]), min_items = 1, max_items = 32)]
    pub events: Vec<String>,
}

/// A rotation of the signing secret.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Seconds the previous secret keeps signing beside the new one
    /// (0 to 604800; default 86400).
    #[schema(example = 86400, minimum = 0, maximum = 604800)]
    pub overlap_seconds: Option<i64>,
}

/// A registered endpoint. `secret` appears only when it is made (creation,
/// rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `active`, or `disabled` after failing for `WEBHOOK_DISABLE_AFTER` (a
    /// PUT enables it again).
    #[schema(example = "active")]
    pub status: &'static str,
    /// First failure of the current run of failures.
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// The signing secret (`whsec_...`): shown once, keep it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every endpoint of the tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

impl Webhook {
    fn new(row: db::webhooks::Webhook, show_secret: bool) -> Self {
        Self {
            status: if row.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            },
            secret: show_secret.then(|| row.secret.clone()),
            id: row.id,
            url: row.url,
            events: row.events,
            failing_since: row.failing_since,
            disabled_at: row.disabled_at,
            previous_secret_until: row.previous_until.filter(|t| *t > Utc::now()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn webhook_id(raw: &str) -> Result<(), ApiError> {
    if raw.is_empty()
        || raw.len() > 64
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::invalid(
            "id",
            "1 to 64 letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

/// The URL's problems, if any: scheme, host, and every address it resolves
/// to against the operator's policy.
async fn check_url(state: &AppState, raw: &str) -> Result<(), ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ApiError::invalid(
            "url",
            format!("at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ApiError::invalid("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ApiError::invalid(
            "url",
            "must be an https:// or http:// URL",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid("url", "must not carry credentials"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ApiError::invalid("url", "must name a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    state
        .webhook_policy
        .resolve(host, port)
        .await
        .map_err(|e| ApiError::invalid("url", e))?;
    Ok(())
}

fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() || events.len() > MAX_FILTERS {
        return Err(ApiError::invalid(
            "events",
            format!("1 to {MAX_FILTERS} filters such as `email.bounced` or `push.*`"),
        ));
    }
    let errors: Vec<FieldError> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            EventFilter::parse(e).err().map(|message| FieldError {
                field: format!("events[{i}]"),
                message,
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// Registers or replaces a webhook endpoint
#[utoipa::path(
    put,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, example = "billing", description = "Your name for the endpoint: 1 to 64 letters, digits, `-`, `_`")),
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Created; `secret` is shown this once", body = Webhook),
        (status = 200, description = "Replaced (the secret is unchanged and not shown; a disabled endpoint is enabled again)", body = Webhook),
        WriteErrors,
    )
)]
pub async fn put_webhook(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WebhookRequest>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Manage)?;
    webhook_id(&id)?;
    check_events(&body.events)?;
    check_url(&state, &body.url).await?;
    let secret = Secret::generate().expose();
    let (row, created) = db::webhooks::put(
        &state.pool,
        &auth.tenant,
        &id,
        &body.url,
        &body.events,
        &secret,
    )
    .await?;
    Ok(put_answer(created, Webhook::new(row, created)))
}

/// The tenant's webhook endpoints
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, description = "Every endpoint, by id (secrets not shown)", body = WebhookList), ReadErrors)
)]
pub async fn list_webhooks(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<WebhookList>, ApiError> {
    auth.require(Scope::Manage)?;
    let rows = db::webhooks::list(&state.pool, &auth.tenant).await?;
    Ok(Json(WebhookList {
        webhooks: rows.into_iter().map(|r| Webhook::new(r, false)).collect(),
    }))
}

/// One webhook endpoint
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, example = "billing")),
    responses((status = 200, description = "The endpoint (secret not shown)", body = Webhook), ReadErrors)
)]
pub async fn get_webhook(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    auth.require(Scope::Manage)?;
    let row = db::webhooks::get(&state.pool, &auth.tenant, &id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(Webhook::new(row, false)))
}

/// Deletes a webhook endpoint
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, example = "billing")),
    responses((status = 204, description = "Deleted"), ReadErrors)
)]
pub async fn delete_webhook(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Manage)?;
    let removed = db::webhooks::delete(&state.pool, &auth.tenant, &id).await?;
    delete_answer(removed, "webhook")
}

/// Rotates a webhook endpoint's signing secret
///
/// The new secret is shown this once. During the overlap both secrets sign
/// every message (two `v1,` signatures in `webhook-signature`), so the
/// receiver can switch to the new one at its own pace.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = String, Path, example = "billing")),
    request_body = RotateRequest,
    responses((status = 200, description = "Rotated; `secret` is the new one", body = Webhook), WriteErrors)
)]
pub async fn rotate_webhook(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateRequest>,
) -> Result<Json<Webhook>, ApiError> {
    auth.require(Scope::Manage)?;
    let overlap = body.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if !(0..=MAX_OVERLAP_SECS).contains(&overlap) {
        return Err(ApiError::invalid(
            "overlap_seconds",
            format!("0 to {MAX_OVERLAP_SECS} seconds"),
        ));
    }
    let secret = Secret::generate().expose();
    let row = db::webhooks::rotate(&state.pool, &auth.tenant, &id, &secret, overlap)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(Webhook::new(row, true)))
}
