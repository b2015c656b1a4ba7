//! The delivery path under ordinary trouble: retries that follow the
//! schedule with one message per retry, a failing circuit probe, a give-up
//! whose dead letter cannot be published at first.

use std::time::Duration;

use herald::model::Channel;
use herald_tests::{
    fakes::fcm::FcmFake,
    pipeline::{Pipeline, fcm},
};
use serde_json::{Value, json};

fn push(users: &[&str]) -> Value {
    json!({"category": "orders", "to": {"users": users},
           "content": {"push": {"title": "Shipped", "body": "Order {{order}}"}},
           "data": {"order": "A-1"}})
}

/// Retries wait out the schedule's delays, never less and at most the
/// tier's jitter more, and each retry is one message: after the delivery is
/// sent the broker holds nothing for it, and nothing comes back later.
#[tokio::test]
async fn retries_follow_the_schedule_and_one_retry_is_one_message() {
    let p = Pipeline::start("1s,2s,3s").await;
    let fake = FcmFake::start().await;
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001", "fcm").await;
    for _ in 0..3 {
        fake.push_error(503, "UNAVAILABLE", "UNAVAILABLE", &[]);
    }
    let id = p.send(push(&["u-1"])).await;
    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"sent": 1}));
    assert_eq!(body["deliveries"][0]["attempts"], 4);

    // Long enough for any stray copy in the longest tier (3 s x 1.3) to
    // come back and be sent again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 4, "three failures, one success, no copies");
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].received - w[0].received)
        .collect();
    for (gap, tier) in gaps.iter().zip([1.0, 2.0, 3.0]) {
        let floor = Duration::from_secs_f64(tier);
        // The tier's jitter is up to 30%; the rest is a loaded machine.
        let ceiling = Duration::from_secs_f64(tier * 1.3 + 0.7);
        assert!(
            *gap >= floor && *gap <= ceiling,
            "gaps {gaps:?} do not follow 1s,2s,3s"
        );
    }
    assert_eq!(
        p.env.broker_messages().await,
        vec![],
        "the broker holds nothing once the delivery is sent"
    );
    worker.stop().await;
    p.stop().await;
}

/// A broker set up by an earlier version has tier bindings on a header the
/// headers exchange ignores, so they match every retry. Declaring the
/// topology again removes them: one retry lands in one tier queue.
#[tokio::test]
async fn declaring_the_topology_removes_the_bindings_that_copied_retries() {
    use herald::broker::{Headers, Outgoing, Publisher};
    use lapin::{
        options::QueueBindOptions,
        types::{AMQPValue, FieldTable, LongString},
    };

    let env = herald_tests::TestEnv::with_schedule("1s,2s").await;
    let broker = env.broker().await;
    let names = env.names();
    let channel = broker.channel().await.unwrap();
    for delay in env.schedule.queue_delays() {
        let mut args = FieldTable::default();
        args.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from(b"all".to_vec())),
        );
        args.insert(
            Headers::LEGACY_RETRY_DELAY_MS.into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        channel
            .queue_bind(
                names.retry_queue(delay).as_str().into(),
                names.retry_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .unwrap();
    }
    let publisher = Publisher::new(broker.clone());
    let retry = |ms: i64| {
        Outgoing::json(
            names.retry_exchange(),
            "push.normal",
            b"{}".to_vec(),
            Headers::default().int(Headers::RETRY_DELAY_MS, ms),
        )
    };
    publisher.publish(&retry(1000)).await.unwrap();
    let copies: u32 = env.broker_messages().await.iter().map(|q| q.1).sum();
    assert_eq!(copies, 8, "the old bindings copy a retry into every tier");

    broker.declare_topology(&env.schedule).await.unwrap();
    for delay in env.schedule.queue_delays() {
        let _ = channel
            .queue_purge(names.retry_queue(delay).as_str().into(), Default::default())
            .await;
    }
    publisher.publish(&retry(2200)).await.unwrap();
    assert_eq!(
        env.broker_messages().await,
        vec![(names.retry_queue(Duration::from_millis(2200)), 1)]
    );
}

