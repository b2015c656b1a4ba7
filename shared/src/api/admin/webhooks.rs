//! Every tenant's webhook endpoints, with an Enable button per disabled
//! endpoint. Secrets are never shown, only whether a previous one still
//! signs. Each button's form carries a token signed for exactly that
//! endpoint (as the suppressions' remove buttons do), so a request forged
//! from another site, which cannot read the page, cannot enable anything.

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
    html::{self, Nav, nonempty},
};
use crate::{
    api::AppState,
    db::{self, webhooks::Filter},
};

/// Rows per page.
const PAGE: i64 = 100;

/// The filters and position of the list.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    tenant: Option<String>,
    /// `active` or `disabled`.
    status: Option<String>,
    /// Continue after this tenant and id (the previous page's last row).
    after_tenant: Option<String>,
    after_id: Option<String>,
    /// What the last enabling did, to say so at the top.
    enabled: Option<String>,
}

/// What an Enable button's token is bound to.
fn bound(tenant: &str, id: &str) -> String {
    format!("{tenant}\n{id}")
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> Markup {
    match t {
        Some(t) => html! { (html::time(t)) },
        None => html! { span.muted { "–" } },
    }
}

/// `GET /admin/webhooks`: the endpoints, filtered by tenant and status, in
/// (tenant, id) order, a page at a time.
pub async fn list(
    _: AdminPage,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    let tenant = nonempty(&q.tenant);
    let status = nonempty(&q.status);
    let disabled = match status {
        None => None,
        Some("active") => Some(false),
        Some("disabled") => Some(true),
        Some(_) => {
            return html::error_page(
                StatusCode::BAD_REQUEST,
                "status: expected active or disabled",
            );
        }
    };
    let after = match (nonempty(&q.after_tenant), nonempty(&q.after_id)) {
        (Some(t), Some(i)) => Some((t, i)),
        _ => None,
    };
    let filter = Filter {
        tenant,
        disabled,
        after,
    };
    let rows = match db::webhooks::list_all(&state.pool, &filter, PAGE).await {
        Ok(r) => r,
        Err(e) => return page_error(e),
    };
    let now = chrono::Utc::now();
    let cells: Vec<Vec<Markup>> = rows
        .iter()
        .map(|w| {
            let previous = match w.previous_until {
                Some(until) if w.previous_secret.is_some() && until > now => {
                    html! { "yes, until " (html::time(until)) }
                }
                _ => html! { span.muted { "no" } },
            };
            let action = if w.disabled_at.is_some() {
                let token = admin
                    .auth
                    .action_token("webhook-enable", &bound(&w.tenant_id, &w.id));
                html::action_button(
                    "/admin/webhooks/enable",
                    &[("tenant", &w.tenant_id), ("id", &w.id)],
                    &token,
                    "enable",
                    "Enable",
                )
            } else {
                html! {}
            };
            vec![
                html! { (w.tenant_id) },
                html! { (w.id) },
                html! { span title=(w.url) { (html::cut(&w.url, 60)) } },
                html! { (w.events.join(", ")) },
                html! {
                    @if w.disabled_at.is_some() { span.tag.disabled { "disabled" } }
                    @else { span.tag.active { "active" } }
                },
                when(w.failing_since),
                when(w.disabled_at),
                previous,
                action,
            ]
        })
        .collect();
    let next = html::next_page(&rows, PAGE, |last| {
        html::query(&[
            ("after_tenant", Some(&last.tenant_id)),
            ("after_id", Some(&last.id)),
            ("tenant", tenant),
            ("status", status),
        ])
    });
    let body = html! {
        h1 { "Webhooks" }
        @if let Some(enabled) = nonempty(&q.enabled) {
            p.notice id="enabled" { "Enabled " b { (enabled) } " again; events are sent to it from now on." }
        }
        section {
            (html::filters("/admin/webhooks", html! {
                label { "Tenant" input name="tenant" value=(tenant.unwrap_or("")); }
                (html::choice("Status", "status", &["active", "disabled"], status))
            }))
        }
        (html::results(
            "/admin/webhooks",
            html! {
                b { (rows.len()) } " endpoint(s)"
                @if rows.len() as i64 == PAGE { " on this page" }
                @if let Some(t) = tenant { " of tenant " b { (t) } }
                ". An endpoint is disabled after failing for WEBHOOK_DISABLE_AFTER; events for it are then kept as dead letters (source webhooks), to replay once it is enabled."
            },
            &["Tenant", "Id", "URL", "Events", "Status", "Failing since", "Disabled at", "Previous secret signing", ""],
            &cells,
            next,
        ))
    };
    html::respond(
        StatusCode::OK,
        html::page("Webhooks", Nav::Webhooks, true, body),
    )
}

/// An Enable button's form.
#[derive(Debug, Deserialize)]
pub struct EnableForm {
    tenant: String,
    id: String,
    #[serde(default)]
    token: String,
}

/// `POST /admin/webhooks/enable`: enables the one endpoint the button's
/// token was signed for (as the API's PUT does: no longer disabled nor
/// failing), then shows the list again.
pub async fn enable(
    _: AdminPage,
    State(state): State<AppState>,
    Form(form): Form<EnableForm>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    if !admin.auth.action_token_valid(
        "webhook-enable",
        &form.token,
        &bound(&form.tenant, &form.id),
    ) {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "This button is too old or does not match the endpoint. Nothing was enabled; reload the list.",
        );
    }
    match db::webhooks::enable(&state.pool, &form.tenant, &form.id).await {
        Ok(enabled) => {
            tracing::info!(tenant = %form.tenant, webhook = %form.id, enabled, "webhook endpoint enabled from the admin page");
            let what = format!("{} of {}", form.id, form.tenant);
            html::back_to_list("/admin/webhooks", &form.tenant, ("enabled", &what))
        }
        Err(e) => page_error(e),
    }
}
