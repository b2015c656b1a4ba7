//! The overview page: deliveries per minute, queue depths and consumers,
//! dead letters by class, receipts and suppressions.

use std::{collections::BTreeMap, time::Duration};

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DurationRound, Utc};
use maud::{Markup, html};

use super::{
    auth::AdminPage,
    html::{self, Nav, table},
    selection::Selection,
};
use crate::{
    api::AppState,
    broker::QueueStats,
    db::{activity, dead_letters, receipts, suppressions},
};

/// Window of the overview's delivery chart.
const CHART_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Window of the overview's dead-letter counts.
const DEAD_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Passive declares of every queue take a round trip each; a broker that
/// does not answer must not hang the page.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivery statuses in the order the chart stacks them, with their colours.
const STATUSES: [(&str, &str); 12] = [
    ("delivered", "#2e7d32"),
    ("sent", "#43a047"),
    ("bounced", "#c62828"),
    ("complained", "#ad1457"),
    ("undelivered", "#ef6c00"),
    ("failed", "#e53935"),
    ("dead", "#8e24aa"),
    ("expired", "#fb8c00"),
    ("suppressed", "#90a4ae"),
    ("pending", "#42a5f5"),
    ("deferred", "#26c6da"),
    ("sending", "#5c6bc0"),
];

fn unavailable(what: &str, e: impl std::fmt::Display) -> Markup {
    tracing::warn!(error = %e, "admin overview: {what} unavailable");
    html! { p.err { (what) " unavailable: " (e) } }
}

/// `GET /admin`: queues, deliveries per minute, dead letters by class.
pub async fn overview(_: AdminPage, State(state): State<AppState>) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    let broker = state.publisher.broker();
    let unreplayed = dead_letters::Filter {
        only_unreplayed: true,
        ..Default::default()
    };
    let (queues, minutes, classes, unreplayed, receipts, suppressed) = tokio::join!(
        tokio::time::timeout(BROKER_TIMEOUT, broker.queue_stats(&admin.schedule)),
        activity::deliveries_per_minute(&state.read_pool, CHART_WINDOW),
        activity::dead_letters_by_class(&state.read_pool, DEAD_WINDOW),
        dead_letters::count(&state.read_pool, &unreplayed),
        receipts::counts(&state.read_pool, DEAD_WINDOW),
        suppressions::count_by_reason(&state.read_pool, None),
    );
    let receipts = match receipts {
        Ok(rows) if rows.is_empty() => {
            html! { p.muted { "No provider receipts in the last 24 hours." } }
        }
        Ok(rows) => table(
            &["Provider", "Moved to", "#Receipts"],
            &rows
                .iter()
                .map(|(p, s, n)| vec![html! { (p) }, html! { span.tag { (s) } }, html! { (n) }])
                .collect::<Vec<_>>(),
        ),
        Err(e) => unavailable("receipt counts", e),
    };
    let suppressed = match suppressed {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|(_, n)| n).sum();
            html! {
                p {
                    a href="/admin/suppressions" { (total) " suppressed address(es)" }
                    @for (reason, n) in &rows { " · " (reason) " " (n) }
                }
            }
        }
        Err(e) => unavailable("suppressions", e),
    };
    let queues = match queues {
        Ok(Ok(q)) => queue_table(q, &format!("{}.retry.", broker.names().prefix())),
        Ok(Err(e)) => unavailable("broker", e),
        Err(_) => unavailable("broker", "no answer within 5 s"),
    };
    let chart = match minutes {
        Ok(rows) => minute_chart(&rows),
        Err(e) => unavailable("delivery counts", e),
    };
    let classes = match classes {
        Ok(rows) if rows.is_empty() => {
            html! { p.muted { "No dead letters in the last 24 hours." } }
        }
        Ok(rows) => table(
            &["Error class", "#Dead letters"],
            &rows
                .iter()
                .map(|c| {
                    let link = Selection {
                        error_class: Some(c.key.clone()),
                        since: Some("24h".into()),
                        ..Default::default()
                    };
                    let href = format!("/admin/dead-letters?{}", link.query());
                    vec![html! { a href=(href) { (c.key) } }, html! { (c.count) }]
                })
                .collect::<Vec<_>>(),
        ),
        Err(e) => unavailable("dead-letter counts", e),
    };
    let unreplayed = match unreplayed {
        Ok(n) => html! {
            p { a href="/admin/dead-letters?unreplayed=1" { (n) " dead letter(s)" } " not replayed in the store." }
        },
        Err(e) => unavailable("dead-letter store", e),
    };
    let body = html! {
        h1 { "Overview" }
        section id="deliveries" { h2 { "Deliveries per minute, last 15 minutes" } (chart) }
        div.grid {
            section id="queues" { h2 { "Queues" } (queues) }
            section id="dead-letter-classes" {
                h2 { "Dead letters by class, last 24 hours" }
                (classes)
                (unreplayed)
            }
        }
        section id="receipts" {
            h2 { "Provider receipts, last 24 hours" }
            (receipts)
            (suppressed)
        }
    };
    html::respond(
        StatusCode::OK,
        html::page("Overview", Nav::Overview, true, body),
    )
}