/// The half-open probe whose claim fails before the provider is called
/// gives the probe back: the circuit does not stay "probing" for ever, and
/// the delivery goes out once the database answers again.
#[tokio::test]
async fn a_probe_that_fails_before_its_call_releases_the_circuit() {
    let p = Pipeline::start("300ms,600ms").await;
    let fake = FcmFake::start().await;
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001", "fcm").await;
    // A throttle opens the circuit at once for its Retry-After.
    fake.push_error(
        429,
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        &[("retry-after", "2")],
    );
    let id = p.send(push(&["u-1"])).await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            (!fake.requests().is_empty()).then_some(())
        })
        .await
        .expect("the first call");
    // Every claim now fails, the probe's included.
    let claim =
        "herald_claim_deliveries(timestamptz[], uuid[], boolean[], double precision, uuid[])";
    let definition: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_get_functiondef('{claim}'::regprocedure)"
    )))
    .fetch_one(&p.env.pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP FUNCTION {claim}")))
        .execute(&p.env.pool)
        .await
        .unwrap();
    // Past the open period: the probe has been tried, and failed to claim.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.requests().len(), 1);
    sqlx::query(sqlx::AssertSqlSafe(definition))
        .execute(&p.env.pool)
        .await
        .unwrap();
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"sent": 1}));
    assert_eq!(
        fake.requests().len(),
        2,
        "the throttled call, then the send"
    );
    worker.stop().await;
    p.stop().await;
}

/// The last attempt failed and the dead letter cannot be published: the
/// delivery is not recorded `dead` until its dead letter is confirmed, and
/// once the broker takes it, it is in the store.
#[tokio::test]
async fn a_give_up_whose_dead_letter_cannot_be_published_still_ends_in_the_store() {
    use lapin::options::ExchangeDeleteOptions;

    let p = Pipeline::start("300ms").await;
    let fake = FcmFake::start().await;
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001", "fcm").await;
    for _ in 0..2 {
        fake.push_error(503, "UNAVAILABLE", "UNAVAILABLE", &[]);
    }
    let broker = p.env.broker().await;
    let channel = broker.channel().await.unwrap();
    channel
        .exchange_delete(
            p.env.names().dead_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let id = p.send(push(&["u-1"])).await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            (fake.requests().len() == 2).then_some(())
        })
        .await
        .expect("both attempts made");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = p.status(&id).await;
    assert_eq!(
        status["deliveries"][0]["status"], "sending",
        "not dead before its dead letter exists: {status}"
    );

    broker.declare_topology(&p.env.schedule).await.unwrap();
    let body = p.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(body["counts"], json!({"dead": 1}));
    let delivery_id: uuid::Uuid = body["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let archived = p
        .env
        .eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_one(&p.env.pool)
                .await
                .ok()
                .filter(|n| *n > 0)
        })
        .await;
    assert_eq!(archived, Some(1), "the dead delivery is in the store, once");
    assert_eq!(fake.requests().len(), 2, "no attempt beyond the schedule");
    worker.stop().await;
    p.stop().await;
}

