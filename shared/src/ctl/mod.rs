//! `heraldctl`: migrations, broker topology, tenants, API keys, dead letters,
//! suppressions and pipeline stats. Scriptable: results on stdout (`--json` where a listing
//! is printed), the reason of a failure on stderr, non-zero exit on failure.

mod dlq;
mod output;
mod suppressions;

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    broker::{Broker, QueueStats},
    config::CommonConfig,
    db::{self, keys::Scope},
    model::{Category, TenantId},
};

/// Herald's operator CLI.
#[derive(Parser, Debug)]
#[command(name = "heraldctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply database migrations and create upcoming delivery partitions.
    Migrate,
    /// Declare every exchange and queue (idempotent).
    Topology,
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Search, inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// List, add and remove suppressed addresses.
    #[command(subcommand)]
    Suppressions(suppressions::SuppressionCommand),
    /// Queue depths and consumers of every queue, deliveries per status in
    /// the last hour and dead letters per class in the last 24 hours.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Create a tenant (no-op if it exists).
    Create {
        #[arg(long)]
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cap deliveries of a category on a channel per user and window
    /// (`--max 0` blocks; `--clear` removes the cap).
    SetCap {
        #[arg(long)]
        id: String,
        #[arg(long)]
        category: String,
        /// push, email or sms.
        #[arg(long)]
        channel: crate::model::Channel,
        /// Most deliveries per user in the window.
        #[arg(long, required_unless_present = "clear")]
        max: Option<i64>,
        /// The window, e.g. 24h or 7d (at most 31 days).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        per: std::time::Duration,
        #[arg(long)]
        clear: bool,
    },
    /// Set the categories that ignore opt-outs (security, legal ...).
    SetRequired {
        #[arg(long)]
        id: String,
        /// Comma-separated categories; empty to clear.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a key and print it alone on stdout (the only time it is shown).
    /// Creates the tenant if it does not exist yet.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: send, manage.
        #[arg(long, value_delimiter = ',', default_value = "send")]
        scopes: Vec<Scope>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        #[arg(long)]
        id: uuid::Uuid,
    },
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heraldctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn pool(common: &CommonConfig) -> anyhow::Result<sqlx::PgPool> {
    pool_at(&common.database_url).await
}

/// A pool for reads that tolerate bounded staleness (`heraldctl stats`):
/// `DATABASE_READ_URL`, else `DATABASE_URL`.
async fn read_pool(common: &CommonConfig) -> anyhow::Result<sqlx::PgPool> {
    pool_at(common.read_database_url()).await
}

async fn pool_at(url: &str) -> anyhow::Result<sqlx::PgPool> {
    let pool = db::connect_lazy(url, 4)?;
    db::ping(&pool).await.with_context(|| {
        format!(
            "cannot reach the database at {}",
            crate::config::redact_url(url)
        )
    })?;
    Ok(pool)
}

fn broker(common: &CommonConfig) -> std::sync::Arc<Broker> {
    Broker::new(&common.amqp_url, common.names())
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = &cli.common;
    match cli.command {
        Command::Migrate => {
            let pool = pool(common).await?;
            db::migrate(&pool).await.context("migration failed")?;
            eprintln!("database is up to date");
        }
        Command::Topology => {
            broker(common)
                .declare_topology(&common.retry_schedule)
                .await
                .context("cannot declare the topology")?;
            eprintln!("topology declared under prefix `{}`", common.broker_prefix);
        }
        Command::Tenants(cmd) => tenants(common, cmd).await?,
        Command::Keys(cmd) => keys(common, cmd).await?,
        Command::Dlq(cmd) => dlq::run(common, &pool(common).await?, cmd).await?,
        Command::Suppressions(cmd) => suppressions::run(&pool(common).await?, cmd).await?,
        Command::Stats { json } => stats(common, json).await?,
    }
    Ok(())
}

async fn tenants(common: &CommonConfig, cmd: TenantCommand) -> anyhow::Result<()> {
    let pool = pool(common).await?;
    match cmd {
        TenantCommand::Create { id, name } => {
            let id = TenantId::parse(id).context("invalid tenant id")?;
            let created =
                db::tenants::ensure(&pool, &id, name.as_deref().unwrap_or(id.as_str())).await?;
            eprintln!(
                "tenant `{id}` {}",
                if created { "created" } else { "already exists" }
            );
        }
        TenantCommand::List { json } => {
            let rows = db::tenants::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                output::table(
                    &["ID", "NAME", "REQUIRED CATEGORIES", "CREATED"],
                    rows.iter().map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.required_categories.join(","),
                            output::time(t.created_at),
                        ]
                    }),
                );
            }
        }
        TenantCommand::SetCap {
            id,
            category,
            channel,
            max,
            per,
            clear,
        } => {
            let id = TenantId::parse(id).context("invalid tenant id")?;
            let category = Category::parse(category.clone())
                .with_context(|| format!("invalid category `{category}`"))?;
            if per > std::time::Duration::from_secs(31 * 86400) || per.is_zero() {
                anyhow::bail!("--per must be between 1s and 31 days");
            }
            let cap = match (clear, max) {
                (true, _) => None,
                (false, Some(max)) if max >= 0 => Some(crate::model::policy::FrequencyCap {
                    max,
                    per_seconds: per.as_secs(),
                }),
                _ => anyhow::bail!("--max must be 0 or more"),
            };
            if !db::tenants::set_cap(&pool, &id, &category, channel, cap).await? {
                anyhow::bail!("no tenant `{id}`");
            }
            eprintln!(
                "tenant `{id}` cap for {category}/{channel} {}",
                if cap.is_some() { "set" } else { "cleared" }
            );
        }
        TenantCommand::SetRequired { id, categories } => {
            let id = TenantId::parse(id).context("invalid tenant id")?;
            let categories = categories
                .into_iter()
                .filter(|c| !c.is_empty())
                .map(|c| {
                    Category::parse(c.clone()).with_context(|| format!("invalid category `{c}`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !db::tenants::set_required_categories(&pool, &id, &categories).await? {
                anyhow::bail!("no tenant `{id}`");
            }
            eprintln!("tenant `{id}` required categories set");
        }
    }
    Ok(())
}

async fn keys(common: &CommonConfig, cmd: KeyCommand) -> anyhow::Result<()> {
    let pool = pool(common).await?;
    match cmd {
        KeyCommand::Create { tenant, scopes } => {
            let tenant = TenantId::parse(tenant).context("invalid tenant id")?;
            if scopes.is_empty() {
                anyhow::bail!("give at least one scope: send, manage");
            }
            if db::tenants::ensure(&pool, &tenant, tenant.as_str()).await? {
                eprintln!("tenant `{tenant}` created");
            }
            let key = db::keys::create(&pool, &tenant, &scopes).await?;
            println!("{key}");
        }
        KeyCommand::List { tenant, json } => {
            let rows = db::keys::list(&pool, tenant.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                output::table(
                    &["ID", "TENANT", "PREFIX", "SCOPES", "CREATED", "REVOKED"],
                    rows.iter().map(|k| {
                        vec![
                            k.id.to_string(),
                            k.tenant_id.clone(),
                            k.key_prefix.clone(),
                            k.scopes.join(","),
                            output::time(k.created_at),
                            k.revoked_at.map(output::time).unwrap_or_default(),
                        ]
                    }),
                );
            }
        }
        KeyCommand::Revoke { id } => {
            if !db::keys::revoke(&pool, id).await? {
                anyhow::bail!("no live key with id {id}");
            }
            eprintln!("key {id} revoked (effective within 30 s)");
        }
    }
    Ok(())
}

/// Window of `heraldctl stats`' delivery counts.
const DELIVERY_WINDOW: Duration = Duration::from_secs(3600);
/// Window of `heraldctl stats`' dead-letter counts.
const DEAD_LETTER_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What `heraldctl stats --json` prints.
#[derive(Debug, serde::Serialize)]
struct Stats {
    queues: Vec<QueueStats>,
    /// Deliveries updated in the last hour, per status they reached.
    deliveries_last_hour: BTreeMap<String, i64>,
    /// Dead letters that failed in the last 24 hours, per error class.
    dead_letters_last_24h: BTreeMap<String, i64>,
}

async fn stats(common: &CommonConfig, json: bool) -> anyhow::Result<()> {
    let pool = read_pool(common).await?;
    let broker = broker(common);
    let queues = broker.queue_stats(&common.retry_schedule).await;
    broker.close().await;
    let queues = queues.context("cannot reach the broker")?;
    let to_map =
        |rows: Vec<db::activity::Count>| rows.into_iter().map(|c| (c.key, c.count)).collect();
    let stats = Stats {
        queues,
        deliveries_last_hour: to_map(
            db::activity::deliveries_by_status(&pool, DELIVERY_WINDOW)
                .await
                .context("cannot count deliveries")?,
        ),
        dead_letters_last_24h: to_map(
            db::activity::dead_letters_by_class(&pool, DEAD_LETTER_WINDOW)
                .await
                .context("cannot count dead letters")?,
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    output::table(
        &["QUEUE", "MESSAGES", "CONSUMERS"],
        stats.queues.iter().map(|s| {
            vec![
                s.queue.clone(),
                s.messages.to_string(),
                s.consumers.to_string(),
            ]
        }),
    );
    println!();
    output::table(
        &["DELIVERIES (LAST HOUR)", "COUNT"],
        stats
            .deliveries_last_hour
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()]),
    );
    println!();
    output::table(
        &["DEAD LETTERS (LAST 24 H)", "COUNT"],
        stats
            .dead_letters_last_24h
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()]),
    );
    Ok(())
}
