//! Group commits of ingest's writes: the insert of notifications accepted
//! without an idempotency key, and the marks of published ones. Many
//! concurrent requests share one statement (and one fsync) instead of
//! waiting for a connection each.

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{self, notifications::NewNotification};

pub(super) type InsertReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Group commit for requests without an idempotency key: every notification
/// queued while the previous insert was committing goes into the next one,
/// so concurrent requests share one commit (and one fsync) instead of
/// waiting for a connection each.
pub(super) async fn insert_batches(
    pool: PgPool,
    mut rx: tokio::sync::mpsc::Receiver<(Vec<NewNotification>, InsertReply)>,
) {
    let mut queued = Vec::with_capacity(64);
    // At most 64 requests per insert: 64 single sends, or fewer batches of
    // up to 500 each.
    while rx.recv_many(&mut queued, 64).await > 0 {
        let mut rows = Vec::new();
        let mut replies = Vec::new();
        for (batch, reply) in queued.drain(..) {
            rows.extend(batch);
            replies.push(reply);
        }
        let result = db::notifications::insert_many(&pool, &rows)
            .await
            .map_err(|e| e.to_string());
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// Marks published notifications in batches: one UPDATE for every request
/// confirmed in the last few milliseconds instead of one per request. A lost
/// mark only costs a republish by the relay.
pub(super) async fn mark_published_batches(
    pool: PgPool,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
) {
    let mut ids = Vec::with_capacity(1024);
    while rx.recv_many(&mut ids, 1024).await > 0 {
        if let Err(e) = db::notifications::mark_published(&pool, &ids).await {
            tracing::warn!(error = %e, "could not mark notifications published; the relay will republish them");
        }
        ids.clear();
    }
}
