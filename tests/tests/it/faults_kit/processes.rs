//! Herald's own processes killed with SIGKILL under load: ingest, the
//! router and every channel worker, each restarted as an orchestrator
//! would; and two router replicas fanning out one large topic, one of them
//! killed midway.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use herald_tests::faults::{ledger::Ledger, stack::TENANT};

use super::pipeline::{Pipeline, Setup, assert_nothing_lost, wait_accepted, wait_delivering};

/// Kills `proc` with SIGKILL and starts it again once it is gone.
async fn kill_and_restart(proc: &mut herald_tests::faults::procs::Proc) {
    proc.kill9().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proc.restart().await;
    proc.wait_ready(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn ingest_router_and_push_worker_killed_lose_nothing() {
    let mut p = Pipeline::start().await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    for (at, name) in [(60, "ingest"), (120, "router"), (180, "worker-push")] {
        wait_accepted(&ledger, at).await;
        let fault = format!("{name}-kill9");
        ledger.fault_started(&fault);
        let proc = match name {
            "ingest" => &mut p.ingest,
            "router" => p.router(),
            _ => &mut p.push,
        };
        kill_and_restart(proc).await;
        ledger.fault_ended(&fault);
        wait_delivering(&p.fcm, Instant::now()).await;
    }

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("processes-kill9", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

/// The email and SMS workers killed while they deliver: every delivery of
/// every accepted notification ends `sent`, and what the relay and Twilio
/// received more than once is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn email_and_sms_workers_killed_lose_nothing() {
    let mut p = Pipeline::with(Setup {
        email_and_sms: true,
        ..Setup::default()
    })
    .await;
    let ledger = Ledger::new();
    let load = p
        .load()
        .channels(&["email", "sms"])
        .count(200)
        .spawn(&ledger);
    wait_accepted(&ledger, 60).await;
    kill_and_restart(p.email.as_mut().expect("email worker")).await;
    wait_accepted(&ledger, 120).await;
    kill_and_restart(p.sms.as_mut().expect("sms worker")).await;
    let stats = load.await.expect("load task");
    assert_eq!(stats.gave_up, 0, "{stats:?}");

    // Every delivery of every accepted notification sent, by the database.
    let ids: Vec<uuid::Uuid> = ledger.accepted().iter().map(|a| a.id).collect();
    let settled = herald_tests::faults::wait_for(
        "every email and SMS delivery sent",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM deliveries WHERE notification_id = ANY($1) GROUP BY 1",
            )
            .bind(&ids)
            .fetch_all(&p.stack.pool)
            .await
            .ok()?;
            let sent = rows.iter().find(|r| r.0 == "sent").map_or(0, |r| r.1);
            (sent == 2 * ids.len() as i64 && rows.len() == 1).then_some(rows)
        },
    )
    .await;
    eprintln!("deliveries: {settled:?}");
    // What the providers saw: each email once per Message-ID, each SMS
    // once per (number, text), the text carrying the send's number.
    let emails = p.smtp.as_ref().expect("relay").messages();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in &emails {
        let id = m
            .data
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or_default()
            .to_owned();
        *by_id.entry(id).or_default() += 1;
    }
    let sms = p.twilio.as_ref().expect("twilio").requests();
    let mut by_text: HashMap<(String, String), usize> = HashMap::new();
    for r in &sms {
        let form = r.form();
        *by_text
            .entry((form["To"].clone(), form["Body"].clone()))
            .or_default() += 1;
    }
    fn duplicates<K>(counts: &HashMap<K, usize>) -> usize {
        counts.values().map(|n| n - 1).sum()
    }
    eprintln!(
        "email: {} sent, {} duplicates; sms: {} sent, {} duplicates",
        by_id.len(),
        duplicates(&by_id),
        by_text.len(),
        duplicates(&by_text)
    );
    assert_eq!(by_id.len(), ids.len(), "one email per notification");
    assert_eq!(by_text.len(), ids.len(), "one SMS per notification");
    p.assert_all_running();
}

/// Two router replicas share one 100,000-subscriber topic; one is killed
/// with SIGKILL midway. Every subscriber gets the notification once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn two_routers_on_a_large_topic_one_killed_lose_nothing() {
    const SUBSCRIBERS: i32 = 100_000;
    let mut p = Pipeline::with(Setup {
        routers: 2,
        ..Setup::default()
    })
    .await;
    sqlx::query(
        "INSERT INTO users (tenant_id, id) SELECT $1, 'tu-' || lpad(g::text, 6, '0')
         FROM generate_series(1, $2) g",
    )
    .bind(TENANT)
    .bind(SUBSCRIBERS)
    .execute(&p.stack.pool)
    .await
    .expect("seed users");
    for sql in [
        "INSERT INTO devices (tenant_id, user_id, token, platform)
         SELECT $1, 'tu-' || lpad(g::text, 6, '0'), 'tu-token-' || lpad(g::text, 6, '0'), 'fcm'
         FROM generate_series(1, $2) g",
        "INSERT INTO topic_subscriptions (tenant_id, topic, user_id)
         SELECT $1, 'launch', 'tu-' || lpad(g::text, 6, '0') FROM generate_series(1, $2) g",
    ] {
        sqlx::query(sql)
            .bind(TENANT)
            .bind(SUBSCRIBERS)
            .execute(&p.stack.pool)
            .await
            .expect("seed");
    }
    let http = reqwest::Client::new();
    let resp = http
        .post(p.ingest.url("/v1/notifications"))
        .bearer_auth(&p.stack.key)
        .json(&serde_json::json!({
            "category": "launch", "priority": "bulk", "to": {"topic": "launch"},
            "content": {"push": {"title": "We launched"}},
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
    let id: uuid::Uuid = resp.json::<serde_json::Value>().await.expect("body")["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let pool = p.stack.pool.clone();
    let routed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE notification_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    herald_tests::faults::wait_for(
        "a third of the topic routed",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async { (routed().await >= i64::from(SUBSCRIBERS) / 3).then_some(()) },
    )
    .await;
    let killed_at = Instant::now();
    kill_and_restart(p.router()).await;
    eprintln!("router killed and back in {:?}", killed_at.elapsed());

    let started = Instant::now();
    let sent = herald_tests::faults::wait_for(
        "every subscriber's delivery sent",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deliveries WHERE notification_id = $1 AND status = 'sent'",
            )
            .bind(id)
            .fetch_one(&p.stack.pool)
            .await
            .ok()?;
            (n == i64::from(SUBSCRIBERS)).then_some(n)
        },
    )
    .await;
    let requests = p.fcm.requests();
    let mut tokens: Vec<String> = requests
        .iter()
        .map(|r| {
            r.json()["message"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let total = tokens.len();
    tokens.sort();
    tokens.dedup();
    eprintln!(
        "topic: {sent} sent, {} provider requests for {} tokens ({} duplicates), drained {:?} after the restart",
        total,
        tokens.len(),
        total - tokens.len(),
        started.elapsed()
    );
    assert_eq!(routed().await, i64::from(SUBSCRIBERS), "one delivery each");
    assert_eq!(tokens.len(), SUBSCRIBERS as usize, "every device reached");
    p.assert_all_running();
}
