//! A toolkit for Jepsen-style fault scenarios: the pipeline runs as real
//! processes against a RabbitMQ node and a PostgreSQL cluster of its own,
//! faults are injected (kill -9, clean stops, outages, slow or cut links,
//! broker memory alarms), and a ledger checks afterwards that nothing the
//! API accepted was lost.
//!
//! Why private instances: the machine's shared RabbitMQ (5672) and
//! PostgreSQL (5432) serve every other test running at the same time, so a
//! scenario that stops or kills a dependency must own it. Each private
//! instance lives in its own temporary directory, on its own loopback ports,
//! and is killed and removed when its handle is dropped, also when the test
//! panics.
//!
//! The pieces, one concept per module:
//! - [`rabbit::PrivateRabbit`]: a RabbitMQ node (`stop`, `kill9`, `restart`,
//!   memory alarm, queue depths);
//! - [`cluster`]: three such nodes joined into one RabbitMQ cluster (queue
//!   leaders, running members);
//! - [`postgres::PrivatePostgres`]: a PostgreSQL cluster (`stop`, `kill9`,
//!   `restart`), or a streaming standby of one (`promote`);
//! - [`proxy::TcpProxy`]: a loopback TCP proxy that cuts, delays or
//!   blackholes a link;
//! - [`procs::Proc`]: a real Herald binary as a child process;
//! - [`stack::Stack`]: the above wired together (database migrated, tenant
//!   and key created, environment of each binary);
//! - [`load`]: the load driver and recipient seeding;
//! - [`ledger`]: accepted ids, fault windows and the final check;
//! - [`shared_services`]: a safety net that brings the shared services back;
//! - [`orphans`]: cleanup after a test process that was killed outright;
//! - [`pids`]: signals sent only to processes proven to be the kit's.
//!
//! Every wait in the kit is bounded in time and in count and panics with a
//! message naming what it waited for.

pub mod cluster;
pub mod ledger;
pub mod load;
pub mod orphans;
pub mod pids;
pub mod postgres;
pub mod procs;
pub mod proxy;
pub mod rabbit;
pub mod shared_services;
pub mod stack;

use std::{
    future::Future,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use tokio::process::Command;

/// A loopback TCP port that was free a moment ago.
///
/// The port is released before it is returned, so another process could
/// take it in between; on loopback with ports from the ephemeral range that
/// race is rare enough for tests (the same trade-off `tests/it` makes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` every `every` until it returns `Some`, for at most
/// `timeout` (and at most `timeout / every + 1` polls), then panics naming
/// `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, every: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, every, check).await {
        Some(v) => v,
        None => panic!("gave up after {timeout:?}: {what}"),
    }
}

/// [`wait_for`] that returns `None` instead of panicking.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let max_polls = timeout.as_millis() / every.as_millis().max(1) + 1;
    for _ in 0..max_polls {
        if let Some(v) = check().await {
            return Some(v);
        }
        if started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Runs a command to completion, killed after `timeout`. Returns its output
/// whatever its exit status; `None` if it could not start or timed out.
pub async fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().ok()?;
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .ok()?
        .ok()
}

/// Runs a command that must succeed within `timeout`; panics with its
/// output (naming `what`) otherwise, and returns its stdout.
pub async fn run_ok(what: &str, cmd: &mut Command, timeout: Duration) -> String {
    match run_bounded(cmd, timeout).await {
        Some(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Some(out) => panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        None => panic!("{what} did not start or did not finish within {timeout:?}"),
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh directory under the system's temporary directory, named so a
/// leftover is recognisable (`herald-fault-<what>-…`) and claimed by this
/// process, so [`orphans::reap`] can clean it up if the process dies
/// without unwinding.
pub(crate) fn scratch_dir(what: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("herald-fault-{what}-"))
        .tempdir()
        .expect("a temporary directory");
    orphans::claim(dir.path());
    dir
}

/// A short random suffix for names (node names, database names).
pub(crate) fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}
