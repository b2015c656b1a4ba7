//! Replay: puts dead letters back where they came from, through the normal
//! path. Used by `heraldctl dlq replay` and the admin page.
//!
//! A dead delivery goes back through the router: its row is set back to
//! `pending` (with no attempts), then a routing message asks the router to
//! route its notification again for that user, so preferences, erasure,
//! suppressions, quiet hours and expiry apply as of now, and the content is
//! rendered afresh. Any other record's payload goes back to its original
//! exchange and routing key (an ingest dead letter to `herald.ingest` keyed
//! by tenant, so it is validated again; a routing message to its lane) with
//! its original headers, minus what dead-lettering added. A record is marked replayed only once its publish is
//! confirmed, and by default only records never replayed are selected, so a
//! replay interrupted halfway can simply be run again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    broker::{Headers, Names, Outgoing, Publisher},
    db::{
        dead_letters::{self, DeadLetter, Filter},
        deliveries::{self, Reset},
    },
    model::message::{DeliveryMessage, Replay, RouteMessage},
};

/// What to replay and how fast.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Which records; `only_unreplayed` is overridden by `again`.
    pub filter: Filter,
    /// Most records replayed by this call.
    pub limit: i64,
    /// Report what would be replayed, change nothing.
    pub dry_run: bool,
    /// Publishes per second (0 = as fast as confirms come back).
    pub rate_per_sec: u32,
    /// Include records already replayed.
    pub again: bool,
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Published (confirmed) and marked replayed.
    Replayed,
    /// Dry run: would be published.
    WouldReplay,
    /// Not published, for a reason that is no error (already sent, replayed
    /// meanwhile by someone else).
    Skipped,
    /// Could not be published or marked.
    Failed,
    /// Not tried: the replay stopped early (the broker went away).
    NotAttempted,
}

/// One record's result.
#[derive(Debug, Clone, Serialize)]
pub struct RecordResult {
    /// The dead letter's id.
    pub id: Uuid,
    pub tenant: Option<String>,
    pub channel: Option<String>,
    pub error_class: String,
    /// Where it was (or would be) published.
    pub exchange: String,
    pub routing_key: String,
    pub outcome: Outcome,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Nothing was changed; `replayed` counts what would have been.
    pub dry_run: bool,
    /// Records matching the filter (up to the limit).
    pub selected: usize,
    /// Published and marked (or, in a dry run, that would be).
    pub replayed: usize,
    /// Left alone on purpose (see [`Outcome::Skipped`]).
    pub skipped: usize,
    /// Failed or not attempted.
    pub failed: usize,
    /// Why the replay stopped before the end, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// One per selected record, in replay order (oldest first).
    pub results: Vec<RecordResult>,
}

/// Headers dead-lettering added, dropped on replay so the message looks as it
/// did before it failed (and a new failure is described afresh).
fn added_by_dead_lettering(key: &str) -> bool {
    key.starts_with("x-herald-error")
        || key.starts_with("x-herald-original-")
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
        || key == Headers::SOURCE
        || key == Headers::RETRY_DELAY_MS
        || key == Headers::LEGACY_RETRY_DELAY_MS
        || key == "x-death"
}

fn amqp_value(v: &serde_json::Value) -> AMQPValue {
    use serde_json::Value;
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => n.as_i64().map_or_else(
            || AMQPValue::Double(n.as_f64().unwrap_or_default()),
            AMQPValue::LongLongInt,
        ),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(_) => AMQPValue::FieldTable(field_table(v)),
    }
}

fn field_table(v: &serde_json::Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            table.insert(ShortString::from(k.as_str()), amqp_value(v));
        }
    }
    table
}

