//! The API's machine-readable contract: an OpenAPI 3.1 document generated
//! from the handlers (`#[utoipa::path]`) and the types they take and answer,
//! served at `GET /v1/openapi.json` without a key. docs/api.md is the
//! narrative guide beside it.

use std::{collections::BTreeMap, sync::OnceLock};

use axum::{
    Json,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use utoipa::{
    IntoResponses, Modify, OpenApi,
    openapi::{
        self, ContentBuilder, HeaderBuilder, RefOr, ResponseBuilder,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{notifications, problem::Problem, recipients, suppressions, webhooks};
use crate::model::FieldError;

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald API",
        version = "1",
        description = "Notification fan-out: send to users or a topic over push, email and SMS, \
                       follow each delivery, manage recipients and their preferences. \
                       The narrative guide is docs/api.md."
    ),
    paths(
        notifications::send,
        notifications::send_batch,
        notifications::status,
        recipients::put_user,
        recipients::get_user,
        recipients::delete_user,
        recipients::put_device,
        recipients::delete_device,
        recipients::put_preferences,
        recipients::get_preferences,
        recipients::get_topic,
        recipients::subscribe,
        recipients::unsubscribe,
        suppressions::list,
        suppressions::put,
        suppressions::delete,
        webhooks::put_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::delete_webhook,
        webhooks::rotate_webhook,
        openapi_json,
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerKey),
    security(("bearer" = [])),
    tags(
        (name = "notifications", description = "Send, batch send and status (scope `send`)"),
        (name = "recipients", description = "Users, devices, preferences and topics (scope `manage`)"),
        (name = "suppressions", description = "Addresses not sent to: hard bounces, complaints, opt-outs at the carrier, and your own (scope `manage`)"),
        (name = "webhooks", description = "Signed webhook endpoints for delivery events (scope `manage`)"),
        (name = "contract", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme: `Authorization: Bearer <api key>`.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `heraldctl keys create`, scoped `send` and/or `manage`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Headers every answer that documents them carries, so the document marks
/// them required (utoipa has no attribute for it).
const ALWAYS_SENT: [&str; 3] = ["Location", "Retry-After", "WWW-Authenticate"];

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
        for path in doc["paths"]
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut())
        {
            for operation in path
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                let responses = operation["responses"].as_object_mut();
                for response in responses.into_iter().flat_map(|r| r.values_mut()) {
                    let headers = response.get_mut("headers").and_then(Value::as_object_mut);
                    for (name, header) in headers.into_iter().flatten() {
                        if ALWAYS_SENT.contains(&name.as_str()) {
                            header["required"] = Value::Bool(true);
                        }
                    }
                }
            }
        }
        doc
    })
}

/// Every (route, method, status) the document lists, as the request
/// metrics label them: what ingest counts at zero when it starts.
pub fn routes() -> Vec<(String, String, u16)> {
    let mut out = Vec::new();
    for (route, path) in document()["paths"].as_object().into_iter().flatten() {
        for (method, operation) in path.as_object().into_iter().flatten() {
            for status in operation["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, _)| s)
            {
                if let Ok(status) = status.parse() {
                    out.push((route.clone(), method.to_uppercase(), status));
                }
            }
        }
    }
    out
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "contract",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
        (status = 400, response = inline(BadRequestDoc)),
    )
)]
pub async fn openapi_json() -> Response {
    let mut response = Json(document()).into_response();
    // Changes only with a new release.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A problem answer with `status`: its description, the problem schema and
/// the headers that status carries.
fn problem(status: u16) -> RefOr<openapi::Response> {
    let description = match status {
        400 => {
            "Malformed: the body is not JSON, the query string is malformed or holds NUL, or the path is not UTF-8"
        }
        401 => "No key, or an unknown or revoked key",
        403 => "The key lacks the scope",
        404 => "No such object in the key's tenant",
        409 => {
            "Idempotency-Key reused with a different body (`/problems/conflict`: do not retry), or its first request still in progress (`/problems/key-in-progress`, with a `Retry-After` header in seconds: ask again then; the header is absent from the other 409, so it is not declared as always present)"
        }
        413 => "Body over 1 MiB (8 MiB for a batch)",
        415 => "Not `Content-Type: application/json`",
        422 => "Invalid fields, each with its path",
        429 => "The key's rate exceeded, or too many wrong keys from this address",
        503 => "The database or broker cannot take the request, or it ran past the request timeout",
        _ => "A problem",
    };
    let seconds = || {
        HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .description(Some("Seconds to wait before retrying"))
            .build()
    };
    let mut response = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(openapi::Ref::from_schema_name("Problem")))
            .build(),
    );
    match status {
        401 => {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^Bearer")),
                    )
                    .description(Some("`Bearer`"))
                    .build(),
            )
        }
        429 | 503 => response = response.header("Retry-After", seconds()),

        _ => {}
    }
    RefOr::T(response.build())
}

fn problems(statuses: &[u16]) -> BTreeMap<String, RefOr<openapi::Response>> {
    statuses
        .iter()
        .map(|s| (s.to_string(), problem(*s)))
        .collect()
}

/// Declares a set of problem answers an operation can give.
macro_rules! problem_set {
    ($(#[$doc:meta])* $name:ident = [$($status:literal),*]) => {
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
                problems(&[$($status),*])
            }
        }
    };
}

problem_set!(
    /// A read or delete of one object named in the path.
    ReadErrors = [400, 401, 403, 404, 429, 503]
);
problem_set!(
    /// A read that also takes query or path values it checks (422).
    CheckedErrors = [400, 401, 403, 404, 422, 429, 503]
);
problem_set!(
    /// A `PUT` with a JSON body of an object named in the path.
    WriteErrors = [400, 401, 403, 404, 413, 415, 422, 429, 503]
);
problem_set!(
    /// A send: a JSON body, and an `Idempotency-Key` that may conflict.
    SendErrors = [400, 401, 403, 409, 413, 415, 422, 429, 503]
);

/// The 400 of a path or query no resource can have (schema only).
struct BadRequestDoc;

impl utoipa::ToResponse<'static> for BadRequestDoc {
    fn response() -> (&'static str, RefOr<openapi::Response>) {
        ("BadRequest", problem(400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_operation_and_its_problems() {
        let doc = document();
        if let Ok(path) = std::env::var("HERALD_OPENAPI_DUMP") {
            std::fs::write(path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        }
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        // 17 with suppressions; webhooks add PUT, GET, DELETE, list and rotate.
        assert_eq!(operations, 22);
        let send = &doc["paths"]["/v1/notifications"]["post"];
        for status in [
            "202", "400", "401", "403", "409", "413", "415", "422", "429", "503",
        ] {
            assert!(send["responses"][status].is_object(), "send lacks {status}");
        }
        assert_eq!(
            send["responses"]["429"]["headers"]["Retry-After"]["required"],
            true
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            doc["paths"]["/v1/openapi.json"]["get"]["security"],
            serde_json::json!([{}])
        );
    }
}
