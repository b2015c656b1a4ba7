//! A three-node RabbitMQ cluster losing the node that leads the lane and
//! channel queues, under load; and the multi-address `AMQP_URL` moving a
//! connection past a dead address.

use std::{collections::BTreeMap, time::Instant};

use herald::broker::{Broker, Names};
use herald_tests::{
    fakes::fcm::FcmFake,
    faults::{
        cluster,
        ledger::Ledger,
        stack::{RETRY_SCHEDULE, Stack, Topology},
    },
};

use super::pipeline::{
    Pipeline, Setup, accepting_again_after, assert_nothing_lost, load_finished_and_flowing_again,
    wait_accepted, wait_new_work_delivered,
};

/// The routing lanes and the push channel's lanes, and their shards: the
/// queues every notification of the load passes through.
fn is_lane_queue(prefix: &str, queue: &str) -> bool {
    ["route", "push"].iter().any(|kind| {
        ["high", "normal", "bulk"].iter().any(|lane| {
            queue
                .strip_prefix(&format!("{prefix}.{kind}.{lane}"))
                .is_some_and(|shard| {
                    shard.is_empty()
                        || shard
                            .strip_prefix('.')
                            .is_some_and(|n| n.parse::<u16>().is_ok())
                })
        })
    })
}

#[tokio::test]
async fn a_dead_broker_address_is_skipped_and_tried_last() {
    // First a port nothing listens on, then the shared broker.
    let closed = herald_tests::faults::free_port();
    let list = format!(
        "amqp://guest:guest@127.0.0.1:{closed}/%2f,{}",
        herald_tests::amqp_url()
    );
    let broker = Broker::new(list, Names::new(format!("addr{}", std::process::id())));
    broker.ping().await.expect("the live address answers");
    // Connected to the second address; the first stays behind it.
    broker.ping().await.expect("still connected");
    broker.close().await;
    broker
        .ping()
        .await
        .expect("a reconnect goes to the live address");
    broker.close().await;
}

/// Lane queues (and their shards) led by each node, as `via` sees them.
async fn lane_leaders(stack: &Stack) -> (BTreeMap<String, usize>, Vec<(String, String)>) {
    let leaders = cluster::leaders(stack.live_rabbit(), &stack.prefix).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (queue, leader) in &leaders {
        if is_lane_queue(&stack.prefix, queue) {
            *per_node.entry(leader.clone()).or_default() += 1;
        }
    }
    eprintln!("lane and channel queue leaders per node: {per_node:?}");
    (per_node, leaders)
}

/// Declares the topology through the first node before any binary starts:
/// RabbitMQ 3.10 puts a new quorum queue's leader on the node its declaring
/// client is connected to (`client-local`) unless the queue says otherwise
/// (shards after the first: `balanced`), and gives it a member on every
/// node of the cluster.
async fn declare_through_the_first_node(stack: &Stack) {
    let broker = Broker::new(stack.rabbit.amqp_url(), stack.names());
    broker
        .declare_topology(&RETRY_SCHEDULE.parse().expect("schedule"))
        .await
        .expect("declare the topology");
    broker.close().await;
}

/// Runs 400 sends, kills `victim` with SIGKILL after the first 100, and
/// checks that nothing is lost and every lane queue is led by a live node.
async fn kill_under_load(stack: Stack, victim: String, scenario: &str) {
    let mut p = Pipeline::on(stack, FcmFake::start().await, Setup::default()).await;
    let ledger = Ledger::new();
    let load = p.load().rate(25.0).count(400).spawn(&ledger);
    wait_accepted(&ledger, 100).await;

    ledger.fault_started(scenario);
    let killed = Instant::now();
    p.stack.rabbit_node_mut(&victim).kill9().await;
    // Probes every 50 ms: the load's clients wait out the `Retry-After: 5`
    // of the 503s they got meanwhile, so their silence would measure that.
    let accepting = killed.elapsed() + accepting_again_after(&p, &ledger).await;
    let flowing = wait_new_work_delivered(&p, &ledger, killed).await;
    ledger.fault_ended(scenario);
    eprintln!(
        "ingest accepting again {accepting:?} and new work delivered {flowing:?} after {victim} was killed"
    );

    let after = cluster::leaders(p.stack.live_rabbit(), &p.stack.prefix).await;
    let still_led: Vec<_> = after
        .iter()
        .filter(|(q, l)| is_lane_queue(&p.stack.prefix, q) && *l == victim)
        .collect();
    assert!(
        still_led.is_empty(),
        "every lane queue has a leader on a live node: {still_led:?}"
    );
    let members = cluster::running_nodes(p.stack.live_rabbit()).await;
    assert_eq!(members.len(), 2, "two nodes run on: {members:?}");

    let again = load_finished_and_flowing_again(load, &p.fcm, killed).await;
    let report = p
        .report_with(
            scenario,
            &ledger,
            &[
                ("ingest_accepting_again_after_kill", accepting),
                ("new_work_delivered_after_kill", flowing),
                ("deliveries_flowing_again_after_kill", again),
            ],
        )
        .await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts a private three-node RabbitMQ cluster; run with --run-ignored"]
async fn broker_node_leading_the_queues_killed_loses_nothing() {
    let stack = Stack::start_with(Topology {
        rabbit_nodes: 3,
        ..Topology::default()
    })
    .await;
    declare_through_the_first_node(&stack).await;
    let (per_node, leaders) = lane_leaders(&stack).await;
    let (victim, led) = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(node, n)| (node.clone(), *n))
        .expect("lane queues have leaders");
    assert_eq!(
        led, 6,
        "every route and push lane led by one node: {leaders:?}"
    );
    kill_under_load(stack, victim, "rabbitmq-cluster-leader-kill9").await;
}

/// With three shards per lane the shards' leaders spread over the nodes;
/// a node leading some of them is killed under load: the other shards
/// keep flowing, the lost leaders move, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts a private three-node RabbitMQ cluster; run with --run-ignored"]
async fn sharded_lanes_spread_their_leaders_and_lose_nothing_when_a_node_dies() {
    let stack = Stack::start_with(Topology {
        rabbit_nodes: 3,
        shards: 3,
        ..Topology::default()
    })
    .await;
    declare_through_the_first_node(&stack).await;
    let (per_node, leaders) = lane_leaders(&stack).await;
    assert_eq!(
        per_node.values().sum::<usize>(),
        18,
        "six lanes of three shards: {leaders:?}"
    );
    assert_eq!(
        per_node.len(),
        3,
        "the shards' leaders spread over every node: {per_node:?}"
    );
    // A node other than the one the topology was declared through: it
    // leads shards only.
    let first = stack.rabbit.node().to_owned();
    let victim = per_node
        .iter()
        .filter(|(node, _)| **node != first)
        .max_by_key(|(_, n)| **n)
        .map(|(node, _)| node.clone())
        .expect("another node leads shards");
    kill_under_load(stack, victim, "rabbitmq-cluster-shard-leader-kill9").await;
}
