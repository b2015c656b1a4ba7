//! Group commits of ingest's writes: the insert of accepted notifications
//! (with their idempotency keys), and the marks of published ones. Many
//! concurrent requests share one statement (and one fsync) instead of
//! waiting for a connection each.

use std::{collections::HashMap, sync::Arc};

use uuid::Uuid;

use super::Commitment;
use crate::{
    db::{
        self,
        idempotency::{self, Existing, KeyClaim},
        kept::Kept,
        notifications::NewNotification,
    },
    model::notification::NotificationRequest,
    routing::inline::{Inline, Offer, Routed},
    telemetry::traces::TraceContext,
};

/// One request's share of a group commit: its notifications and, when it
/// carries one, the idempotency key it claims and its commitment (marked
/// by the group just before its commit; a request without a key marks its
/// own before it queues).
pub(super) struct Share {
    pub rows: Vec<NewNotification>,
    /// For each row, its request when it may be routed inline.
    pub inline: Vec<Option<Arc<NotificationRequest>>>,
    /// The trace context the request's delivery messages carry.
    pub trace: TraceContext,
    pub key: Option<(KeyClaim, Commitment)>,
}

impl Share {
    /// Whether it holds a `high` notification.
    fn high(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.priority == crate::model::Lane::High.as_str())
    }
}

/// How a share's key claim went.
pub(super) enum Claimed {
    /// No key, or the key was free: the rows are committed. For each row,
    /// what inline routing recorded (`None`: the router routes it).
    Fresh(Vec<Option<Routed>>),
    /// The key was used within 24 h: nothing of this share was written.
    Taken(Existing),
    /// The key is locked by a transaction that does not finish (another
    /// request with the same key, held up): the request makes itself
    /// durable on its own, with its share handed back, so the group does
    /// not wait with it.
    Alone(Share),
}

/// How long the group waits for the lock of a claimed key before it hands
/// its keyed requests back to be made durable one by one.
const KEY_LOCK_TIMEOUT: &str = "1s";

pub(super) type InsertReply = tokio::sync::oneshot::Sender<Result<Claimed, String>>;

/// Most shares per group commit: 64 single sends, or fewer batches of up to
/// 500 each.
const GROUP: usize = 64;

/// Group commits in flight at once. Under load, while one group waits for
/// its commit to reach the disk, the next (full, or holding a `high`
/// notification) is already executing, so requests do not queue behind a
/// flush. Two groups never wait for each other's keys in a cycle: each
/// claims its keys in one order ([`write`]).
const GROUPS_IN_FLIGHT: usize = 2;

/// Longest a group waits for the one in flight before it starts beside
/// it anyway, though not full: a commit that slow means the database is in
/// trouble, and the next group should not wait on it.
const BESIDE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A share with the channel its answer goes to.
type Queued = (Share, InsertReply);

