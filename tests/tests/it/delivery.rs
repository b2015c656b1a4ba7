//! The channel workers end to end: ingest, router, worker, and a fake
//! provider speaking the real protocol on loopback.

use std::time::Duration;

use herald::{
    delivery::WorkerConfig,
    model::{Channel, Lane},
    providers::config::{EmailProviderKind, PushProviderKind},
};
use herald_tests::{
    TestEnv,
    fakes::{
        apns::ApnsFake, closed_port, email_api::EmailApiFake, fcm::FcmFake, smtp::SmtpFake,
        twilio::TwilioFake,
    },
    pipeline::{Pipeline, twilio},
};
use reqwest::Method;
use serde_json::{Value, json};

fn sms(users: &[&str]) -> Value {
    json!({"category": "security", "priority": "high", "to": {"users": users}, "content": {"sms": {"text": "Code {{code}}"}}, "data": {"code": "123456"}})
}

#[tokio::test]
async fn sms_through_twilio_retries_a_5xx_and_is_sent_once() {
    let p = Pipeline::start("300ms,600ms").await;
    let fake = TwilioFake::start().await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    p.user("u-1", json!({"phone": "+14155550100"})).await;
    fake.push_error(503, 20500, "Service unavailable", &[]);
    let id = p.send(sms(&["u-1"])).await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"sent": 1}));
    let d = &body["deliveries"][0];
    assert_eq!(d["attempts"], 2);
    assert_eq!(
        d["error_class"], "server",
        "the last error is kept for the record"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one failure, one success, nothing more");
    let form = requests[1].form();
    assert_eq!(form["To"], "+14155550100");
    assert_eq!(form["Body"], "Code 123456");
    assert_eq!(form["From"], "+15005550006");
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn throttle_waits_for_retry_after_without_burning_an_attempt() {
    let p = Pipeline::start("300ms,600ms").await;
    let fake = TwilioFake::start().await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    p.user("u-1", json!({"phone": "+14155550100"})).await;
    fake.push_error(429, 20429, "Too Many Requests", &[("retry-after", "2")]);
    let id = p.send(sms(&["u-1"])).await;
    let started = std::time::Instant::now();
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for Retry-After"
    );
    assert_eq!(body["counts"], json!({"sent": 1}));
    assert_eq!(
        body["deliveries"][0]["attempts"], 1,
        "the throttled attempt was refunded"
    );
    assert_eq!(fake.requests().len(), 2);
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_circuit_opened_total"),
        "the throttle opened the circuit"
    );
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn push_through_fcm_and_apns_and_unregistered_tokens_are_deactivated() {
    let p = Pipeline::start("300ms,600ms").await;
    let fcm = FcmFake::start().await;
    let apns = ApnsFake::start().await;
    let worker = p
        .env
        .spawn_worker(Channel::Push, |c| {
            let pc = &mut c.providers;
            pc.push_provider = vec![PushProviderKind::Fcm, PushProviderKind::Apns];
            pc.fcm_base_url = fcm.base_url();
            pc.fcm_token_url = Some(fcm.token_url());
            pc.fcm_project_id = Some(fcm.project_id().to_owned());
            pc.fcm_credentials_file = Some(fcm.credentials_file());
            pc.apns_base_url = apns.base_url();
            pc.apns_key_file = Some(apns.key_file());
            pc.apns_key_id = Some(apns.key_id().to_owned());
            pc.apns_team_id = Some(apns.team_id().to_owned());
            pc.apns_topic = Some(apns.topic().to_owned());
        })
        .await;
    p.user("u-1", json!({"name": "Ada"})).await;
    for (token, platform) in [
        ("fcm-good-token-0001", "fcm"),
        ("fcm-gone-token-0002", "fcm"),
        (
            "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2",
            "apns",
        ),
    ] {
        let (status, _) = p
            .client
            .json(
                Method::PUT,
                &format!("/v1/users/u-1/devices/{token}"),
                Some(json!({"platform": platform})),
            )
            .await;
        assert_eq!(status, 201);
    }
    // The second FCM call answers UNREGISTERED (calls are concurrent, so
    // either FCM token may get it).
    fcm.push_response(
        200,
        json!({"name": "projects/p/messages/1"}).to_string(),
        &[],
    );
    fcm.push_error(404, "NOT_FOUND", "UNREGISTERED", &[]);
    let id = p
        .send(json!({"category": "social", "to": {"users": ["u-1"]},
                     "content": {"push": {"title": "Hi {{name}}", "body": "You have a message", "data": {"thread": "42"}}}}))
        .await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"failed": 1, "sent": 2}));
    let failed = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "failed")
        .unwrap();
    assert_eq!(failed["error_class"], "unregistered");
    assert_eq!(failed["attempts"], 1, "a permanent error is not retried");
    // FCM's answer is kept as the delivery's receipt; the status stays
    // `failed` (the answer came to the send itself, docs/receipts.md).
    let receipt: (String, String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT provider, event, tenant_id, status FROM receipts WHERE delivery_id = $1::uuid",
    )
    .bind(failed["id"].as_str().unwrap())
    .fetch_one(&p.env.pool)
    .await
    .unwrap();
    assert_eq!(
        receipt,
        (
            "fcm".into(),
            "unregistered".into(),
            Some("acme".into()),
            None
        )
    );
    assert_eq!(fcm.requests().len(), 2);
    let sent_fcm = fcm
        .requests()
        .into_iter()
        .find(|r| r.json()["message"]["notification"]["title"] == "Hi Ada")
        .unwrap();
    assert_eq!(sent_fcm.json()["message"]["data"]["thread"], "42");
    let apns_requests = apns.requests();
    assert_eq!(apns_requests.len(), 1);
    assert_eq!(apns_requests[0].version, "HTTP/2.0");
    assert_eq!(apns_requests[0].header("apns-push-type"), Some("alert"));

    let (_, user) = p.client.json(Method::GET, "/v1/users/u-1", None).await;
    let inactive: Vec<&Value> = user["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["active"] == false)
        .collect();
    assert_eq!(inactive.len(), 1, "{user}");
    assert_eq!(inactive[0]["platform"], "fcm");
    // A deactivated token gets nothing next time.
    let id = p.send(json!({"category": "social", "to": {"users": ["u-1"]}, "content": {"push": {"title": "Again"}}})).await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"sent": 2}));
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn email_through_smtp_and_exhausted_retries_land_in_the_dead_letters() {
    let p = Pipeline::start("200ms,400ms").await;
    let smtp = SmtpFake::start().await;
    let worker = p
        .env
        .spawn_worker(Channel::Email, |c| {
            c.providers.email_provider = EmailProviderKind::Smtp;
            c.providers.smtp_url = Some(smtp.url().into());
            c.providers.email_from = Some("Herald <noreply@example.com>".into());
        })
        .await;
    p.user("u-ok", json!({"name": "Ada", "email": "ada@example.com"}))
        .await;
    let id = p
        .send(json!({"category": "receipts", "to": {"users": ["u-ok"]},
                     "content": {"email": {"subject": "Receipt", "text": "Thanks {{name}}", "html": "<p>Thanks {{name}}</p>"}}}))
        .await;
    assert_eq!(
        p.settled(&id, Duration::from_secs(20)).await["counts"],
        json!({"sent": 1})
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].to.iter().any(|r| r.contains("ada@example.com")),
        "{:?}",
        messages[0]
    );
    assert!(messages[0].data.contains("Thanks Ada"));

    // Now the relay refuses every message for a while: three attempts, then dead.
    p.user("u-dead", json!({"email": "bob@example.com"})).await;
    for _ in 0..3 {
        smtp.push_data_reply(451, "4.3.0 Temporary failure");
    }
    let id = p
        .send(json!({"category": "receipts", "to": {"users": ["u-dead"]}, "content": {"email": {"subject": "s", "text": "t"}}}))
        .await;
    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"dead": 1}));
    assert_eq!(body["deliveries"][0]["attempts"], 3);
    let row = p
        .env
        .eventually(Duration::from_secs(15), || async {
            sqlx::query_as::<_, (Option<String>, Option<String>, String, String, i32, String, String)>(
                "SELECT tenant_id, channel, error_class, last_error, attempts, source, routing_key FROM dead_letters",
            )
            .fetch_optional(&p.env.pool)
            .await
            .unwrap()
        })
        .await
        .expect("the dead delivery is archived");
    assert_eq!(row.0.as_deref(), Some("acme"));
    assert_eq!(row.1.as_deref(), Some("email"));
    assert_eq!(row.2, "server");
    assert!(
        row.3.contains("gave up after 3 attempts") && row.3.contains("451"),
        "{}",
        row.3
    );
    assert_eq!(row.4, 3);
    assert_eq!(row.5, "worker-email");
    assert_eq!(
        row.6, "email.normal",
        "replay can put it back where it came from"
    );
    worker.stop().await;
    p.stop().await;
}

