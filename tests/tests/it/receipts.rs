//! Provider receipts end to end: the workers send through fakes of Twilio
//! and SendGrid, which call ingest back signed as the real providers sign
//! (Twilio's HMAC-SHA1 with the account's auth token, SendGrid's ECDSA with
//! a key pair made for the test). Deliveries move on from `sent`; forged
//! callbacks change nothing; bounces, complaints and STOP replies suppress
//! the address; a replayed callback counts once.

use std::time::Duration;

use herald::{db::keys::Scope, model::Channel, providers::config::EmailProviderKind};
use herald_tests::{
    Client, Spawned, TestEnv,
    fakes::{sendgrid::SendGridFake, twilio::TwilioFake},
    pipeline::{self, Pipeline},
};
use reqwest::Method;
use serde_json::{Value, json};

/// Where providers reach ingest in production, through a proxy: the URL
/// Twilio signs. The tests call ingest on its real address.
const PUBLIC: &str = "https://herald.example.com";

pub(crate) struct Setup {
    pub(crate) p: Pipeline,
    pub(crate) twilio: TwilioFake,
    sendgrid: SendGridFake,
    workers: Vec<Spawned>,
}

pub(crate) async fn setup() -> Setup {
    let env = TestEnv::new().await;
    let twilio = TwilioFake::start().await;
    let sendgrid = SendGridFake::start().await;
    let (token, key) = (twilio.auth_token().to_owned(), sendgrid.public_key());
    let ingest = env
        .spawn_ingest_with(|c| {
            c.receipts_base_url = Some(PUBLIC.into());
            c.twilio_auth_token = Some(token.into());
            c.sendgrid_webhook_public_key = Some(key);
        })
        .await;
    let router = env.spawn_router().await;
    let sms = env
        .spawn_worker(Channel::Sms, |c| {
            pipeline::twilio(&twilio)(c);
            c.providers.receipts_base_url = Some(PUBLIC.into());
        })
        .await;
    let email = env
        .spawn_worker(Channel::Email, |c| {
            c.providers.email_provider = EmailProviderKind::Sendgrid;
            c.providers.sendgrid_base_url = sendgrid.base_url();
            c.providers.sendgrid_api_key = Some(sendgrid.api_key().to_owned().into());
            c.providers.email_from = Some("Herald <noreply@example.com>".into());
        })
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    Setup {
        p: Pipeline {
            env,
            ingest,
            router,
            client,
        },
        twilio,
        sendgrid,
        workers: vec![sms, email],
    }
}

impl Setup {
    pub(crate) async fn stop(self) {
        for w in self.workers {
            w.stop().await;
        }
        self.p.stop().await;
    }

    /// Sends to `users` on `channel` and waits until every delivery is settled.
    pub(crate) async fn send(&self, users: &[&str], channel: &str) -> Value {
        let id = self
            .p
            .send(json!({
                "category": "account",
                "to": {"users": users},
                "channels": [channel],
                "content": {
                    "sms": {"text": "Your order shipped"},
                    "email": {"subject": "Shipped", "text": "Your order shipped"}
                }
            }))
            .await;
        self.p.settled(&id, Duration::from_secs(20)).await
    }

    /// The deliveries of notification `id` now, by user.
    async fn deliveries(&self, id: &Value) -> Vec<Value> {
        let mut list: Vec<Value> = self.p.status(id.as_str().unwrap()).await["deliveries"]
            .as_array()
            .unwrap()
            .clone();
        list.sort_by_key(|d| d["user_id"].as_str().unwrap().to_owned());
        list
    }