/// Group commit of accepted notifications: every request queued while the
/// previous groups were committing goes into the next one, so concurrent
/// requests share one transaction (and one fsync) instead of waiting for a
/// connection each. Requests with an idempotency key take part too: their
/// keys are claimed in the same transaction, with one statement for all, and
/// a request whose key was already used writes nothing.
pub(super) async fn insert_batches(
    kept: Kept,
    inline: Option<Inline>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT));
    // Shares a group hands back to be written again, in a later group.
    let (again, mut again_rx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
    let mut queued = Vec::with_capacity(GROUP);
    // Shares postponed to the next group: a key claimed twice in one group
    // (a client's retry racing its first try) would make the claim
    // statement touch one row twice, which PostgreSQL refuses.
    let mut later: Vec<Queued> = Vec::new();
    let mut open = true;
    // Resolves once every other group in flight is done (while this loop
    // holds a slot of its own).
    let others_done = || slots.acquire_many(GROUPS_IN_FLIGHT as u32 - 1);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(share) = again_rx.try_recv() {
            later.push(share);
        }
        queued.append(&mut later);
        if queued.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut queued, GROUP), if open => open = n > 0,
                Some(share) = again_rx.recv() => queued.push(share),
                // Closed, and every group done: nothing can come back.
                _ = others_done(), if !open => {
                    match again_rx.try_recv() {
                        Ok(share) => queued.push(share),
                        Err(_) => return,
                    }
                }
            }
            if queued.is_empty() {
                continue;
            }
        }
        let high = |q: &[Queued]| q.iter().any(|(share, _)| share.high());
        if open && slots.available_permits() + 1 < GROUPS_IN_FLIGHT {
            // Another group is in flight: this one starts beside it only
            // when it is full or holds a `high` notification; otherwise it
            // waits for that group, as many requests as arrive meanwhile
            // sharing its commit (at moderate load, commits as few as with
            // one group at a time).
            let full = crate::gather::more(
                &mut rx,
                &mut queued,
                GATHER_SHARES,
                GROUP,
                BESIDE_WAIT,
                high,
            );
            tokio::select! {
                _ = others_done() => {}
                _ = full => {}
            }
        }
        // A one-time code does not wait for company.
        if open {
            crate::gather::more(
                &mut rx,
                &mut queued,
                GATHER_SHARES,
                GROUP,
                GATHER_WAIT,
                high,
            )
            .await;
        }
        let mut keys = std::collections::HashSet::new();
        let mut group = Vec::with_capacity(queued.len());
        for (share, reply) in queued.drain(..) {
            let fresh = match &share.key {
                Some((k, _)) => keys.insert((k.tenant.clone(), k.key.clone())),
                None => true,
            };
            if fresh {
                group.push((share, reply));
            } else {
                later.push((share, reply));
            }
        }
        // A request that stopped waiting (its API timeout fired before its
        // commit began) writes nothing.
        group.retain(|(share, reply)| share.key.is_none() || !reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let (kept, inline, again) = (kept.clone(), inline.clone(), again.clone());
        tokio::spawn(async move {
            commit_group(&kept, inline.as_ref(), group, &again).await;
            drop(slot);
        });
    }
}

