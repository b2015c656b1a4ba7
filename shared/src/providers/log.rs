//! The `log` provider: the embedded default. It writes the delivery it would
//! have made to the log and reports it sent, so the whole pipeline runs with
//! no provider credentials.
//!
//! It logs facts about the message, never its words: one-time codes and
//! password-reset links travel in SMS text, push bodies and email subjects,
//! and logs are kept longer and read by more people than the messages. The
//! address is masked; the content is described by its lengths only (no hash
//! either: a hash of a six-digit code is reversed by trying a million codes).

use futures::future::BoxFuture;

use super::{Destination, Outcome, Provider, Rendered, SendContext};
use crate::model::user::mask;

/// Logs instead of sending.
#[derive(Debug, Default, Clone)]
pub struct LogProvider;

/// Length in characters of an optional part (0 when absent).
fn chars(text: Option<&str>) -> usize {
    text.map_or(0, |t| t.chars().count())
}

impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(
        &'a self,
        message: &'a Rendered,
        to: &'a Destination,
        ctx: &'a SendContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let to = mask(&to.address);
            let (delivery_id, notification_id) = (ctx.delivery_id, ctx.notification_id);
            match message {
                Rendered::Push(p) => tracing::info!(
                    provider = "log",
                    channel = "push",
                    %delivery_id,
                    %notification_id,
                    %to,
                    title_chars = chars(p.title.as_deref()),
                    body_chars = chars(p.body.as_deref()),
                    data_keys = p.data.len(),
                    "would deliver"
                ),
                Rendered::Email(e) => tracing::info!(
                    provider = "log",
                    channel = "email",
                    %delivery_id,
                    %notification_id,
                    %to,
                    subject_chars = chars(Some(&e.subject)),
                    text_chars = chars(e.text.as_deref()),
                    html_chars = chars(e.html.as_deref()),
                    "would deliver"
                ),
                Rendered::Sms(s) => tracing::info!(
                    provider = "log",
                    channel = "sms",
                    %delivery_id,
                    %notification_id,
                    %to,
                    text_chars = chars(Some(&s.text)),
                    "would deliver"
                ),
            }
            Outcome::Sent {
                provider_id: Some(format!("log-{}", ctx.delivery_id)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        model::Lane,
        providers::{EmailMessage, PushMessage, SmsMessage},
    };

    /// Collects what the `fmt` layer writes, as JSON lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(message: Rendered, address: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let ctx = SendContext {
            delivery_id: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            notification_id: uuid::Uuid::new_v4(),
            lane: Lane::High,
            expires_at: None,
        };
        let to = Destination {
            address: address.into(),
            platform: None,
        };
        tracing::subscriber::with_default(subscriber, || {
            let outcome = futures::executor::block_on(LogProvider.send(&message, &to, &ctx));
            assert!(matches!(outcome, Outcome::Sent { .. }));
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains(&ctx.delivery_id.to_string()), "{out}");
        out
    }

    #[test]
    fn sms_text_is_never_logged() {
        let out = logged(
            Rendered::Sms(SmsMessage {
                text: "Your code is 493817".into(),
            }),
            "+14155550100",
        );
        assert!(
            !out.contains("493817") && !out.contains("Your code"),
            "{out}"
        );
        assert!(!out.contains("+14155550100"), "the number is masked: {out}");
        assert!(out.contains(r#""text_chars":19"#), "{out}");
        assert!(out.contains(r#""channel":"sms""#), "{out}");
    }

    #[test]
    fn push_title_body_and_data_are_never_logged() {
        let out = logged(
            Rendered::Push(PushMessage {
                title: Some("Sign-in code".into()),
                body: Some("Use 771204 to sign in".into()),
                data: [("code".to_owned(), "771204".to_owned())].into(),
            }),
            "device-token-abcdefghijklmnop",
        );
        for secret in ["771204", "Sign-in code", "device-token-abcdefghijklmnop"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains(r#""body_chars":21"#), "{out}");
        assert!(out.contains(r#""data_keys":1"#), "{out}");
    }

    #[test]
    fn email_subject_and_bodies_are_never_logged() {
        let out = logged(
            Rendered::Email(EmailMessage {
                subject: "Your reset code: 550912".into(),
                text: Some("Reset with 550912".into()),
                html: Some("<p>Reset with 550912</p>".into()),
            }),
            "ada@example.com",
        );
        assert!(
            !out.contains("550912") && !out.contains("reset code"),
            "{out}"
        );
        assert!(!out.contains("ada@example.com"), "{out}");
        assert!(out.contains(r#""subject_chars":23"#), "{out}");
    }
}
