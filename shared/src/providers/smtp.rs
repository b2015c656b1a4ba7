//! Email over SMTP, through up to `SMTP_POOL_SIZE` sessions to one relay
//! (`SMTP_URL`), kept open between emails (see `sessions`).
//!
//! `SMTP_URL` takes lettre's forms: `smtp://host:port` (no TLS: loopback and
//! test relays only), `smtp://host:port?tls=required` (STARTTLS, refused
//! without it), `smtps://user:pass@host` (TLS from the first byte, port 465).
//! TLS trusts the platform's authorities and those of `SMTP_CA_FILE`.
//!
//! | answer | outcome |
//! |---|---|
//! | 250 after the message | `Sent`, provider id = our `Message-ID` |
//! | an address Herald cannot even parse | `Permanent(InvalidAddress)`, the relay is not contacted |
//! | 5xx about the recipient (550, 551, 553, or enhanced `5.1.x`, `5.2.1`) | `Permanent(InvalidAddress)` |
//! | 530, 534, 535, 538 (authentication) | `Permanent(Auth)` |
//! | other 5xx (policy `5.7.x`, size, content) | `Permanent(Rejected)` |
//! | 4xx (greylisting, full queue, try later) | `Retry(Server)` |
//! | no end to the session in time / connection refused, broken or TLS failed | `Retry(Timeout)` / `Retry(Connection)` |

use std::{fmt, time::Duration};

use anyhow::Context as _;
use lettre::{
    Address, Message,
    message::{Mailbox, MultiPart, SinglePart},
    transport::smtp,
};

use super::{ChannelProvider, Destination, EmailMessage, ErrorClass, Outcome, SendContext};

mod sessions;

use sessions::{Failure, Sessions};

/// Sends email through an SMTP relay.
pub struct SmtpProvider {
    sessions: Sessions,
    timeout: Duration,
    from: Mailbox,
}

impl SmtpProvider {
    /// Sessions to the relay at `url`, sending as `from`
    /// (`noreply@example.com` or `Example <noreply@example.com>`). Each send,
    /// waiting for a session and connecting included, must finish within
    /// `timeout`; at most `pool_size` sessions are open at once. `ca_pem`
    /// adds certificate authorities to trust for the relay's TLS.
    pub fn new(
        url: &str,
        from: &str,
        timeout: Duration,
        pool_size: u32,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("EMAIL_FROM `{from}` is not an email address"))?;
        Ok(Self {
            sessions: Sessions::new(url, pool_size, ca_pem)?,
            timeout,
            from,
        })
    }

    async fn send_email(&self, email: &EmailMessage, to: &str, ctx: &SendContext) -> Outcome {
        let to = match to.parse::<Address>() {
            Ok(address) => Mailbox::new(None, address),
            Err(err) => {
                return Outcome::Permanent {
                    class: ErrorClass::InvalidAddress,
                    reason: format!("smtp: `{}`: {err}", crate::model::user::mask(to)),
                    deactivate: false,
                };
            }
        };
        // The delivery id makes the Message-ID stable across retries, so a
        // relay or mailbox that de-duplicates on it sees one email.
        let message_id = format!("<{}@{}>", ctx.delivery_id, self.from.email.domain());
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(message_id.clone()));
        let built = match (&email.text, &email.html) {
            (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(
                text.clone(),
                html.clone(),
            )),
            (None, Some(html)) => builder.singlepart(SinglePart::html(html.clone())),
            (text, None) => builder.singlepart(SinglePart::plain(text.clone().unwrap_or_default())),
        };
        let message = match built {
            Ok(message) => message,
            Err(err) => {
                return Outcome::Permanent {
                    class: ErrorClass::Rejected,
                    reason: format!("smtp: cannot build the message: {err}"),
                    deactivate: false,
                };
            }
        };
        let sent = self
            .sessions
            .send(message.envelope(), &message.formatted(), self.timeout)
            .await;
        match sent {
            Ok(()) => Outcome::Sent {
                provider_id: Some(message_id),
            },
            Err(Failure::Smtp(err)) => classify(&err),
            Err(Failure::Connect(err)) => Outcome::Retry {
                class: ErrorClass::Connection,
                reason: format!("smtp: cannot connect to the relay: {err}"),
                after: None,
            },
            Err(Failure::Busy) => Outcome::Retry {
                class: ErrorClass::Timeout,
                reason: format!("smtp: no free session within {:?}", self.timeout),
                after: None,
            },
            Err(Failure::Timeout) => Outcome::Retry {
                class: ErrorClass::Timeout,
                reason: format!("smtp: no answer within {:?}", self.timeout),
                after: None,
            },
        }
    }
}

