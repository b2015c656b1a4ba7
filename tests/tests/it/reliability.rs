//! The delivery path under ordinary trouble: retries that follow the
//! schedule with one message per retry, a failing circuit probe, a give-up
//! whose dead letter cannot be published at first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::{
    db::deliveries::{self, Claim, ClaimRequest, Settle, SettleRequest},
    model::Channel,
};
use herald_tests::{
    fakes::fcm::FcmFake,
    pipeline::{Pipeline, fcm},
};
use serde_json::{Value, json};
use uuid::Uuid;

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

/// Two copies of one delivery on the broker, one of them redelivered while
/// the other is being sent: a publish sent again because its confirm did
/// not come back (ingest, the router), and the first copy handed back when
/// its consumer's channel closed (a broker restart). The redelivered copy
/// leaves the claim to the copy that holds it, and the device gets one push.
#[tokio::test]
async fn a_redelivered_copy_leaves_the_claim_to_the_copy_that_holds_it() {
    use herald::{
        broker::{Headers, Outgoing, Publisher},
        model::Lane,
    };
    use herald_tests::fakes::Scripted;
    use lapin::options::BasicGetOptions;

    let p = Pipeline::start("1s,2s").await;
    let fake = FcmFake::start().await;
    p.user("u-1", json!({"name": "Ada"})).await;
    p.device("u-1", "fcm-token-0001", "fcm").await;
    // Copy A, ingest's publish, is taken by a consumer that holds it unacked.
    let id = p.send(push(&["u-1"])).await;
    let broker = p.env.broker().await;
    let names = p.env.names();
    let queue = names.delivery_queue(Channel::Push, Lane::Normal);
    let holder = broker.channel().await.unwrap();
    let a = p
        .env
        .eventually(Duration::from_secs(10), || async {
            holder
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
        })
        .await
        .expect("copy A is queued");
    // Copy B: the same message published again.
    let mut b = Outgoing::json(
        names.deliveries_exchange(),
        a.delivery.routing_key.as_str(),
        a.delivery.data.clone(),
        Headers::from_table(a.delivery.properties.headers().as_ref()),
    );
    b.copies = true;
    // B's provider call takes a while; any later call is answered at once.
    let mut slow = Scripted::new(200, r#"{"name": "projects/p/messages/1"}"#, &[]);
    slow.delay = Some(Duration::from_secs(3));
    fake.push_scripted(slow);
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;
    Publisher::new(broker.clone()).publish(&b).await.unwrap();
    p.env
        .eventually(Duration::from_secs(10), || async {
            (fake.requests().len() == 1).then_some(())
        })
        .await
        .expect("B is being sent");
    // A's consumer goes: the broker redelivers A, to the worker.
    holder.close(200, "gone".into()).await.unwrap();

    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"sent": 1}));
    assert_eq!(body["deliveries"][0]["attempts"], 1);
    // Past B's answer: a second call would have been made by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.requests().len(), 1, "one push for one delivery");
    assert_eq!(
        p.env.broker_messages().await,
        vec![],
        "both copies are acked"
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
    // Every claim now fails, the probe's included: a trigger refuses every
    // change to `sending`, on whichever partition the row is.
    for sql in [
        "CREATE FUNCTION refuse_claims() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'claims refused'; END $$",
        "CREATE TRIGGER refuse_claims BEFORE UPDATE ON deliveries FOR EACH ROW
         WHEN (NEW.status = 'sending') EXECUTE FUNCTION refuse_claims()",
    ] {
        sqlx::query(sql).execute(&p.env.pool).await.unwrap();
    }
    // Past the open period: the probe has been tried, and failed to claim.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.requests().len(), 1);
    sqlx::query("DROP TRIGGER refuse_claims ON deliveries")
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
    // Ingest marks it routed a few milliseconds after the confirm; the
    // mark must have landed before the test takes it back, or it would
    // undo the test's doing.
    let notification: uuid::Uuid = id.parse().unwrap();
    p.env
        .eventually(Duration::from_secs(10), || async {
            let status: String =
                sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1")
                    .bind(notification)
                    .fetch_one(&p.env.pool)
                    .await
                    .unwrap();
            (status == "routed").then_some(())
        })
        .await
        .expect("marked routed");
    // As if the first pass had died between its insert and its publish.
    let broker = p.env.broker().await;
    broker
        .channel()
        .await
        .unwrap()
        .queue_purge(queue.as_str().into(), Default::default())
        .await
        .unwrap();
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

/// Which code claims and settles: the workers' statements on the
/// delivery's partition, or the SQL functions that binaries of earlier
/// versions call. Both must answer the same.
#[derive(Clone, Copy, Debug)]
enum Ledger {
    Statements,
    Functions,
}

/// One delivery row, `pending`, created at `created`.
async fn pending_delivery(pool: &sqlx::PgPool, created: DateTime<Utc>) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, user_id, channel, lane,
                                 destination, status)
         VALUES ($1, $2, $3, 'acme', 'u-1', 'push', 'normal', 'tok', 'pending')",
    )
    .bind(id)
    .bind(created)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
    id
}

