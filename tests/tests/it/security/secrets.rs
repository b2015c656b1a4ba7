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