/// The headers a record is replayed with: its stored headers without what
/// dead-lettering added, attempts back to 0, and the replay number.
pub fn replay_headers(record: &DeadLetter) -> Headers {
    let mut table = FieldTable::default();
    if let Some(map) = record.headers.as_object() {
        for (k, v) in map.iter().filter(|(k, _)| !added_by_dead_lettering(k)) {
            table.insert(ShortString::from(k.as_str()), amqp_value(v));
        }
    }
    Headers::from_table(Some(&table))
        .int(Headers::ATTEMPTS, 0)
        .int(Headers::REPLAY, i64::from(record.replay_count) + 1)
}

/// The delivery row behind a delivery dead letter: the partition key and id
/// travel in the message body.
fn delivery_key(record: &DeadLetter, deliveries_exchange: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if record.exchange != deliveries_exchange && record.delivery_id.is_none() {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&record.payload).ok()?;
    let created_at = body.get("created_at")?.as_str()?.parse().ok()?;
    let id = body.get("delivery_id")?.as_str()?.parse().ok()?;
    Some((created_at, id))
}

/// The routing message that replays a dead delivery through the router,
/// so preferences, erasure, suppressions, quiet hours and expiry apply as of
/// now (PRODUCT.md: a replay goes through the normal path). `None` for a
/// record whose payload is not a delivery: it goes back as it was.
fn through_router(record: &DeadLetter, names: &Names) -> Option<(Uuid, Outgoing)> {
    let msg: DeliveryMessage = serde_json::from_slice(&record.payload).ok()?;
    let notification = msg.notification_id;
    let route = RouteMessage {
        notification_id: msg.notification_id,
        tenant_id: msg.tenant_id,
        page: None,
        replay: Some(Replay {
            users: vec![msg.user_id],
            number: i64::from(record.replay_count) + 1,
        }),
    };
    Some((
        notification,
        route.outgoing(names, msg.lane.as_str(), msg.created_at),
    ))
}

/// Replays the records `request` selects, paced at its rate.
pub async fn replay(
    pool: &PgPool,
    publisher: &Publisher,
    request: &ReplayRequest,
) -> Result<ReplayReport, sqlx::Error> {
    let mut filter = request.filter.clone();
    filter.only_unreplayed = !request.again;
    let records = dead_letters::list_oldest_first(pool, &filter, request.limit).await?;
    let mut report = ReplayReport {
        dry_run: request.dry_run,
        selected: records.len(),
        ..Default::default()
    };
    let mut pace = (request.rate_per_sec > 0 && !request.dry_run).then(|| {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(request.rate_per_sec),
        ));
        // After a slow confirm, carry on at the rate rather than burst to catch up.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    for record in &records {
        let (outcome, detail) = if let Some(reason) = &report.stopped {
            (Outcome::NotAttempted, Some(reason.clone()))
        } else if request.dry_run {
            preview(pool, publisher, record).await
        } else {
            if let Some(tick) = pace.as_mut() {
                tick.tick().await;
            }
            let (outcome, detail, stop) = replay_one(pool, publisher, record, !request.again).await;
            report.stopped = stop;
            metrics::counter!("herald_dead_letters_replayed_total", "outcome" => outcome.label())
                .increment(1);
            (outcome, detail)
        };
        match outcome {
            Outcome::Replayed | Outcome::WouldReplay => report.replayed += 1,
            Outcome::Skipped => report.skipped += 1,
            Outcome::Failed | Outcome::NotAttempted => report.failed += 1,
        }
        report.results.push(RecordResult {
            id: record.id,
            tenant: record.tenant_id.clone(),
            channel: record.channel.clone(),
            error_class: record.error_class.clone(),
            exchange: record.exchange.clone(),
            routing_key: record.routing_key.clone(),
            outcome,
            detail,
        });
    }
    if !request.dry_run {
        tracing::info!(
            selected = report.selected,
            replayed = report.replayed,
            skipped = report.skipped,
            failed = report.failed,
            "dead letters replayed"
        );
    }
    Ok(report)
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Replayed => "replayed",
            Outcome::WouldReplay => "would_replay",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::NotAttempted => "not_attempted",
        }
    }
}