/// Claims `rows` (created, id) in one batch with `token`.
async fn claim(
    ledger: Ledger,
    pool: &sqlx::PgPool,
    rows: &[(DateTime<Utc>, Uuid)],
    token: Uuid,
    redelivered: bool,
) -> Vec<Claim> {
    match ledger {
        Ledger::Statements => {
            let requests: Vec<ClaimRequest> = rows
                .iter()
                .map(|(created_at, id)| ClaimRequest {
                    created_at: *created_at,
                    id: *id,
                    redelivered,
                    // A token per claim, as earlier versions made them,
                    // to compare with their SQL functions.
                    named: false,
                    token,
                })
                .collect();
            let mut conn = pool.acquire().await.unwrap();
            deliveries::claim_many(&mut conn, &requests, Duration::from_secs(120))
                .await
                .unwrap()
        }
        Ledger::Functions => sqlx::query_as::<_, (bool, Option<i32>, Option<String>)>(
            "SELECT claimed, attempts, status FROM herald_claim_deliveries($1, $2, $3, 120, $4)",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(vec![redelivered; rows.len()])
        .bind(vec![token; rows.len()])
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|row| match row {
            (true, Some(attempts), _) => Claim::Claimed { attempts },
            (false, _, Some(status)) => Claim::Skip { status },
            _ => Claim::Missing,
        })
        .collect(),
    }
}