/// Commits one group and answers its shares, or hands back to be written
/// again those it could not commit for a reason of another share's.
async fn commit_group(
    kept: &Kept,
    inline: Option<&Inline>,
    group: Vec<Queued>,
    again: &tokio::sync::mpsc::UnboundedSender<Queued>,
) {
    let (shares, replies): (Vec<Share>, Vec<InsertReply>) = group.into_iter().unzip();
    match commit(kept, inline, &shares, &replies).await {
        Ok(None) => {
            // A keyed request was abandoned while the group ran: it
            // must keep nothing, so the group is written again
            // without it.
            for (share, reply) in shares.into_iter().zip(replies) {
                if share.key.is_none() || !reply.is_closed() {
                    let _ = again.send((share, reply));
                }
            }
        }
        Ok(Some(claims)) => {
            for (reply, claimed) in replies.into_iter().zip(claims) {
                let _ = reply.send(Ok(claimed));
            }
        }
        Err(e) if lock_timeout(&e) => {
            // Keyed requests go alone; the rest is written again at once.
            for (share, reply) in shares.into_iter().zip(replies) {
                if share.key.is_some() {
                    let _ = reply.send(Ok(Claimed::Alone(share)));
                } else {
                    let _ = again.send((share, reply));
                }
            }
        }
        Err(e) => {
            let e = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Shares a group waits for (a group commits at once when it holds a
/// `high` notification): past this many, it commits at once.
const GATHER_SHARES: usize = 32;
/// Longest a group waits after its first share for [`GATHER_SHARES`]:
/// under load a commit, a statement per table and the broker's confirms
/// are shared by a few dozen requests instead of a handful, for at most
/// this much more time to the 202 (docs/benchmarks.md, "Fewer, fuller
/// commits").
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

fn lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Commits one group: claims its keys (waiting at most
/// [`KEY_LOCK_TIMEOUT`] for a key's lock), inserts the rows, marks the keyed
/// requests' commitments, commits. One answer per share, in order; `None`
/// (and nothing written) when a keyed request stopped waiting meanwhile.
async fn commit(
    kept: &Kept,
    inline: Option<&Inline>,
    shares: &[Share],
    replies: &[InsertReply],
) -> Result<Option<Vec<Claimed>>, sqlx::Error> {
    let mut conn = kept.take().await?;
    let mut tx = if shares.iter().any(|s| s.key.is_some()) {
        // One round trip: the setting travels with the `BEGIN` (SET takes
        // no bind parameters, so the constant is spliced in).
        sqlx::Connection::begin_with(
            &mut *conn,
            sqlx::AssertSqlSafe(format!(
                "BEGIN; SET LOCAL lock_timeout = '{KEY_LOCK_TIMEOUT}'"
            )),
        )
        .await?
    } else {
        sqlx::Connection::begin(&mut *conn).await?
    };
    let answers = write(&mut tx, inline, shares).await?;
    let keyed = shares.iter().zip(replies).filter(|(s, _)| s.key.is_some());
    if keyed.clone().any(|(_, reply)| reply.is_closed()) {
        tx.rollback().await?;
        conn.keep();
        return Ok(None);
    }
    for (share, _) in keyed {
        if let Some((_, commitment)) = &share.key {
            commitment.begin();
        }
    }
    tx.commit().await?;
    conn.keep();
    Ok(Some(answers))
}

/// Claims the keys of `shares` and inserts the rows of every share without
/// a key or with a fresh one, in the caller's transaction, with the
/// deliveries of those routed inline.
pub(super) async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    inline: Option<&Inline>,
    shares: &[Share],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut claims: Vec<KeyClaim> = shares
        .iter()
        .filter_map(|s| s.key.as_ref().map(|k| k.0.clone()))
        .collect();
    // In one order, so two groups in flight that share a key (a client's
    // retry racing its first try) lock their keys in the same order and
    // wait for each other instead of deadlocking.
    claims.sort_by(|a, b| (&a.tenant, &a.key).cmp(&(&b.tenant, &b.key)));
    let mut taken: HashMap<(String, String), Existing> = HashMap::new();
    if !claims.is_empty() {
        let fresh: std::collections::HashSet<(String, String)> =
            idempotency::claim_many(tx, &claims)
                .await?
                .into_iter()
                .collect();
        let others: Vec<(&str, &str)> = claims
            .iter()
            .filter(|c| !fresh.contains(&(c.tenant.clone(), c.key.clone())))
            .map(|c| (c.tenant.as_str(), c.key.as_str()))
            .collect();
        if !others.is_empty() {
            for (tenant, key, existing) in idempotency::existing_many(tx, &others).await? {
                taken.insert((tenant, key), existing);
            }
        }
    }
    let mut rows: Vec<&NewNotification> = Vec::new();
    let mut answers = Vec::with_capacity(shares.len());
    for share in shares {
        let pair = share
            .key
            .as_ref()
            .map(|(k, _)| (k.tenant.clone(), k.key.clone()));
        match pair.and_then(|p| taken.remove(&p)) {
            Some(existing) => answers.push(Claimed::Taken(existing)),
            None => {
                rows.extend(share.rows.iter());
                answers.push(Claimed::Fresh(Vec::new()));
            }
        }
    }
    if !rows.is_empty() {
        db::notifications::insert_many(&mut **tx, &rows).await?;
    }
    let mut offers = Vec::new();
    let mut owners = Vec::new();
    for (at, (share, answer)) in shares.iter().zip(&mut answers).enumerate() {
        if let Claimed::Fresh(routed) = answer {
            routed.resize_with(share.rows.len(), || None);
            for (row_at, (row, req)) in share.rows.iter().zip(&share.inline).enumerate() {
                if let Some(req) = req {
                    offers.push(Offer {
                        row,
                        req,
                        trace: &share.trace,
                    });
                    owners.push((at, row_at));
                }
            }
        }
    }
    if let Some(inline) = inline.filter(|_| !offers.is_empty()) {
        let recorded = inline.record(tx, &offers).await?;
        for ((at, row_at), routed) in owners.into_iter().zip(recorded) {
            if let Claimed::Fresh(rows) = &mut answers[at] {
                rows[row_at] = routed;
            }
        }
    }
    Ok(answers)
}

/// Something to note once a request's messages are confirmed.
pub(super) enum Mark {
    /// This notification's routing message is on the broker.
    Published(Uuid),
    /// This notification was routed inline and its delivery messages are
    /// on the broker.
    Routed(Uuid),
    /// This idempotency key's request is durable: a replay may be answered.
    Completed { tenant: String, key: String },
}

/// How long a published mark waits: about the time the router needs.
const MARK_DELAY: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long a routed mark or a completed key waits for company: at a few
/// thousand sends a second, the marks of a few dozen group commits share
/// one statement instead of one each. Nothing waits for a routed mark (the
/// relay's grace is seconds). Only a client's retry with the same key
/// waits for a completed one, and it waits up to a second
/// (`IN_PROGRESS_WAITS` pauses of 50 ms) before it is told "in progress".
const SOON_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Past this many routed marks and completed keys held, they are written
/// at once.
const SOON_BATCH: usize = 512;

/// Notes published and inline-routed notifications and completed keys in
/// batches: one statement for everything confirmed in the last few
/// milliseconds, not a commit per request. Committed asynchronously: a lost
/// mark only costs a republish by the relay, or a replay answered "in
/// progress" until the relay's grace has passed.
pub(super) async fn mark_published_batches(
    kept: Kept,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Mark>,
) {
    use std::time::Instant;
    let mut marks = Vec::with_capacity(1024);
    // Published marks wait [`MARK_DELAY`]: most notifications are routed
    // meanwhile, and a routed one needs no mark (the update then writes
    // nothing for it). Routed marks and completed keys wait [`SOON_WAIT`],
    // and published marks due by then go with them.
    let mut held: std::collections::VecDeque<(Instant, Uuid)> = Default::default();
    let mut routed: Vec<Uuid> = Vec::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut soon_since: Option<Instant> = None;
    let mut open = true;
    while open || !held.is_empty() || !routed.is_empty() || !keys.is_empty() {
        let due_at = [
            held.front().map(|(at, _)| *at + MARK_DELAY),
            soon_since.map(|at| at + SOON_WAIT),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            n = rx.recv_many(&mut marks, 1024), if open => open = n > 0,
            _ = tokio::time::sleep_until(due_at.unwrap_or_else(Instant::now).into()),
                if due_at.is_some() => {}
        }
        let now = Instant::now();
        for mark in marks.drain(..) {
            match mark {
                Mark::Published(id) => held.push_back((now, id)),
                Mark::Routed(id) => {
                    soon_since.get_or_insert(now);
                    routed.push(id);
                }
                Mark::Completed { tenant, key } => {
                    soon_since.get_or_insert(now);
                    keys.push((tenant, key));
                }
            }
        }
        let soon_due = !open
            || routed.len() + keys.len() >= SOON_BATCH
            || soon_since.is_some_and(|at| at + SOON_WAIT <= now);
        let mut ids = Vec::new();
        while held
            .front()
            .is_some_and(|(at, _)| !open || *at + MARK_DELAY <= now)
        {
            ids.extend(held.pop_front().map(|(_, id)| id));
        }
        let (routed_now, keys_now) = if soon_due {
            soon_since = None;
            (std::mem::take(&mut routed), std::mem::take(&mut keys))
        } else {
            (Vec::new(), Vec::new())
        };
        if ids.is_empty() && keys_now.is_empty() && routed_now.is_empty() {
            continue;
        }
        let marked = match kept.take().await {
            Ok(mut conn) => {
                db::notifications::mark_published(&mut conn, &ids, &routed_now, &keys_now)
                    .await
                    .map(|()| conn.keep())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = marked {
            tracing::warn!(error = %e, "could not mark notifications published; the relay will republish them");
        }
    }
}
