//! The ingest HTTP API, version 1 (PRODUCT.md), plus the event-driven ingest
//! consumer and the outbox relay that run beside it in the `ingest` binary.

pub mod admin;
mod auth;
mod notifications;
pub mod problem;
mod recipients;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, rejection::JsonRejection},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::catch_panic::CatchPanicLayer;

pub use auth::{Auth, KeyVerifier};
use problem::ApiError;

use crate::{
    broker::{Broker, Names, Publisher},
    config::CommonConfig,
    db,
    intake::{self, Intake},
    ops,
};

/// Largest body of a single request (PRODUCT.md).
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest body of a batch request.
pub const MAX_BATCH_BODY: usize = 8 * 1024 * 1024;

/// Settings of the `ingest` binary.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ingest",
    about = "Herald's HTTP API and event-driven ingest",
    version
)]
pub struct IngestConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Listen address of the API (and /healthz, /readyz, /metrics).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Requests per second one API key may make (0 = unlimited).
    #[arg(long, env = "API_KEY_RATE_PER_SEC", default_value_t = 1000)]
    pub api_key_rate_per_sec: u32,
    /// Key of the admin pages under /admin (dead letters, replay). Unset: the
    /// admin pages do not exist (404). Use a long random value.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true, value_parser = secret)]
    pub admin_api_key: Option<SecretString>,
}

/// Wraps the key at once; its length is checked in [`run`], where the error
/// can say what is wrong without echoing the value as clap would.
fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.trim().to_owned()))
}

/// Shortest admin key accepted: a guessable key would open replay to anyone
/// who can reach ingest.
const ADMIN_KEY_MIN_LEN: usize = 16;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub intake: Intake,
    pub keys: Arc<KeyVerifier>,
    /// Replay from the admin pages publishes through it.
    pub publisher: Publisher,
    /// The admin pages, when an admin key is configured.
    pub admin: Option<Arc<admin::Admin>>,
}

/// The JSON body extractor: its rejections are problem documents.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
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

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// The API routes on `state`.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
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
        );
    let mut app = Router::new().nest("/v1", v1);
    if state.admin.is_some() {
        app = app.merge(admin::routes());
    }
    app.fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(track))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Runs ingest until `cancel` fires: the HTTP API on `listener`, the
/// `herald.ingest` consumer, the outbox relay and housekeeping.
pub async fn run(
    config: IngestConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let common = &config.common;
    if let Some(key) = &config.admin_api_key
        && key.expose_secret().len() < ADMIN_KEY_MIN_LEN
    {
        anyhow::bail!("ADMIN_API_KEY must be at least {ADMIN_KEY_MIN_LEN} characters");
    }
    // Install the recorder before anything counts.
    crate::telemetry::metrics();
    let pool = db::connect_lazy(&common.database_url, common.database_max_connections)?;
    let broker = Broker::new(&common.amqp_url, Names::new(&common.broker_prefix));
    let publisher = Publisher::new(broker.clone());
    let intake = Intake::new(pool.clone(), publisher.clone());
    let keys = KeyVerifier::new(config.api_key_rate_per_sec);
    let state = AppState {
        pool: pool.clone(),
        intake: intake.clone(),
        keys: keys.clone(),
        publisher: publisher.clone(),
        admin: config
            .admin_api_key
            .as_ref()
            .map(|key| Arc::new(admin::Admin::new(key, common.retry_schedule.clone()))),
    };

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
    tasks.spawn(housekeeping(pool.clone(), keys, cancel.clone()));

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
    tracing::info!("ingest stopped");
    Ok(())
}

/// Periodic chores: expire idempotency keys, prune idle rate-limit state.
async fn housekeeping(pool: PgPool, keys: Arc<KeyVerifier>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        keys.prune();
        match db::idempotency::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed"),
        }
    }
}

/// `201 Created` or `200 OK` for a PUT that created or replaced.
fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}
