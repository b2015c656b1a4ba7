//! `heraldctl suppressions list|add|remove`: a tenant's suppression list.

use anyhow::Context;
use clap::Subcommand;
use sqlx::PgPool;

use super::output;
use crate::{
    db::{
        self,
        suppressions::{Filter, NewSuppression},
    },
    model::{
        Channel, TenantId,
        suppression::{SuppressedAddress, SuppressionReason, suppressible},
    },
};

/// Rows one `list` reads per query.
const PAGE: i64 = 1000;

#[derive(Subcommand, Debug)]
pub enum SuppressionCommand {
    /// List suppressed addresses (every tenant's unless --tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// email or sms.
        #[arg(long)]
        channel: Option<Channel>,
        /// Most rows printed.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Suppress an address by hand (reason `manual`; replaces the reason of
    /// one suppressed already).
    Add {
        #[arg(long)]
        tenant: String,
        /// email or sms.
        #[arg(long)]
        channel: Channel,
        /// Email address or E.164 phone number.
        #[arg(long)]
        address: String,
        /// Why, kept with the suppression.
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an address from the list: deliveries to it are made again.
    Remove {
        #[arg(long)]
        tenant: String,
        /// email or sms.
        #[arg(long)]
        channel: Channel,
        #[arg(long)]
        address: String,
    },
}

fn parse(
    tenant: String,
    channel: Channel,
    address: &str,
) -> anyhow::Result<(TenantId, SuppressedAddress)> {
    let tenant = TenantId::parse(tenant).context("invalid tenant id")?;
    let address = SuppressedAddress::parse(channel, address)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid {channel} address `{address}`"))?;
    Ok((tenant, address))
}

/// Runs one suppressions command.
pub async fn run(pool: &PgPool, cmd: SuppressionCommand) -> anyhow::Result<()> {
    match cmd {
        SuppressionCommand::List {
            tenant,
            channel,
            limit,
            json,
        } => {
            if let Some(c) = channel {
                suppressible(c).map_err(anyhow::Error::msg)?;
            }
            let mut rows = Vec::new();
            let mut after: Option<(String, String, String)> = None;
            while (rows.len() as i64) < limit {
                let page = db::suppressions::list(
                    pool,
                    &Filter {
                        tenant: tenant.as_deref(),
                        channel: channel.map(Channel::as_str),
                        after: after
                            .as_ref()
                            .map(|(t, c, a)| (t.as_str(), c.as_str(), a.as_str())),
                    },
                    PAGE.min(limit - rows.len() as i64),
                )
                .await?;
                let Some(last) = page.last() else { break };
                after = Some((
                    last.tenant_id.clone(),
                    last.channel.clone(),
                    last.address.clone(),
                ));
                let full = page.len() as i64 == PAGE;
                rows.extend(page);
                if !full {
                    break;
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                output::table(
                    &[
                        "TENANT", "CHANNEL", "ADDRESS", "REASON", "SOURCE", "SINCE", "DETAIL",
                    ],
                    rows.iter().map(|s| {
                        vec![
                            s.tenant_id.clone(),
                            s.channel.clone(),
                            s.address.clone(),
                            s.reason.clone(),
                            s.source.clone(),
                            output::time(s.created_at),
                            output::cut(s.detail.as_deref().unwrap_or(""), 60),
                        ]
                    }),
                );
            }
        }
        SuppressionCommand::Add {
            tenant,
            channel,
            address,
            note,
        } => {
            let (tenant, address) = parse(tenant, channel, &address)?;
            if !db::tenants::exists(pool, tenant.as_str()).await? {
                anyhow::bail!("no tenant `{tenant}`");
            }
            let created = db::suppressions::put(
                pool,
                &NewSuppression {
                    tenant_id: tenant.as_str(),
                    address: &address,
                    reason: SuppressionReason::Manual,
                    source: "heraldctl",
                    detail: note.as_deref(),
                },
            )
            .await?;
            eprintln!(
                "{channel} {} {} for tenant `{tenant}`",
                address.as_str(),
                if created {
                    "suppressed"
                } else {
                    "was suppressed already; now manually"
                }
            );
        }
        SuppressionCommand::Remove {
            tenant,
            channel,
            address,
        } => {
            let (tenant, address) = parse(tenant, channel, &address)?;
            if !db::suppressions::remove(pool, tenant.as_str(), &address).await? {
                anyhow::bail!(
                    "{channel} {} is not suppressed for tenant `{tenant}`",
                    address.as_str()
                );
            }
            eprintln!(
                "{channel} {} removed from tenant `{tenant}`'s suppressions",
                address.as_str()
            );
        }
    }
    Ok(())
}
