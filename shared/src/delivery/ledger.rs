//! Group commit for the workers' two writes per delivery, the claim and the
//! outcome. Handlers queue their request and await the answer; a writer
//! takes everything queued since its last statement and writes it in one
//! statement per delivery partition ([`deliveries::claim_many`] /
//! [`deliveries::settle_many`]), so a worker with a hundred messages in
//! flight pays one commit (and one fsync) per batch instead of one per
//! delivery.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    db::{
        deliveries::{self, Claim, ClaimRequest, SettleRequest},
        kept::Kept,
    },
    model::Channel,
};

/// Most requests written in one statement.
const BATCH: usize = 256;
/// Statements of one kind in flight at once. While one batch waits for its
/// commit to reach the disk, the next is already executing: commits overlap
/// and the database's CPU is not idle during the flush.
const WRITERS: usize = 2;
/// Statements one ledger may have in flight.
const IN_FLIGHT: u32 = 2 * WRITERS as u32;

/// Connections of a worker's ledger pool (its two ledgers'), out of its
/// `DATABASE_MAX_CONNECTIONS`: one per statement in flight, but never more
/// than half the budget.
pub fn connections(max_connections: u32) -> u32 {
    (2 * IN_FLIGHT).min(max_connections / 2).max(1)
}

/// How a writer fills a statement.
#[derive(Debug, Clone, Copy)]
pub enum Gather {
    /// Whatever is queued when a statement slot frees: the least wait, for
    /// `high`.
    Queued,
    /// Up to `rows` requests, waiting at most `wait` after the first for
    /// the rest.
    Upto { rows: usize, wait: Duration },
}

/// The answer to one request: the database's error is shared by every
/// request of the failed batch, and kept typed so the engine can tell an
/// outage from a bad message.
type Reply<T> = oneshot::Sender<Result<T, Arc<sqlx::Error>>>;

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    claims: mpsc::Sender<(ClaimRequest, Reply<Claim>)>,
    settles: mpsc::Sender<(SettleRequest, Reply<()>)>,
}

impl Ledger {
    /// Starts the two writer tasks on connections kept from a
    /// [`ledger_pool`](deliveries::ledger_pool), each filling its
    /// statements as `gather` says.
    pub fn start(kept: Kept, lease: Duration, channel: Channel, gather: Gather) -> Self {
        let (claims, claim_rx) = mpsc::channel(4 * BATCH);
        let (settles, settle_rx) = mpsc::channel(4 * BATCH);
        let claim_kept = kept.clone();
        tokio::spawn(writer(
            channel,
            "claim",
            gather,
            claim_rx,
            move |requests: Vec<ClaimRequest>| {
                let kept = claim_kept.clone();
                async move {
                    let mut conn = kept.take().await?;
                    let claims = deliveries::claim_many(&mut conn, &requests, lease).await?;
                    conn.keep();
                    Ok(claims)
                }
            },
        ));
        tokio::spawn(writer(
            channel,
            "outcome",
            gather,
            settle_rx,
            move |requests: Vec<SettleRequest>| {
                let kept = kept.clone();
                async move {
                    let n = requests.len();
                    let mut conn = kept.take().await?;
                    let recorded = deliveries::settle_many(&mut conn, &requests).await?;
                    conn.keep();
                    // An outcome is dropped when its claim no longer holds the
                    // row: retried after its first commit went through, or
                    // taken over by another worker after the lease ran out.
                    let dropped = n.saturating_sub(recorded.max(0) as usize);
                    if dropped > 0 {
                        metrics::counter!("herald_outcomes_not_recorded_total", "channel" => channel.as_str())
                            .increment(dropped as u64);
                    }
                    Ok(vec![(); n])
                }
            },
        ));
        Self { claims, settles }
    }

    /// Claims a delivery (see [`deliveries::claim_many`]).
    pub async fn claim(&self, request: ClaimRequest) -> anyhow::Result<Claim> {
        ask(&self.claims, request).await
    }

    /// Records an outcome (see [`deliveries::settle_many`]).
    pub async fn settle(&self, request: SettleRequest) -> anyhow::Result<()> {
        ask(&self.settles, request).await
    }
}

/// Queues `request` for its writer and waits for the answer.
async fn ask<R, A>(writer: &mpsc::Sender<(R, Reply<A>)>, request: R) -> anyhow::Result<A> {
    let (tx, rx) = oneshot::channel();
    writer
        .send((request, tx))
        .await
        .map_err(|_| anyhow::anyhow!("ledger stopped"))?;
    Ok(rx.await??)
}

/// A request that names one delivery row.
trait Keyed {
    fn key(&self) -> (chrono::DateTime<chrono::Utc>, uuid::Uuid);
}

impl Keyed for ClaimRequest {
    fn key(&self) -> (chrono::DateTime<chrono::Utc>, uuid::Uuid) {
        (self.created_at, self.id)
    }
}

impl Keyed for SettleRequest {
    fn key(&self) -> (chrono::DateTime<chrono::Utc>, uuid::Uuid) {
        (self.created_at, self.id)
    }
}

/// Takes whatever is queued (up to [`BATCH`]) whenever one of [`WRITERS`]
/// statement slots is free, writes it with `write`, and answers each request.
///
/// Rows are written in key order, so two batches in flight that share a
/// delivery (a duplicate message) lock it in the same order and wait for
/// each other instead of deadlocking.
async fn writer<R, A, W, F>(
    channel: Channel,
    write_kind: &'static str,
    gather: Gather,
    mut rx: mpsc::Receiver<(R, Reply<A>)>,
    write: W,
) where
    R: Keyed + Send + 'static,
    A: Send + 'static,
    W: Fn(Vec<R>) -> F,
    F: Future<Output = Result<Vec<A>, sqlx::Error>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(WRITERS));
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        if let Gather::Upto { rows, wait } = gather {
            crate::gather::more(&mut rx, &mut batch, rows, BATCH, wait, |_| false).await;
        }
        batch.sort_by_key(|(request, _): &(R, Reply<A>)| request.key());
        let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        metrics::histogram!("herald_ledger_batch_rows", "channel" => channel.as_str(), "write" => write_kind)
            .record(requests.len() as f64);
        let written = write(requests);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let written = written.await;
            metrics::histogram!("herald_ledger_write_seconds", "channel" => channel.as_str(), "write" => write_kind)
                .record(started.elapsed().as_secs_f64());
            match written {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
