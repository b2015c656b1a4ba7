//! Leftovers of test processes that died without unwinding.
//!
//! `Drop` cleans up after a failing test, but not after a test process that
//! was killed (a harness timeout sends SIGTERM then SIGKILL, and a Rust test
//! does not unwind on either). Its private RabbitMQ node, PostgreSQL
//! cluster and Herald processes would keep running, orphaned. So every
//! scratch directory names its owner (pid and start time, which together
//! cannot be reused), and every start of a private instance first reaps the
//! directories whose owner is gone: it kills what they still run, each
//! process checked by the marker it was started with, and removes them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::sys::signal::Signal;

use super::pids;

/// The file in a scratch directory naming its owner.
const OWNER: &str = "owner";

/// The environment variable that marks a Herald process the kit started;
/// its value is the process's log directory.
pub const MARKER_VAR: &str = "HERALD_FAULT_DIR";

/// The environment entry that marks a Herald process started in `dir`.
pub fn proc_marker(dir: &Path) -> String {
    format!("{MARKER_VAR}={}", dir.display())
}

/// Records this process as the owner of `dir`.
pub(crate) fn claim(dir: &Path) {
    let me = std::process::id();
    let started = pids::start_time(me).unwrap_or_default();
    fs::write(dir.join(OWNER), format!("{me} {started}\n")).expect("write owner file");
}

/// Whether the owner named in `dir` still runs. A directory without an
/// owner file is being created right now, or is not the kit's: left alone.
fn owner_alive(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(OWNER)) else {
        return true;
    };
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(pid), Some(started)) => pids::start_time(pid as u32) == Some(started),
        _ => true,
    }
}

/// Kills what orphaned scratch directories still run and removes them.
/// Returns how many were reaped.
pub fn reap() -> usize {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let orphans: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("herald-fault-"))
        })
        .filter(|p| p.is_dir() && !owner_alive(p))
        .collect();
    for dir in &orphans {
        reap_dir(dir);
    }
    orphans.len()
}

fn reap_dir(dir: &Path) {
    // A RabbitMQ node: its VM's command line names its home.
    if let Some(pid) = pids::read_pid_file(&dir.join("rabbit.pid")) {
        let marker = format!("-home {}", dir.join("home").display());
        pids::signal_if_marked(pid, &marker, Signal::SIGKILL);
    }
    // A PostgreSQL cluster: the postmaster's names its data directory.
    let data = dir.join("data");
    if let Some(pid) = pids::read_pid_file(&data.join("postmaster.pid")) {
        pids::signal_if_marked(pid, &data.display().to_string(), Signal::SIGKILL);
    }
    // Herald processes: marked in their environment, pids next to their logs.
    let marker = proc_marker(dir);
    for entry in fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid")
            && let Some(pid) = pids::read_pid_file(&path)
        {
            pids::signal_if_env(pid, &marker, Signal::SIGKILL);
        }
    }
    super::postgres::release_segment(&data);
    let _ = fs::remove_dir_all(dir);
}
