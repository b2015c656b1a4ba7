//! What one notification costs the whole machine: single sends at a fixed
//! offered rate (an open loop, well under the maximum), with the CPU time
//! every process on the machine used meanwhile, grouped (Herald's binaries,
//! PostgreSQL, RabbitMQ, this load generator with the provider fake, the
//! kernel's own threads, the rest), per 1,000 notifications.
//!
//! Throughput in a closed loop is the inverse of this cost on a saturated
//! machine, but it moves by a third with the host's speed from one round
//! to the next; the cost at a fixed rate is steadier, so a change of a few
//! percent in one stage shows here before it shows there.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{
    Pipeline,
    load::{self, Mode},
};

/// Clock ticks per second of `/proc` CPU times (USER_HZ on Linux).
const TICKS: f64 = 100.0;

/// CPU ticks per group of processes, and of the whole machine.
#[derive(Default)]
struct Snapshot {
    groups: BTreeMap<&'static str, u64>,
    machine: u64,
}

/// The group a process belongs to, by its command name.
fn group(comm: &str, pid: u32) -> &'static str {
    match comm {
        "ingest" => "ingest",
        "router" => "router",
        "worker-push" => "worker-push",
        "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => "rabbitmq",
        _ if pid == std::process::id() => "load generator + provider fake",
        c if c.starts_with("postgres") => "postgresql",
        c if c.starts_with("kworker")
            || c.starts_with("ksoftirqd")
            || c.starts_with("jbd2")
            || c.starts_with("rcu_")
            || c.starts_with("migration") =>
        {
            "kernel threads"
        }
        _ => "other",
    }
}

fn snapshot() -> Snapshot {
    let mut snap = Snapshot::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime: the 14th and 15th fields of the line.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        *snap.groups.entry(group(comm, pid)).or_default() += ticks;
    }
    // The first line of /proc/stat: every CPU's time by kind; busy is all
    // but idle and iowait.
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    if let Some(cpu) = stat.lines().next() {
        let v: Vec<u64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        snap.machine = v
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, x)| x)
            .sum();
    }
    snap
}

/// Milliseconds of CPU per 1,000 notifications, per group and for the
/// machine, over one round.
fn per_thousand(before: &Snapshot, after: &Snapshot, n: usize) -> BTreeMap<&'static str, f64> {
    let ms = |ticks: u64| ticks as f64 / TICKS * 1000.0 * 1000.0 / n as f64;
    let mut out: BTreeMap<&'static str, f64> = after
        .groups
        .iter()
        .map(|(g, t)| {
            (
                *g,
                ms(t.saturating_sub(before.groups.get(g).copied().unwrap_or(0))),
            )
        })
        .collect();
    out.insert("machine (busy)", ms(after.machine - before.machine));
    out
}

/// `rounds` rounds of single sends (`mode`: keyed or not) at `rate` per
/// second for `secs` seconds each (every one delivered before the round
/// ends); prints the CPU per 1,000 notifications as Markdown, median and
/// range of the rounds.
pub async fn run(
    p: &Pipeline,
    rate: f64,
    secs: u64,
    rounds: usize,
    mode: Mode,
) -> anyhow::Result<String> {
    let mut all: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        // Let the previous round's tail (relay, autovacuum) settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = snapshot();
        let phase = load::open_loop(p, rate, secs, "normal", mode).await?;
        let after = snapshot();
        let costs = per_thousand(&before, &after, phase.notifications);
        let l = &phase.latency;
        eprintln!(
            "round {round}: {} notifications at {:.0}/s, request to provider p50/p95/p99 \
             {:.0}/{:.0}/{:.0} ms, machine {:.0} ms CPU per 1,000",
            phase.notifications,
            phase.delivered_per_sec,
            l.p50,
            l.p95,
            l.p99,
            costs["machine (busy)"]
        );
        for (g, ms) in costs {
            all.entry(g).or_default().push(ms);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CPU per 1,000 single sends at {rate:.0}/s offered, {secs} s per round, {rounds} rounds\n"
    );
    let _ = writeln!(
        out,
        "| process | CPU ms per 1,000 notifications, median (range) |"
    );
    let _ = writeln!(out, "|---|---|");
    for (g, mut v) in all {
        v.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "| {g} | {:.0} ({:.0}-{:.0}) |",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    Ok(out)
}
