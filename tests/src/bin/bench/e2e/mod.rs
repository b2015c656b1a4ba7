//! The whole pipeline as users run it: the real `ingest`, `router` and
//! `worker-push` binaries as processes, one-recipient push notifications
//! sent over HTTP by concurrent clients, delivered to a fast FCM fake; and
//! in the same run the broker's single-hop ceiling (persistent 512 B
//! messages, publisher confirms, one quorum queue, consumer acks), which
//! every rate is quoted against.
//!
//! Phases: the ceiling and closed-loop single sends (`--rounds` times), then
//! batch sends, single sends with an `Idempotency-Key` each, an open loop at
//! fixed fractions of the measured rate (latency from request to provider
//! call), `high` sends while a `bulk` topic drains, and CPU seconds and peak
//! RSS per process. Output: a Markdown table on stdout, JSON and an SVG plot
//! of latency against offered rate under `target/bench/`.
//!
//! `--cluster` runs everything, the ceiling included, on a private
//! three-node RabbitMQ cluster on loopback instead of the local broker;
//! `--shards N` splits every lane queue into N (`QUEUE_SHARDS`);
//! `--inline-routing-max-users 0` sends every notification through the
//! router (ingest's `INLINE_ROUTING_MAX_USERS`), for an A/B in one sitting.
//! `--cost-at RATE` measures only what a notification costs the machine at
//! a fixed rate (CPU per 1,000 notifications per process, [`cost`]; keyed
//! sends with `--keyed`). `--keyed-only` alternates closed-loop rounds of
//! plain and keyed single sends, for the keyed / plain ratio alone.

mod ceiling;
mod cost;
mod load;
mod report;
mod svg;

use std::{path::PathBuf, time::Duration};

use herald::db::keys::Scope;
use herald_tests::{
    TestEnv,
    fakes::fcm::FcmFake,
    faults::{
        cluster,
        procs::{Env, Proc},
        rabbit::PrivateRabbit,
        stack::fcm_env,
    },
};

/// Settings of `bench e2e`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Notifications per closed-loop measurement.
    #[arg(long, default_value_t = 20_000)]
    pub notifications: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds of the ceiling and single sends (medians and ranges reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each open-loop point.
    #[arg(long, default_value_t = 10)]
    pub open_loop_secs: u64,
    /// Subscribers of the `bulk` topic that drains while `high` is measured.
    #[arg(long, default_value_t = 50_000)]
    pub topic: usize,
    /// Only the `high`-under-`bulk` phase, with where its time goes (for
    /// working on that path; writes nothing).
    #[arg(long)]
    pub high_only: bool,
    /// Only single sends, closed loop, `rounds` times (for profiling that
    /// path; writes nothing).
    #[arg(long)]
    pub singles_only: bool,
    /// Only single sends and keyed single sends, closed loop, alternating,
    /// `rounds` times, with keyed / plain per round (writes nothing).
    #[arg(long)]
    pub keyed_only: bool,
    /// Only the cost of a notification: single sends at this rate per
    /// second, `rounds` rounds of `open_loop_secs`, and the CPU every
    /// process on the machine used per 1,000 of them (writes nothing).
    #[arg(long, value_name = "PER_SEC")]
    pub cost_at: Option<f64>,
    /// With `--cost-at`: each send with an `Idempotency-Key` of its own.
    #[arg(long, requires = "cost_at")]
    pub keyed: bool,
    /// Where the JSON, Markdown and SVG go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Run on a private three-node RabbitMQ cluster on loopback (started
    /// and removed by the benchmark) instead of the local broker.
    #[arg(long)]
    pub cluster: bool,
    /// `QUEUE_SHARDS` of the binaries: queues per lane.
    #[arg(long, default_value_t = 1)]
    pub shards: u16,
    /// `INLINE_ROUTING_MAX_USERS` of ingest (0: every notification through
    /// the router); ingest's default when not given.
    #[arg(long)]
    pub inline_routing_max_users: Option<usize>,
}

/// The pipeline under test.
pub struct Pipeline {
    pub ingest: Proc,
    pub router: Proc,
    pub worker: Proc,
    pub fcm: FcmFake,
    pub key: String,
    pub users: Vec<String>,
    pub env: TestEnv,
    /// `AMQP_URL` of every binary and of the ceiling's measurement.
    pub amqp_url: String,
    logs: tempfile::TempDir,
}

