//! Acks coalesced per consumer channel. A quorum queue turns every ack into
//! a log entry of its own; one ack with `multiple` settles every message up
//! to its tag at the cost of one, and moves the broker's ceiling from about
//! 30k to about 80k messages/s on this project's benchmark machine. Each
//! consumer channel gets a [`Settler`]: handlers report their message
//! settled, and a task sends one `multiple` ack for the longest settled
//! prefix of delivery tags every few milliseconds.
//!
//! A message settled out of order (a later one finished while an earlier
//! one still waits on its provider) is acked on its own after a short hold,
//! so a slow message never keeps the prefetch window from refilling. A
//! requeue (nack) is sent at once, before the message counts as settled, so
//! a `multiple` ack can never cover a message that was meant to go back.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use lapin::{
    Acker,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::sync::mpsc;

/// How often settled messages are acked.
const FLUSH: Duration = Duration::from_millis(5);
/// Settled messages that make a flush happen at once.
const FLUSH_AT: usize = 64;
/// Longest an out-of-order settled message waits for the ones before it.
const HOLD: Duration = Duration::from_millis(50);
/// Longest a nack may take (see [`super::consumer::SETTLE_TIMEOUT`]).
const NACK_TIMEOUT: Duration = Duration::from_secs(5);

enum Event {
    /// A message was handed to a handler.
    Delivered(u64),
    /// A handler is done with it: ack it.
    Ack(u64, Acker),
    /// A handler gave it back (already nacked): it needs no ack.
    Returned(u64),
}

/// A consumer channel's way to settle its messages. Cheap to clone.
#[derive(Clone)]
pub struct Settler {
    events: mpsc::UnboundedSender<Event>,
}

impl Settler {
    /// Starts the channel's coalescing task; it ends, acking what is left,
    /// once every `Settler` of the channel is dropped.
    pub fn start() -> (Self, tokio::task::JoinHandle<()>) {
        let (events, rx) = mpsc::unbounded_channel();
        (Self { events }, tokio::spawn(coalesce(rx)))
    }

    /// Records that `delivery` was handed out (before its handler runs).
    pub(super) fn delivered(&self, delivery: &Delivery) {
        let _ = self.events.send(Event::Delivered(delivery.delivery_tag));
    }

    /// Acks `delivery` (soon, with others).
    pub fn ack(&self, delivery: &Delivery) {
        let _ = self
            .events
            .send(Event::Ack(delivery.delivery_tag, delivery.acker.clone()));
    }

    /// Puts `delivery` back on its queue at once.
    pub async fn requeue(&self, delivery: &Delivery) {
        self.requeue_tag(delivery.delivery_tag, &delivery.acker)
            .await;
    }

    /// Puts a message that failed on its own back on its queue after
    /// `pause`, so a bad message does not spin; the queue's delivery limit
    /// ends real poison. (An outage is held through instead: see
    /// [`crate::outage`].)
    pub async fn requeue_after(&self, delivery: &Delivery, pause: Duration) {
        tokio::time::sleep(pause).await;
        self.requeue(delivery).await;
    }

    pub(super) async fn requeue_tag(&self, tag: u64, acker: &Acker) {
        let nack = acker.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        });
        let _ = tokio::time::timeout(NACK_TIMEOUT, nack).await;
        let _ = self.events.send(Event::Returned(tag));
    }
}

async fn coalesce(mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut outstanding = BTreeSet::new();
    let mut settled: BTreeMap<u64, (Acker, Instant)> = BTreeMap::new();
    let mut open = true;
    let mut flushed = Instant::now();
    while open {
        // Nothing to ack: sleep until something happens.
        let next = if settled.is_empty() {
            Instant::now() + Duration::from_secs(3600)
        } else {
            (flushed + FLUSH).max(Instant::now())
        };
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => apply(event, &mut outstanding, &mut settled),
                None => open = false,
            },
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        while let Ok(event) = rx.try_recv() {
            apply(event, &mut outstanding, &mut settled);
        }
        let due = flushed.elapsed() >= FLUSH || settled.len() >= FLUSH_AT;
        if !open || (due && !settled.is_empty()) {
            flush(&outstanding, &mut settled, !open).await;
            flushed = Instant::now();
        }
    }
}

fn apply(
    event: Event,
    outstanding: &mut BTreeSet<u64>,
    settled: &mut BTreeMap<u64, (Acker, Instant)>,
) {
    match event {
        Event::Delivered(tag) => {
            outstanding.insert(tag);
        }
        Event::Ack(tag, acker) => {
            outstanding.remove(&tag);
            settled.insert(tag, (acker, Instant::now()));
        }
        Event::Returned(tag) => {
            outstanding.remove(&tag);
        }
    }
}

/// Acks every settled message below the first outstanding one with one
/// `multiple` ack, then those past it that waited longer than [`HOLD`] (or
/// all of them, at the end) one by one.
async fn flush(
    outstanding: &BTreeSet<u64>,
    settled: &mut BTreeMap<u64, (Acker, Instant)>,
    all: bool,
) {
    let head = outstanding.first().copied().unwrap_or(u64::MAX);
    let blocked = settled.split_off(&head);
    if let Some((_, (acker, _))) = settled.pop_last() {
        let _ = acker.ack(BasicAckOptions { multiple: true }).await;
    }
    *settled = blocked;
    let due: Vec<u64> = settled
        .iter()
        .filter(|(_, (_, at))| all || at.elapsed() >= HOLD)
        .map(|(tag, _)| *tag)
        .collect();
    for tag in due {
        if let Some((acker, _)) = settled.remove(&tag) {
            let _ = acker.ack(BasicAckOptions::default()).await;
        }
    }
}