/// Records `status` on `rows` under `token`; answers how many were recorded.
async fn settle(
    ledger: Ledger,
    pool: &sqlx::PgPool,
    rows: &[(DateTime<Utc>, Uuid)],
    token: Uuid,
    status: &'static str,
) -> i32 {
    let outcome = match status {
        "sent" => Settle::Sent { provider_id: None },
        _ => Settle::Failed {
            class: "permanent",
            error: "refused",
        },
    };
    let requests: Vec<SettleRequest> = rows
        .iter()
        .map(|(created, id)| SettleRequest::new(*created, *id, token, &outcome))
        .collect();
    match ledger {
        Ledger::Statements => {
            let mut conn = pool.acquire().await.unwrap();
            deliveries::settle_many(&mut conn, &requests).await.unwrap()
        }
        Ledger::Functions => sqlx::query_scalar::<_, i32>(
            "SELECT herald_settle_deliveries($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(requests.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.class.clone()).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .bind(vec![None::<String>; rows.len()])
        .bind(vec![false; rows.len()])
        .bind(vec![token; rows.len()])
        .fetch_one(pool)
        .await
        .unwrap(),
    }
}

/// The claim and the outcome of a delivery are tied by the claim's token:
/// a claim retried after its answer was lost counts its attempt once; a
/// second worker cannot take a row another one is sending (unless the
/// broker redelivered the message or the lease ran out); an outcome under
/// a stale token changes nothing. The workers' statements and the SQL
/// functions of earlier versions answer alike.
#[tokio::test]
async fn claims_and_outcomes_are_tied_by_the_claims_token() {
    let env = herald_tests::TestEnv::new().await;
    let pool = deliveries::ledger_pool(&env.pool, 2);
    for ledger in [Ledger::Statements, Ledger::Functions] {
        let created = Utc::now();
        let row = [(created, pending_delivery(&env.pool, created).await)];
        let claimed = |attempts| vec![Claim::Claimed { attempts }];
        let skipped = |status: &str| {
            vec![Claim::Skip {
                status: status.into(),
            }]
        };
        let first = Uuid::new_v4();
        assert_eq!(
            claim(ledger, &pool, &row, first, false).await,
            claimed(1),
            "{ledger:?}"
        );
        // The same claim again (its answer was lost): still one attempt.
        assert_eq!(
            claim(ledger, &pool, &row, first, false).await,
            claimed(1),
            "{ledger:?}"
        );
        // Another worker's claim of a row being sent is refused.
        let second = Uuid::new_v4();
        assert_eq!(
            claim(ledger, &pool, &row, second, false).await,
            skipped("sending"),
            "{ledger:?}"
        );
        // A redelivered message takes it over (its holder's channel closed).
        assert_eq!(
            claim(ledger, &pool, &row, second, true).await,
            claimed(2),
            "{ledger:?}"
        );
        // The first holder's outcome comes late: nothing is recorded.
        assert_eq!(
            settle(ledger, &pool, &row, first, "failed").await,
            0,
            "{ledger:?}"
        );
        assert_eq!(
            settle(ledger, &pool, &row, second, "sent").await,
            1,
            "{ledger:?}"
        );
        // Recorded once: the retried outcome and every later claim change nothing.
        assert_eq!(
            settle(ledger, &pool, &row, second, "sent").await,
            0,
            "{ledger:?}"
        );
        assert_eq!(
            claim(ledger, &pool, &row, Uuid::new_v4(), true).await,
            skipped("sent"),
            "{ledger:?}"
        );
    }
}

/// A message copy claims under its own id (`x-herald-copy`): a redelivered
/// copy takes over only the claim it made itself (its consumer's channel
/// closed mid-send), never the claim of another copy of the same delivery
/// being sent right now; a message without a copy id (published by an
/// earlier version) still takes over any claim when redelivered.
#[tokio::test]
async fn a_redelivered_copy_takes_over_only_its_own_claim() {
    let env = herald_tests::TestEnv::new().await;
    let pool = deliveries::ledger_pool(&env.pool, 2);
    let created = Utc::now();
    let row = (created, pending_delivery(&env.pool, created).await);
    let ask = |token: Uuid, redelivered: bool, named: bool| {
        let pool = pool.clone();
        async move {
            let request = ClaimRequest {
                created_at: row.0,
                id: row.1,
                redelivered,
                named,
                token,
            };
            let mut conn = pool.acquire().await.unwrap();
            deliveries::claim_many(&mut conn, &[request], Duration::from_secs(120))
                .await
                .unwrap()
        }
    };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        ask(b, false, true).await,
        vec![Claim::Claimed { attempts: 1 }],
        "copy B claims"
    );
    assert_eq!(
        ask(a, true, true).await,
        vec![Claim::Skip {
            status: "sending".into()
        }],
        "redelivered copy A leaves B's claim alone"
    );
    assert_eq!(
        ask(b, true, true).await,
        vec![Claim::Claimed { attempts: 2 }],
        "B itself, redelivered, takes its claim over and counts an attempt"
    );
    assert_eq!(
        ask(Uuid::new_v4(), true, false).await,
        vec![Claim::Claimed { attempts: 3 }],
        "a redelivered message without a copy id takes over any claim"
    );
}