    /// One counter of ingest's `/metrics`, 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(self.p.ingest.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    async fn suppressions(&self) -> Vec<Value> {
        let (status, body) = self
            .p
            .client
            .json(Method::GET, "/v1/suppressions", None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["suppressions"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_status_callbacks_move_deliveries_on_and_forgeries_change_nothing() {
    let s = setup().await;
    s.p.user("u-1", json!({"phone": "+14155550100"})).await;
    let first = s.send(&["u-1"], "sms").await;
    let id = first["id"].clone();
    assert_eq!(s.deliveries(&id).await[0]["status"], "sent");
    let message = s.twilio.accepted().remove(0);
    let callback = &message.form["StatusCallback"];
    assert!(
        callback.starts_with(&format!("{PUBLIC}/v1/receipts/twilio/")),
        "{callback}"
    );
    let actual = s.p.ingest.url("");
    let delivered = s.twilio.callback_form(&message, "delivered", None);

    // Unsigned, or signed with another token: refused, nothing changes.
    let resp = s
        .twilio
        .post_callback(&message, &delivered, None, PUBLIC, &actual)
        .await;
    assert_eq!(resp.status(), 401);
    let resp = s
        .twilio
        .post_callback(&message, &delivered, Some("not-the-token"), PUBLIC, &actual)
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let d = s.deliveries(&id).await.remove(0);
    assert_eq!(d["status"], "sent");
    assert_eq!(d["receipt_at"], Value::Null);

    // Signed with the account's token: delivered.
    let resp = s
        .twilio
        .post_callback(
            &message,
            &delivered,
            Some(s.twilio.auth_token()),
            PUBLIC,
            &actual,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["applied"], 1);
    let d = s.deliveries(&id).await.remove(0);
    assert_eq!(d["status"], "delivered");
    assert!(d["receipt_at"].is_string(), "{d}");
    let status = s.p.status(id.as_str().unwrap()).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["counts"], json!({"delivered": 1}));

    // The same callback again: counted once.
    let resp = s
        .twilio
        .post_callback(
            &message,
            &delivered,
            Some(s.twilio.auth_token()),
            PUBLIC,
            &actual,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicate"], 1);
    assert_eq!(
        s.metric(r#"herald_receipts_total{provider="twilio",outcome="applied"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.metric(r#"herald_receipts_total{provider="twilio",outcome="duplicate"}"#)
            .await,
        1.0
    );
    assert!(
        s.metric(r#"herald_receipts_refused_total{provider="twilio",reason="signature"}"#)
            .await
            >= 2.0
    );

    // The recipient replied STOP: undelivered (21610), and suppressed.
    let second = s.send(&["u-1"], "sms").await;
    let message = s.twilio.accepted().remove(1);
    let form = s
        .twilio
        .callback_form(&message, "undelivered", Some("21610"));
    let resp = s
        .twilio
        .post_callback(
            &message,
            &form,
            Some(s.twilio.auth_token()),
            PUBLIC,
            &actual,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let d = s.deliveries(&second["id"]).await.remove(0);
    assert_eq!(d["status"], "undelivered");
    assert!(
        d["receipt_reason"].as_str().unwrap().contains("21610"),
        "{d}"
    );
    let list = s.suppressions().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["channel"], "sms");
    assert_eq!(list[0]["address"], "+14155550100");
    assert_eq!(list[0]["reason"], "unsubscribed");
    assert_eq!(list[0]["source"], "twilio");
    let third = s.send(&["u-1"], "sms").await;
    let d = s.deliveries(&third["id"]).await.remove(0);
    assert_eq!(
        (d["status"].as_str(), d["reason"].as_str()),
        (Some("suppressed"), Some("address_suppressed"))
    );
    assert_eq!(
        s.twilio.accepted().len(),
        2,
        "nothing sent to a suppressed number"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_bounces_and_complaints_suppress_and_a_replay_counts_once() {
    let s = setup().await;
    for (user, email) in [
        ("u-1", "bounce@example.com"),
        ("u-2", "Complain@Example.com"),
        ("u-3", "ok@example.com"),
        ("u-4", "blocked@example.com"),
    ] {
        s.p.user(user, json!({"email": email})).await;
    }
    let first = s.send(&["u-1", "u-2", "u-3", "u-4"], "email").await;
    assert!(
        s.deliveries(&first["id"])
            .await
            .iter()
            .all(|d| d["status"] == "sent")
    );
    let sent = s.sendgrid.accepted();
    let to = |address: &str| {
        sent.iter()
            .find(|m| m.1["personalizations"][0]["to"][0]["email"] == address)
            .unwrap_or_else(|| panic!("nothing sent to {address}"))
            .clone()
    };
    let events = json!([
        s.sendgrid.event(&to("bounce@example.com"), "bounce",
            json!({"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 The email account does not exist"})),
        s.sendgrid.event(&to("Complain@Example.com"), "delivered", json!({"response": "250 OK"})),
        s.sendgrid.event(&to("Complain@Example.com"), "spamreport", json!({})),
        s.sendgrid.event(&to("ok@example.com"), "delivered", json!({"response": "250 OK"})),
        s.sendgrid.event(&to("blocked@example.com"), "bounce",
            json!({"type": "blocked", "status": "4.0.0", "reason": "IP address temporarily blocked"})),
        s.sendgrid.event(&to("ok@example.com"), "open", json!({})),
    ]);
    let url = s.p.ingest.url("/v1/receipts/sendgrid");

    // Tampered after signing: refused, nothing changes.
    let resp = s.sendgrid.post_events(&url, &events, true).await;
    assert_eq!(resp.status(), 403);
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        s.deliveries(&first["id"])
            .await
            .iter()
            .all(|d| d["status"] == "sent")
    );
    assert!(s.suppressions().await.is_empty());

    let resp = s.sendgrid.post_events(&url, &events, false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"applied": 5, "recorded": 1, "duplicate": 0})
    );
    let d = s.deliveries(&first["id"]).await;
    let status = |i: usize| d[i]["status"].as_str().unwrap();
    assert_eq!(
        [status(0), status(1), status(2), status(3)],
        ["bounced", "complained", "delivered", "undelivered"]
    );
    assert!(
        d[0]["receipt_reason"].as_str().unwrap().contains("5.1.1"),
        "{}",
        d[0]
    );
    assert!(
        d[3]["receipt_reason"]
            .as_str()
            .unwrap()
            .contains("temporarily blocked")
    );

    // SendGrid retries the whole batch: every event is a duplicate.
    let resp = s.sendgrid.post_events(&url, &events, false).await;
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"applied": 0, "recorded": 0, "duplicate": 6})
    );
    assert_eq!(
        s.metric(r#"herald_receipts_total{provider="sendgrid",outcome="applied"}"#)
            .await,
        5.0
    );
    assert_eq!(
        s.metric(r#"herald_suppressions_added_total{channel="email",reason="hard_bounce"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.metric(r#"herald_suppressions_added_total{channel="email",reason="complaint"}"#)
            .await,
        1.0
    );

    // The hard bounce and the complaint are suppressed; the block is not.
    let list = s.suppressions().await;
    let listed: Vec<(&str, &str, &str)> = list
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap(),
                s["reason"].as_str().unwrap(),
                s["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("bounce@example.com", "hard_bounce", "sendgrid"),
            ("complain@example.com", "complaint", "sendgrid"),
        ]
    );

    // The next notification: suppressed for those two, sent to the others.
    let next = s.send(&["u-1", "u-2", "u-3", "u-4"], "email").await;
    let d = s.deliveries(&next["id"]).await;
    let seen: Vec<(&str, Option<&str>)> = d
        .iter()
        .map(|d| (d["status"].as_str().unwrap(), d["reason"].as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("suppressed", Some("address_suppressed")),
            ("suppressed", Some("address_suppressed")),
            ("sent", None),
            ("sent", None),
        ]
    );
    assert_eq!(s.sendgrid.accepted().len(), 6);
    s.stop().await;
}

#[tokio::test]
async fn receipts_of_an_unconfigured_provider_are_404_and_a_malformed_signed_body_is_400() {
    let env = TestEnv::new().await;
    let bare = env.spawn_ingest().await;
    for path in [
        "/v1/receipts/sendgrid",
        "/v1/receipts/twilio/1764500000000000/0191e8a0-0000-7000-8000-000000000001",
    ] {
        let resp = reqwest::Client::new()
            .post(bare.url(path))
            .header("X-Twilio-Signature", "x")
            .body("a=b")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    bare.stop().await;

    let sendgrid = SendGridFake::start().await;
    let key = sendgrid.public_key();
    let ingest = env
        .spawn_ingest_with(|c| c.sendgrid_webhook_public_key = Some(key))
        .await;
    let url = ingest.url("/v1/receipts/sendgrid");
    let resp = sendgrid
        .post_events(&url, &json!({"event": "delivered"}), false)
        .await;
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("array of events"),
        "{problem}"
    );
    ingest.stop().await;

    // A key that is not a P-256 public key stops ingest at start.
    let mut config = <herald::api::IngestConfig as clap::Parser>::parse_from(["ingest"]);
    config.sendgrid_webhook_public_key = Some("bm90IGEga2V5".into());
    let err = config.check().unwrap_err().to_string();
    assert!(err.contains("SENDGRID_WEBHOOK_PUBLIC_KEY"), "{err}");
}
