//! `heraldctl dlq list|replay|purge` and `heraldctl stats`, as scripts use them.

use super::*;

/// `heraldctl` with this environment's configuration.
fn heraldctl(env: &TestEnv) -> Command {
    let mut cmd = Command::new(binary("heraldctl"));
    cmd.env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .env("RETRY_SCHEDULE", env.schedule.to_string())
        .kill_on_drop(true);
    cmd
}

async fn run(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = heraldctl(env).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn heraldctl_dlq_lists_replays_and_purges() {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let (msg, delivery) = dead_delivery(&env, "acme", "dead").await;
    seed(&env, |r| r.tenant_id = Some("beta".into())).await;
    seed(&env, |r| {
        r.tenant_id = Some("beta".into());
        r.failed_at = now() - chrono::Duration::days(40);
    })
    .await;

    let (ok, out, err) = run(&env, &["dlq", "list", "--json"]).await;
    assert!(ok, "{err}");
    let items: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(items.len(), 3);
    for item in &items {
        for key in [
            "id",
            "tenant",
            "channel",
            "error_class",
            "last_error",
            "attempts",
        ] {
            assert!(item.get(key).is_some(), "{key} missing in {item}");
        }
    }
    let acme = items.iter().find(|i| i["tenant"] == "acme").unwrap();
    assert_eq!(acme["id"], delivery.to_string());
    assert_eq!(acme["channel"], "sms");
    assert_eq!(acme["error_class"], "timeout");
    assert_eq!(acme["attempts"], 8);
    let (_, out, _) = run(&env, &["dlq", "list", "--json", "--tenant", "beta"]).await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 2);
    let (_, out, _) = run(
        &env,
        &["dlq", "list", "--json", "--id", &delivery.to_string()],
    )
    .await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 1);

    let id = delivery.to_string();
    let (ok, out, err) = run(&env, &["dlq", "replay", "--id", &id, "--dry-run"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("would_replay") && err.contains("1 would be replayed"),
        "{out}{err}"
    );
    assert_eq!(replayed_at(&env, delivery).await, None);
    let (ok, out, err) = run(&env, &["dlq", "replay", "--id", &id, "--json"]).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(report["results"][0]["outcome"], "replayed");
    assert_eq!(delivery_row(&env, &msg).await, ("pending".into(), 0));
    // Back through the router, which routes it again for its user.
    let queue = env.names().route_queue(Lane::High);
    assert_eq!(env.queue_depth(&queue).await, 1);
    // Twice: refused with the reason, nothing published.
    let (ok, _, err) = run(&env, &["dlq", "replay", "--id", &id]).await;
    assert!(!ok);
    assert!(err.contains("--again"), "{err}");
    assert_eq!(env.queue_depth(&queue).await, 1);

    let total = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let (ok, out, err) = run(&env, &["dlq", "purge", "--tenant", "beta"]).await;
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("2 dead letter(s) match") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(total().await, 3);
    let (ok, out, err) = run(&env, &["dlq", "purge", "--older-than", "30d", "--yes"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1");
    assert_eq!(total().await, 2);
    let (ok, _, err) = run(&env, &["dlq", "purge", "--tenant", "beta", "--yes"]).await;
    assert!(ok, "{err}");
    assert_eq!(total().await, 1);

    let (ok, out, err) = run(&env, &["stats", "--json"]).await;
    assert!(ok, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let queues = stats["queues"].as_array().unwrap();
    assert!(
        queues
            .iter()
            .any(|q| q["queue"] == queue.as_str() && q["messages"] == 1)
    );
    assert_eq!(stats["deliveries_last_hour"]["pending"], 1, "{stats}");
    assert_eq!(stats["dead_letters_last_24h"]["timeout"], 1, "{stats}");
    let (ok, out, _) = run(&env, &["stats"]).await;
    assert!(ok && out.contains("DEAD LETTERS (LAST 24 H)"), "{out}");

    // Failures say why on stderr.
    let (ok, _, err) = run(&env, &["dlq", "list", "--since", "soonish"]).await;
    assert!(!ok && err.contains("--since"), "{err}");
    broker.close().await;
}
