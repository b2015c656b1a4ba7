//! PostgreSQL: the pool, migrations, and one module of queries per table group.

pub mod activity;
pub mod dead_letters;
pub mod deliveries;
pub mod events;
pub mod idempotency;
pub mod kept;
pub mod keys;
pub mod notifications;
pub mod receipts;
pub mod recipients;
pub mod routing;
pub mod suppressions;
pub mod tenants;
pub mod webhooks;

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
    // PostgreSQL's own choice between a custom and a generic plan per
    // prepared statement. Forcing a custom plan for every execution cost a
    // planner run per statement, a measurable share of the database's CPU on
    // the send path (docs/benchmarks.md). The worry it answered, a generic
    // plan made while the day's delivery partition was empty, is bounded:
    // every query of the hot path finds its rows by primary key or the
    // fan-out key whatever the statistics say, and each autoanalyze of the
    // growing partition invalidates the cached plans that depend on it.
    Ok(connect_lazy_with(url.parse()?, max_connections))
}

/// [`connect_lazy`] with connection options already made (a pool with
/// session settings of its own).
pub fn connect_lazy_with(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast with 503 when the database is gone rather
        // than queue for the default 30 s.
        .acquire_timeout(Duration::from_secs(3))
        // The pool pings every connection it hands out by default: a round
        // trip for each statement run on the pool, as many as the
        // statements themselves on the workers' claims (docs/benchmarks.md,
        // "Round trips"). Only a connection idle for a while is pinged
        // now; one that breaks in use fails its statement, as it would
        // have anyway, and the pool closes it when it comes back.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= kept::IDLE_PING {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// Applies pending migrations, makes sure delivery partitions exist, and
/// builds the partition indexes a migration declared on the partitioned
/// table only.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    ensure_partitions(pool).await?;
    ensure_partition_indexes(pool).await?;
    Ok(())
}

/// Indexes declared `ON ONLY deliveries` by a migration, built here on each
/// existing partition that lacks them.
const PARTITIONED_INDEXES: [(&str, &str); 1] = [("deliveries_user", "(tenant_id, user_id)")];

/// Builds each partitioned index on every existing partition that lacks it,
/// with `CREATE INDEX CONCURRENTLY` (writes go on meanwhile; a migration's
/// transaction cannot run it), then attaches it; once every partition has
/// it, PostgreSQL marks the parent index valid. Partitions created later get
/// the index with their `CREATE TABLE`. Safe to run again: a build that was
/// interrupted (an invalid index) is dropped and redone. Answers how many
/// partition indexes it built.
pub async fn ensure_partition_indexes(pool: &PgPool) -> Result<u32, sqlx::Error> {
    let mut built = 0;
    for (parent, columns) in PARTITIONED_INDEXES {
        let missing = sqlx::query_scalar!(
            r#"SELECT c.relname::text AS "relname!" FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'deliveries'::regclass
               AND NOT EXISTS (
                   SELECT 1 FROM pg_inherits ii JOIN pg_index x ON x.indexrelid = ii.inhrelid
                   WHERE ii.inhparent = to_regclass($1) AND x.indrelid = c.oid)
             ORDER BY 1"#,
            parent,
        )
        .fetch_all(pool)
        .await?;
        for partition in missing {
            let index = format!("{partition}_{}", parent.trim_start_matches("deliveries_"));
            let invalid = sqlx::query_scalar!(
                r#"SELECT NOT x.indisvalid AS "invalid!" FROM pg_index x
                   WHERE x.indexrelid = to_regclass($1)"#,
                index,
            )
            .fetch_optional(pool)
            .await?;
            // Runtime queries below: index and partition names are identifiers.
            if invalid == Some(true) {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS \"{index}\""
                )))
                .execute(pool)
                .await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{index}\" ON \"{partition}\" {columns}"
            )))
            .execute(pool)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER INDEX \"{parent}\" ATTACH PARTITION \"{index}\""
            )))
            .execute(pool)
            .await?;
            built += 1;
        }
    }
    Ok(built)
}

/// Creates the daily delivery partitions for the next two weeks. Run by
/// `heraldctl migrate` and periodically by the router.
pub async fn ensure_partitions(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT herald_ensure_delivery_partitions(1, 14) AS "created!""#)
        .fetch_one(pool)
        .await
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT 1 AS one")
        .fetch_one(pool)
        .await
        .map(|_| ())
}
