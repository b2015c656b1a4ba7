//! The dead-letter pages: the filtered list and one record's details.

use std::fmt::Write;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};

use super::{
    auth::AdminPage,
    html::{self, Nav, esc, table},
    selection::Selection,
};
use crate::{api::AppState, db::dead_letters};

/// Rows of the dead-letter list by default, and at most.
const LIST_DEFAULT: i64 = 50;
const LIST_MAX: i64 = 500;

fn filter_form(sel: &Selection) -> String {
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let channel = sel.channel.as_deref().unwrap_or("");
    let options: String = ["", "push", "email", "sms"]
        .iter()
        .map(|c| {
            format!(
                "<option value=\"{c}\"{}>{}</option>",
                if *c == channel { " selected" } else { "" },
                if c.is_empty() { "any" } else { c }
            )
        })
        .collect();
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/admin/dead-letters\" id=\"filters\">\
         <label>Tenant<input name=\"tenant\" value=\"{}\"></label>\
         <label>Channel<select name=\"channel\">{options}</select></label>\
         <label>Error class<input name=\"error_class\" value=\"{}\"></label>\
         <label>Notification<input name=\"notification\" value=\"{}\" placeholder=\"UUID\"></label>\
         <label>Since<input name=\"since\" value=\"{}\" placeholder=\"2h or 2026-11-22T18:00\"></label>\
         <label>Until<input name=\"until\" value=\"{}\" placeholder=\"time or age\"></label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"unreplayed\" value=\"1\"{}> not replayed only</label>\
         <button type=\"submit\" id=\"apply\">Filter</button> <a href=\"/admin/dead-letters\">Clear</a></form>",
        value(&sel.tenant),
        value(&sel.error_class),
        value(&sel.notification),
        value(&sel.since),
        value(&sel.until),
        if sel.filter().is_ok_and(|f| f.only_unreplayed) {
            " checked"
        } else {
            ""
        },
    )
}

/// `GET /admin/dead-letters`: the store, filtered, newest first.
pub async fn list(
    _: AdminPage,
    State(state): State<AppState>,
    Query(sel): Query<Selection>,
) -> Response {
    let filter = match sel.filter() {
        Ok(f) => f,
        Err(e) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                &format!("{}: {}", e.field, e.message),
            );
        }
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
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            vec![
                format!(
                    "<a class=\"open\" href=\"/admin/dead-letters/{}\">{}</a>",
                    d.id,
                    html::time(d.failed_at)
                ),
                esc(d.tenant_id.as_deref().unwrap_or("")),
                esc(d.channel.as_deref().unwrap_or("")),
                format!("<span class=\"tag\">{}</span>", esc(&d.error_class)),
                d.attempts.to_string(),
                format!(
                    "<span title=\"{}\">{}</span>",
                    esc(&d.last_error),
                    esc(&html::cut(&d.last_error, 90))
                ),
                d.replayed_at.map_or_else(String::new, |t| {
                    format!("<span class=\"tag replayed\">{}</span>", html::time(t))
                }),
            ]
        })
        .collect();
    let mut body = format!(
        "<h1>Dead letters</h1><section>{}</section><section id=\"results\">",
        filter_form(&sel)
    );
    let _ = write!(
        body,
        "<p id=\"count\"><b>{total}</b> match {}; showing {} (newest first).</p>",
        esc(&sel.describe()),
        rows.len()
    );
    if rows.is_empty() {
        body.push_str("<p class=\"muted\">Nothing here.</p>");
    } else {
        body.push_str(&table(
            &[
                "Failed",
                "Tenant",
                "Channel",
                "Class",
                "#Attempts",
                "Last error",
                "Replayed",
            ],
            &cells,
        ));
    }
    if total > rows.len() as i64 && limit < LIST_MAX {
        let more = sel.with(|s| s.limit = Some((limit * 2).min(LIST_MAX).to_string()));
        let _ = write!(
            body,
            "<p><a href=\"/admin/dead-letters?{}\">Show more</a></p>",
            esc(&more.query())
        );
    }
    let replay = sel.with(|s| {
        s.unreplayed = None;
        s.limit = None;
    });
    let _ = write!(
        body,
        "<p><a class=\"button\" id=\"replay-matching\" href=\"/admin/replay?{}\">Replay matching…</a> \
         <span class=\"muted\">You will see how many first.</span></p></section>",
        esc(&replay.query())
    );
    html::respond(
        StatusCode::OK,
        html::page("Dead letters", Nav::DeadLetters, true, &body),
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
    let opt = |v: Option<String>| esc(&v.unwrap_or_else(|| "—".into()));
    let fields = [
        ("ID", esc(&d.id.to_string())),
        ("Source", esc(&d.source)),
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
            format!(
                "<span class=\"tag\" id=\"error-class\">{}</span>",
                esc(&d.error_class)
            ),
        ),
        (
            "Last error",
            format!("<span id=\"last-error\">{}</span>", esc(&d.last_error)),
        ),
        ("Attempts", d.attempts.to_string()),
        ("Original exchange", esc(&d.exchange)),
        ("Original routing key", esc(&d.routing_key)),
        ("Failed at", html::time(d.failed_at)),
        ("Archived at", html::time(d.created_at)),
        (
            "Replayed at",
            d.replayed_at.map_or_else(|| "never".into(), html::time),
        ),
        ("Replays", d.replay_count.to_string()),
    ];
    let mut dl = String::from("<dl>");
    for (k, v) in fields {
        let _ = write!(dl, "<dt>{k}</dt><dd>{v}</dd>");
    }
    dl.push_str("</dl>");
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let replay = Selection {
        id: Some(d.id.to_string()),
        again: d.replayed_at.is_some().then(|| "1".into()),
        ..Default::default()
    };
    let body = format!(
        "<h1>Dead letter</h1><section>{dl}<p><a class=\"button\" id=\"replay\" href=\"/admin/replay?{}\">Replay…</a></p></section>\
         <section><h2>Payload</h2><pre id=\"payload\">{}</pre></section>\
         <section><h2>Headers</h2><pre id=\"headers\">{}</pre></section>",
        esc(&replay.query()),
        esc(&pretty(&crate::dlq::payload_json(&d.payload))),
        esc(&pretty(&d.headers)),
    );
    html::respond(
        StatusCode::OK,
        html::page("Dead letter", Nav::DeadLetters, true, &body),
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
