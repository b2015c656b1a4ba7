//! Secrets set in the environment never show in any binary's `--help`.

use herald_tests::binary;
use tokio::process::Command;

/// Every secret a deployment passes in the environment, with a value that
/// cannot appear in help text by chance.
const SECRETS: [(&str, &str); 8] = [
    (
        "DATABASE_URL",
        "postgres://herald:pg-pass-4b1d@db.internal:5432/herald",
    ),
    (
        "AMQP_URL",
        "amqps://herald:mq-pass-77c3@mq.internal:5671/%2f",
    ),
    ("ADMIN_API_KEY", "admin-key-0f9e8d7c6b5a4938"),
    ("SMTP_URL", "smtps://mailer:smtp-pass-5e6f@smtp.internal"),
    ("TWILIO_AUTH_TOKEN", "twilio-token-a1b2c3d4"),
    ("EMAIL_HTTP_TOKEN", "email-token-e5f6a7b8"),
    (
        "EMAIL_HTTP_URL",
        "https://api:url-key-c9d0@mail.internal/send",
    ),
    ("TWILIO_ACCOUNT_SID", "AC-not-secret-but-set"),
];

/// The distinctive part of each secret value.
const NEEDLES: [&str; 7] = [
    "pg-pass-4b1d",
    "mq-pass-77c3",
    "admin-key-0f9e8d7c6b5a4938",
    "smtp-pass-5e6f",
    "twilio-token-a1b2c3d4",
    "email-token-e5f6a7b8",
    "url-key-c9d0",
];

#[tokio::test]
async fn no_binary_prints_a_secret_in_its_help() {
    let runs: [(&str, &[&str]); 8] = [
        ("ingest", &["--help"]),
        ("router", &["--help"]),
        ("worker-push", &["--help"]),
        ("worker-email", &["--help"]),
        ("worker-sms", &["--help"]),
        ("heraldctl", &["--help"]),
        ("heraldctl", &["keys", "--help"]),
        ("heraldctl", &["dlq", "list", "--help"]),
    ];
    for (name, args) in runs {
        let mut cmd = Command::new(binary(name));
        cmd.args(args).envs(SECRETS).kill_on_drop(true);
        let out = cmd.output().await.expect("runs");
        assert!(out.status.success(), "{name} {args:?} fails");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The variables are documented; only their values are hidden.
        if args == ["--help"] {
            assert!(text.contains("DATABASE_URL"), "{name}: {text}");
        }
        for needle in NEEDLES {
            assert!(
                !text.contains(needle),
                "{name} {args:?} shows {needle}:\n{text}"
            );
        }
    }
}

/// A run of 40 characters from the middle of `secret`, long enough that it
/// cannot appear by chance.
fn chunk(secret: &str) -> String {
    let compact: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    compact.chars().skip(compact.len() / 2).take(40).collect()
}

#[tokio::test]
async fn provider_clients_never_show_their_credentials() {
    use std::time::Duration;

    use herald::providers::{
        apns::ApnsKey, fcm::ServiceAccount, http_email::HttpEmailProvider, smtp::SmtpProvider,
        twilio::TwilioProvider,
    };
    use herald_tests::fakes::{apns::ApnsFake, fcm::FcmFake};

    let fcm = FcmFake::start().await;
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fcm.credentials_file()).unwrap()).unwrap();
    let fcm_key = chunk(credentials["private_key"].as_str().unwrap());
    let account = ServiceAccount::from_file(&fcm.credentials_file(), None).unwrap();
    let shown = format!("{account:?}");
    assert!(!fcm_key.is_empty() && !shown.contains(&fcm_key), "{shown}");

    let apns = ApnsFake::start().await;
    let apns_key = chunk(&std::fs::read_to_string(apns.key_file()).unwrap());
    let key = ApnsKey::from_file(&apns.key_file(), apns.key_id(), apns.team_id()).unwrap();
    let shown = format!("{key:?}");
    assert!(
        !apns_key.is_empty() && !shown.contains(&apns_key),
        "{shown}"
    );

    let timeout = Duration::from_secs(1);
    let twilio = TwilioProvider::new(
        "http://127.0.0.1:1",
        "AC123",
        "twilio-token-a1b2c3d4".to_owned().into(),
        "+15005550006",
        timeout,
    )
    .unwrap();
    let http = HttpEmailProvider::new(
        "https://api:url-key-c9d0@mail.internal/send",
        Some("email-token-e5f6a7b8".to_owned().into()),
        "noreply@example.com",
        timeout,
    )
    .unwrap();
    let smtp = SmtpProvider::new(
        "smtp://mailer:smtp-pass-5e6f@127.0.0.1:2525",
        "noreply@example.com",
        timeout,
        1,
        None,
    )
    .unwrap();
    let shown = format!("{twilio:?} {http:?} {smtp:?}");
    for needle in NEEDLES {
        assert!(!shown.contains(needle), "{needle} in {shown}");
    }
}
