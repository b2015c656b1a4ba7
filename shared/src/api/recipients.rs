//! Users, devices, preferences and topics (scope `manage`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, AppState, Auth, problem::ApiError, put_status};
use crate::{
    db::{self, keys::Scope, recipients},
    model::{
        FieldError, TopicName, UserId,
        preferences::Preferences,
        user::{Platform, Profile, mask},
    },
};

/// Maximum length of a device token; real FCM tokens are ~160 characters,
/// APNs tokens 64 hex digits.
const MAX_TOKEN_LEN: usize = 4096;

fn invalid(field: &str, message: impl ToString) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        field: field.into(),
        message: message.to_string(),
    }])
}

fn user_id(raw: String) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| invalid("user_id", e))
}

fn topic_name(raw: String) -> Result<TopicName, ApiError> {
    TopicName::parse(raw).map_err(|e| invalid("topic", e))
}

fn manage(auth: &Auth) -> Result<(), ApiError> {
    auth.require(Scope::Manage)
}

/// `PUT /v1/users/{user_id}`
pub async fn put_user(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    manage(&auth)?;
    let user = user_id(user)?;
    let profile = Profile::parse(body).map_err(ApiError::Invalid)?;
    let created = recipients::put_user(&state.pool, &auth.tenant, user.as_str(), &profile).await?;
    let row = recipients::get_user(&state.pool, &auth.tenant, user.as_str())
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok((put_status(created), Json(user_json(&row, Vec::new()))).into_response())
}

fn user_json(row: &recipients::UserRow, devices: Vec<recipients::DeviceRow>) -> Value {
    let devices: Vec<Value> = devices
        .into_iter()
        .map(|d| json!({"token": mask(&d.token), "platform": d.platform, "active": d.active, "deactivated_reason": d.deactivated_reason}))
        .collect();
    json!({
        "id": row.id,
        "name": row.name,
        "email": row.email,
        "phone": row.phone,
        "locale": row.locale,
        "timezone": row.timezone,
        "devices": devices,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    })
}

/// `GET /v1/users/{user_id}`
pub async fn get_user(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    manage(&auth)?;
    let row = recipients::get_user(&state.pool, &auth.tenant, &user)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let devices = recipients::list_devices(&state.pool, &auth.tenant, &user).await?;
    Ok(Json(user_json(&row, devices)))
}

/// `DELETE /v1/users/{user_id}`: erases the user and their addresses.
pub async fn delete_user(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    if recipients::delete_user(&state.pool, &auth.tenant, &user).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("user"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    platform: String,
}

/// `PUT /v1/users/{user_id}/devices/{token}`
pub async fn put_device(
    auth: Auth,
    State(state): State<AppState>,
    Path((user, token)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    manage(&auth)?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_control) {
        return Err(invalid(
            "token",
            format!("must be 1 to {MAX_TOKEN_LEN} printable characters"),
        ));
    }
    let body: DeviceBody = serde_path_to_error::deserialize(body)
        .map_err(|e| invalid(&e.path().to_string(), e.into_inner()))?;
    let platform: Platform = body.platform.parse().map_err(|e| invalid("platform", e))?;
    match recipients::put_device(&state.pool, &auth.tenant, &user, &token, platform).await? {
        None => Err(ApiError::NotFound("user")),
        Some(created) => Ok((
            put_status(created),
            Json(json!({"token": mask(&token), "platform": platform, "active": true})),
        )
            .into_response()),
    }
}

/// `DELETE /v1/users/{user_id}/devices/{token}`
pub async fn delete_device(
    auth: Auth,
    State(state): State<AppState>,
    Path((user, token)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    if recipients::delete_device(&state.pool, &auth.tenant, &user, &token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("device"))
    }
}

/// `PUT /v1/users/{user_id}/preferences`
pub async fn put_preferences(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    manage(&auth)?;
    let prefs = Preferences::parse(body).map_err(ApiError::Invalid)?;
    if !recipients::put_preferences(&state.pool, &auth.tenant, &user, &prefs).await? {
        return Err(ApiError::NotFound("user"));
    }
    Ok(Json(prefs.effective()))
}

/// `GET /v1/users/{user_id}/preferences`: the effective preferences.
pub async fn get_preferences(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    manage(&auth)?;
    let prefs = recipients::get_preferences(&state.pool, &auth.tenant, &user)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(prefs.effective()))
}

/// `PUT /v1/topics/{topic}/subscribers/{user_id}`
pub async fn subscribe(
    auth: Auth,
    State(state): State<AppState>,
    Path((topic, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    manage(&auth)?;
    let topic = topic_name(topic)?;
    match recipients::subscribe(&state.pool, &auth.tenant, topic.as_str(), &user).await? {
        None => Err(ApiError::NotFound("user")),
        Some(created) => Ok((
            put_status(created),
            Json(json!({"topic": topic, "user_id": user, "subscribed": true})),
        )
            .into_response()),
    }
}

/// `DELETE /v1/topics/{topic}/subscribers/{user_id}`
pub async fn unsubscribe(
    auth: Auth,
    State(state): State<AppState>,
    Path((topic, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    if recipients::unsubscribe(&state.pool, &auth.tenant, &topic, &user).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("subscription"))
    }
}

/// `GET /v1/topics/{topic}`: the subscriber count.
pub async fn get_topic(
    auth: Auth,
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    manage(&auth)?;
    let count = db::recipients::subscriber_count(&state.pool, &auth.tenant, &topic).await?;
    Ok(Json(json!({"topic": topic, "subscribers": count})))
}
