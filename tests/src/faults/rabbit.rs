//! A private RabbitMQ node: its own node name, AMQP and distribution ports,
//! data, log and pid files under a temporary directory, no plugins, bound
//! to loopback. A scenario may stop, kill or restart it without touching the
//! machine's shared broker on 5672.
//!
//! The node is started through RabbitMQ's own `rabbitmq-server` script in
//! `/usr/lib/rabbitmq/bin`, not the `/usr/sbin` wrapper: the wrapper switches
//! to the `rabbitmq` user, whose home holds the shared node's Erlang cookie.
//! Run as the test user with `HOME` in the scratch directory, the private
//! node gets a cookie of its own, so a `rabbitmqctl` issued by this module
//! cannot authenticate to the shared node even if a node name were wrong.
//! The machine's `/etc/rabbitmq/rabbitmq-env.conf` (which names the shared
//! node) is replaced by an empty one for the same reason; the shared epmd on
//! 4369 is used.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use super::{free_port, pids, run_bounded, run_ok, scratch_dir, suffix, tail, wait_for};

/// Where the RabbitMQ scripts run without switching user.
const SBIN: &str = "/usr/lib/rabbitmq/bin";

/// RabbitMQ's default memory high watermark (fraction of RAM); the node's
/// configuration leaves it in place, so this is what "restore" returns to.
pub const DEFAULT_WATERMARK: f64 = 0.4;

/// A fresh node boots in 4-7 s on two busy cores, a restart that recovers
/// quorum queues in about as long; fifteen times that is "broken", not
/// "slow".
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One `rabbitmqctl` call: the CLI starts an Erlang VM of its own (~0.5 s).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// A clean stop drains queues to disk; a few seconds here.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A private RabbitMQ node. Dropping it kills the node and removes its
/// directory, also when the test panics.
pub struct PrivateRabbit {
    node: String,
    amqp_port: u16,
    dist_port: u16,
    /// The Erlang cookie the nodes of one private cluster share; `None`: a
    /// cookie of the node's own.
    cookie: Option<String>,
    dir: tempfile::TempDir,
    /// The `rabbitmq-server` script, leader of its own process group; the
    /// Erlang VM is its child.
    server: Option<Child>,
    last_start: Duration,
}

impl PrivateRabbit {
    /// Creates the node's directories and starts it; returns once
    /// `rabbitmqctl await_startup` succeeds and the AMQP port accepts.
    pub async fn start() -> Self {
        Self::start_with_cookie(None).await
    }

    /// A node meant to join a private cluster ([`super::cluster`]): it
    /// carries `cookie` (the nodes of a cluster must share one, and it is
    /// never the shared node's) and pauses when it finds itself in a
    /// minority, as production's nodes do (docs/deploy.md).
    pub async fn start_member(cookie: &str) -> Self {
        Self::start_with_cookie(Some(cookie.to_owned())).await
    }

    async fn start_with_cookie(cookie: Option<String>) -> Self {
        super::orphans::reap();
        let dir = scratch_dir("rabbit");
        let mut rabbit = Self {
            node: format!("herald-fault-{}@localhost", suffix()),
            amqp_port: free_port(),
            dist_port: free_port(),
            cookie,
            dir,
            server: None,
            last_start: Duration::ZERO,
        };
        rabbit.write_config();
        rabbit.boot().await;
        rabbit
    }

