//! The ingest HTTP API, version 1 (PRODUCT.md), plus the event-driven ingest
//! consumer and the outbox relay that run beside it in the `ingest` binary.

pub mod admin;
mod attempts;
mod auth;
pub mod client;
mod config;
mod extract;
mod notifications;
pub mod openapi;
pub mod problem;
mod receipts;
mod recipients;
mod suppressions;
mod timeout;
mod views;
mod webhooks;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use auth::{Auth, KeyVerifier};
pub use config::IngestConfig;
pub use extract::{ApiJson, ApiQuery};
use problem::ApiError;
pub use receipts::ReceiptKeys;

use crate::{
    broker::{Broker, Publisher},
    db,
    intake::{self, Intake},
    ops,
    telemetry::traces::TraceContext,
};

/// Largest body of a single request (PRODUCT.md).
pub const MAX_BODY: usize = crate::model::notification::MAX_REQUEST_BYTES;
/// Largest body of a batch request.
pub const MAX_BATCH_BODY: usize = 8 * 1024 * 1024;

/// Shared by every handler: one allocation, so the clone axum makes for
/// every handler and middleware of every request is one reference count,
/// not one per pool, channel and key cache (about 3% of ingest's CPU under
/// load went to cloning and dropping them).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub pool: PgPool,
    /// Reads that tolerate bounded staleness (the status API, the admin
    /// overview): `DATABASE_READ_URL`, else the same pool as `pool`.
    pub read_pool: PgPool,
    pub intake: Intake,
    pub keys: Arc<KeyVerifier>,
    /// Replay from the admin pages publishes through it.
    pub publisher: Publisher,
    /// The admin pages, when an admin key is configured.
    pub admin: Option<Arc<admin::Admin>>,
    /// Where a trusted proxy names the client (`CLIENT_IP_HEADER`).
    pub client_ip_header: Option<HeaderName>,
    /// `API_REQUEST_TIMEOUT`.
    pub request_timeout: Duration,
    /// What verifies provider receipts.
    pub receipts: Arc<ReceiptKeys>,
    /// Which addresses webhook endpoints may resolve to.
    pub webhook_policy: Arc<crate::webhooks::address::Policy>,
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// Counts and times every request by route and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("herald_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("herald_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The span of one request: a child of the caller's span when the request
/// carries a `traceparent`, else the root of a new trace. Named by route, not
/// by path, so ids in paths do not make every request a name of its own.
fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
    );
    let carried = TraceContext::from_http(req.headers());
    if carried.traceparent().is_some() {
        // Fails only without the trace layer (nothing to propagate then).
        let _ = span.set_parent(carried.parent());
    }
    span
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// The API routes on `state`.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.request_timeout;
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/notifications", post(notifications::send))
        .route(
            "/notifications/batch",
            post(notifications::send_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/notifications/{id}", get(notifications::status))
        .route(
            "/users/{user_id}",
            put(recipients::put_user)
                .get(recipients::get_user)
                .delete(recipients::delete_user),
        )
        .route(
            "/users/{user_id}/devices/{token}",
            put(recipients::put_device).delete(recipients::delete_device),
        )
        .route(
            "/users/{user_id}/preferences",
            put(recipients::put_preferences).get(recipients::get_preferences),
        )
        .route("/topics/{topic}", get(recipients::get_topic))
        .route(
            "/topics/{topic}/subscribers/{user_id}",
            put(recipients::subscribe).delete(recipients::unsubscribe),
        )
        .route(
            "/receipts/twilio/{created}/{delivery}",
            post(receipts::twilio),
        )
        .route(
            "/receipts/sendgrid",
            // SendGrid batches events; a busy minute's batch can pass 1 MiB.
            post(receipts::sendgrid).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/suppressions", get(suppressions::list))
        .route(
            "/suppressions/{channel}/{address}",
            put(suppressions::put).delete(suppressions::delete),
        )
        .route("/webhooks", get(webhooks::list_webhooks))
        .route(
            "/webhooks/{id}",
            put(webhooks::put_webhook)
                .get(webhooks::get_webhook)
                .delete(webhooks::delete_webhook),
        )
        .route("/webhooks/{id}/rotate", post(webhooks::rotate_webhook));
    let mut app = Router::new().nest("/v1", v1);
    if state.admin.is_some() {
        app = app.merge(admin::routes());
    }
    // Each layer wraps the ones before it: every answer is counted, a path
    // no resource can have is refused before any handler sees it, and the
    // timeout bounds extractors and handler alike. The timeout is Herald's
    // own, not tower-http's `TimeoutLayer`: that one answers a bare 408,
    // where a client is owed 503 problem+json with `Retry-After`, and it
    // cannot give a send that began committing its grace. The trace span is
    // outermost, so it covers everything the request costs; failures are
    // logged and counted by the API itself, so the layer logs none.
    app.fallback(not_found)
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            timeout::limit,
        ))
        .layer(middleware::from_fn(extract::usable_path))
        .layer(middleware::from_fn(track))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .with_state(state)
}