/// The router crashed after recording a delivery and before publishing it;
/// its routing message comes back after the notification expired. The new
/// plan expires the delivery, so it is not left `pending` for a message
/// that will never come.
#[tokio::test]
async fn routing_again_settles_what_the_first_pass_left_pending() {
    use herald::{broker::Publisher, model::Lane};

    let p = Pipeline::start("300ms").await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001", "fcm").await;
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut body = push(&["u-1"]);
    body["expires_at"] = json!(expires);
    let id = p.send(body).await;
    let queue = p.env.names().delivery_queue(Channel::Push, Lane::Normal);
    p.env
        .eventually(Duration::from_secs(10), || async {
            (p.env.queue_depth(&queue).await == 1).then_some(())
        })
        .await
        .expect("routed");
    // As if the first pass had died between its insert and its publish.
    let broker = p.env.broker().await;
    broker
        .channel()
        .await
        .unwrap()
        .queue_purge(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let notification: uuid::Uuid = id.parse().unwrap();
    sqlx::query("UPDATE notifications SET status = 'accepted' WHERE id = $1")
        .bind(notification)
        .execute(&p.env.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = herald::db::routing::notification(&p.env.pool, notification)
        .await
        .unwrap()
        .unwrap();
    let again =
        herald::intake::route_message(&p.env.names(), row.id, "acme", "normal", row.created_at);
    Publisher::new(broker).publish(&again).await.unwrap();
    let body = p.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(body["counts"], json!({"expired": 1}), "{body}");
    p.stop().await;
}

/// Retention drops a day of deliveries only once nothing in it is still
/// held: a delivery deferred far ahead (`send_at`) lives in the partition
/// of the day its notification was accepted. Notifications follow the same
/// retention.
#[tokio::test]
async fn retention_keeps_a_day_that_still_holds_a_delivery() {
    use herald::db::{
        deliveries::{BatchOf, NewDelivery},
        notifications::NewNotification,
    };

    let env = herald_tests::TestEnv::new().await;
    env.key("acme", &[]).await;
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let partition = format!("deliveries_{}", yesterday.format("%Y%m%d"));
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, yesterday.timestamp() as u64, 0);
    let notification = uuid::Uuid::new_v7(ts);
    herald::db::notifications::insert_many(
        &env.pool,
        &[&NewNotification {
            id: notification,
            tenant_id: "acme".into(),
            category: "reminders".into(),
            priority: "normal".into(),
            request: "{}".into(),
            idempotency_key: None,
            created_at: yesterday,
        }],
    )
    .await
    .unwrap();
    sqlx::query("UPDATE notifications SET status = 'routed' WHERE id = $1")
        .bind(notification)
        .execute(&env.pool)
        .await
        .unwrap();
    let held = NewDelivery {
        id: uuid::Uuid::now_v7(),
        user_id: "u-1".into(),
        channel: "sms",
        destination: "+14155550100".into(),
        platform: None,
        status: "deferred",
        reason: Some("send_at".into()),
        rendered: Some(json!({"sms": {"text": "see you next month"}})),
        not_before: Some(chrono::Utc::now() + chrono::Duration::days(40)),
    };
    let batch = BatchOf {
        created_at: yesterday,
        notification_id: notification,
        tenant_id: "acme",
        lane: "normal",
        expires_at: None,
    };
    herald::db::deliveries::insert_batch(&env.pool, &batch, &[held])
        .await
        .unwrap();
    let drop = || async {
        sqlx::query_scalar::<_, i32>("SELECT herald_drop_delivery_partitions(0)")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let exists = || async {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(&partition)
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let now = chrono::Utc::now();
    drop().await;
    assert!(exists().await, "a day holding a delivery is kept");
    assert_eq!(
        herald::db::notifications::purge_older_than(&env.pool, now, 100)
            .await
            .unwrap(),
        0,
        "and so is its notification"
    );

    // Released (the scheduler clears the content): the day can go.
    sqlx::query("UPDATE deliveries SET rendered = NULL, status = 'sent'")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(drop().await, 1);
    assert!(!exists().await);
    assert_eq!(
        herald::db::notifications::purge_older_than(&env.pool, now, 100)
            .await
            .unwrap(),
        1
    );
}

/// A worker stopping (SIGTERM) while deliveries wait for their turn in a
/// small budget hands the unclaimed ones back at once instead of pacing
/// through all of them; another worker sends them, each once.
#[tokio::test]
async fn stopping_hands_back_what_waits_for_the_budget() {
    use herald_tests::{fakes::twilio::TwilioFake, pipeline::twilio};

    let p = Pipeline::start("300ms").await;
    let fake = TwilioFake::start().await;
    let slow = p
        .env
        .spawn_worker(Channel::Sms, |c| {
            twilio(&fake)(c);
            c.sms_rate_per_sec = 1;
        })
        .await;
    let users: Vec<String> = (0..30).map(|i| format!("u-{i}")).collect();
    let values: Vec<String> = users
        .iter()
        .enumerate()
        .map(|(i, u)| format!("('acme', '{u}', '+1415555{i:04}')"))
        .collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, id, phone) VALUES {}",
        values.join(",")
    )))
    .execute(&p.env.pool)
    .await
    .unwrap();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let id = p
        .send(json!({"category": "orders", "to": {"users": refs},
                     "content": {"sms": {"text": "Order shipped"}}}))
        .await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            (fake.requests().len() >= 2).then_some(())
        })
        .await
        .expect("the paced worker got going");
    // At 1/s, pacing through the rest would take about half a minute.
    tokio::time::timeout(Duration::from_secs(10), slow.stop())
        .await
        .expect("the worker stopped without pacing through its backlog");
    let fast = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"sent": 30}));
    let mut to: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.form()["To"].clone())
        .collect();
    to.sort();
    to.dedup();
    assert_eq!(
        (to.len(), fake.requests().len()),
        (30, 30),
        "each recipient once"
    );
    fast.stop().await;
    p.stop().await;
}

