//! The final check: the ledger against the provider sightings and the
//! database's `notifications`, `deliveries` and `dead_letters`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use uuid::Uuid;

use super::{FaultReport, Ledger, LostDetail, Report, Sighting};

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
        timings_ms: Default::default(),
    })
}

/// Checks again and again (every 500 ms, at most `timeout`) until nothing
/// is lost and nothing is under way (no accepted notification has a
/// delivery still `pending` or `sending`), and returns the last report: the
/// pipeline gets time to drain what it holds, and a report with `lost > 0`
/// says what was still missing when time ran out. `sightings` is called
/// afresh for each check.
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
            Ok(report) if report.lost == 0 && report.under_way() == 0 => return report,
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
