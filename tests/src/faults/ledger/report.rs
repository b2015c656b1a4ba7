//! The outcome of a scenario: counts, fault timings, what was lost, what
//! the broker still holds; one line for a log, JSON for a file.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;
use uuid::Uuid;

/// A fault's duration and the time to the first provider request after it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub duration_ms: Option<u64>,
    /// From the fault's end to the first provider request after it;
    /// `None` if none came. Near 0 when deliveries never stopped (work
    /// already routed kept flowing through a router outage).
    pub recovery_ms: Option<u64>,
    /// The longest silence between two provider requests that overlaps the
    /// fault: how long deliveries actually stalled.
    pub stall_ms: Option<u64>,
}

/// What became of one lost id.
#[derive(Debug, Clone, Serialize)]
pub struct LostDetail {
    pub id: Uuid,
    pub user: String,
    /// `None`: no `notifications` row at all (a 202 that was not durable).
    pub notification_status: Option<String>,
    /// Statuses of its `deliveries` rows (empty: never routed).
    pub delivery_statuses: Vec<String>,
}

/// The outcome of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub accepted: usize,
    pub delivered: usize,
    pub dead: usize,
    /// accepted - delivered - dead (ids in both count once, as delivered).
    pub lost: usize,
    pub duplicates: usize,
    pub provider_requests: usize,
    /// Provider requests for notifications the ledger never accepted.
    pub unknown_requests: usize,
    /// Answers other than 202 the load driver got, by status.
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub faults: Vec<FaultReport>,
    /// Statuses of the accepted notifications' `deliveries` rows.
    pub delivery_statuses: BTreeMap<String, u64>,
    /// Up to 20 lost ids with what the database knows of them.
    pub lost_sample: Vec<LostDetail>,
    /// `(queue, ready, unacked)` the broker held at the end, when added
    /// with [`Report::with_queues`]; only queues holding something.
    pub queues: Vec<(String, u64, u64)>,
    /// Messages in those queues, ready plus unacked.
    pub broker_held: u64,
    /// Times a scenario measured itself (e.g. from a node's kill until
    /// deliveries flow again), in ms, when added with
    /// [`Report::with_timings`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub timings_ms: BTreeMap<String, u64>,
}

impl Report {
    /// One line: the numbers a reader checks first.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| {
                let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v}ms"));
                format!(
                    "{}(lasted {}, stalled {}, recovered {} after)",
                    f.name,
                    ms(f.duration_ms),
                    ms(f.stall_ms),
                    ms(f.recovery_ms)
                )
            })
            .collect();
        format!(
            "{}: accepted={} delivered={} dead={} lost={} duplicates={} requests={} unknown={} refused={:?} transport_errors={} broker_held={} faults=[{}]",
            self.scenario,
            self.accepted,
            self.delivered,
            self.dead,
            self.lost,
            self.duplicates,
            self.provider_requests,
            self.unknown_requests,
            self.refused,
            self.transport_errors,
            self.broker_held,
            faults.join(", ")
        )
    }

    /// Deliveries of accepted notifications still `pending` or `sending`.
    pub fn under_way(&self) -> u64 {
        ["pending", "sending"]
            .iter()
            .filter_map(|s| self.delivery_statuses.get(*s))
            .sum()
    }

    /// The whole report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("report serialises")
    }

    /// Adds times the scenario measured.
    pub fn with_timings(mut self, timings: &[(&str, std::time::Duration)]) -> Self {
        for (name, d) in timings {
            self.timings_ms
                .insert((*name).to_owned(), d.as_millis() as u64);
        }
        self
    }

    /// Adds the broker's queue depths at the end of the scenario.
    pub fn with_queues(mut self, queues: Vec<(String, u64, u64)>) -> Self {
        self.queues = queues.into_iter().filter(|q| q.1 + q.2 > 0).collect();
        self.broker_held = self.queues.iter().map(|q| q.1 + q.2).sum();
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}
