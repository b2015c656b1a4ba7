//! The `log` provider: the embedded default. It writes the delivery it would
//! have made to the log (address masked) and reports it sent, so the whole
//! pipeline runs with no provider credentials.

use futures::future::BoxFuture;

use super::{Destination, Outcome, Provider, Rendered, SendContext};
use crate::model::user::mask;

/// Logs instead of sending.
#[derive(Debug, Default, Clone)]
pub struct LogProvider;

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
            let (channel, summary) = match message {
                Rendered::Push(p) => (
                    "push",
                    format!(
                        "{} | {}",
                        p.title.as_deref().unwrap_or(""),
                        p.body.as_deref().unwrap_or("")
                    ),
                ),
                Rendered::Email(e) => ("email", e.subject.clone()),
                Rendered::Sms(s) => ("sms", s.text.clone()),
            };
            tracing::info!(
                provider = "log",
                channel,
                delivery_id = %ctx.delivery_id,
                notification_id = %ctx.notification_id,
                to = %mask(&to.address),
                content = %summary,
                "would deliver"
            );
            Outcome::Sent {
                provider_id: Some(format!("log-{}", ctx.delivery_id)),
            }
        })
    }
}
