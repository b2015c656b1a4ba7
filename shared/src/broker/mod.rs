//! RabbitMQ: one connection per process (to one of the cluster's addresses),
//! the topology, a confirming publisher and a supervised consumer loop.

pub mod acks;
pub mod addresses;
pub mod consumer;
mod headers;
mod messages;
pub mod publisher;
pub mod topology;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use lapin::{
    Channel, Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
};
use tokio::sync::Mutex;

use self::addresses::Rotation;
use crate::config::redact_url;
pub use headers::{Headers, header_i64, header_str};
pub use publisher::{Outgoing, PublishError, Publisher};
pub use topology::Names;

/// Heartbeat asked of the broker, in seconds, unless the URL sets one: a
/// silently dead peer (a cut link, an address that drops packets) is noticed
/// after two missed heartbeats, 20 s rather than RabbitMQ's default 120.
const HEARTBEAT_SECS: u32 = 10;
/// Longest a connection attempt may take, in ms, unless the URL sets it: a
/// broker address that swallows packets must not hold up the reconnect loop.
const CONNECT_TIMEOUT_MS: u32 = 5000;

/// `url` with Herald's heartbeat and connect timeout where it sets none.
fn with_defaults(url: &str) -> String {
    let mut url = url.to_owned();
    for (key, value) in [
        ("heartbeat", HEARTBEAT_SECS),
        ("connection_timeout", CONNECT_TIMEOUT_MS),
    ] {
        if !url.contains(&format!("{key}=")) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{key}={value}"));
        }
    }
    url
}

/// One queue's depth and consumers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// Messages ready in the queue.
    pub messages: u32,
    /// Consumers attached: one per lane consumer of each replica.
    pub consumers: u32,
}

/// A lazily (re)connected handle on the broker. Cheap to share; every
/// publisher and consumer of a process goes through the same connection.
pub struct Broker {
    /// The cluster's addresses (one for a single node), see [`addresses`].
    urls: Vec<String>,
    /// Shared with [`Broker::own_connection`]'s handles: a node one
    /// connection found dead is not the first another one tries.
    rotation: Arc<Rotation>,
    names: Names,
    /// The live connection and the index of the address it went to.
    conn: Mutex<Option<(usize, Arc<Connection>)>>,
    declared: AtomicBool,
}

impl Broker {
    /// A handle that connects on first use. `url` is `AMQP_URL`: one URL or
    /// a comma-separated list of a cluster's nodes (an unparsable value is
    /// kept as one address, for the connect to report).
    pub fn new(url: impl Into<String>, names: Names) -> Arc<Self> {
        let url = url.into();
        Arc::new(Self {
            urls: addresses::parse(&url).unwrap_or_else(|_| vec![url]),
            rotation: Arc::default(),
            names,
            conn: Mutex::new(None),
            declared: AtomicBool::new(false),
        })
    }

    /// The same broker on a connection of its own (opened on first use):
    /// what `high` publishes through, so its frames never queue behind a
    /// bulk page's thousand publishes on a shared socket.
    pub fn own_connection(&self) -> Arc<Self> {
        Arc::new(Self {
            urls: self.urls.clone(),
            rotation: self.rotation.clone(),
            names: self.names.clone(),
            conn: Mutex::new(None),
            declared: AtomicBool::new(self.topology_declared()),
        })
    }

    /// Exchange and queue names of this deployment.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The live connection, reconnecting if the last one was lost: the
    /// addresses are tried in turn, starting after the last one that failed
    /// (the lost connection's counts as failed), each at most once per call.
    pub async fn connection(&self) -> lapin::Result<Arc<Connection>> {
        let mut guard = self.conn.lock().await;
        let n = self.urls.len();
        if let Some((index, conn)) = guard.take() {
            if conn.status().connected() {
                *guard = Some((index, conn.clone()));
                return Ok(conn);
            }
            self.rotation.failed(index, n);
        }
        let props = ConnectionProperties::default()
            .with_connection_name(format!("herald-{}", std::process::id()).into());
        let mut last_error = None;
        for index in self.rotation.order(n) {
            let url = &self.urls[index];
            match Connection::connect(&with_defaults(url), props.clone()).await {
                Ok(conn) => {
                    self.rotation.connected(index);
                    if n > 1 {
                        tracing::info!(address = %redact_url(url), "connected to the broker");
                    }
                    let conn = Arc::new(conn);
                    *guard = Some((index, conn.clone()));
                    return Ok(conn);
                }
                Err(e) => {
                    self.rotation.failed(index, n);
                    if n > 1 {
                        tracing::warn!(address = %redact_url(url), error = %e, "broker address failed, trying the next");
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one broker address"))
    }

    /// A new channel on the live connection.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        self.connection().await?.create_channel().await
    }

    /// Whether the broker answers: opens (and closes) a channel.
    pub async fn ping(&self) -> lapin::Result<()> {
        let channel = self.channel().await?;
        channel.close(200, "ping".into()).await
    }

    /// Connects and declares the whole topology (idempotent).
    pub async fn declare_topology(
        &self,
        schedule: &crate::config::RetrySchedule,
    ) -> lapin::Result<()> {
        let channel = self.channel().await?;
        topology::declare(&channel, &self.names, schedule).await?;
        self.declared.store(true, Ordering::Release);
        channel.close(200, "declared".into()).await
    }

    /// Whether this process has declared the topology: until then it is not
    /// ready, since its first publish could find no exchange.
    pub fn topology_declared(&self) -> bool {
        self.declared.load(Ordering::Acquire)
    }

    /// Depth and consumer count of one queue, by a passive declare on a
    /// channel of its own (a passive declare of a missing queue closes the
    /// channel, so it must not be shared).
    pub async fn inspect(&self, queue: &str) -> lapin::Result<QueueStats> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "inspected".into()).await;
        let q = declared?;
        Ok(QueueStats {
            queue: queue.to_owned(),
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })
    }

    /// Depth and consumer count of every queue of this deployment (a queue
    /// that does not exist shows as empty).
    pub async fn queue_stats(
        &self,
        schedule: &crate::config::RetrySchedule,
    ) -> lapin::Result<Vec<QueueStats>> {
        // Fail when the broker is unreachable, not per missing queue.
        self.connection().await?;
        let mut out = Vec::new();
        for queue in self.names.all_queues(schedule) {
            out.push(self.inspect(&queue).await.unwrap_or(QueueStats {
                queue,
                messages: 0,
                consumers: 0,
            }));
        }
        Ok(out)
    }

    /// Closes the connection, if any (on shutdown).
    pub async fn close(&self) {
        if let Some((_, conn)) = self.conn.lock().await.take() {
            let _ = conn.close(200, "shutdown".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_defaults;

    #[test]
    fn heartbeat_and_connect_timeout_unless_the_url_sets_them() {
        assert_eq!(
            with_defaults("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&connection_timeout=5000"
        );
        assert_eq!(
            with_defaults("amqp://h/%2f?heartbeat=30"),
            "amqp://h/%2f?heartbeat=30&connection_timeout=5000"
        );
    }
}