    /// The node name, `herald-fault-…@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The AMQP listener, on loopback.
    pub fn amqp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        amqp_url_at(self.amqp_addr())
    }

    /// The node's scratch directory (data in `data/`, logs in `log/` and
    /// `server.out`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long the last start (or restart) took until the node was usable.
    pub fn last_start(&self) -> Duration {
        self.last_start
    }

    /// The Erlang VM's OS pid, from the node's pid file, if it is running.
    pub fn pid(&self) -> Option<u32> {
        pids::read_pid_file(&self.path("rabbit.pid"))
            .filter(|pid| pids::cmdline(*pid).is_some_and(|c| c.contains(&self.marker())))
    }

    /// Stops the node cleanly (`rabbitmqctl stop`, which waits for the VM to
    /// exit). Durable queues and their messages stay on disk.
    pub async fn stop(&mut self) {
        let pid_file = self.path("rabbit.pid");
        let pid = self.pid();
        self.ctl_ok(
            &["stop", pid_file.to_str().expect("utf-8 path")],
            STOP_TIMEOUT,
        )
        .await;
        if let Some(pid) = pid {
            assert!(
                pids::wait_gone(pid, STOP_TIMEOUT).await,
                "RabbitMQ {} (pid {pid}) still runs after rabbitmqctl stop",
                self.node
            );
        }
        self.reap_server().await;
    }

    /// SIGKILL of the node's Erlang VM, found by its pid file and checked to
    /// be this node's (its command line names this node's home), so the
    /// shared node is never hit. Returns once the process is gone.
    pub async fn kill9(&mut self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("RabbitMQ {} is not running: nothing to kill", self.node));
        assert!(
            pids::signal_if_marked(pid, &self.marker(), Signal::SIGKILL),
            "could not SIGKILL pid {pid} of RabbitMQ {}",
            self.node
        );
        assert!(
            pids::wait_gone(pid, Duration::from_secs(30)).await,
            "RabbitMQ {} (pid {pid}) survived SIGKILL for 30 s",
            self.node
        );
        self.reap_server().await;
    }

    /// Starts the node again on the same name, ports and data directory, so
    /// durable quorum queues and their messages come back; stops it first
    /// if it runs.
    pub async fn restart(&mut self) {
        if self.pid().is_some() {
            self.stop().await;
        }
        self.boot().await;
    }

    /// Sets the memory high watermark; `0.0` raises the memory alarm at
    /// once, which blocks every publishing connection (consumers still get
    /// their messages).
    pub async fn set_memory_watermark(&self, fraction: f64) {
        self.ctl_ok(
            &["set_vm_memory_high_watermark", &fraction.to_string()],
            CTL_TIMEOUT,
        )
        .await;
    }

    /// Puts the watermark back to RabbitMQ's default, clearing the alarm.
    pub async fn restore_memory_watermark(&self) {
        self.set_memory_watermark(DEFAULT_WATERMARK).await;
    }

    /// `(name, messages_ready, messages_unacknowledged)` of every queue whose
    /// name starts with `prefix`, sorted by name: what the broker still
    /// holds after a scenario. The counts are statistics, refreshed every
    /// 500 ms on this node (see `write_config`).
    pub async fn queue_messages(&self, prefix: &str) -> Vec<(String, u64, u64)> {
        let out = self
            .ctl_ok(
                &[
                    "-q",
                    "--no-table-headers",
                    "list_queues",
                    "name",
                    "messages_ready",
                    "messages_unacknowledged",
                ],
                CTL_TIMEOUT,
            )
            .await;
        let mut queues: Vec<(String, u64, u64)> = out
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let name = cols.next()?.trim();
                let ready = cols.next()?.trim().parse().ok()?;
                let unacked = cols.next()?.trim().parse().ok()?;
                name.starts_with(prefix)
                    .then(|| (name.to_owned(), ready, unacked))
            })
            .collect();
        queues.sort();
        queues
    }

    /// Runs `rabbitmqctl -n <this node> <args>`; panics with its output if
    /// it fails. Returns stdout.
    pub async fn ctl_ok(&self, args: &[&str], timeout: Duration) -> String {
        let what = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        run_ok(&what, &mut self.ctl(args), timeout).await
    }

    /// The last lines of the node's console output and log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.path("log").join(format!("{}.log", self.node));
        format!(
            "--- {} console ---\n{}\n--- {} log ---\n{}",
            self.node,
            tail(&self.path("server.out"), lines),
            self.node,
            tail(&log, lines)
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What only this node's VM has in its command line: `-home <its HOME>`.
    fn marker(&self) -> String {
        format!("-home {}", self.path("home").display())
    }

    fn write_config(&self) {
        for sub in ["home", "data", "log", "plugins-expand"] {
            fs::create_dir_all(self.path(sub)).expect("create node directory");
        }
        // No plugins: the management plugin alone doubles the boot time.
        fs::write(self.path("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        fs::write(self.path("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");
        // Queue counts (`list_queues`) are statistics: collected every 5 s
        // by default, and a quorum queue reports its counts on each Raft
        // tick, also every 5 s. Every 500 ms keeps "what the broker holds
        // now" fresh enough for a scenario's final check. The tick has no
        // rabbitmq.conf key, hence advanced.config.
        let mut conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{}\ncollect_statistics_interval = 500\n",
            self.amqp_port
        );
        if let Some(cookie) = &self.cookie {
            // Read by the node and by `rabbitmqctl` (both run with this
            // `HOME`); Erlang refuses a cookie file others can read.
            let file = self.path("home").join(".erlang.cookie");
            fs::write(&file, cookie).expect("write .erlang.cookie");
            fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400))
                .expect("chmod .erlang.cookie");
            conf.push_str("cluster_partition_handling = pause_minority\n");
        }
        fs::write(self.path("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        fs::write(
            self.path("advanced.config"),
            "[{rabbit, [{quorum_tick_interval, 500}]}].\n",
        )
        .expect("write advanced.config");
    }

    /// Environment shared by the server and the CLI; anything inherited
    /// that could point them at another node is removed.
    fn env(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("RABBITMQ_") || key.starts_with("ERL_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.path("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}");
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(Path::new(SBIN).join("rabbitmqctl"));
        self.env(&mut cmd);
        cmd.arg("-n").arg(&self.node).args(args);
        cmd
    }

    async fn boot(&mut self) {
        let started = Instant::now();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.out"))
            .expect("open server.out");
        let mut cmd = Command::new(Path::new(SBIN).join("rabbitmq-server"));
        self.env(&mut cmd);
        let dir = |name: &str| self.path(name);
        cmd.env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir("plugins-expand"))
            .env("RABBITMQ_MNESIA_BASE", dir("data"))
            .env("RABBITMQ_MNESIA_DIR", dir("data"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir("feature_flags"))
            .env("RABBITMQ_LOG_BASE", dir("log"))
            .env("RABBITMQ_PID_FILE", dir("rabbit.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone server.out"))
            .stderr(out)
            // Its own process group, so Drop can take down the script, the
            // VM and the VM's helpers in one signal.
            .process_group(0)
            .kill_on_drop(true);
        self.server = Some(cmd.spawn().expect("spawn rabbitmq-server"));

        // Polls every 500 ms; `await_startup` fails at once until the node
        // is registered with epmd, then blocks until the boot finished.
        let mut booted = false;
        for _ in 0..(START_TIMEOUT.as_millis() / 500) {
            if let Some(server) = self.server.as_mut()
                && let Ok(Some(status)) = server.try_wait()
            {
                panic!(
                    "RabbitMQ {} exited while booting ({status}):\n{}",
                    self.node,
                    self.log_tail(40)
                );
            }
            let out = run_bounded(&mut self.ctl(&["-q", "await_startup"]), CTL_TIMEOUT).await;
            if out.is_some_and(|o| o.status.success()) {
                booted = true;
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            booted,
            "RabbitMQ {} did not finish booting within {START_TIMEOUT:?}:\n{}",
            self.node,
            self.log_tail(40)
        );
        let addr = self.amqp_addr();
        wait_for(
            &format!("RabbitMQ {} to accept AMQP on {addr}", self.node),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await;
        self.last_start = started.elapsed();
    }

    /// Collects the exit of the `rabbitmq-server` script once its VM is
    /// gone; kills it if it lingers.
    async fn reap_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            let waited = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
            if waited.is_err() {
                let _ = server.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
            }
        }
    }
}

/// An AMQP URL for the default vhost at `addr` (a node or a proxy in front
/// of it).
pub fn amqp_url_at(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(30));
        }
        if let Some(pid) = self.pid() {
            pids::signal_if_marked(pid, &self.marker(), Signal::SIGKILL);
            pids::wait_gone_blocking(pid, Duration::from_secs(10));
        }
        if let Some(server) = self.server.as_mut() {
            // Only while the script is unreaped is its pid (= its group id)
            // certainly still ours.
            if let (Ok(None), Some(pgid)) = (server.try_wait(), server.id()) {
                pids::signal_group(pgid, Signal::SIGKILL);
            }
            let _ = server.start_kill();
        }
        // The TempDir removes the node's files when it drops after this.
    }
}
