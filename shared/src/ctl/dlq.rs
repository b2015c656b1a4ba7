//! `heraldctl dlq`: list, show, replay and purge dead letters.

use anyhow::Context;
use clap::{Args, Subcommand};
use sqlx::PgPool;

use super::output;
use crate::{
    broker::{Broker, Publisher},
    config::CommonConfig,
    db::dead_letters::{self, Filter},
    dlq::{
        parse_when,
        replay::{self, Outcome, ReplayRequest},
    },
};

/// Filters shared by every dlq subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only this dead letter.
    #[arg(long)]
    id: Option<uuid::Uuid>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this channel (push, email, sms).
    #[arg(long)]
    channel: Option<String>,
    /// Only this error class (invalid, exhausted, permanent, poison ...).
    #[arg(long)]
    error_class: Option<String>,
    /// Only dead letters of this notification.
    #[arg(long)]
    notification: Option<uuid::Uuid>,
    /// Failed at or after this time (RFC 3339) or this long ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Failed before this time (RFC 3339) or this long ago.
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let when = |s: &Option<String>| {
            s.as_deref()
                .map(parse_when)
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(Filter {
            id: self.id,
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            error_class: self.error_class.clone(),
            notification_id: self.notification,
            since: when(&self.since).context("--since")?,
            until: when(&self.until).context("--until")?,
            only_unreplayed: false,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload and headers.
    Show {
        #[arg(long)]
        id: uuid::Uuid,
    },
    /// Republish dead letters to where they came from, oldest first. Only
    /// records not replayed yet are taken (so running it twice is safe)
    /// unless --again is given. Try --dry-run first.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Messages per second (0 = unpaced).
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Also take records that were replayed before.
        #[arg(long)]
        again: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good. Without --yes, only says how many would go.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only those that failed more than this long ago (`30d`); same as --until 30d.
        #[arg(long, conflicts_with = "until", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a dlq subcommand.
pub async fn run(common: &CommonConfig, pool: &PgPool, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => list(pool, &filter.filter()?, limit, json).await?,
        DlqCommand::Show { id } => show(pool, id).await?,
        DlqCommand::Replay {
            filter,
            limit,
            dry_run,
            rate,
            again,
            json,
        } => {
            let request = ReplayRequest {
                filter: filter.filter()?,
                limit,
                dry_run,
                rate_per_sec: rate,
                again,
            };
            replay(common, pool, request, json).await?;
        }
        DlqCommand::Purge {
            filter,
            older_than,
            yes,
        } => {
            let mut filter = filter.filter()?;
            if let Some(age) = older_than {
                filter.until = Some(chrono::Utc::now() - chrono::Duration::from_std(age)?);
            }
            let n = dead_letters::count(pool, &filter).await?;
            if !yes {
                anyhow::bail!(
                    "{n} dead letter(s) match and would be deleted; nothing was deleted. Add --yes to delete them"
                );
            }
            let deleted = dead_letters::purge(pool, &filter).await?;
            println!("{deleted}");
            eprintln!("{deleted} dead letter(s) deleted");
        }
    }
    Ok(())
}

async fn list(pool: &PgPool, filter: &Filter, limit: i64, json: bool) -> anyhow::Result<()> {
    let rows = dead_letters::list(pool, filter, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    output::table(
        &[
            "ID",
            "FAILED",
            "TENANT",
            "CHANNEL",
            "CLASS",
            "ATTEMPTS",
            "REPLAYED",
            "LAST ERROR",
        ],
        rows.iter().map(|d| {
            vec![
                d.id.to_string(),
                output::time(d.failed_at),
                d.tenant_id.clone().unwrap_or_default(),
                d.channel.clone().unwrap_or_default(),
                d.error_class.clone(),
                d.attempts.to_string(),
                d.replayed_at.map(output::time).unwrap_or_default(),
                output::cut(&d.last_error, 60),
            ]
        }),
    );
    Ok(())
}

async fn show(pool: &PgPool, id: uuid::Uuid) -> anyhow::Result<()> {
    let filter = Filter {
        id: Some(id),
        ..Default::default()
    };
    let row = dead_letters::list(pool, &filter, 1)
        .await?
        .pop()
        .with_context(|| format!("no dead letter {id}"))?;
    let mut value = serde_json::to_value(&row)?;
    value["payload"] = crate::dlq::payload_json(&row.payload);
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

async fn replay(
    common: &CommonConfig,
    pool: &PgPool,
    request: ReplayRequest,
    json: bool,
) -> anyhow::Result<()> {
    let broker = Broker::new(&common.amqp_url, common.names());
    let publisher = Publisher::new(broker.clone());
    let report = replay::replay(pool, &publisher, &request).await;
    broker.close().await;
    let report = report.context("cannot select dead letters")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !report.results.is_empty() {
        output::table(
            &[
                "ID", "TENANT", "CHANNEL", "CLASS", "TO", "OUTCOME", "DETAIL",
            ],
            report.results.iter().map(|r| {
                vec![
                    r.id.to_string(),
                    r.tenant.clone().unwrap_or_default(),
                    r.channel.clone().unwrap_or_default(),
                    r.error_class.clone(),
                    format!("{} {}", r.exchange, r.routing_key),
                    serde_json::to_value(r.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    output::cut(r.detail.as_deref().unwrap_or(""), 70),
                ]
            }),
        );
    }
    let verb = if report.dry_run {
        "would be replayed"
    } else {
        "replayed"
    };
    eprintln!(
        "{} selected, {} {verb}, {} skipped, {} failed",
        report.selected, report.replayed, report.skipped, report.failed
    );
    if let Some(why) = &report.stopped {
        anyhow::bail!("replay stopped early: {why}");
    }
    if report.failed > 0 {
        let first = report
            .results
            .iter()
            .find(|r| r.outcome == Outcome::Failed)
            .and_then(|r| r.detail.clone())
            .unwrap_or_default();
        anyhow::bail!(
            "{} dead letter(s) could not be replayed (first: {first})",
            report.failed
        );
    }
    if report.selected == 0 && request.filter.id.is_some() {
        anyhow::bail!(
            "no dead letter to replay with that id{}",
            if request.again {
                ""
            } else {
                " (already replayed? add --again)"
            }
        );
    }
    Ok(())
}