/// The workers claim and settle on the delivery's own partition. A batch
/// spanning two days, and rows kept in the default partition (no day
/// partition for them), are answered per row in the batch's order, with a
/// delivery named twice claimed once and an unknown one missing; every
/// outcome is recorded and published as an event, whichever partition holds
/// its row.
#[tokio::test]
async fn claims_and_outcomes_find_their_rows_in_every_partition() {
    let env = herald_tests::TestEnv::new().await;
    let pool = deliveries::ledger_pool(&env.pool, 2);
    let today = Utc::now();
    let yesterday = today - chrono::Duration::days(1);
    // Past the partitions made ahead (14 days): the default partition.
    let far = today + chrono::Duration::days(400);
    let mut rows = Vec::new();
    for created in [today, far, yesterday, today, far] {
        rows.push((created, pending_delivery(&env.pool, created).await));
    }
    let partitions: Vec<String> = {
        let mut names = Vec::new();
        for (created, id) in &rows {
            names.push(
                sqlx::query_scalar::<_, String>(
                    "SELECT tableoid::regclass::text FROM deliveries WHERE created_at = $1 AND id = $2",
                )
                .bind(created)
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap(),
            );
        }
        names
    };
    assert_eq!(
        partitions,
        [
            format!("deliveries_{}", today.format("%Y%m%d")),
            "deliveries_default".into(),
            format!("deliveries_{}", yesterday.format("%Y%m%d")),
            format!("deliveries_{}", today.format("%Y%m%d")),
            "deliveries_default".into(),
        ],
        "the batch spans three partitions"
    );
    let token = Uuid::new_v4();
    let mut batch = rows.clone();
    batch.insert(2, rows[1]);
    batch.push((today, Uuid::now_v7()));
    let claims = claim(Ledger::Statements, &pool, &batch, token, false).await;
    let claimed = Claim::Claimed { attempts: 1 };
    assert_eq!(
        claims,
        vec![
            claimed.clone(),
            claimed.clone(),
            Claim::Skip {
                status: "sending".into()
            },
            claimed.clone(),
            claimed.clone(),
            claimed,
            Claim::Missing,
        ]
    );
    assert_eq!(
        settle(Ledger::Statements, &pool, &rows, token, "sent").await,
        5
    );
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE status = 'sent' AND attempts = 1 AND sent_at IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(sent, 5);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE status = 'sent'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(events, 5, "each outcome is an event");
}

