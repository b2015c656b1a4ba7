//! The suppression lists of every tenant, with a remove button per address.
//! Each button's form carries a token signed for exactly that suppression
//! (as replay's confirmation does for its selection), so a request forged
//! from another site, which cannot read the page, cannot remove anything.

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
    db::{self, suppressions::Filter},
    model::{Channel, suppression::SuppressedAddress},
};

/// Rows per page.
const PAGE: i64 = 100;

/// The filters and position of the list.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    tenant: Option<String>,
    channel: Option<String>,
    /// Continue after this tenant, channel and address (the previous page's
    /// last row).
    after_tenant: Option<String>,
    after_channel: Option<String>,
    after_address: Option<String>,
    /// What the last removal did, to say so at the top.
    removed: Option<String>,
}

/// What a remove button's token is bound to.
fn bound(tenant: &str, channel: &str, address: &str) -> String {
    format!("{tenant}\n{channel}\n{address}")
}

/// `GET /admin/suppressions`: the list, filtered by tenant and channel, in
/// key order, a page at a time.
pub async fn list(
    _: AdminPage,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    let tenant = nonempty(&q.tenant);
    let channel = match nonempty(&q.channel) {
        None => None,
        Some(c @ ("email" | "sms")) => Some(c),
        Some(_) => {
            return html::error_page(StatusCode::BAD_REQUEST, "channel: expected email or sms");
        }
    };
    let after = match (
        nonempty(&q.after_tenant),
        nonempty(&q.after_channel),
        nonempty(&q.after_address),
    ) {
        (Some(t), Some(c), Some(a)) => Some((t, c, a)),
        _ => None,
    };
    let filter = Filter {
        tenant,
        channel,
        after,
    };
    let (rows, counts) = tokio::join!(
        db::suppressions::list(&state.pool, &filter, PAGE),
        db::suppressions::count_by_reason(&state.pool, tenant),
    );
    let (rows, counts) = match (rows, counts) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return page_error(e),
    };
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let cells: Vec<Vec<Markup>> = rows
        .iter()
        .map(|s| {
            let token = admin
                .auth
                .action_token("suppression-remove", &bound(&s.tenant_id, &s.channel, &s.address));
            vec![
                html! { (s.tenant_id) },
                html! { (s.channel) },
                html! { (s.address) },
                html! { span.tag { (s.reason) } },
                html! { (s.source) },
                html! { (html::time(s.created_at)) },
                html! { span title=[s.detail.as_deref()] { (html::cut(s.detail.as_deref().unwrap_or(""), 60)) } },
                html::action_button(
                    "/admin/suppressions/remove",
                    &[
                        ("tenant", &s.tenant_id),
                        ("channel", &s.channel),
                        ("address", &s.address),
                    ],
                    &token,
                    "danger remove",
                    "Remove",
                ),
            ]
        })
        .collect();
    let next = html::next_page(&rows, PAGE, |last| {
        html::query(&[
            ("after_tenant", Some(&last.tenant_id)),
            ("after_channel", Some(&last.channel)),
            ("after_address", Some(&last.address)),
            ("tenant", tenant),
            ("channel", channel),
        ])
    });
    let body = html! {
        h1 { "Suppressions" }
        @if let Some(removed) = nonempty(&q.removed) {
            p.notice id="removed" { "Removed " b { (removed) } "; deliveries to it are made again." }
        }
        section {
            (html::filters("/admin/suppressions", html! {
                label { "Tenant" input name="tenant" value=(tenant.unwrap_or("")); }
                (html::choice("Channel", "channel", &["email", "sms"], channel))
            }))
        }
        (html::results(
            "/admin/suppressions",
            html! {
                b { (total) } " suppressed address(es)"
                @if let Some(t) = tenant { " of tenant " b { (t) } }
                @for (reason, n) in &counts { " · " (reason) " " (n) }
                ". Deliveries to them are recorded as suppressed (address_suppressed), even in required categories."
            },
            &["Tenant", "Channel", "Address", "Reason", "Source", "Since", "Detail", ""],
            &cells,
            next,
        ))
    };
    html::respond(
        StatusCode::OK,
        html::page("Suppressions", Nav::Suppressions, true, body),
    )
}

/// A remove button's form.
#[derive(Debug, Deserialize)]
pub struct RemoveForm {
    tenant: String,
    channel: String,
    address: String,
    #[serde(default)]
    token: String,
}

/// `POST /admin/suppressions/remove`: removes the one suppression the
/// button's token was signed for, then shows the list again.
pub async fn remove(
    _: AdminPage,
    State(state): State<AppState>,
    Form(form): Form<RemoveForm>,
) -> Response {
    let admin = state.admin.as_ref().expect("mounted with admin");
    if !admin.auth.action_token_valid(
        "suppression-remove",
        &form.token,
        &bound(&form.tenant, &form.channel, &form.address),
    ) {
        return html::error_page(
            StatusCode::FORBIDDEN,
            "This button is too old or does not match the suppression. Nothing was removed; reload the list.",
        );
    }
    let address = match form
        .channel
        .parse::<Channel>()
        .and_then(|c| SuppressedAddress::parse(c, &form.address))
    {
        Ok(a) => a,
        Err(e) => return html::error_page(StatusCode::BAD_REQUEST, &e),
    };
    match db::suppressions::remove(&state.pool, &form.tenant, &address).await {
        Ok(removed) => {
            tracing::info!(tenant = %form.tenant, channel = %form.channel, removed, "suppression removed from the admin page");
            let what = format!("{} {} of {}", form.channel, address.as_str(), form.tenant);
            html::back_to_list("/admin/suppressions", &form.tenant, ("removed", &what))
        }
        Err(e) => page_error(e),
    }
}
