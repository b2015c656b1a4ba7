//! Signed webhooks: the endpoint API, and delivery events POSTed to a
//! receiver that checks every signature with the Standard Webhooks
//! algorithm (itself checked against the specification's test vectors in
//! `herald::webhooks::signature`); the admin page's list and Enable button,
//! and the `herald.webhook.disabled` event on the events exchange.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use herald::{db::keys::Scope, model::Channel, webhooks::signature};
use herald_tests::{Client, Spawned, TestEnv};
use reqwest::Method;
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// What the receiver's handler shares: the requests, the status to answer.
type Shared = (Arc<Mutex<Vec<Hit>>>, Arc<AtomicU16>);

/// A webhook receiver on loopback answering `status` to every POST.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start(status: u16) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State((hits, status)): State<Shared>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        hits.lock().unwrap().push(Hit {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                        });
                        StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                    },
                ),
            )
            .with_state((hits.clone(), status.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, hits, status }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Ingest allowing loopback endpoints, the router, and a manage key.
async fn start(env: &TestEnv) -> (Spawned, Spawned, Client) {
    let ingest = env
        .spawn_ingest_with(|c| {
            c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
        })
        .await;
    let router = env.spawn_router().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    (ingest, router, client)
}

#[tokio::test]
async fn webhooks_api_registers_shows_the_secret_once_rotates_and_deletes() {
    let env = TestEnv::new().await;
    let (ingest, router, client) = start(&env).await;
    let receiver = Receiver::start(204).await;
    let (status, created) = client
        .json(
            Method::PUT,
            "/v1/webhooks/billing",
            Some(json!({"url": receiver.url(), "events": ["email.bounced", "push.*"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"]
        .as_str()
        .expect("secret shown at creation");
    assert!(signature::Secret::parse(secret).is_ok(), "{secret}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["events"], json!(["email.bounced", "push.*"]));

    let (status, again) = client
        .json(
            Method::PUT,
            "/v1/webhooks/billing",
            Some(json!({"url": receiver.url(), "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert!(again.get("secret").is_none(), "never shown again: {again}");
    let (status, one) = client.json(Method::GET, "/v1/webhooks/billing", None).await;
    assert_eq!(status, 200);
    assert!(one.get("secret").is_none());
    assert_eq!(one["events"], json!(["*"]));
    let (_, list) = client.json(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);

    let (status, rotated) = client
        .json(
            Method::POST,
            "/v1/webhooks/billing/rotate",
            Some(json!({"overlap_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_until"].is_string());

    let (status, _) = client
        .json(Method::DELETE, "/v1/webhooks/billing", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = client.json(Method::GET, "/v1/webhooks/billing", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
    ingest.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn webhooks_private_addresses_are_refused_unless_allow_listed() {
    let env = TestEnv::new().await;
    // Ingest as deployed by default: public addresses only.
    let ingest = env.spawn_ingest().await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "ftp://hooks.example.com/",
    ] {
        let (status, body) = client
            .json(
                Method::PUT,
                "/v1/webhooks/w1",
                Some(json!({"url": url, "events": ["*"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["errors"][0]["field"], "url", "{body}");
    }
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/webhooks/w1",
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["fax.sent", "email"]})),
        )
        .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["events[0]", "events[1]"], "{body}");
    // A send-only key may not manage webhooks.
    let send_only = Client::new(&ingest, &env.key("acme", &[Scope::Send]).await);
    let (status, _) = send_only.json(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 403);
    ingest.stop().await;

    // Allow-listed, loopback is accepted.
    let ingest = env
        .spawn_ingest_with(|c| c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    let client = Client::new(&ingest, &key);
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/webhooks/w1",
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    ingest.stop().await;
}

/// Every hit verifies with each of `secrets` and carries a CloudEvent.
fn verify_all(hits: &[Hit], secrets: &[&str]) {
    let now = chrono::Utc::now().timestamp();
    for hit in hits {
        for secret in secrets {
            let secret = signature::Secret::parse(secret).unwrap();
            signature::verify(
                &secret,
                &hit.id,
                &hit.timestamp,
                &hit.body,
                &hit.signature,
                now,
            )
            .unwrap_or_else(|e| panic!("{hit:?}: {e}"));
        }
        let event: Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], hit.id.as_str(), "webhook-id is the event id");
    }
}

async fn register(client: &Client, id: &str, url: &str, events: Value) -> String {
    let (status, body) = client
        .json(
            Method::PUT,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"url": url, "events": events})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

async fn send_push(client: &Client) -> String {
    let (status, body) = client
        .json(
            Method::PUT,
            "/v1/users/u-1",
            Some(json!({"name": "Ada", "email": "ada@example.com"})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, _) = client
        .json(
            Method::PUT,
            "/v1/users/u-1/devices/fcm-token-0001-abcdefghijkl",
            Some(json!({"platform": "fcm"})),
        )
        .await;
    assert!(status == 200 || status == 201);
    let (status, body) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(
                json!({"category": "social", "to": {"users": ["u-1", "ghost"]},
                        "content": {"push": {"title": "Hi", "body": "A message"}}}),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn webhooks_signed_events_reach_matching_endpoints_and_both_secrets_sign_during_a_rotation() {
    let env = TestEnv::new().await;
    let (ingest, router, client) = start(&env).await;
    let push = env.spawn_worker(Channel::Push, |_| {}).await;
    let sent_only = Receiver::start(200).await;
    let everything = Receiver::start(204).await;
    let email_only = Receiver::start(200).await;
    let s1 = register(&client, "sent", &sent_only.url(), json!(["push.sent"])).await;
    let s2 = register(&client, "all", &everything.url(), json!(["*"])).await;
    register(&client, "mail", &email_only.url(), json!(["email.*"])).await;

    send_push(&client).await;
    let hits = env
        .eventually(Duration::from_secs(15), || async {
            (everything.hits().len() >= 2 && !sent_only.hits().is_empty())
                .then(|| (sent_only.hits(), everything.hits()))
        })
        .await
        .expect("the endpoints were called");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (sent_hits, all_hits) = (sent_only.hits(), everything.hits());
    assert_eq!(sent_hits.len(), 1, "push.sent only: {sent_hits:?}");
    assert_eq!(all_hits.len(), 2, "sent and suppressed: {all_hits:?}");
    assert!(email_only.hits().is_empty(), "no email event");
    verify_all(&hits.0, &[&s1]);
    verify_all(&all_hits, &[&s2]);
    let event: Value = serde_json::from_slice(&sent_hits[0].body).unwrap();
    assert_eq!(event["type"], "herald.delivery.sent");
    assert_eq!(event["data"]["channel"], "push");

    // Rotation: both the old and the new secret sign while they overlap.
    let (status, rotated) = client
        .json(Method::POST, "/v1/webhooks/sent/rotate", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let s1_new = rotated["secret"].as_str().unwrap().to_owned();
    send_push(&client).await;
    let hit = env
        .eventually(Duration::from_secs(15), || async {
            sent_only.hits().get(1).cloned()
        })
        .await
        .expect("the second event");
    assert_eq!(hit.signature.split(' ').count(), 2, "{}", hit.signature);
    verify_all(&[hit], &[&s1, &s1_new]);

    push.stop().await;
    router.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn webhooks_a_failing_endpoint_is_retried_on_the_ladder_dead_lettered_and_disabled() {
    // Attempts at about 0 s, 0.2 s and 1.5 s; disabled after failing for
    // 1 s, so at the third attempt, which is also the last.
    let env = TestEnv::with_schedule("200ms,1500ms").await;
    let (ingest, router, client) = start_disabling_after(&env, Duration::from_secs(1)).await;
    let failing = Receiver::start(503).await;
    let secret = register(&client, "flaky", &failing.url(), json!(["*.suppressed"])).await;
    send_suppressed(&client).await;
    // Three attempts: the first and one per retry tier, then a dead letter.
    let dead = webhook_dead_letter(&env).await;
    let (class, attempts) = dead.expect("dead-lettered after the last attempt");
    assert_eq!(class, "exhausted");
    assert_eq!(attempts, 3);
    let hits = failing.hits();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(
        hits.iter().all(|h| h.id == hits[0].id),
        "one event id throughout"
    );
    verify_all(&hits, &[&secret]);
    let last_gap =
        hits[2].timestamp.parse::<i64>().unwrap() - hits[1].timestamp.parse::<i64>().unwrap();
    assert!(
        last_gap >= 1,
        "the second retry waited its tier: {last_gap} s"
    );

    let (_, hook) = client.json(Method::GET, "/v1/webhooks/flaky", None).await;
    assert_eq!(hook["status"], "disabled", "{hook}");
    assert!(hook["disabled_at"].is_string());
    // A PUT enables it again.
    failing.status.store(200, Ordering::SeqCst);
    let (status, hook) = client
        .json(
            Method::PUT,
            "/v1/webhooks/flaky",
            Some(json!({"url": failing.url(), "events": ["*.suppressed"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(hook["status"], "active");

    // The operator replays the dead letter: the endpoint gets the same event.
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE source = 'webhooks'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let out = tokio::process::Command::new(herald_tests::binary("heraldctl"))
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .env("RETRY_SCHEDULE", env.schedule.to_string())
        .args(["dlq", "replay", "--id", &id.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = env
        .eventually(Duration::from_secs(10), || async {
            failing.hits().get(3).cloned()
        })
        .await
        .expect("the replayed webhook");
    assert_eq!(replayed.id, hits[0].id);
    verify_all(&[replayed], &[&secret]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(failing.hits().len(), 4, "delivered once, not retried");
    router.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn webhooks_a_message_waiting_for_a_disabled_endpoint_is_kept_as_a_dead_letter() {
    // Disabled at the second failure (0.2 s in, past 100 ms of failing);
    // the retry waiting 1.5 s then finds the endpoint disabled.
    let env = TestEnv::with_schedule("200ms,1500ms").await;
    let (ingest, router, client) = start_disabling(&env).await;
    let failing = Receiver::start(500).await;
    register(&client, "down", &failing.url(), json!(["*"])).await;
    send_suppressed(&client).await;
    let dead = webhook_dead_letter(&env).await;
    assert_eq!(dead, Some(("endpoint_disabled".to_owned(), 2)));
    assert_eq!(failing.hits().len(), 2, "no call once disabled");
    let (_, hook) = client.json(Method::GET, "/v1/webhooks/down", None).await;
    assert_eq!(hook["status"], "disabled");
    router.stop().await;
    ingest.stop().await;
}

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

/// Ingest (admin page on, loopback endpoints allowed) and a router that
/// disables an endpoint at its second failure: the first attempt at 0 s,
/// the retry 0.2 s later, past 100 ms of failing.
async fn start_disabling(env: &TestEnv) -> (Spawned, Spawned, Client) {
    start_disabling_after(env, Duration::from_millis(100)).await
}

/// [`start_disabling`] with a router that disables an endpoint once it has
/// failed for `after`.
async fn start_disabling_after(env: &TestEnv, after: Duration) -> (Spawned, Spawned, Client) {
    let ingest = env
        .spawn_ingest_with(|c| {
            c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
            c.admin_api_key = Some(ADMIN_KEY.to_owned().into());
        })
        .await;
    let router = env
        .spawn_router_with(|c| c.webhook_disable_after = after)
        .await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    (ingest, router, client)
}

/// The class and attempts of the first webhook dead letter, once there is
/// one (within 20 s).
async fn webhook_dead_letter(env: &TestEnv) -> Option<(String, i32)> {
    env.eventually(Duration::from_secs(20), || async {
        sqlx::query_as("SELECT error_class, attempts FROM dead_letters WHERE source = 'webhooks'")
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    })
    .await
}

/// Sends a notification to an unknown user: one `push.suppressed` event.
async fn send_suppressed(client: &Client) {
    let (status, _) = client
        .json(
            Method::POST,
            "/v1/notifications",
            Some(json!({"category": "social", "to": {"users": ["ghost"]},
                        "content": {"push": {"title": "Hi", "body": "A message"}}})),
        )
        .await;
    assert_eq!(status, 202);
}

/// Waits until the API shows endpoint `id` disabled; answers it.
async fn until_disabled(env: &TestEnv, client: &Client, id: &str) -> Value {
    env.eventually(Duration::from_secs(15), || async {
        let (_, hook) = client
            .json(Method::GET, &format!("/v1/webhooks/{id}"), None)
            .await;
        (hook["status"] == "disabled").then_some(hook)
    })
    .await
    .expect("the failing endpoint is disabled")
}

/// The value of the hidden field `name` of the first form on `page` that
/// has one.
fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn webhooks_admin_page_lists_endpoints_without_secrets_and_enables_a_disabled_one() {
    let env = TestEnv::with_schedule("200ms,1500ms").await;
    let (ingest, router, client) = start_disabling(&env).await;
    let fine = Receiver::start(204).await;
    let failing = Receiver::start(500).await;
    let fine_secret = register(&client, "fine", &fine.url(), json!(["push.sent"])).await;
    let down_secret = register(&client, "down", &failing.url(), json!(["*"])).await;
    let (status, rotated) = client
        .json(
            Method::POST,
            "/v1/webhooks/fine/rotate",
            Some(json!({"overlap_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let rotated_secret = rotated["secret"].as_str().unwrap().to_owned();
    send_suppressed(&client).await;
    let hook = until_disabled(&env, &client, "down").await;
    assert!(hook["failing_since"].is_string(), "{hook}");

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .get(ingest.url("/admin/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "signed out: to the login form");
    let get = |path: &str| {
        let req = http.get(ingest.url(path)).bearer_auth(ADMIN_KEY);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    };
    let page = get("/admin/webhooks").await;
    for expected in [
        "fine",
        "down",
        &fine.url(),
        &failing.url(),
        "push.sent",
        "tag active\">active<",
        "tag disabled\">disabled<",
        "yes, until ",
        "href=\"/admin/webhooks\"",
    ] {
        assert!(page.contains(expected), "{expected} missing: {page}");
    }
    for secret in [&fine_secret, &down_secret, &rotated_secret] {
        assert!(!page.contains(secret.as_str()), "a secret shown: {page}");
    }
    assert!(!page.contains("whsec_"), "{page}");
    assert_eq!(
        page.matches("action=\"/admin/webhooks/enable\"").count(),
        1,
        "an Enable button for the disabled endpoint only: {page}"
    );
    assert_eq!(hidden(&page, "id"), "down");
    let token = hidden(&page, "token");

    let disabled = get("/admin/webhooks?status=disabled&tenant=acme").await;
    assert!(disabled.contains(&failing.url()) && !disabled.contains(&fine.url()));
    let active = get("/admin/webhooks?status=active").await;
    assert!(active.contains(&fine.url()) && !active.contains(&failing.url()));
    assert!(
        get("/admin/webhooks?tenant=other")
            .await
            .contains("Nothing here.")
    );

    // A token for another endpoint (or none, or a forged one) enables nothing.
    for (id, token) in [("down", ""), ("down", "123.abc"), ("fine", token.as_str())] {
        let resp = http
            .post(ingest.url("/admin/webhooks/enable"))
            .bearer_auth(ADMIN_KEY)
            .form(&[("tenant", "acme"), ("id", id), ("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    let (_, hook) = client.json(Method::GET, "/v1/webhooks/down", None).await;
    assert_eq!(hook["status"], "disabled");

    let resp = http
        .post(ingest.url("/admin/webhooks/enable"))
        .bearer_auth(ADMIN_KEY)
        .form(&[
            ("tenant", "acme"),
            ("id", "down"),
            ("token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let back = resp.headers()["location"].to_str().unwrap().to_owned();
    let page = get(&back).await;
    assert!(page.contains("id=\"enabled\""), "{page}");
    assert!(!page.contains("tag disabled"), "{page}");
    let (_, hook) = client.json(Method::GET, "/v1/webhooks/down", None).await;
    assert_eq!(hook["status"], "active", "{hook}");
    assert!(hook["disabled_at"].is_null() && hook["failing_since"].is_null());

    // Enabled, it gets events again.
    failing.status.store(200, Ordering::SeqCst);
    let before = failing.hits().len();
    send_suppressed(&client).await;
    let got = env
        .eventually(Duration::from_secs(10), || async {
            (failing.hits().len() > before).then_some(())
        })
        .await;
    assert!(got.is_some(), "the enabled endpoint receives events");
    router.stop().await;
    ingest.stop().await;
}

#[tokio::test]
async fn webhooks_a_disabled_endpoint_is_announced_on_the_events_exchange() {
    let env = TestEnv::with_schedule("200ms,1500ms").await;
    let tap = crate::events::Tap::bind(&env, "*.webhook.disabled").await;
    let (ingest, router, client) = start_disabling(&env).await;
    let failing = Receiver::start(500).await;
    let secret = register(&client, "down", &failing.url(), json!(["*"])).await;
    send_suppressed(&client).await;
    let hook = until_disabled(&env, &client, "down").await;

    let events = tap.collect(1, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1, "one event: {events:#?}");
    let r = &events[0];
    assert_eq!(r.routing_key, "acme.webhook.disabled");
    assert_eq!(r.content_type, "application/cloudevents+json");
    let e = &r.event;
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["type"], "herald.webhook.disabled");
    assert_eq!(e["id"], r.message_id.as_str());
    assert_eq!(e["source"], "/tenants/acme/webhooks/down");
    assert_eq!(e["subject"], "down");
    let data = &e["data"];
    assert_eq!(data["tenant_id"], "acme");
    assert_eq!(data["webhook_id"], "down");
    assert_eq!(data["url"], failing.url().as_str());
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .unwrap()
            .timestamp_micros()
    };
    assert_eq!(
        at(&data["disabled_at"]),
        at(&hook["disabled_at"]),
        "{data} {hook}"
    );
    assert_eq!(at(&data["failing_since"]), at(&hook["failing_since"]));
    assert!(at(&data["failing_since"]) < at(&data["disabled_at"]));
    assert!(!e.to_string().contains(&secret), "no secret in the event");
    // Not sent to the endpoints themselves: they only ever get delivery events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for hit in failing.hits() {
        let event: Value = serde_json::from_slice(&hit.body).unwrap();
        assert!(
            event["type"]
                .as_str()
                .unwrap()
                .starts_with("herald.delivery."),
            "{event}"
        );
    }
    tap.close().await;
    router.stop().await;
    ingest.stop().await;
}

/// Five failures in a row open an endpoint's circuit: the endpoint's next
/// messages are not POSTed while it is open but wait in a retry tier
/// without spending an attempt.
#[tokio::test]
async fn webhooks_a_failing_endpoints_circuit_opens_and_holds_its_messages() {
    let env = TestEnv::with_schedule("1s,2s").await;
    let (ingest, router, client) = start(&env).await;
    let failing = Receiver::start(503).await;
    register(&client, "down", &failing.url(), json!(["*.suppressed"])).await;
    for _ in 0..5 {
        send_suppressed(&client).await;
    }
    env.eventually(Duration::from_secs(15), || async {
        (failing.hits().len() >= 5).then_some(())
    })
    .await
    .expect("five failed POSTs");
    for _ in 0..3 {
        send_suppressed(&client).await;
    }
    let circuit_open = || async {
        let text = reqwest::get(router.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(r#"herald_webhooks_total{outcome="circuit_open"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    env.eventually(Duration::from_secs(4), || async {
        (circuit_open().await >= 3.0).then_some(())
    })
    .await
    .expect("the three new messages parked while the circuit is open");
    assert_eq!(
        failing.hits().len(),
        5,
        "nothing POSTed while the circuit is open"
    );
    // Parked messages spent no attempt: none is dead yet.
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE source = 'webhooks'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(dead, 0);
    ingest.stop().await;
    router.stop().await;
}

/// An endpoint's rate budget (`WEBHOOK_RATE_PER_SEC`): past it, messages
/// wait (in place briefly, else in a retry tier) and are all delivered.
#[tokio::test]
async fn webhooks_an_endpoints_rate_budget_spaces_its_posts_and_delivers_all() {
    let env = TestEnv::with_schedule("1s,2s").await;
    let ingest = env
        .spawn_ingest_with(|c| c.webhook_allowed_networks = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
    let router = env.spawn_router_with(|c| c.webhook_rate_per_sec = 1).await;
    let key = env.key("acme", &[Scope::Send, Scope::Manage]).await;
    let client = Client::new(&ingest, &key);
    let receiver = Receiver::start(200).await;
    register(&client, "slow", &receiver.url(), json!(["*.suppressed"])).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        send_suppressed(&client).await;
    }
    env.eventually(Duration::from_secs(20), || async {
        (receiver.hits().len() >= 3).then_some(())
    })
    .await
    .expect("all three delivered");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "three POSTs at one a second took {:?}",
        started.elapsed()
    );
    let text = reqwest::get(router.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with(r#"herald_webhooks_total{outcome="rate_limited"}"#)
                && !l.ends_with(" 0")
        ),
        "a message waited in a tier for the budget"
    );
    assert_eq!(receiver.hits().len(), 3, "each delivered once");
    ingest.stop().await;
    router.stop().await;
}
