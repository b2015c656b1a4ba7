//! Event-driven ingest under bad input: every message published to
//! `herald.ingest` is either accepted or lands in the dead-letter store with
//! its reason; none is lost, none loops.
//!
//! Cases are drawn from the strategies with proptest's runner but published
//! all at once, since a dead letter reaches the store asynchronously; a
//! failing case is reported with its payload instead of being shrunk.

use std::time::Duration;

use herald::{
    broker::{Headers, Outgoing, Publisher},
    db::keys::Scope,
};
use herald_tests::TestEnv;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use serde_json::json;

use super::{
    body_bytes, cases, free_text_notification, hostile_string, json_value, mutated_notification,
    valid_notification,
};

/// One published message.
#[derive(Debug, Clone)]
struct Case {
    tenant: String,
    /// `Ok(key)`: a valid idempotency key `case-{n}`; `Err(value)`: a header
    /// value that is not one.
    key: Result<(), String>,
    body: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    let tenant = prop_oneof![
        8 => Just("acme".to_owned()),
        1 => Just("nobody".to_owned()),
        1 => hostile_string().prop_map(|mut s| {
            // A routing key is at most 255 bytes.
            while s.len() > 255 {
                s.pop();
            }
            s
        }),
    ];
    let key = prop_oneof![
        8 => Just(Ok(())),
        1 => "[!-~]{256,300}".prop_map(Err),
        1 => "[a-z]{0,4}[ é\\x00\\t]{1,3}".prop_map(Err),
    ];
    let body = body_bytes(prop_oneof![
        3 => mutated_notification(),
        2 => free_text_notification(),
        1 => json_value(),
        1 => Just(valid_notification()),
        // A huge unknown key: its name comes back in the error message.
        1 => (1usize..200_000).prop_map(|n| json!({ "x".repeat(n): 1 })),
        // Every recipient invalid: one error per user.
        1 => Just(json!({"category": "c", "to": {"users": vec!["é".repeat(100); 1000]},
                         "content": {"sms": {"text": "t"}}})),
    ]);
    (tenant, key, body).prop_map(|(tenant, key, body)| Case { tenant, key, body })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_payloads_are_accepted_or_dead_lettered_with_a_reason() {
    let env = TestEnv::new().await;
    env.key("acme", &[Scope::Send]).await;
    let ingest = env.spawn_ingest().await;
    // The router archives dead letters into the store.
    let router = env.spawn_router().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());

    let mut runner = TestRunner::new(Config::default());
    let strategy = case();
    let n = cases(200) as usize;
    let cases: Vec<Case> = (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("case").current())
        .collect();
    for (i, case) in cases.iter().enumerate() {
        let key = match &case.key {
            Ok(()) => format!("case-{i}"),
            Err(bad) => bad.clone(),
        };
        let headers = Headers::default()
            .str(Headers::IDEMPOTENCY_KEY, key)
            .str("x-test-case", i.to_string());
        let msg = Outgoing::json(
            env.names().ingest_exchange(),
            &case.tenant,
            case.body.clone(),
            headers,
        );
        publisher
            .publish(&msg)
            .await
            .unwrap_or_else(|e| panic!("case {i} cannot be published: {e}: {case:?}"));
    }

    // Every case ends up accepted (by its idempotency key) or dead (by its
    // test header), exactly once.
    let account = || async {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT n,
                    (SELECT count(*) FROM notifications WHERE idempotency_key = 'case-' || n),
                    (SELECT count(*) FROM dead_letters WHERE headers->>'x-test-case' = n::text)
             FROM generate_series(0, $1 - 1) AS n",
        )
        .bind(n as i64)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        rows
    };
    let done = env
        .eventually(Duration::from_secs(90), || async {
            let rows = account().await;
            rows.iter().all(|(_, a, d)| a + d >= 1).then_some(rows)
        })
        .await;
    let rows = match done {
        Some(rows) => rows,
        None => {
            let missing: Vec<String> = account()
                .await
                .iter()
                .filter(|(_, a, d)| a + d == 0)
                .map(|(i, _, _)| format!("case {i}: {:?}", short(&cases[*i as usize])))
                .collect();
            panic!(
                "{} of {n} messages neither accepted nor dead-lettered:\n{}",
                missing.len(),
                missing.join("\n")
            );
        }
    };
    for (i, accepted, dead) in &rows {
        let case = &cases[*i as usize];
        assert_eq!(
            accepted + dead,
            1,
            "case {i} counted twice: {:?}",
            short(case)
        );
        if *accepted == 1 {
            assert!(
                case.body.len() <= herald::api::MAX_BODY,
                "case {i}: a body over the 1 MiB limit was accepted: {:?}",
                short(case)
            );
            assert!(
                case.tenant == "acme" && case.key.is_ok(),
                "case {i} accepted: {:?}",
                short(case)
            );
        }
    }
    let dead: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT source, error_class, last_error FROM dead_letters WHERE headers ? 'x-test-case'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (source, class, error) in &dead {
        assert_eq!(source, "ingest");
        assert!(
            ["invalid", "idempotency_conflict"].contains(&class.as_str()),
            "{class}: {error}"
        );
        assert!(!error.is_empty(), "a dead letter says why");
    }

    // Still consuming: a valid event is accepted after all that.
    let msg = Outgoing::json(
        env.names().ingest_exchange(),
        "acme",
        serde_json::to_vec(&valid_notification()).unwrap(),
        Headers::default().str(Headers::IDEMPOTENCY_KEY, "after-the-storm"),
    );
    publisher.publish(&msg).await.unwrap();
    env.eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE idempotency_key = 'after-the-storm'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await
    .expect("a valid event is still accepted");
    eprintln!(
        "{n} events: {} accepted, {} dead-lettered",
        rows.iter().filter(|r| r.1 == 1).count(),
        dead.len()
    );
    let health = reqwest::get(ingest.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    ingest.stop().await;
    router.stop().await;
    broker.close().await;
}

/// A case small enough to print.
fn short(case: &Case) -> String {
    let body = String::from_utf8_lossy(&case.body);
    let body: String = body.chars().take(300).collect();
    format!(
        "tenant {:?}, key {:?}, {} bytes: {body}",
        case.tenant,
        case.key
            .as_ref()
            .map_err(|k| k.chars().take(40).collect::<String>()),
        case.body.len()
    )
}
