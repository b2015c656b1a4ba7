//! A private RabbitMQ cluster: [`PrivateRabbit`] nodes on loopback, each
//! with its own node name, AMQP and distribution ports and data directory,
//! sharing an Erlang cookie of their own and joined with `rabbitmqctl
//! join_cluster`. Quorum queues declared on it get a member on every node;
//! a node may then be killed while the two others keep the majority.
//!
//! Each node is a [`PrivateRabbit`] and cleans up after itself when it is
//! dropped; the cluster adds nothing that outlives them.

use std::time::{Duration, Instant};

use super::{rabbit::PrivateRabbit, suffix};

/// Joining stops the joining node's application, resets it and starts it
/// again: a few seconds each on two busy cores.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `rabbitmqctl` calls that only read.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `n` nodes side by side and joins the others to the first.
/// Returns them in order; the first is the node they joined.
pub async fn start(n: usize) -> Vec<PrivateRabbit> {
    assert!(n >= 1, "a cluster has at least one node");
    let started = Instant::now();
    // Long and random: the cookie is all that lets a node (or a CLI) into
    // the cluster.
    let cookie = format!("HERALDFAULT{}{}", suffix(), suffix()).to_uppercase();
    let nodes =
        futures::future::join_all((0..n).map(|_| PrivateRabbit::start_member(&cookie))).await;
    let seed = nodes[0].node().to_owned();
    for node in &nodes[1..] {
        node.ctl_ok(&["stop_app"], JOIN_TIMEOUT).await;
        node.ctl_ok(&["join_cluster", &seed], JOIN_TIMEOUT).await;
        node.ctl_ok(&["start_app"], JOIN_TIMEOUT).await;
        node.ctl_ok(&["-q", "await_startup"], JOIN_TIMEOUT).await;
    }
    let members = running_nodes(&nodes[0]).await;
    for node in &nodes {
        assert!(
            members.iter().any(|m| m == node.node()),
            "{} is not a running member of the cluster: {members:?}",
            node.node()
        );
    }
    eprintln!(
        "RabbitMQ cluster of {n} formed in {:?}: {members:?}",
        started.elapsed()
    );
    nodes
}

/// `AMQP_URL` for the cluster: every node's URL, comma-separated, in order.
pub fn amqp_url<'a>(nodes: impl IntoIterator<Item = &'a PrivateRabbit>) -> String {
    nodes
        .into_iter()
        .map(PrivateRabbit::amqp_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's running nodes, as `via` sees them.
pub async fn running_nodes(via: &PrivateRabbit) -> Vec<String> {
    let out = via
        .ctl_ok(
            &["-q", "cluster_status", "--formatter", "json"],
            CTL_TIMEOUT,
        )
        .await;
    let status: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("cluster_status is not JSON ({e}): {out}"));
    status["running_nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(queue, leader node)` of every quorum queue whose name starts with
/// `prefix`, sorted by name, as `via` sees them.
pub async fn leaders(via: &PrivateRabbit, prefix: &str) -> Vec<(String, String)> {
    let out = via
        .ctl_ok(
            &["-q", "--no-table-headers", "list_queues", "name", "leader"],
            CTL_TIMEOUT,
        )
        .await;
    let mut rows: Vec<(String, String)> = out
        .lines()
        .filter_map(|line| {
            let mut cols = line.split('\t');
            let name = cols.next()?.trim();
            let leader = cols.next()?.trim();
            (name.starts_with(prefix) && !leader.is_empty())
                .then(|| (name.to_owned(), leader.to_owned()))
        })
        .collect();
    rows.sort();
    rows
}