impl Pipeline {
    async fn start(
        users: usize,
        amqp_url: String,
        shards: u16,
        inline: Option<usize>,
    ) -> anyhow::Result<Self> {
        let mut env = TestEnv::new().await;
        env.shards = shards;
        let key = env.key("bench", &[Scope::Send, Scope::Manage]).await;
        let fcm = FcmFake::start().await;
        let users = seed(&env, users).await?;
        let logs = tempfile::tempdir()?;
        let base: Env = [
            ("DATABASE_URL", env.database_url.clone()),
            ("AMQP_URL", amqp_url.clone()),
            ("QUEUE_SHARDS", shards.to_string()),
            ("BROKER_PREFIX", env.prefix.clone()),
            // The environment's schedule, so its cleanup finds every queue.
            ("RETRY_SCHEDULE", env.schedule.to_string()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "warn".into()),
            ("API_KEY_RATE_PER_SEC", "0".into()),
            ("RECIPIENT_RATE_PER_MIN", "0".into()),
            ("PUSH_RATE_PER_SEC", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(inline.map(|n| ("INLINE_ROUTING_MAX_USERS".to_owned(), n.to_string())))
        .collect();
        let with = |extra: Env| {
            let mut env = base.clone();
            env.extend(extra);
            env
        };
        let mut ingest = Proc::spawn("ingest", base.clone(), logs.path());
        let mut router = Proc::spawn("router", base.clone(), logs.path());
        let mut worker = Proc::spawn("worker-push", with(fcm_env(&fcm)), logs.path());
        for p in [&mut ingest, &mut router, &mut worker] {
            p.wait_ready(Duration::from_secs(60)).await;
        }
        Ok(Self {
            ingest,
            router,
            worker,
            fcm,
            key,
            users,
            env,
            amqp_url,
            logs,
        })
    }

    /// Where the processes log.
    pub fn log_dir(&self) -> &std::path::Path {
        self.logs.path()
    }
}

/// `n` users with one FCM device each, straight in SQL.
async fn seed(env: &TestEnv, n: usize) -> anyhow::Result<Vec<String>> {
    for sql in [
        "INSERT INTO users (tenant_id, id, name) SELECT 'bench', 'bu-' || g, 'User ' || g
         FROM generate_series(1, $1) g",
        "INSERT INTO devices (tenant_id, user_id, token, platform)
         SELECT 'bench', 'bu-' || g, 'bench-token-' || g, 'fcm' FROM generate_series(1, $1) g",
    ] {
        sqlx::query(sql).bind(n as i32).execute(&env.pool).await?;
    }
    Ok((1..=n).map(|g| format!("bu-{g}")).collect())
}

/// Runs every phase and writes the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Dropped last: the nodes are removed after the pipeline stopped.
    let nodes: Vec<PrivateRabbit> = if args.cluster {
        cluster::start(3).await
    } else {
        Vec::new()
    };
    let amqp_url = if nodes.is_empty() {
        herald_tests::amqp_url()
    } else {
        cluster::amqp_url(&nodes)
    };
    let users = args.notifications.clamp(1_000, 20_000);
    let p = Pipeline::start(users, amqp_url, args.shards, args.inline_routing_max_users).await?;
    eprintln!("pipeline up; processes log to {}", p.log_dir().display());
    if let Some(seed) = nodes.first() {
        let leaders = cluster::leaders(seed, &p.env.prefix).await;
        let mut per_node = std::collections::BTreeMap::<&str, usize>::new();
        for (_, node) in &leaders {
            *per_node.entry(node.as_str()).or_default() += 1;
        }
        eprintln!("queue leaders per node: {per_node:?}");
    }
    if args.high_only {
        let h = report::high_under_bulk(&p, &args).await?;
        println!("{h:#?}");
        println!("{}", report::high_stages(&p).await?);
        return Ok(());
    }
    if let Some(rate) = args.cost_at {
        println!(
            "{}",
            cost::run(
                &p,
                rate,
                args.open_loop_secs,
                args.rounds,
                if args.keyed {
                    load::Mode::Keyed
                } else {
                    load::Mode::Single
                },
            )
            .await?
        );
        return Ok(());
    }
    if args.singles_only {
        for round in 1..=args.rounds {
            let singles =
                load::closed_loop(&p, args.notifications, args.concurrency, load::Mode::Single)
                    .await?;
            eprintln!("round {round}: {singles:?}");
        }
        return Ok(());
    }
    if args.keyed_only {
        for round in 1..=args.rounds {
            let (n, c) = (args.notifications, args.concurrency);
            let plain = load::closed_loop(&p, n, c, load::Mode::Single).await?;
            let keyed = load::closed_loop(&p, n, c, load::Mode::Keyed).await?;
            eprintln!(
                "round {round}: keyed / plain {:.2}\n  plain: {plain:?}\n  keyed: {keyed:?}",
                keyed.delivered_per_sec / plain.delivered_per_sec
            );
        }
        return Ok(());
    }
    let summary = report::measure(&p, &args).await?;
    summary.write(&args.out)?;
    println!("{}", summary.markdown());
    Ok(())
}
