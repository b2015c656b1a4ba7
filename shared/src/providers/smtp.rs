//! Email over SMTP, through a pool of connections to one relay (`SMTP_URL`).
//!
//! `SMTP_URL` takes lettre's forms: `smtp://host:port` (no TLS: loopback and
//! test relays only), `smtp://host:port?tls=required` (STARTTLS, refused
//! without it), `smtps://user:pass@host` (TLS from the first byte, port 465).
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

use std::{fmt, sync::RwLock, time::Duration};

use tokio::sync::Semaphore;

use anyhow::Context as _;
use futures::future::BoxFuture;
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, SinglePart},
    transport::smtp::{self, PoolConfig},
};
use secrecy::{ExposeSecret, SecretString};

use super::{Destination, EmailMessage, ErrorClass, Outcome, Provider, Rendered, SendContext};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Sends email through an SMTP relay.
pub struct SmtpProvider {
    // Replaced whole after a timeout (see `send_email`); a std lock is enough
    // since it is held only to clone or swap the handle, never across I/O.
    transport: RwLock<Transport>,
    url: SecretString,
    timeout: Duration,
    pool_size: u32,
    /// One permit per SMTP session. lettre's pool caps only the connections
    /// it keeps idle, not those open at once: without this, a worker with
    /// hundreds of emails in flight would open hundreds of sessions, and
    /// close most of them again after one email each.
    sessions: Semaphore,
    from: Mailbox,
}

impl SmtpProvider {
    /// A pooled transport to `url` sending as `from` (`noreply@example.com`
    /// or `Example <noreply@example.com>`). Each send, connection included,
    /// must finish within `timeout`; at most `pool_size` sessions at once.
    pub fn new(url: &str, from: &str, timeout: Duration, pool_size: u32) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("EMAIL_FROM `{from}` is not an email address"))?;
        Ok(Self {
            transport: RwLock::new(transport(url, timeout, pool_size)?),
            url: SecretString::from(url),
            timeout,
            pool_size,
            sessions: Semaphore::new(pool_size.max(1) as usize),
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
        // Waiting for a session counts against the timeout too: it bounds
        // the whole send as the caller sees it.
        let started = tokio::time::Instant::now();
        let Ok(Ok(_session)) = tokio::time::timeout(self.timeout, self.sessions.acquire()).await
        else {
            return Outcome::Retry {
                class: ErrorClass::Timeout,
                reason: format!("smtp: no free session within {:?}", self.timeout),
                after: None,
            };
        };
        let transport = self
            .transport
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // lettre bounds only the connect by its timeout, not the replies, so
        // the whole session is bounded here.
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, transport.send(message)).await {
            Ok(Ok(_)) => Outcome::Sent {
                provider_id: Some(message_id),
            },
            Ok(Err(err)) => classify(&err),
            Err(_) => {
                // The abandoned connection may be mid-command, and lettre would
                // park it in the pool, where a late reply would be read as the
                // answer to the next command. A fresh pool leaves it behind; the
                // old one closes its connections once its last user is done.
                if let Ok(fresh) = transport_of(&self.url, self.timeout, self.pool_size) {
                    *self.transport.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                }
                Outcome::Retry {
                    class: ErrorClass::Timeout,
                    reason: format!("smtp: no answer within {:?}", self.timeout),
                    after: None,
                }
            }
        }
    }
}

/// A pooled transport to `url`.
fn transport(url: &str, timeout: Duration, pool_size: u32) -> anyhow::Result<Transport> {
    Ok(Transport::from_url(url)
        .context("SMTP_URL is not an smtp:// or smtps:// URL")?
        .timeout(Some(timeout))
        // A relay handles a number of parallel sessions well (SMTP_POOL_SIZE);
        // past its limit it answers 421. Idle connections are closed after a
        // minute, before most relays' own idle limit.
        .pool_config(
            PoolConfig::new()
                .max_size(pool_size.max(1))
                .idle_timeout(Duration::from_secs(60)),
        )
        .build())
}

fn transport_of(
    url: &SecretString,
    timeout: Duration,
    pool_size: u32,
) -> anyhow::Result<Transport> {
    transport(url.expose_secret(), timeout, pool_size)
}

impl fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn send<'a>(
        &'a self,
        message: &'a Rendered,
        to: &'a Destination,
        ctx: &'a SendContext,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match message {
                Rendered::Email(email) => self.send_email(email, &to.address, ctx).await,
                other => Outcome::wrong_channel("smtp", other),
            }
        })
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
