//! Sending and watching: closed loops of concurrent clients (single sends,
//! keyed single sends, batches) and open loops at a fixed rate, each send's
//! accept time recorded, and each notification's provider call found in the
//! FCM fake's journal by its collapse key (the notification id).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use uuid::Uuid;

use super::Pipeline;

/// How a phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/notifications`.
    Single,
    /// The same, each with an `Idempotency-Key` of its own.
    Keyed,
    /// `POST /v1/notifications/batch` with this many per request.
    Batch(usize),
}

/// What a phase measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phase {
    pub notifications: usize,
    /// Notifications accepted per second: first request to last 202.
    pub accepted_per_sec: f64,
    /// Deliveries per second end to end: first request to last provider call.
    pub delivered_per_sec: f64,
    /// From each 202 to its provider call, in ms.
    pub latency: Percentiles,
}

/// p50, p95, p99 and max of a sample, in ms.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

/// The request of one notification to one user.
fn notification(user: &str, priority: &str) -> Value {
    json!({
        "category": "bench",
        "priority": priority,
        "to": {"users": [user]},
        "content": {"push": {"title": "Bench", "body": "Hello {{name}}"}},
    })
}

/// The part of ingest's answer to a single send the benchmark reads.
#[derive(serde::Deserialize)]
struct AcceptedOne {
    id: Uuid,
}

/// The part of an FCM request the benchmark reads: the collapse key, which
/// is the notification's id. Parsed into this, not into a `Value`: the
/// load generator shares the machine it measures.
#[derive(serde::Deserialize)]
struct FcmSend<'a> {
    #[serde(borrow)]
    message: FcmMessage<'a>,
}

#[derive(serde::Deserialize)]
struct FcmMessage<'a> {
    #[serde(borrow)]
    android: Option<FcmAndroid<'a>>,
}

#[derive(serde::Deserialize)]
struct FcmAndroid<'a> {
    collapse_key: Option<&'a str>,
}

/// The notification id an FCM request carries, if any.
fn collapse_key(body: &[u8]) -> Option<Uuid> {
    let send: FcmSend<'_> = serde_json::from_slice(body).ok()?;
    send.message.android?.collapse_key?.parse().ok()
}

/// Accept times of a phase's notifications.
/// Accepted notifications: when their request was sent, and when its answer came.
type Accepted = Arc<Mutex<HashMap<Uuid, (Instant, Instant)>>>;

/// Where and as whom to send.
#[derive(Clone)]
struct Target {
    single: String,
    batch: String,
    key: String,
}

impl Target {
    fn of(p: &Pipeline) -> Self {
        Self {
            single: p.ingest.url("/v1/notifications"),
            batch: p.ingest.url("/v1/notifications/batch"),
            key: p.key.clone(),
        }
    }
}

