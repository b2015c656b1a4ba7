//! Test harness: every test gets its own PostgreSQL database (cloned from a
//! migrated template) and its own broker prefix, so tests run in parallel
//! against the one real RabbitMQ and PostgreSQL without seeing each other.
//! Both are removed when the test ends, pass or fail.

pub mod browser;
pub mod fakes;
pub mod faults;
pub mod pipeline;
pub mod prism;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use herald::{
    broker::{Broker, Names},
    config::{CommonConfig, LogFormat, RetrySchedule},
    db::{self, keys::Scope},
    model::TenantId,
};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Server of the tests' databases (no database name).
pub fn pg_server() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The tests' broker.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test's isolated database and broker prefix.
pub struct TestEnv {
    pub db_name: String,
    pub database_url: String,
    pub pool: PgPool,
    pub prefix: String,
    /// `QUEUE_SHARDS` of what this environment starts (1 unless a test sets it).
    pub shards: u16,
    pub schedule: RetrySchedule,
}

fn migrations_hash() -> String {
    // The migrations compiled into this binary, not those on disk: a binary
    // built before a migration was added must not name its template after
    // a set it does not apply.
    let mut h = Sha256::new();
    for m in db::MIGRATOR.iter() {
        h.update(m.version.to_le_bytes());
        h.update(&m.checksum);
    }
    hex::encode(&h.finalize()[..6])
}

/// Makes sure the migrated template database exists, building it once
/// (under an advisory lock: nextest runs every test in its own process).
async fn template() -> String {
    let name = format!("herald_tmpl_{}", migrations_hash());
    let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services starts it)");
    admin
        .execute("SELECT pg_advisory_lock(424242)")
        .await
        .expect("lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("query");
    if !exists {
        let building = format!("{name}_building");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
            )))
            .await
            .expect("drop");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .await
            .expect("create template");
        let pool = PgPool::connect(&format!("{}/{building}", pg_server()))
            .await
            .expect("connect");
        db::migrate(&pool).await.expect("migrate template");
        pool.close().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {building} RENAME TO {name}"
            )))
            .await
            .expect("rename template");
    }
    admin
        .execute("SELECT pg_advisory_unlock(424242)")
        .await
        .expect("unlock");
    name
}

impl TestEnv {
    /// A fresh database and prefix, with a quick retry schedule.
    pub async fn new() -> Self {
        Self::with_schedule("300ms,600ms").await
    }