/// Why a record is left alone on purpose: its user was erased, and with
/// them everything there was to send.
fn erased(record: &DeadLetter) -> Option<String> {
    (record.payload == dead_letters::ERASED_PAYLOAD)
        .then(|| "its user was erased; there is nothing to send".into())
}

/// Why a record cannot be published at all, whatever the state of things.
fn unreplayable(record: &DeadLetter, publisher: &Publisher) -> Option<String> {
    let names = publisher.broker().names();
    (record.exchange.is_empty() || record.exchange == names.dead_exchange()).then(|| {
        "no original exchange was recorded for this dead letter; it cannot be put back".into()
    })
}

/// What a replay of `record` would do, without doing it.
async fn preview(
    pool: &PgPool,
    publisher: &Publisher,
    record: &DeadLetter,
) -> (Outcome, Option<String>) {
    if let Some(why) = erased(record) {
        return (Outcome::Skipped, Some(why));
    }
    if let Some(why) = unreplayable(record, publisher) {
        return (Outcome::Failed, Some(why));
    }
    let names = publisher.broker().names();
    if let Some((created_at, id)) = delivery_key(record, &names.deliveries_exchange()) {
        match deliveries::status_of(pool, created_at, id).await {
            Ok(Some(status)) if !deliveries::replayable(&status) => {
                return (
                    Outcome::Skipped,
                    Some(format!(
                        "delivery is `{status}`; it would not be sent again"
                    )),
                );
            }
            Ok(None) => {
                return (
                    Outcome::Failed,
                    Some("delivery row not found (partition dropped?)".into()),
                );
            }
            Ok(Some(_)) => {}
            Err(e) => return (Outcome::Failed, Some(format!("database: {e}"))),
        }
    }
    (Outcome::WouldReplay, None)
}

