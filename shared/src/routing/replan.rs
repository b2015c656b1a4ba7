//! Routing again what was routed before. A routing message is redelivered
//! after a crash, or replayed by an operator; the router plans it again with
//! the clock, preferences and addresses of now, while the deliveries of the
//! first pass are already stored (the fan-out key keeps them). A stored row
//! still `pending` that the new plan holds, expires or suppresses, or no
//! longer plans at all, takes the new plan's status; otherwise it would wait
//! as `pending` for a message that is never published.

use std::collections::HashMap;

use super::plan::{Initial, Planned};
use crate::db::deliveries::{Replanned, Stored};

/// Reason of a stored delivery the new plan no longer has: its address or
/// device changed or is gone (a user with no destination left on the
/// channel, or erased, gets the plan's own reason instead).
pub const GONE: &str = "destination_changed";

/// The stored `pending` deliveries the new plan `planned` settles otherwise.
pub fn stale(stored: &[Stored], planned: &[Planned]) -> Vec<Replanned> {
    let plan: HashMap<(&str, &str, &str), &Planned> = planned
        .iter()
        .map(|p| {
            (
                (
                    p.user_id.as_str(),
                    p.channel.as_str(),
                    p.destination.address.as_str(),
                ),
                p,
            )
        })
        .collect();
    // What the plan says of a user's channel as a whole (no destination,
    // opted out, unknown user): planned with no destination at all.
    let ended: HashMap<(&str, &str), &Planned> = planned
        .iter()
        .filter(|p| p.destination.address.is_empty())
        .map(|p| ((p.user_id.as_str(), p.channel.as_str()), p))
        .collect();
    stored
        .iter()
        .filter(|s| s.status == "pending")
        .filter_map(|s| {
            let key = (
                s.user_id.as_str(),
                s.channel.as_str(),
                s.destination.as_str(),
            );
            let planned = plan
                .get(&key)
                .or_else(|| ended.get(&(key.0, key.1)))
                .copied();
            match planned {
                Some(p) if p.status == Initial::Pending => None,
                Some(p) => Some(Replanned {
                    id: s.id,
                    status: p.status.as_str(),
                    reason: p.reason.clone(),
                    rendered: (p.status == Initial::Deferred)
                        .then(|| p.rendered.as_ref().map(serde_json::to_value))
                        .flatten()
                        .transpose()
                        .expect("rendered content serialises"),
                    not_before: p.not_before,
                }),
                None => Some(Replanned {
                    id: s.id,
                    status: Initial::Suppressed.as_str(),
                    reason: Some(GONE.into()),
                    rendered: None,
                    not_before: None,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::model::{
        Channel,
        message::{Destination, Rendered, SmsMessage},
    };

    fn stored(user: &str, to: &str, status: &str) -> Stored {
        Stored {
            id: Uuid::now_v7(),
            user_id: user.into(),
            channel: "sms".into(),
            destination: to.into(),
            status: status.into(),
        }
    }

    fn planned(user: &str, to: &str, status: Initial, reason: Option<&str>) -> Planned {
        Planned {
            user_id: user.into(),
            channel: Channel::Sms,
            destination: Destination {
                address: to.into(),
                platform: None,
            },
            status,
            reason: reason.map(Into::into),
            rendered: Some(Rendered::Sms(SmsMessage { text: "hi".into() })),
            not_before: None,
        }
    }

    #[test]
    fn pending_rows_take_the_new_plan_and_vanished_ones_are_suppressed() {
        let rows = [
            stored("u-1", "+1", "pending"),
            stored("u-2", "+2", "pending"),
            stored("u-3", "+3", "pending"),
            stored("u-4", "+4", "sent"),
            stored("u-5", "+5", "pending"),
        ];
        let plan = [
            planned("u-1", "+1", Initial::Pending, None),
            planned("u-2", "+2", Initial::Expired, Some("expired")),
            // u-3 changed number; u-4's row is past pending.
            planned("u-3", "+30", Initial::Pending, None),
            planned("u-4", "+4", Initial::Suppressed, Some("opted_out")),
            // u-5 was erased: no destination at all now.
            planned("u-5", "", Initial::Suppressed, Some("unknown_user")),
        ];
        let stale = stale(&rows, &plan);
        let got: Vec<(Uuid, &str, Option<&str>)> = stale
            .iter()
            .map(|r| (r.id, r.status, r.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (rows[1].id, "expired", Some("expired")),
                (rows[2].id, "suppressed", Some(GONE)),
                (rows[4].id, "suppressed", Some("unknown_user")),
            ]
        );
    }

    #[test]
    fn a_row_the_new_plan_holds_keeps_its_content() {
        let rows = [stored("u-1", "+1", "pending")];
        let mut held = planned("u-1", "+1", Initial::Deferred, Some("quiet_hours"));
        held.not_before = Some(chrono::Utc::now());
        let stale = stale(&rows, &[held]);
        assert_eq!(stale[0].status, "deferred");
        assert!(stale[0].rendered.is_some() && stale[0].not_before.is_some());
    }
}
