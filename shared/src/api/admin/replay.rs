//! Replay from the admin page, in two steps: a confirmation page says how
//! many records the selection takes and carries a signed token; only a POST
//! with that token for that same selection replays.

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    auth::AdminPage,
    dead_letters::page_error,
    html::{self, Nav, table},
    selection::{Selection, invalid_page},
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
        Err(e) => return invalid_page(e),
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
    let selection = html! { p { "Selection: " b { (sel.describe()) } " (" (which) ")." } };
    if will == 0 {
        let again = (!sel.again()).then(|| sel.with(|s| s.again = Some("1".into())));
        let body = html! {
            h1 { "Replay dead letters" }
            section id="confirm" {
                (selection)
                p.notice id="nothing" { "Nothing to replay: no dead letter matches." }
                @if let Some(again) = again {
                    p { a href={ "/admin/replay?" (again.query()) } { "Include dead letters replayed before" } }
                }
            }
        };
        return html::respond(
            StatusCode::OK,
            html::page("Replay", Nav::DeadLetters, true, body),
        );
    }
    let rows: Vec<Vec<Markup>> = preview
        .iter()
        .map(|d| {
            let href = format!("/admin/dead-letters/{}", d.id);
            vec![
                html! { a href=(href) { (html::time(d.failed_at)) } },
                html! { (d.tenant_id.as_deref().unwrap_or("")) },
                html! { (d.channel.as_deref().unwrap_or("")) },
                html! { (d.error_class) },
                html! { (d.exchange) " " (d.routing_key) },
            ]
        })
        .collect();
    let token = admin.auth.replay_token(&sel.query());
    let cancel = sel.with(|s| s.limit = None);
    let body = html! {
        h1 { "Replay dead letters" }
        section id="confirm" {
            (selection)
            p.notice {
                b id="will-replay" { (will) }
                " dead letter(s) will be republished to where they came from, oldest first, at up to "
                (RATE_PER_SEC) " per second"
                @if total > will { " (" (total) " match; the first " (will) " are taken)" }
                ". Deliveries are set back to pending and go through the worker again; expired ones are dropped there."
            }
            (table(&["Failed", "Tenant", "Channel", "Class", "Back to"], &rows))
            @if will > PREVIEW {
                p.muted { "… and " (will - PREVIEW) " more." }
            }
            form method="post" action="/admin/replay" {
                @for (k, v) in sel.pairs() { (html::hidden(k, &v)) }
                (html::hidden("token", &token))
                p {
                    button.danger type="submit" id="confirm-replay" { "Replay " (will) " dead letter(s)" }
                    " "
                    a href={ "/admin/dead-letters?" (cancel.query()) } { "Cancel" }
                }
            }
        }
    };
    html::respond(
        StatusCode::OK,
        html::page("Replay", Nav::DeadLetters, true, body),
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
        let body = html! {
            h1 { "Confirmation expired" }
            section {
                p.err { "This confirmation is too old or does not match the selection. Nothing was replayed." }
                p { a href={ "/admin/replay?" (sel.query()) } { "Confirm again" } }
            }
        };
        return html::respond(
            StatusCode::FORBIDDEN,
            html::page("Replay", Nav::DeadLetters, true, body),
        );
    }
    let filter = match sel.filter() {
        Ok(f) => f,
        Err(e) => return invalid_page(e),
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
    let rows: Vec<Vec<Markup>> = report
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
            let href = format!("/admin/dead-letters/{}", r.id);
            vec![
                html! { a href=(href) { (r.id) } },
                html! { (r.tenant.as_deref().unwrap_or("")) },
                html! { (r.channel.as_deref().unwrap_or("")) },
                html! { (r.error_class) },
                html! { span class={ "tag " (outcome.replace(' ', "-")) } { (outcome) } },
                html! { (r.detail.as_deref().unwrap_or("")) },
            ]
        })
        .collect();
    let body = html! {
        h1 { "Replay result" }
        section id="replay-result" {
            p id="summary" class=(class) {
                (report.selected) " selected: " b { (report.replayed) " replayed" } ", "
                (report.skipped) " skipped, " (report.failed) " failed."
            }
            @if let Some(why) = &report.stopped {
                p.err { "Stopped early: " (why) }
            }
            (table(&["Dead letter", "Tenant", "Channel", "Class", "Outcome", "Detail"], &rows))
            p { a href="/admin/dead-letters" { "Back to the dead letters" } }
        }
    };
    html::respond(
        StatusCode::OK,
        html::page("Replay result", Nav::DeadLetters, true, body),
    )
}
