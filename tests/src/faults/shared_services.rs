//! A safety net for the machine's shared RabbitMQ (127.0.0.1:5672) and
//! PostgreSQL (127.0.0.1:5432), which every other test uses at the same
//! time.
//!
//! Scenarios should fault private instances ([`super::rabbit`],
//! [`super::postgres`]) and never these. If one must touch them anyway,
//! [`ensure_up`] at its start and a [`Guard`] held for its whole length make
//! sure they are running again when it ends, pass or fail, started the way
//! `scripts/services` starts them. Nothing here ever stops them.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The shared PostgreSQL.
pub const POSTGRES: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5432);
/// The shared RabbitMQ.
pub const RABBITMQ: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5672);

/// A RabbitMQ boot with its queues takes up to a minute on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What [`ensure_up`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub postgres_was_up: bool,
    pub rabbitmq_was_up: bool,
}

/// Whether something accepts TCP connections at `addr` (1 s timeout).
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Makes sure both shared services run, starting whichever is down, and
/// waits (bounded) until they accept connections. Blocking: usable from
/// `Drop`. Errors say which service could not be brought back.
pub fn ensure_up() -> Result<Status, String> {
    let status = Status {
        postgres_was_up: accepts(POSTGRES),
        rabbitmq_was_up: accepts(RABBITMQ),
    };
    if !status.postgres_was_up {
        // The cluster of scripts/services; `--skip-systemctl-redirect`
        // because there is no systemd here.
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", "15", "main", "start"],
        )?;
        wait_accepts(POSTGRES, "PostgreSQL")?;
    }
    if !status.rabbitmq_was_up {
        // The /usr/sbin wrappers: they run the node as the rabbitmq user
        // with its own cookie and the machine's rabbitmq-env.conf.
        run("rabbitmq-server", &["-detached"])?;
        wait_accepts(RABBITMQ, "RabbitMQ")?;
        run("rabbitmqctl", &["await_startup"])?;
    }
    Ok(status)
}

/// [`ensure_up`] off the async runtime's threads; panics if a service could
/// not be brought back.
pub async fn ensure_up_async() -> Status {
    tokio::task::spawn_blocking(ensure_up)
        .await
        .expect("ensure_up task")
        .unwrap_or_else(|e| panic!("shared services: {e}"))
}

/// Brings the shared services back, if needed, when dropped.
#[must_use = "the guard acts when it is dropped"]
pub struct Guard;

impl Guard {
    /// Checks (and if needed starts) the services now, and again on drop.
    pub async fn new() -> Self {
        ensure_up_async().await;
        Self
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A panic here would abort a test that is already unwinding; say it
        // loudly instead.
        if let Err(e) = ensure_up() {
            eprintln!("shared services guard: {e}");
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let started = Instant::now();
    for _ in 0..(START_TIMEOUT.as_millis() / 100) {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{program} {}: {status}", args.join(" ")))
            };
        }
        if started.elapsed() > START_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "{program} {} did not finish in {START_TIMEOUT:?}",
        args.join(" ")
    ))
}

fn wait_accepts(addr: SocketAddr, what: &str) -> Result<(), String> {
    let started = Instant::now();
    for _ in 0..(START_TIMEOUT.as_millis() / 500) {
        if accepts(addr) {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "{what} did not accept on {addr} within {START_TIMEOUT:?}"
    ))
}
