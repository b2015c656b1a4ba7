//! Users, devices, preferences and topics (scope `manage`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    ApiJson, AppState, Auth, delete_answer,
    openapi::{CheckedErrors, ReadErrors, WriteErrors},
    problem::ApiError,
    put_answer,
    views::{Device, Subscription, Topic, User},
};
use crate::{
    db::{self, keys::Scope, recipients},
    model::{
        TopicName, UserId, from_value,
        preferences::Preferences,
        user::{Platform, Profile, mask},
    },
};

/// Longest device token, in bytes; real FCM tokens are ~160 characters,
/// APNs tokens 64 hex digits. The token is part of the devices table's
/// primary key, and a btree entry holds at most 2704 bytes: 1 KiB leaves
/// room for the tenant and user ids (a 4 KiB token failed the insert: 500).
const MAX_TOKEN_LEN: usize = 1024;

fn user_id(raw: String) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::invalid("user_id", e))
}

fn topic_name(raw: String) -> Result<TopicName, ApiError> {
    TopicName::parse(raw).map_err(|e| ApiError::invalid("topic", e))
}

fn manage(auth: &Auth) -> Result<(), ApiError> {
    auth.require(Scope::Manage)
}

/// Creates or replaces a recipient
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}",
    tag = "recipients",
    params(("user_id" = UserId, Path, example = "u-1", description = "The recipient's id in your terms")),
    request_body = Profile,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 200, description = "Replaced", body = User),
        WriteErrors,
    )
)]
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
    Ok(put_answer(created, User::new(row, Vec::new())))
}

/// A recipient's profile and devices
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}",
    tag = "recipients",
    params(("user_id" = String, Path, example = "u-1")),
    responses((status = 200, description = "The profile and devices (tokens masked)", body = User), ReadErrors)
)]
pub async fn get_user(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<User>, ApiError> {
    manage(&auth)?;
    let row = recipients::get_user(&state.pool, &auth.tenant, &user)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let devices = recipients::list_devices(&state.pool, &auth.tenant, &user).await?;
    Ok(Json(User::new(row, devices)))
}

/// Erases a recipient with their devices, preferences and subscriptions
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}",
    tag = "recipients",
    params(("user_id" = String, Path, example = "u-1")),
    responses((status = 204, description = "Erased"), ReadErrors)
)]
pub async fn delete_user(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    let removed = recipients::delete_user(&state.pool, &auth.tenant, &user).await?;
    delete_answer(removed, "user")
}

/// The body of a device.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    #[schema(value_type = Platform)]
    platform: String,
}

/// Registers a device token (re-activates a deactivated one)
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/devices/{token}",
    tag = "recipients",
    params(
        ("user_id" = String, Path, example = "u-1"),
        ("token" = String, Path, example = "device-token-1", min_length = 1, max_length = 256, description = "The FCM registration token or APNs device token (at most 1024 bytes)"),
    ),
    request_body = DeviceBody,
    responses(
        (status = 201, description = "Registered", body = Device),
        (status = 200, description = "Already registered; active again", body = Device),
        WriteErrors,
    )
)]
pub async fn put_device(
    auth: Auth,
    State(state): State<AppState>,
    Path((user, token)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    manage(&auth)?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "token",
            format!("must be 1 to {MAX_TOKEN_LEN} bytes of printable characters"),
        ));
    }
    let body: DeviceBody = from_value(body)?;
    let platform: Platform = body
        .platform
        .parse()
        .map_err(|e| ApiError::invalid("platform", e))?;
    match recipients::put_device(&state.pool, &auth.tenant, &user, &token, platform).await? {
        None => Err(ApiError::NotFound("user")),
        Some(created) => Ok(put_answer(
            created,
            Device {
                token: mask(&token),
                platform: platform.as_str().to_owned(),
                active: true,
                deactivated_reason: None,
            },
        )),
    }
}

/// Removes a device token
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/devices/{token}",
    tag = "recipients",
    params(("user_id" = String, Path, example = "u-1"), ("token" = String, Path, example = "device-token-1")),
    responses((status = 204, description = "Removed"), ReadErrors)
)]
pub async fn delete_device(
    auth: Auth,
    State(state): State<AppState>,
    Path((user, token)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    let removed = recipients::delete_device(&state.pool, &auth.tenant, &user, &token).await?;
    delete_answer(removed, "device")
}

/// Sets a recipient's preferences
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/preferences",
    tag = "recipients",
    params(("user_id" = String, Path, example = "u-1")),
    request_body = Preferences,
    responses((status = 200, description = "The effective preferences, every channel listed", body = Preferences), WriteErrors)
)]
pub async fn put_preferences(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Preferences>, ApiError> {
    manage(&auth)?;
    let prefs = Preferences::parse(body).map_err(ApiError::Invalid)?;
    if !recipients::put_preferences(&state.pool, &auth.tenant, &user, &prefs).await? {
        return Err(ApiError::NotFound("user"));
    }
    Ok(Json(prefs.effective()))
}

/// A recipient's effective preferences
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/preferences",
    tag = "recipients",
    params(("user_id" = String, Path, example = "u-1")),
    responses((status = 200, description = "The effective preferences, every channel listed", body = Preferences), ReadErrors)
)]
pub async fn get_preferences(
    auth: Auth,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Preferences>, ApiError> {
    manage(&auth)?;
    let prefs = recipients::get_preferences(&state.pool, &auth.tenant, &user)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(prefs.effective()))
}

/// Subscribes a recipient to a topic
#[utoipa::path(
    put,
    path = "/v1/topics/{topic}/subscribers/{user_id}",
    tag = "recipients",
    params(("topic" = TopicName, Path, example = "news"), ("user_id" = String, Path, example = "u-1")),
    responses(
        (status = 201, description = "Subscribed", body = Subscription),
        (status = 200, description = "Already subscribed", body = Subscription),
        CheckedErrors,
    )
)]
pub async fn subscribe(
    auth: Auth,
    State(state): State<AppState>,
    Path((topic, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    manage(&auth)?;
    let topic = topic_name(topic)?;
    match recipients::subscribe(&state.pool, &auth.tenant, topic.as_str(), &user).await? {
        None => Err(ApiError::NotFound("user")),
        Some(created) => Ok(put_answer(
            created,
            Subscription {
                topic: topic.to_string(),
                user_id: user,
                subscribed: true,
            },
        )),
    }
}

/// Unsubscribes a recipient from a topic
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}/subscribers/{user_id}",
    tag = "recipients",
    params(("topic" = String, Path, example = "news"), ("user_id" = String, Path, example = "u-1")),
    responses((status = 204, description = "Unsubscribed"), ReadErrors)
)]
pub async fn unsubscribe(
    auth: Auth,
    State(state): State<AppState>,
    Path((topic, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    manage(&auth)?;
    let removed = recipients::unsubscribe(&state.pool, &auth.tenant, &topic, &user).await?;
    delete_answer(removed, "subscription")
}

/// A topic's subscriber count
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    tag = "recipients",
    params(("topic" = String, Path, example = "news")),
    responses((status = 200, description = "The subscriber count", body = Topic), ReadErrors)
)]
pub async fn get_topic(
    auth: Auth,
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Topic>, ApiError> {
    manage(&auth)?;
    let subscribers = db::recipients::subscriber_count(&state.pool, &auth.tenant, &topic).await?;
    Ok(Json(Topic { topic, subscribers }))
}
