//! The admin JSON API for scripts: list and show dead letters, replay them.
//! Bearer of the admin key only; errors are problem documents.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{auth::AdminApi, selection::Selection};
use crate::{
    api::{ApiJson, AppState, problem::ApiError},
    db::dead_letters::{self, Filter},
    dlq::{
        parse_when,
        replay::{self, ReplayReport, ReplayRequest},
    },
    model::{FieldError, FieldErrors},
};

/// Most records one call lists or replays: a replay answers only when it is
/// done, and an HTTP client should not wait minutes.
const MAX_LIMIT: i64 = 1000;

/// `GET /admin/api/dead-letters?tenant=&channel=&error_class=&notification=&since=&until=&unreplayed=1&limit=`
pub async fn list(
    _: AdminApi,
    State(state): State<AppState>,
    Query(sel): Query<Selection>,
) -> Result<Json<Value>, ApiError> {
    let filter = sel.filter().map_err(|e| ApiError::Invalid(vec![e]))?;
    let limit = sel.limit(50, MAX_LIMIT);
    let (items, total) = tokio::join!(
        dead_letters::list(&state.pool, &filter, limit),
        dead_letters::count(&state.pool, &filter),
    );
    Ok(Json(json!({"total": total?, "items": items?})))
}

/// `GET /admin/api/dead-letters/{id}`: one record with its payload.
pub async fn show(
    _: AdminApi,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("dead letter"))?;
    let filter = Filter {
        id: Some(id),
        ..Default::default()
    };
    let record = dead_letters::list(&state.pool, &filter, 1)
        .await?
        .pop()
        .ok_or(ApiError::NotFound("dead letter"))?;
    let mut value = serde_json::to_value(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
    value["payload"] = crate::dlq::payload_json(&record.payload);
    Ok(Json(value))
}

fn default_limit() -> i64 {
    100
}

fn default_rate() -> u32 {
    50
}

/// Body of `POST /admin/api/dead-letters/replay`: the list's filters plus
/// the replay options of `heraldctl dlq replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    id: Option<Uuid>,
    tenant: Option<String>,
    channel: Option<String>,
    error_class: Option<String>,
    notification_id: Option<Uuid>,
    /// RFC 3339 time or an age such as `2h`.
    since: Option<String>,
    until: Option<String>,
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "default_rate")]
    rate_per_sec: u32,
    #[serde(default)]
    again: bool,
}

impl ReplayBody {
    fn request(self) -> Result<ReplayRequest, ApiError> {
        let mut errors = FieldErrors::default();
        let mut when = |field: &str, v: &Option<String>| -> Option<DateTime<Utc>> {
            match v.as_deref().map(parse_when) {
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    errors.push(field, e);
                    None
                }
                None => None,
            }
        };
        let since = when("since", &self.since);
        let until = when("until", &self.until);
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            errors.push("limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
        let errors: Vec<FieldError> = errors.into_vec();
        if !errors.is_empty() {
            return Err(ApiError::Invalid(errors));
        }
        Ok(ReplayRequest {
            filter: Filter {
                id: self.id,
                tenant: self.tenant,
                channel: self.channel,
                error_class: self.error_class,
                notification_id: self.notification_id,
                since,
                until,
                only_unreplayed: !self.again,
            },
            limit: self.limit,
            dry_run: self.dry_run,
            rate_per_sec: self.rate_per_sec,
            again: self.again,
        })
    }
}

/// `POST /admin/api/dead-letters/replay`: replays (or with `dry_run`,
/// previews) and answers the report.
pub async fn replay(
    _: AdminApi,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<Json<ReplayReport>, ApiError> {
    let request = body.request()?;
    tracing::info!(
        dry_run = request.dry_run,
        again = request.again,
        limit = request.limit,
        "replay requested through the admin API"
    );
    Ok(Json(
        replay::replay(&state.pool, &state.publisher, &request).await?,
    ))
}