/// Runs ingest until `cancel` fires: the HTTP API on `listener`, the
/// `herald.ingest` consumer, the outbox relay and housekeeping.
pub async fn run(
    config: IngestConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    config.check()?;
    let common = &config.common;
    // Install the recorder before anything counts.
    crate::telemetry::metrics();
    crate::telemetry::catalogue::ingest(&common.names(), openapi::routes());
    let pool = db::connect_lazy(&common.database_url, common.database_max_connections)?;
    let broker = Broker::new(&common.amqp_url, common.names());
    let publisher = Publisher::new(broker.clone());
    let intake = Intake::new(
        pool.clone(),
        publisher.clone(),
        config.inline_routing_max_users,
    );
    let keys = KeyVerifier::new(
        config.api_key_rate_per_sec,
        KeyVerifier::lookup_slots(common.database_max_connections),
    );
    let read_pool = common.read_pool(&pool)?;
    let state = AppState(Arc::new(Shared {
        pool: pool.clone(),
        read_pool: read_pool.clone(),
        intake: intake.clone(),
        keys: keys.clone(),
        publisher: publisher.clone(),
        admin: config
            .admin_api_key
            .as_ref()
            .map(|key| Arc::new(admin::Admin::new(key, common.retry_schedule.clone()))),
        client_ip_header: config.client_ip_header.clone(),
        request_timeout: config.api_request_timeout,
        receipts: Arc::new(config.receipt_keys()?),
        webhook_policy: Arc::new(crate::webhooks::address::Policy::new(
            config.webhook_allowed_networks.clone(),
        )),
    }));

    let tasks = TaskTracker::new();
    {
        let (broker, schedule, cancel) = (
            broker.clone(),
            common.retry_schedule.clone(),
            cancel.clone(),
        );
        let (intake, publisher) = (intake.clone(), publisher.clone());
        tasks.spawn(async move {
            ops::declare_topology(&broker, &schedule, &cancel).await;
            intake::amqp::run(broker, intake, publisher, cancel).await;
        });
    }
    tasks.spawn(intake::relay::run(
        pool.clone(),
        publisher.clone(),
        cancel.clone(),
    ));
    tasks.spawn(housekeeping(
        pool.clone(),
        keys,
        state.admin.clone(),
        cancel.clone(),
    ));

    let app = router(state).merge(ops::router(ops::Readiness {
        pool: pool.clone(),
        broker: broker.clone(),
    }));
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    ops::serve(listener, app, cancel.clone()).await?;
    tasks.close();
    tasks.wait().await;
    broker.close().await;
    pool.close().await;
    read_pool.close().await;
    tracing::info!("ingest stopped");
    Ok(())
}

/// Days a receipt's event id is kept: far longer than any provider retries
/// a callback (SendGrid: 24 hours), so a replay within it is recognised.
const RECEIPT_RETENTION_DAYS: i32 = 30;

/// Periodic chores: expire idempotency keys and old receipts, prune idle rate-limit and
/// failed-attempt state.
async fn housekeeping(
    pool: PgPool,
    keys: Arc<KeyVerifier>,
    admin: Option<Arc<admin::Admin>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        keys.prune();
        if let Some(admin) = &admin {
            admin.auth.prune();
        }
        match db::idempotency::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed"),
        }
        match db::receipts::purge_older_than(&pool, RECEIPT_RETENTION_DAYS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "old receipts purged"),
            Err(e) => tracing::warn!(error = %e, "receipt purge failed"),
        }
    }
}

/// The answer to a PUT: `201 Created` when it created the resource, `200 OK`
/// when it replaced one, with the resource as JSON.
fn put_answer(created: bool, resource: impl serde::Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, axum::Json(resource)).into_response()
}

/// The answer to a DELETE: `204 No Content` when it removed something, 404
/// naming `what` when there was nothing to remove.
fn delete_answer(removed: bool, what: &'static str) -> Result<StatusCode, ApiError> {
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(what))
    }
}
