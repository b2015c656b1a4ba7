//! PostgreSQL: the pool, migrations, and one module of queries per table group.

pub mod activity;
pub mod dead_letters;
pub mod deliveries;
pub mod idempotency;
pub mod keys;
pub mod notifications;
pub mod recipients;
pub mod routing;
pub mod tenants;

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The schema's migrations, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Connections are made lazily so a process starts (and says
/// it is not ready) even while the database is down.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    // Plan every statement for its parameters. The delivery partition of the
    // day starts empty and grows to millions of rows within hours: a generic
    // plan cached while it was empty (a sequential scan) would stay in use.
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .options([("plan_cache_mode", "force_custom_plan")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast with 503 when the database is gone rather
        // than queue for the default 30 s.
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// Applies pending migrations and makes sure delivery partitions exist.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    ensure_partitions(pool).await?;
    Ok(())
}

/// Creates the daily delivery partitions for the next two weeks. Run by
/// `heraldctl migrate` and periodically by the router.
pub async fn ensure_partitions(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT herald_ensure_delivery_partitions(1, 14)")
        .fetch_one(pool)
        .await
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