    /// A fresh environment whose retry tiers are `schedule`.
    pub async fn with_schedule(schedule: &str) -> Self {
        // Logs go through the test writer, so they show only for failing
        // tests. The binaries run in this process, so it carries their trace
        // layer too (without export, as they run by default).
        let logs = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".into()),
            );
        let export = herald::telemetry::traces::Export {
            endpoint: None,
            service_name: "herald-tests".into(),
        };
        let _ = tracing_subscriber::registry()
            .with(logs)
            .with(herald::telemetry::traces::layer(&export))
            .try_init();
        let template = template().await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("herald_t_{}", &id[..16]);
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .expect("connect");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {db_name} TEMPLATE {template}"
            )))
            .await
            .expect("create test database");
        let database_url = format!("{}/{db_name}", pg_server());
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connect test database");
        db::ensure_partitions(&pool).await.expect("partitions");
        Self {
            db_name,
            database_url,
            pool,
            prefix: format!("t{}", &id[..12]),
            shards: 1,
            schedule: schedule.parse().expect("schedule"),
        }
    }

    /// Configuration pointing at this environment.
    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            database_url: self.database_url.clone(),
            database_read_url: None,
            database_max_connections: 8,
            amqp_url: amqp_url(),
            broker_prefix: self.prefix.clone(),
            queue_shards: self.shards,
            retry_schedule: self.schedule.clone(),
            log_format: Some(LogFormat::Pretty),
            otlp_endpoint: None,
            service_name: None,
        }
    }

    /// The environment's exchange and queue names.
    pub fn names(&self) -> Names {
        Names::new(&self.prefix).with_shards(self.shards)
    }

    /// A broker handle with the topology declared.
    pub async fn broker(&self) -> Arc<Broker> {
        let broker = Broker::new(amqp_url(), self.names());
        broker
            .declare_topology(&self.schedule)
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672");
        broker
    }

    /// Creates a tenant and an API key with `scopes`.
    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> String {
        let tenant = TenantId::parse(tenant).expect("tenant id");
        db::tenants::ensure(&self.pool, &tenant, tenant.as_str())
            .await
            .expect("tenant");
        db::keys::create(&self.pool, &tenant, scopes)
            .await
            .expect("key")
    }

    /// Starts the real ingest in this process on a free port.
    pub async fn spawn_ingest(&self) -> Spawned {
        self.spawn_ingest_with(|_| {}).await
    }

    /// Ingest's configuration for this environment: a free port, no rate limit.
    fn ingest_config(
        &self,
        tweak: impl FnOnce(&mut herald::api::IngestConfig),
    ) -> herald::api::IngestConfig {
        // Every setting at its default, then pointed at this environment.
        let mut config = <herald::api::IngestConfig as clap::Parser>::parse_from(["ingest"]);
        config.common = self.common();
        config.http_addr = "127.0.0.1:0".parse().expect("addr");
        config.api_key_rate_per_sec = 0;
        config.admin_api_key = None;
        tweak(&mut config);
        config
    }

    /// Starts ingest after `tweak` adjusted its configuration.
    pub async fn spawn_ingest_with(
        &self,
        tweak: impl FnOnce(&mut herald::api::IngestConfig),
    ) -> Spawned {
        let config = self.ingest_config(tweak);
        Spawned::start(config.http_addr, |listener, cancel| {
            herald::api::run(config, listener, cancel)
        })
        .await
    }

    /// Starts ingest without waiting for it to be ready (its broker or
    /// database may be down on purpose).
    pub async fn spawn_ingest_unready(
        &self,
        tweak: impl FnOnce(&mut herald::api::IngestConfig),
    ) -> Spawned {
        let config = self.ingest_config(tweak);
        Spawned::launch(
            config.http_addr,
            |listener, cancel| herald::api::run(config, listener, cancel),
            false,
        )
        .await
    }

    /// Starts the real router in this process.
    pub async fn spawn_router(&self) -> Spawned {
        self.spawn_router_with(|_| {}).await
    }

    /// Starts the router after `tweak` adjusted its configuration.
    pub async fn spawn_router_with(
        &self,
        tweak: impl FnOnce(&mut herald::routing::RouterConfig),
    ) -> Spawned {
        let mut config = herald::routing::RouterConfig {
            common: self.common(),
            // Unused in process: the test's own runtime runs it.
            runtime: herald::runtime::RuntimeConfig::default(),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            delivery_retention_days: 30,
            // Test receivers listen on loopback.
            webhook_allowed_networks: vec!["127.0.0.0/8".parse().expect("network")],
            webhook_disable_after: Duration::from_secs(24 * 3600),
            webhook_timeout: Duration::from_secs(5),
            webhook_rate_per_sec: 50,
        };
        tweak(&mut config);
        Spawned::start(config.http_addr, |listener, cancel| {
            herald::routing::run(config, listener, cancel)
        })
        .await
    }

    /// Starts a channel worker in this process; `tweak` sets its providers
    /// (pointing them at fakes) and budgets. Budgets default to unlimited.
    pub async fn spawn_worker(
        &self,
        channel: herald::model::Channel,
        tweak: impl FnOnce(&mut herald::delivery::WorkerConfig),
    ) -> Spawned {
        let mut config = herald::delivery::WorkerConfig {
            common: self.common(),
            runtime: herald::runtime::RuntimeConfig::default(),
            http_addr: Some("127.0.0.1:0".parse().expect("addr")),
            push_rate_per_sec: 0,
            email_rate_per_sec: 0,
            sms_rate_per_sec: 0,
            recipient_rate_per_min: 0,
            providers: Default::default(),
        };
        tweak(&mut config);
        let providers = std::sync::Arc::new(
            herald::providers::config::build(channel, &config.providers)
                .expect("providers configure"),
        );
        let addr = config.listen_addr(channel);
        Spawned::start(addr, move |listener, cancel| {
            herald::delivery::run(channel, config, providers, listener, cancel)
        })
        .await
    }

    /// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
    pub async fn eventually<T, F, Fut>(&self, timeout: Duration, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Some(v);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages waiting in a queue.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let broker = Broker::new(amqp_url(), self.names());
        let q = broker.inspect(queue).await.expect("queue exists");
        broker.close().await;
        q.messages
    }

    /// Ready messages in every queue of this environment that holds any:
    /// what the broker keeps after a scenario (retry copies, stranded work).
    pub async fn broker_messages(&self) -> Vec<(String, u32)> {
        let broker = Broker::new(amqp_url(), self.names());
        let stats = broker
            .queue_stats(&self.schedule)
            .await
            .expect("broker answers");
        broker.close().await;
        stats
            .into_iter()
            .filter(|q| q.messages > 0)
            .map(|q| (q.queue, q.messages))
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let names = self.names();
        let schedule = self.schedule.clone();
        // Async cleanup from a sync Drop: a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // The pool is not closed here: its connections belong to the
                // test's runtime, blocked on this thread. FORCE ends them.
                let cleanup = async {
                    if let Ok(mut admin) =
                        PgConnection::connect(&format!("{}/postgres", pg_server())).await
                    {
                        let _ = admin
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                            )))
                            .await;
                    }
                    let broker = Broker::new(amqp_url(), names.clone());
                    // A delete of something missing closes the channel: one each.
                    for q in names.all_queues(&schedule) {
                        if let Ok(ch) = broker.channel().await {
                            let _ = ch
                                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                                .await;
                            let _ = ch.close(200, "cleanup".into()).await;
                        }
                    }
                    for x in names.all_exchanges() {
                        if let Ok(ch) = broker.channel().await {
                            let _ = ch
                                .exchange_delete(
                                    x.as_str().into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                            let _ = ch.close(200, "cleanup".into()).await;
                        }
                    }
                    broker.close().await;
                };
                if tokio::time::timeout(Duration::from_secs(30), cleanup)
                    .await
                    .is_err()
                {
                    eprintln!("cleanup of {db_name} timed out");
                }
            });
        })
        .join();
    }
}

