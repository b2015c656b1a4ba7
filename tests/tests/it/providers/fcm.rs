//! FCM HTTP v1 against its fake.

use std::time::Duration;

use herald::{
    model::{Lane, user::Platform},
    providers::{
        ErrorClass, Provider,
        fcm::{FcmProvider, ServiceAccount},
    },
};
use herald_tests::fakes::{Scripted, Silent, closed_port, fcm::FcmFake};

use super::{SHORT, TIMEOUT, ctx, device, permanent, push, retry, sent};

fn provider(fake: &FcmFake, base_url: &str, timeout: Duration) -> FcmProvider {
    let account = ServiceAccount::from_file(&fake.credentials_file(), None).expect("credentials");
    FcmProvider::new(base_url, fake.project_id(), account, timeout).expect("provider")
}

#[tokio::test]
async fn sends_with_an_oauth_token_and_the_v1_message_shape() {
    let fake = FcmFake::start().await;
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let mut ctx = ctx(Lane::High);
    ctx.expires_at = Some(chrono::Utc::now() + chrono::Duration::minutes(10));

    let id = sent(
        fcm.send(
            &push("Shipped", "On its way"),
            &device("tok-1", Platform::Fcm),
            &ctx,
        )
        .await,
    );
    assert!(
        id.as_deref()
            .is_some_and(|id| id.starts_with("projects/herald-test/messages/")),
        "{id:?}"
    );

    let grants = fake.token_requests();
    assert_eq!(grants.len(), 1);
    let form = grants[0].form();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let header = jsonwebtoken::decode_header(&form["assertion"]).expect("a JWT");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);

    let sends = fake.requests();
    assert_eq!(sends.len(), 1);
    let request = &sends[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/projects/herald-test/messages:send");
    assert!(
        request
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ya29.fake-"))
    );
    assert!(
        request
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let message = &request.json()["message"];
    assert_eq!(message["token"], "tok-1");
    assert_eq!(message["notification"]["title"], "Shipped");
    assert_eq!(message["notification"]["body"], "On its way");
    assert_eq!(message["data"]["order_id"], "A-991");
    assert_eq!(message["android"]["priority"], "HIGH");
    assert_eq!(
        message["android"]["collapse_key"],
        ctx.notification_id.to_string()
    );
    let ttl = message["android"]["ttl"].as_str().expect("ttl");
    let secs: i64 = ttl.trim_end_matches('s').parse().expect("seconds");
    assert!((590..=600).contains(&secs), "{ttl}");
}

#[tokio::test]
async fn one_token_serves_many_sends() {
    let fake = FcmFake::start().await;
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    for i in 0..3 {
        let to = device(&format!("tok-{i}"), Platform::Fcm);
        sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);
    }
    assert_eq!(fake.token_requests().len(), 1);
    let auths: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(auths.len(), 3);
    assert!(auths.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn a_token_about_to_expire_is_replaced() {
    let fake = FcmFake::start().await;
    // Two seconds to live: already inside the refresh margin.
    fake.set_token_ttl(2);
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let to = device("tok", Platform::Fcm);
    sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);
    assert_eq!(fake.token_requests().len(), 2);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once() {
    let fake = FcmFake::start().await;
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let to = device("tok", Platform::Fcm);
    sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);

    fake.revoke_tokens();
    sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);

    assert_eq!(fake.token_requests().len(), 2);
    let sends = fake.requests();
    assert_eq!(sends.len(), 3, "first send, refused send, retried send");
    assert_ne!(
        sends[1].header("authorization"),
        sends[2].header("authorization")
    );
}

#[tokio::test]
async fn a_second_401_is_an_auth_failure() {
    let fake = FcmFake::start().await;
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    for _ in 0..2 {
        fake.push_error(401, "UNAUTHENTICATED", "UNAUTHENTICATED", &[]);
    }
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(!permanent(outcome, ErrorClass::Auth));
    assert_eq!(fake.token_requests().len(), 2, "one refresh, no more");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_refused_grant_is_an_auth_failure() {
    let fake = FcmFake::start().await;
    fake.push_token_response(
        400,
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    );
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    permanent(outcome, ErrorClass::Auth);
    assert!(fake.requests().is_empty(), "no send without a token");
}

#[tokio::test]
async fn unregistered_tokens_are_deactivated() {
    let fake = FcmFake::start().await;
    fake.push_error(404, "NOT_FOUND", "UNREGISTERED", &[]);
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("gone", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::Unregistered));
}

#[tokio::test]
async fn a_malformed_token_is_an_invalid_address() {
    let fake = FcmFake::start().await;
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    // The fake, like FCM, refuses an empty token with INVALID_ARGUMENT.
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(permanent(outcome, ErrorClass::InvalidAddress));
}

#[tokio::test]
async fn quota_exceeded_honours_retry_after() {
    let fake = FcmFake::start().await;
    fake.push_error(
        429,
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        &[("retry-after", "17")],
    );
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    assert_eq!(
        retry(outcome, ErrorClass::RateLimited),
        Some(Duration::from_secs(17))
    );
}

#[tokio::test]
async fn unavailable_is_retried_then_succeeds() {
    let fake = FcmFake::start().await;
    fake.push_error(503, "UNAVAILABLE", "UNAVAILABLE", &[("retry-after", "3")]);
    fake.push_error(500, "INTERNAL", "INTERNAL", &[]);
    let fcm = provider(&fake, &fake.base_url(), TIMEOUT);
    let to = device("tok", Platform::Fcm);
    let after = retry(
        fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await,
        ErrorClass::Server,
    );
    assert_eq!(after, Some(Duration::from_secs(3)));
    assert_eq!(
        retry(
            fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await,
            ErrorClass::Server
        ),
        None
    );
    sent(fcm.send(&push("t", "b"), &to, &ctx(Lane::Normal)).await);
}

#[tokio::test]
async fn a_send_that_is_never_answered_times_out() {
    let fake = FcmFake::start().await;
    let silent = Silent::start().await;
    // Tokens from the fake, sends to a peer that never answers.
    let fcm = provider(&fake, &silent.url(), SHORT);
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    retry(outcome, ErrorClass::Timeout);

    // And a slow answer from FCM itself.
    let fcm = provider(&fake, &fake.base_url(), SHORT);
    fake.push_scripted(Scripted::new(200, "{}", &[]).delayed(Duration::from_secs(2)));
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    retry(outcome, ErrorClass::Timeout);
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let fake = FcmFake::start().await;
    let base = format!("http://127.0.0.1:{}", closed_port().await);
    let fcm = provider(&fake, &base, TIMEOUT);
    let outcome = fcm
        .send(
            &push("t", "b"),
            &device("tok", Platform::Fcm),
            &ctx(Lane::Normal),
        )
        .await;
    retry(outcome, ErrorClass::Connection);
}
