//! The generic HTTP email API against its fake.

use std::time::Duration;

use herald::{
    model::Lane,
    providers::{ErrorClass, Provider, http_email::HttpEmailProvider},
};
use herald_tests::fakes::email_api::EmailApiFake;
use secrecy::SecretString;

use super::{TIMEOUT, address, ctx, email, permanent, retry, sent};

fn provider(fake: &EmailApiFake, token: &str) -> HttpEmailProvider {
    HttpEmailProvider::new(
        &fake.url(),
        Some(SecretString::from(token)),
        "noreply@example.com",
        TIMEOUT,
    )
    .expect("provider")
}

#[tokio::test]
async fn posts_json_with_a_bearer_token() {
    let fake = EmailApiFake::start().await;
    let api = provider(&fake, fake.token());
    let ctx = ctx(Lane::Normal);
    let id = sent(
        api.send(
            &email("Hello", Some("text"), Some("<p>html</p>")),
            &address("ada@example.com"),
            &ctx,
        )
        .await,
    );
    assert!(id.is_some_and(|id| id.starts_with("em_")));
    let r = &fake.requests()[0];
    let bearer = format!("Bearer {}", fake.token());
    assert_eq!(r.header("authorization"), Some(bearer.as_str()));
    let key = ctx.delivery_id.to_string();
    assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    assert_eq!(
        r.json(),
        serde_json::json!({
            "from": "noreply@example.com",
            "to": "ada@example.com",
            "subject": "Hello",
            "text": "text",
            "html": "<p>html</p>",
        })
    );
}

#[tokio::test]
async fn answers_are_classified() {
    let fake = EmailApiFake::start().await;
    let api = provider(&fake, fake.token());
    let (message, to, ctx) = (
        email("s", Some("t"), None),
        address("ada@example.com"),
        ctx(Lane::Normal),
    );
    let send = || api.send(&message, &to, &ctx);
    fake.push_response(429, "{}", &[("retry-after", "9")]);
    assert_eq!(
        retry(send().await, ErrorClass::RateLimited),
        Some(Duration::from_secs(9))
    );
    fake.push_response(502, "bad gateway", &[]);
    retry(send().await, ErrorClass::Server);
    fake.push_response(
        422,
        r#"{"errors":[{"field":"to","message":"is not a valid email address"}]}"#,
        &[],
    );
    permanent(send().await, ErrorClass::InvalidAddress);
    fake.push_response(400, r#"{"error":"subject is required"}"#, &[]);
    permanent(send().await, ErrorClass::Rejected);
    sent(send().await);

    let wrong = provider(&fake, "wrong");
    let outcome = wrong.send(&message, &to, &ctx).await;
    permanent(outcome, ErrorClass::Auth);
}