/// Claims and outcomes probe a topic's deliveries by primary key on a day
/// of mostly single sends. Those make `created_at` look unique, and the
/// fan-out key, which also starts with `created_at`, then looked as cheap
/// a probe: for a topic's rows (one `created_at`) it read every delivery of
/// the topic per claimed row.
#[tokio::test]
async fn a_topics_claims_probe_by_primary_key_among_single_sends() {
    let env = herald_tests::TestEnv::new().await;
    let table = format!("deliveries_{}", Utc::now().format("%Y%m%d"));
    for sql in [
        // 20,000 single sends, one `created_at` each.
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, user_id, channel,
                                 lane, destination, status)
         SELECT gen_random_uuid(), date_trunc('day', now()) + g * interval '1 ms',
                gen_random_uuid(), 'acme', 'u-' || g, 'push', 'normal', 'tok-' || g, 'sent'
         FROM generate_series(1, 20000) g",
        // A 3,000-subscriber topic: one `created_at`.
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, user_id, channel,
                                 lane, destination, status)
         SELECT gen_random_uuid(), date_trunc('day', now()) + interval '1 hour',
                '00000000-0000-0000-0000-00000000000a', 'acme', 't-' || g, 'push', 'bulk',
                'tok-t-' || g, 'pending'
         FROM generate_series(1, 3000) g",
    ] {
        sqlx::query(sql).execute(&env.pool).await.unwrap();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
        .execute(&env.pool)
        .await
        .unwrap();
    let rows: Vec<(DateTime<Utc>, Uuid)> = sqlx::query_as(
        "SELECT created_at, id FROM deliveries WHERE status = 'pending' ORDER BY id LIMIT 8",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    // The ledger's own connection: its planner settings make the plan the
    // workers use.
    let pool = deliveries::ledger_pool(&env.pool, 1);
    let explain = |statement: &str| {
        sqlx::AssertSqlSafe(format!(
            "EXPLAIN {}",
            statement.replace("{deliveries}", &table)
        ))
    };
    let claim: Vec<String> = sqlx::query_scalar(explain(deliveries::CLAIM))
        .bind(&created)
        .bind(&ids)
        .bind(vec![false; 8])
        .bind(120.0)
        .bind(vec![Uuid::new_v4(); 8])
        .bind(vec![true; 8])
        .fetch_all(&pool)
        .await
        .unwrap();
    let settle: Vec<String> = sqlx::query_scalar(explain(deliveries::SETTLE))
        .bind(&created)
        .bind(&ids)
        .bind(vec!["sent"; 8])
        .bind(vec![None::<String>; 8])
        .bind(vec![None::<String>; 8])
        .bind(vec![None::<String>; 8])
        .bind(vec![false; 8])
        .bind(vec![Uuid::new_v4(); 8])
        .fetch_all(&pool)
        .await
        .unwrap();
    for (name, plan) in [("claim", claim.join("\n")), ("outcome", settle.join("\n"))] {
        assert!(
            plan.contains(&format!("{table}_pkey")) && !plan.contains("notification_id_user_id"),
            "the {name} must probe by primary key only:\n{plan}"
        );
    }
}

/// The backend process id of the connection `conn`.
async fn backend(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
}

/// Ends backend `pid` and waits until PostgreSQL no longer lists it.
async fn terminate(pool: &sqlx::PgPool, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(pool)
        .await
        .unwrap();
    for _ in 0..100 {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(pool)
                .await
                .unwrap();
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backend {pid} still running");
}

/// The writers' kept connections (`herald::db::kept`): a connection kept
/// after its statement serves the next one; one the database closed while
/// it was kept fails that one statement, takes the other kept connections
/// back to the pool with it, and the next statement gets a working
/// connection; one kept idle past `IDLE_PING` is tested before use, so a
/// closed one is replaced without failing a statement; and closing the
/// pool does not wait for the connections kept from it.
#[tokio::test]
async fn kept_connections_serve_the_next_statement_and_closed_ones_are_replaced() {
    use herald::db::kept::{IDLE_PING, Kept};
    let env = herald_tests::TestEnv::new().await;
    let pool = herald::db::connect_lazy_with((*env.pool.connect_options()).clone(), 4);
    let kept = Kept::new(pool);
    let mut a = kept.take().await.unwrap();
    let mut b = kept.take().await.unwrap();
    let (first, second) = (
        backend(&mut a).await.unwrap(),
        backend(&mut b).await.unwrap(),
    );
    assert_ne!(first, second);
    b.keep();
    a.keep();
    assert_eq!(kept.idle(), 2);

    // The connection kept last serves the next statement.
    let mut c = kept.take().await.unwrap();
    assert_eq!(backend(&mut c).await.unwrap(), first);
    c.keep();

    // Closed by the database while kept: one statement fails, and the
    // connections kept with it go back to the pool.
    terminate(&env.pool, first).await;
    let mut d = kept.take().await.unwrap();
    assert!(backend(&mut d).await.is_err());
    drop(d);
    assert_eq!(kept.idle(), 0);
    let mut e = kept.take().await.unwrap();
    let fresh = backend(&mut e).await.unwrap();
    assert_ne!(fresh, first);
    e.keep();

    // Closed while kept idle past IDLE_PING: the ping finds out, and the
    // statement runs on another connection.
    terminate(&env.pool, fresh).await;
    tokio::time::sleep(IDLE_PING + Duration::from_millis(200)).await;
    let mut f = kept.take().await.unwrap();
    let replaced = backend(&mut f).await.unwrap();
    assert_ne!(replaced, fresh);
    f.keep();
    assert_eq!(kept.idle(), 1);

    // Closing the pool (a process stopping) does not wait for the kept
    // connection: it is given back as the close begins.
    tokio::time::timeout(Duration::from_secs(5), kept.pool().close())
        .await
        .expect("the pool closes with a connection kept");
    assert_eq!(kept.idle(), 0);
}
