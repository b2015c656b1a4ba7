//! Unknown API keys cannot exhaust ingest's database pool, and one client's
//! wrong keys do not lock out another.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use sqlx::Connection;

use super::*;

fn notification() -> Value {
    json!({"category": "security", "priority": "high", "to": {"users": ["u-1"]},
           "content": {"sms": {"text": "Code {{code}}"}}, "data": {"code": "123456"}})
}

/// A random, well-formed but unknown key.
fn random_key() -> String {
    format!("hk_{}", uuid::Uuid::new_v4().simple())
}

/// Sends notifications with random keys from `concurrency` tasks until
/// `stop`; returns every status seen and whether each answer was a problem.
fn flood(
    url: String,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, bool)>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let resp = http
                            .post(&url)
                            .bearer_auth(random_key())
                            .json(&notification())
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await
                            .expect("ingest answers every request");
                        let problem = resp.headers()["content-type"] == "application/problem+json";
                        seen.push((resp.status().as_u16(), problem));
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("flood task"));
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_never_starves_requests_with_a_valid_key() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let key = env.key("acme", &[Scope::Send]).await;
    let client = Client::new(&ingest, &key);
    let (status, body) = client
        .json(Method::POST, "/v1/notifications", Some(notification()))
        .await;
    assert_eq!(status, 202, "{body}");

    // The database stalls every key lookup (as an overloaded one would):
    // the lock makes each lookup hold its connection until released.
    let mut locker = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = flood(ingest.url("/v1/notifications"), 32, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ingest's pool has 8 connections and 32 unknown keys are being looked
    // up at any moment; a valid key still gets a connection every time.
    for _ in 0..10 {
        let (status, body) = client
            .json(Method::POST, "/v1/notifications", Some(notification()))
            .await;
        assert_eq!(status, 202, "a valid request starved by the flood: {body}");
    }
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    // Lookups answer again: the flood's failures add up until the client
    // address is refused without any lookup at all.
    let refused = env
        .eventually(Duration::from_secs(30), || async {
            let r = reqwest::Client::new()
                .post(ingest.url("/v1/notifications"))
                .bearer_auth(random_key())
                .json(&notification())
                .send()
                .await
                .unwrap();
            (r.status() == 429).then(|| r.headers().get("retry-after").cloned())
        })
        .await
        .expect("the flooding address is refused");
    assert!(refused.is_some(), "429 says when to retry");
    stop.store(true, Ordering::Relaxed);
    let seen = flooding.await.unwrap();

    assert!(!seen.is_empty());
    for (status, problem) in &seen {
        assert!(
            [401, 429, 503].contains(status),
            "unexpected {status} for an unknown key"
        );
        assert!(problem, "every refusal is a problem document");
    }
    assert!(
        seen.iter().any(|(s, _)| *s == 503),
        "lookups beyond the bound were refused while the database stalled"
    );
    // Everything the valid key sent was accepted; nothing the flood sent was.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, 11);
    let (status, _) = client
        .json(Method::POST, "/v1/notifications", Some(notification()))
        .await;
    assert_eq!(status, 202);
    ingest.stop().await;
}

/// A client bound to another loopback address is another client.
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn wrong_keys_from_one_address_do_not_lock_out_another() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let guesser = client_from([127, 0, 0, 2]);
    let mut statuses = Vec::new();
    while statuses.len() < 200 && statuses.last() != Some(&429) {
        let resp = guesser
            .post(ingest.url("/v1/notifications"))
            .bearer_auth(random_key())
            .json(&notification())
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&429),
        "the guessing address is refused: {statuses:?}"
    );

    // A key nobody has used yet (so not cached) from another address works.
    let key = env.key("acme", &[Scope::Send]).await;
    let resp = client_from([127, 0, 0, 3])
        .post(ingest.url("/v1/notifications"))
        .bearer_auth(&key)
        .json(&notification())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // A valid key from the refused address still works once it is known
    // valid; the refusal only spares the database lookups of unknown keys.
    let resp = guesser
        .post(ingest.url("/v1/notifications"))
        .bearer_auth(&key)
        .json(&notification())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    ingest.stop().await;
}
