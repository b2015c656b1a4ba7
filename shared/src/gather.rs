//! Filling a group commit. Ingest's group of accepted requests and the
//! workers' ledger of claims and outcomes each write everything queued in
//! one statement and one commit. Taking only what is queued at that moment
//! makes, at moderate load, a commit for every request or two: then the
//! database's cost per notification is mostly that of its statements,
//! commits and wake-ups, not of its rows. Waiting a few milliseconds for
//! company makes the commits fewer and fuller (docs/benchmarks.md, "Fewer,
//! fuller commits").

use std::time::Duration;

use tokio::sync::mpsc;

/// Adds to `batch` what arrives on `rx` within `wait` from now, until it
/// holds `rows` items (never more than `cap`). Returns at once when `now`
/// says the batch must not wait (it holds something urgent), and when the
/// channel is closed.
pub async fn more<T>(
    rx: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    rows: usize,
    cap: usize,
    wait: Duration,
    now: impl Fn(&[T]) -> bool,
) {
    let until = tokio::time::Instant::now() + wait;
    while batch.len() < rows.min(cap) && !now(batch) {
        let room = cap - batch.len();
        match tokio::time::timeout_at(until, rx.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(5);

    #[tokio::test(start_paused = true)]
    async fn waits_at_most_its_time_for_the_rows() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut batch = vec![0];
        tokio::spawn(async move {
            for i in 1..=3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(i).await.unwrap();
            }
            // Past the wait: the next batch's.
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(4).await.unwrap();
        });
        let started = tokio::time::Instant::now();
        more(&mut rx, &mut batch, 32, 256, WAIT, |_| false).await;
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(started.elapsed(), WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once() {
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..40 {
            tx.send(i).await.unwrap();
        }
        let mut batch = Vec::new();
        let started = tokio::time::Instant::now();
        more(&mut rx, &mut batch, 32, 36, WAIT, |_| false).await;
        assert_eq!(batch.len(), 36, "whatever is queued, up to the cap");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_item_goes_at_once() {
        let (tx, mut rx) = mpsc::channel(64);
        tx.send("normal").await.unwrap();
        tx.send("high").await.unwrap();
        let mut batch = Vec::new();
        let started = tokio::time::Instant::now();
        more(&mut rx, &mut batch, 32, 256, WAIT, |b| b.contains(&"high")).await;
        assert_eq!(batch, ["normal", "high"]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_wait() {
        let (tx, mut rx) = mpsc::channel(64);
        tx.send(1).await.unwrap();
        drop(tx);
        let mut batch = Vec::new();
        let started = tokio::time::Instant::now();
        more(&mut rx, &mut batch, 32, 256, WAIT, |_| false).await;
        assert_eq!(batch, [1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