/// While the SMTP relay is down and its circuit is open, email goes out
/// through the failover provider instead of waiting for the relay.
#[tokio::test]
async fn email_fails_over_to_the_second_provider_while_the_circuit_is_open() {
    let p = Pipeline::start("1s,1s,1s").await;
    let api = EmailApiFake::start().await;
    let relay = format!("smtp://127.0.0.1:{}", closed_port().await);
    let worker = p
        .env
        .spawn_worker(Channel::Email, |c| {
            c.providers.email_provider = EmailProviderKind::Smtp;
            c.providers.smtp_url = Some(relay.into());
            c.providers.email_failover_provider = Some(EmailProviderKind::Http);
            c.providers.email_http_url = Some(api.url());
            c.providers.email_http_token = Some(api.token().to_owned().into());
            c.providers.email_from = Some("Herald <noreply@example.com>".into());
        })
        .await;
    let users: Vec<String> = (0..6).map(|i| format!("u-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        p.user(user, json!({"email": format!("user{i}@example.com")}))
            .await;
    }
    let id = p
        .send(json!({"category": "receipts", "to": {"users": users},
                     "content": {"email": {"subject": "Receipt", "text": "Thanks"}}}))
        .await;

    // Refused connections open the relay's circuit (five in a row do); the
    // retries, and anything that comes after, go to the API, one email per
    // delivery.
    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"sent": 6}), "{body}");
    let requests = api.requests();
    assert_eq!(requests.len(), 6);
    let attempts: Vec<i64> = body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["attempts"].as_i64().expect("attempts"))
        .collect();
    assert!(
        attempts.iter().all(|a| *a == 1 || *a == 2)
            && attempts.iter().filter(|a| **a == 2).count() >= 5,
        "{attempts:?}"
    );
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let failovers = metrics
        .lines()
        .find(|l| {
            l.starts_with("herald_provider_failovers_total")
                && l.contains(r#"from="smtp""#)
                && l.contains(r#"to="http""#)
        })
        .expect("failovers are counted");
    // One per call made to the API: exactly its six emails.
    assert!(failovers.ends_with(" 6"), "{failovers}");
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn expired_deliveries_are_never_sent_late() {
    let p = Pipeline::start("300ms").await;
    let fake = TwilioFake::start().await;
    p.user("u-1", json!({"phone": "+14155550100"})).await;
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let id = p
        .send(
            json!({"category": "security", "priority": "high", "to": {"users": ["u-1"]},
                     "content": {"sms": {"text": "code"}}, "expires_at": expires}),
        )
        .await;
    // No worker yet: the code waits in its queue past its expiry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"expired": 1}));
    assert!(fake.requests().is_empty(), "nothing sent late");
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_of_a_sent_delivery_is_not_sent_again() {
    let p = Pipeline::start("300ms").await;
    let fake = TwilioFake::start().await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    p.user("u-1", json!({"phone": "+14155550100"})).await;
    let id = p.send(sms(&["u-1"])).await;
    p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(fake.requests().len(), 1);

    // A worker that died after recording "sent" but before its ack: the
    // broker hands the same message out again.
    let row = herald::db::routing::notification(&p.env.pool, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let (delivery_id,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM deliveries WHERE notification_id = $1")
            .bind(row.id)
            .fetch_one(&p.env.pool)
            .await
            .unwrap();
    let msg = herald::model::message::DeliveryMessage {
        delivery_id,
        created_at: row.created_at,
        notification_id: row.id,
        tenant_id: "acme".into(),
        user_id: "u-1".into(),
        channel: Channel::Sms,
        lane: Lane::High,
        destination: herald::model::message::Destination {
            address: "+14155550100".into(),
            platform: None,
        },
        rendered: herald::model::message::Rendered::Sms(herald::model::message::SmsMessage {
            text: "Code 123456".into(),
        }),
        expires_at: None,
    };
    let publisher = herald::broker::Publisher::new(p.env.broker().await);
    publisher
        .publish(&msg.outgoing(&p.env.names()))
        .await
        .unwrap();
    p.env
        .eventually(Duration::from_secs(10), || async {
            (p.env
                .queue_depth(&p.env.names().delivery_queue(Channel::Sms, Lane::High))
                .await
                == 0)
                .then_some(())
        })
        .await
        .expect("consumed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests().len(), 1, "no second send");
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"duplicate\""), "{metrics}");
    worker.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn the_budget_holds_across_two_replicas() {
    let p = Pipeline::start("300ms").await;
    let fake = TwilioFake::start().await;
    const RATE: u32 = 20;
    let budget = |c: &mut WorkerConfig| c.sms_rate_per_sec = RATE;
    let w1 = p
        .env
        .spawn_worker(Channel::Sms, |c| {
            twilio(&fake)(c);
            budget(c)
        })
        .await;
    let w2 = p
        .env
        .spawn_worker(Channel::Sms, |c| {
            twilio(&fake)(c);
            budget(c)
        })
        .await;
    // Let both replicas see each other (they re-read the consumer count every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let users: Vec<String> = (0..160).map(|i| format!("u-{i}")).collect();
    let mut values = Vec::new();
    for (i, u) in users.iter().enumerate() {
        values.push(format!("('acme', '{u}', '+1415555{i:04}')"));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, id, phone) VALUES {}",
        values.join(",")
    )))
    .execute(&p.env.pool)
    .await
    .unwrap();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let id = p.send(sms(&refs)).await;
    p.settled(&id, Duration::from_secs(60)).await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT sent_at FROM deliveries WHERE notification_id = $1::uuid ORDER BY sent_at",
    )
    .bind(&id)
    .fetch_all(&p.env.pool)
    .await
    .unwrap();
    assert_eq!(times.len(), 160);
    // Skip the first second (the burst allowance), measure the steady rate.
    let steady: Vec<_> = times
        .iter()
        .filter(|t| **t > times[0] + chrono::Duration::seconds(1))
        .collect();
    let span = (*steady[steady.len() - 1] - *steady[0]).num_milliseconds() as f64 / 1000.0;
    let rate = (steady.len() - 1) as f64 / span;
    assert!(
        (rate - f64::from(RATE)).abs() <= f64::from(RATE) * 0.10,
        "measured {rate:.1}/s against a budget of {RATE}/s across two replicas"
    );
    w1.stop().await;
    w2.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_send_is_taken_over_by_another() {
    use herald_tests::fakes::Scripted;
    let p = Pipeline::start("300ms").await;
    let fake = TwilioFake::start().await;
    // The first call hangs long enough for the worker to be killed in it.
    fake.push_scripted(
        Scripted::new(
            201,
            json!({"sid": format!("SM{}", "0".repeat(32)), "status": "queued"}).to_string(),
            &[],
        )
        .delayed(Duration::from_secs(5)),
    );
    p.user("u-1", json!({"phone": "+14155550100"})).await;
    let port = crate::ingest::free_port();
    let mut child = crate::ingest::command(&p.env, "worker-sms")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SMS_PROVIDER", "twilio")
        .env("TWILIO_BASE_URL", fake.base_url())
        .env("TWILIO_ACCOUNT_SID", fake.account_sid())
        .env("TWILIO_AUTH_TOKEN", fake.auth_token())
        .env("TWILIO_FROM", "+15005550006")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::ingest::wait_ready(port).await;
    let id = p.send(sms(&["u-1"])).await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            (fake.requests().len() == 1).then_some(())
        })
        .await
        .expect("the first worker is in its provider call");
    // SIGKILL mid-call: nothing recorded, nothing acked.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&p.env.pool)
            .await
            .unwrap();
    assert_eq!(status, "sending");

    // The broker redelivers the message to another worker, which takes the
    // claim over and completes the delivery.
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"sent": 1}));
    assert_eq!(body["deliveries"][0]["attempts"], 2);
    assert_eq!(
        fake.requests().len(),
        2,
        "at least once: the interrupted call is made again"
    );
    worker.stop().await;
    p.stop().await;
}