/// Queue depths, with the retry tiers (four jitter steps per tier) summed up
/// into one row so the work queues stay readable.
fn queue_table(stats: Vec<QueueStats>, retry_prefix: &str) -> Markup {
    let (retry, work): (Vec<_>, Vec<_>) = stats
        .into_iter()
        .partition(|q| q.queue.starts_with(retry_prefix));
    let mut rows: Vec<Vec<Markup>> = work
        .iter()
        .map(|q| {
            vec![
                html! { (q.queue) },
                html! { (q.messages) },
                html! { (q.consumers) },
            ]
        })
        .collect();
    if !retry.is_empty() {
        let waiting: u64 = retry.iter().map(|q| u64::from(q.messages)).sum();
        rows.push(vec![
            html! { (retry_prefix) "* " span.muted { "(" (retry.len()) " retry tiers)" } },
            html! { (waiting) },
            html! { "–" },
        ]);
    }
    table(&["Queue", "#Messages", "#Consumers"], &rows)
}

/// A table of the last 15 minutes, one row a minute, with a stacked bar.
fn minute_chart(rows: &[activity::MinuteCount]) -> Markup {
    let mut counts: BTreeMap<chrono::DateTime<Utc>, BTreeMap<&str, i64>> = BTreeMap::new();
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    for i in (0..15).rev() {
        counts.insert(now - chrono::Duration::minutes(i), BTreeMap::new());
    }
    for r in rows {
        if let Some(minute) = counts.get_mut(&r.minute) {
            *minute.entry(r.status.as_str()).or_default() += r.count;
        }
    }
    let shown: Vec<(&str, &str)> = STATUSES
        .iter()
        .copied()
        .filter(|(s, _)| {
            matches!(*s, "sent" | "failed" | "dead") || rows.iter().any(|r| r.status == *s)
        })
        .collect();
    let max = counts
        .values()
        .map(|m| m.values().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut headers = vec!["Minute (UTC)".to_owned()];
    headers.extend(shown.iter().map(|(s, _)| format!("#{s}")));
    headers.push(String::new());
    let rows: Vec<Vec<Markup>> = counts
        .iter()
        .map(|(minute, by_status)| {
            let count = |s: &str| by_status.get(s).copied().unwrap_or(0);
            let mut row = vec![html! { (minute.format("%H:%M")) }];
            row.extend(shown.iter().map(|(s, _)| html! { (count(s)) }));
            row.push(html! {
                div.bar {
                    @for (status, colour) in &shown {
                        @let n = count(status);
                        @if n > 0 {
                            @let width = (n as f64 / max as f64 * 100.0).max(0.5);
                            span title={ (status) ": " (n) }
                                style={ "width:" (format!("{width:.1}")) "%;background:" (colour) } {}
                        }
                    }
                }
            });
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    html! {
        div.chart { (table(&headers, &rows)) }
        p.muted { "Deliveries of notifications accepted today (UTC), by the status they reached in each minute." }
    }
}
