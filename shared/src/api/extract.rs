//! What the API takes from a request (JSON body, query, path), with every
//! rejection answered as a problem document rather than axum's plain text.

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Query, Request, rejection::JsonRejection},
    http::request::Parts,
    middleware::Next,
    response::{IntoResponse, Response},
};
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::ApiError;
use crate::model::find_nul;

/// The JSON body extractor: its rejections are problem documents, and a
/// string holding NUL (U+0000) is refused with its field path, since
/// PostgreSQL can store it neither in `text` nor in `jsonb`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<Value>::from_request(req, state)
            .await
            .map_err(ApiError::from)?;
        if let Some(field) = find_nul(&value) {
            return Err(ApiError::invalid(
                field,
                "must not contain the NUL character (U+0000)",
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        use axum::http::StatusCode;
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => ApiError::BadRequest(e.body_text()),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge("size"),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// The query-string extractor, answering a malformed query with a problem.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Refuses, before any handler, a path no resource can have: percent-encoding
/// that does not decode to UTF-8 (400), or a control character such as NUL
/// (404: no id may hold one, and PostgreSQL could not even look it up).
/// Handlers can then take their path parameters as plain strings. A query
/// string holding NUL is refused too (400): its values become filters in
/// SQL, where NUL is an error.
pub async fn usable_path(req: Request, next: Next) -> Response {
    if req
        .uri()
        .query()
        .is_some_and(|q| percent_decode_str(q).any(|b| b == 0))
    {
        return ApiError::BadRequest("the query string holds a NUL character".into())
            .into_response();
    }
    match percent_decode_str(req.uri().path()).decode_utf8() {
        Err(_) => ApiError::BadRequest("the path is not UTF-8 once percent-decoded".into())
            .into_response(),
        Ok(path) if path.chars().any(char::is_control) => {
            ApiError::NotFound("route").into_response()
        }
        Ok(_) => next.run(req).await,
    }
}

/// The answer to a known path with a method it does not have.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
