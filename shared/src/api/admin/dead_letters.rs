//! The dead-letter pages: the filtered list and one record's details.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};

use super::{
    auth::AdminPage,
    html::{self, Nav, table},
    selection::{Selection, invalid_page},
};
use crate::{api::AppState, db::dead_letters};

/// Rows of the dead-letter list by default, and at most.
const LIST_DEFAULT: i64 = 50;
const LIST_MAX: i64 = 500;

fn filter_form(sel: &Selection) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let channel = sel.channel.as_deref().unwrap_or("");
    let unreplayed = sel.filter().is_ok_and(|f| f.only_unreplayed);
    html! {
        (html::filters("/admin/dead-letters", html! {
            label { "Tenant" input name="tenant" value=(value(&sel.tenant)); }
            label { "Channel" select name="channel" {
                @for c in ["", "push", "email", "sms"] {
                    option value=(c) selected[c == channel] { (if c.is_empty() { "any" } else { c }) }
                }
            } }
            label { "Error class" input name="error_class" value=(value(&sel.error_class)); }
            label { "Notification" input name="notification" value=(value(&sel.notification)) placeholder="UUID"; }
            label { "Since" input name="since" value=(value(&sel.since)) placeholder="2h or 2026-11-22T18:00"; }
            label { "Until" input name="until" value=(value(&sel.until)) placeholder="time or age"; }
            label.check { input type="checkbox" name="unreplayed" value="1" checked[unreplayed]; " not replayed only" }
        }))
    }
}

/// `GET /admin/dead-letters`: the store, filtered, newest first.
pub async fn list(
    _: AdminPage,
    State(state): State<AppState>,
    Query(sel): Query<Selection>,
) -> Response {
    let filter = match sel.filter() {
        Ok(f) => f,
        Err(e) => return invalid_page(e),
    };
    let limit = sel.limit(LIST_DEFAULT, LIST_MAX);
    let (rows, total) = tokio::join!(
        dead_letters::list(&state.pool, &filter, limit),
        dead_letters::count(&state.pool, &filter),
    );
    let (rows, total) = match (rows, total) {
        (Ok(rows), Ok(total)) => (rows, total),
        (Err(e), _) | (_, Err(e)) => return page_error(e),
    };
    let cells: Vec<Vec<Markup>> = rows
        .iter()
        .map(|d| {
            let href = format!("/admin/dead-letters/{}", d.id);
            vec![
                html! { a.open href=(href) { (html::time(d.failed_at)) } },
                html! { (d.tenant_id.as_deref().unwrap_or("")) },
                html! { (d.channel.as_deref().unwrap_or("")) },
                html! { span.tag { (d.error_class) } },
                html! { (d.attempts) },
                html! { span title=(d.last_error) { (html::cut(&d.last_error, 90)) } },
                html! { @if let Some(t) = d.replayed_at { span.tag.replayed { (html::time(t)) } } },
            ]
        })
        .collect();
    let more = (total > rows.len() as i64 && limit < LIST_MAX)
        .then(|| sel.with(|s| s.limit = Some((limit * 2).min(LIST_MAX).to_string())));
    let replay = sel.with(|s| {
        s.unreplayed = None;
        s.limit = None;
    });
    let body = html! {
        h1 { "Dead letters" }
        section { (filter_form(&sel)) }
        section id="results" {
            p id="count" { b { (total) } " match " (sel.describe()) "; showing " (rows.len()) " (newest first)." }
            @if rows.is_empty() {
                p.muted { "Nothing here." }
            } @else {
                (table(&["Failed", "Tenant", "Channel", "Class", "#Attempts", "Last error", "Replayed"], &cells))
            }
            @if let Some(more) = more {
                p { a href={ "/admin/dead-letters?" (more.query()) } { "Show more" } }
            }
            p {
                a.button id="replay-matching" href={ "/admin/replay?" (replay.query()) } { "Replay matching…" }
                " "
                span.muted { "You will see how many first." }
            }
        }
    };
    html::respond(
        StatusCode::OK,
        html::page("Dead letters", Nav::DeadLetters, true, body),
    )
}

/// `GET /admin/dead-letters/{id}`: every field, headers and payload.
pub async fn detail(
    _: AdminPage,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return html::error_page(StatusCode::NOT_FOUND, "No such dead letter.");
    };
    let filter = dead_letters::Filter {
        id: Some(id),
        ..Default::default()
    };
    let d = match dead_letters::list(&state.pool, &filter, 1).await {
        Ok(mut rows) => match rows.pop() {
            Some(d) => d,
            None => return html::error_page(StatusCode::NOT_FOUND, "No such dead letter."),
        },
        Err(e) => return page_error(e),
    };
    let opt = |v: Option<String>| html! { (v.unwrap_or_else(|| "—".into())) };
    let fields = [
        ("ID", html! { (d.id) }),
        ("Source", html! { (d.source) }),
        ("Tenant", opt(d.tenant_id.clone())),
        ("Channel", opt(d.channel.clone())),
        ("Lane", opt(d.lane.clone())),
        (
            "Notification",
            opt(d.notification_id.map(|v| v.to_string())),
        ),
        ("Delivery", opt(d.delivery_id.map(|v| v.to_string()))),
        (
            "Error class",
            html! { span.tag id="error-class" { (d.error_class) } },
        ),
        (
            "Last error",
            html! { span id="last-error" { (d.last_error) } },
        ),
        ("Attempts", html! { (d.attempts) }),
        ("Original exchange", html! { (d.exchange) }),
        ("Original routing key", html! { (d.routing_key) }),
        ("Failed at", html! { (html::time(d.failed_at)) }),
        ("Archived at", html! { (html::time(d.created_at)) }),
        (
            "Replayed at",
            html! { (d.replayed_at.map_or_else(|| "never".into(), html::time)) },
        ),
        ("Replays", html! { (d.replay_count) }),
    ];
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let replay = Selection {
        id: Some(d.id.to_string()),
        again: d.replayed_at.is_some().then(|| "1".into()),
        ..Default::default()
    };
    let body = html! {
        h1 { "Dead letter" }
        section {
            dl { @for (k, v) in fields { dt { (k) } dd { (v) } } }
            p { a.button id="replay" href={ "/admin/replay?" (replay.query()) } { "Replay…" } }
        }
        section { h2 { "Payload" } pre id="payload" { (pretty(&crate::dlq::payload_json(&d.payload))) } }
        section { h2 { "Headers" } pre id="headers" { (pretty(&d.headers)) } }
    };
    html::respond(
        StatusCode::OK,
        html::page("Dead letter", Nav::DeadLetters, true, body),
    )
}

/// A database error as a page: 503 (try again) without internals.
pub fn page_error(e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "admin page: database error");
    html::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database did not answer; try again shortly.",
    )
}