/// Sends one request of `mode` for `users`; records the accepted ids.
async fn send(
    http: &reqwest::Client,
    to: &Target,
    mode: Mode,
    users: &[String],
    priority: &str,
    accepted: &Accepted,
) -> anyhow::Result<()> {
    let (url, body) = match mode {
        Mode::Batch(_) => (
            &to.batch,
            json!({"notifications": users.iter().map(|u| notification(u, priority)).collect::<Vec<_>>()}),
        ),
        _ => (&to.single, notification(&users[0], priority)),
    };
    let mut req = http.post(url).bearer_auth(&to.key).json(&body);
    if mode == Mode::Keyed {
        req = req.header("Idempotency-Key", Uuid::new_v4().to_string());
    }
    // Latency counts from the request, not from its answer: whatever
    // ingest does before the 202 is part of it.
    let sent = Instant::now();
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let answer = resp.bytes().await?;
    let answered = Instant::now();
    let ids: Vec<Uuid> = match mode {
        Mode::Batch(_) => serde_json::from_slice::<Value>(&answer).map_or_else(
            |_| Vec::new(),
            |a| {
                a["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["id"].as_str()?.parse().ok())
                    .collect()
            },
        ),
        _ => serde_json::from_slice::<AcceptedOne>(&answer)
            .map(|a| a.id)
            .into_iter()
            .collect(),
    };
    anyhow::ensure!(
        (status == 202 || status == 200) && ids.len() == users.len(),
        "not accepted ({status}): {}",
        String::from_utf8_lossy(&answer)
    );
    let mut map = accepted.lock().expect("accepted");
    for id in ids {
        map.insert(id, (sent, answered));
    }
    Ok(())
}

fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// `n` notifications from `concurrency` clients as fast as they go.
pub async fn closed_loop(
    p: &Pipeline,
    n: usize,
    concurrency: usize,
    mode: Mode,
) -> anyhow::Result<Phase> {
    let per_request = match mode {
        Mode::Batch(k) => k,
        _ => 1,
    };
    let requests = n.div_ceil(per_request);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Accepted = Arc::default();
    let journal = p.fcm.request_count();
    let http = client(concurrency);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let to = Target::of(p);
    for _ in 0..concurrency {
        let (next, accepted, http, to) = (next.clone(), accepted.clone(), http.clone(), to.clone());
        let users = p.users.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(());
                }
                let batch: Vec<String> = (0..per_request)
                    .map(|k| users[(i * per_request + k) % users.len()].clone())
                    .collect();
                send(&http, &to, mode, &batch, "normal", &accepted).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    watch(p, journal, started, accepted).await
}

/// Notifications at `per_sec` for `secs`, whatever the answers' pace (an
/// open loop: a slow pipeline meets more load, not less).
pub async fn open_loop(
    p: &Pipeline,
    per_sec: f64,
    secs: u64,
    priority: &str,
    mode: Mode,
) -> anyhow::Result<Phase> {
    let n = (per_sec * secs as f64) as usize;
    let accepted: Accepted = Arc::default();
    let journal = p.fcm.request_count();
    let http = client(256);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let to = Target::of(p);
    for i in 0..n {
        let due = started + Duration::from_secs_f64(i as f64 / per_sec);
        tokio::time::sleep_until(due.into()).await;
        let (accepted, http, to) = (accepted.clone(), http.clone(), to.clone());
        let user = vec![p.users[i % p.users.len()].clone()];
        let priority = priority.to_owned();
        tasks.spawn(async move { send(&http, &to, mode, &user, &priority, &accepted).await });
        while tasks.try_join_next().is_some() {}
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    watch(p, journal, started, accepted).await
}

/// Waits until every accepted notification reached the provider and works
/// out the phase's figures.
async fn watch(
    p: &Pipeline,
    journal: usize,
    started: Instant,
    accepted: Accepted,
) -> anyhow::Result<Phase> {
    let accepted = std::mem::take(&mut *accepted.lock().expect("accepted"));
    let last_accept = accepted
        .values()
        .map(|(_, answered)| *answered)
        .max()
        .unwrap_or(started);
    let mut seen: HashMap<Uuid, Instant> = HashMap::new();
    let mut read = journal;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.len() < accepted.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} notifications reached the provider",
            seen.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        read += p.fcm.each_request_since(read, |r| {
            if let Some(id) = collapse_key(&r.body).filter(|id| accepted.contains_key(id)) {
                seen.entry(id).or_insert(r.received);
            }
        });
    }
    let last_call = seen.values().max().copied().unwrap_or(started);
    let latency = accepted
        .iter()
        .map(|(id, (sent, _))| seen[id].saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        .collect();
    Ok(Phase {
        notifications: accepted.len(),
        accepted_per_sec: accepted.len() as f64 / (last_accept - started).as_secs_f64(),
        delivered_per_sec: accepted.len() as f64 / (last_call - started).as_secs_f64(),
        latency: Percentiles::of(latency),
    })
}
