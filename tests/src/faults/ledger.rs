//! The ledger of what the API promised, and the final check of a fault
//! scenario against what the providers saw and what the database says.
//!
//! The product's promise (PRODUCT.md, "Outages"): a 202 means durable, and
//! nothing accepted is lost, sent twice after `sent`, or turned into a dead
//! letter by an outage. So the ledger records every id ingest answered 202
//! for (a 503 is no promise), and the check counts, per accepted id:
//! delivered (a provider fake received it), dead (a dead-letter record
//! exists), or lost (neither). Lost must be 0. Duplicates (provider
//! requests beyond one per delivery) are counted and reported: at-least-once
//! allows some, but they should be rare and explained.
//!
//! Fault windows are recorded too, so the report can say how long each
//! fault lasted and how long after its end the first provider request came
//! (deliveries flowing again).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fakes::Recorded;

/// One id ingest accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: Uuid,
    pub user: String,
    pub channel: String,
    pub at: Instant,
}

/// A fault, from injection to the moment it was lifted.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub name: String,
    pub started: Instant,
    pub ended: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    accepted: Vec<Accepted>,
    ids: HashSet<Uuid>,
    refused: BTreeMap<u16, u64>,
    transport_errors: u64,
    faults: Vec<FaultWindow>,
}

/// Accepted ids, refusals and fault windows of one scenario. Cheap to clone
/// (shared); the load driver and the scenario write to the same ledger.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Inner>>);

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("ledger")
    }

    /// Records a 202 for `id`. Returns false if the id was already recorded
    /// (an idempotent replay of the same request).
    pub fn accept(&self, id: Uuid, user: &str, channel: &str) -> bool {
        let mut inner = self.inner();
        if !inner.ids.insert(id) {
            return false;
        }
        inner.accepted.push(Accepted {
            id,
            user: user.to_owned(),
            channel: channel.to_owned(),
            at: Instant::now(),
        });
        true
    }

    /// Records an answer that was not a 202 (503, 429, ...).
    pub fn refused(&self, status: u16) {
        *self.inner().refused.entry(status).or_default() += 1;
    }

    /// Records a request that got no HTTP answer at all.
    pub fn transport_error(&self) {
        self.inner().transport_errors += 1;
    }

    /// Every accepted id, in order of acceptance.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.inner().accepted.clone()
    }

    /// How many ids were accepted.
    pub fn accepted_count(&self) -> usize {
        self.inner().accepted.len()
    }

    /// Marks the start of fault `name`.
    pub fn fault_started(&self, name: &str) {
        self.inner().faults.push(FaultWindow {
            name: name.to_owned(),
            started: Instant::now(),
            ended: None,
        });
    }

    /// Marks the end of the latest open fault named `name`.
    pub fn fault_ended(&self, name: &str) {
        let mut inner = self.inner();
        let window = inner
            .faults
            .iter_mut()
            .rev()
            .find(|f| f.name == name && f.ended.is_none())
            .unwrap_or_else(|| panic!("fault {name:?} ended but never started"));
        window.ended = Some(Instant::now());
    }

    /// The fault windows so far.
    pub fn faults(&self) -> Vec<FaultWindow> {
        self.inner().faults.clone()
    }
}

/// One provider request, attributed to a delivery.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The notification the request carried (FCM's collapse key, APNs'
    /// collapse id); `None` if it carried none.
    pub notification_id: Option<Uuid>,
    /// The device token or address it went to.
    pub destination: String,
    pub at: Instant,
}

/// FCM `messages:send` requests as sightings: Herald sets the Android
/// collapse key to the notification id.
pub fn fcm_sightings(requests: &[Recorded]) -> Vec<Sighting> {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/messages:send"))
        .map(|r| {
            let message = &r.json()["message"];
            Sighting {
                notification_id: message["android"]["collapse_key"]
                    .as_str()
                    .and_then(|s| s.parse().ok()),
                destination: message["token"].as_str().unwrap_or_default().to_owned(),
                at: r.received,
            }
        })
        .collect()
}

