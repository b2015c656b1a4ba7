//! Suppressions: a tenant's addresses that must not be tried again, and why.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Channel,
    user::{EmailAddress, PhoneE164},
};

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// The mailbox does not exist (a permanent bounce).
    HardBounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// The recipient opted out at the carrier (SMS `STOP`, Twilio 21610).
    Unsubscribed,
    /// Added by hand (API, `heraldctl`, admin page).
    Manual,
}

impl SuppressionReason {
    /// Every reason, in the order the docs list them.
    pub const ALL: [SuppressionReason; 4] = [
        SuppressionReason::HardBounce,
        SuppressionReason::Complaint,
        SuppressionReason::Unsubscribed,
        SuppressionReason::Manual,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribed => "unsubscribed",
            SuppressionReason::Manual => "manual",
        }
    }
}

impl fmt::Display for SuppressionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SuppressionReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown reason `{s}`; expected hard_bounce, complaint, unsubscribed or manual"
                )
            })
    }
}

/// The reason a delivery to a suppressed address is recorded with.
pub const ADDRESS_SUPPRESSED: &str = "address_suppressed";

/// A channel that has suppressions: email and SMS (an unregistered push
/// token is deactivated on its device instead).
pub fn suppressible(channel: Channel) -> Result<Channel, String> {
    match channel {
        Channel::Email | Channel::Sms => Ok(channel),
        Channel::Push => Err(
            "push has no suppression list: unregistered device tokens are deactivated; \
             expected email or sms"
                .into(),
        ),
    }
}

/// An address as the suppression list keys it: an email trimmed and
/// lower-cased (mailbox names are case-insensitive in practice, and the
/// router compares the recipient's address lower-cased), a phone in strict
/// E.164.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SuppressedAddress {
    channel: Channel,
    address: String,
}

impl SuppressedAddress {
    /// Parses `raw` as an address of `channel`.
    pub fn parse(channel: Channel, raw: &str) -> Result<Self, String> {
        let channel = suppressible(channel)?;
        let address = match channel {
            Channel::Email => EmailAddress::parse(raw.trim().to_lowercase())?
                .as_str()
                .to_owned(),
            _ => PhoneE164::parse(raw.trim())?.as_str().to_owned(),
        };
        Ok(Self { channel, address })
    }

    /// The channel.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_per_channel() {
        let e = SuppressedAddress::parse(Channel::Email, "  Ada@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "ada@example.com");
        let p = SuppressedAddress::parse(Channel::Sms, " +14155550100").unwrap();
        assert_eq!(p.as_str(), "+14155550100");
        assert!(SuppressedAddress::parse(Channel::Sms, "0155").is_err());
        assert!(SuppressedAddress::parse(Channel::Email, "nope").is_err());
        assert!(SuppressedAddress::parse(Channel::Push, "tok").is_err());
    }

    #[test]
    fn reasons_round_trip() {
        for r in SuppressionReason::ALL {
            assert_eq!(r.as_str().parse::<SuppressionReason>(), Ok(r));
        }
        assert!("bounced".parse::<SuppressionReason>().is_err());
    }
}
