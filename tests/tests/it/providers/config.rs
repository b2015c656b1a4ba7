//! `providers::config::build`: settings in, the right provider per
//! destination out, each talking to its fake.

use herald::{
    model::{Channel, Lane, user::Platform},
    providers::{
        Destination, ErrorClass,
        config::{EmailProviderKind, ProviderConfig, PushProviderKind, SmsProviderKind, build},
    },
};
use herald_tests::fakes::{apns::ApnsFake, fcm::FcmFake, smtp::SmtpFake, twilio::TwilioFake};

use super::{address, ctx, device, email, permanent, push, sent, sms};

const APNS_TOKEN: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";

#[tokio::test]
async fn push_goes_to_the_platform_of_the_device() {
    let fcm = FcmFake::start().await;
    let apns = ApnsFake::start().await;
    let cfg = ProviderConfig {
        push_provider: vec![PushProviderKind::Fcm, PushProviderKind::Apns],
        fcm_base_url: fcm.base_url(),
        fcm_credentials_file: Some(fcm.credentials_file()),
        // The project id comes from the credentials file.
        apns_base_url: apns.base_url(),
        apns_key_file: Some(apns.key_file()),
        apns_key_id: Some(apns.key_id().into()),
        apns_team_id: Some(apns.team_id().into()),
        apns_topic: Some(apns.topic().into()),
        ..ProviderConfig::default()
    };
    let set = build(Channel::Push, &cfg).expect("builds");
    assert_eq!(set.names(), ["fcm", "apns"]);

    for to in [
        device("android-token", Platform::Fcm),
        device(APNS_TOKEN, Platform::Apns),
    ] {
        let provider = set.for_destination(&to);
        sent(
            provider
                .send(&push("t", "b"), &to, &ctx(Lane::Normal))
                .await,
        );
    }
    assert_eq!(fcm.requests().len(), 1);
    assert_eq!(apns.requests().len(), 1);

    let unknown = Destination {
        address: "token".into(),
        platform: None,
    };
    let outcome = set
        .for_destination(&unknown)
        .send(&push("t", "b"), &unknown, &ctx(Lane::Normal))
        .await;
    permanent(outcome, ErrorClass::Config);
}

#[tokio::test]
async fn a_platform_left_unconfigured_fails_instead_of_logging() {
    let fcm = FcmFake::start().await;
    let cfg = ProviderConfig {
        push_provider: vec![PushProviderKind::Fcm],
        fcm_base_url: fcm.base_url(),
        fcm_credentials_file: Some(fcm.credentials_file()),
        fcm_token_url: Some(fcm.token_url()),
        fcm_project_id: Some(fcm.project_id().into()),
        ..ProviderConfig::default()
    };
    let set = build(Channel::Push, &cfg).expect("builds");
    assert_eq!(set.names(), ["fcm"]);
    let iphone = device(APNS_TOKEN, Platform::Apns);
    let outcome = set
        .for_destination(&iphone)
        .send(&push("t", "b"), &iphone, &ctx(Lane::Normal))
        .await;
    match &outcome {
        herald::providers::Outcome::Permanent { reason, .. } => {
            assert!(
                reason.contains("apns") && reason.contains("PUSH_PROVIDER=fcm"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    permanent(outcome, ErrorClass::Config);
}

#[tokio::test]
async fn email_and_sms_use_their_configured_provider() {
    let relay = SmtpFake::start().await;
    let twilio = TwilioFake::start().await;
    let cfg = ProviderConfig {
        email_provider: EmailProviderKind::Smtp,
        smtp_url: Some(relay.url().into()),
        email_from: Some("noreply@example.com".into()),
        sms_provider: SmsProviderKind::Twilio,
        twilio_base_url: twilio.base_url(),
        twilio_account_sid: Some(twilio.account_sid().into()),
        twilio_auth_token: Some(twilio.auth_token().into()),
        twilio_from: Some("+14155550111".into()),
        ..ProviderConfig::default()
    };

    let emails = build(Channel::Email, &cfg).expect("email builds");
    assert_eq!(emails.names(), ["smtp"]);
    let to = address("ada@example.com");
    sent(
        emails
            .for_destination(&to)
            .send(&email("s", Some("t"), None), &to, &ctx(Lane::Normal))
            .await,
    );
    assert_eq!(relay.messages().len(), 1);

    let texts = build(Channel::Sms, &cfg).expect("sms builds");
    assert_eq!(texts.names(), ["twilio"]);
    let to = address("+14155550100");
    sent(
        texts
            .for_destination(&to)
            .send(&sms("hi"), &to, &ctx(Lane::Normal))
            .await,
    );
    assert_eq!(twilio.requests().len(), 1);

    let no_sender = ProviderConfig {
        email_from: None,
        ..cfg
    };
    let err = build(Channel::Email, &no_sender).expect_err("EMAIL_FROM is required");
    assert!(format!("{err:#}").contains("EMAIL_FROM"), "{err:#}");
}

#[tokio::test]
async fn an_email_failover_must_be_a_second_configured_provider() {
    let relay = SmtpFake::start().await;
    let base = ProviderConfig {
        email_provider: EmailProviderKind::Smtp,
        smtp_url: Some(relay.url().into()),
        email_from: Some("noreply@example.com".into()),
        email_failover_provider: Some(EmailProviderKind::Http),
        email_http_url: Some("http://127.0.0.1:9/send".into()),
        ..ProviderConfig::default()
    };
    let set = build(Channel::Email, &base).expect("builds");
    assert_eq!(set.names(), ["smtp", "http"]);

    for (failover, http_url, expected) in [
        (
            EmailProviderKind::Http,
            None,
            "EMAIL_FAILOVER_PROVIDER=http needs EMAIL_HTTP_URL",
        ),
        (
            EmailProviderKind::Smtp,
            Some("http://x"),
            "same as EMAIL_PROVIDER",
        ),
        (
            EmailProviderKind::Log,
            Some("http://x"),
            "without sending them",
        ),
    ] {
        let cfg = ProviderConfig {
            email_failover_provider: Some(failover),
            email_http_url: http_url.map(str::to_owned),
            ..base.clone()
        };
        let err = build(Channel::Email, &cfg).expect_err("refused");
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
}

#[tokio::test]
async fn smtp_trusts_the_authorities_of_smtp_ca_file() {
    use herald_tests::fakes::smtp::Tls;
    let relay = SmtpFake::start_with(Tls::StartTls).await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let cfg = ProviderConfig {
        email_provider: EmailProviderKind::Smtp,
        smtp_url: Some(relay.url().into()),
        smtp_ca_file: Some(fixtures.join("ca.pem")),
        email_from: Some("noreply@example.com".into()),
        ..ProviderConfig::default()
    };
    let set = build(Channel::Email, &cfg).expect("builds");
    let to = address("ada@example.com");
    sent(
        set.for_destination(&to)
            .send(&email("s", Some("t"), None), &to, &ctx(Lane::Normal))
            .await,
    );
    assert_eq!(relay.encrypted_sessions(), 1);

    let missing = ProviderConfig {
        smtp_ca_file: Some(fixtures.join("missing.pem")),
        ..cfg
    };
    let err = build(Channel::Email, &missing).expect_err("unreadable CA file");
    assert!(format!("{err:#}").contains("SMTP_CA_FILE"), "{err:#}");
}
