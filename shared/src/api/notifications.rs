//! Send, batch send and status.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, AppState, Auth, problem::ApiError};
use crate::{
    db::{self, keys::Scope},
    intake::{Commitment, ItemOutcome},
    model::{FieldError, IdempotencyKey, notification::MAX_BATCH, user::mask},
};

const REPLAYED: &str = "idempotent-replayed";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = |message: String| {
        ApiError::Invalid(vec![FieldError {
            field: "Idempotency-Key".into(),
            message,
        }])
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII".into()))?;
    IdempotencyKey::parse(text).map(Some).map_err(invalid)
}

fn location(id: Uuid) -> String {
    format!("/v1/notifications/{id}")
}

/// `POST /v1/notifications`
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
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "accepted"})),
    )
        .into_response();
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    notifications: Vec<Value>,
}

/// `POST /v1/notifications/batch`: each item answered in order.
pub async fn send_batch(
    auth: Auth,
    State(state): State<AppState>,
    commitment: Commitment,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Send)?;
    let key = idempotency_key(&headers)?;
    let batch: BatchBody = serde_path_to_error::deserialize(body).map_err(|e| {
        ApiError::Invalid(vec![FieldError {
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        }])
    })?;
    if batch.notifications.is_empty() || batch.notifications.len() > MAX_BATCH {
        return Err(ApiError::Invalid(vec![FieldError {
            field: "notifications".into(),
            message: format!("must hold 1 to {MAX_BATCH} notifications"),
        }]));
    }
    let accepted = state
        .intake
        .accept_batch(&auth.tenant, batch.notifications, key, &commitment)
        .await?;
    let results: Vec<Value> = accepted
        .value
        .into_iter()
        .map(|item| match item {
            ItemOutcome::Accepted { id } => json!({
                "status": 202, "id": id, "location": location(id),
            }),
            ItemOutcome::Invalid { errors } => ApiError::Invalid(errors).body(),
        })
        .collect();
    let mut response = (StatusCode::OK, Json(json!({ "results": results }))).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// Deliveries per status page.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

/// Statuses after which nothing more happens to a delivery.
const OPEN_STATUSES: [&str; 3] = ["pending", "deferred", "sending"];

/// `GET /v1/notifications/{id}`
pub async fn status(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Send)?;
    // Another tenant's notification and a malformed id look the same: 404.
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("notification"))?;
    let n = db::notifications::get(&state.pool, &auth.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("notification"))?;
    let cursor = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
            ApiError::Invalid(vec![FieldError {
                field: "cursor".into(),
                message: "is not a cursor from a previous page".into(),
            }])
        })?),
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let counts = db::notifications::delivery_counts(&state.pool, id, n.created_at).await?;
    let deliveries =
        db::notifications::deliveries_page(&state.pool, id, n.created_at, cursor, limit).await?;
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
    let counts: serde_json::Map<String, Value> =
        counts.into_iter().map(|(s, c)| (s, json!(c))).collect();
    let deliveries: Vec<Value> = deliveries
        .into_iter()
        .map(|d| {
            json!({
                "id": d.id,
                "user_id": d.user_id,
                "channel": d.channel,
                "priority": d.lane,
                "destination": mask(&d.destination),
                "status": d.status,
                "reason": d.reason,
                "attempts": d.attempts,
                "error_class": d.error_class,
                "last_error": d.last_error,
                "deliver_after": d.not_before,
                "sent_at": d.sent_at,
                "updated_at": d.updated_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": n.id,
        "status": status,
        "category": n.category,
        "priority": n.priority,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "counts": counts,
        "deliveries": deliveries,
        "next_cursor": next_cursor,
    })))
}