/// The claim and the outcome of a delivery are tied by the claim's token:
/// a claim retried after its answer was lost counts its attempt once; a
/// second worker cannot take a row another one is sending (unless the
/// broker redelivered the message or the lease ran out); an outcome under
/// a stale token changes nothing.
#[tokio::test]
async fn claims_and_outcomes_are_tied_by_the_claims_token() {
    let env = herald_tests::TestEnv::new().await;
    let created = chrono::Utc::now();
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, user_id, channel, lane,
                                 destination, status)
         VALUES ($1, $2, $3, 'acme', 'u-1', 'push', 'normal', 'tok', 'pending')",
    )
    .bind(id)
    .bind(created)
    .bind(uuid::Uuid::now_v7())
    .execute(&env.pool)
    .await
    .unwrap();
    let claim = |token: uuid::Uuid, redelivered: bool| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, (bool, Option<i32>, Option<String>)>(
                "SELECT claimed, attempts, status FROM herald_claim_deliveries($1, $2, $3, 120, $4)",
            )
            .bind(vec![created])
            .bind(vec![id])
            .bind(vec![redelivered])
            .bind(vec![token])
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let settle = |token: uuid::Uuid, status: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT herald_settle_deliveries($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(vec![created])
            .bind(vec![id])
            .bind(vec![status])
            .bind(vec![None::<String>])
            .bind(vec![None::<String>])
            .bind(vec![None::<String>])
            .bind(vec![false])
            .bind(vec![token])
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let first = uuid::Uuid::new_v4();
    assert_eq!(
        claim(first, false).await,
        (true, Some(1), Some("sending".into()))
    );
    // The same claim again (its answer was lost): still one attempt.
    assert_eq!(
        claim(first, false).await,
        (true, Some(1), Some("sending".into()))
    );
    // Another worker's claim of a row being sent is refused.
    let second = uuid::Uuid::new_v4();
    assert_eq!(
        claim(second, false).await,
        (false, Some(1), Some("sending".into()))
    );
    // A redelivered message takes it over (its holder's channel closed).
    assert_eq!(
        claim(second, true).await,
        (true, Some(2), Some("sending".into()))
    );
    // The first holder's outcome comes late: nothing is recorded.
    assert_eq!(settle(first, "failed").await, 0);
    assert_eq!(settle(second, "sent").await, 1);
    // Recorded once: the retried outcome and every later claim change nothing.
    assert_eq!(settle(second, "sent").await, 0);
    assert_eq!(
        claim(uuid::Uuid::new_v4(), true).await,
        (false, Some(2), Some("sent".into()))
    );
}
