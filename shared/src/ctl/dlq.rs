//! `heraldctl dlq`: list and show dead letters.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use sqlx::PgPool;

use super::output;
use crate::{
    config::CommonConfig,
    db::dead_letters::{self, Filter},
};

/// Filters shared by every dlq subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
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

fn when(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s)
        .with_context(|| format!("`{s}` is neither an RFC 3339 time nor a duration such as 2h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(ago)?)
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            id: None,
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            error_class: self.error_class.clone(),
            notification_id: self.notification,
            since: self.since.as_deref().map(when).transpose()?,
            until: self.until.as_deref().map(when).transpose()?,
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
}

/// Runs a dlq subcommand.
pub async fn run(_common: &CommonConfig, pool: &PgPool, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let rows = dead_letters::list(pool, &filter.filter()?, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
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
            }
        }
        DlqCommand::Show { id } => {
            let filter = Filter {
                id: Some(id),
                ..Default::default()
            };
            let row = dead_letters::list(pool, &filter, 1)
                .await?
                .pop()
                .with_context(|| format!("no dead letter {id}"))?;
            let payload =
                serde_json::from_slice::<serde_json::Value>(&row.payload).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&row.payload).into_owned())
                });
            let mut value = serde_json::to_value(&row)?;
            value["payload"] = payload;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    Ok(())
}
