use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A delivery channel. Each has its own worker binary and queues.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Push,
    Email,
    Sms,
}

impl Channel {
    /// Every channel, in a stable order.
    pub const ALL: [Channel; 3] = [Channel::Push, Channel::Email, Channel::Sms];

    /// Lower-case name used in queues, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "push" => Ok(Channel::Push),
            "email" => Ok(Channel::Email),
            "sms" => Ok(Channel::Sms),
            other => Err(format!(
                "unknown channel `{other}`; expected push, email or sms"
            )),
        }
    }
}

/// A priority lane. Lanes have separate queues and consumers so that `bulk`
/// never delays `high`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Default,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    High,
    #[default]
    Normal,
    Bulk,
}

impl Lane {
    /// Every lane, most urgent first.
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Bulk];

    /// Lower-case name used in queues, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Lane::High),
            "normal" => Ok(Lane::Normal),
            "bulk" => Ok(Lane::Bulk),
            other => Err(format!(
                "unknown priority `{other}`; expected high, normal or bulk"
            )),
        }
    }
}