/// A process component started in-process on a free port.
pub struct Spawned {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Spawned {
    /// Starts a component and waits until its `/readyz` answers 200.
    pub async fn start<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::launch(addr, run, true).await
    }

    async fn launch<F, Fut>(addr: SocketAddr, run: F, ready: bool) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(run(listener, cancel.clone()));
        let spawned = Self {
            addr,
            cancel,
            handle: Some(handle),
        };
        spawned
            .wait_for(if ready { "/readyz" } else { "/healthz" })
            .await;
        spawned
    }

    /// Base URL, `http://127.0.0.1:port`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn wait_for(&self, path: &str) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url(path)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("component at {} never became ready", self.addr);
    }

    /// Graceful shutdown, as on SIGTERM; fails the test if the component errored.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("component drains within 30 s")
                .expect("component task")
                .expect("component exits cleanly");
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Path of a workspace binary, built by `cargo build --bins` before the
/// tests (next to a test binary's `deps/` folder, or beside a `bench` binary).
/// `HERALD_BIN_DIR` points elsewhere: a benchmark can run the binaries of
/// another build (an older commit) against the same load.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("HERALD_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.exists(), "{} is missing", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join(name), dir.parent().expect("target dir").join(name)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: run `cargo build --bins` first",
                candidates[1].display()
            )
        })
}

/// An HTTP client with a bearer key.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Client {
    /// A client of `app` using `key`.
    pub fn new(app: &Spawned, key: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: app.url(""),
            key: key.to_owned(),
        }
    }

    /// A request with the key set.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// Sends JSON and returns status and parsed body (Null if none).
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.req(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}
