//! What every long-running binary serves and does alike: `/healthz`,
//! `/readyz`, `/metrics`, the HTTP server with graceful shutdown, and
//! declaring the broker topology until the broker is there.

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{broker::Broker, config::RetrySchedule, db, telemetry};

/// What readiness depends on.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub broker: Arc<Broker>,
}

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    let (database, broker) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, db::ping(&r.pool)),
        tokio::time::timeout(PROBE_TIMEOUT, r.broker.ping()),
    );
    let database = match database {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    let broker = match broker {
        Ok(Ok(())) if !r.broker.topology_declared() => Err("topology not declared yet".into()),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    let ready = database.is_ok() && broker.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let body = Json(json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": show(&database),
        "broker": show(&broker),
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        telemetry::metrics().render(),
    )
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness)
}

/// Serves `app` on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // With the peer address, which the API counts failed attempts by.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
}

/// Declares the topology, retrying with a pause until the broker answers or
/// `cancel` fires. A binary starts (and reports not ready) while the broker is down.
pub async fn declare_topology(
    broker: &Broker,
    schedule: &RetrySchedule,
    cancel: &CancellationToken,
) {
    let mut pause = Duration::from_millis(500);
    loop {
        match broker.declare_topology(schedule).await {
            Ok(()) => {
                tracing::info!(prefix = broker.names().prefix(), "broker topology declared");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64,
                    "cannot declare broker topology yet; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The parts every consuming binary starts with.
pub struct Service {
    pub pool: PgPool,
    pub broker: Arc<Broker>,
    pub tasks: tokio_util::task::TaskTracker,
}

impl Service {
    /// Opens the pool (lazily) and the broker handle.
    pub fn start(common: &crate::config::CommonConfig) -> anyhow::Result<Self> {
        Self::start_with_reserve(common, 0)
    }

    /// [`Service::start`] with `reserved` of `DATABASE_MAX_CONNECTIONS`
    /// kept out of the pool, for a pool of the caller's own (the workers'
    /// ledger): the process stays within its connection budget.
    pub fn start_with_reserve(
        common: &crate::config::CommonConfig,
        reserved: u32,
    ) -> anyhow::Result<Self> {
        // Install the recorder before anything counts.
        telemetry::metrics();
        let size = common
            .database_max_connections
            .saturating_sub(reserved)
            .max(1);
        let pool = db::connect_lazy(&common.database_url, size)?;
        let broker = Broker::new(&common.amqp_url, common.names());
        Ok(Self {
            pool,
            broker,
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// The readiness probe of this service.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            pool: self.pool.clone(),
            broker: self.broker.clone(),
        }
    }

    /// Serves `app` plus the ops routes until `cancel`, then waits for every
    /// spawned task to drain and closes the connections.
    pub async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        cancel: CancellationToken,
        name: &str,
    ) -> anyhow::Result<()> {
        let app = app.merge(router(self.readiness()));
        tracing::info!(addr = %listener.local_addr()?, "{name} listening");
        serve(listener, app, cancel).await?;
        self.tasks.close();
        self.tasks.wait().await;
        self.broker.close().await;
        self.pool.close().await;
        tracing::info!("{name} stopped");
        Ok(())
    }
}
