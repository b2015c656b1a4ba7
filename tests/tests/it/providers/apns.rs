//! APNs provider API against its HTTP/2 fake.

use std::time::Duration;

use herald::{
    model::{Lane, user::Platform},
    providers::{
        ErrorClass, Provider,
        apns::{ApnsKey, ApnsProvider},
    },
};
use herald_tests::fakes::{Scripted, Silent, apns::ApnsFake};
use serde::Deserialize;

use super::{SHORT, TIMEOUT, ctx, device, permanent, push, retry, sent};

const TOKEN: &str = "6f1c0bcbd5bd6ef6f3c1c1de2b0f0e2a6e8f2f6fb8b4ba9b7e3c8c2d1a0b9c8d";

fn provider(fake: &ApnsFake, base_url: &str, timeout: Duration) -> ApnsProvider {
    let key = ApnsKey::from_file(&fake.key_file(), fake.key_id(), fake.team_id()).expect("key");
    ApnsProvider::new(base_url, fake.topic(), key, timeout).expect("provider")
}

#[tokio::test]
async fn sends_over_http2_with_a_provider_token_and_apple_headers() {
    let fake = ApnsFake::start().await;
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    let mut ctx = ctx(Lane::High);
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    ctx.expires_at = Some(expires);

    let id = sent(
        apns.send(
            &push("Code", "123456"),
            &device(TOKEN, Platform::Apns),
            &ctx,
        )
        .await,
    );
    assert_eq!(id, Some(ctx.delivery_id.to_string()));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/3/device/{TOKEN}"));
    assert_eq!(r.header("apns-topic"), Some("com.example.herald"));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    let expiration = expires.timestamp().to_string();
    assert_eq!(r.header("apns-expiration"), Some(expiration.as_str()));
    let collapse = ctx.notification_id.to_string();
    assert_eq!(r.header("apns-collapse-id"), Some(collapse.as_str()));
    let delivery = ctx.delivery_id.to_string();
    assert_eq!(r.header("apns-id"), Some(delivery.as_str()));

    let jwt = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("bearer "))
        .expect("bearer token");
    let header = jsonwebtoken::decode_header(jwt).expect("a JWT");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(fake.key_id()));
    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        iat: u64,
    }
    let claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(jwt)
        .expect("claims")
        .claims;
    assert_eq!(claims.iss, fake.team_id());
    assert!(claims.iat.abs_diff(jsonwebtoken::get_current_timestamp()) < 60);

    let body = r.json();
    assert_eq!(body["aps"]["alert"]["title"], "Code");
    assert_eq!(body["aps"]["alert"]["body"], "123456");
    assert_eq!(body["order_id"], "A-991");
}

#[tokio::test]
async fn one_provider_token_and_connection_serve_many_sends() {
    let fake = ApnsFake::start().await;
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    for _ in 0..3 {
        let outcome = apns
            .send(
                &push("t", "b"),
                &device(TOKEN, Platform::Apns),
                &ctx(Lane::Bulk),
            )
            .await;
        sent(outcome);
    }
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .windows(2)
            .all(|w| w[0].header("authorization") == w[1].header("authorization"))
    );
    assert!(
        requests
            .iter()
            .all(|r| r.header("apns-priority") == Some("5"))
    );
    assert!(
        requests
            .iter()
            .all(|r| r.header("apns-expiration").is_none()),
        "no expiry: left to APNs to store"
    );
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn unregistered_tokens_are_deactivated() {
    let fake = ApnsFake::start().await;
    fake.push_reason(410, "Unregistered");
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::Unregistered));
}

#[tokio::test]
async fn bad_device_tokens_are_invalid_addresses() {
    let fake = ApnsFake::start().await;
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    fake.push_reason(400, "BadDeviceToken");
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::InvalidAddress));

    fake.push_reason(400, "DeviceTokenNotForTopic");
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::InvalidAddress));

    // Not hex: refused without asking Apple.
    let outcome = apns
        .send(
            &push("t", "b"),
            &device("not/a-token", Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::InvalidAddress));
    assert_eq!(fake.requests().len(), 2);

    fake.push_reason(400, "PayloadTooLarge");
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(!permanent(outcome, ErrorClass::Rejected));
}

#[tokio::test]
async fn a_key_apple_does_not_know_is_an_auth_failure() {
    let fake = ApnsFake::start().await;
    let other = ApnsFake::start().await;
    // Signed with another team's key: the fake cannot verify it.
    let key = ApnsKey::from_file(&other.key_file(), fake.key_id(), fake.team_id()).expect("key");
    let apns = ApnsProvider::new(&fake.base_url(), fake.topic(), key, TIMEOUT).expect("provider");
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    permanent(outcome, ErrorClass::Auth);
}

#[tokio::test]
async fn a_fresh_token_called_expired_is_not_replaced() {
    let fake = ApnsFake::start().await;
    fake.push_reason(403, "ExpiredProviderToken");
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    permanent(outcome, ErrorClass::Auth);
    // Apple refuses a new token within 20 minutes of the last one.
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let fake = ApnsFake::start().await;
    fake.push_response(
        429,
        r#"{"reason":"TooManyRequests"}"#,
        &[("retry-after", "5")],
    );
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    assert_eq!(
        retry(outcome, ErrorClass::RateLimited),
        Some(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let fake = ApnsFake::start().await;
    fake.push_reason(503, "ServiceUnavailable");
    fake.push_reason(500, "InternalServerError");
    let apns = provider(&fake, &fake.base_url(), TIMEOUT);
    let to = device(TOKEN, Platform::Apns);
    retry(
        apns.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await,
        ErrorClass::Server,
    );
    retry(
        apns.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await,
        ErrorClass::Server,
    );
    sent(apns.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let fake = ApnsFake::start().await;
    let silent = Silent::start().await;
    let apns = provider(&fake, &silent.url(), SHORT);
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    retry(outcome, ErrorClass::Timeout);

    let apns = provider(&fake, &fake.base_url(), SHORT);
    fake.push_scripted(Scripted::new(200, "", &[]).delayed(Duration::from_secs(2)));
    let outcome = apns
        .send(
            &push("t", "b"),
            &device(TOKEN, Platform::Apns),
            &ctx(Lane::Normal),
        )
        .await;
    retry(outcome, ErrorClass::Timeout);
}
