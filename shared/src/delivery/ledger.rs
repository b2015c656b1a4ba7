//! Group commit for the workers' two writes per delivery, the claim and the
//! outcome. Handlers queue their request and await the answer; one task
//! writes everything queued since its last statement in one `UPDATE ...
//! FROM UNNEST`, so a worker with 80 messages in flight pays one commit
//! (and one fsync) per batch instead of one per delivery.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::db::deliveries::{self, Claim, ClaimRequest, SettleRequest};

/// Most requests written in one statement.
const BATCH: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    claims: mpsc::Sender<(ClaimRequest, Reply<Claim>)>,
    settles: mpsc::Sender<(SettleRequest, Reply<()>)>,
}

impl Ledger {
    /// Starts the two writer tasks on `pool`.
    pub fn start(pool: PgPool, lease: Duration) -> Self {
        let (claims, claim_rx) = mpsc::channel(4 * BATCH);
        let (settles, settle_rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(claim_writer(pool.clone(), claim_rx, lease));
        tokio::spawn(settle_writer(pool, settle_rx));
        Self { claims, settles }
    }

    /// Claims a delivery (see [`deliveries::claim_many`]).
    pub async fn claim(&self, request: ClaimRequest) -> anyhow::Result<Claim> {
        let (tx, rx) = oneshot::channel();
        self.claims
            .send((request, tx))
            .await
            .map_err(|_| anyhow::anyhow!("ledger stopped"))?;
        rx.await?.map_err(anyhow::Error::msg)
    }

    /// Records an outcome (see [`deliveries::settle_many`]).
    pub async fn settle(&self, request: SettleRequest) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.settles
            .send((request, tx))
            .await
            .map_err(|_| anyhow::anyhow!("ledger stopped"))?;
        rx.await?.map_err(anyhow::Error::msg)
    }
}

async fn claim_writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<(ClaimRequest, Reply<Claim>)>,
    lease: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        match deliveries::claim_many(&pool, &requests, lease).await {
            Ok(claims) => {
                for (reply, claim) in replies.into_iter().zip(claims) {
                    let _ = reply.send(Ok(claim));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn settle_writer(pool: PgPool, mut rx: mpsc::Receiver<(SettleRequest, Reply<()>)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let result = deliveries::settle_many(&pool, &requests)
            .await
            .map_err(|e| e.to_string());
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}
