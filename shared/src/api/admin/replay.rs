//! Replay from the admin page, in two steps: a confirmation page says how
//! many records the selection takes and carries a signed token; only a POST
//! with that token for that same selection replays.

use std::fmt::Write;

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;

use super::{
    auth::AdminPage,
    dead_letters::page_error,
    html::{self, Nav, esc, table},
    selection::Selection,
};
use crate::{
    api::AppState,
    db::dead_letters,
    dlq::replay::{self, Outcome, ReplayRequest},
};

/// Records one replay from the page takes by default, and at most: the page
/// waits for the whole replay, so a larger one belongs to `heraldctl`.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;
/// Publishes per second of a page replay: five seconds for the largest one.
const RATE_PER_SEC: u32 = 100;
/// Records listed on the confirmation page.
const PREVIEW: i64 = 20;

/// The selection as confirmed and signed: the list-only flag dropped, the
/// limit made explicit.
fn confirmed(sel: &Selection) -> Selection {
    sel.with(|s| {
        s.unreplayed = None;
        s.limit = Some(sel.limit(DEFAULT_LIMIT, MAX_LIMIT).to_string());
    })
}

/// `GET /admin/replay?<selection>`: how many would be replayed, and the
/// button that does it.
pub async fn confirm(
    _: AdminPage,
    State(state): State<AppState>,
    Query(sel): Query<Selection>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    let sel = confirmed(&sel);
    let mut filter = match sel.filter() {
        Ok(f) => f,
        Err(e) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                &format!("{}: {}", e.field, e.message),
            );
        }
    };
    filter.only_unreplayed = !sel.again();
    let limit = sel.limit(DEFAULT_LIMIT, MAX_LIMIT);
    let (total, preview) = tokio::join!(
        dead_letters::count(&state.pool, &filter),
        dead_letters::list_oldest_first(&state.pool, &filter, limit.min(PREVIEW)),
    );
    let (total, preview) = match (total, preview) {
        (Ok(t), Ok(p)) => (t, p),
        (Err(e), _) | (_, Err(e)) => return page_error(e),
    };
    let will = total.min(limit);
    let which = if sel.again() {
        "including those replayed before"
    } else {
        "not replayed before"
    };
    let mut body = format!(
        "<h1>Replay dead letters</h1><section id=\"confirm\"><p>Selection: <b>{}</b> ({which}).</p>",
        esc(&sel.describe())
    );
    if will == 0 {
        body.push_str(
            "<p class=\"notice\" id=\"nothing\">Nothing to replay: no dead letter matches.</p>",
        );
        if !sel.again() {
            let again = sel.with(|s| s.again = Some("1".into()));
            let _ = write!(
                body,
                "<p><a href=\"/admin/replay?{}\">Include dead letters replayed before</a></p>",
                esc(&again.query())
            );
        }
        body.push_str("</section>");
        return html::respond(
            StatusCode::OK,
            html::page("Replay", Nav::DeadLetters, true, &body),
        );
    }
    let _ = write!(
        body,
        "<p class=\"notice\"><b id=\"will-replay\">{will}</b> dead letter(s) will be republished to where they came from, \
         oldest first, at up to {RATE_PER_SEC} per second{}. Deliveries are set back to pending and go through \
         the worker again; expired ones are dropped there.</p>",
        if total > will {
            format!(" ({total} match; the first {will} are taken)")
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = preview
        .iter()
        .map(|d| {
            vec![
                format!(
                    "<a href=\"/admin/dead-letters/{}\">{}</a>",
                    d.id,
                    html::time(d.failed_at)
                ),
                esc(d.tenant_id.as_deref().unwrap_or("")),
                esc(d.channel.as_deref().unwrap_or("")),
                esc(&d.error_class),
                esc(&format!("{} {}", d.exchange, d.routing_key)),
            ]
        })
        .collect();
    body.push_str(&table(
        &["Failed", "Tenant", "Channel", "Class", "Back to"],
        &rows,
    ));
    if will > PREVIEW {
        let _ = write!(
            body,
            "<p class=\"muted\">… and {} more.</p>",
            will - PREVIEW
        );
    }
    let mut form = String::from("<form method=\"post\" action=\"/admin/replay\">");
    for (k, v) in sel.pairs() {
        form.push_str(&html::hidden(k, &v));
    }
    form.push_str(&html::hidden(
        "token",
        &admin.auth.replay_token(&sel.query()),
    ));
    let _ = write!(
        form,
        "<p><button type=\"submit\" class=\"danger\" id=\"confirm-replay\">Replay {will} dead letter(s)</button> \
         <a href=\"/admin/dead-letters?{}\">Cancel</a></p></form></section>",
        esc(&sel.with(|s| s.limit = None).query())
    );
    body.push_str(&form);
    html::respond(
        StatusCode::OK,
        html::page("Replay", Nav::DeadLetters, true, &body),
    )
}

/// The confirmation form: the selection and its token.
#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    #[serde(flatten)]
    selection: Selection,
    #[serde(default)]
    token: String,
}

