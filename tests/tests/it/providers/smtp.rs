//! SMTP against the fake relay.

use std::time::Duration;

use herald::{
    model::Lane,
    providers::{ErrorClass, Outcome, Provider, smtp::SmtpProvider},
};
use herald_tests::fakes::{
    Silent, closed_port,
    smtp::{CA_PEM, SmtpFake, Tls},
};

use super::{SHORT, TIMEOUT, address, ctx, email, permanent, retry, sent};

const FROM: &str = "Herald <noreply@example.com>";

fn provider(url: &str, timeout: Duration) -> SmtpProvider {
    SmtpProvider::new(url, FROM, timeout, 4, None).expect("provider")
}

/// One plain email to ada@example.com.
async fn send_to_ada(smtp: &SmtpProvider) -> Outcome {
    smtp.send(
        &email("s", Some("t"), None),
        &address("ada@example.com"),
        &ctx(Lane::Normal),
    )
    .await
}

#[tokio::test]
async fn sends_multipart_alternative_through_the_relay() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), TIMEOUT);
    let ctx = ctx(Lane::Normal);
    let message = email(
        "Your order shipped",
        Some("Hi Ada,\r\n.a line starting with a dot\r\nBye"),
        Some("<p>Hi Ada</p>"),
    );

    let id = sent(smtp.send(&message, &address("ada@example.com"), &ctx).await);
    assert_eq!(id, Some(format!("<{}@example.com>", ctx.delivery_id)));

    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "noreply@example.com");
    assert_eq!(m.to, ["ada@example.com"]);
    assert!(m.data.contains("Subject: Your order shipped"), "{}", m.data);
    assert!(m.data.contains("From: Herald <noreply@example.com>"));
    assert!(m.data.contains("To: ada@example.com"));
    assert!(
        m.data
            .contains(&format!("Message-ID: <{}@example.com>", ctx.delivery_id))
    );
    assert!(m.data.contains("multipart/alternative"));
    assert!(m.data.contains("text/plain"));
    assert!(m.data.contains("text/html"));
    assert!(m.data.contains("<p>Hi Ada</p>"));
    // Dot-stuffed on the wire, unstuffed by the relay: the text is intact.
    assert!(m.data.contains("\r\n.a line starting with a dot\r\n"));

    let commands = fake.commands();
    assert!(commands[0].starts_with("EHLO "));
    assert!(
        commands
            .iter()
            .any(|c| c == "MAIL FROM:<noreply@example.com>"
                || c.starts_with("MAIL FROM:<noreply@example.com> "))
    );
    assert!(commands.iter().any(|c| c == "RCPT TO:<ada@example.com>"));
}

#[tokio::test]
async fn a_text_only_email_is_a_single_part() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), TIMEOUT);
    sent(
        smtp.send(
            &email("Plain", Some("just text"), None),
            &address("ada@example.com"),
            &ctx(Lane::Normal),
        )
        .await,
    );
    let data = &fake.messages()[0].data;
    assert!(data.contains("text/plain") && !data.contains("multipart"));
}

#[tokio::test]
async fn connections_are_pooled() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), TIMEOUT);
    for i in 0..3 {
        let to = address(&format!("user{i}@example.com"));
        sent(
            smtp.send(&email("s", Some("t"), None), &to, &ctx(Lane::Normal))
                .await,
        );
    }
    assert_eq!(fake.messages().len(), 3);
    assert_eq!(fake.connections(), 1);
    // A kept session is checked with NOOP before it is used again.
    let noops = fake.commands().iter().filter(|c| *c == "NOOP").count();
    assert_eq!(noops, 2);
}

/// A relay closes idle sessions on its own schedule (421 at its idle timeout,
/// a restart): the next email notices at the NOOP and opens a new session,
/// rather than failing and waiting for a retry.
#[tokio::test]
async fn a_session_the_relay_closed_is_replaced_without_a_failure() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), TIMEOUT);
    sent(send_to_ada(&smtp).await);
    fake.close_idle_sessions().await;
    sent(send_to_ada(&smtp).await);
    assert_eq!(fake.connections(), 2);
    assert_eq!(fake.messages().len(), 2);
}

/// A burst never opens more than the pool size of sessions against the
/// relay (lettre's own pool capped only the connections it kept idle).
#[tokio::test]
async fn parallel_sends_use_at_most_the_pool_size_of_sessions() {
    let fake = SmtpFake::start().await;
    let smtp = SmtpProvider::new(&fake.url(), FROM, TIMEOUT, 3, None).expect("provider");
    let sends = (0..24).map(|i| {
        let smtp = &smtp;
        async move {
            let to = address(&format!("user{i}@example.com"));
            sent(
                smtp.send(&email("s", Some("t"), None), &to, &ctx(Lane::Normal))
                    .await,
            )
        }
    });
    futures::future::join_all(sends).await;
    assert_eq!(fake.messages().len(), 24);
    assert!(
        fake.peak_transactions() <= 3,
        "{} transactions at once",
        fake.peak_transactions()
    );
    assert!(
        fake.peak_transactions() >= 2,
        "sends did not overlap at all"
    );
}

#[tokio::test]
async fn an_unknown_mailbox_is_an_invalid_address() {
    let fake = SmtpFake::start().await;
    fake.push_rcpt_reply(
        550,
        "5.1.1 <nobody@example.com>: Recipient address rejected",
    );
    let smtp = provider(&fake.url(), TIMEOUT);
    let outcome = smtp
        .send(
            &email("s", Some("t"), None),
            &address("nobody@example.com"),
            &ctx(Lane::Normal),
        )
        .await;
    assert!(!permanent(outcome, ErrorClass::InvalidAddress));

    // The relay is still usable afterwards.
    sent(send_to_ada(&smtp).await);
}

