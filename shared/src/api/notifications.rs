//! Send, batch send and status.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    ApiJson, ApiQuery, AppState, Auth,
    openapi::{CheckedErrors, SendErrors},
    problem::ApiError,
    views::{Accepted, BatchAccepted, BatchAnswer, BatchResult, Delivery, NotificationStatus},
};
use crate::{
    db::{self, keys::Scope},
    intake::{Commitment, ItemOutcome},
    model::{
        IdempotencyKey, from_value,
        notification::{MAX_BATCH, NotificationRequest},
    },
};

const REPLAYED: &str = "idempotent-replayed";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = |message: String| ApiError::invalid("Idempotency-Key", message);
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII".into()))?;
    IdempotencyKey::parse(text).map(Some).map_err(invalid)
}

fn location(id: Uuid) -> String {
    format!("/v1/notifications/{id}")
}

/// Sends a notification
///
/// Answered only once the notification is durable. The same
/// `Idempotency-Key` with the same body within 24 h answers the first
/// response again, with `Idempotent-Replayed: true`.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "notifications",
    request_body = NotificationRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
         description = "Makes a retried send safe: 1 to 255 visible ASCII characters, kept 24 h"),
    ),
    responses(
        (status = 202, description = "Accepted: durable, and on its way", body = Accepted,
         headers(
             ("Location" = String, description = "`/v1/notifications/{id}`"),
             ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request again"),
         )),
        SendErrors,
    )
)]
#[tracing::instrument(name = "ingest.accept", skip_all, fields(tenant = %auth.tenant))]
pub async fn send(
    auth: Auth,
    State(state): State<AppState>,
    commitment: Commitment,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Send)?;
    let key = idempotency_key(&headers)?;
    let accepted = state
        .intake
        .accept(&auth.tenant, body, key, &commitment)
        .await?;
    let id = accepted.value;
    let body = Accepted {
        id,
        status: "accepted",
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location(id)).expect("ascii"),
    );
    if accepted.replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The body of a batch. Each item is checked on its own, so a bad one fails
/// alone: they stay JSON values until then.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[schema(value_type = Vec<NotificationRequest>, min_items = 1, max_items = 500)]
    notifications: Vec<Value>,
}

/// Sends up to 500 notifications
///
/// Each item is answered in order: accepted, or with its own problem. An
/// `Idempotency-Key` covers the whole batch.
#[utoipa::path(
    post,
    path = "/v1/notifications/batch",
    tag = "notifications",
    request_body = BatchBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
         description = "Makes a retried batch safe"),
    ),
    responses(
        (status = 200, description = "One result per item, in order", body = BatchAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request again"))),
        SendErrors,
    )
)]
#[tracing::instrument(name = "ingest.accept", skip_all, fields(tenant = %auth.tenant))]
pub async fn send_batch(
    auth: Auth,
    State(state): State<AppState>,
    commitment: Commitment,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Send)?;
    let key = idempotency_key(&headers)?;
    let batch: BatchBody = from_value(body)?;
    if batch.notifications.is_empty() || batch.notifications.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "notifications",
            format!("must hold 1 to {MAX_BATCH} notifications"),
        ));
    }
    let accepted = state
        .intake
        .accept_batch(&auth.tenant, batch.notifications, key, &commitment)
        .await?;
    let results = accepted
        .value
        .into_iter()
        .map(|item| match item {
            ItemOutcome::Accepted { id } => BatchResult::Accepted(BatchAccepted {
                status: 202,
                id,
                location: location(id),
            }),
            ItemOutcome::Invalid { errors } => {
                BatchResult::Problem(ApiError::Invalid(errors).body())
            }
        })
        .collect();
    let mut response = (StatusCode::OK, Json(BatchAnswer { results })).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A page of deliveries.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
    /// Deliveries per page, 1 to 500 (100 when left out; others are clamped).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Deliveries per status page.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

/// Statuses after which nothing more happens to a delivery.
const OPEN_STATUSES: [&str; 3] = ["pending", "deferred", "sending"];

/// A notification's status and its deliveries
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "The id a send answered"), PageQuery),
    responses(
        (status = 200, description = "Status, counts per delivery status, a page of deliveries", body = NotificationStatus),
        CheckedErrors,
    )
)]
pub async fn status(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<NotificationStatus>, ApiError> {
    auth.require(Scope::Send)?;
    // Another tenant's notification and a malformed id look the same: 404.
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("notification"))?;
    // The read pool (a replica with `DATABASE_READ_URL`) may lag behind
    // the 202 a client just got: what it does not have yet is asked of the
    // primary, so a status read right after a send never answers 404. The
    // counts and deliveries may then lag a little; they only ever move on.
    let (n, pool) = match db::notifications::get(&state.read_pool, &auth.tenant, id).await? {
        Some(n) => (Some(n), &state.read_pool),
        None => (
            db::notifications::get(&state.pool, &auth.tenant, id).await?,
            &state.pool,
        ),
    };
    let n = n.ok_or(ApiError::NotFound("notification"))?;
    let cursor = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<Uuid>()
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page"))?,
        ),
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let counts = db::notifications::delivery_counts(pool, id, n.created_at).await?;
    let deliveries =
        db::notifications::deliveries_page(pool, id, n.created_at, cursor, limit).await?;
    let open = counts
        .iter()
        .any(|(s, c)| *c > 0 && OPEN_STATUSES.contains(&s.as_str()));
    // "completed" is derived: routed, and no delivery left to make.
    let status = if n.status == "routed" && !open {
        "completed"
    } else {
        n.status.as_str()
    };
    let next_cursor = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id))
        .flatten();
    Ok(Json(NotificationStatus {
        id: n.id,
        status: status.to_owned(),
        category: n.category,
        priority: n.priority,
        created_at: n.created_at,
        updated_at: n.updated_at,
        counts: counts.into_iter().collect(),
        deliveries: deliveries.into_iter().map(Delivery::from).collect(),
        next_cursor,
    }))
}
