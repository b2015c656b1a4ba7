//! A private PostgreSQL 15 cluster: `initdb` into a temporary directory,
//! trust authentication, listening on 127.0.0.1 on a port of its own with
//! its socket in the same directory. A scenario may stop, kill or restart
//! it without touching the machine's shared cluster on 5432.
//!
//! PostgreSQL refuses to run as root, so every server command runs as the
//! `postgres` OS user through `runuser`, and the scratch directory is handed
//! to that user. `fsync` stays on: a kill -9 must find the same durability
//! guarantees a production crash would.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::Command;

use super::{free_port, pids, run_bounded, run_ok, scratch_dir, tail};

/// Where the server binaries are on Debian's PostgreSQL 15 packages, with
/// the symlinks some images add as a second choice.
const BIN_DIRS: [&str; 2] = ["/usr/lib/postgresql/15/bin", "/usr/local/bin"];

/// `pg_ctl -w` waits this long for a start or stop; a cold start here takes
/// about 0.2 s, crash recovery after a kill -9 a little more.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A private PostgreSQL cluster. Dropping it stops the server (immediate
/// mode) and removes its directory, also when the test panics.
pub struct PrivatePostgres {
    port: u16,
    dir: tempfile::TempDir,
    last_start: Duration,
}

impl PrivatePostgres {
    /// A scratch directory handed to the `postgres` OS user and a port,
    /// nothing started yet.
    fn prepare() -> Self {
        super::orphans::reap();
        let dir = scratch_dir("postgres");
        let postgres = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres OS user exists (PostgreSQL is installed)");
        std::os::unix::fs::chown(
            dir.path(),
            Some(postgres.uid.as_raw()),
            Some(postgres.gid.as_raw()),
        )
        .expect("hand the scratch directory to the postgres user");
        Self {
            port: free_port(),
            dir,
            last_start: Duration::ZERO,
        }
    }

    /// Listens on this cluster's port and socket directory, set in
    /// postgresql.conf rather than on pg_ctl's command line, so every
    /// restart listens on the same ones (appended: the last setting wins,
    /// also over the primary's in a standby's copied file).
    fn write_listen_config(&self) {
        let data = self.data_dir();
        let conf = format!(
            "\n# herald fault kit\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.dir.path().display()
        );
        let mut text = fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        text.push_str(&conf);
        fs::write(data.join("postgresql.conf"), text).expect("write postgresql.conf");
    }

    /// A streaming replica of `primary`: `pg_basebackup -R` (which writes
    /// `primary_conninfo` and `standby.signal`) into a data directory of its
    /// own, started on a port of its own with the machine's PostgreSQL
    /// binaries. It replays what the primary streams and answers reads; see
    /// [`PrivatePostgres::require_synchronous_standby`] on the primary and
    /// [`PrivatePostgres::promote`].
    pub async fn start_standby(primary: &PrivatePostgres) -> Self {
        let mut standby = Self::prepare();
        run_ok(
            "pg_basebackup",
            standby
                .as_postgres("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(standby.data_dir())
                .args(["-R", "-X", "stream", "-c", "fast"]),
            Duration::from_secs(120),
        )
        .await;
        standby.write_listen_config();
        standby.boot().await;
        standby
    }

    /// Makes every commit on this primary wait until a standby has flushed
    /// it (`synchronous_standby_names = '*'`, `synchronous_commit = on`):
    /// a commit, and so a 202, then survives the primary's loss. Set after
    /// the standby's base backup, so the standby does not inherit it (once
    /// promoted, alone, it would wait for ever); returns once a standby
    /// streams synchronously.
    pub async fn require_synchronous_standby(&self) {
        let mut admin = PgConnection::connect(&self.database_url("postgres"))
            .await
            .expect("connect to the primary");
        admin
            .execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await
            .expect("set synchronous_standby_names");
        admin
            .execute("SELECT pg_reload_conf()")
            .await
            .expect("reload");
        let _ = admin.close().await;
        let url = self.database_url("postgres");
        super::wait_for(
            "a synchronous standby streaming from the primary",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                let sync: Option<String> = sqlx::query_scalar(
                    "SELECT sync_state FROM pg_stat_replication
                     WHERE state = 'streaming' AND sync_state = 'sync' LIMIT 1",
                )
                .fetch_optional(&mut conn)
                .await
                .ok()?;
                let _ = conn.close().await;
                sync.map(|_| ())
            },
        )
        .await;
    }

    /// Whether this cluster is a standby (in recovery) now.
    pub async fn in_recovery(&self) -> Option<bool> {
        let mut conn = PgConnection::connect(&self.database_url("postgres"))
            .await
            .ok()?;
        let r = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .ok();
        let _ = conn.close().await;
        r
    }

    /// `pg_ctl promote`: a standby becomes a primary (takes writes) and
    /// stops following its old primary. Returns once it is out of recovery.
    pub async fn promote(&mut self) {
        run_ok(
            "pg_ctl promote",
            self.pg_ctl().arg("promote"),
            PG_CTL_TIMEOUT + Duration::from_secs(5),
        )
        .await;
        super::wait_for(
            "the promoted standby to leave recovery",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async { (self.in_recovery().await == Some(false)).then_some(()) },
        )
        .await;
    }

