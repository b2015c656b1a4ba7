//! The load driver: one-recipient push notifications (the common case,
//! STYLE.md) sent to ingest over HTTP while faults happen, every 202
//! recorded in the [`Ledger`]; and seeding of the recipients it sends to.
//!
//! A client that behaves as the API asks: a 503 or 429 is retried after its
//! `Retry-After`, a request that got no answer is retried, and every retry
//! of one logical send carries the same `Idempotency-Key`, so a 202 whose
//! answer was lost (ingest killed mid-request) is answered again with the
//! same id instead of creating a second notification. Each logical send
//! gives up when the run's hard bound passes.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;

/// How sends are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many sends started per second (each still bounded by the
    /// concurrency).
    Rate(f64),
    /// As fast as the concurrent clients allow.
    Flat,
}

/// When the driver stops starting new sends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Count(u64),
    For(Duration),
}

/// Longest wait for one HTTP answer; ingest answers in milliseconds, so
/// this only bounds a hung server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A `Retry-After` longer than this is shortened: a scenario's outage is
/// seconds long and the run has its own bound.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A load run's settings.
#[derive(Debug, Clone)]
pub struct Load {
    /// Ingest's base URL, `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// An API key with the `send` scope.
    pub key: String,
    /// Recipients, used round robin.
    pub users: Vec<String>,
    pub pace: Pace,
    /// Concurrent requests at most.
    pub concurrency: usize,
    pub until: Until,
    /// Hard bound of the whole run, retries included.
    pub bound: Duration,
    /// `high`, `normal` or `bulk`.
    pub priority: String,
    /// Channels of each send (`push` by default): content for each, and
    /// the request restricted to them.
    pub channels: Vec<String>,
    /// Prefix of the idempotency keys, unique per run.
    pub run_id: String,
    /// Stops starting sends when cancelled (sends under way finish).
    pub stop: CancellationToken,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStats {
    /// Logical sends started.
    pub sends: u64,
    /// Sends answered 202 (replays of the same send count once).
    pub accepted: u64,
    /// Sends abandoned: a final non-retryable answer, or the bound passed.
    pub gave_up: u64,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Non-202 answers by status.
    pub refused: BTreeMap<u16, u64>,
    /// Requests without an answer.
    pub transport_errors: u64,
    pub elapsed_ms: u64,
}

impl Load {
    /// `count` sends from 8 concurrent clients, bounded at 120 s.
    pub fn new(base_url: impl Into<String>, key: impl Into<String>, users: Vec<String>) -> Self {
        assert!(!users.is_empty(), "the load needs recipients");
        Self {
            base_url: base_url.into(),
            key: key.into(),
            users,
            pace: Pace::Flat,
            concurrency: 8,
            until: Until::Count(100),
            bound: Duration::from_secs(120),
            priority: "normal".into(),
            channels: vec!["push".into()],
            run_id: format!("load-{}", super::suffix()),
            stop: CancellationToken::new(),
        }
    }

    /// Sends at `per_sec`.
    pub fn rate(mut self, per_sec: f64) -> Self {
        assert!(per_sec > 0.0);
        self.pace = Pace::Rate(per_sec);
        self
    }

    /// At most `n` requests in flight.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Stops after `n` sends (instead of after a duration).
    pub fn count(mut self, n: u64) -> Self {
        self.until = Until::Count(n);
        self
    }

    /// Stops starting sends after `d` (instead of after a count).
    pub fn duration(mut self, d: Duration) -> Self {
        self.until = Until::For(d);
        self
    }

    /// Also stops starting sends once `token` is cancelled: a scenario
    /// runs the load "until the faults are done".
    pub fn stop_on(mut self, token: CancellationToken) -> Self {
        self.stop = token;
        self
    }

    /// Hard bound of the run, retries included.
    pub fn bound(mut self, d: Duration) -> Self {
        self.bound = d;
        self
    }

