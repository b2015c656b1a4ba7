//! Lane queues split into shards (`QUEUE_SHARDS`): one user's deliveries
//! stay in one shard and in order, the users spread over every shard, and a
//! worker consumes every shard, retries included, losing and copying
//! nothing.

use std::{collections::HashMap, time::Duration};

use herald::model::{Channel, Lane, message::DeliveryMessage};
use herald_tests::{
    TestEnv,
    fakes::fcm::FcmFake,
    pipeline::{Pipeline, fcm},
};
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};

const SHARDS: u16 = 3;
const USERS: usize = 24;

fn push(users: &[String], order: usize) -> Value {
    json!({"category": "orders", "to": {"users": users},
           "content": {"push": {"title": "Shipped", "body": "Order {{order}}"}},
           "data": {"order": order.to_string()}})
}

/// Ingest and router with every lane split into [`SHARDS`], and [`USERS`]
/// users with one push device each.
async fn sharded() -> (Pipeline, Vec<String>) {
    let mut env = TestEnv::with_schedule("1s").await;
    env.shards = SHARDS;
    let p = Pipeline::on(env).await;
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        p.user(user, json!({"name": user})).await;
        p.device(user, &format!("fcm-token-{i:04}"), "fcm").await;
    }
    (p, users)
}

async fn routed(p: &Pipeline, id: &str) {
    let done = p
        .env
        .eventually(Duration::from_secs(20), || async {
            let status = p.status(id).await["status"].clone();
            (status == "routed" || status == "completed").then_some(())
        })
        .await;
    assert!(done.is_some(), "notification {id} was not routed");
}

#[tokio::test]
async fn a_users_deliveries_stay_in_one_shard_in_order_and_users_spread_over_all() {
    let (p, users) = sharded().await;
    // Three notifications to every user, one after the other.
    let mut sent = Vec::new();
    for order in 0..3 {
        let id = p.send(push(&users, order)).await;
        routed(&p, &id).await;
        sent.push(id);
    }

    let names = p.env.names();
    let queues = names.delivery_queues(Channel::Push, Lane::Normal);
    assert_eq!(queues.len(), usize::from(SHARDS));
    let broker = p.env.broker().await;
    let ch = broker.channel().await.unwrap();
    // user -> (shard, notification ids in queue order)
    let mut seen: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    let mut per_shard = Vec::new();
    for (shard, queue) in queues.iter().enumerate() {
        let mut n = 0;
        while let Some(msg) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let d: DeliveryMessage = serde_json::from_slice(&msg.delivery.data).unwrap();
            let entry = seen.entry(d.user_id.clone()).or_insert((shard, Vec::new()));
            assert_eq!(entry.0, shard, "{} is in two shards", d.user_id);
            entry.1.push(d.notification_id.to_string());
            n += 1;
        }
        per_shard.push(n);
    }
    broker.close().await;

    assert_eq!(per_shard.iter().sum::<usize>(), 3 * USERS, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|n| *n > 0),
        "every shard gets users: {per_shard:?}"
    );
    assert_eq!(seen.len(), USERS);
    for (user, (_, ids)) in &seen {
        assert_eq!(ids, &sent, "{user}'s deliveries out of order");
    }
    p.stop().await;
}

#[tokio::test]
async fn a_worker_drains_every_shard_retries_included_and_sends_each_once() {
    let (p, users) = sharded().await;
    let fake = FcmFake::start().await;
    // Two first attempts fail: their retries travel through a retry tier
    // and back to the shard they came from.
    fake.push_error(503, "UNAVAILABLE", "UNAVAILABLE", &[]);
    fake.push_error(503, "UNAVAILABLE", "UNAVAILABLE", &[]);
    let worker = p.env.spawn_worker(Channel::Push, fcm(&fake)).await;

    let names = p.env.names();
    for queue in names.delivery_queues(Channel::Push, Lane::Normal) {
        let consumers = p
            .env
            .eventually(Duration::from_secs(10), || async {
                let broker = p.env.broker().await;
                let q = broker.inspect(&queue).await.ok();
                broker.close().await;
                q.filter(|q| q.consumers == 1)
            })
            .await;
        assert!(consumers.is_some(), "{queue} has no consumer");
    }

    let id = p.send(push(&users, 1)).await;
    let body = p.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(body["counts"], json!({"sent": USERS}));
    // Long enough for a stray copy in the retry tier (1 s x 1.3) to return.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        USERS + 2,
        "two failures, then each user once"
    );
    assert_eq!(
        p.env.broker_messages().await,
        vec![],
        "the broker holds nothing"
    );
    worker.stop().await;
    p.stop().await;
}