    /// Creates the cluster with `initdb` and starts it.
    pub async fn start() -> Self {
        let pg = Self::prepare();
        let data = pg.data_dir();
        run_ok(
            "initdb",
            pg.as_postgres("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C.UTF-8", "--no-sync"]),
            Duration::from_secs(120),
        )
        .await;
        pg.write_listen_config();
        let mut pg = pg;
        pg.boot().await;
        pg
    }

    /// The TCP port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>`, without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of database `db` on this cluster.
    pub fn database_url(&self, db: &str) -> String {
        format!("{}/{db}", self.server_url())
    }

    /// The cluster's scratch directory (data in `data/`, log in
    /// `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long the last start (or restart) took.
    pub fn last_start(&self) -> Duration {
        self.last_start
    }

    /// Creates database `name` (a plain identifier).
    pub async fn create_database(&self, name: &str) {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?} must be a plain identifier"
        );
        let mut admin = PgConnection::connect(&self.database_url("postgres"))
            .await
            .expect("connect to the private cluster");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create database");
        let _ = admin.close().await;
    }

    /// The postmaster's pid, from `postmaster.pid`, if it runs.
    pub fn pid(&self) -> Option<u32> {
        pids::read_pid_file(&self.data_dir().join("postmaster.pid"))
            .filter(|pid| pids::cmdline(*pid).is_some_and(|c| c.contains(&self.marker())))
    }

    /// Fast shutdown: sessions are disconnected, a checkpoint is written.
    pub async fn stop(&mut self) {
        run_ok(
            "pg_ctl stop -m fast",
            self.pg_ctl().args(["-m", "fast", "stop"]),
            PG_CTL_TIMEOUT + Duration::from_secs(5),
        )
        .await;
    }

    /// SIGKILL of the postmaster found in `postmaster.pid` (checked to be
    /// this cluster's). Its backends notice the postmaster is gone and
    /// exit; the next start runs crash recovery. Returns once the
    /// postmaster is gone from `/proc` (init reaps it within a second or
    /// two), because a start refuses while that pid still exists.
    pub async fn kill9(&mut self) {
        let pid = self
            .pid()
            .expect("the private PostgreSQL is not running: nothing to kill");
        assert!(
            pids::signal_if_marked(pid, &self.marker(), Signal::SIGKILL),
            "could not SIGKILL postmaster {pid}"
        );
        assert!(
            pids::wait_gone(pid, Duration::from_secs(30)).await,
            "postmaster {pid} survived SIGKILL for 30 s"
        );
    }

    /// Starts the cluster again on the same port and data; stops it first
    /// (fast) if it runs.
    pub async fn restart(&mut self) {
        if self.pid().is_some() {
            self.stop().await;
        }
        self.boot().await;
    }

    /// The last lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- private PostgreSQL :{} ---\n{}",
            self.port,
            tail(&self.log_file(), lines)
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The postmaster's command line carries `-D <data dir>`.
    fn marker(&self) -> String {
        self.data_dir().display().to_string()
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(bin(program))
            .current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.as_postgres("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .arg("-w")
            .args(["-t", &PG_CTL_TIMEOUT.as_secs().to_string()]);
        cmd
    }

    /// `pg_ctl start`, retried: right after a kill -9 a backend may still
    /// hold the old shared memory for a moment, and the start refuses until
    /// it let go.
    async fn boot(&mut self) {
        let started = Instant::now();
        let mut last = String::new();
        for _ in 0..20 {
            let out = run_bounded(
                self.pg_ctl().arg("start"),
                PG_CTL_TIMEOUT + Duration::from_secs(5),
            )
            .await;
            match out {
                Some(o) if o.status.success() => {
                    self.last_start = started.elapsed();
                    return;
                }
                Some(o) => {
                    last = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                None => last = "pg_ctl start timed out".into(),
            }
            if started.elapsed() > PG_CTL_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "private PostgreSQL did not start: {last}\n{}",
            self.log_tail(30)
        );
    }
}

/// Path of a PostgreSQL server binary.
fn bin(name: &str) -> PathBuf {
    BIN_DIRS
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found in {BIN_DIRS:?}"))
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(30));
        }
        if let Some(pid) = self.pid() {
            // Immediate: nothing to keep, and it releases shared memory.
            let stopped = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                pids::signal_if_marked(pid, &self.marker(), Signal::SIGKILL);
            }
            pids::wait_gone_blocking(pid, Duration::from_secs(10));
        }
        if self.pid().is_none() {
            release_segment(&self.data_dir());
        }
    }
}

/// Removes the small System V segment a postmaster killed with -9 (and
/// never restarted) leaves behind. Its key is in the lock file and derives
/// from the data directory, so it names this cluster's segment only. Call
/// only once the postmaster is gone.
pub(crate) fn release_segment(data: &Path) {
    let lock = fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
    let key = lock
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().next())
        .filter(|k| k.parse::<u64>().is_ok_and(|k| k != 0));
    if let Some(key) = key {
        let _ = std::process::Command::new("ipcrm")
            .args(["-M", key])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