/// A handler that panics must not strand its message: the consumer loop
/// requeues it and the next delivery of it is handled normally.
#[tokio::test]
async fn a_panicking_handler_gets_its_message_again() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use herald::broker::{
        Headers, Names, Outgoing, Publisher,
        consumer::{self, ConsumerSpec},
    };

    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let queue = env.names().delivery_queue(Channel::Sms, Lane::Normal);
    let message = Outgoing::json(
        env.names().deliveries_exchange(),
        Names::delivery_key(Channel::Sms, Lane::Normal),
        b"{}".to_vec(),
        Headers::default(),
    );
    Publisher::new(broker.clone())
        .publish(&message)
        .await
        .expect("publish");

    let calls = Arc::new(AtomicUsize::new(0));
    let cancel = tokio_util::sync::CancellationToken::new();
    let spec = ConsumerSpec { queue, prefetch: 1 };
    let consuming = tokio::spawn(consumer::run(broker.clone(), spec, cancel.clone(), {
        let calls = calls.clone();
        move |incoming: consumer::Incoming| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first sight of the message");
                }
                incoming.settle.ack(&incoming.delivery);
            }
        }
    }));
    let handled_twice = env
        .eventually(Duration::from_secs(10), || {
            let calls = calls.clone();
            async move { (calls.load(Ordering::SeqCst) >= 2).then_some(()) }
        })
        .await;
    cancel.cancel();
    consuming.await.expect("consumer loop");
    assert!(
        handled_twice.is_some(),
        "the message was not redelivered after the panic"
    );
    let q = broker
        .inspect(&env.names().delivery_queue(Channel::Sms, Lane::Normal))
        .await
        .expect("queue");
    assert_eq!(q.messages, 0, "the acked message is gone");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
