//! Provider receipts: what happened to a delivery after the provider
//! accepted it. Each provider's callback is verified with its own signature
//! scheme and read into [`Receipt`]s here (pure functions, tested without a
//! server); `db::receipts` applies them, once per provider event id.
//!
//! | provider event | delivery status | suppression |
//! |---|---|---|
//! | Twilio `delivered` | `delivered` | |
//! | Twilio `undelivered` / `failed` | `undelivered` (reason: the error code) | error 21610 (recipient replied STOP): `unsubscribed` |
//! | SendGrid `delivered` | `delivered` | |
//! | SendGrid `bounce` (type `bounce`) | `bounced` | `hard_bounce` |
//! | SendGrid `bounce` (type `blocked`) | `undelivered` | none: a block is the receiving server's policy of the moment, not a dead mailbox |
//! | SendGrid `dropped` | `undelivered` | |
//! | SendGrid `spamreport` | `complained` | `complaint` |
//! | SendGrid `unsubscribe` / `group_unsubscribe` | none | `unsubscribed` |
//! | anything else (`queued`, `sent`, `processed`, `deferred`, `open`, ...) | none (recorded) | |

pub mod sendgrid;
pub mod twilio;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::suppression::SuppressionReason;

/// A status a receipt moves a delivery to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// The provider handed it to the recipient's device or mailbox.
    Delivered,
    /// The mailbox does not exist.
    Bounced,
    /// The recipient reported it as spam.
    Complained,
    /// The carrier or receiving server would not take it.
    Undelivered,
}

impl ReceiptStatus {
    /// The stored status name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Bounced => "bounced",
            ReceiptStatus::Complained => "complained",
            ReceiptStatus::Undelivered => "undelivered",
        }
    }

    /// The statuses a delivery may be in for this receipt to move it on.
    /// `sending` too: a fast callback can overtake the worker's record of
    /// `sent`, and the receipt says more (the worker's outcome is then not
    /// recorded, as for any claim that no longer holds the row). A bounce or
    /// a complaint may follow `delivered` (a complaint always does); nothing
    /// moves a delivery back, and a receipt for a delivery Herald settled
    /// otherwise (`failed`, `dead`) is only recorded.
    pub fn moves_from(self) -> &'static [&'static str] {
        match self {
            ReceiptStatus::Delivered | ReceiptStatus::Undelivered => &["sending", "sent"],
            ReceiptStatus::Bounced | ReceiptStatus::Complained => &["sending", "sent", "delivered"],
        }
    }
}

/// Where a receipt's delivery is: its partition key and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One verified provider event.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// `twilio`, `sendgrid`.
    pub provider: &'static str,
    /// The provider's id of this event: the key that makes a replay a no-op.
    pub event_id: String,
    /// The provider's name for what happened.
    pub event: String,
    /// The delivery it is about, when the callback names one Herald made.
    pub delivery: Option<DeliveryRef>,
    /// The status it moves the delivery to; `None` to record it only.
    pub status: Option<ReceiptStatus>,
    /// What the provider said (error code, bounce reason).
    pub reason: Option<String>,
    /// Adds the delivery's address to the tenant's suppression list.
    pub suppress: Option<SuppressionReason>,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// No signature at all: 401.
    #[error("the callback carries no {0} signature")]
    Unsigned(&'static str),
    /// A signature that does not verify: 403.
    #[error("the callback's signature does not verify")]
    BadSignature,
    /// Signed, but not the shape the provider sends: 400.
    #[error("{0}")]
    Malformed(String),
}