#[tokio::test]
async fn a_policy_refusal_is_a_rejection() {
    let fake = SmtpFake::start().await;
    fake.push_data_reply(550, "5.7.1 Message rejected as spam");
    let smtp = provider(&fake.url(), TIMEOUT);
    let outcome = send_to_ada(&smtp).await;
    permanent(outcome, ErrorClass::Rejected);
}

#[tokio::test]
async fn a_transient_refusal_is_retried_then_succeeds() {
    let fake = SmtpFake::start().await;
    fake.push_data_reply(451, "4.3.0 Try again later");
    let smtp = provider(&fake.url(), TIMEOUT);
    let outcome = send_to_ada(&smtp).await;
    retry(outcome, ErrorClass::Server);
    sent(send_to_ada(&smtp).await);
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn an_unparseable_address_never_reaches_the_relay() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), TIMEOUT);
    let outcome = smtp
        .send(
            &email("s", Some("t"), None),
            &address("not an address"),
            &ctx(Lane::Normal),
        )
        .await;
    permanent(outcome, ErrorClass::InvalidAddress);
    assert_eq!(fake.connections(), 0);
}

#[tokio::test]
async fn a_silent_relay_times_out() {
    let silent = Silent::start().await;
    let smtp = provider(&format!("smtp://{}", silent.addr()), SHORT);
    let outcome = send_to_ada(&smtp).await;
    retry(outcome, ErrorClass::Timeout);
}

#[tokio::test]
async fn a_timed_out_session_is_not_reused() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&fake.url(), SHORT);
    sent(send_to_ada(&smtp).await);

    // The relay stalls before answering RCPT: the send times out mid-session.
    fake.stall_next_rcpt(Duration::from_secs(2));
    let outcome = send_to_ada(&smtp).await;
    retry(outcome, ErrorClass::Timeout);

    // The next send opens a new connection instead of reading the stalled
    // session's late reply as its own.
    sent(send_to_ada(&smtp).await);
    assert_eq!(fake.connections(), 2);
    assert_eq!(fake.messages().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let smtp = provider(
        &format!("smtp://127.0.0.1:{}", closed_port().await),
        TIMEOUT,
    );
    let outcome = send_to_ada(&smtp).await;
    retry(outcome, ErrorClass::Connection);
}

/// `?tls=required` never sends in the clear: against a relay that does not
/// offer STARTTLS the send fails before any envelope is given.
#[tokio::test]
async fn required_tls_refuses_a_relay_without_starttls() {
    let fake = SmtpFake::start().await;
    let smtp = provider(&format!("{}?tls=required", fake.url()), TIMEOUT);
    let outcome = send_to_ada(&smtp).await;
    retry(outcome, ErrorClass::Connection);
    let commands = fake.commands();
    assert!(commands[0].starts_with("EHLO "), "{commands:?}");
    assert!(
        !commands.iter().any(|c| c.starts_with("MAIL")),
        "{commands:?}"
    );
    assert!(fake.messages().is_empty());

    // Opportunistic TLS takes the relay as it is.
    let smtp = provider(&format!("{}?tls=opportunistic", fake.url()), TIMEOUT);
    sent(send_to_ada(&smtp).await);
}

/// STARTTLS: the envelope and message go only over TLS, verified against
/// the relay's CA (`SMTP_CA_FILE`), and the TLS session is reused.
#[tokio::test]
async fn starttls_sends_over_a_verified_tls_session() {
    let fake = SmtpFake::start_with(Tls::StartTls).await;
    let smtp = SmtpProvider::new(&fake.url(), FROM, TIMEOUT, 4, Some(CA_PEM)).expect("provider");
    sent(send_to_ada(&smtp).await);
    sent(send_to_ada(&smtp).await);
    assert_eq!(fake.messages().len(), 2);
    assert_eq!((fake.connections(), fake.encrypted_sessions()), (1, 1));
    let commands = fake.commands();
    let starttls = commands.iter().position(|c| c == "STARTTLS");
    let mail = commands.iter().position(|c| c.starts_with("MAIL FROM"));
    assert!(starttls.is_some() && starttls < mail, "{commands:?}");
    assert!(commands[starttls.expect("starttls") + 1].starts_with("EHLO "));
}

#[tokio::test]
async fn implicit_tls_sends_over_a_verified_tls_session() {
    let fake = SmtpFake::start_with(Tls::Implicit).await;
    assert!(fake.url().starts_with("smtps://"));
    let smtp = SmtpProvider::new(&fake.url(), FROM, TIMEOUT, 4, Some(CA_PEM)).expect("provider");
    sent(send_to_ada(&smtp).await);
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.encrypted_sessions(), 1);
}

/// A certificate from an authority the worker does not trust ends the
/// session before anything is sent.
#[tokio::test]
async fn a_relay_certificate_from_an_unknown_authority_is_refused() {
    for tls in [Tls::StartTls, Tls::Implicit] {
        let fake = SmtpFake::start_with(tls).await;
        let smtp = provider(&fake.url(), TIMEOUT);
        let outcome = send_to_ada(&smtp).await;
        assert!(
            matches!(outcome, Outcome::Retry { .. }),
            "{tls:?}: {outcome:?}"
        );
        assert!(fake.messages().is_empty());
        assert!(
            !fake.commands().iter().any(|c| c.starts_with("MAIL")),
            "{tls:?}"
        );
    }
}
