//! The admin web page under `/admin`, served by ingest when `ADMIN_API_KEY`
//! is set (otherwise every `/admin` path answers 404): the pipeline at a
//! glance, the dead-letter store with filters and details, replay with a
//! confirmation step, the tenants' suppression lists and their webhook
//! endpoints (enabling a disabled one again). Plus a JSON API under `/admin/api` for scripts.
//!
//! Server-rendered HTML with no script at all: operators need it when things
//! are on fire, so it has no build step and nothing to load but the page.

mod auth;
mod dead_letters;
mod html;
mod json;
mod overview;
mod replay;
mod selection;
mod suppressions;
mod webhooks;

use axum::{
    Form, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;
use secrecy::SecretString;
use serde::Deserialize;

pub use auth::AdminAuth;
use auth::{AdminPage, Blocked};
use html::Nav;

use super::{AppState, client::ClientIp};
use crate::config::RetrySchedule;

/// What the admin pages need beyond the API's state.
#[derive(Debug)]
pub struct Admin {
    pub auth: AdminAuth,
    /// To name the retry-tier queues on the overview.
    pub schedule: RetrySchedule,
}

impl Admin {
    /// The admin pages, guarded by `key`.
    pub fn new(key: &SecretString, schedule: RetrySchedule) -> Self {
        Self {
            auth: AdminAuth::new(key),
            schedule,
        }
    }
}

/// The `/admin` routes (mounted only when an admin key is configured).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview::overview))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/dead-letters", get(dead_letters::list))
        .route("/admin/dead-letters/{id}", get(dead_letters::detail))
        .route("/admin/replay", get(replay::confirm).post(replay::run))
        .route("/admin/suppressions", get(suppressions::list))
        .route("/admin/suppressions/remove", post(suppressions::remove))
        .route("/admin/webhooks", get(webhooks::list))
        .route("/admin/webhooks/enable", post(webhooks::enable))
        .route("/admin/api/dead-letters", get(json::list))
        .route("/admin/api/dead-letters/replay", post(json::replay))
        .route("/admin/api/dead-letters/{id}", get(json::show))
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        section style="max-width:420px" {
            @if let Some(error) = error {
                p.err id="login-error" { (error) }
            }
            form method="post" action="/admin/login" {
                (html::hidden("next", next))
                label {
                    "Admin key"
                    input type="password" name="key" id="key" autocomplete="current-password" autofocus required;
                }
                p { button type="submit" id="login" { "Sign in" } }
            }
            p.muted { "The key is the ingest's " code { "ADMIN_API_KEY" } "." }
        }
    };
    html::respond(status, html::page("Sign in", Nav::None, false, body))
}

async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    login_page(StatusCode::OK, auth::safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(admin) = &state.admin else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let next = auth::safe_next(form.next.as_deref());
    match admin.auth.check_key(&form.key, client) {
        Ok(true) => {
            tracing::info!("admin signed in");
            let cookie = admin.auth.session_cookie(auth::is_https(&headers));
            ([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response()
        }
        Ok(false) => {
            tracing::warn!("admin sign-in with a wrong key");
            login_page(
                StatusCode::UNAUTHORIZED,
                next,
                Some("That is not the admin key."),
            )
        }
        Err(Blocked(_)) => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            next,
            Some("Too many wrong keys; wait a moment and try again."),
        ),
    }
}

async fn logout(_: AdminPage) -> Response {
    (
        [(header::SET_COOKIE, auth::clear_cookie())],
        Redirect::to("/admin/login"),
    )
        .into_response()
}
