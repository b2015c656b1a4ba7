//! A tenant's delivery policy.

use serde::{Deserialize, Serialize};

/// A per-user frequency cap on one category and channel: at most `max`
/// deliveries per `per_seconds` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct FrequencyCap {
    pub max: i64,
    pub per_seconds: u64,
}