/// `POST /admin/replay`: replays a confirmed selection and shows the result.
pub async fn run(
    _: AdminPage,
    State(state): State<AppState>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    let sel = confirmed(&form.selection);
    if !admin.auth.replay_token_valid(&form.token, &sel.query()) {
        let body = format!(
            "<h1>Confirmation expired</h1><section><p class=\"err\">This confirmation is too old or does not match the selection. \
             Nothing was replayed.</p><p><a href=\"/admin/replay?{}\">Confirm again</a></p></section>",
            esc(&sel.query())
        );
        return html::respond(
            StatusCode::FORBIDDEN,
            html::page("Replay", Nav::DeadLetters, true, &body),
        );
    }
    let filter = match sel.filter() {
        Ok(f) => f,
        Err(e) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                &format!("{}: {}", e.field, e.message),
            );
        }
    };
    tracing::info!(selection = %sel.describe(), again = sel.again(), "replay requested from the admin page");
    let request = ReplayRequest {
        filter,
        limit: sel.limit(DEFAULT_LIMIT, MAX_LIMIT),
        dry_run: false,
        rate_per_sec: RATE_PER_SEC,
        again: sel.again(),
    };
    let report = match replay::replay(&state.pool, &state.publisher, &request).await {
        Ok(r) => r,
        Err(e) => return page_error(e),
    };
    let class = if report.failed > 0 { "err" } else { "ok" };
    let mut body = format!(
        "<h1>Replay result</h1><section id=\"replay-result\"><p id=\"summary\" class=\"{class}\">\
         {} selected: <b>{} replayed</b>, {} skipped, {} failed.</p>",
        report.selected, report.replayed, report.skipped, report.failed
    );
    if let Some(why) = &report.stopped {
        let _ = write!(body, "<p class=\"err\">Stopped early: {}</p>", esc(why));
    }
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            let outcome = match r.outcome {
                Outcome::Replayed => "replayed",
                Outcome::WouldReplay => "would replay",
                Outcome::Skipped => "skipped",
                Outcome::Failed => "failed",
                Outcome::NotAttempted => "not attempted",
            };
            vec![
                format!("<a href=\"/admin/dead-letters/{}\">{}</a>", r.id, r.id),
                esc(r.tenant.as_deref().unwrap_or("")),
                esc(r.channel.as_deref().unwrap_or("")),
                esc(&r.error_class),
                format!(
                    "<span class=\"tag {}\">{outcome}</span>",
                    outcome.replace(' ', "-")
                ),
                esc(r.detail.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    body.push_str(&table(
        &[
            "Dead letter",
            "Tenant",
            "Channel",
            "Class",
            "Outcome",
            "Detail",
        ],
        &rows,
    ));
    body.push_str("<p><a href=\"/admin/dead-letters\">Back to the dead letters</a></p></section>");
    html::respond(
        StatusCode::OK,
        html::page("Replay result", Nav::DeadLetters, true, &body),
    )
}
