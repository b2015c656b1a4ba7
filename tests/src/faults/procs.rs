//! The real Herald binaries as child processes, so a fault can be what it
//! is in production: a SIGKILL that leaves no destructor to run, a SIGTERM
//! that must drain, a restart that must pick up where the last one left.
//!
//! Binaries come from `cargo build --bins` (found by [`crate::binary`]).
//! Each process's stdout and stderr go to files in a directory the caller
//! owns (appended across restarts); they are printed when a test panics
//! while the process handle is alive. Each process carries
//! `HERALD_FAULT_DIR=<log dir>` in its environment and leaves its pid in
//! `<log dir>/<name>.pid`, so [`super::orphans`] can find it if the test
//! process dies without unwinding (no `Drop` runs then).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use super::{free_port, pids, tail};

/// A process's environment, by variable name.
pub type Env = BTreeMap<String, String>;

/// How often readiness is probed; a probe itself times out after 2 s on the
/// binary's side (its own dependency checks).
const READY_POLL: Duration = Duration::from_millis(100);

/// One running (or stopped) Herald binary. Dropping it kills the process.
pub struct Proc {
    name: String,
    env: Env,
    port: u16,
    log_dir: PathBuf,
    child: Option<Child>,
    starts: u32,
    http: reqwest::Client,
}

impl Proc {
    /// Spawns binary `name` with exactly `env` added to a clean environment
    /// (`PATH` and `HOME` kept). `HTTP_ADDR` is set to a free loopback port
    /// unless `env` has one; the port stays the same across restarts.
    pub fn spawn(name: &str, mut env: Env, log_dir: &Path) -> Self {
        let port = match env.get("HTTP_ADDR") {
            Some(addr) => addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("HTTP_ADDR ends with a port"),
            None => {
                let port = free_port();
                env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
                port
            }
        };
        fs::create_dir_all(log_dir).expect("create log directory");
        let mut proc = Self {
            name: name.to_owned(),
            env,
            port,
            log_dir: log_dir.to_owned(),
            child: None,
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("http client"),
        };
        proc.launch();
        proc
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The environment it runs with.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Sets `key` for the next start ([`Proc::restart`]), as an operator
    /// changes a Deployment's environment and rolls it.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        self.env.insert(key.to_owned(), value.into());
    }

    /// The OS pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        self.http
            .get(self.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Waits until `/readyz` answers 200, at most `timeout`; panics (with
    /// the process's log) if it exits or never gets ready.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        for _ in 0..(timeout.as_millis() / READY_POLL.as_millis() + 1) {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited before it was ready ({status}):\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if self.is_ready().await {
                return;
            }
            if started.elapsed() >= timeout {
                break;
            }
            tokio::time::sleep(READY_POLL).await;
        }
        panic!(
            "{} on :{} not ready within {timeout:?}:\n{}",
            self.name,
            self.port,
            self.log_tail(40)
        );
    }

    /// The exit status if the process ended on its own (or was stopped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL; returns once the process is reaped.
    pub async fn kill9(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running: nothing to kill", self.name));
        child.start_kill().expect("SIGKILL");
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} not reaped 10 s after SIGKILL", self.name))
            .expect("wait")
    }

    /// SIGTERM, then waits at most `timeout` for the exit (a graceful drain
    /// must fit in it); on timeout the process is killed and the test
    /// fails. Returns the exit status (0 is a clean drain).
    pub async fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running: nothing to stop", self.name));
        if let Some(pid) = child.id() {
            pids::signal(pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
    }

    /// Starts the binary again with the same environment and port, after
    /// stopping it (SIGTERM, 30 s) if it still runs. Does not wait for
    /// readiness: a restart into an outage is a scenario too.
    pub async fn restart(&mut self) {
        if self.child.is_some() && self.exited().is_none() {
            self.sigterm(Duration::from_secs(30)).await;
        }
        self.launch();
    }

    /// Path of the captured stdout (JSON log lines with `LOG_FORMAT=json`).
    pub fn stdout_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.out", self.name))
    }

    /// Path of the captured stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.err", self.name))
    }

    /// The last lines of stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(&self.stdout_path(), lines),
            self.name,
            tail(&self.stderr_path(), lines)
        )
    }

    fn launch(&mut self) {
        self.starts += 1;
        let open = |path: PathBuf| {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            use std::io::Write;
            let _ = writeln!(f, "=== start #{} ===", self.starts);
            f
        };
        let mut cmd = Command::new(crate::binary(&self.name));
        cmd.env_clear();
        for keep in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.envs(&self.env)
            // Marks the process as the kit's, for the orphan reaper.
            .env(
                super::orphans::MARKER_VAR,
                self.log_dir.display().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(open(self.stdout_path()))
            .stderr(open(self.stderr_path()))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        if let Some(pid) = child.id() {
            let _ = fs::write(
                self.log_dir.join(format!("{}.pid", self.name)),
                format!("{pid}\n"),
            );
        }
        self.child = Some(child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
