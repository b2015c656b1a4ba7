//! Herald's benchmarks, rerunnable on any machine with the services up:
//!
//! ```text
//! cargo run --release -p herald-tests --bin bench -- ingest [--requests N] [--concurrency C]
//! cargo run --release -p herald-tests --bin bench -- router [--subscribers N]
//! RUST_LOG=warn cargo run --release -p herald-tests --bin bench -- delivery \
//!     [--deliveries N] [--rounds R] [--only push,email,sms,log]
//! cargo build --release --bins && cargo run --release -p herald-tests --bin bench -- e2e \
//!     [--notifications N] [--concurrency C] [--rounds R]
//! ```
//!
//! Each benchmark measures a baseline on the same broker in the same run, so
//! the ratio means something on a shared, noisy machine.

/// The allocator of the binaries under test. The load generator and the
/// provider fake share the machine with them: with glibc's malloc a fifth
/// of this process's CPU went to allocation, taken from the pipeline it
/// measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use herald::{
    broker::{Headers, Outgoing, Publisher},
    db::keys::Scope,
    model::Lane,
};
use herald_tests::TestEnv;

mod delivery;
mod e2e;
mod router;
use serde_json::json;

#[derive(clap::Parser)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// Accepted notifications/s (single and batch) vs raw publish-with-confirm.
    Ingest {
        /// Notifications per measurement.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests (or publishes) in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Notifications per batch request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Deliveries/s per channel against fast fake providers, with the raw
    /// consume-and-ack rate of the same queue as the ceiling.
    Delivery {
        /// Deliveries per channel.
        #[arg(long, default_value_t = 5_000)]
        deliveries: usize,
        /// Only these rows: push, email, sms, log (the engine alone). All by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Rounds; each row's median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The whole pipeline as users run it: one-recipient sends over HTTP to
    /// the real binaries, delivered to an FCM fake, against the broker's
    /// single-hop ceiling (docs/benchmarks.md).
    E2e(e2e::Args),
    /// Routed deliveries/s, a topic of N subscribers (time, router peak RSS),
    /// and `high` latency while that topic drains.
    Router {
        /// Subscribers of the benchmark topic.
        #[arg(long, default_value_t = 1_000_000)]
        subscribers: usize,
        /// User-list sends (of 100 users each) for the deliveries/s figure.
        #[arg(long, default_value_t = 200)]
        sends: usize,
    },
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    match args.bench {
        Bench::Ingest {
            requests,
            concurrency,
            batch,
        } => ingest(requests, concurrency, batch).await,
        Bench::Router { subscribers, sends } => router::run(subscribers, sends).await,
        Bench::E2e(args) => e2e::run(args).await,
        Bench::Delivery {
            deliveries,
            only,
            rounds,
        } => delivery::run(deliveries, &only, rounds).await,
    }
}

async fn ingest(n: usize, concurrency: usize, batch: usize) -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let key = env.key("bench", &[Scope::Send]).await;
    let app = env.spawn_ingest().await;
    let names = env.names();
    let route_queue = names.route_queue(Lane::Normal);

    // Baseline: the same small routing message, published with confirm and
    // mandatory to the same quorum queue, `concurrency` in flight.
    let publisher = Publisher::new(broker.clone());
    let body = serde_json::to_vec(
        &json!({"notification_id": uuid::Uuid::now_v7(), "tenant_id": "bench"}),
    )?;
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency, |_| {
            let msg = Outgoing::json(
                names.notifications_exchange(),
                "normal",
                body.clone(),
                Headers::default(),
            );
            let publisher = publisher.clone();
            async move { publisher.publish(&msg).await.expect("publish") }
        })
        .await;
    let raw = rate(n, started.elapsed());
    purge(&env, &route_queue).await;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let notification = json!({
        "category": "bench",
        "to": {"users": ["u-1", "u-2"]},
        "content": {"email": {"subject": "Hello {{name}}", "text": "Order {{order_id}} shipped"}},
        "data": {"order_id": "A-1"}
    });
    let url = app.url("/v1/notifications");
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency, |_| {
            let req = client
                .post(&url)
                .bearer_auth(&key)
                .json(&notification)
                .send();
            async move {
                let resp = req.await.expect("request");
                assert_eq!(
                    resp.status(),
                    202,
                    "{}",
                    resp.text().await.unwrap_or_default()
                );
            }
        })
        .await;
    let single = rate(n, started.elapsed());
    purge(&env, &route_queue).await;

    let url = app.url("/v1/notifications/batch");
    let body = json!({"notifications": vec![notification.clone(); batch]});
    let batches = n.div_ceil(batch);
    let started = Instant::now();
    stream::iter(0..batches)
        .for_each_concurrent(concurrency.div_ceil(8).max(2), |_| {
            let req = client.post(&url).bearer_auth(&key).json(&body).send();
            async move {
                let resp = req.await.expect("request");
                assert_eq!(resp.status(), 200);
            }
        })
        .await;
    let batched = rate(batches * batch, started.elapsed());
    purge(&env, &route_queue).await;

    println!(
        "ingest benchmark: {n} notifications per row, {concurrency} in flight, batches of {batch}"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "measurement", "per second", "vs raw"
    );
    println!(
        "{:<44} {:>12.0} {:>10}",
        "raw publish-with-confirm (baseline)", raw, "1.00"
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "POST /v1/notifications (accepted)",
        single,
        single / raw
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "POST /v1/notifications/batch (accepted)",
        batched,
        batched / raw
    );
    app.stop().await;
    broker.close().await;
    Ok(())
}

async fn purge(env: &TestEnv, queue: &str) {
    let broker = env.broker().await;
    let ch = broker.channel().await.expect("channel");
    ch.queue_purge(queue.into(), Default::default())
        .await
        .expect("purge");
    broker.close().await;
}