    /// Sends on `channels` (each send to all of them).
    pub fn channels(mut self, channels: &[&str]) -> Self {
        self.channels = channels.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Sends with `priority` (`high`, `normal`, `bulk`).
    pub fn priority(mut self, priority: &str) -> Self {
        self.priority = priority.to_owned();
        self
    }

    /// Runs the load on its own task; the handle yields the stats.
    pub fn spawn(self, ledger: &Ledger) -> tokio::task::JoinHandle<LoadStats> {
        let ledger = ledger.clone();
        tokio::spawn(async move { self.run(&ledger).await })
    }

    /// Runs the load to the end (or the bound) and returns what it did.
    pub async fn run(&self, ledger: &Ledger) -> LoadStats {
        let started = Instant::now();
        let deadline = started + self.bound;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let shared = Arc::new(Counters::default());
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut i: u64 = 0;
        loop {
            let more = match self.until {
                Until::Count(n) => i < n,
                Until::For(d) => started.elapsed() < d,
            };
            if !more || Instant::now() >= deadline || self.stop.is_cancelled() {
                break;
            }
            if let Pace::Rate(per_sec) = self.pace {
                let due = started + Duration::from_secs_f64(i as f64 / per_sec);
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    _ = tokio::time::sleep_until(due.min(deadline).into()) => {}
                }
            }
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let send = LogicalSend {
                http: http.clone(),
                url: format!("{}/v1/notifications", self.base_url),
                key: self.key.clone(),
                user: self.users[(i as usize) % self.users.len()].clone(),
                idempotency_key: format!("{}-{i}", self.run_id),
                body: body(
                    &self.users[(i as usize) % self.users.len()],
                    &self.priority,
                    &self.channels,
                    i,
                ),
                deadline,
            };
            let (ledger, shared) = (ledger.clone(), shared.clone());
            tasks.spawn(async move {
                send.run(&ledger, &shared).await;
                drop(permit);
            });
            i += 1;
            // Reap finished tasks as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        // Every send stops at the deadline; a little slack for the last
        // request's own timeout.
        let drain = deadline.saturating_duration_since(Instant::now()) + REQUEST_TIMEOUT;
        if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        let c = &shared;
        LoadStats {
            sends: i,
            accepted: c.accepted.load(Ordering::SeqCst),
            gave_up: c.gave_up.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            refused: c.refused.lock().expect("refused").clone(),
            transport_errors: c.transport_errors.load(Ordering::SeqCst),
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    gave_up: AtomicU64,
    requests: AtomicU64,
    transport_errors: AtomicU64,
    refused: std::sync::Mutex<BTreeMap<u16, u64>>,
}

/// One logical send and its retries.
struct LogicalSend {
    http: reqwest::Client,
    url: String,
    key: String,
    user: String,
    idempotency_key: String,
    body: Value,
    deadline: Instant,
}

impl LogicalSend {
    async fn run(&self, ledger: &Ledger, c: &Counters) {
        // Bounded in count too: even 100 ms retries fill a 120 s bound
        // with fewer than 1,200 attempts.
        for _ in 0..2_000 {
            if Instant::now() >= self.deadline {
                break;
            }
            c.requests.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .http
                .post(&self.url)
                .bearer_auth(&self.key)
                .header("Idempotency-Key", &self.idempotency_key)
                .json(&self.body)
                .send()
                .await;
            let pause = match answer {
                Ok(resp) if resp.status().as_u16() == 202 => {
                    let id = resp
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|b| b["id"].as_str().and_then(|s| s.parse().ok()));
                    match id {
                        Some(id) => {
                            let channels: Vec<&str> = self.body["channels"]
                                .as_array()
                                .map(|c| c.iter().filter_map(Value::as_str).collect())
                                .unwrap_or_default();
                            ledger.accept(id, &self.user, &channels.join(","));
                            c.accepted.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        // The body was cut off: ask again, the key
                        // answers with the same id.
                        None => Duration::from_millis(200),
                    }
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    ledger.refused(status);
                    *c.refused
                        .lock()
                        .expect("refused")
                        .entry(status)
                        .or_default() += 1;
                    // 503 and 429 say "later"; so does a 409 with
                    // `Retry-After` (the key's first request is still in
                    // progress, e.g. its ingest was killed mid-request).
                    let later = matches!(status, 429 | 503)
                        || (status == 409 && resp.headers().contains_key("retry-after"));
                    if !later {
                        break;
                    }
                    retry_after(&resp)
                }
                Err(_) => {
                    ledger.transport_error();
                    c.transport_errors.fetch_add(1, Ordering::SeqCst);
                    Duration::from_millis(250)
                }
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
        }
        c.gave_up.fetch_add(1, Ordering::SeqCst);
    }
}

fn retry_after(resp: &reqwest::Response) -> Duration {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

/// The notification of send `i`: one recipient, on `channels`. The send's
/// number travels in every channel's content (`Send <n> of ...`), so a
/// provider request can be told apart from another even where the wire
/// carries no id of Herald's (an SMS).
fn body(user: &str, priority: &str, channels: &[String], i: u64) -> Value {
    let mut content = serde_json::Map::new();
    for channel in channels {
        let part = match channel.as_str() {
            "push" => json!({"title": "Load {{n}}", "body": "Send {{n}} of the fault load"}),
            "email" => json!({"subject": "Load {{n}}", "text": "Send {{n}} of the fault load"}),
            "sms" => json!({"text": "Send {{n}} of the fault load"}),
            other => panic!("no content for channel `{other}`"),
        };
        content.insert(channel.clone(), part);
    }
    json!({
        "category": "fault.load",
        "priority": priority,
        "to": {"users": [user]},
        "channels": channels,
        "content": content,
        "data": {"n": i.to_string()},
    })
}

/// Creates `n` users of `tenant` (`fu-000001` ...) with one active FCM
/// device each (`fcm-token-000001` ...), an email address
/// (`fu-000001@example.com`) and a phone (`+15550000001`), straight in SQL:
/// seeding through the API costs two requests per user and tests nothing a
/// scenario cares about. Returns the user ids.
pub async fn seed_push_users(pool: &PgPool, tenant: &str, n: u32) -> Vec<String> {
    sqlx::query(
        "INSERT INTO users (tenant_id, id, name, email, phone)
         SELECT $1, 'fu-' || lpad(g::text, 6, '0'), 'User ' || g,
                'fu-' || lpad(g::text, 6, '0') || '@example.com', '+1555' || lpad(g::text, 7, '0')
         FROM generate_series(1, $2) g",
    )
    .bind(tenant)
    .bind(n as i32)
    .execute(pool)
    .await
    .expect("seed users");
    sqlx::query(
        "INSERT INTO devices (tenant_id, user_id, token, platform)
         SELECT $1, 'fu-' || lpad(g::text, 6, '0'), 'fcm-token-' || lpad(g::text, 6, '0'), 'fcm'
         FROM generate_series(1, $2) g",
    )
    .bind(tenant)
    .bind(n as i32)
    .execute(pool)
    .await
    .expect("seed devices");
    (1..=n).map(|g| format!("fu-{g:06}")).collect()
}

/// The same recipients through the API (`PUT /v1/users/{id}` and its
/// device), for a scenario that wants ingest's own writes; needs a key with
/// the `manage` scope.
pub async fn seed_push_users_via_api(base_url: &str, key: &str, n: u32) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let mut users = Vec::with_capacity(n as usize);
    for g in 1..=n {
        let user = format!("fu-{g:06}");
        let calls = [
            (
                format!("{base_url}/v1/users/{user}"),
                json!({"name": format!("User {g}")}),
            ),
            (
                format!("{base_url}/v1/users/{user}/devices/fcm-token-{g:06}"),
                json!({"platform": "fcm"}),
            ),
        ];
        for (url, body) in calls {
            let resp = http
                .put(&url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
            assert!(resp.status().is_success(), "PUT {url}: {}", resp.status());
        }
        users.push(user);
    }
    users
}
