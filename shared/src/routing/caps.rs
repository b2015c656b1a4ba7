//! Per-user frequency caps per category and channel: deliveries past the
//! cap are `suppressed`. Caps are tenant settings
//! (`heraldctl tenants set-cap`); counts live in `frequency_events`, keyed
//! by notification so routing the same notification twice counts it once.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::plan::{Initial, Planned};
use crate::{db, model::Channel};

pub use crate::model::policy::FrequencyCap as Cap;

/// Caps by category then channel, as stored on the tenant.
pub type Caps = HashMap<String, HashMap<Channel, Cap>>;

/// Parses the tenant's stored caps; malformed entries are ignored (they are
/// validated when set).
pub fn parse(value: &serde_json::Value) -> Caps {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Suppresses planned deliveries over their user's cap. Only still-pending
/// deliveries count and can be suppressed.
pub async fn apply(
    conn: &mut PgConnection,
    tenant: &str,
    category: &str,
    notification_id: Uuid,
    at: DateTime<Utc>,
    caps: &Caps,
    planned: &mut [Planned],
) -> Result<(), sqlx::Error> {
    let Some(per_channel) = caps.get(category) else {
        return Ok(());
    };
    for (channel, cap) in per_channel {
        let mut users: Vec<&str> = planned
            .iter()
            .filter(|p| p.channel == *channel && p.status == Initial::Pending)
            .map(|p| p.user_id.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            continue;
        }
        let ranks = db::routing::cap_ranks(
            &mut *conn,
            tenant,
            category,
            channel.as_str(),
            notification_id,
            at,
            Duration::from_secs(cap.per_seconds),
            &users,
        )
        .await?;
        let over: std::collections::HashSet<String> = ranks
            .into_iter()
            .filter(|(_, rank)| *rank > cap.max)
            .map(|(u, _)| u)
            .collect();
        for p in planned.iter_mut() {
            if p.channel == *channel && p.status == Initial::Pending && over.contains(&p.user_id) {
                p.status = Initial::Suppressed;
                p.reason = Some("frequency_cap".into());
                p.rendered = None;
            }
        }
    }
    Ok(())
}