/// APNs requests as sightings (`apns-collapse-id`, token in the path).
pub fn apns_sightings(requests: &[Recorded]) -> Vec<Sighting> {
    requests
        .iter()
        .filter(|r| r.path.starts_with("/3/device/"))
        .map(|r| Sighting {
            notification_id: r.header("apns-collapse-id").and_then(|s| s.parse().ok()),
            destination: r.path.trim_start_matches("/3/device/").to_owned(),
            at: r.received,
        })
        .collect()
}

/// A fault's duration and the time to the first provider request after it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub duration_ms: Option<u64>,
    /// From the fault's end to the first provider request after it;
    /// `None` if none came. Near 0 when deliveries never stopped (work
    /// already routed kept flowing through a router outage).
    pub recovery_ms: Option<u64>,
    /// The longest silence between two provider requests that overlaps the
    /// fault: how long deliveries actually stalled.
    pub stall_ms: Option<u64>,
}

/// What became of one lost id.
#[derive(Debug, Clone, Serialize)]
pub struct LostDetail {
    pub id: Uuid,
    pub user: String,
    /// `None`: no `notifications` row at all (a 202 that was not durable).
    pub notification_status: Option<String>,
    /// Statuses of its `deliveries` rows (empty: never routed).
    pub delivery_statuses: Vec<String>,
}

/// The outcome of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub accepted: usize,
    pub delivered: usize,
    pub dead: usize,
    /// accepted - delivered - dead (ids in both count once, as delivered).
    pub lost: usize,
    pub duplicates: usize,
    pub provider_requests: usize,
    /// Provider requests for notifications the ledger never accepted.
    pub unknown_requests: usize,
    /// Answers other than 202 the load driver got, by status.
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub faults: Vec<FaultReport>,
    /// Statuses of the accepted notifications' `deliveries` rows.
    pub delivery_statuses: BTreeMap<String, u64>,
    /// Up to 20 lost ids with what the database knows of them.
    pub lost_sample: Vec<LostDetail>,
    /// `(queue, ready, unacked)` the broker held at the end, when added
    /// with [`Report::with_queues`]; only queues holding something.
    pub queues: Vec<(String, u64, u64)>,
    /// Messages in those queues, ready plus unacked.
    pub broker_held: u64,
}