/// Replays one record under its row lock. The third value, if any, is why
/// the whole replay should stop (the broker is unavailable).
async fn replay_one(
    pool: &PgPool,
    publisher: &Publisher,
    selected: &DeadLetter,
    only_unreplayed: bool,
) -> (Outcome, Option<String>, Option<String>) {
    let failed = |e: String| (Outcome::Failed, Some(e), None);
    if let Some(why) = erased(selected) {
        return (Outcome::Skipped, Some(why), None);
    }
    if let Some(why) = unreplayable(selected, publisher) {
        return failed(why);
    }
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return failed(format!("database: {e}")),
    };
    let record = match dead_letters::lock_for_replay(&mut tx, selected.id, only_unreplayed).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return (
                Outcome::Skipped,
                Some("replayed meanwhile, or being replayed by someone else".into()),
                None,
            );
        }
        Err(e) => return failed(format!("database: {e}")),
    };
    let names = publisher.broker().names();
    let delivery = delivery_key(&record, &names.deliveries_exchange());
    let routed = through_router(&record, names);
    if let Some((notification, _)) = &routed {
        match crate::db::routing::notification(pool, *notification).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return failed(
                    "its notification is no longer stored (past retention); it cannot be routed again"
                        .into(),
                );
            }
            Err(e) => return failed(format!("database: {e}")),
        }
    }
    let mut restore = None;
    if let Some((created_at, id)) = delivery {
        // Committed on its own before the publish: the worker must find the
        // row pending when the message arrives.
        match deliveries::reset_for_replay(pool, created_at, id).await {
            Ok(Reset::Done {
                previous_status,
                previous_attempts,
            }) => restore = Some((previous_status, previous_attempts)),
            Ok(Reset::Kept { status }) => {
                return (
                    Outcome::Skipped,
                    Some(format!("delivery is `{status}`; not sent again")),
                    None,
                );
            }
            Ok(Reset::Missing) => {
                return failed("delivery row not found (partition dropped?)".into());
            }
            Err(e) => return failed(format!("database: {e}")),
        }
    }
    let msg = routed.map(|(_, msg)| msg).unwrap_or_else(|| {
        let mut msg = Outgoing::json(
            record.exchange.clone(),
            record.routing_key.clone(),
            record.payload.clone(),
            replay_headers(&record),
        );
        // A delivery sent again is a copy of its own, not the dead one.
        msg.copies = delivery.is_some();
        msg
    });
    if let Err(e) = publisher.publish(&msg).await {
        if let (Some((created_at, id)), Some((status, attempts))) = (delivery, &restore)
            && let Err(db) =
                deliveries::restore_after_replay(pool, created_at, id, status, *attempts).await
        {
            tracing::warn!(error = %db, delivery_id = %id, "could not restore a delivery after a failed replay");
        }
        let stop = e.is_unavailable().then(|| e.to_string());
        return (Outcome::Failed, Some(e.to_string()), stop);
    }
    let marked = async {
        dead_letters::mark_replayed(&mut *tx, record.id).await?;
        tx.commit().await
    };
    match marked.await {
        Ok(()) => (Outcome::Replayed, None, None),
        // Published but not marked: a later replay may publish it again, which
        // the worker's claim absorbs for deliveries and idempotency keys for
        // ingest; say so rather than hide it.
        Err(e) => failed(format!("published, but not marked replayed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::header_i64;

    fn record(headers: serde_json::Value) -> DeadLetter {
        DeadLetter {
            id: Uuid::now_v7(),
            source: "worker-sms".into(),
            tenant_id: Some("acme".into()),
            channel: Some("sms".into()),
            lane: Some("high".into()),
            notification_id: None,
            delivery_id: Some(Uuid::now_v7()),
            error_class: "timeout".into(),
            last_error: "gave up".into(),
            attempts: 3,
            exchange: "herald.deliveries".into(),
            routing_key: "sms.high".into(),
            headers,
            payload: br#"{"delivery_id":"0190b2f4-6a3e-7c1b-9d4e-2f6a8b0c1d2e","created_at":"2026-01-02T03:04:05Z"}"#.to_vec(),
            failed_at: Utc::now(),
            created_at: Utc::now(),
            replayed_at: None,
            replay_count: 1,
        }
    }

    #[test]
    fn replay_headers_drop_what_dead_lettering_added() {
        let r = record(serde_json::json!({
            "x-herald-tenant": "acme",
            "x-herald-error": "boom",
            "x-herald-error-class": "timeout",
            "x-herald-source": "worker-sms",
            "x-herald-original-exchange": "herald.deliveries",
            "x-herald-retry-delay-ms": 300,
            "x-death": [{"count": 1, "reason": "expired"}],
            "x-first-death-queue": "herald.retry.300ms",
            "x-herald-attempts": 3,
            "x-herald-accepted-at-ms": 1_700_000_000_000_i64,
        }));
        let table = replay_headers(&r).into_table();
        let mut keys: Vec<&str> = table.inner().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "x-herald-accepted-at-ms",
                "x-herald-attempts",
                "x-herald-replay",
                "x-herald-tenant"
            ]
        );
        assert_eq!(header_i64(Some(&table), Headers::ATTEMPTS), Some(0));
        assert_eq!(header_i64(Some(&table), Headers::REPLAY), Some(2));
        assert_eq!(
            header_i64(Some(&table), Headers::ACCEPTED_AT_MS),
            Some(1_700_000_000_000)
        );
    }

    #[test]
    fn delivery_key_comes_from_the_body() {
        let r = record(serde_json::json!({}));
        let (created_at, id) = delivery_key(&r, "herald.deliveries").unwrap();
        assert_eq!(created_at.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert_eq!(id.to_string(), "0190b2f4-6a3e-7c1b-9d4e-2f6a8b0c1d2e");
        let mut ingest = record(serde_json::json!({}));
        ingest.exchange = "herald.ingest".into();
        ingest.delivery_id = None;
        assert_eq!(delivery_key(&ingest, "herald.deliveries"), None);
    }
}
