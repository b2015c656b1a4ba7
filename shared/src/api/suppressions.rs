//! The tenant's suppression list (scope `manage`): addresses the router
//! records as `suppressed` (reason `address_suppressed`) instead of sending
//! to, even in `required` categories.

use axum::{
    Json,
    body::to_bytes,
    extract::{FromRequest, Path, Request, State},
    http::{StatusCode, header},
    response::Response,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiJson, ApiQuery, AppState, Auth, MAX_BODY, delete_answer,
    openapi::{CheckedErrors, WriteErrors},
    problem::ApiError,
    put_answer,
};
use crate::{
    db::{
        self,
        keys::Scope,
        suppressions::{Filter, NewSuppression, SuppressionRow},
    },
    model::{
        Channel, from_value,
        suppression::{SuppressedAddress, SuppressionReason},
    },
    telemetry::catalogue::count_suppression_added,
};

/// Longest note on a suppression.
const MAX_NOTE: usize = 500;
/// Suppressions per page.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

/// A channel with a suppression list (schema only).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SuppressionChannel {
    Email,
    Sms,
}

/// An address that is not sent to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Suppression {
    #[schema(value_type = SuppressionChannel)]
    pub channel: String,
    /// As deliveries compare it: an email lower-cased, a phone in E.164.
    pub address: String,
    #[schema(value_type = SuppressionReason)]
    pub reason: String,
    /// Who added it: `api`, `heraldctl`, `twilio` or `sendgrid`.
    pub source: String,
    /// The provider's words (bounce message, error code) or the note given.
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<SuppressionRow> for Suppression {
    fn from(r: SuppressionRow) -> Self {
        Self {
            channel: r.channel,
            address: r.address,
            reason: r.reason,
            source: r.source,
            detail: r.detail,
            created_at: r.created_at,
        }
    }
}

/// `GET /v1/suppressions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionPage {
    pub suppressions: Vec<Suppression>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The optional body of `PUT /v1/suppressions/{channel}/{address}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionBody {
    /// Why, in your words (at most 500 characters).
    #[schema(max_length = 500)]
    note: Option<String>,
}

/// A page of suppressions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this channel.
    #[param(value_type = Option<SuppressionChannel>)]
    channel: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Suppressions per page, 1 to 500 (100 when left out; others are clamped).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

fn address(channel: &str, raw: &str) -> Result<SuppressedAddress, ApiError> {
    let channel: Channel = channel
        .parse()
        .map_err(|e| ApiError::invalid("channel", e))?;
    SuppressedAddress::parse(channel, raw).map_err(|e| {
        if channel == Channel::Push {
            ApiError::invalid("channel", e)
        } else {
            ApiError::invalid("address", e)
        }
    })
}

/// The next page's cursor: the channel and address of a page's last entry.
fn cursor_of(r: &SuppressionRow) -> String {
    format!("{}:{}", r.channel, r.address)
}

/// The tenant's suppressed addresses
#[utoipa::path(
    get,
    path = "/v1/suppressions",
    tag = "suppressions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of suppressions, by channel then address", body = SuppressionPage),
        CheckedErrors,
    )
)]
pub async fn list(
    auth: Auth,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SuppressionPage>, ApiError> {
    auth.require(Scope::Manage)?;
    let channel = match q.channel.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<Channel>()
                .and_then(crate::model::suppression::suppressible)
                .map_err(|e| ApiError::invalid("channel", e))?,
        ),
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.split_once(':')
                .filter(|(ch, _)| matches!(*ch, "email" | "sms"))
                .ok_or_else(|| {
                    ApiError::invalid("cursor", "is not a cursor from a previous page")
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = db::suppressions::list(
        &state.pool,
        &Filter {
            tenant: Some(&auth.tenant),
            channel: channel.map(Channel::as_str),
            after: after.map(|(c, a)| (auth.tenant.as_str(), c, a)),
        },
        limit,
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(cursor_of))
        .flatten();
    Ok(Json(SuppressionPage {
        suppressions: rows.into_iter().map(Suppression::from).collect(),
        next_cursor,
    }))
}

/// The body of a PUT, which may be left out: `None` for no body at all.
async fn optional_body(request: Request) -> Result<Option<SuppressionBody>, ApiError> {
    if request.headers().contains_key(header::CONTENT_TYPE) {
        let ApiJson(value) = ApiJson::<Value>::from_request(request, &()).await?;
        return Ok(Some(from_value(value)?));
    }
    let bytes = to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge("size"))?;
    if bytes.is_empty() {
        Ok(None)
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Suppresses an address (manual); replaces the reason of one suppressed already
#[utoipa::path(
    put,
    path = "/v1/suppressions/{channel}/{address}",
    tag = "suppressions",
    params(
        ("channel" = SuppressionChannel, Path),
        ("address" = String, Path, example = "ada@example.com", description = "An email address or an E.164 phone number (`+` percent-encoded or not)"),
    ),
    request_body(content = Option<SuppressionBody>, description = "Optional: a note saying why"),
    responses(
        (status = 201, description = "Suppressed", body = Suppression),
        (status = 200, description = "Was suppressed already; now manually, with this note", body = Suppression),
        WriteErrors,
    )
)]
pub async fn put(
    auth: Auth,
    State(state): State<AppState>,
    Path((channel, raw)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Manage)?;
    let address = address(&channel, &raw)?;
    let body = optional_body(request).await?;
    let note = body.and_then(|b| b.note);
    if note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE) {
        return Err(ApiError::invalid(
            "note",
            format!("must be at most {MAX_NOTE} characters"),
        ));
    }
    let created = db::suppressions::put(
        &state.pool,
        &NewSuppression {
            tenant_id: &auth.tenant,
            address: &address,
            reason: SuppressionReason::Manual,
            source: "api",
            detail: note.as_deref(),
        },
    )
    .await?;
    if created {
        count_suppression_added(address.channel(), SuppressionReason::Manual);
    }
    let row = db::suppressions::get(&state.pool, &auth.tenant, &address)
        .await?
        .ok_or(ApiError::NotFound("suppression"))?;
    Ok(put_answer(created, Suppression::from(row)))
}

/// Removes an address from the list: deliveries to it are made again
#[utoipa::path(
    delete,
    path = "/v1/suppressions/{channel}/{address}",
    tag = "suppressions",
    params(
        ("channel" = SuppressionChannel, Path),
        ("address" = String, Path, example = "ada@example.com"),
    ),
    responses((status = 204, description = "Removed"), CheckedErrors)
)]
pub async fn delete(
    auth: Auth,
    State(state): State<AppState>,
    Path((channel, raw)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Manage)?;
    let address = address(&channel, &raw)?;
    let removed = db::suppressions::remove(&state.pool, &auth.tenant, &address).await?;
    delete_answer(removed, "suppression")
}
