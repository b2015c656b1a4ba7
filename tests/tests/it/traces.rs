//! W3C trace context end to end: what a caller sends in `traceparent`
//! reaches the provider's HTTP request through ingest, the router and the
//! worker (export off, as by default), each hop a span of its own.

use std::time::Duration;

use herald::{
    broker::{Headers, Outgoing, Publisher},
    model::Channel,
};
use herald_tests::{
    fakes::{Recorded, fcm::FcmFake},
    pipeline::{Pipeline, fcm},
};
use reqwest::Method;
use serde_json::{Value, json};

/// The caller's trace and span (the W3C specification's example ids).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn push(users: &[&str]) -> Value {
    json!({"category": "security", "priority": "high", "to": {"users": users},
           "content": {"push": {"title": "Sign-in code", "body": "Your code is 123456"}}})
}

/// A `traceparent` of version 00, split into trace id, parent id and flags;
/// panics unless every part is well formed (lower-case hex, not all zeros).
fn parse(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {traceparent}");
    assert_eq!(parts[0], "00", "version of {traceparent}");
    for (part, len) in parts[1..].iter().zip([32, 16, 2]) {
        assert!(
            part.len() == len
                && part
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "malformed traceparent {traceparent}"
        );
    }
    assert!(
        parts[1].chars().any(|c| c != '0') && parts[2].chars().any(|c| c != '0'),
        "all-zero id in {traceparent}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn traceparent_of(request: &Recorded) -> String {
    request
        .header("traceparent")
        .unwrap_or_else(|| panic!("the provider request carries no traceparent: {request:?}"))
        .to_owned()
}

/// Ingest, the router and a push worker on the FCM fake, with user `u-N`
/// holding device `fcm-token-000N` for each of `users`.
async fn pipeline(users: usize) -> (Pipeline, FcmFake, herald_tests::Spawned) {
    let p = Pipeline::start("300ms,600ms").await;
    let fake = FcmFake::start().await;
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;
    for n in 1..=users {
        p.user(&format!("u-{n}"), json!({"name": "Ada"})).await;
        p.device(&format!("u-{n}"), &format!("fcm-token-000{n}"), "fcm")
            .await;
    }
    (p, fake, worker)
}

#[tokio::test]
async fn trace_context_of_a_request_reaches_the_provider() {
    let (p, fake, worker) = pipeline(1).await;
    let response = p
        .client
        .req(Method::POST, "/v1/notifications")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&push(&["u-1"]))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    let status = p.settled(id, Duration::from_secs(20)).await;
    assert_eq!(status["counts"], json!({"sent": 1}));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let (trace, parent, flags) = parse(&traceparent_of(&requests[0]));
    assert_eq!(
        trace, TRACE_ID,
        "the provider call is in the caller's trace"
    );
    assert_ne!(
        parent, PARENT_ID,
        "the provider call's parent is Herald's span, not the caller's"
    );
    assert_eq!(flags, "01", "the caller's sampling decision is kept");
    assert_eq!(
        requests[0].header("tracestate"),
        Some("vendor=opaque"),
        "tracestate travels with it"
    );
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_trace() {
    let (p, fake, worker) = pipeline(2).await;
    let first = p.send(push(&["u-1"])).await;
    p.settled(&first, Duration::from_secs(20)).await;
    let second = p.send(push(&["u-2"])).await;
    p.settled(&second, Duration::from_secs(20)).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let (one, _, flags) = parse(&traceparent_of(&requests[0]));
    let (two, _, _) = parse(&traceparent_of(&requests[1]));
    assert_ne!(one, two, "each request starts a trace of its own");
    assert_eq!(
        flags, "00",
        "with export off a new trace is not sampled: its spans record nothing"
    );
    assert_eq!(requests[0].header("tracestate"), None);
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn trace_context_of_a_batch_and_of_an_ingest_message_reaches_the_provider() {
    let (p, fake, worker) = pipeline(3).await;
    // A batch: every item is in the caller's trace.
    let batch_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = p
        .client
        .req(Method::POST, "/v1/notifications/batch")
        .header(
            "traceparent",
            format!("00-{batch_trace}-b7ad6b7169203331-01"),
        )
        .json(&json!({"notifications": [push(&["u-1"]), push(&["u-2"])]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    // A message on `herald.ingest` carrying a traceparent header.
    let publisher = Publisher::new(p.env.broker().await);
    let msg = Outgoing::json(
        p.env.names().ingest_exchange(),
        "acme",
        serde_json::to_vec(&push(&["u-3"])).expect("json"),
        Headers::default().str("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01")),
    );
    publisher.publish(&msg).await.expect("published");

    let requests = p
        .env
        .eventually(Duration::from_secs(20), || async {
            let requests = fake.requests();
            (requests.len() == 3).then_some(requests)
        })
        .await
        .expect("three pushes sent");
    let mut by_token: Vec<(String, String)> = requests
        .iter()
        .map(|r| {
            let token = r.json()["message"]["token"]
                .as_str()
                .expect("token")
                .to_owned();
            (token, parse(&traceparent_of(r)).0)
        })
        .collect();
    by_token.sort();
    assert_eq!(
        by_token,
        vec![
            ("fcm-token-0001".into(), batch_trace.into()),
            ("fcm-token-0002".into(), batch_trace.into()),
            ("fcm-token-0003".into(), TRACE_ID.into()),
        ]
    );
    worker.stop().await;
    p.stop().await;
}
