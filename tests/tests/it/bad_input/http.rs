//! The HTTP API under bad input: bodies, headers and paths.

use herald::db::keys::Scope;
use herald_tests::{Spawned, TestEnv};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::{prelude::*, test_runner::TestCaseError};
use serde_json::{Value, json};

use super::{
    body_bytes, check_all, ensure, free_text_notification, hostile_string, json_value,
    mutated_notification,
    raw::{self, Answer},
    valid_notification,
};

struct Api {
    _env: TestEnv,
    app: Spawned,
    key: String,
}

async fn api() -> Api {
    let env = TestEnv::new().await;
    let app = env.spawn_ingest().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let api = Api {
        _env: env,
        app,
        key,
    };
    let created = api
        .send(
            "PUT",
            b"/v1/users/u-1",
            json!({"name": "Ada", "email": "ada@example.com"})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    api
}

impl Api {
    fn json_headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("Authorization", format!("Bearer {}", self.key).into_bytes()),
            ("Content-Type", b"application/json".to_vec()),
        ]
    }

    async fn send(&self, method: &str, target: &[u8], body: &[u8]) -> Answer {
        raw::send(self.app.addr, method, target, &self.json_headers(), body)
            .await
            .expect("ingest answers")
    }

    /// The service is up and still does its job.
    async fn still_serving(self) {
        let health = raw::send(self.app.addr, "GET", b"/healthz", &[], b"")
            .await
            .expect("healthz answers");
        assert_eq!(health.status, 200);
        let sent = self
            .send(
                "POST",
                b"/v1/notifications",
                valid_notification().to_string().as_bytes(),
            )
            .await;
        assert_eq!(sent.status, 202, "{sent:?}");
        self.app.stop().await;
    }
}