impl Report {
    /// One line: the numbers a reader checks first.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| {
                let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v}ms"));
                format!(
                    "{}(lasted {}, stalled {}, recovered {} after)",
                    f.name,
                    ms(f.duration_ms),
                    ms(f.stall_ms),
                    ms(f.recovery_ms)
                )
            })
            .collect();
        format!(
            "{}: accepted={} delivered={} dead={} lost={} duplicates={} requests={} unknown={} refused={:?} transport_errors={} broker_held={} faults=[{}]",
            self.scenario,
            self.accepted,
            self.delivered,
            self.dead,
            self.lost,
            self.duplicates,
            self.provider_requests,
            self.unknown_requests,
            self.refused,
            self.transport_errors,
            self.broker_held,
            faults.join(", ")
        )
    }

    /// The whole report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("report serialises")
    }

    /// Adds the broker's queue depths at the end of the scenario.
    pub fn with_queues(mut self, queues: Vec<(String, u64, u64)>) -> Self {
        self.queues = queues.into_iter().filter(|q| q.1 + q.2 > 0).collect();
        self.broker_held = self.queues.iter().map(|q| q.1 + q.2).sum();
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Checks the ledger against provider sightings and the database now.
pub async fn check(
    scenario: &str,
    ledger: &Ledger,
    pool: &PgPool,
    sightings: &[Sighting],
) -> Result<Report, sqlx::Error> {
    let accepted = ledger.accepted();
    let ids: Vec<Uuid> = accepted.iter().map(|a| a.id).collect();
    let notifications: HashMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, status FROM notifications WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let mut deliveries: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (id, status) in sqlx::query_as::<_, (Uuid, String)>(
        "SELECT notification_id, status::text FROM deliveries WHERE notification_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    {
        deliveries.entry(id).or_default().push(status);
    }
    let dead: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
        "SELECT DISTINCT notification_id FROM dead_letters WHERE notification_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();

    let known: HashSet<Uuid> = ids.iter().copied().collect();
    let mut per_delivery: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut unknown_requests = 0;
    for s in sightings {
        match s.notification_id {
            Some(id) if known.contains(&id) => {
                *per_delivery
                    .entry((id, s.destination.as_str()))
                    .or_default() += 1;
            }
            _ => unknown_requests += 1,
        }
    }
    let seen: HashSet<Uuid> = per_delivery.keys().map(|(id, _)| *id).collect();
    let duplicates = per_delivery.values().map(|n| n - 1).sum();

    let mut delivered = 0;
    let mut dead_count = 0;
    let mut lost_sample = Vec::new();
    let mut lost = 0;
    for a in &accepted {
        if seen.contains(&a.id) {
            delivered += 1;
        } else if dead.contains(&a.id) {
            dead_count += 1;
        } else {
            lost += 1;
            if lost_sample.len() < 20 {
                lost_sample.push(LostDetail {
                    id: a.id,
                    user: a.user.clone(),
                    notification_status: notifications.get(&a.id).cloned(),
                    delivery_statuses: deliveries.get(&a.id).cloned().unwrap_or_default(),
                });
            }
        }
    }
    let mut delivery_statuses = BTreeMap::new();
    for status in deliveries.values().flatten() {
        *delivery_statuses.entry(status.clone()).or_default() += 1;
    }
    let mut times: Vec<Instant> = sightings.iter().map(|s| s.at).collect();
    times.sort();
    let faults = ledger
        .faults()
        .into_iter()
        .map(|f| {
            let end = f.ended.unwrap_or_else(Instant::now);
            FaultReport {
                duration_ms: f.ended.map(|e| ms(e - f.started)),
                recovery_ms: f
                    .ended
                    .and_then(|end| times.iter().find(|t| **t >= end).map(|t| ms(*t - end))),
                stall_ms: times
                    .windows(2)
                    .filter(|w| w[1] >= f.started && w[0] <= end)
                    .map(|w| ms(w[1] - w[0]))
                    .max(),
                name: f.name,
            }
        })
        .collect();
    let (refused, transport_errors) = {
        let inner = ledger.inner();
        (inner.refused.clone(), inner.transport_errors)
    };
    Ok(Report {
        scenario: scenario.to_owned(),
        accepted: accepted.len(),
        delivered,
        dead: dead_count,
        lost,
        duplicates,
        provider_requests: sightings.len(),
        unknown_requests,
        refused,
        transport_errors,
        faults,
        delivery_statuses,
        lost_sample,
        queues: Vec::new(),
        broker_held: 0,
    })
}

/// Checks again and again (every 500 ms, at most `timeout`) until nothing
/// is lost, and returns the last report: the pipeline gets time to drain
/// what it holds, and a report with `lost > 0` says what was still missing
/// when time ran out. `sightings` is called afresh for each check.
pub async fn settle(
    scenario: &str,
    ledger: &Ledger,
    pool: &PgPool,
    sightings: impl Fn() -> Vec<Sighting>,
    timeout: Duration,
) -> Report {
    let started = Instant::now();
    let mut last: Option<Report> = None;
    let mut last_error = None;
    for _ in 0..(timeout.as_millis() / 500 + 1) {
        match check(scenario, ledger, pool, &sightings()).await {
            Ok(report) if report.lost == 0 => return report,
            Ok(report) => last = Some(report),
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last.unwrap_or_else(|| panic!("the final check never reached the database: {last_error:?}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
