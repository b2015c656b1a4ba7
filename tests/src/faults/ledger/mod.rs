//! The ledger of what the API promised, and the final check of a fault
//! scenario against what the providers saw and what the database says.
//!
//! The product's promise (PRODUCT.md, "Outages"): a 202 means durable, and
//! nothing accepted is lost, sent twice after `sent`, or turned into a dead
//! letter by an outage. So the ledger records every id ingest answered 202
//! for (a 503 is no promise), and the check counts, per accepted id:
//! delivered (a provider fake received it), dead (a dead-letter record
//! exists), or lost (neither). Lost must be 0. Duplicates (provider
//! requests beyond one per delivery) are counted and reported: at-least-once
//! allows some, but they should be rare and explained.
//!
//! Fault windows are recorded too, so the report can say how long each
//! fault lasted and how long after its end the first provider request came
//! (deliveries flowing again).
//!
//! Split by concept: this file keeps the ledger, `sightings.rs` turns a
//! fake's journal into per-delivery [`Sighting`]s, `check.rs` compares
//! ([`check`], [`settle`]), and `report.rs` holds what comes out
//! ([`Report`]).

mod check;
mod report;
mod sightings;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use uuid::Uuid;

pub use check::{check, settle};
pub use report::{FaultReport, LostDetail, Report};
pub use sightings::{Sighting, apns_sightings, fcm_sightings};

/// One id ingest accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: Uuid,
    pub user: String,
    pub channel: String,
    pub at: Instant,
}

/// A fault, from injection to the moment it was lifted.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub name: String,
    pub started: Instant,
    pub ended: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    accepted: Vec<Accepted>,
    ids: HashSet<Uuid>,
    refused: BTreeMap<u16, u64>,
    transport_errors: u64,
    faults: Vec<FaultWindow>,
}

/// Accepted ids, refusals and fault windows of one scenario. Cheap to clone
/// (shared); the load driver and the scenario write to the same ledger.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Inner>>);

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("ledger")
    }

    /// Records a 202 for `id`. Returns false if the id was already recorded
    /// (an idempotent replay of the same request).
    pub fn accept(&self, id: Uuid, user: &str, channel: &str) -> bool {
        let mut inner = self.inner();
        if !inner.ids.insert(id) {
            return false;
        }
        inner.accepted.push(Accepted {
            id,
            user: user.to_owned(),
            channel: channel.to_owned(),
            at: Instant::now(),
        });
        true
    }

    /// Records an answer that was not a 202 (503, 429, ...).
    pub fn refused(&self, status: u16) {
        *self.inner().refused.entry(status).or_default() += 1;
    }

    /// Records a request that got no HTTP answer at all.
    pub fn transport_error(&self) {
        self.inner().transport_errors += 1;
    }

    /// Every accepted id, in order of acceptance.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.inner().accepted.clone()
    }

    /// How many ids were accepted.
    pub fn accepted_count(&self) -> usize {
        self.inner().accepted.len()
    }

    /// Marks the start of fault `name`.
    pub fn fault_started(&self, name: &str) {
        self.inner().faults.push(FaultWindow {
            name: name.to_owned(),
            started: Instant::now(),
            ended: None,
        });
    }

    /// Marks the end of the latest open fault named `name`.
    pub fn fault_ended(&self, name: &str) {
        let mut inner = self.inner();
        let window = inner
            .faults
            .iter_mut()
            .rev()
            .find(|f| f.name == name && f.ended.is_none())
            .unwrap_or_else(|| panic!("fault {name:?} ended but never started"));
        window.ended = Some(Instant::now());
    }

    /// The fault windows so far.
    pub fn faults(&self) -> Vec<FaultWindow> {
        self.inner().faults.clone()
    }
}