/// The answer has an allowed status, and every error is a problem document
/// whose `status` matches.
fn problem(answer: &Answer, allowed: &[u16], what: &str) -> Result<(), TestCaseError> {
    let text = || String::from_utf8_lossy(&answer.body).into_owned();
    ensure(allowed.contains(&answer.status), || {
        format!(
            "{what}: status {} not in {allowed:?}: {}",
            answer.status,
            text()
        )
    })?;
    if answer.status >= 400 {
        ensure(
            answer.header("content-type") == Some("application/problem+json"),
            || {
                format!(
                    "{what}: {} is not a problem document: {answer:?}",
                    answer.status
                )
            },
        )?;
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| TestCaseError::fail(format!("{what}: problem is not JSON: {e}")))?;
        ensure(
            body["status"] == answer.status
                && body["type"].is_string()
                && body["title"].is_string()
                && body["detail"].is_string(),
            || format!("{what}: incomplete problem {body}"),
        )?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_bodies_get_clear_answers() {
    let api = api().await;
    let strategy = body_bytes(prop_oneof![
        3 => mutated_notification(),
        2 => free_text_notification(),
        1 => json_value(),
    ]);
    check_all("send bodies", 256, strategy, |body| {
        let api = &api;
        async move {
            let answer = api.send("POST", b"/v1/notifications", &body).await;
            problem(&answer, &[202, 400, 413, 422], "POST /v1/notifications")
        }
    });
    api.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_bodies_get_clear_answers() {
    let api = api().await;
    let items = prop::collection::vec(
        prop_oneof![3 => mutated_notification(), 1 => json_value()],
        0..6,
    );
    let strategy = body_bytes(prop_oneof![
        4 => items.prop_map(|n| json!({ "notifications": n })),
        1 => json_value(),
    ]);
    check_all("batch bodies", 96, strategy, |body| {
        let api = &api;
        async move {
            let answer = api.send("POST", b"/v1/notifications/batch", &body).await;
            problem(
                &answer,
                &[200, 400, 413, 422],
                "POST /v1/notifications/batch",
            )?;
            if answer.status == 200 {
                let results: Value = serde_json::from_slice(&answer.body).expect("JSON");
                for item in results["results"].as_array().expect("results") {
                    ensure(
                        [202, 422].contains(&item["status"].as_u64().unwrap_or(0)),
                        || format!("batch item {item}"),
                    )?;
                }
            }
            Ok(())
        }
    });
    api.still_serving().await;
}

/// A valid JSON document with some of `fields` replaced by arbitrary values.
fn mutated(base: Value, fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec((0..fields.len(), json_value()), 0..3).prop_map(move |changes| {
        let mut doc = base.clone();
        for (field, value) in changes {
            doc[fields[field]] = value;
        }
        doc
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_bodies_get_clear_answers() {
    let api = api().await;
    let profile = prop_oneof![
        mutated(
            json!({"name": "Ada", "email": "ada@example.com", "phone": "+14155550100",
                   "locale": "en-GB", "timezone": "Europe/London"}),
            &["name", "email", "phone", "locale", "timezone", "extra"],
        ),
        hostile_string().prop_map(|name| json!({ "name": name })),
    ];
    let prefs = mutated(
        json!({"channels": {"sms": false}, "categories": {"marketing": {"email": false}},
               "quiet_hours": {"start": "22:00", "end": "07:00"}}),
        &["channels", "categories", "quiet_hours", "extra"],
    );
    let device = mutated(json!({"platform": "fcm"}), &["platform", "extra"]);
    let strategy = prop_oneof![
        (Just("/v1/users/u-2"), body_bytes(profile)),
        (Just("/v1/users/u-1/preferences"), body_bytes(prefs)),
        (Just("/v1/users/u-1/devices/tok-1"), body_bytes(device)),
        (
            Just("/v1/topics/news/subscribers/u-1"),
            body_bytes(json_value())
        ),
    ];
    check_all("recipient bodies", 256, strategy, |(path, body)| {
        let api = &api;
        async move {
            let answer = api.send("PUT", path.as_bytes(), &body).await;
            problem(
                &answer,
                &[200, 201, 400, 404, 413, 422],
                &format!("PUT {path}"),
            )
        }
    });
    api.still_serving().await;
}

/// Bytes a header value may hold on the wire (tab, visible ASCII, and the
/// obsolete non-ASCII octets), so the request reaches the API rather than
/// being refused by the HTTP parser.
fn field_value(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff],
        0..max,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_get_clear_answers() {
    let api = api().await;
    let key = api.key.clone();
    let authorization = prop_oneof![
        3 => Just(Some(format!("Bearer {key}").into_bytes())),
        1 => Just(None),
        1 => Just(Some(format!("bearer {key}").into_bytes())),
        1 => Just(Some(format!("Bearer  {key} ").into_bytes())),
        1 => Just(Some(format!("Bearer {key}x").into_bytes())),
        1 => Just(Some(format!("Bearer {}", "k".repeat(6000)).into_bytes())),
        2 => "[ -~]{0,80}".prop_map(|k| Some(format!("Bearer {k}").into_bytes())),
        2 => field_value(200).prop_map(Some),
    ];
    let idempotency = prop_oneof![
        2 => Just(None),
        2 => "[!-~]{1,40}".prop_map(|k| Some(k.into_bytes())),
        1 => "[!-~]{250,300}".prop_map(|k| Some(k.into_bytes())),
        1 => "[ ]{0,3}".prop_map(|k| Some(k.into_bytes())),
        1 => "[a-z]{1,8}[é☃日本]{1,4}".prop_map(|k| Some(k.into_bytes())),
        2 => field_value(300).prop_map(Some),
    ];
    let content_type = prop_oneof![
        3 => Just(Some(b"application/json".to_vec())),
        1 => Just(Some(b"application/json; charset=utf-8".to_vec())),
        1 => Just(Some(b"APPLICATION/JSON".to_vec())),
        1 => Just(Some(b"text/plain".to_vec())),
        1 => Just(Some(b"application/x-www-form-urlencoded".to_vec())),
        1 => Just(None),
        2 => field_value(80).prop_map(Some),
    ];
    let strategy = (
        authorization,
        idempotency,
        content_type,
        prop_oneof![3 => Just(valid_notification()), 1 => mutated_notification()],
    );
    check_all(
        "headers",
        256,
        strategy,
        |(authorization, idempotency, content_type, body)| {
            let api = &api;
            async move {
                let mut headers = Vec::new();
                for (name, value) in [
                    ("Authorization", authorization),
                    ("Idempotency-Key", idempotency),
                    ("Content-Type", content_type),
                ] {
                    if let Some(value) = value {
                        headers.push((name, value));
                    }
                }
                let answer = raw::send(
                    api.app.addr,
                    "POST",
                    b"/v1/notifications",
                    &headers,
                    body.to_string().as_bytes(),
                )
                .await
                .map_err(TestCaseError::fail)?;
                problem(
                    &answer,
                    &[202, 400, 401, 409, 413, 415, 422, 429],
                    &format!("headers {headers:?}"),
                )
            }
        },
    );
    api.still_serving().await;
}

/// A path segment: hostile text percent-encoded, or raw tricks. At most
/// 8,000 characters: past 64 KiB of URI, hyper answers 414 itself, before
/// any of Herald's code runs.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostile_string().prop_map(|s| {
            let mut encoded = utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string();
            encoded.truncate(8000);
            // Never end inside a %XX escape cut in two.
            while encoded.len() > 2 && encoded[encoded.len() - 3..].contains('%') {
                encoded.pop();
            }
            encoded
        }),
        1 => prop::sample::select(vec![
            "..", ".", "%2e%2e", "%2E%2E%2F", "%2F", "a%2Fb", "%00", "a%00b", "%ff", "%C0%AF",
            "%", "%zz", "~", "%20", "u-1", "",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..6000).prop_map(|n| "a".repeat(n)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_ids_get_clear_answers() {
    let api = api().await;
    const ROUTES: [&str; 7] = [
        "/v1/users/{}",
        "/v1/users/{}/devices/{}",
        "/v1/users/{}/preferences",
        "/v1/topics/{}",
        "/v1/topics/{}/subscribers/{}",
        "/v1/notifications/{}",
        "/v1/notifications/{}?limit={}&cursor={}",
    ];
    let strategy = (
        prop::sample::select(vec!["GET", "PUT", "DELETE", "POST", "PATCH"]),
        0..ROUTES.len(),
        prop::collection::vec(segment(), 3),
    );
    check_all("path ids", 256, strategy, |(method, route, segments)| {
        let api = &api;
        async move {
            let mut target = ROUTES[route].to_owned();
            for s in &segments {
                target = target.replacen("{}", s, 1);
            }
            let body = json!({"name": "Ada", "platform": "fcm"}).to_string();
            let answer = api.send(method, target.as_bytes(), body.as_bytes()).await;
            problem(
                &answer,
                &[200, 201, 204, 400, 404, 405, 413, 422],
                &format!("{method} {target}"),
            )
        }
    });
    api.still_serving().await;
}
