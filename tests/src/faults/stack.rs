//! A private RabbitMQ and PostgreSQL wired up for the real binaries: the
//! database created and migrated, a tenant and an API key, and the
//! environment each binary needs. A scenario then spawns the processes it
//! wants ([`Stack::spawn`]) and injects faults into the parts.

use std::{path::Path, time::Duration};

use herald::{
    db::{self, keys::Scope},
    model::TenantId,
};
use sqlx::{PgPool, postgres::PgPoolOptions};

use super::{
    postgres::PrivatePostgres,
    procs::{Env, Proc},
    rabbit::PrivateRabbit,
    scratch_dir, suffix,
};
use crate::fakes::fcm::FcmFake;

/// The tenant every stack creates.
pub const TENANT: &str = "fault";

/// Quick retry tiers, so a scenario's retries happen within its run.
pub const RETRY_SCHEDULE: &str = "500ms,1s,2s";

/// What a stack is made of beyond one broker node and one database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Topology {
    /// RabbitMQ nodes joined into one cluster; 0 or 1: a single node.
    pub rabbit_nodes: usize,
    /// A streaming replica of the database, synchronous: a commit waits
    /// until the standby has flushed it.
    pub standby: bool,
    /// `QUEUE_SHARDS` of the binaries; 0 or 1: one queue per lane.
    pub shards: u16,
}

/// Private dependencies plus what the binaries share.
pub struct Stack {
    /// The broker node; of a cluster, the first (the one the others
    /// joined).
    pub rabbit: PrivateRabbit,
    /// The cluster's other nodes (none for a single node).
    pub peers: Vec<PrivateRabbit>,
    /// The primary.
    pub postgres: PrivatePostgres,
    /// The primary's synchronous standby, with [`Topology::standby`]; after
    /// [`Stack::fail_over`], the old primary.
    pub standby: Option<PrivatePostgres>,
    /// A small pool on the stack's database, for seeding and the final
    /// check; it reconnects by itself after a database restart.
    pub pool: PgPool,
    /// `BROKER_PREFIX` of the binaries (the node is private, so the prefix
    /// only has to be stable).
    pub prefix: String,
    /// An API key of [`TENANT`] with `send` and `manage`.
    pub key: String,
    /// `QUEUE_SHARDS` of the binaries.
    pub shards: u16,
    logs: tempfile::TempDir,
}

/// The stack's database name.
const DB: &str = "herald";

impl Stack {
    /// Starts RabbitMQ and PostgreSQL side by side, creates and migrates
    /// the database, and creates the tenant and its key.
    pub async fn start() -> Self {
        Self::start_with(Topology::default()).await
    }