impl fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl ChannelProvider for SmtpProvider {
    type Message = EmailMessage;
    const NAME: &'static str = "smtp";

    async fn deliver(&self, email: &EmailMessage, to: &Destination, ctx: &SendContext) -> Outcome {
        self.send_email(email, &to.address, ctx).await
    }
}

/// Classifies a failed SMTP transaction (see the module's table).
pub fn classify(err: &smtp::Error) -> Outcome {
    // lettre's message already carries the relay's reply or the I/O error.
    let reason = format!("smtp: {err}");
    if err.is_timeout() {
        return Outcome::Retry {
            class: ErrorClass::Timeout,
            reason,
            after: None,
        };
    }
    match err.status() {
        Some(code) if err.is_permanent() => {
            let basic: u16 = code.to_string().parse().unwrap_or(500);
            Outcome::Permanent {
                class: permanent_class(basic, &reason),
                reason,
                deactivate: false,
            }
        }
        Some(_) => Outcome::Retry {
            class: ErrorClass::Server,
            reason,
            after: None,
        },
        None => Outcome::Retry {
            class: ErrorClass::Connection,
            reason,
            after: None,
        },
    }
}

/// The class of a permanent (5xx) reply. The enhanced status code (RFC 3463),
/// when the relay gives one, says what failed more precisely than the basic
/// code: `550 5.7.1` is a policy refusal, not an unknown mailbox.
fn permanent_class(basic: u16, text: &str) -> ErrorClass {
    if matches!(basic, 530 | 534 | 535 | 538) {
        return ErrorClass::Auth;
    }
    match enhanced_code(text) {
        Some((5, 1, _)) | Some((5, 2, 1)) => ErrorClass::InvalidAddress,
        Some(_) => ErrorClass::Rejected,
        None if matches!(basic, 550 | 551 | 553) => ErrorClass::InvalidAddress,
        None => ErrorClass::Rejected,
    }
}

/// The first `class.subject.detail` enhanced status code in a reply.
fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == '(' || c == ')')
        .find_map(|word| {
            let mut parts = word.splitn(3, '.');
            let class: u8 = parts.next()?.parse().ok()?;
            let subject: u16 = parts.next()?.parse().ok()?;
            let detail: u16 = parts.next()?.parse().ok()?;
            matches!(class, 2 | 4 | 5).then_some((class, subject, detail))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_decide_permanent_classes() {
        assert_eq!(
            enhanced_code("permanent error (550): 5.1.1 <a@b.c>: unknown"),
            Some((5, 1, 1))
        );
        assert_eq!(
            enhanced_code("permanent error (550): mailbox unavailable"),
            None
        );
        assert_eq!(
            permanent_class(550, "550 5.1.1 user unknown"),
            ErrorClass::InvalidAddress
        );
        assert_eq!(
            permanent_class(550, "550 5.2.1 mailbox disabled"),
            ErrorClass::InvalidAddress
        );
        assert_eq!(
            permanent_class(550, "550 5.7.1 message refused as spam"),
            ErrorClass::Rejected
        );
        assert_eq!(
            permanent_class(553, "553 mailbox name not allowed"),
            ErrorClass::InvalidAddress
        );
        assert_eq!(
            permanent_class(552, "552 message too big"),
            ErrorClass::Rejected
        );
        assert_eq!(
            permanent_class(535, "535 5.7.8 bad credentials"),
            ErrorClass::Auth
        );
    }
}
