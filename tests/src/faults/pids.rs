//! Signalling OS processes by pid, safely.
//!
//! The kit kills processes it did not spawn directly (the RabbitMQ VM is a
//! grandchild behind a shell script; the postmaster is detached by
//! `pg_ctl`), found through pid files. A stale pid file could name a pid
//! the system has since given to another process, and the machine runs a
//! shared RabbitMQ and PostgreSQL whose processes look alike. So every
//! signal here is sent only after the process's command line was checked
//! to contain a marker unique to the private instance (its own home or
//! data directory).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// The command line of `pid`, arguments joined by spaces; `None` if there
/// is no such process (or it is a zombie, whose command line is empty).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether the environment `pid` started with contains `entry`
/// (`NAME=value`). The Herald binaries have no arguments to tell them
/// apart, so the kit marks them through their environment.
pub fn environ_contains(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|raw| raw.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// The start time of `pid` (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`): with the pid, it names one process for good,
/// even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Sends `signal` to `pid` if its environment contains `entry`.
pub fn signal_if_env(pid: u32, entry: &str, signal: Signal) -> bool {
    environ_contains(pid, entry) && kill(Pid::from_raw(pid as i32), signal).is_ok()
}

/// Whether a process with this pid exists in any state, zombies included.
///
/// PostgreSQL refuses to start while the pid in its lock file exists, and a
/// killed postmaster whose parent is init stays a zombie until init reaps
/// it, so "gone" has to mean gone from `/proc`.
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The first line of a pid file as a pid.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Sends `signal` to `pid` if its command line contains `marker`.
/// Returns whether the signal was sent.
pub fn signal_if_marked(pid: u32, marker: &str, signal: Signal) -> bool {
    match cmdline(pid) {
        Some(cmd) if cmd.contains(marker) => kill(Pid::from_raw(pid as i32), signal).is_ok(),
        _ => false,
    }
}

/// Sends `signal` to the process group `pgid`. Only for groups the kit
/// created itself (a child spawned with `process_group(0)`).
pub fn signal_group(pgid: u32, signal: Signal) -> bool {
    kill(Pid::from_raw(-(pgid as i32)), signal).is_ok()
}

/// Sends `signal` to `pid` (a direct child of this process).
pub fn signal(pid: u32, signal: Signal) -> bool {
    kill(Pid::from_raw(pid as i32), signal).is_ok()
}

/// Waits until `pid` is gone from `/proc`, at most `timeout`, polling every
/// 50 ms. Returns whether it went.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let started = Instant::now();
    for _ in 0..(timeout.as_millis() / 50 + 1) {
        if !exists(pid) {
            return true;
        }
        if started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !exists(pid)
}

/// [`wait_gone`] for synchronous contexts (`Drop`).
pub fn wait_gone_blocking(pid: u32, timeout: Duration) -> bool {
    let started = Instant::now();
    for _ in 0..(timeout.as_millis() / 50 + 1) {
        if !exists(pid) {
            return true;
        }
        if started.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !exists(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_command_line_and_refuses_unmarked_signals() {
        let me = std::process::id();
        assert!(exists(me));
        assert!(cmdline(me).is_some());
        assert!(start_time(me).is_some());
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(environ_contains(me, &format!("PATH={path}")) || path.is_empty());
        // A marker that is not in our command line: nothing is sent (and the
        // test process is still here to tell).
        assert!(!signal_if_marked(
            me,
            "no-such-marker-7f3a",
            Signal::SIGKILL
        ));
    }
}
