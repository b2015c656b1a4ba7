//! Twilio's Messages API against its fake, and against Twilio's own
//! published OpenAPI spec served by Prism.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use herald::{
    model::Lane,
    providers::{ErrorClass, Outcome, Provider, twilio::TwilioProvider},
};
use herald_tests::{
    fakes::{Silent, twilio::TwilioFake},
    prism::{Prism, spec},
};
use secrecy::SecretString;

use super::{SHORT, TIMEOUT, address, ctx, permanent, retry, sent, sms};

const FROM: &str = "+14155550111";
const TO: &str = "+14155550100";

fn provider(fake: &TwilioFake, token: &str, from: &str, timeout: Duration) -> TwilioProvider {
    TwilioProvider::new(
        &fake.base_url(),
        fake.account_sid(),
        SecretString::from(token),
        from,
        timeout,
    )
    .expect("provider")
}

#[tokio::test]
async fn posts_a_form_with_basic_auth() {
    let fake = TwilioFake::start().await;
    let twilio = provider(&fake, fake.auth_token(), FROM, TIMEOUT);
    let sid = sent(
        twilio
            .send(&sms("Code 123456"), &address(TO), &ctx(Lane::High))
            .await,
    )
    .expect("sid");
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        format!("/2010-04-01/Accounts/{}/Messages.json", fake.account_sid())
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    );
    let basic = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .expect("basic auth");
    let credentials = String::from_utf8(STANDARD.decode(basic).expect("base64")).expect("utf8");
    assert_eq!(
        credentials,
        format!("{}:{}", fake.account_sid(), fake.auth_token())
    );
    let form = r.form();
    assert_eq!(form["To"], TO);
    assert_eq!(form["From"], FROM);
    assert_eq!(form["Body"], "Code 123456");
}

#[tokio::test]
async fn a_messaging_service_sends_as_itself() {
    let fake = TwilioFake::start().await;
    let service = format!("MG{}", "0".repeat(32));
    let twilio = provider(&fake, fake.auth_token(), &service, TIMEOUT);
    sent(
        twilio
            .send(&sms("hi"), &address(TO), &ctx(Lane::Normal))
            .await,
    );
    let form = fake.requests()[0].form();
    assert_eq!(form["MessagingServiceSid"], service);
    assert!(!form.contains_key("From"));
}

#[tokio::test]
async fn error_codes_are_classified() {
    let fake = TwilioFake::start().await;
    let twilio = provider(&fake, fake.auth_token(), FROM, TIMEOUT);
    let (message, to, ctx) = (sms("hi"), address(TO), ctx(Lane::Normal));
    let send = || twilio.send(&message, &to, &ctx);

    fake.push_error(
        400,
        21211,
        "The 'To' number is not a valid phone number.",
        &[],
    );
    permanent(send().await, ErrorClass::InvalidAddress);
    fake.push_error(400, 21614, "'To' number is not a valid mobile number", &[]);
    permanent(send().await, ErrorClass::InvalidAddress);
    fake.push_error(400, 21610, "Attempt to send to unsubscribed recipient", &[]);
    permanent(send().await, ErrorClass::InvalidAddress);
    fake.push_error(
        400,
        21408,
        "Permission to send an SMS has not been enabled for the region",
        &[],
    );
    permanent(send().await, ErrorClass::Rejected);
    fake.push_error(429, 20429, "Too Many Requests", &[("retry-after", "4")]);
    assert_eq!(
        retry(send().await, ErrorClass::RateLimited),
        Some(Duration::from_secs(4))
    );
    fake.push_response(
        503,
        "Service Unavailable",
        &[("content-type", "text/plain")],
    );
    retry(send().await, ErrorClass::Server);
    sent(send().await);
}

#[tokio::test]
async fn a_wrong_auth_token_is_an_auth_failure() {
    let fake = TwilioFake::start().await;
    let twilio = provider(&fake, "not-the-token", FROM, TIMEOUT);
    let outcome = twilio
        .send(&sms("hi"), &address(TO), &ctx(Lane::Normal))
        .await;
    match &outcome {
        Outcome::Permanent { reason, .. } => {
            assert!(reason.contains("20003"), "{reason}");
            assert!(!reason.contains("not-the-token"), "secret in {reason}");
        }
        other => panic!("{other:?}"),
    }
    permanent(outcome, ErrorClass::Auth);
}

#[tokio::test]
async fn a_silent_api_times_out() {
    let silent = Silent::start().await;
    let twilio = TwilioProvider::new(
        &silent.url(),
        "AC00000000000000000000000000000000",
        SecretString::from("token"),
        FROM,
        SHORT,
    )
    .expect("provider");
    let outcome = twilio
        .send(&sms("hi"), &address(TO), &ctx(Lane::Normal))
        .await;
    retry(outcome, ErrorClass::Timeout);
}

/// Twilio's own contract, served by Prism: a well-formed send is created
/// (201), and a request the spec refuses (no `To`) is a permanent failure.
#[tokio::test]
async fn the_client_satisfies_twilios_published_spec() {
    let prism = Prism::start(spec("twilio/twilio_api_v2010.json")).await;
    let account = format!("AC{}", "a".repeat(32));
    let twilio = TwilioProvider::new(
        &prism.url(),
        &account,
        SecretString::from("token"),
        FROM,
        TIMEOUT,
    )
    .expect("provider")
    // The status callback URL is checked against the spec too (a `uri`).
    .with_status_callbacks(Some("https://herald.example.com"));

    let sid = sent(
        twilio
            .send(&sms("hello"), &address(TO), &ctx(Lane::Normal))
            .await,
    );
    assert!(sid.is_some_and(|s| s.starts_with("SM")));

    let outcome = twilio
        .post_message(&[("From", FROM), ("Body", "no recipient")])
        .await;
    match &outcome {
        Outcome::Permanent { reason, .. } => assert!(reason.contains("422"), "{reason}"),
        other => panic!("{other:?}"),
    }
    permanent(outcome, ErrorClass::Rejected);
}
