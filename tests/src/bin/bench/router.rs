//! The router benchmark. The router runs as its own process (the release
//! binary next to this one) so its peak RSS can be read from /proc.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use herald::{
    broker::{Headers, Outgoing, Publisher},
    db::keys::Scope,
    model::{Channel, Lane},
};
use herald_tests::{Client, TestEnv, binary};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use reqwest::Method;
use serde_json::json;

fn rss_peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Acks everything arriving on a queue, like a very fast worker, and counts it.
fn drain(env: &TestEnv, queue: String) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let broker = herald::broker::Broker::new(herald_tests::amqp_url(), env.names());
    tokio::spawn(async move {
        let ch = broker.channel().await.expect("channel");
        ch.basic_qos(2000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "bench-drain".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .expect("consume");
        let mut n = 0u64;
        while let Some(Ok(d)) = consumer.next().await {
            n += 1;
            if n.is_multiple_of(500) {
                d.ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
                tx.send_replace(n);
            } else if n.is_multiple_of(50) {
                tx.send_replace(n);
                d.ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
        }
    });
    rx
}

async fn wait_routed(env: &TestEnv, id: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .expect("status");
        if status == "routed" {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "not routed within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latency of `n` high-priority one-user sends, accept to routed, one at a time.
async fn high_latencies(env: &TestEnv, client: &Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, body) = client
            .json(
                Method::POST,
                "/v1/notifications",
                Some(
                    json!({"category": "security", "priority": "high", "to": {"users": ["vip"]},
                            "content": {"sms": {"text": "code 123456"}}}),
                ),
            )
            .await;
        assert_eq!(status, 202);
        wait_routed(
            env,
            body["id"].as_str().expect("id"),
            Duration::from_secs(60),
        )
        .await;
        out.push(started.elapsed());
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(subscribers: usize, sends: usize) -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let key = env.key("bench", &[Scope::Send, Scope::Manage]).await;
    let ingest = env.spawn_ingest().await;
    let client = Client::new(&ingest, &key);
    client
        .json(
            Method::PUT,
            "/v1/users/vip",
            Some(json!({"phone": "+14155550100"})),
        )
        .await;

    eprintln!("seeding {subscribers} subscribers ...");
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO users (tenant_id, id, name, email) SELECT 'bench', 'user-' || lpad(g::text, 8, '0'), 'User ' || g, 'user' || g || '@example.com'
         FROM generate_series(1, $1) g",
    )
    .bind(subscribers as i32)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "INSERT INTO topic_subscriptions (tenant_id, topic, user_id) SELECT 'bench', 'all', 'user-' || lpad(g::text, 8, '0')
         FROM generate_series(1, $1) g",
    )
    .bind(subscribers as i32)
    .execute(&env.pool)
    .await?;
    sqlx::query("ANALYZE").execute(&env.pool).await?;
    eprintln!("seeded in {:.1}s", started.elapsed().as_secs_f64());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut router = tokio::process::Command::new(binary("router"))
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .env("RETRY_SCHEDULE", env.schedule.to_string())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = router.id().expect("pid");
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names = env.names();
    let bulk_email = drain(&env, names.delivery_queue(Channel::Email, Lane::Bulk));
    let normal_email = drain(&env, names.delivery_queue(Channel::Email, Lane::Normal));
    let _high_sms = drain(&env, names.delivery_queue(Channel::Sms, Lane::High));

    // Baseline: publish-with-confirm of delivery-sized messages, 64 in flight.
    let publisher = Publisher::new(broker.clone());
    let body = vec![b'x'; 420];
    let n = 20_000;
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(64, |_| {
            let msg = Outgoing::json(
                names.deliveries_exchange(),
                "email.normal",
                body.clone(),
                Headers::default(),
            );
            let publisher = publisher.clone();
            async move { publisher.publish(&msg).await.expect("publish") }
        })
        .await;
    let raw = n as f64 / started.elapsed().as_secs_f64();

    // User-list sends: 100 recipients each, 8 in flight.
    let users: Vec<String> = (1..=100).map(|i| format!("user-{i:08}")).collect();
    let target = n as u64 + (sends * 100) as u64;
    let started = Instant::now();
    stream::iter(0..sends)
        .for_each_concurrent(8, |_| {
            let body = json!({"category": "orders", "to": {"users": users}, "content": {"email": {"subject": "Hi {{name}}", "text": "t"}}});
            let client = &client;
            async move { assert_eq!(client.json(Method::POST, "/v1/notifications", Some(body)).await.0, 202) }
        })
        .await;
    let mut rx = normal_email.clone();
    while *rx.borrow() < target - 50 {
        rx.changed().await?;
    }
    let list_rate = (sends * 100) as f64 / started.elapsed().as_secs_f64();

    let idle = high_latencies(&env, &client, 30).await;

    // The topic.
    let started = Instant::now();
    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(json!({"category": "launch", "priority": "bulk", "to": {"topic": "all"},
                        "content": {"email": {"subject": "Big news, {{name}}", "text": "Hello {{name}}"}}})),
        )
        .await;
    assert_eq!(status, 202);
    let topic_id = body["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = high_latencies(&env, &client, 30).await;
    let routed = wait_routed(&env, &topic_id, Duration::from_secs(1800)).await;
    let topic_time = started.elapsed().max(routed);
    let delivered = *bulk_email.borrow();
    let rss = rss_peak_mib(pid);

    println!("router benchmark ({subscribers} topic subscribers)");
    println!("{:<52} {:>14}", "measurement", "value");
    println!(
        "{:<52} {:>14.0}",
        "raw publish-with-confirm, msgs/s (baseline)", raw
    );
    println!(
        "{:<52} {:>14.0}",
        "user-list sends, routed deliveries/s", list_rate
    );
    println!("{:<52} {:>14.2}", "  ratio to baseline", list_rate / raw);
    println!(
        "{:<52} {:>14.1}",
        "topic fully enqueued (routed), seconds",
        topic_time.as_secs_f64()
    );
    println!(
        "{:<52} {:>14.0}",
        "topic deliveries/s",
        subscribers as f64 / topic_time.as_secs_f64()
    );
    println!(
        "{:<52} {:>14}",
        "topic delivery messages consumed so far", delivered
    );
    println!("{:<52} {:>14.1}", "router peak RSS, MiB", rss);
    println!(
        "{:<52} {:>14.1}",
        "high send accept->routed p50 idle, ms",
        pct(&idle, 0.5)
    );
    println!(
        "{:<52} {:>14.1}",
        "high send accept->routed p95 idle, ms",
        pct(&idle, 0.95)
    );
    println!(
        "{:<52} {:>14.1}",
        "high send accept->routed p50 during topic, ms",
        pct(&busy, 0.5)
    );
    println!(
        "{:<52} {:>14.1}",
        "high send accept->routed p95 during topic, ms",
        pct(&busy, 0.95)
    );
    println!(
        "{:<52} {:>14.2}",
        "  p50 ratio during/idle",
        pct(&busy, 0.5) / pct(&idle, 0.5)
    );
    router.start_kill()?;
    ingest.stop().await;
    broker.close().await;
    Ok(())
}