    /// [`Stack::start`] with a RabbitMQ cluster and/or a standby database.
    /// The standby is made from the migrated primary, so it starts with the
    /// schema, tenant and key.
    pub async fn start_with(topology: Topology) -> Self {
        let brokers = async {
            if topology.rabbit_nodes > 1 {
                let mut nodes = super::cluster::start(topology.rabbit_nodes).await;
                let first = nodes.remove(0);
                (first, nodes)
            } else {
                (PrivateRabbit::start().await, Vec::new())
            }
        };
        let ((rabbit, peers), postgres) = tokio::join!(brokers, PrivatePostgres::start());
        postgres.create_database(DB).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&postgres.database_url(DB))
            .await
            .expect("connect to the stack's database");
        db::migrate(&pool).await.expect("migrate");
        let tenant = TenantId::parse(TENANT).expect("tenant id");
        db::tenants::ensure(&pool, &tenant, TENANT)
            .await
            .expect("tenant");
        let key = db::keys::create(&pool, &tenant, &[Scope::Send, Scope::Manage])
            .await
            .expect("api key");
        let standby = if topology.standby {
            let standby = PrivatePostgres::start_standby(&postgres).await;
            postgres.require_synchronous_standby().await;
            eprintln!(
                "standby :{} streaming synchronously from :{}",
                standby.port(),
                postgres.port()
            );
            Some(standby)
        } else {
            None
        };
        Self {
            rabbit,
            peers,
            postgres,
            standby,
            pool,
            prefix: format!("f{}", suffix()),
            key,
            shards: topology.shards.max(1),
            logs: scratch_dir("logs"),
        }
    }

    /// The exchange and queue names of the binaries.
    pub fn names(&self) -> herald::broker::Names {
        herald::broker::Names::new(&self.prefix).with_shards(self.shards)
    }

    /// The database URL the binaries use (the primary's).
    pub fn database_url(&self) -> String {
        self.postgres.database_url(DB)
    }

    /// The standby's URL of the stack's database, with
    /// [`Topology::standby`].
    pub fn standby_url(&self) -> Option<String> {
        self.standby.as_ref().map(|s| s.database_url(DB))
    }

    /// Every broker node, the first one first.
    pub fn rabbit_nodes(&self) -> impl Iterator<Item = &PrivateRabbit> {
        std::iter::once(&self.rabbit).chain(&self.peers)
    }

    /// The broker node named `node`.
    pub fn rabbit_node_mut(&mut self, node: &str) -> &mut PrivateRabbit {
        std::iter::once(&mut self.rabbit)
            .chain(&mut self.peers)
            .find(|r| r.node() == node)
            .unwrap_or_else(|| panic!("no broker node {node}"))
    }

    /// A broker node that runs (the first one that does), to ask about
    /// queues after a node was killed.
    pub fn live_rabbit(&self) -> &PrivateRabbit {
        self.rabbit_nodes()
            .find(|r| r.pid().is_some())
            .expect("a broker node runs")
    }

    /// Promotes the standby ([`PrivatePostgres::promote`]) and makes it the
    /// stack's database: [`Stack::postgres`], [`Stack::database_url`] and
    /// [`Stack::pool`] are the promoted node's from here on, and
    /// [`Stack::standby`] holds the old primary (for its cleanup). The
    /// processes keep their environment: restart them with the new URL.
    pub async fn fail_over(&mut self) {
        let mut standby = self.standby.take().expect("a stack with a standby");
        standby.promote().await;
        let old = std::mem::replace(&mut self.postgres, standby);
        self.standby = Some(old);
        self.pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.database_url())
            .await
            .expect("connect to the promoted database");
    }

    /// Where the processes' output goes.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// What every binary gets: the private broker and database, the prefix,
    /// quick retries, JSON logs, no API rate limit and no per-recipient
    /// limit (a scenario's load must not be throttled by the product's
    /// politeness, or "late" would read as "lost").
    pub fn env(&self) -> Env {
        [
            ("DATABASE_URL", self.database_url()),
            ("DATABASE_MAX_CONNECTIONS", "8".into()),
            ("AMQP_URL", super::cluster::amqp_url(self.rabbit_nodes())),
            ("BROKER_PREFIX", self.prefix.clone()),
            ("QUEUE_SHARDS", self.shards.to_string()),
            ("RETRY_SCHEDULE", RETRY_SCHEDULE.into()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info,sqlx=warn,lapin=warn".into()),
            ("API_KEY_RATE_PER_SEC", "0".into()),
            ("RECIPIENT_RATE_PER_MIN", "0".into()),
            ("PUSH_RATE_PER_SEC", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Spawns binary `name` with [`Stack::env`] plus `extra` (which wins,
    /// e.g. an `AMQP_URL` through a proxy), logging into the stack's log
    /// directory. Does not wait for readiness. Drop the process before the
    /// stack (declare it later, or put it first in a struct): the log it
    /// prints on a panic lives in the stack's directory.
    pub fn spawn(&self, name: &str, extra: Env) -> Proc {
        let mut env = self.env();
        env.extend(extra);
        Proc::spawn(name, env, self.log_dir())
    }

    /// Queue depths of this stack's queues on its node, as the node's
    /// statistics have them now (refreshed every 500 ms on the node).
    pub async fn queues(&self) -> Vec<(String, u64, u64)> {
        self.live_rabbit().queue_messages(&self.prefix).await
    }

    /// Queue depths once they stopped moving: two readings 1.5 s apart
    /// (three statistics refreshes) that agree, at most 10 readings. What
    /// the broker holds at the end of a scenario, without the lag.
    pub async fn settled_queues(&self) -> Vec<(String, u64, u64)> {
        let mut last = self.queues().await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let now = self.queues().await;
            if now == last {
                break;
            }
            last = now;
        }
        last
    }
}

/// The push worker's provider settings for an FCM fake.
pub fn fcm_env(fcm: &FcmFake) -> Env {
    [
        ("PUSH_PROVIDER", "fcm".to_owned()),
        ("FCM_BASE_URL", fcm.base_url()),
        ("FCM_TOKEN_URL", fcm.token_url()),
        ("FCM_PROJECT_ID", fcm.project_id().to_owned()),
        (
            "FCM_CREDENTIALS_FILE",
            fcm.credentials_file().display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
